"""The link to the platform: Vs scheduling, the Vd connection, keep-alive, reconnection.

The loop a camera lives in (9.3.1.2, 9.3.1.3, 9.3.2): ask Vs where Vd is (adopting its
time), log in to Vd, send Keepalive at once and then every interval, ask GetServerInfo
for that interval, and when anything breaks, wait per the retry schedule and try again;
more than 15 failed Vd connections in a row, or a Reschedule event, send us back to Vs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

import httpx
from websockets.exceptions import InvalidStatus, WebSocketException

from hss_pu import __version__
from hss_pu.clients.vd import RPC_TIMEOUT, DeadLinkError, RequestHandler, VdSession, open_vd
from hss_pu.clients.vs import VsError, fetch_server_addr, make_http_client, tls_verify
from hss_pu.clock import OffsetClock
from hss_pu.config import Config
from hss_pu.logsetup import redact
from hss_pu.retry import MAX_FAILURES_BEFORE_RESCHEDULE, retry_delay
from hss_pu.wire.vd import (
    GetServerInfoParams,
    GetServerInfoResp,
    KeepaliveParams,
    RpcError,
    decode_result,
    login_url,
)
from hss_pu.wire.vs import ServerAddr, VsFormatError, vd_base_url

__all__ = ["PlatformLink"]

log = logging.getLogger("hss_pu.link")


class PlatformLink:
    def __init__(
        self,
        config: Config,
        clock: OffsetClock,
        handler: RequestHandler,
        keepalive: Callable[[], KeepaliveParams],
        *,
        rng: random.Random | None = None,
        rpc_timeout: float = RPC_TIMEOUT,
    ) -> None:
        self.config = config
        self.rpc_timeout = rpc_timeout
        self.clock = clock
        self.handler = handler
        self.keepalive_params = keepalive
        self.rng = rng
        self.session: VdSession | None = None
        self.server_addr: ServerAddr | None = None
        self.vd_base: str | None = None
        self.hb_interval = float(config.platform.keepalive_interval)
        self.hb_token: str | None = None
        self.logins = 0  # successful Vd logins since start-up
        self.vs_requests = 0
        self.vd_failures = 0  # consecutive
        self.online = asyncio.Event()
        self._reschedule = False
        self._interval_changed = asyncio.Event()
        self._on_login: list[Callable[[VdSession], Any]] = []
        self._ssl: ssl.SSLContext | None = None

    # --- what the daemon and the dispatcher use ------------------------------------

    def on_login(self, callback: Callable[[VdSession], Any]) -> None:
        """Run ``callback(session)`` (sync or async) after every successful login."""
        self._on_login.append(callback)

    def reschedule(self) -> None:
        """Drop the Vd session and go back to Vs (the Reschedule event)."""
        self._reschedule = True
        if self.session is not None:
            asyncio.get_running_loop().create_task(self.session.close("reschedule"))

    def local_address(self) -> str | None:
        return self.session.local_address if self.session else None

    async def send_event(self, name: str, params: Any) -> bool:
        """Send an event if online; False when there is no session to send it on."""
        s = self.session
        if s is None:
            return False
        try:
            await s.send_event(name, params)
        except DeadLinkError:
            return False
        return True

    async def call(self, name: str, params: Any) -> dict[str, Any]:
        s = self.session
        if s is None:
            raise DeadLinkError("not connected to the platform")
        return await s.call(name, params)

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        c = self.config
        self._ssl = tls_verify(c.ca_file)
        async with make_http_client(c.device.mac, c.ca_file) as http:
            need_schedule = True
            while True:
                if need_schedule:
                    await self._schedule(http)
                    need_schedule = False
                    self.vd_failures = 0
                try:
                    await self._connect_and_serve()
                except _LoginFailed as exc:
                    self.vd_failures += 1
                    log.warning("Vd: %s (failure %d in a row)", exc, self.vd_failures)
                else:
                    if self._reschedule:
                        self._reschedule = False
                        need_schedule = True
                        continue
                    # An established session ended: this is reconnection try 1.
                    self.vd_failures = 1
                if self.vd_failures > MAX_FAILURES_BEFORE_RESCHEDULE:
                    log.warning(
                        "Vd: more than %d failed connections: scheduling again through Vs",
                        MAX_FAILURES_BEFORE_RESCHEDULE,
                    )
                    need_schedule = True
                    continue
                delay = retry_delay(self.vd_failures, c.platform.backoff_scale, self.rng)
                log.info("Vd: reconnecting in %.1f s", delay)
                await asyncio.sleep(delay)

    async def _schedule(self, http: httpx.AsyncClient) -> None:
        c = self.config
        failures = 0
        while True:
            self.vs_requests += 1
            try:
                addr, received = await fetch_server_addr(
                    http, c.platform.schedule_url, c.device.mac
                )
                self.vd_base = vd_base_url(addr, allow_insecure=c.platform.allow_insecure)
            except (VsError, VsFormatError) as exc:
                failures += 1
                delay = retry_delay(failures, c.platform.backoff_scale, self.rng)
                log.warning("Vs: %s; attempt %d failed, retry in %.1f s", exc, failures, delay)
                await asyncio.sleep(delay)
                continue
            self.server_addr = addr
            if addr.platform_time is not None and self.clock.sync(
                addr.platform_time, received_at=received
            ):
                log.info("clock: platform time adopted, offset %+.3f s", self.clock.offset)
            log.info("Vs: scheduled to Vd at %s", self.vd_base)
            return

    def _url(self) -> str:
        c = self.config
        assert self.vd_base is not None
        return login_url(
            self.vd_base,
            login_code=c.device.id,
            login_passwd=c.password.reveal(),
            hardware_model=c.profile.hardware_model,
            firmware_model=c.profile.firmware_model,
            sdk=f"hss-pu/{__version__}",
            reconnect=self.logins > 0,
        )

    async def _connect_and_serve(self) -> None:
        reconnect = int(self.logins > 0)
        try:
            ws = await open_vd(self._url(), self._ssl)
        except InvalidStatus as exc:
            raise _LoginFailed(f"login refused: HTTP {exc.response.status_code}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            # Some websockets errors quote the URL, and the URL carries the password.
            raise _LoginFailed(
                f"cannot connect: {type(exc).__name__}: {redact(str(exc))}"
            ) from None
        session = VdSession(ws, self.handler, rpc_timeout=self.rpc_timeout)
        self.logins += 1
        self.vd_failures = 0
        self.session = session
        self.online.set()
        log.info("Vd: online as %s (reconnect=%d)", self.config.device.id, reconnect)
        tasks = [
            asyncio.create_task(session.run(), name="vd-session"),
            asyncio.create_task(self._keepalive(session), name="vd-keepalive"),
            asyncio.create_task(self._server_info(session), name="vd-serverinfo"),
        ]
        for cb in self._on_login:
            res = cb(session)
            if asyncio.iscoroutine(res):
                tasks.append(asyncio.create_task(res))
        try:
            await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.online.clear()
            self.session = None
            await session.close()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            s = session.stats
            log.info(
                "Vd: offline (handled %d requests, %d events, %d malformed frames)",
                s.requests,
                s.events,
                s.malformed,
            )

    async def _keepalive(self, session: VdSession) -> None:
        """Keepalive right after login, then every interval; silence means a dead link."""
        while not session.closed:
            try:
                await session.call("Keepalive", self.keepalive_params())
            except RpcError as exc:
                log.warning("Vd: Keepalive answered with error %d: %s", exc.code, exc.msg)
            except DeadLinkError:
                return
            self._interval_changed.clear()
            # Wake early for a new interval, and end with the session, not only on cancel.
            waits = [
                asyncio.ensure_future(self._interval_changed.wait()),
                asyncio.ensure_future(session.wait_closed()),
            ]
            try:
                await asyncio.wait(
                    waits, timeout=self.hb_interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waits:
                    w.cancel()

    async def _server_info(self, session: VdSession) -> None:
        params = GetServerInfoParams(mac_id=self.config.device.mac, state=1)
        try:
            raw = await session.call("GetServerInfo", params)
            info: GetServerInfoResp = decode_result("GetServerInfo", raw)
        except RpcError as exc:
            log.warning("Vd: GetServerInfo failed: %d %s", exc.code, exc.msg)
            return
        except DeadLinkError:
            return
        self.hb_token = info.hb_token
        if info.hb_interval and float(info.hb_interval) != self.hb_interval:
            self.hb_interval = float(info.hb_interval)
            log.info("Vd: keep-alive interval %d s (GetServerInfo)", info.hb_interval)
            self._interval_changed.set()


class _LoginFailed(Exception):
    pass
