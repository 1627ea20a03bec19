"""Vd session: JSON-RPC and events over one WebSocket connection (clause 9.3.2.1).

What the session guarantees, whatever the platform sends:
- requests and events from the platform are handled one at a time in arrival order
  (9.3.2.1.1), through a bounded inbox: a flooding peer is slowed down (TCP back-pressure),
  never buffered without limit;
- every well-formed request gets exactly one reply; a malformed one that still has an
  integer ``seq`` gets error 400; anything else malformed is logged, counted and dropped,
  and the session stays up;
- our own RPCs are numbered from 1 per connection and time out after 20 s, which means
  the link is dead: the session closes so the caller reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hss_pu import __version__
from hss_pu.errors import DeadLinkError
from hss_pu.logsetup import redacted_logger
from hss_pu.wire.vd import (
    Code,
    Event,
    Malformed,
    Reply,
    Request,
    RpcError,
    encode_error,
    encode_event,
    encode_reply,
    encode_request,
    parse_frame,
)

__all__ = ["DeadLinkError", "RequestHandler", "SessionStats", "VdSession", "open_vd"]

log = logging.getLogger("hss_pu.vd")

RPC_TIMEOUT = 20.0  # wire-notes: an RPC of ours unanswered for 20 s means the link is dead
HANDLER_TIMEOUT = 15.0  # our reply must beat the platform's own 20 s
INBOX_SIZE = 32
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


async def open_vd(url: str, ssl_context: ssl.SSLContext | None) -> ClientConnection:
    """Open the WebSocket. ``url`` carries the password: callers must not log it."""
    return await connect(
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
        # websockets logs the request line, password included, at debug level.
        logger=redacted_logger("hss_pu.vd.ws"),
    )


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
        self._inbox: asyncio.Queue[Request | Event] = asyncio.Queue(INBOX_SIZE)
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
        """Read until the connection ends; handled requests are answered in order."""
        worker = asyncio.create_task(self._worker(), name="vd-worker")
        try:
            async for message in self.ws:
                await self._on_frame(message)
        except ConnectionClosed:
            pass
        finally:
            self._closed.set()
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(DeadLinkError("connection closed"))
            self._pending.clear()

    async def close(self, reason: str = "") -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(1000, reason[:100])

    async def call(self, name: str, params: Any = None) -> dict[str, Any]:
        """One RPC of ours. Raises RpcError for an err reply, DeadLinkError when none came."""
        if self._closed.is_set():
            raise DeadLinkError("connection closed")
        seq = next(self._seq)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            await self._send(encode_request(name, seq, params))
            try:
                reply = await asyncio.wait_for(fut, self.rpc_timeout)
            except TimeoutError:
                log.warning(
                    "Vd: %s (seq %d) unanswered for %.0f s: link dead", name, seq, self.rpc_timeout
                )
                await self.close("rpc timeout")
                raise DeadLinkError(f"{name} unanswered") from None
        finally:
            self._pending.pop(seq, None)
        if reply.err is not None:
            raise RpcError(reply.err.code, reply.err.msg)
        return reply.resp or {}

    async def send_event(self, name: str, params: Any = None) -> None:
        await self._send(encode_event(name, params))

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            raise DeadLinkError("connection closed") from None

    def _malformed(self, reason: str) -> None:
        self.stats.malformed += 1
        n = self.stats.malformed
        # A flood of garbage must not become a flood of log lines.
        if n <= 10 or n % 1000 == 0:
            log.warning("Vd: malformed frame #%d dropped: %s", n, reason[:200])

    async def _on_frame(self, message: str | bytes) -> None:
        frame = parse_frame(message)
        if isinstance(frame, (Request, Event)):
            await self._inbox.put(frame)  # blocks the reader when full: back-pressure
        elif isinstance(frame, Reply):
            fut = self._pending.get(frame.seq)
            if fut is None or fut.done():
                self.stats.stray_replies += 1
                log.debug("Vd: reply to unknown seq %d ignored", frame.seq)
            else:
                fut.set_result(frame)
        elif isinstance(frame, Malformed):
            self._malformed(frame.reason)
            if frame.seq is not None:
                await self._reply_error(frame.seq, Code.INPUT, frame.reason)

    async def _reply_error(self, seq: int, code: int, msg: str) -> None:
        self.stats.errors_sent += 1
        with contextlib.suppress(DeadLinkError):
            await self._send(encode_error(seq, code, msg[:300]))

    async def _worker(self) -> None:
        while True:
            item = await self._inbox.get()
            if isinstance(item, Request):
                await self._answer(item)
            else:
                await self._deliver(item)

    async def _answer(self, req: Request) -> None:
        self.stats.requests += 1
        try:
            async with asyncio.timeout(self.handler_timeout):
                result = await self.handler.request(req.req, req.params)
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
            await self._send(encode_reply(req.seq, result))

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
