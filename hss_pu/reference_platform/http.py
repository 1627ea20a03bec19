"""A small HTTP/1.1 server over h11 for the reference platform's Vs and Vr endpoints.

websockets' server speaks only GET, and Vr needs POST and PUT; h11 (already under httpx)
gives a correct, keep-alive capable parser without pulling in a web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

__all__ = ["AbortConnection", "BodyCut", "HttpServer", "Request", "Response", "json_response"]

log = logging.getLogger("hss_pu.platform.http")

MAX_BODY = 64 * 1024 * 1024
IDLE_TIMEOUT = 30.0


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    peer: str
    time: float = field(default_factory=time.time)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.target).query).items()}

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Instead of ``body``: chunks sent as the connection takes them (a large file); with
    # no content-length in ``headers`` the body goes out chunked.
    stream: AsyncIterator[bytes] | None = None


def json_response(status: int, body: bytes) -> Response:
    return Response(status, body, {"content-type": "application/json"})


class AbortConnection(Exception):
    """Raised by a handler: drop the connection without a response (a platform that
    vanished mid-request), rather than answer; raised by a response's stream: drop it
    after the bytes sent so far (they reach the peer first), with no clean end."""


async def _flushed(writer: asyncio.StreamWriter, limit: float = 2.0) -> None:
    """Wait (up to ``limit`` s) until the transport has handed every byte to the kernel,
    so an abort cuts the body exactly where the stream stopped."""
    deadline = time.monotonic() + limit
    # Polled: the transport signals only crossing its high/low marks, not "empty".
    while writer.transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


Handler = Callable[[Request], Awaitable[Response]]
# Called with (method, target, content-length or None) as each request head is parsed;
# a byte count N says: read at most N body bytes, then drop the connection with no
# response (a fault: an upload cut while its body is still arriving). None: serve it.
BodyCut = Callable[[str, str, int | None], int | None]


class _Cut(Exception):
    def __init__(self, head: h11.Request, received: int, limit: int) -> None:
        super().__init__(head, received, limit)
        self.head, self.received, self.limit = head, received, limit


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        ssl_context: ssl.SSLContext | None,
        *,
        body_cut: BodyCut | None = None,
    ) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._body_cut = body_cut
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self._ssl)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns.values()):
            # abort, not close: a TLS close waits up to 30 s for the peer's close_notify,
            # and an idle keep-alive client never sends it. The aborted connection's read
            # fails and its task ends by itself (cancelling it makes asyncio's stream
            # callback print a CancelledError traceback on 3.11).
            w.transport.abort()
        if self._conns:
            _, stuck = await asyncio.wait(list(self._conns), timeout=2)
            for t in stuck:
                t.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        peer = str(writer.get_extra_info("peername"))
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                try:
                    req = await self._read_request(conn, reader, peer)
                except _Cut as cut:
                    log.debug(
                        "cut %s %s from %s after %d body bytes (limit %d): connection aborted",
                        cut.head.method.decode(), cut.head.target.decode("latin-1"), peer,
                        cut.received, cut.limit,
                    )  # fmt: skip
                    writer.transport.abort()
                    return
                if req is None:
                    return
                try:
                    resp = await self._handler(req)
                except AbortConnection as exc:
                    log.debug("aborting the connection from %s: %s", peer, exc)
                    writer.transport.abort()
                    return
                except Exception:
                    log.exception("handler failed for %s %s", req.method, req.path)
                    resp = json_response(500, b'{"info": "internal error"}')
                try:
                    await self._send(conn, writer, resp)
                except AbortConnection as exc:  # raised by a stream: cut it mid-body
                    log.debug("aborting the response to %s: %s", peer, exc)
                    await _flushed(writer)
                    writer.transport.abort()
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.debug("connection from %s ended: %s", peer, exc)
            with contextlib.suppress(Exception):
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(conn, writer, json_response(400, b'{"info": "bad request"}'))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)
            # Only now: close() waits for the tasks it finds here, closing ones included.
            self._conns.pop(task, None)

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, peer: str
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        cut: int | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                head = event
                cut = self._cut_for(head)
                if cut == 0:
                    raise _Cut(head, 0, 0)
            elif isinstance(event, h11.Data):
                assert head is not None
                if cut is not None and len(body) + len(event.data) >= cut:
                    raise _Cut(head, cut, cut)  # bytes beyond the cut are never taken
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                if cut is not None:  # the body ended before the cut: drop it all the same
                    raise _Cut(head, len(body), cut)
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(
                    method=head.method.decode(),
                    target=head.target.decode("latin-1"),
                    headers=headers,
                    body=bytes(body),
                    peer=peer,
                )

    def _cut_for(self, head: h11.Request) -> int | None:
        if self._body_cut is None:
            return None
        length: int | None = None
        for k, v in head.headers:
            if k == b"content-length":  # h11 has lower-cased and validated it
                length = int(v)
        try:
            n = self._body_cut(head.method.decode(), head.target.decode("latin-1"), length)
        except Exception:  # a broken hook must not take the server down
            log.exception("body_cut hook failed")
            return None
        return None if n is None else max(0, n)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, r: Response) -> None:
        headers = [(k, v) for k, v in r.headers.items()]
        if r.stream is not None:
            writer.write(conn.send(h11.Response(status_code=r.status, headers=headers)) or b"")
            try:
                async for chunk in r.stream:
                    writer.write(conn.send(h11.Data(data=chunk)) or b"")
                    await writer.drain()
            finally:
                close = getattr(r.stream, "aclose", None)
                if close is not None:
                    await close()
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            return
        headers.append(("content-length", str(len(r.body))))
        out = conn.send(h11.Response(status_code=r.status, headers=headers)) or b""
        if r.body:
            out += conn.send(h11.Data(data=r.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        writer.write(out)
        await writer.drain()
