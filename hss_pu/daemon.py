"""The daemon: wires the services together and owns the process lifecycle.

Lifecycle rules a camera in the field depends on: a clear log line per step, READY only
once we are running, the systemd watchdog fed from the event loop (so a wedged loop gets
us restarted), and SIGTERM/SIGINT ending everything within 5 s with exit status 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable

from hss_pu import __version__
from hss_pu.clients.vs import VsError, fetch_server_addr, make_http_client
from hss_pu.clock import OffsetClock
from hss_pu.config import Config
from hss_pu.fsutil import ensure_private_dir
from hss_pu.logsetup import add_secret
from hss_pu.retry import retry_delay
from hss_pu.sdnotify import SdNotifier
from hss_pu.wire.vs import ServerAddr, VsFormatError, vd_base_url

__all__ = ["STOP_TIMEOUT", "Daemon"]

log = logging.getLogger("hss_pu.daemon")

STOP_TIMEOUT = 4.0  # leaves a margin inside the 5 s promise (and TimeoutStopSec)


class Daemon:
    def __init__(self, config: Config, *, notifier: SdNotifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or SdNotifier.from_env()
        self.clock = OffsetClock()
        self.server_addr: ServerAddr | None = None
        self.vd_url: str | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        add_secret(config.password.reveal())

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

    async def _run(self) -> int:
        self._describe()
        try:
            storage = ensure_private_dir(self.config.storage_dir)
        except OSError as exc:
            log.error("storage: %s is not usable: %s", self.config.storage_dir, exc)
            return 1
        log.info("storage: %s ready", storage)
        self._spawn(self._control_plane(), "control")
        self._spawn(self.notifier.watchdog_loop(), "watchdog")
        self.notifier.ready(f"running as {self.config.device.id}")
        log.info("ready")
        await self._stop.wait()
        self.notifier.stopping("stopping")
        await self._cancel_all()
        log.info("stopped")
        return 0

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                # A service that dies must not take the camera down silently.
                log.exception("%s task failed; stopping the daemon", name)
                self._stop.set()

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def _cancel_all(self) -> None:
        for t in self._tasks:
            t.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
        for t in pending:
            log.warning("task %s did not stop within %.0f s", t.get_name(), STOP_TIMEOUT)
        self._tasks.clear()

    async def _control_plane(self) -> None:
        await self._schedule()
        log.info("Vd session: not in this build yet (control-plane issue); idling")

    async def _schedule(self) -> None:
        """Vs scheduling with the 9.3.1.3 retry schedule, until we have a Vd address."""
        c = self.config
        failures = 0
        async with make_http_client(c.device.mac, c.ca_file) as http:
            while True:
                try:
                    addr, received = await fetch_server_addr(
                        http, c.platform.schedule_url, c.device.mac
                    )
                    self.vd_url = vd_base_url(addr, allow_insecure=c.platform.allow_insecure)
                except (VsError, VsFormatError) as exc:
                    failures += 1
                    delay = retry_delay(failures, c.platform.backoff_scale)
                    log.warning("Vs: %s; attempt %d failed, retry in %.1f s", exc, failures, delay)
                    await asyncio.sleep(delay)
                    continue
                self.server_addr = addr
                if addr.platform_time is not None and self.clock.sync(
                    addr.platform_time, received_at=received
                ):
                    log.info("clock: platform time adopted, offset %+.3f s", self.clock.offset)
                log.info("Vs: scheduled to Vd at %s", self.vd_url)
                return
