"""The platform side of Vd (clause 9.3.2): logins, one session per device, RPCs both ways.

It is the peer the PU's integration tests run against, so it is strict where that finds
PU bugs (login fields, params checked with :func:`hss_pu.wire.vd.decode_params`, seq
numbering warned about) and records everything a device sends for tests to assert on.
Nothing here ever logs or records ``login_passwd``.

It stays on ``websockets`` while the rest of the platform's HTTP side is on aiohttp
(:mod:`hss_pu.reference_platform.web`): Vd has its own port (Vs hands it out), so the
console gains nothing from moving it, and its handshake refusals (process_request), pings
and close codes are what the Vd tests pin down. The cost: both ends of Vd read the
protocol through the same library (the device's client is websockets too); moving this
server to aiohttp's WebSocketResponse is the way to end that.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from hss_pu.reference_platform.ticker import Ticker
from hss_pu.wire.vd import (
    MESSAGES,
    AlarmNotifyParams,
    BatteryChangeParams,
    Code,
    Event,
    Malformed,
    Reply,
    Request,
    RpcError,
    decode_params,
    encode_error,
    encode_event,
    encode_reply,
    encode_request,
    parse_frame,
)

if TYPE_CHECKING:
    import ssl

    from hss_pu.reference_platform.options import PlatformOptions

__all__ = ["LoginRecord", "Record", "ReplyRecord", "VdServer"]

log = logging.getLogger("hss_pu.platform.vd")

# websockets logs the request line (which carries login_passwd) at debug level; its own
# logger stays at warning whatever the root level, so no setting can print the password.
_ws_log = logging.getLogger("hss_pu.platform.ws")
_ws_log.setLevel(logging.WARNING)

REQUIRED_LOGIN_FIELDS = ("login_code", "login_passwd", "hardware_model", "firmware_model")
MAX_RECORDS = 10_000
MAX_LOGINS = 10_000
MAX_PENDING = 1_000  # outstanding calls per session
MAX_LOG_PARAMS = 300  # characters of params shown in a log line


@dataclass(frozen=True, slots=True)
class LoginRecord:
    """One Vd connection attempt; ``params`` is the query without ``login_passwd``."""

    device_id: str
    params: dict[str, str]
    accepted: bool
    reason: str  # "ok", or why it was refused
    status: int  # 101 when accepted, else the HTTP status of the refusal
    peer: str
    time: float  # host time.time()


@dataclass(frozen=True, slots=True)
class Record:
    """Something a device sent: an RPC request or an event.

    ``err`` is the error code the platform answered (or, for an event, would have
    answered) with; None when the message was well-formed and understood.
    ``index`` grows by one per record across the whole platform (``since=`` in the API).
    """

    kind: str  # "rpc" | "event"
    device_id: str
    name: str
    params: dict[str, Any]
    seq: int | None  # None for events
    time: float  # host time.time()
    index: int
    err: int | None = None


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """A device's reply to one of our RPCs, as it arrived (``err``: its error code)."""

    device_id: str
    seq: int
    err: int | None
    time: float  # host time.time()


@dataclass(eq=False)
class _Session:
    device_id: str
    conn: ServerConnection
    login: dict[str, str]
    peer: str
    since: float
    next_seq: int = 1  # our next request's seq
    their_seq: int = 0  # the device's last request seq
    pending: dict[int, asyncio.Future[Reply]] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def _peer(conn: ServerConnection) -> str:
    addr = conn.remote_address
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _short(params: Mapping[str, Any]) -> str:
    text = str(dict(params)) if params else "{}"
    return text if len(text) <= MAX_LOG_PARAMS else text[: MAX_LOG_PARAMS - 3] + "..."


def _clean(value: str, limit: int = 64) -> str:
    """An untrusted string made safe for a log line (printable, short)."""
    s = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return s + ("..." if len(value) > limit else "")


