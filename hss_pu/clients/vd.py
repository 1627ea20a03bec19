"""Vd session: JSON-RPC and events over one WebSocket connection (clause 9.3.2.1).

What the session guarantees, whatever the platform sends:
- the reader never waits on anything but the socket, so the platform's replies to our
  own RPCs (Keepalive above all) are read at once, however busy the handlers are;
- requests and events from the platform are handled one at a time in arrival order
  (9.3.2.1.1) from an inbox bounded in items and bytes; a request that does not fit gets
  a quick "busy" error 1 *in its turn*, and a malformed request with an integer ``seq``
  its 400 in its turn too, so replies always leave in arrival order; those pending
  refusals are bounded as well, and a peer that overruns them is closed (1008) as
  abusive; an event that does not fit is dropped and counted;
- every well-formed request gets exactly one reply; anything else malformed is logged,
  counted and dropped, and the session stays up;
- our own RPCs are numbered from 1 per connection and time out after 20 s, which means
  the link is dead: the session closes so the caller reconnects.

Nothing of websockets escapes this module: connecting raises :class:`LoginRefused` (with
the HTTP status) or :class:`LinkError`, a session that ends raises DeadLinkError.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from hss_pu import __version__
from hss_pu.errors import DeadLinkError, LinkError, LoginRefused, RpcRefused
from hss_pu.logsetup import redact, redacted_logger
from hss_pu.wire.vd import (
    Code,
    Event,
    Malformed,
    Reply,
    Request,
    RpcError,
    UpCall,
    UpEvent,
    encode_error,
    encode_reply,
    encode_up,
    parse_frame,
    read_result,
)

__all__ = [
    "INBOX_BYTES",
    "INBOX_SIZE",
    "MAX_REFUSALS",
    "RPC_TIMEOUT",
    "DeadLinkError",
    "RequestHandler",
    "SessionStats",
    "VdSession",
    "connect_vd",
]

log = logging.getLogger("hss_pu.vd")

R = TypeVar("R")

RPC_TIMEOUT = 20.0  # wire-notes: an RPC of ours unanswered for 20 s means the link is dead
HANDLER_TIMEOUT = 15.0  # our reply must beat the platform's own 20 s
INBOX_SIZE = 32  # requests and events waiting for their turn
INBOX_BYTES = 2 << 20  # ... and the size of their frames
MAX_REFUSALS = 256  # quick error replies (busy, 400) waiting for their turn
MAX_FRAME = 1 << 20


class RequestHandler(Protocol):
    """What the session calls for the platform's requests and events (the dispatcher)."""

    def request(self, name: str, params: dict[str, Any] | None) -> Awaitable[Any]: ...

    def event(self, name: str, params: dict[str, Any] | None) -> Awaitable[None]: ...


