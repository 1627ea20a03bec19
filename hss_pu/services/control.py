"""The Vd dispatcher: one handler for every platform→PU message of Table 9-4."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hss_pu.clock import OffsetClock
from hss_pu.config import Config
from hss_pu.errors import (
    ChannelOffline,
    DeviceError,
    DeviceFailure,
    InvalidParam,
    NoSuchChannel,
    NotSupported,
    StreamTooLarge,
    UnsupportedConfig,
)
from hss_pu.services.channels import ChannelRegistry
from hss_pu.services.devconfig import DevConfigStore
from hss_pu.services.interfaces import Services
from hss_pu.wire import vd
from hss_pu.wire.timewindow import WINDOW, plausible_time
from hss_pu.wire.vd import Code, RpcError, decode_params

__all__ = [
    "LOG_LEVELS",
    "DeviceContext",
    "Dispatcher",
    "format_local",
    "parse_local",
    "vd_code",
]

log = logging.getLogger("hss_pu.control")

T = TypeVar("T")

# GetConfig log_level 0-5 -> Python logging.
LOG_LEVELS = {
    0: logging.CRITICAL,
    1: logging.ERROR,
    2: logging.WARNING,
    3: logging.INFO,
    4: logging.DEBUG,
    5: logging.DEBUG,
}

_FMT = "%Y-%m-%dT%H:%M:%S"


def parse_local(text: str, tz: int) -> float:
    """Settime's ``datetime``: local wall time in zone ``tz`` (whole hours east of UTC)."""
    try:
        naive = dt.datetime.strptime(text, _FMT)
    except ValueError:
        raise InvalidParam(f"params.datetime: not a valid date/time: {text!r}") from None
    return naive.replace(tzinfo=dt.timezone(dt.timedelta(hours=tz))).timestamp()


def format_local(epoch: float, tz: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone(dt.timedelta(hours=tz))).strftime(_FMT)


# The one place domain errors become Vd error codes (wire-notes' list).
_CODES: dict[type[DeviceError], Code] = {
    InvalidParam: Code.PARAM,
    NoSuchChannel: Code.NO_CHANNEL,
    ChannelOffline: Code.CHANNEL_OFFLINE,
    StreamTooLarge: Code.STREAM_TOO_LARGE,
    UnsupportedConfig: Code.UNSUPPORTED_CONFIG,
    NotSupported: Code.UNSUPPORTED_METHOD,
    DeviceFailure: Code.INTERNAL,
}


def vd_code(exc: DeviceError) -> Code:
    """The Vd error code of a domain error (1 for a kind with no code of its own)."""
    for kind in type(exc).__mro__:
        code = _CODES.get(kind)
        if code is not None:
            return code
    return Code.INTERNAL


def _no_service(what: str) -> NotSupported:
    return NotSupported(f"{what} is not available on this device")


@dataclass
class DeviceContext:
    """What the handlers act on; the daemon fills it in."""

    config: Config
    clock: OffsetClock
    channels: ChannelRegistry
    devconfig: DevConfigStore
    services: Services = field(default_factory=Services)
    reschedule: Callable[[], None] = lambda: None
    reboot_device: Callable[[], Awaitable[None]] | None = None
    local_address: Callable[[], str | None] = lambda: None
    upgraded_at: float = 0.0  # epoch of the last firmware (hss-pu version) change
    state: Callable[[], int] = lambda: 1
    battery: Callable[[], int | None] = lambda: None  # whole percent; None: none known
    battery_source: bool = False  # the profile's battery source opened at start-up


