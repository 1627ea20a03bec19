"""The daemon: wires the services together and owns the process lifecycle.

Lifecycle rules a camera in the field depends on: a clear log line per step, READY only
once we are running, the systemd watchdog fed from the event loop (so a wedged loop gets
us restarted), and SIGTERM/SIGINT ending everything within 5 s with exit status 0.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import shutil
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from hss_pu import __version__
from hss_pu.clients.http import Trust, UrlGuard, platform_http
from hss_pu.clients.vd import RPC_TIMEOUT, VdSession
from hss_pu.clock import OffsetClock
from hss_pu.config import CameraSection, Config
from hss_pu.errors import InvalidParam, NotSupported
from hss_pu.firmware.slots import SlotStore, emulated_root, running_root, running_version
from hss_pu.fsutil import atomic_write, ensure_private_dir
from hss_pu.hw import Board, GpioUnavailable
from hss_pu.hw.battery import BatteryError, EmulatedBattery, open_source
from hss_pu.logfiles import LogFiles
from hss_pu.logsetup import add_secret
from hss_pu.media.analysis import MotionAnalyser, parse_alarm_config
from hss_pu.media.channel import MediaChannel
from hss_pu.media.encoder import EncodeSettings, MediaError
from hss_pu.media.player import OutputSpec, alsa_environment
from hss_pu.media.sources import Scene
from hss_pu.sdnotify import SdNotifier
from hss_pu.services.alarms import AlarmService
from hss_pu.services.autoreboot import AutoReboot
from hss_pu.services.camera import CameraService, settings_for
from hss_pu.services.channels import ONLINE, ChannelRegistry, camera_state
from hss_pu.services.control import DeviceContext, Dispatcher
from hss_pu.services.devconfig import DevConfigStore
from hss_pu.services.disk import PROTECTED_PATHS, DiskService
from hss_pu.services.hibernate import HibernationService, WakingSink
from hss_pu.services.interfaces import AlarmSink, Services
from hss_pu.services.leds import LedService, status_mode
from hss_pu.services.link import PlatformLink
from hss_pu.services.live import LiveService
from hss_pu.services.localctl import LocalControl, SensorDriver, sensor_command
from hss_pu.services.logs import LogUploadService
from hss_pu.services.playback import PlaybackService
from hss_pu.services.power import PowerService
from hss_pu.services.ptz import PtzService
from hss_pu.services.record import RecordService
from hss_pu.services.snapshot import SnapshotService
from hss_pu.services.spool import Spool
from hss_pu.services.upgrade import UpgradeService, installed_model
from hss_pu.services.uploader import Uploader
from hss_pu.tasks import TaskSet
from hss_pu.wire.firmware import trusted_keys
from hss_pu.wire.vd import BindParams, KeepaliveParams

__all__ = ["STOP_TIMEOUT", "Daemon"]

log = logging.getLogger("hss_pu.daemon")

STOP_TIMEOUT = 4.0  # leaves a margin inside the 5 s promise (and TimeoutStopSec)
FIRMWARE_STATE = "firmware.json"


class _FirmwareState(msgspec.Struct):
    version: str
    since: float


async def _refuse(reason: str, action: str, channel: int | None) -> dict[str, Any]:
    raise NotSupported(reason)


async def _scene_motion(
    media: dict[int, MediaChannel], action: str, channel: int | None
) -> dict[str, Any]:
    """``hss-pu sensor motion on|off``: someone walks across the emulated picture."""
    ch = 0 if channel is None else channel
    m = media.get(ch)
    if m is None or m.scene is None:
        raise InvalidParam(f"no emulated camera on channel {ch}")
    if action not in ("on", "off"):
        raise InvalidParam("motion: on or off (someone walks across the picture until off)")
    m.scene.set_motion(action == "on")
    return {"ok": True, "sensor": "motion", "channel": ch, "action": action}


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        notifier: SdNotifier | None = None,
        rng: random.Random | None = None,
        rpc_timeout: float = RPC_TIMEOUT,
        start_media: bool = True,
    ) -> None:
        # The slot root of installed versions (issue 12): the one this venv lives in, or
        # the emulated layout under storage.dir; a bundle's version reports its model.
        self.slots = SlotStore(running_root() or emulated_root(config.storage_dir))
        model = installed_model(self.slots, running_version())
        if model is not None:
            profile = msgspec.structs.replace(config.profile, installed_firmware=model)
            config = msgspec.structs.replace(config, profile=profile)
        self.config = config
        self.rpc_timeout = rpc_timeout
        self.start_media = start_media
        self.media: dict[int, MediaChannel] = {}
        self.live: LiveService | None = None
        self.snapshot: SnapshotService | None = None
        self.record: RecordService | None = None
        self.disk: DiskService | None = None
        self.logfiles: LogFiles | None = None
        self.logs: LogUploadService | None = None
        self.playback: PlaybackService | None = None
        self.notifier = notifier or SdNotifier.from_env()
        self.clock = OffsetClock(set_host=config.device.set_system_clock)
        self.rng = rng
        self.restart_requested = False
        self.channels = ChannelRegistry(config.profile)
        self.link: PlatformLink | None = None
        self.dispatcher: Dispatcher | None = None
        self.autoreboot: AutoReboot | None = None
        self.alarms: AlarmService | None = None  # the detectors' AlarmSink, once running
        self.board: Board | None = None
        self.leds: LedService | None = None
        self.ptz: PtzService | None = None
        self.power: PowerService | None = None  # a profile with a battery
        self.hibernation: HibernationService | None = None  # battery profiles' sleep
        self.upgrade: UpgradeService | None = None
        self._hw_error: str | None = None
        # ``hss-pu sensor NAME``: the board's inputs (and whoever else adds an entry).
        self.sensors: dict[str, SensorDriver] = {}
        self.analysers: dict[int, MotionAnalyser] = {}  # per channel with motion detection
        self._pending_bind = config.device.bind_id
        self._stop = asyncio.Event()
        self._tasks = TaskSet(log, self._task_failed)
        self._failed: list[str] = []  # tasks that failed: the exit status is then 1
        # URL safety for every URL the platform hands us (wire-notes).
        self.url_guard = UrlGuard(
            allow_insecure=config.platform.allow_insecure,
            allowed_hosts=config.platform.allowed_hosts,
            platform_hosts=lambda: self.link.platform_hosts() if self.link else [],
        )
        add_secret(config.password.reveal())
        for url in config.channel_sources:  # an IP camera's password, never in a log line
            camera_password = urlsplit(url).password
            if camera_password:
                add_secret(unquote(camera_password))

    def stop(self) -> None:
        self._stop.set()

    def _describe(self) -> None:
        c = self.config
        p = c.profile
        log.info(
            "hss-pu %s starting: device %s, mac %s, profile %s (%s, firmware %s, %d channel%s)",
            __version__,
            c.device.id,
            c.device.mac,
            p.name,
            p.hardware_model,
            p.firmware_model,
            len(p.channels),
            "" if len(p.channels) == 1 else "s",
        )
        cam = c.camera
        log.info(
            "camera ch0: source %s, %dx%d@%d, %s at %d kbit/s",
            c.camera_source,
            cam.width,
            cam.height,
            cam.fps,
            p.channels[0].encoder,
            c.bitrate // 1000,
        )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.notifier.close()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        self._stop.set()

    def _upgraded_at(self, storage: Path) -> float:
        """When this firmware first ran here: DevStatus's last_upgrade_datetime."""
        model = self.config.profile.firmware_model
        path = storage / FIRMWARE_STATE
        try:
            st = msgspec.json.decode(path.read_bytes(), type=_FirmwareState)
            if st.version == model:
                return st.since
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            pass
        now = self.clock.now()
        atomic_write(path, msgspec.json.encode(_FirmwareState(model, now)))
        return now

    async def _run(self) -> int:
        try:
            storage = ensure_private_dir(self.config.storage_dir)
            upgraded_at = self._upgraded_at(storage)
        except OSError as exc:
            self._describe()
            log.error("storage: %s is not usable: %s", self.config.storage_dir, exc)
            return 1
        self._open_log_files(storage)
        try:
            return await self._run_in(storage, upgraded_at)
        finally:
            if self.logfiles is not None:
                logging.getLogger().removeHandler(self.logfiles)
                self.logfiles.close()

    def _open_log_files(self, storage: Path) -> None:
        """The daemon's own rotating log files (LogUploadAsync), from the first line on."""
        c = self.config.doc.log
        files = LogFiles(
            storage / "logs",
            files=c.files,
            file_bytes=c.file_kb * 1024,
            offset=lambda: self.clock.offset,
        )
        try:
            files.open()
        except OSError as exc:
            log.error("logs: %s is not usable (%s); no log files, no LogUploadAsync",
                      files.directory, exc)  # fmt: skip
            return
        logging.getLogger().addHandler(files)
        self.logfiles = files

    async def _run_in(self, storage: Path, upgraded_at: float) -> int:
        self._describe()
        log.info("storage: %s ready", storage)
        devconfig = DevConfigStore(self.config)
        services = self._media_services(devconfig.get())
        services.playback = self.playback = await self._playback_service(storage)
        services.upgrade = self.upgrade = upgrade = await self._upgrade_service(storage)
        ctx = DeviceContext(
            config=self.config,
            clock=self.clock,
            channels=self.channels,
            devconfig=devconfig,
            reboot_device=self._reboot_device,
            upgraded_at=upgraded_at,
            services=services,
        )
        self.dispatcher = Dispatcher(ctx)
        self.link = link = PlatformLink(
            self.config,
            self.clock,
            self.dispatcher,
            self._keepalive,
            rng=self.rng,
            rpc_timeout=self.rpc_timeout,
        )
        ctx.reschedule = link.reschedule
        if self.logfiles is not None:
            services.logs = self.logs = self._log_service(self.logfiles, devconfig, link)
        ctx.local_address = link.local_address
        link.on_login(self._after_login)
        self.alarms = alarms = self._alarm_service(devconfig, link)
        self.hibernation = hibernation = HibernationService(
            self.config, link, self.channels,
            suspend=self._suspend_media, resume=self._resume_media,
            alarms_queued=lambda: int(alarms.status()["queued"]), activities=self._activities,
            rng=self.rng,
        )  # fmt: skip
        self._start_cameras(devconfig, alarms)
        # A sensor's alarm wakes a hibernating device (and is sent after its login).
        waking = WakingSink(alarms, self.channels, hibernation.trigger)
        self._start_hw(devconfig, waking)
        services.ptz = self.ptz = self._start_ptz(storage)
        self._start_power(link, waking, ctx)  # a low battery wakes it too, to say so
        control = LocalControl(
            storage,
            {
                "bind": self._cmd_bind,
                "status": self._cmd_status,
                "sensor": sensor_command(self.sensors),
                "sensors": self._cmd_sensors,
                "battery": self._cmd_battery,
            },
        )
        try:
            await control.start()
        except OSError as exc:
            log.warning("control socket unavailable (%s): hss-pu bind/status will not work", exc)
        self._spawn(self.notifier.watchdog_loop(), "watchdog")
        self._spawn(link.run(), "platform-link", forever=True)
        self._spawn(hibernation.run(), "hibernation", forever=True)
        self._spawn(upgrade.gate(), "firmware-trial")
        self.autoreboot = AutoReboot(devconfig, self.clock.now, self._reboot_device, storage)
        self._spawn(self.autoreboot.run(), "auto-reboot", forever=True)
        if self.record is not None:
            # Segments a previous run left in the spool, then its sessions.
            self._spawn(self.record.start(), "record-resume")
        self.notifier.ready(f"running as {self.config.device.id}")
        log.info("ready")
        await self._stop.wait()
        self.notifier.stopping("stopping")
        if self.live is not None:
            await self.live.close()  # flushes the last partial TS message of each push
        if self.record is not None:
            await self.record.close()  # partial segments and the memory queue to the spool
        await self._cancel_all()
        for media in self.media.values():
            await media.stop()
        for analyser in self.analysers.values():
            await analyser.close()
        if self.snapshot is not None:
            await self.snapshot.close()
        if self.playback is not None:
            await self.playback.close()
        await upgrade.close()
        if self.ptz is not None:
            await self.ptz.close()
        if self.power is not None:
            await self.power.close()
        if self.board is not None:
            self.board.close()
        await alarms.close()
        if self.logs is not None:
            await self.logs.close()
        if self.disk is not None:
            await self.disk.close()
        await control.close()
        if self._failed:
            log.error("stopped: exit status 1 (task %s failed)", ", ".join(self._failed))
            return 1
        log.info("stopped")
        return 0

    def _start_cameras(self, devconfig: DevConfigStore, sink: AlarmSink) -> None:
        """Motion (and person) detection on every channel whose profile asks for it,
        attached before its camera starts (picamera2 sets up its lores stream when it
        opens), then the cameras the configuration document has on."""
        doc = devconfig.get()
        for spec in self.config.profile.channels:
            media = self.media.get(spec.id)
            if media is None:
                continue
            if spec.motion_detection:
                alarms = doc["channels"][str(spec.id)]["alarms"]
                analyser = MotionAnalyser(
                    spec.id, sink, self.clock.now, config=parse_alarm_config(alarms)
                )
                media.attach_analysis(analyser)
                self.analysers[spec.id] = analyser
            if media.scene is not None:  # the emulated camera: hss-pu sensor motion on|off
                self.sensors.setdefault("motion", functools.partial(_scene_motion, self.media))
            if media.enabled:
                self._spawn(self._run_media(media), f"media-{spec.id}")
            else:
                log.info("camera ch%d: switched off (SetConfig)", spec.id)
        if self.analysers:
            devconfig.subscribe(functools.partial(self._apply_analysis, devconfig))

    def _apply_analysis(self, devconfig: DevConfigStore) -> None:
        """SetConfig/ResetConfig: each channel's motion and person settings, at once (the
        document was validated by wire.devconfig before it was saved)."""
        doc = devconfig.get()
        for cid, analyser in self.analysers.items():
            try:
                analyser.apply(parse_alarm_config(doc["channels"][str(cid)]["alarms"]))
            except ValueError as exc:
                log.error("motion ch%d: settings not applied: %s", cid, exc)

    def _start_hw(self, devconfig: DevConfigStore, sink: AlarmSink) -> None:
        """The profile's GPIO devices (reporting to ``sink``), their ``hss-pu sensor``
        entries and the LEDs; a machine that cannot give the pins logs why and runs
        without them."""
        p = self.config.profile
        if not (p.doc.sensors or p.doc.leds or p.doc.ptz.type == "servos"):
            return
        try:
            self.board = board = Board.open(p, sink, self.clock.now)
        except GpioUnavailable as exc:
            self._hw_error = str(exc)
            log.error("gpio: %s; running without sensors and LEDs", exc)
            reason = Board.refusal(p) if not p.gpio_emulated else f"no GPIO devices: {exc}"
            for s in p.doc.sensors:
                self.sensors[s.kind] = functools.partial(_refuse, reason)
            return
        for s in p.doc.sensors:
            self.sensors[s.kind] = functools.partial(board.drive, s.kind)
        first = self.media.get(0)  # the IR LEDs light the first camera's scene
        self.leds = leds = LedService(
            board,
            devconfig,
            self._led_mode,
            recording=lambda: any(c.record_session for c in self.channels),
            light=(lambda: first.lux) if first is not None else None,
            asleep=lambda: self.hibernation is not None and self.hibernation.state == "asleep",
        )
        for media in self.media.values():
            if media.scene is not None:  # the emulated picture turns monochrome under IR
                leds.ir_listeners.append(media.scene.set_ir)
        self._spawn(leds.run(), "leds", forever=True)

    def _start_ptz(self, storage: Path) -> PtzService | None:
        """The PTZ head (servos through the board, digital zoom on channel 0's picture,
        the emulated camera's view); motion detection pauses while it moves."""
        p = self.config.profile
        spec = p.doc.ptz
        if spec.type == "none":
            return None
        outputs = []
        if spec.type == "servos":
            head = self.board.pan_tilt if self.board is not None else None
            if head is None:
                log.error("ptz: no servos (%s): CtrlPTZ is not available", self._hw_error)
                return None
            outputs.append(lambda pos: head.set(pos.pan, pos.tilt))
        media = self.media.get(0)
        ch0 = p.channels[0]
        zoom = media is not None and (ch0.backend == "picamera2" or ch0.encoder != "passthrough")
        if media is not None:
            outputs.append(media.set_view)
        analyser = self.analysers.get(0)
        if analyser is not None:
            outputs.append(lambda _pos: analyser.suspend())
        ptz = PtzService(spec, storage, zoom=zoom, outputs=outputs)
        ptz.apply_position()
        lim = ptz.limits
        log.info(
            "ptz: %s, pan %s, tilt %s, zoom up to %.1fx, %d presets stored of %d",
            spec.type, lim.pan, lim.tilt, lim.zoom[1], len(ptz.store.ids()), spec.presets,
        )  # fmt: skip
        return ptz

    def _start_power(self, link: PlatformLink, alarms: AlarmSink, ctx: DeviceContext) -> None:
        """The profile's battery: its source (an ADC on the board's pins), BatteryChange
        after each login, DevStatus ``battery``; a source that cannot be opened is logged
        and the device runs without one (DevStatus then leaves ``battery`` out)."""
        p = self.config.profile
        spec = p.doc.battery
        if not spec.present:
            return
        try:
            source = open_source(p, factory=self.board.factory if self.board else None)
        except (BatteryError, GpioUnavailable) as exc:
            log.error("battery: %s; running without a battery level", exc)
            return
        self.power = power = PowerService(source, spec, link, alarms, self.clock.now)
        ctx.battery = lambda: power.level
        ctx.battery_source = True
        link.on_login(power.logged_in)
        self._spawn(power.run(), "battery", forever=True)

    def _led_mode(self) -> str:
        if self.hibernation is not None and self.hibernation.state == "asleep":
            return "off"  # a sleeping battery camera does not blink "connecting"
        return status_mode(self.channels, bool(self.link and self.link.session))

    def _media_services(self, doc: dict[str, Any]) -> Services:
        """One capture+encode per channel, consumed by live and snapshot (encode once);
        each camera runs as the configuration document says (quality, picture, on/off)."""
        if not self.start_media:
            return Services()
        c = self.config
        base: dict[int, EncodeSettings] = {}
        for spec in c.profile.channels:
            if spec.id == 0:
                settings = EncodeSettings.from_config(spec, c.camera, c.bitrate)
            else:
                w, h = spec.max_resolution
                cam = CameraSection(width=w, height=h, fps=spec.max_fps)
                settings = EncodeSettings.from_config(spec, cam, spec.default_bitrate)
            source = c.channel_sources[spec.id]
            base[spec.id] = settings
            ch_doc = doc["channels"][str(spec.id)]
            media = MediaChannel(
                spec.id,
                source,
                settings_for(settings, ch_doc),
                self.clock.now,
                scene=Scene(c.camera.scene) if source == "emulated" else None,
            )
            media.enabled = bool(ch_doc["on"])
            self.media[spec.id] = media
            self.channels.get(spec.id).camera = functools.partial(camera_state, media)
        p = c.platform
        self.live = LiveService(
            self.media, self.channels, backoff_scale=p.backoff_scale, rng=self.rng,
            guard=self.url_guard,
        )  # fmt: skip
        self.snapshot = SnapshotService(
            self.media, mac=c.device.mac, ca_file=c.ca_file, guard=self.url_guard
        )
        self.record = self._record_service()
        camera = CameraService(self.media, base, self.channels, live=self.live, record=self.record)
        self.disk = self._disk_service(self.record)
        for cid in self.media:  # RebootChannel restarts the camera's capture and encoder
            self.channels.get(cid).restart_hooks.append(functools.partial(camera.restart, cid))
        return Services(
            live=self.live, snapshot=self.snapshot, record=self.record, camera=camera,
            disk=self.disk,
        )  # fmt: skip

    def _disk_service(self, record: RecordService) -> DiskService:
        """GetDiskInfo/FormatDisk on the recording store: the spool's directory, or the
        profile's mount; never the system's own device nor storage.dir's."""
        c = self.config
        rec = c.profile.doc.recording
        spool = record.uploader.spool
        if rec.store == "mount":
            point = Path(rec.path)
        else:
            point = spool.dir if spool is not None else Path(c.storage_dir) / "spool"
        return DiskService(
            rec.store, point, spool=spool, uploader=record.uploader,
            protected=(*PROTECTED_PATHS, c.storage_dir),
        )  # fmt: skip

    def _log_service(
        self, files: LogFiles, devconfig: DevConfigStore, link: PlatformLink
    ) -> LogUploadService:
        """LogUploadAsync: uploads under the URL-safety rules, LogDone on the link."""
        c = self.config
        http = platform_http(
            c.device.mac, c.ca_file, trust=Trust.UPLOADS, timeout=30.0, connect_timeout=10.0,
            guard=self.url_guard,
        )  # fmt: skip
        logs = LogUploadService(
            files, http=http, guard=self.url_guard, mac=c.device.mac,
            tz=lambda: devconfig.tz, send_done=link.send_event,
            backoff_scale=c.platform.backoff_scale,
        )  # fmt: skip
        link.on_login(logs.logged_in)
        return logs

    async def _playback_service(self, storage: Path) -> PlaybackService | None:
        """PlayVideo on the channels with a speaker; None (101) on a device without one."""
        c = self.config
        speakers = {s.id: (s.audio_output, s.audio) for s in c.profile.channels}
        dev0, audio0 = speakers[0]
        if dev0 is not None and c.camera.audio_output is not None:
            speakers[0] = (c.camera.audio_output, audio0)
        outputs = {
            ch: OutputSpec("null" if dev == "null" else "alsa", dev, audio.sample_rate)
            for ch, (dev, audio) in speakers.items()
            if dev is not None
        }
        if not outputs:
            return None
        if any(o.kind == "alsa" for o in outputs.values()):
            alsa_environment()
        svc = PlaybackService(
            outputs,
            {ch: speakers[ch][1].play_max_mb << 20 for ch in outputs},
            work_dir=storage / "playback",
            mac=c.device.mac,
            ca_file=c.ca_file,
            guard=self.url_guard,
        )
        try:
            await svc.start()
        except OSError as exc:
            log.error(
                "playback: %s is not usable (%s); PlayVideo will answer 101", svc.work_dir, exc
            )
            await svc.close()
            return None
        return svc

    async def _upgrade_service(self, storage: Path) -> UpgradeService:
        """UpgradeFirmware/QueryUpgrade: bundles staged under storage.dir, checked against
        upgrade.trusted_keys, installed into the slot root, and this process's trial."""
        c = self.config
        http = platform_http(
            c.device.mac, c.ca_file, trust=Trust.UPLOADS, timeout=60.0, connect_timeout=15.0,
            guard=self.url_guard,
        )  # fmt: skip
        up = c.doc.upgrade
        svc = UpgradeService(
            store=self.slots,
            staging=storage / "upgrade",
            http=http,
            guard=self.url_guard,
            trusted=trusted_keys(c.trusted_keys),
            threshold=up.threshold,
            hardware_model=c.profile.hardware_model,
            running_model=c.profile.firmware_model,
            running_version=running_version(),
            trial_seconds=up.trial_seconds,
            now=self.clock.now,
            restart=self._restart,
            healthy=self._health,
            backoff=lambda n: min(30.0, 2.0**n) * c.platform.backoff_scale,
        )
        try:
            await svc.start()
        except OSError as exc:
            log.error("firmware: %s is not usable (%s)", self.slots.root, exc)
        if not svc.ready:
            log.info("firmware: no upgrade.trusted_keys: UpgradeFirmware will be refused")
        return svc

    def _health(self) -> str | None:
        """What a firmware trial still lacks to be committed (None: nothing)."""
        link = self.link
        if link is None or link.logins == 0:
            return "no Vd login"
        if link.keepalives_answered == 0:
            return "no Keepalive answered"
        for cid, media in self.media.items():
            if media.enabled and camera_state(media) != ONLINE:
                return f"camera ch{cid} not open ({media.stats.state})"
        return None

    def _restart(self) -> None:
        """Stop, then start again through the launcher (cli.py: EXIT_RESTART)."""
        self.restart_requested = True
        self._stop.set()

    def _alarm_service(self, devconfig: DevConfigStore, link: PlatformLink) -> AlarmService:
        """Alarms follow the configuration document, go out through the link (queued
        while offline) and upload their pictures under the URL-safety rules."""
        c = self.config
        http = platform_http(
            c.device.mac, c.ca_file, trust=Trust.UPLOADS, timeout=10.0, guard=self.url_guard
        )
        alarms = AlarmService(
            self.channels, devconfig.get, link, self.clock.now,
            max_per_minute=c.doc.alarms.max_per_minute, media=self.media, http=http,
        )  # fmt: skip
        devconfig.subscribe(alarms.config_changed)
        link.on_login(alarms.logged_in)
        alarms.start()
        return alarms

    def _record_service(self) -> RecordService:
        c = self.config
        rec = c.profile.doc.recording
        spool: Spool | None = None
        max_mb = c.doc.storage.spool_max_mb or rec.max_mb
        if rec.store != "none" and max_mb > 0:
            mount = Path(rec.path) if rec.store == "mount" else None
            spool = Spool(
                (mount or Path(c.storage_dir)) / "spool", max_mb * 1024 * 1024, mount=mount
            )
        # Segment uploads may go to a storage service the system store trusts.
        http = platform_http(
            c.device.mac, c.ca_file, trust=Trust.UPLOADS, timeout=30.0, connect_timeout=10.0,
            guard=self.url_guard,
        )  # fmt: skip
        uploader = Uploader(
            http,
            spool,
            memory_bytes=(c.doc.storage.memory_queue_mb or rec.memory_queue_mb) * 1024 * 1024,
            backoff_scale=c.platform.backoff_scale,
            rng=self.rng,
            on_platform_time=self._platform_time,
        )
        return RecordService(
            self.media,
            self.channels,
            uploader,
            clock=self.clock.now,
            state_dir=Path(c.storage_dir),
            prerecord_cap=rec.max_prerecord_seconds,
            prerecord_default=c.doc.camera.prerecord_seconds,
            allow_insecure=c.platform.allow_insecure,
            guard=self.url_guard,
        )

    def _platform_time(self, t: float) -> None:
        """Vr getcurrenttime: the same 10 s rule as Vs (9.3.1.2 step 3)."""
        skew = t - self.clock.now()
        if self.clock.sync(t):
            log.warning("clock: %.1f s off the platform's Vr time; adjusted", skew)

    async def _run_media(self, media: MediaChannel) -> None:
        """Start a channel's camera; a camera that cannot work marks the channel (state 3
        in Keepalive, from the camera's own state), not us."""
        try:
            await media.start()
        except MediaError as exc:
            log.error("camera ch%d: %s", media.channel_id, exc)
            return
        log.info(
            "camera ch%d: running (%s)",
            media.channel_id,
            "passthrough" if media.stats.passthrough else "encoding",
        )

    async def _suspend_media(self) -> None:
        """Hibernation: no capture, no encoding; the pre-record rings start afresh."""
        for media in self.media.values():
            await media.stop()
        if self.record is not None:
            self.record.drop_prerecord()

    async def _resume_media(self) -> None:
        """Awake again: every camera that is switched on starts (in the background: the
        Vd login does not wait for it)."""
        for media in self.media.values():
            if media.enabled:
                self._spawn(self._run_media(media), f"media-{media.channel_id}")

    def _activities(self) -> list[str]:
        """Work under way that hibernation must not cut short (wire-notes' idle rule lists
        pushes, recordings, KeepAwaken and alarms; a sleeping device also cannot play a
        clip, finish an upload or a format, or turn its head)."""
        out: list[str] = []
        if self.playback is not None:
            for ch in self.playback.outputs:
                if self.playback.status(ch).status != "stopped":
                    out.append(f"playback on ch{ch}")
        if self.logs is not None and self.logs.status()["uploads_waiting"]:
            out.append("log upload under way")
        if self.disk is not None and self.disk.formatting:
            out.append("formatting the recording store")
        if self.ptz is not None and self.ptz.motion is not None:
            out.append("PTZ moving")
        if self.upgrade is not None and self.upgrade.active:
            out.append("firmware upgrade")
        return out

    def _keepalive(self) -> KeepaliveParams:
        # state 2: upgrading, from the start of the install to the commit (wire-notes).
        upgrading = self.upgrade is not None and self.upgrade.busy
        return KeepaliveParams(
            mac_id=self.config.device.mac,
            state=2 if upgrading else 1,
            channels=self.channels.next_keepalive(),
        )

    async def _after_login(self, session: VdSession) -> None:
        if self._pending_bind:
            await self._send_bind(self._pending_bind)

    async def _send_bind(self, bind_id: str) -> bool:
        assert self.link is not None
        sent = await self.link.send_event(
            BindParams(mac_id=self.config.device.mac, bind_id=bind_id)
        )
        if sent:
            log.info("Bind sent (bind_id %s)", bind_id)
            self._pending_bind = None
        else:
            self._pending_bind = bind_id
            log.info("Bind queued until the next login (bind_id %s)", bind_id)
        return sent

    async def _cmd_bind(self, req: dict[str, Any]) -> dict[str, Any]:
        bind_id = req.get("bind_id")
        if not isinstance(bind_id, str) or not 0 < len(bind_id) <= 256:
            return {"ok": False, "error": "bind_id must be a non-empty string"}
        return {"ok": True, "sent": await self._send_bind(bind_id)}

    async def _cmd_battery(self, req: dict[str, Any]) -> dict[str, Any]:
        """``hss-pu battery PERCENT [--charging|--discharging]``: the emulated battery's
        level, read at once (so its BatteryChange and alarm follow as from the model)."""
        power = self.power
        if power is None:
            return {"ok": False, "error": "this device has no battery (profile battery.present)"}
        source = power.source
        if not isinstance(source, EmulatedBattery):
            return {"ok": False, "error": f"the battery is a real one ({source.describe()})"}
        percent, charging = req.get("percent"), req.get("charging")
        if (
            not isinstance(percent, int | float)
            or isinstance(percent, bool)
            or not 0 <= percent <= 100
        ):
            return {"ok": False, "error": "percent must be a number 0..100"}
        if charging is not None and not isinstance(charging, bool):
            return {"ok": False, "error": "charging must be true or false"}
        source.set(float(percent), charging)
        level = await power.sample()
        return {"ok": True, "battery": level, "charging": power.charging}

    async def _cmd_sensors(self, req: dict[str, Any]) -> dict[str, Any]:
        """What ``hss-pu sensor`` and ``hss-pu battery`` can drive here (the platform
        console's buttons for an emulated device)."""
        power = self.power
        battery = power is not None and isinstance(power.source, EmulatedBattery)
        return {"ok": True, "sensors": sorted(self.sensors), "battery": battery}

    async def _cmd_status(self, req: dict[str, Any]) -> dict[str, Any]:
        link = self.link
        return {
            "ok": True,
            "device": self.config.device.id,
            "online": bool(link and link.session),
            "logins": link.logins if link else 0,
            "channels": [msgspec.to_builtins(c) for c in self.channels.keepalive()],
            "media": {ch: msgspec.to_builtins(m.stats) for ch, m in self.media.items()},
            "live": self._live_status(),
            "record": self.record.status() if self.record else None,
            "alarms": self.alarms.status() if self.alarms else None,
            "disk": {**self.disk.status(), **msgspec.to_builtins(await self.disk.info())}
            if self.disk
            else None,
            "logs": self.logs.status() if self.logs else None,
            "playback": self.playback.report() if self.playback else None,
            "hw": self._hw_status(),
            "ptz": self.ptz.status() if self.ptz else None,
            "battery": self.power.status() if self.power else None,
            "power": self.hibernation.status() if self.hibernation else None,
            "firmware": self.upgrade.report() if self.upgrade else None,
        }

    def _hw_status(self) -> dict[str, Any] | None:
        if self.board is None:
            return {"error": self._hw_error} if self._hw_error else None
        out = self.board.status()
        if self.leds is not None:
            out["light"] = self.leds.status()
        return out

    def _live_status(self) -> dict[int, dict[str, Any]]:
        """Per push: our counters and libsrt's (RTT, retransmissions, losses, drops)."""
        out: dict[int, dict[str, Any]] = {}
        for ch, push in (self.live.pushes if self.live else {}).items():
            entry: dict[str, Any] = {"stream_id": push.stream_id, **msgspec.to_builtins(push.stats)}
            sender = push.sender
            if sender is not None:
                try:
                    entry["srt"] = msgspec.to_builtins(sender.stats())
                except OSError as exc:
                    entry["srt"] = {"error": str(exc)}
            out[ch] = entry
        return out

    async def _reboot_device(self) -> None:
        """RebootDevice: the host through logind where the profile allows, else restart us."""
        if self.config.profile.doc.reboot == "host":
            busctl = shutil.which("busctl")
            if busctl:
                proc = await asyncio.create_subprocess_exec(
                    busctl, "call", "org.freedesktop.login1", "/org/freedesktop/login1",
                    "org.freedesktop.login1.Manager", "Reboot", "b", "false",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                _, err = await proc.communicate()
                if proc.returncode == 0:
                    log.warning("RebootDevice: host reboot requested from systemd-logind")
                    return
                log.error(
                    "RebootDevice: logind refused (%s); restarting the daemon instead",
                    err.decode(errors="replace").strip()[:200],
                )
            else:
                log.error("RebootDevice: no busctl; restarting the daemon instead")
        log.warning("RebootDevice: restarting the daemon")
        self.restart_requested = True
        self._stop.set()

    def _spawn(self, coro: Awaitable[None], name: str, *, forever: bool = False) -> None:
        """Run ``coro`` as a task; if it fails (or, ``forever``, ends at all) the daemon
        stops with exit status 1, so systemd's Restart=on-failure brings it back."""

        async def run() -> None:
            await coro
            if forever and not self._stop.is_set():
                raise RuntimeError(f"{name} ended")

        self._tasks.spawn(run(), name)

    def _task_failed(self, name: str, exc: BaseException) -> None:
        # TaskSet has logged the traceback.
        log.error("%s task failed; stopping the daemon", name)
        self._failed.append(name)
        self._stop.set()

    async def _cancel_all(self) -> None:
        for name in await self._tasks.cancel_all(STOP_TIMEOUT):
            log.warning("task %s did not stop within %.0f s", name, STOP_TIMEOUT)
