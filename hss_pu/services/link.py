"""The link to the platform: Vs scheduling, the Vd connection, keep-alive, reconnection.

The loop a camera lives in (9.3.1.2, 9.3.1.3, 9.3.2): ask Vs where Vd is (adopting its
time), log in to Vd, send Keepalive at once and then every interval, ask GetServerInfo
for that interval, and when anything breaks, wait per the retry schedule and try again;
more than 15 failed Vd connections in a row, or a Reschedule event, send us back to Vs.
Hibernation is a state of this loop: :meth:`PlatformLink.hibernate` closes the session
and holds the loop until :meth:`PlatformLink.wake`, which logs in again at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from hss_pu import __version__
from hss_pu.clients.http import HttpClient, Trust, platform_http, tls_context
from hss_pu.clients.vd import RPC_TIMEOUT, RequestHandler, VdSession, connect_vd
from hss_pu.clients.vs import TIMEOUT as VS_TIMEOUT
from hss_pu.clients.vs import VsError, fetch_server_addr
from hss_pu.clock import OffsetClock
from hss_pu.config import Config
from hss_pu.errors import BadReply, DeadLinkError, LinkError, RpcRefused
from hss_pu.logsetup import add_secret
from hss_pu.retry import MAX_FAILURES_BEFORE_RESCHEDULE, retry_delay
from hss_pu.tasks import TaskSet
from hss_pu.wire.hibernation import parse_address
from hss_pu.wire.vd import (
    GetServerInfoParams,
    GetServerInfoResp,
    KeepaliveParams,
    UpCall,
    UpEvent,
    login_url,
)
from hss_pu.wire.vs import ServerAddr, VsFormatError, vd_base_url

__all__ = ["PlatformLink"]

log = logging.getLogger("hss_pu.link")

R = TypeVar("R")

SESSION_STOP_TIMEOUT = 2.0  # a session's tasks get this long to end after it closes


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
        # The last GetServerInfo reply of this session (None until it is answered), and
        # its hibernation address: (host, port), or why it is unusable.
        self.server_info: GetServerInfoResp | None = None
        self.hibernation: tuple[str, int] | str | None = None
        self._awake = asyncio.Event()
        self._awake.set()
        self.logins = 0  # successful Vd logins since start-up
        self.keepalives_answered = 0  # Keepalives the platform answered without an error
        self.vs_requests = 0
        self.vd_failures = 0  # consecutive
        self.online = asyncio.Event()
        self._reschedule = False
        self._interval_changed = asyncio.Event()
        self._on_login: list[Callable[[VdSession], Any]] = []
        self._ssl: ssl.SSLContext | None = None
        self._tasks = TaskSet(log)

    # --- what the daemon and the dispatcher use ------------------------------------

    def on_login(self, callback: Callable[[VdSession], Any]) -> None:
        """Run ``callback(session)`` (sync or async) after every successful login."""
        self._on_login.append(callback)

    def reschedule(self) -> None:
        """Drop the Vd session and go back to Vs (the Reschedule event)."""
        self._reschedule = True
        if self.session is not None:
            self._tasks.spawn(self.session.close("reschedule"), "vd-reschedule")

    @property
    def hibernating(self) -> bool:
        return not self._awake.is_set()

    async def hibernate(self) -> None:
        """Close the Vd session and stay off Vd until :meth:`wake` (the power service's
        sleep); no reconnection, no failure counted."""
        self._awake.clear()
        s = self.session
        if s is not None:
            await s.close("hibernating")

    def wake(self) -> None:
        """Log in to Vd again at once (``reconnect=1``)."""
        self._awake.set()

    def local_address(self) -> str | None:
        return self.session.local_address if self.session else None

    def platform_hosts(self) -> list[str]:
        """The hosts the device reached Vs and Vd on: URL safety lets platform URLs name
        them even where they are private addresses (a platform on the LAN)."""
        urls = [self.config.platform.schedule_url, self.vd_base or ""]
        return [h for h in (urlsplit(u).hostname for u in urls if u) if h]

    async def call(self, params: UpCall[R]) -> R:
        """A PU -> platform RPC, named by its params' type; returns the typed reply.

        LinkError when it did not work out: DeadLinkError (offline, or no reply in time),
        RpcRefused (an error reply), BadReply (a reply without what the message needs).
        """
        s = self.session
        if s is None:
            raise DeadLinkError("not connected to the platform")
        return await s.call(params)

    async def send_event(self, params: UpEvent) -> bool:
        """A PU -> platform event; False when there is no session to send it on."""
        s = self.session
        if s is None:
            return False
        try:
            await s.send_event(params)
        except DeadLinkError:
            return False
        return True

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Schedule through Vs, serve Vd sessions; again through Vs when 9.3.1.2 says so."""
        c = self.config
        self._ssl = tls_context(c.ca_file, Trust.PLATFORM)
        vs = platform_http(c.device.mac, c.ca_file, trust=Trust.PLATFORM, timeout=VS_TIMEOUT)
        async with vs as http:
            while True:
                await self._schedule(http)
                await self._serve()

    async def _serve(self) -> None:
        """Vd sessions and reconnections; returns when it is time to ask Vs again.

        A session counts as established once our first Keepalive is answered: one the
        platform closes before that is a failed connection like a refused login, so a
        platform that accepts and drops sends us back to Vs after more than 15.
        """
        scale = self.config.platform.backoff_scale
        self.vd_failures = 0
        while True:
            if self.hibernating:
                log.info("Vd: closed for hibernation")
                await self._awake.wait()
                self.vd_failures = 0
                log.info("Vd: awake, logging in again")
            try:
                established = await self._connect_and_serve()
            except LinkError as exc:
                self.vd_failures += 1
                log.warning("Vd: %s (failure %d in a row)", exc, self.vd_failures)
            else:
                if established:
                    # An established session ended: this is reconnection try 1.
                    self.vd_failures = 1
                else:
                    self.vd_failures += 1
                    log.warning(
                        "Vd: session closed before our first Keepalive was answered "
                        "(failure %d in a row)",
                        self.vd_failures,
                    )
            if self.hibernating:
                continue
            if self._reschedule:
                self._reschedule = False
                # The spread of try 1, so a fleet told at once does not hit Vs at once.
                delay = retry_delay(1, scale, self.rng)
                log.info("Vs: scheduling again in %.1f s (Reschedule)", delay)
                await asyncio.sleep(delay)
                return
            if self.vd_failures > MAX_FAILURES_BEFORE_RESCHEDULE:
                log.warning(
                    "Vd: more than %d failed connections: scheduling again through Vs",
                    MAX_FAILURES_BEFORE_RESCHEDULE,
                )
                return
            delay = retry_delay(self.vd_failures, scale, self.rng)
            log.info("Vd: reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _schedule(self, http: HttpClient) -> None:
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
            for note in addr.ignored:
                log.warning("Vs: reply field %s", note)
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

    async def _connect_and_serve(self) -> bool:
        """One Vd session, to its end; True when our first Keepalive was answered.

        LinkError when the login fails. A task of the session that fails unexpectedly
        (a bug) is logged; the reader's or the keep-alive's is raised, ending the link.
        """
        reconnect = int(self.logins > 0)
        session = await connect_vd(
            self._url(), self._ssl, self.handler, rpc_timeout=self.rpc_timeout
        )
        self.logins += 1
        self.server_info = None
        self.hibernation = None
        self.session = session
        self.online.set()
        log.info("Vd: online as %s (reconnect=%d)", self.config.device.id, reconnect)
        answered = asyncio.Event()
        tasks = TaskSet(log)
        essential = [
            tasks.spawn(session.run(), "vd-session"),
            tasks.spawn(self._keepalive(session, answered), "vd-keepalive"),
        ]
        tasks.spawn(self._server_info(session), "vd-serverinfo")
        try:
            for cb in self._on_login:
                try:
                    res = cb(session)
                except Exception:
                    log.exception("Vd: login callback %r failed", cb)
                    continue
                if asyncio.iscoroutine(res):
                    tasks.spawn(res, "vd-on-login")
            await asyncio.wait(essential, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.online.clear()
            self.session = None
            await session.close()
            for name in await tasks.cancel_all(SESSION_STOP_TIMEOUT):
                log.warning("Vd: task %s did not stop", name)
            s = session.stats
            log.info(
                "Vd: offline (handled %d requests, %d events, %d malformed frames, %d busy)",
                s.requests,
                s.events,
                s.malformed,
                s.busy,
            )
        for t in essential:
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                raise exc
        return answered.is_set()

    async def _keepalive(self, session: VdSession, answered: asyncio.Event) -> None:
        """Keepalive right after login, then every interval; silence means a dead link."""
        while not session.closed:
            try:
                await session.call(self.keepalive_params())
            except (RpcRefused, BadReply) as exc:
                log.warning("Vd: Keepalive: %s", exc)
            except DeadLinkError:
                return
            else:
                self.keepalives_answered += 1
            answered.set()  # an error reply is an answer too: the platform is there
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
            info = await session.call(params)
        except (RpcRefused, BadReply) as exc:
            log.warning("Vd: GetServerInfo failed: %s", exc)
            return
        except DeadLinkError:
            return
        self.hb_token = info.hb_token
        if info.hb_token:
            add_secret(info.hb_token)  # a credential of the hibernation server
        if info.hibernation is not None:
            self.hibernation = parse_address(info.hibernation)
            if isinstance(self.hibernation, str):
                log.warning("Vd: GetServerInfo hibernation: %s; ignored", self.hibernation)
        self.server_info = info
        if info.hb_interval is not None and info.hb_interval != self.hb_interval:
            self.hb_interval = float(info.hb_interval)
            log.info("Vd: keep-alive interval %g s (GetServerInfo)", info.hb_interval)
            self._interval_changed.set()