class VdServer:
    """The Vd WebSocket server and every device session it holds."""

    def __init__(self, options: PlatformOptions) -> None:
        self.options = options
        self.logins: list[LoginRecord] = []
        self.records: list[Record] = []
        self.replies: list[ReplyRecord] = []
        self.malformed: dict[str, int] = {}
        self.port = 0
        self._server: Server | None = None
        self._sessions: dict[str, _Session] = {}
        self._keepalives: dict[str, tuple[float, dict[str, Any]]] = {}
        self._battery: dict[
            str, tuple[float, int]
        ] = {}  # (time, percent) of the last BatteryChange
        self._failures: dict[str, int] = {}  # known device ids only: bounded
        self._locked_until: dict[str, float] = {}  # monotonic time
        self._next_index = 0
        self._ticker = Ticker()
        # Called (synchronously, so cheap) after every change a waiter could see.
        self._listeners: list[Callable[[], None]] = []
        self._closers: set[asyncio.Task[None]] = set()
        # AlarmNotify: (device id, its params) -> the reply body; RpcError refuses it.
        self.on_alarm: Callable[[str, AlarmNotifyParams], dict[str, Any]] | None = None
        # GetServerInfo: device id -> fields added to the reply (the hibernation server's
        # address and the device's hb_token); the options' own fields win.
        self.server_info_for: Callable[[str], dict[str, Any]] | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, ssl_context: ssl.SSLContext | None) -> int:
        self._server = await serve(
            self._session,
            self.options.host,
            self.options.vd_port,
            ssl=ssl_context,
            process_request=self._handshake,
            logger=_ws_log,
            max_size=1 << 20,
            max_queue=16,
            write_limit=64 * 1024,  # send() waits for the peer beyond this: bounded
            close_timeout=2,
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        return self.port

    async def close(self) -> None:
        for t in list(self._closers):
            t.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # --- state for tests and the admin API ----------------------------------------

    def online(self, device_id: str) -> bool:
        return device_id in self._sessions

    def online_ids(self) -> list[str]:
        return sorted(self._sessions)

    def session_info(self, device_id: str) -> dict[str, Any] | None:
        """Login fields, peer and start time of the device's session; None when offline."""
        s = self._sessions.get(device_id)
        if s is None:
            return None
        return {"peer": s.peer, "since": s.since, "login": dict(s.login)}

    def last_keepalive(self, device_id: str) -> dict[str, Any] | None:
        """The params of the device's latest Keepalive (kept across reconnects)."""
        k = self._keepalives.get(device_id)
        return dict(k[1]) if k else None

    def last_keepalive_time(self, device_id: str) -> float | None:
        k = self._keepalives.get(device_id)
        return k[0] if k else None

    def battery(self, device_id: str) -> int | None:
        """The percent of the device's latest valid BatteryChange (kept across reconnects)."""
        b = self._battery.get(device_id)
        return b[1] if b else None

    def battery_time(self, device_id: str) -> float | None:
        b = self._battery.get(device_id)
        return b[0] if b else None

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """``listener()`` after every change (a login, a record, a reply, a session's
        end); returns the unsubscribe. The listener must not block: it runs in the frame."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self) -> None:
        self._ticker.notify()
        for listener in list(self._listeners):
            listener()

    async def _wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        return await self._ticker.wait_for(check, timeout, what)

    async def wait_online(self, device_id: str, timeout: float = 10.0) -> None:
        await self._wait_for(
            lambda: self.online(device_id), timeout, f"device {device_id} not online"
        )

    async def wait_offline(self, device_id: str, timeout: float = 10.0) -> None:
        await self._wait_for(
            lambda: not self.online(device_id), timeout, f"device {device_id} still online"
        )

    async def wait_record(
        self, predicate: Callable[[Record], bool], timeout: float = 10.0
    ) -> Record:
        """The first record that matches, already received or still to come."""
        seen = -1

        def check() -> Record | None:
            nonlocal seen
            for r in self.records:
                if r.index > seen and predicate(r):
                    return r
            seen = self._next_index - 1
            return None

        found: Record = await self._wait_for(check, timeout, "no matching record")
        return found

    async def wait_reply(
        self, predicate: Callable[[ReplyRecord], bool], timeout: float = 10.0
    ) -> ReplyRecord:
        """The first device reply that matches, already received or still to come."""

        def check() -> ReplyRecord | None:
            return next((r for r in self.replies if predicate(r)), None)

        found: ReplyRecord = await self._wait_for(check, timeout, "no matching reply")
        return found

    async def wait_login(
        self, predicate: Callable[[LoginRecord], bool], timeout: float = 10.0
    ) -> LoginRecord:
        """The first login attempt that matches, already made or still to come."""
        seen = 0

        def check() -> LoginRecord | None:
            nonlocal seen
            # Trimming drops from the front; rescanning a few is harmless.
            seen = min(seen, len(self.logins))
            for rec in self.logins[seen:]:
                if predicate(rec):
                    return rec
            seen = len(self.logins)
            return None

        found: LoginRecord = await self._wait_for(check, timeout, "no matching login")
        return found

    # --- platform -> device ---------------------------------------------------------

    def _get(self, device_id: str) -> _Session:
        s = self._sessions.get(device_id)
        if s is None:
            raise LookupError(f"device {device_id} is not online")
        return s

    async def call(
        self,
        device_id: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """An RPC to the device; the Reply may carry ``err``.

        LookupError: offline; TimeoutError: no reply in time; ConnectionError: the
        session ended before the reply came.
        """
        s = self._get(device_id)
        if len(s.pending) >= MAX_PENDING:
            raise RuntimeError(f"{MAX_PENDING} calls to {device_id} already outstanding")
        t = self.options.rpc_timeout if timeout is None else timeout
        seq = s.next_seq
        s.next_seq += 1
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        s.pending[seq] = fut
        log.info("Vd: -> %s %s #%d %s", device_id, method, seq, _short(params or {}))
        try:
            async with asyncio.timeout(t):
                await s.conn.send(encode_request(method, seq, dict(params) if params else None))
                return await fut
        except TimeoutError:
            raise TimeoutError(
                f"device {device_id} did not answer {method} (seq {seq}) within {t:g} s"
            ) from None
        except ConnectionClosed:
            raise ConnectionError(f"device {device_id} disconnected during {method}") from None
        finally:
            s.pending.pop(seq, None)
            # The session may have failed the future while the send was still under way
            # (its error is then the send's): mark it retrieved, or asyncio logs it.
            if fut.done() and not fut.cancelled():
                fut.exception()
            fut.cancel()

    async def send_event(
        self, device_id: str, name: str, params: Mapping[str, Any] | None = None
    ) -> None:
        s = self._get(device_id)
        log.info("Vd: -> %s event %s %s", device_id, name, _short(params or {}))
        try:
            await s.conn.send(encode_event(name, dict(params) if params else None))
        except ConnectionClosed:
            raise ConnectionError(f"device {device_id} disconnected") from None

    async def send_raw(self, device_id: str, data: str | bytes) -> None:
        """Any frame at all (text or binary): for the PU's robustness tests."""
        s = self._get(device_id)
        try:
            await s.conn.send(data)
        except ConnectionClosed:
            raise ConnectionError(f"device {device_id} disconnected") from None

    async def kick(self, device_id: str, code: int = 1000, reason: str = "kicked") -> None:
        """Close the device's session and wait until it is gone; no-op when offline."""
        s = self._sessions.get(device_id)
        if s is None:
            return
        log.info("Vd: kicking %s", device_id)
        await s.conn.close(code, reason)
        await s.closed.wait()

    # --- login --------------------------------------------------------------------

    def _login_record(
        self, device_id: str, q: dict[str, str], ok: bool, reason: str, status: int, peer: str
    ) -> None:
        params = {k: v for k, v in q.items() if k != "login_passwd"}
        self.logins.append(LoginRecord(device_id, params, ok, reason, status, peer, time.time()))
        if len(self.logins) > MAX_LOGINS:
            del self.logins[0]
        self._notify()

    def _handshake(self, conn: ServerConnection, request: WsRequest) -> WsResponse | None:
        """Table 9-3 login, decided before the upgrade so a refusal is a plain HTTP status."""
        peer = _peer(conn)
        url = urlsplit(request.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        device_id = q.get("login_code", "")
        shown = _clean(device_id) or "(no id)"

        def refuse(
            status: HTTPStatus, reason: str, text: str, level: int, logged: str | None = None
        ) -> WsResponse:
            self._login_record(device_id, q, False, reason, int(status), peer)
            why = logged or reason
            log.log(level, "Vd: login of %s from %s refused (%d): %s", shown, peer, status, why)
            return conn.respond(status, text + "\n")

        if url.path != "/Vd":
            why = f"path {_clean(url.path)} is not /Vd"
            return refuse(HTTPStatus.NOT_FOUND, why, "not found", logging.INFO)
        missing = [f for f in REQUIRED_LOGIN_FIELDS if not q.get(f)]
        if missing:
            why = "missing " + ", ".join(missing)
            return refuse(HTTPStatus.BAD_REQUEST, why, why, logging.INFO)
        if q.get("reconnect", "0") not in ("0", "1"):
            why = "reconnect is neither 0 nor 1"
            return refuse(HTTPStatus.BAD_REQUEST, why, why, logging.INFO)
        expected = self.options.devices.get(device_id)
        if expected is None:
            return refuse(
                HTTPStatus.UNAUTHORIZED,
                "unknown device id",
                "wrong device id or password",
                logging.INFO,
            )
        now = time.monotonic()
        until = self._locked_until.get(device_id)
        if until is not None:
            if now < until:
                # "locked out" is logged once, when the lockout began.
                return refuse(
                    HTTPStatus.FORBIDDEN,
                    "locked out",
                    "too many failed logins",
                    logging.DEBUG,
                    f"still locked for {until - now:.1f} s",
                )
            del self._locked_until[device_id]
            self._failures.pop(device_id, None)
        if not hmac.compare_digest(q["login_passwd"].encode(), expected.encode()):
            n = self._failures.get(device_id, 0) + 1
            self._failures[device_id] = n
            resp = refuse(
                HTTPStatus.UNAUTHORIZED,
                f"wrong password ({n}/{self.options.lockout_after})",
                "wrong device id or password",
                logging.INFO,
            )
            if n >= self.options.lockout_after:
                self._locked_until[device_id] = now + self.options.lockout_seconds
                self._failures.pop(device_id, None)
                log.warning(
                    "Vd: device %s locked out for %g s after %d wrong passwords",
                    shown,
                    self.options.lockout_seconds,
                    n,
                )
            return resp
        self._failures.pop(device_id, None)
        self._login_record(device_id, q, True, "ok", 101, peer)
        return None

    # --- one device's session ------------------------------------------------------

    async def _session(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        q = {
            k: v[-1]
            for k, v in parse_qs(urlsplit(conn.request.path).query, keep_blank_values=True).items()
            if k != "login_passwd"
        }
        device_id = q["login_code"]
        s = _Session(device_id, conn, q, _peer(conn), time.time())
        old = self._sessions.get(device_id)
        self._sessions[device_id] = s
        log.info(
            "Vd: %s online from %s (hardware %s, firmware %s, sdk %s, reconnect %s)",
            device_id,
            s.peer,
            _clean(q["hardware_model"]),
            _clean(q["firmware_model"]),
            _clean(q.get("sdk", "-")),
            q.get("reconnect", "0"),
        )
        if old is not None:
            log.info("Vd: %s logged in again: closing its previous session", device_id)
            task = asyncio.create_task(old.conn.close(1008, "replaced by a new login"))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
        self._notify()
        if self.options.drop_after_login:
            log.info("Vd: dropping %s at once (drop_after_login)", device_id)
            await conn.close(1011, "drop_after_login")
        try:
            async for data in conn:
                try:
                    await self._frame(s, data)
                except ConnectionClosed:
                    raise
                except Exception:
                    # A bug of ours must not end the session the PU test is watching.
                    log.exception("Vd: handling a frame from %s failed", device_id)
        except ConnectionClosed:
            pass
        finally:
            if self._sessions.get(device_id) is s:
                del self._sessions[device_id]
            for fut in s.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"device {device_id} disconnected"))
            s.pending.clear()
            s.closed.set()
            self._notify()
            code = conn.close_code if conn.close_code is not None else 1006
            log.info("Vd: %s offline (close code %d)", device_id, code)

    def _record(
        self,
        s: _Session,
        kind: str,
        name: str,
        params: dict[str, Any] | None,
        seq: int | None,
        err: int | None,
    ) -> None:
        r = Record(kind, s.device_id, name, params or {}, seq, time.time(), self._next_index, err)
        self._next_index += 1
        self.records.append(r)
        if len(self.records) > MAX_RECORDS:
            del self.records[0]
        self._notify()

    async def _frame(self, s: _Session, data: str | bytes) -> None:
        frame = parse_frame(data)
        if isinstance(frame, Malformed):
            self.malformed[s.device_id] = self.malformed.get(s.device_id, 0) + 1
            log.warning("Vd: malformed frame from %s: %s", s.device_id, _clean(frame.reason, 200))
            if frame.seq is not None:
                await s.conn.send(encode_error(frame.seq, Code.INPUT, frame.reason))
        elif isinstance(frame, Reply):
            err = frame.err.code if frame.err is not None else None
            self.replies.append(ReplyRecord(s.device_id, frame.seq, err, time.time()))
            if len(self.replies) > MAX_RECORDS:
                del self.replies[0]
            self._notify()
            fut = s.pending.get(frame.seq)
            if fut is None or fut.done():
                log.warning(
                    "Vd: reply from %s to seq %d, which nobody awaits", s.device_id, frame.seq
                )
            else:
                fut.set_result(frame)
        elif isinstance(frame, Request):
            await self._request(s, frame)
        else:
            self._event(s, frame)

    async def _request(self, s: _Session, req: Request) -> None:
        if req.seq != s.their_seq + 1:
            log.warning(
                "Vd: %s request seq %d, expected %d (1, 2, 3... per connection)",
                s.device_id,
                req.seq,
                s.their_seq + 1,
            )
        s.their_seq = req.seq
        log.info("Vd: <- %s %s #%d %s", s.device_id, req.req, req.seq, _short(req.params or {}))
        try:
            resp = self._answer(s, req)
        except RpcError as exc:
            log.warning(
                "Vd: %s %s #%d: error %d %s", s.device_id, req.req, req.seq, exc.code, exc.msg
            )
            self._record(s, "rpc", req.req, req.params, req.seq, exc.code)
            await s.conn.send(encode_error(req.seq, exc.code, exc.msg))
            return
        self._record(s, "rpc", req.req, req.params, req.seq, None)
        if resp is not None:
            await s.conn.send(encode_reply(req.seq, resp))

    def _answer(self, s: _Session, req: Request) -> dict[str, Any] | None:
        """The reply body, None for no reply at all (a platform that stopped answering)."""
        spec = MESSAGES.get(req.req)
        if spec is None or spec.direction != "pu->platform" or spec.kind != "rpc":
            raise RpcError(Code.UNSUPPORTED_METHOD, f"unsupported method {req.req!r}")
        params = decode_params(req.req, req.params)
        if req.req == "Keepalive":
            self._keepalives[s.device_id] = (time.time(), dict(req.params or {}))
            return {} if self.options.answer_keepalive else None
        if req.req == "GetServerInfo" and self.options.server_info is not None:
            return dict(self.options.server_info)
        if req.req == "GetServerInfo":
            o = self.options
            info = self.server_info_for(s.device_id) if self.server_info_for else {}
            if o.hb_interval is not None:
                info["hb_interval"] = o.hb_interval
            if o.hibernation is not None:
                info["hibernation"] = o.hibernation
            if o.hb_token is not None:
                info["hb_token"] = o.hb_token
            return info
        if req.req == "AlarmNotify" and self.on_alarm is not None:
            return self.on_alarm(s.device_id, params)
        return {}

    def _event(self, s: _Session, ev: Event) -> None:
        log.info("Vd: <- %s event %s %s", s.device_id, ev.event, _short(ev.params or {}))
        spec = MESSAGES.get(ev.event)
        err: int | None = None
        if spec is None or spec.direction != "pu->platform" or spec.kind != "event":
            err = int(Code.UNSUPPORTED_METHOD)
            log.warning("Vd: %s sent unknown event %s", s.device_id, _clean(ev.event))
        else:
            try:
                p = decode_params(ev.event, ev.params)
            except RpcError as exc:
                err = exc.code
                log.warning("Vd: %s event %s: %s", s.device_id, ev.event, exc.msg)
            else:
                if isinstance(p, BatteryChangeParams):
                    self._battery[s.device_id] = (time.time(), p.battery)
        self._record(s, "event", ev.event, ev.params, None, err)
