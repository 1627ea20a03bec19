"""The reference platform's HTTP side on aiohttp: Vs, Vr, uploads, media, firmware, alarm
pictures and the admin API, behind one adapter, and the web console's routes beside them.

The platform's handlers predate the framework and stay framework-free: each takes a
:class:`Request` (the whole body read) and returns a :class:`Response` (a body, or a stream
of chunks). :class:`HttpServer` turns aiohttp's request into ours, and adds what a test
platform needs that no web framework does: :class:`AbortConnection` (drop a connection
without a response, or cut a response mid-body after the bytes sent so far reached the
peer), the ``body_cut`` hook (read at most N body bytes of a request, then drop it: a Vr
upload cut while it is still arriving), and :meth:`HttpServer.close` that aborts idle
keep-alive TLS connections at once (a TLS close waits for the peer's close_notify, which
an idle client never sends).

Routes added to :attr:`HttpServer.app` before :meth:`HttpServer.start` (the console's)
are served on the same port; every other path goes to the handler.

The Vd WebSocket (:mod:`hss_pu.reference_platform.vd`) stays on ``websockets``, on its own
port: its handshake refusals, pings and close codes are written against that library's
server, and moving it is a change of its own with no gain to the console (which serves
its own WebSockets here); vd.py's docstring says what that costs.
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

from aiohttp import web

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_BODY",
    "AbortConnection",
    "BodyCut",
    "Handler",
    "HttpServer",
    "Request",
    "Response",
    "json_response",
]

log = logging.getLogger("hss_pu.platform.http")

MAX_BODY = 64 * 1024 * 1024
IDLE_TIMEOUT = 30.0  # s: an idle keep-alive connection, or a body that stops arriving
# aiohttp's own limit for handlers that read with request.read()/json() (the console's).
CONSOLE_MAX_BODY = 1024 * 1024
READ_CHUNK = 65536


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


Handler = Callable[[Request], Awaitable[Response]]
# Called with (method, target, content-length or None) as each request head is parsed;
# a byte count N says: read at most N body bytes, then drop the connection with no
# response (a fault: an upload cut while its body is still arriving). None: serve it.
BodyCut = Callable[[str, str, int | None], int | None]


class _Dropped(Exception):
    """The connection is gone (aborted by us, or by the peer): answer nothing."""


async def _flushed(transport: asyncio.BaseTransport, limit: float = 2.0) -> None:
    """Wait (up to ``limit`` s) until the transport has handed every byte to the kernel,
    so an abort cuts the body exactly where the stream stopped."""
    assert isinstance(transport, asyncio.WriteTransport)
    deadline = time.monotonic() + limit
    # Polled: the transport signals only crossing its high/low marks, not "empty".
    while not transport.is_closing() and time.monotonic() < deadline:
        if transport.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(0.005)


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _peer(request: web.BaseRequest) -> str:
    """``(host, port)`` as text: one keep-alive connection keeps one peer string."""
    transport = request.transport
    return str(transport.get_extra_info("peername") if transport is not None else None)


def _dropped_response() -> web.StreamResponse:
    # Returned after an abort: aiohttp's attempt to write it fails on the closed
    # transport, which it takes as a client gone (no response, no error logged).
    return web.Response(status=500)


class HttpServer:
    """One port of HTTP/1.1 (TLS when given a context) on aiohttp; see the module doc."""

    def __init__(
        self,
        handler: Handler,
        ssl_context: ssl.SSLContext | None = None,
        *,
        body_cut: BodyCut | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._handler = handler
        self.ssl_context = ssl_context  # used by each start()
        self._body_cut = body_cut
        self._idle = idle_timeout
        # Routes and middlewares may be added until the first start().
        self.app = web.Application(client_max_size=CONSOLE_MAX_BODY)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen (again, after :meth:`stop`) on ``host:port``; returns the port bound."""
        if self._runner is None:
            # Last, so every route added before wins over this catch-all.
            self.app.router.add_route("*", "/{tail:.*}", self._serve)
            runner = web.AppRunner(
                self.app,
                access_log=None,
                keepalive_timeout=self._idle,
                shutdown_timeout=2.0,
                handle_signals=False,
            )
            await runner.setup()
            self._runner = runner
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context)
        await site.start()
        self._site = site
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _abort_all(self) -> None:
        server = self._runner.server if self._runner is not None else None
        for conn in server.connections if server is not None else []:
            # abort, not close: a TLS close waits up to 30 s for the peer's close_notify,
            # and an idle keep-alive client never sends it.
            if conn.transport is not None:
                conn.transport.abort()

    async def stop(self) -> None:
        """Stop listening and cut every connection; the app and its state stay, so
        :meth:`start` serves again (a platform restart)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self._abort_all()
        await asyncio.sleep(0)  # connection_lost callbacks

    async def close(self) -> None:
        await self.stop()
        if self._runner is not None:
            # Handlers still running get shutdown_timeout to end, then are cancelled.
            await self._runner.cleanup()
            self._runner = None

    # --- one request ----------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        peer = _peer(request)
        try:
            req = await self._read(request, peer)
        except _Dropped:
            return _dropped_response()
        except _TooLarge:
            refused = web.Response(
                status=413, body=b'{"info": "body too large"}', content_type="application/json"
            )
            refused.force_close()
            return refused
        try:
            resp = await self._handler(req)
        except AbortConnection as exc:
            log.debug("aborting the connection from %s: %s", peer, exc)
            _abort(request)
            return _dropped_response()
        except Exception:
            log.exception("handler failed for %s %s", req.method, req.path)
            resp = json_response(500, b'{"info": "internal error"}')
        if resp.stream is None:
            headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
            return web.Response(status=resp.status, body=resp.body, headers=headers)
        return await self._send_stream(request, resp, peer)

    async def _read(self, request: web.Request, peer: str) -> Request:
        """Our Request, the whole body read (with the idle timeout between chunks)."""
        cut = self._cut_for(request)
        length = request.content_length
        if cut is None and length is not None and length > MAX_BODY:
            raise _TooLarge
        body = bytearray()
        while True:
            want = READ_CHUNK if cut is None else min(READ_CHUNK, cut - len(body))
            if want <= 0:
                break
            try:
                async with asyncio.timeout(self._idle):
                    chunk = await request.content.read(want)
            except (TimeoutError, ConnectionError, web.HTTPException) as exc:
                log.debug("request body from %s ended: %r", peer, exc)
                _abort(request)
                raise _Dropped from None
            except Exception as exc:  # aiohttp's payload errors (a bad chunked body)
                log.debug("request body from %s unreadable: %r", peer, exc)
                _abort(request)
                raise _Dropped from None
            if not chunk:
                break
            body += chunk
            if len(body) > MAX_BODY:
                raise _TooLarge
        if cut is not None:  # the cut reached, or the body ended before it: drop it
            log.debug(
                "cut %s %s from %s after %d body bytes (limit %d): connection aborted",
                request.method, request.raw_path, peer, len(body), cut,
            )  # fmt: skip
            _abort(request)
            raise _Dropped
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.raw_headers}
        return Request(
            method=request.method,
            target=request.raw_path,
            headers=headers,
            body=bytes(body),
            peer=peer,
        )

    def _cut_for(self, request: web.Request) -> int | None:
        if self._body_cut is None:
            return None
        try:
            n = self._body_cut(request.method, request.raw_path, request.content_length)
        except Exception:  # a broken hook must not take the server down
            log.exception("body_cut hook failed")
            return None
        return None if n is None else max(0, n)

    async def _send_stream(
        self, request: web.Request, r: Response, peer: str
    ) -> web.StreamResponse:
        assert r.stream is not None
        resp = web.StreamResponse(status=r.status, headers=r.headers)
        try:
            await resp.prepare(request)
            async for chunk in r.stream:
                await resp.write(chunk)
        except AbortConnection as exc:  # raised by the stream: cut it mid-body
            log.debug("aborting the response to %s: %s", peer, exc)
            if request.transport is not None:
                await _flushed(request.transport)
            _abort(request)
        except ConnectionError as exc:
            log.debug("response to %s cut by the peer: %r", peer, exc)
            _abort(request)
        finally:
            close = getattr(r.stream, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        return resp


class _TooLarge(Exception):
    pass