class Dispatcher:
    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.apply_config()

    # --- the session's entry points ---------------------------------------------

    async def request(self, name: str, params: dict[str, Any] | None) -> Any:
        spec = vd.MESSAGES.get(name)
        if spec is None or spec.kind != "rpc" or spec.direction != "platform->pu":
            raise RpcError(Code.UNSUPPORTED_METHOD, f"unsupported RPC method {name!r}")
        p = decode_params(name, params)
        handler: Callable[[Any], Awaitable[Any]] = getattr(self, f"rpc_{name}")
        try:
            return await handler(p)
        except DeviceError as exc:
            raise RpcError(vd_code(exc), str(exc)) from None

    async def event(self, name: str, params: dict[str, Any] | None) -> None:
        spec = vd.MESSAGES.get(name)
        if spec is None or spec.kind != "event" or spec.direction != "platform->pu":
            raise RpcError(Code.UNSUPPORTED_METHOD, f"unsupported event {name!r}")
        p = decode_params(name, params)
        handler: Callable[[Any], Awaitable[None]] = getattr(self, f"ev_{name}")
        try:
            await handler(p)
        except DeviceError as exc:
            raise RpcError(vd_code(exc), str(exc)) from None

    # --- helpers -----------------------------------------------------------------

    def _service(self, svc: T | None, what: str) -> T:
        if svc is None:
            raise _no_service(what)
        return svc

    def apply_config(self, *, log_level: bool = False) -> None:
        """Make the running daemon follow the configuration document.

        The log level is applied only when the platform sets it: at start-up the config
        file's log.level (or --log-level) is what a person asked for.
        """
        doc = self.ctx.devconfig.get()
        for key, ch in doc["channels"].items():
            self.ctx.channels.set_enabled(int(key), bool(ch["on"]))
        if log_level:
            logging.getLogger("hss_pu").setLevel(LOG_LEVELS[int(doc["log_level"])])

    # --- time ---------------------------------------------------------------------

    async def rpc_Settime(self, p: vd.SettimeParams) -> None:
        """All or nothing: check everything, persist tz (which may fail), then move the
        clock, so a failed Settime leaves both as they were."""
        tz = p.tz if p.tz is not None else 0
        target = parse_local(p.datetime, tz)
        if not plausible_time(target):
            raise InvalidParam(f"params.datetime: {p.datetime} (tz {tz}) is outside {WINDOW}")
        asked = time.monotonic()
        skew = target - self.ctx.clock.now()
        if tz != self.ctx.devconfig.tz:
            await self.ctx.devconfig.set_tz(tz)
        if abs(skew) > p.offset:
            self.ctx.clock.set(target + (time.monotonic() - asked))
            log.info("time: set by the platform (%+.1f s)", skew)

    async def rpc_QueryTime(self, _: None) -> vd.QueryTimeResp:
        tz = self.ctx.devconfig.tz
        return vd.QueryTimeResp(datetime=format_local(self.ctx.clock.now(), tz), tz=tz)

    # --- device -------------------------------------------------------------------

    async def rpc_DevStatus(self, _: None) -> vd.DevStatusResp:
        c = self.ctx.config
        ssid, signal = _wifi()
        return vd.DevStatusResp(
            dev_id=c.device.id,
            hardware_model=c.profile.hardware_model,
            firmware_model=c.profile.firmware_model,
            last_upgrade_datetime=format_local(self.ctx.upgraded_at, self.ctx.devconfig.tz),
            wifi_ssid=ssid,
            wifi_signal=signal,
            ip_addr=self.ctx.local_address(),
            mac_addr=c.device.mac,
            battery=self.ctx.battery(),
        )

    async def rpc_GetCap(self, _: None) -> dict[str, Any]:
        """The profile's capabilities, less what did not start here: a PTZ head whose pins
        would not open, a speaker without its playback directory, a log store that could
        not be made, a battery whose source failed (each logged at start-up). A platform
        must not be told the device can do what it will then refuse with 101."""
        cap = self.ctx.config.profile.capabilities()
        s = self.ctx.services
        started = {
            "ptz": s.ptz is not None,
            "audio_out": s.playback is not None,
            "log_upload_https": s.logs is not None,
            "battery": self.ctx.battery_source,
            # Trusted keys configured: without them every UpgradeFirmware is refused.
            "firmware_download_https": s.upgrade is not None and s.upgrade.ready,
        }
        for key, ok in started.items():
            cap[key] = bool(cap[key]) and ok
        return cap

    async def rpc_GetConfig(self, _: None) -> dict[str, Any]:
        return self._report(self.ctx.devconfig.get())

    async def rpc_SetConfig(self, patch: dict[str, Any]) -> dict[str, Any]:
        camera = self.ctx.services.camera
        doc = await self.ctx.devconfig.set(patch, camera.check if camera is not None else None)
        self.apply_config(log_level="log_level" in patch)
        if camera is not None:
            await camera.apply(doc)
        log.info("config: changed by the platform (%s)", ", ".join(sorted(patch)) or "nothing")
        return self._report(doc)

    async def rpc_ResetConfig(self, _: None) -> None:
        doc = await self.ctx.devconfig.reset()
        self.apply_config(log_level=True)
        if self.ctx.services.camera is not None:
            await self.ctx.services.camera.apply(doc)
        log.info("config: reset to factory settings")

    def _report(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document with what the cameras really run (GetConfig, SetConfig's reply)."""
        camera = self.ctx.services.camera
        return camera.report(doc) if camera is not None else doc

    async def rpc_KeepAwaken(self, p: vd.KeepAwakenParams) -> None:
        self.ctx.channels.keep_awake(p.channel, p.expired)

    async def ev_RebootChannel(self, p: vd.ChannelParams) -> None:
        await self.ctx.channels.reboot(p.channel)

    async def ev_RebootDevice(self, _: None) -> None:
        log.warning("RebootDevice received")
        reboot = self._service(self.ctx.reboot_device, "RebootDevice")
        await reboot()

    async def ev_Reschedule(self, _: None) -> None:
        log.info("Reschedule received: scheduling again through Vs")
        self.ctx.reschedule()

    # --- media (live, record, snapshot) -----------------------------------------------

    async def rpc_PushLive(self, p: vd.PushLiveParams) -> None:
        self.ctx.channels.get(p.channel)
        await self._service(self.ctx.services.live, "live video (PushLive)").push_live(p)

    async def rpc_StopLive(self, p: vd.StopLiveParams) -> None:
        if p.channel is not None:
            self.ctx.channels.get(p.channel)
        live = self.ctx.services.live
        # Without a live service no stream can exist, and StopLive succeeds "whether or
        # not the stream exists" (wire-notes): that is the true state, not a fake success.
        if live is not None:
            await live.stop_live(p)

    async def rpc_StartRecord(self, p: vd.StartRecordParams) -> None:
        self.ctx.channels.get(p.channel)
        await self._service(self.ctx.services.record, "cloud recording (StartRecord)").start_record(
            p
        )

    async def rpc_StopRecord(self, p: vd.StopRecordParams) -> None:
        self.ctx.channels.get(p.channel)
        rec = self.ctx.services.record
        if rec is not None:  # as StopLive: no recorder, no session to stop
            await rec.stop_record(p)

    async def rpc_Snapshot(self, p: vd.SnapshotParams) -> None:
        self.ctx.channels.get(p.channel)
        await self._service(self.ctx.services.snapshot, "Snapshot").snapshot(p)

    # --- PTZ ----------------------------------------------------------------------------

    async def ev_CtrlPTZ(self, p: vd.CtrlPTZParams) -> None:
        self.ctx.channels.get(p.channel)
        await self._service(self.ctx.services.ptz, "PTZ control (CtrlPTZ)").control(p)

    async def rpc_GetPTZPresetList(self, p: vd.ChannelParams) -> vd.GetPTZPresetListResp:
        self.ctx.channels.get(p.channel)
        ptz = self._service(self.ctx.services.ptz, "PTZ presets (GetPTZPresetList)")
        return vd.GetPTZPresetListResp(
            presetList=[vd.PtzPreset(ptzId=i) for i in ptz.presets(p.channel)]
        )

    # --- upgrade ------------------------------------------------------------------------

    async def ev_UpgradeFirmware(self, p: vd.UpgradeFirmwareParams) -> None:
        await self._service(self.ctx.services.upgrade, "UpgradeFirmware").upgrade(p)

    async def rpc_QueryUpgrade(self, _: None) -> vd.QueryUpgradeResp:
        return self._service(self.ctx.services.upgrade, "QueryUpgrade").status()

    # --- playback ----------------------------------------------------------------------

    async def ev_PlayVideo(self, p: vd.PlayVideoParams) -> None:
        self.ctx.channels.get(p.channel)
        await self._service(self.ctx.services.playback, "PlayVideo").play(p)

    async def ev_CtrlVideo(self, p: vd.CtrlVideoParams) -> None:
        self.ctx.channels.get(p.channel)
        await self._service(self.ctx.services.playback, "CtrlVideo").control(p)

    async def rpc_QueryVideoStatus(self, p: vd.ChannelParams) -> vd.QueryVideoStatusResp:
        self.ctx.channels.get(p.channel)
        return self._service(self.ctx.services.playback, "QueryVideoStatus").status(p.channel)

    # --- logs and disk --------------------------------------------------------------

    async def rpc_LogUploadAsync(self, p: vd.LogUploadAsyncParams) -> None:
        await self._service(self.ctx.services.logs, "LogUploadAsync").upload_async(p)

    async def rpc_GetDiskInfo(self, _: None) -> vd.GetDiskInfoResp:
        return await self._service(self.ctx.services.disk, "GetDiskInfo").info()

    async def rpc_FormatDisk(self, _: None) -> None:
        await self._service(self.ctx.services.disk, "FormatDisk").format()


def _wifi() -> tuple[str | None, int | None]:
    """(SSID, signal dBm) of the first wireless interface, from /proc; (None, None) if wired."""
    try:
        lines = Path("/proc/net/wireless").read_text().splitlines()[2:]
    except OSError:
        return None, None
    for line in lines:
        parts = line.split()
        if len(parts) >= 4:
            try:
                signal = int(float(parts[3].rstrip(".")))
            except ValueError:
                continue
            return None, signal
    return None, None