@dataclass
class SessionStats:
    requests: int = 0
    events: int = 0
    errors_sent: int = 0
    malformed: int = 0
    stray_replies: int = 0
    busy: int = 0  # requests refused because the inbox was full
    dropped_events: int = 0  # events dropped because the inbox was full


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A request answered with an error in its turn, without being handled."""

    seq: int
    code: int
    msg: str


async def connect_vd(
    url: str,
    ssl_context: ssl.SSLContext | None,
    handler: RequestHandler,
    *,
    rpc_timeout: float = RPC_TIMEOUT,
    handler_timeout: float = HANDLER_TIMEOUT,
) -> VdSession:
    """Log in to Vd. ``url`` carries the password: it never reaches a message we raise."""
    try:
        ws = await connect(
            url,
            ssl=ssl_context if url.startswith("wss://") else None,
            open_timeout=10,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
            max_size=MAX_FRAME,
            max_queue=16,
            proxy=None,
            user_agent_header=f"hss-pu/{__version__}",
            compression=None,
            # websockets logs the request line, password included, and every frame (the
            # platform's signed URLs) at debug level.
            logger=redacted_logger("hss_pu.vd.ws", queries=True),
        )
    except InvalidStatus as exc:
        raise LoginRefused(exc.response.status_code) from None
    except Exception as exc:
        # OSError, TimeoutError, websockets' handshake errors, and what the resolver
        # raises for a host it cannot encode (UnicodeError from IDNA): a failed attempt.
        # Some quote the URL, and the URL carries the password.
        raise LinkError(f"cannot connect: {type(exc).__name__}: {redact(str(exc))}") from None
    return VdSession(ws, handler, rpc_timeout=rpc_timeout, handler_timeout=handler_timeout)


class VdSession:
    def __init__(
        self,
        ws: ClientConnection,
        handler: RequestHandler,
        *,
        rpc_timeout: float = RPC_TIMEOUT,
        handler_timeout: float = HANDLER_TIMEOUT,
    ) -> None:
        self.ws = ws
        self.handler = handler
        self.rpc_timeout = rpc_timeout
        self.handler_timeout = handler_timeout
        self.stats = SessionStats()
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        # The inbox: one queue, so refusals keep their place among the requests.
        self._inbox: deque[tuple[Request | Event | _Refusal, int]] = deque()
        self._queued = 0  # requests and events in the inbox
        self._queued_bytes = 0
        self._refusals = 0
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def local_address(self) -> str | None:
        addr = self.ws.local_address
        return str(addr[0]) if addr else None

    async def run(self) -> None:
        """Read until the connection ends; requests are answered in order by a worker."""
        worker = asyncio.create_task(self._worker(), name="vd-worker")
        closer: asyncio.Task[None] | None = None
        try:
            async for message in self.ws:
                if closer is not None:
                    continue  # drained unread, so the peer's close frame gets through
                if not self._on_frame(message):
                    log.warning(
                        "Vd: more than %d requests waiting for a reply: closing the session",
                        INBOX_SIZE + MAX_REFUSALS,
                    )
                    worker.cancel()
                    closer = asyncio.create_task(self.close("too many requests", code=1008))
        except (WebSocketException, OSError):
            pass
        finally:
            self._closed.set()
            worker.cancel()
            for t in (worker, closer):
                if t is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(DeadLinkError("connection closed"))
            self._pending.clear()

    async def close(self, reason: str = "", *, code: int = 1000) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:100])

    async def call(self, params: UpCall[R]) -> R:
        """One RPC of ours, the message named by its params' type; the reply typed.

        Raises RpcRefused for an err reply, BadReply for a reply that lacks a required
        field, DeadLinkError when none came; ValueError for params that break their own
        type's constraints (our bug: nothing is sent).
        """
        if self._closed.is_set():
            raise DeadLinkError("connection closed")
        seq = next(self._seq)
        spec, text = encode_up(params, seq)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            await self._send(text)
            try:
                reply = await asyncio.wait_for(fut, self.rpc_timeout)
            except TimeoutError:
                log.warning(
                    "Vd: %s (seq %d) unanswered for %.0f s: link dead",
                    spec.name,
                    seq,
                    self.rpc_timeout,
                )
                await self.close("rpc timeout")
                raise DeadLinkError(f"{spec.name} unanswered") from None
        finally:
            self._pending.pop(seq, None)
        if reply.err is not None:
            raise RpcRefused(spec.name, reply.err.code, _printable(reply.err.msg))
        result, notes = read_result(spec, reply.resp)
        for note in notes:
            log.warning("Vd: %s reply: %s", spec.name, note)
        return cast(R, result)

    async def send_event(self, params: UpEvent) -> None:
        """One event of ours, named by its params' type (ValueError: bad params)."""
        _, text = encode_up(params)
        await self._send(text)

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except (WebSocketException, OSError):
            raise DeadLinkError("connection closed") from None

    def _malformed(self, reason: str) -> None:
        self.stats.malformed += 1
        n = self.stats.malformed
        # A flood of garbage must not become a flood of log lines.
        if n <= 10 or n % 1000 == 0:
            log.warning("Vd: malformed frame #%d dropped: %s", n, reason[:200])

    def _on_frame(self, message: str | bytes) -> bool:
        """Take one frame without waiting; False when the peer must be cut off."""
        frame = parse_frame(message)
        if isinstance(frame, Reply):
            fut = self._pending.get(frame.seq)
            if fut is None or fut.done():
                self.stats.stray_replies += 1
                log.debug("Vd: reply to unknown seq %d ignored", frame.seq)
            else:
                fut.set_result(frame)
            return True
        if isinstance(frame, Malformed):
            self._malformed(frame.reason)
            return frame.seq is None or self._refuse(frame.seq, Code.INPUT, frame.reason)
        size = len(message)
        if self._queued >= INBOX_SIZE or self._queued_bytes + size > INBOX_BYTES:
            if isinstance(frame, Event):
                self.stats.dropped_events += 1
                n = self.stats.dropped_events
                if n <= 10 or n % 1000 == 0:
                    log.warning("Vd: inbox full: event %s dropped (#%d)", frame.event[:64], n)
                return True
            self.stats.busy += 1
            return self._refuse(frame.seq, Code.INTERNAL, f"busy: {self._queued} requests ahead")
        self._inbox.append((frame, size))
        self._queued += 1
        self._queued_bytes += size
        self._wake.set()
        return True

    def _refuse(self, seq: int, code: int, msg: str) -> bool:
        if self._refusals >= MAX_REFUSALS:
            return False
        self._refusals += 1
        self._inbox.append((_Refusal(seq, code, msg[:300]), 0))
        self._wake.set()
        return True

    async def _reply_error(self, seq: int, code: int, msg: str) -> None:
        self.stats.errors_sent += 1
        with contextlib.suppress(DeadLinkError):
            await self._send(encode_error(seq, code, msg[:300]))

    async def _worker(self) -> None:
        while True:
            while not self._inbox:
                self._wake.clear()
                await self._wake.wait()
            item, size = self._inbox.popleft()
            if isinstance(item, _Refusal):
                self._refusals -= 1
                await self._reply_error(item.seq, item.code, item.msg)
                continue
            self._queued -= 1
            self._queued_bytes -= size
            if isinstance(item, Request):
                await self._answer(item)
            else:
                await self._deliver(item)

    async def _answer(self, req: Request) -> None:
        self.stats.requests += 1
        try:
            async with asyncio.timeout(self.handler_timeout):
                result = await self.handler.request(req.req, req.params)
            text = encode_reply(req.seq, result)
        except RpcError as exc:
            log.info("Vd: %s (seq %d) -> error %d: %s", req.req, req.seq, exc.code, exc.msg)
            await self._reply_error(req.seq, exc.code, exc.msg)
            return
        except TimeoutError:
            log.warning("Vd: %s (seq %d) timed out in its handler", req.req, req.seq)
            await self._reply_error(req.seq, Code.INTERNAL, f"{req.req} timed out")
            return
        except Exception:
            log.exception("Vd: %s (seq %d) failed", req.req, req.seq)
            await self._reply_error(req.seq, Code.INTERNAL, "internal error")
            return
        with contextlib.suppress(DeadLinkError):
            await self._send(text)

    async def _deliver(self, ev: Event) -> None:
        self.stats.events += 1
        try:
            async with asyncio.timeout(self.handler_timeout):
                await self.handler.event(ev.event, ev.params)
        except RpcError as exc:
            log.warning("Vd: event %s rejected: %d %s", ev.event, exc.code, exc.msg)
        except TimeoutError:
            log.warning("Vd: event %s timed out in its handler", ev.event)
        except Exception:
            log.exception("Vd: event %s failed", ev.event)


def _printable(text: str, limit: int = 200) -> str:
    """A platform-supplied message made safe for a log line."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
