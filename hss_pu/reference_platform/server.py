"""The reference platform process: Vs and Vr over HTTPS, Vd over WSS, and an admin API.

Vm joins in a later issue; Vr lives in :mod:`hss_pu.reference_platform.vr`. Tests drive
it in-process through the methods below; people drive it through ``hss-pu platform serve``
and the admin API (``platform call``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from hss_pu.fsutil import atomic_write
from hss_pu.reference_platform import console
from hss_pu.reference_platform.admin import AdminApi
from hss_pu.reference_platform.alarms import PIC_PREFIX, Alarm, AlarmPicture, AlarmStore
from hss_pu.reference_platform.console import Console
from hss_pu.reference_platform.firmware import FIRMWARE_PREFIX, FirmwareRequest, FirmwareStore
from hss_pu.reference_platform.hibernation import HibernationServer
from hss_pu.reference_platform.live import LiveReceiver, free_udp_port
from hss_pu.reference_platform.media import MEDIA_PREFIX, MediaRequest, MediaStore
from hss_pu.reference_platform.options import PlatformOptions
from hss_pu.reference_platform.pki import Pki, ensure_pki
from hss_pu.reference_platform.policy import AlarmPolicy, AlarmRecording, RecordingState
from hss_pu.reference_platform.ticker import Ticker
from hss_pu.reference_platform.vd import LoginRecord, Record, ReplyRecord, VdServer
from hss_pu.reference_platform.vr import (
    CSEG_PREFIX,
    SEG_PREFIX,
    VrFailed,
    VrSegment,
    VrServer,
    VrStat,
)
from hss_pu.reference_platform.web import HttpServer, Request, Response, json_response
from hss_pu.wire.vd import AlarmNotifyParams, Reply
from hss_pu.wire.vs import MAC_PATTERN, ServerAddr, encode_server_addr

__all__ = [
    "Alarm",
    "AlarmPicture",
    "AlarmRecording",
    "FirmwareRequest",
    "LogUpload",
    "LoginRecord",
    "MediaRequest",
    "PlatformOptions",
    "Record",
    "ReferencePlatform",
    "ReplyRecord",
    "VrFailed",
    "VrSegment",
    "VrStat",
]

log = logging.getLogger("hss_pu.platform")

_MAC = re.compile(MAC_PATTERN)

STATE_FILE = "platform.json"


_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# RPCs that need the camera: asked of a sleeping device, they wake it first.
WAKE_FOR = frozenset({"PushLive", "StartRecord", "Snapshot", "KeepAwaken"})
WAKE_WAIT = 20.0  # s: a woken device has this long to log in again


LOG_PREFIX = "/logs/"
MAX_LOG_UPLOADS = 100  # log bodies kept (in memory and as files)


@dataclass(frozen=True)
class LogUpload:
    """A log a device PUT in answer to LogUploadAsync (``name``: the URL's last part)."""

    name: str
    content_type: str
    body: bytes
    path: Path
    time: float
    mac: str


@dataclass(frozen=True)
class Upload:
    name: str
    content_type: str
    size: int
    path: Path
    time: float
    mac: str


class ReferencePlatform:
    def __init__(self, options: PlatformOptions) -> None:
        self.options = options
        self.pki: Pki | None = None
        self.console: Console | None = None  # set by start() when options.console
        self.vr = VrServer(options, now=self.now, base_url=lambda: self.schedule_url)
        # Vs, Vr, uploads, media, firmware, alarm pictures (and the console) on one port;
        # the same server listens again after restart(), so routes added stay.
        self._vs = HttpServer(self._handle_http, None, body_cut=self.vr.body_cut)
        self._vd = VdServer(options)
        self._admin: HttpServer | None = None
        self.vs_port = 0
        self.vd_port = 0
        self.admin_port: int | None = None
        self.admin_token = secrets.token_urlsafe(32)
        self.vs_requests: list[Request] = []  # the last ones (bounded)
        self.vs_request_count = 0  # every Vs request since start (bench/fleet.py)
        self.uploads: list[Upload] = []
        self.upload_failures: dict[str, int] = {}  # name -> further PUTs to answer 503
        self.log_uploads: list[LogUpload] = []
        # Fault: answer every log PUT with this status (and keep nothing) while set.
        self.log_upload_status: int | None = None
        self.log_upload_delay = 0.0  # Fault: seconds each log PUT waits for its answer
        self._log_event = asyncio.Event()
        # Fault: each Vs request takes the first of these and merges it into its reply.
        self.vs_overrides: list[dict[str, Any]] = []
        self.receivers: dict[str, LiveReceiver] = {}
        self._closing = False
        ticker = Ticker()
        self.alarm_store = AlarmStore(
            options,
            now=self.now,
            base_url=lambda: options.alarm_pic_base or self.schedule_url,
            ticker=ticker,
        )
        self.alarm_policy = AlarmPolicy(
            options,
            call=self._vd.call,
            wait_online=self._vd.wait_online,
            now=self.now,
            cbk_url=self.vr_cbk_url,
            ticker=ticker,
        )
        self._vd.on_alarm = self._on_alarm
        self.media = MediaStore(options.state_dir / "media")
        # Bundles for UpgradeFirmware at /firmware/<name>, with Range and test faults.
        self.firmware = FirmwareStore(options.state_dir / "firmware", lambda: self.schedule_url)
        self.hibernation: HibernationServer | None = None
        if options.hibernation_port is not None:
            self.hibernation = HibernationServer(lambda: options.devices, options.hb_token)
            self._vd.server_info_for = self._server_info

    @property
    def web_app(self) -> web.Application:
        """The aiohttp application behind the HTTPS port (Vs, Vr, ...): routes and
        middlewares added before :meth:`start` are served there (the console's)."""
        return self._vs.app

    @property
    def scheme(self) -> str:
        return "https" if self.options.tls else "http"

    @property
    def schedule_url(self) -> str:
        return f"{self.scheme}://{self.options.host}:{self.vs_port}"

    @property
    def ca_file(self) -> Path | None:
        return self.pki.ca_file if self.pki else None

    @property
    def vd_url(self) -> str:
        return f"{'wss' if self.options.tls else 'ws'}://{self.options.host}:{self.vd_port}/Vd"

    @property
    def admin_url(self) -> str | None:
        return None if self.admin_port is None else f"http://127.0.0.1:{self.admin_port}"

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def state_file(self) -> Path:
        return self.options.state_dir / STATE_FILE

    def now(self) -> float:
        return time.time() + self.options.clock_offset

    async def start(self) -> None:
        ctx = None
        if self.options.console:  # first: a refused console (plain HTTP off loopback)
            console.check_transport(self.options.host, self.options.tls)  # binds nothing
        self.options.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.options.tls:
            self.pki = ensure_pki(self.options.state_dir / "pki", self._cert_hosts())
            ctx = self.pki.server_context()
        try:
            self.vd_port = await self._vd.start(ctx)
            if self.hibernation is not None:
                assert self.options.hibernation_port is not None
                await self.hibernation.start(self.options.host, self.options.hibernation_port)
            if self.options.console and self.console is None:
                self.console = await console.setup(self)
            self._vs.ssl_context = ctx
            self.vs_port = await self._vs.start(self.options.host, self.options.vs_port)
            if self.options.admin_port is not None:
                api = AdminApi(
                    self._vd, self.vr, self.admin_token, self.alarm_store, self.alarm_policy,
                    logs=self.fetch_logs,
                    play=self._admin_play, firmware=self.firmware,
                    call=self.call, hibernation=self.hibernation, wake=self.wake,
                )  # fmt: skip
                self._admin = HttpServer(api.handle, None)
                # Loopback whatever the host: the token is the only thing guarding it.
                self.admin_port = await self._admin.start("127.0.0.1", self.options.admin_port)
            self._write_state()
        except BaseException:
            await self.close()
            raise
        log.info(
            "Vs listening on %s, Vd on %s%s%s",
            self.schedule_url,
            self.vd_url,
            f", hibernation on {self.hibernation_address}" if self.hibernation else "",
            f", admin API on {self.admin_url}" if self.admin_url else "",
        )
        if self.console is not None:
            log.info("web console on %s", self.console.url)

    def _cert_hosts(self) -> list[str]:
        """The name the server certificate must carry besides loopback's: the address we
        serve on, unless a wildcard (no client connects to 0.0.0.0)."""
        host = self.options.host
        return [] if host.strip("[]") in ("", "0.0.0.0", "::") else [host]  # noqa: S104

    async def restart(self, down: float = 0.0) -> None:
        """A crash or a deploy: close Vs/Vr and Vd (every connection cut, held Vr requests
        aborted), stay down ``down`` seconds, then listen again on the same ports with the
        same TLS context. What is stored (segments, alarms) survives, as in a database."""
        vs_port, vd_port = self.vs_port, self.vd_port
        self.vr.close()  # requests held by a "timeout"/"late" fault end now
        await self._vs.stop()
        await self._vd.close()
        await asyncio.sleep(down)
        self.vr.reopen()
        ctx = self.pki.server_context() if self.pki is not None else None
        # The ports are fixed from now on: a later restart, or a start, binds them again.
        self.options.vs_port, self.options.vd_port = vs_port, vd_port
        self.vd_port = await self._vd.start(ctx)
        self._vs.ssl_context = ctx
        self.vs_port = await self._vs.start(self.options.host, vs_port)

    def _write_state(self) -> None:
        """platform.json: where ``hss-pu platform call`` finds us (0600: it holds the token)."""
        state = {
            "schedule_url": self.schedule_url,
            "vd_port": self.vd_port,
            "admin_url": self.admin_url,
            "token": self.admin_token if self.admin_url else None,
            "ca_file": str(self.ca_file) if self.ca_file else None,
        }
        atomic_write(self.state_file, json.dumps(state, indent=2).encode() + b"\n", 0o600)

    def _remove_state(self) -> None:
        """Remove platform.json if it is still ours, so the CLI does not call a dead port."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            state = json.loads(self.state_file.read_text())
            token = self.admin_token if self.admin_url else None
            if state.get("vd_port") == self.vd_port and state.get("token") == token:
                os.unlink(self.state_file)

    async def close(self) -> None:
        self._closing = True  # open_live refuses from now on
        self.vr.close()
        await self.alarm_policy.close()
        # Every receiver is registered before it starts, so this kills each process
        # started so far; one still starting kills its own (LiveReceiver.start).
        for rx in list(self.receivers.values()):
            await rx.close()
        self.receivers.clear()
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        await self._vs.close()
        if self.hibernation is not None:
            await self.hibernation.close()
        await self._vd.close()
        self._remove_state()

    # --- Vd: see hss_pu.reference_platform.vd ----------------------------------------

    @property
    def logins(self) -> list[LoginRecord]:
        """Every Vd connection attempt (without the password), oldest first; bounded."""
        return self._vd.logins

    @property
    def records(self) -> list[Record]:
        """Every RPC request and event devices sent, oldest first; bounded."""
        return self._vd.records

    @property
    def replies(self) -> list[ReplyRecord]:
        """Every reply devices sent to our RPCs, in arrival order; bounded."""
        return self._vd.replies

    async def wait_reply(
        self, predicate: Callable[[ReplyRecord], bool], timeout: float = 10.0
    ) -> ReplyRecord:
        return await self._vd.wait_reply(predicate, timeout)

    @property
    def malformed(self) -> dict[str, int]:
        """Per device id, frames that did not parse."""
        return self._vd.malformed

    def online(self, device_id: str) -> bool:
        return self._vd.online(device_id)

    def subscribe_devices(self, listener: Callable[[], None]) -> Callable[[], None]:
        """``listener()`` after any change of what devices did (logins, records, replies,
        sessions ending): the console's live device list. Returns the unsubscribe."""
        return self._vd.subscribe(listener)

    def online_ids(self) -> list[str]:
        return self._vd.online_ids()

    def session_info(self, device_id: str) -> dict[str, Any] | None:
        return self._vd.session_info(device_id)

    def last_keepalive(self, device_id: str) -> dict[str, Any] | None:
        return self._vd.last_keepalive(device_id)

    def last_keepalive_time(self, device_id: str) -> float | None:
        return self._vd.last_keepalive_time(device_id)

    def battery(self, device_id: str) -> int | None:
        """The device's battery level as its latest BatteryChange said (None: never)."""
        return self._vd.battery(device_id)

    def battery_time(self, device_id: str) -> float | None:
        """When that BatteryChange came (host time)."""
        return self._vd.battery_time(device_id)

    def battery_changes(self, device_id: str) -> list[int]:
        """Every valid BatteryChange level the device sent, oldest first (of the kept
        records)."""
        return [
            int(r.params["battery"])
            for r in self._vd.records
            if r.device_id == device_id and r.name == "BatteryChange" and r.err is None
        ]

    async def wait_online(self, device_id: str, timeout: float = 10.0) -> None:
        await self._vd.wait_online(device_id, timeout)

    async def wait_offline(self, device_id: str, timeout: float = 10.0) -> None:
        await self._vd.wait_offline(device_id, timeout)

    async def wait_record(
        self, predicate: Callable[[Record], bool], timeout: float = 10.0
    ) -> Record:
        return await self._vd.wait_record(predicate, timeout)

    async def wait_login(
        self, predicate: Callable[[LoginRecord], bool], timeout: float = 10.0
    ) -> LoginRecord:
        return await self._vd.wait_login(predicate, timeout)

    async def call(
        self,
        device_id: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """RPC to the device (seq 1, 2, ... per connection). LookupError: offline;
        TimeoutError: no reply in ``timeout`` (default options.rpc_timeout);
        ConnectionError: the session ended first. An ``err`` reply is returned, not raised.
        One of :data:`WAKE_FOR` asked of a sleeping device wakes it first."""
        if (
            method in WAKE_FOR
            and not self._vd.online(device_id)
            and self.hibernation is not None
            and self.hibernation.is_sleeping(device_id)
        ):
            log.info("%s asked of sleeping %s: waking it first", method, device_id)
            await self.wake(device_id)
        return await self._vd.call(device_id, method, params, timeout)

    # --- hibernation: see hss_pu.reference_platform.hibernation ---------------------------

    @property
    def hibernation_address(self) -> str | None:
        """What GetServerInfo advertises as ``hibernation``."""
        if self.options.hibernation is not None:
            return self.options.hibernation
        if self.hibernation is None:
            return None
        return f"{self.options.host}:{self.hibernation.port}"

    def _server_info(self, device_id: str) -> dict[str, Any]:
        assert self.hibernation is not None
        return {
            "hibernation": self.hibernation_address,
            "hb_token": self.hibernation.token_for(device_id),
        }

    def sleeping(self) -> list[dict[str, Any]]:
        """The devices asleep on the hibernation server (empty without one)."""
        return self.hibernation.sleeping() if self.hibernation else []

    async def wake(self, device_id: str, *, wait: float | None = WAKE_WAIT) -> float:
        """TOWAKEUP to a sleeping device and (unless ``wait`` is None) wait up to ``wait``
        seconds for its Vd login; the seconds that took. LookupError: not asleep here;
        TimeoutError: it did not come back in time."""
        if self.hibernation is None:
            raise LookupError("this platform runs no hibernation server")
        t0 = time.monotonic()
        await self.hibernation.wake(device_id)
        if wait is not None:
            await self._vd.wait_online(device_id, wait)
        return time.monotonic() - t0

    async def send_event(
        self, device_id: str, name: str, params: Mapping[str, Any] | None = None
    ) -> None:
        await self._vd.send_event(device_id, name, params)

    async def send_raw(self, device_id: str, data: str | bytes) -> None:
        await self._vd.send_raw(device_id, data)

    async def kick(self, device_id: str) -> None:
        await self._vd.kick(device_id)

    # --- alarms: see hss_pu.reference_platform.alarms and .policy ---------------------------

    def _on_alarm(self, device_id: str, params: AlarmNotifyParams) -> dict[str, Any]:
        alarm = self.alarm_store.add(device_id, params)
        if self.options.alarm_record:
            self.alarm_policy.on_alarm(alarm)
        return self.alarm_store.reply(alarm)

    def alarms(self, device_id: str | None = None) -> list[Alarm]:
        """The alarms devices sent (one device's, or all), oldest first; the last
        ``alarm_keep`` per device. ``picture`` is filled in when its PUT arrives."""
        return self.alarm_store.alarms(device_id)

    async def wait_alarm(
        self,
        device_id: str,
        *,
        type: int | None = None,
        state: str | None = None,
        channel: int | None = None,
        picture: bool = False,
        timeout: float = 10.0,
    ) -> Alarm:
        """The first alarm of the device that matches, already received or still to come;
        ``picture=True``: one whose picture has arrived (and passed the JPEG check)."""
        return await self.alarm_store.wait_alarm(
            device_id,
            type=type,
            state=state,
            channel=channel,
            picture=picture,
            timeout=timeout,
        )

    def alarm_recordings(self, device_id: str | None = None) -> list[AlarmRecording]:
        """The recordings the alarm policy started, oldest first."""
        return self.alarm_policy.recordings(device_id)

    async def wait_alarm_recording(
        self,
        device_id: str,
        *,
        channel: int | None = None,
        state: RecordingState | None = None,
        timeout: float = 10.0,
    ) -> AlarmRecording:
        """The first policy recording of the device that matches (state: starting,
        recording, stopping, stopped, failed), already there or still to come."""
        return await self.alarm_policy.wait_recording(
            device_id, channel=channel, state=state, timeout=timeout
        )

    def recording_segments(self, session_id: str) -> list[VrSegment]:
        """The saved Vr segments of a recording started with a tagged cbk_url (the alarm
        policy's), in time order."""
        return self.vr.session_segments(session_id)

    # --- uploads (Snapshot, alarm pictures, logs) -------------------------------------

    def upload_url(self, name: str) -> str:
        """Where a PU may PUT a file: the platform's HTTPS port, /upload/<name>."""
        return f"{self.schedule_url}/upload/{name}"

    def log_upload_url(self, name: str) -> str:
        """A LogUploadAsync ``url``: the platform's HTTPS port, /logs/<name>."""
        return f"{self.schedule_url}{LOG_PREFIX}{name}"

    async def wait_log_upload(self, name: str, timeout: float = 10.0) -> LogUpload:
        """The log PUT to /logs/<name>, already received or still to come."""
        async with asyncio.timeout(timeout):
            while True:
                found = [u for u in self.log_uploads if u.name == name]
                if found:
                    return found[-1]
                self._log_event.clear()
                await self._log_event.wait()

    async def fetch_logs(
        self, device_id: str, minutes: float = 60.0, timeout: float = 30.0
    ) -> tuple[dict[str, Any], LogUpload | None]:
        """What a platform does to read a device's log: QueryTime (its local time and
        tz), LogUploadAsync of the last ``minutes`` to /logs/, then LogDone. Returns
        LogDone's params and the upload (None when the device reported a failure).
        LookupError offline, RuntimeError when the device refused, TimeoutError."""
        since = time.time()
        t = await self.call(device_id, "QueryTime", timeout=timeout)
        if t.err is not None or t.resp is None:
            raise RuntimeError(f"QueryTime failed: {t.err}")
        end = dt.datetime.strptime(str(t.resp["datetime"]), "%Y-%m-%dT%H:%M:%S")
        start = end - dt.timedelta(minutes=minutes)
        trans_id = secrets.token_hex(4)
        name = f"{device_id}-{trans_id}.log"
        fmt = "%Y-%m-%dT%H:%M:%S"
        params = {"trans_id": trans_id, "start": start.strftime(fmt), "end": end.strftime(fmt),
                  "url": self.log_upload_url(name)}  # fmt: skip
        reply = await self.call(device_id, "LogUploadAsync", params, timeout=timeout)
        if reply.err is not None:
            raise RuntimeError(f"LogUploadAsync refused: {reply.err.code} {reply.err.msg}")
        done = await self.wait_record(
            lambda r: r.name == "LogDone" and r.device_id == device_id and r.time >= since
            and r.params.get("trans_id") == trans_id,
            timeout=timeout,
        )  # fmt: skip
        if done.params.get("status") != "success":
            return done.params, None
        return done.params, await self.wait_log_upload(name, timeout=5)

    async def _handle_log(self, req: Request) -> Response:
        if self.log_upload_delay > 0:
            await asyncio.sleep(self.log_upload_delay)
        name = req.path.removeprefix(LOG_PREFIX)
        if req.method != "PUT":
            return json_response(405, b'{"info": "PUT only"}')
        if not _NAME.match(name):
            return json_response(400, b'{"info": "bad log name"}')
        if self.log_upload_status is not None:
            body = json.dumps({"info": "told to refuse log uploads"}).encode()
            return json_response(self.log_upload_status, body)
        directory = self.options.state_dir / "logs"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        atomic_write(path, req.body, 0o600)
        up = LogUpload(name, req.headers.get("content-type", ""), req.body, path, time.time(),
                       req.headers.get("mac-identity", ""))  # fmt: skip
        self.log_uploads.append(up)
        for old in self.log_uploads[:-MAX_LOG_UPLOADS]:
            if old.path != path:
                old.path.unlink(missing_ok=True)
        del self.log_uploads[:-MAX_LOG_UPLOADS]
        self._log_event.set()
        log.info("log upload: %s (%d bytes, %s)", name, len(req.body), up.content_type)
        return Response(200, b"")

    async def _handle_http(self, req: Request) -> Response:
        if req.path.startswith("/upload/"):
            return self._handle_upload(req)
        if req.path.startswith(LOG_PREFIX):
            return await self._handle_log(req)
        if req.path.startswith(MEDIA_PREFIX):
            return await self.media.handle(req)
        if req.path.startswith(FIRMWARE_PREFIX):
            return await self.firmware.handle(req)
        if req.path.startswith(PIC_PREFIX):
            return await self.alarm_store.handle_put(req)
        if req.path.startswith((CSEG_PREFIX, SEG_PREFIX)):
            return await self.vr.handle(req)
        return await self._handle_vs(req)

    def _handle_upload(self, req: Request) -> Response:
        name = req.path.removeprefix("/upload/")
        if req.method != "PUT":
            return json_response(405, b'{"info": "PUT only"}')
        if not _NAME.match(name):
            return json_response(400, b'{"info": "bad upload name"}')
        if self.upload_failures.get(name, 0) > 0:
            self.upload_failures[name] -= 1
            return json_response(503, b'{"info": "told to fail"}')
        directory = self.options.state_dir / "uploads"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        atomic_write(path, req.body, 0o644)
        up = Upload(name, req.headers.get("content-type", ""), len(req.body), path, time.time(),
                    req.headers.get("mac-identity", ""))  # fmt: skip
        self.uploads.append(up)
        del self.uploads[:-1000]
        log.info("upload: %s (%d bytes, %s)", name, up.size, up.content_type)
        return Response(200, b"")

    # --- playback: media served for PlayVideo (hss_pu.reference_platform.media) ----------

    def media_url(self, name: str) -> str:
        """Where a PU downloads a clip: the platform's HTTPS port, /media/<name> (files in
        <state_dir>/media, or a generated tone-<S>s.m4a|ogg|mp4)."""
        return f"{self.schedule_url}{MEDIA_PREFIX}{name}"

    async def play_video(self, device_id: str, channel: int, url: str) -> None:
        """PlayVideo (an event: the device answers nothing; QueryVideoStatus tells)."""
        await self.send_event(device_id, "PlayVideo", {"channel": channel, "url": url})

    async def _admin_play(self, device_id: str, channel: int, name: str) -> str:
        if await self.media.path_for(name) is None:
            raise LookupError(f"no clip {name!r} in {self.media.directory} (nor a tone)")
        url = self.media_url(name)
        await self.play_video(device_id, channel, url)
        return url

    async def ctrl_video(self, device_id: str, channel: int, op: str) -> None:
        """CtrlVideo: stop, pause or resume."""
        await self.send_event(device_id, "CtrlVideo", {"channel": channel, "op": op})

    async def video_status(self, device_id: str, channel: int, timeout: float = 10.0) -> Reply:
        return await self.call(device_id, "QueryVideoStatus", {"channel": channel}, timeout)

    # --- Vr: see hss_pu.reference_platform.vr --------------------------------------------

    def vr_cbk_url(self, channel: int) -> str:
        """The ``cbk_url`` for StartRecord: this platform's /live/cseg/<channel>."""
        return f"{self.schedule_url}{CSEG_PREFIX}{channel}"

    @property
    def vr_segments(self) -> defaultdict[int, list[VrSegment]]:
        """channel -> saved segments, in save order (the last MAX_RECORDS / keep count)."""
        return self.vr.segments

    @property
    def vr_failed(self) -> list[VrFailed]:
        """Segments forgotten: ``op=fail``, or never saved in time; oldest first."""
        return self.vr.failed

    @property
    def vr_stats(self) -> list[VrStat]:
        return self.vr.stats

    @property
    def vr_requests(self) -> Counter[str]:
        """Vr requests received per op (create, put, save, fail, stat, getcurrenttime),
        faulted ones included; "invalid" for bad paths or forms, "down" while vr_down."""
        return self.vr.requests

    @property
    def vr_body_bytes(self) -> int:
        """Request body bytes of every Vr request (forms and PUT segments)."""
        return self.vr.body_bytes

    @property
    def vr_header_bytes(self) -> int:
        """Request line and header bytes of every Vr request (to a few bytes)."""
        return self.vr.header_bytes

    @property
    def vr_down(self) -> bool:
        """True: every Vr request is aborted without a response (platform unreachable)."""
        return self.vr.down

    @vr_down.setter
    def vr_down(self, value: bool) -> None:
        self.vr.down = value

    @property
    def vr_drop_next(self) -> int:
        """The next N creates are answered with an empty name and url (drop the segment)."""
        return self.vr.drop_next

    @vr_drop_next.setter
    def vr_drop_next(self, value: int) -> None:
        self.vr.drop_next = value

    # --- Vm: live receivers -------------------------------------------------------------

    async def open_live(
        self,
        stream_id: str,
        *,
        latency_ms: int = 200,
        passphrase: str | None = None,
        viewer: bool = False,
        port: int = 0,
    ) -> LiveReceiver:
        """A new srt-live-transmit listener for one stream (its URL goes into PushLive).
        RuntimeError once the platform is closing."""
        old = self.receivers.pop(stream_id, None)
        if old is not None:
            await old.close()
        if self._closing:
            raise RuntimeError("the reference platform is closing")
        rx = LiveReceiver(
            self.options.state_dir / "live",
            stream_id=stream_id,
            host=self.options.host,
            port=port,
            latency_ms=latency_ms,
            passphrase=passphrase,
            viewer_port=free_udp_port(self.options.host) if viewer else None,
        )
        self.receivers[stream_id] = rx  # before start: close() must find it
        try:
            await rx.start()
        except BaseException:
            if self.receivers.get(stream_id) is rx:
                del self.receivers[stream_id]
            raise
        return rx

    async def close_live(self, stream_id: str, rx: LiveReceiver | None = None) -> None:
        """Close the stream's receiver (only if it is still ``rx``, when given) and forget
        it; for a receiver opened on demand (the console's live view)."""
        current = self.receivers.get(stream_id)
        if current is not None and (rx is None or current is rx):
            del self.receivers[stream_id]
        target = rx or current
        if target is not None:
            await target.close()

    async def push_live(
        self, device_id: str, channel: int, stream_id: str, *, max_bitrate: int = 0, **kw: Any
    ) -> tuple[LiveReceiver, Reply]:
        """open_live + PushLive: what a platform does when a viewer asks for the camera."""
        rx = await self.open_live(stream_id, **kw)
        reply = await self.call(
            device_id,
            "PushLive",
            {"channel": channel, "url": rx.url, "stream_id": stream_id, "max_bitrate": max_bitrate},
            timeout=20,
        )
        return rx, reply

    async def _handle_vs(self, req: Request) -> Response:
        self.vs_requests.append(req)
        self.vs_request_count += 1
        if len(self.vs_requests) > 1000:
            del self.vs_requests[:500]
        if req.path != "/Vs/getServerAddr":
            return json_response(404, b'{"info": "no such endpoint"}')
        if req.method != "GET":
            return json_response(405, b'{"info": "GET only"}')
        mac = req.query.get("macid", "")
        if not _MAC.match(mac):
            return json_response(400, b'{"info": "macid missing or malformed"}')
        if req.headers.get("mac-identity", "").lower() != mac.lower():
            return json_response(400, b'{"info": "Mac-Identity header missing or not macid"}')
        vd_port = self.vd_port
        addr = ServerAddr(
            pass_domain=self.options.host,
            pass_port=0 if self.options.tls else vd_port,
            secure_pass_port=vd_port if self.options.tls else 0,
            platform_time=self.now(),
        )
        log.info("Vs: scheduled %s to Vd port %d", mac, vd_port)
        body = encode_server_addr(addr)
        if self.vs_overrides:
            body = json.dumps({**json.loads(body), **self.vs_overrides.pop(0)}).encode()
        return json_response(200, body)
