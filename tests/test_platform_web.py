"""The platform's HTTP side on aiohttp (issue 14, item 7): routes added to its app share the
HTTPS port with Vs and Vr (and survive a restart), and the server's limits hold: a body
over MAX_BODY refused with 413 before it is read, idle connections and stalled bodies
dropped after the idle timeout, idle keep-alive TLS connections cut at once on close.

The peers are raw sockets (asyncio streams, TLS with the platform's CA) where the test
is about bytes on the wire, httpx where it is about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from hss_pu.reference_platform import web as platform_web
from hss_pu.reference_platform.pki import Pki
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.reference_platform.web import HttpServer, Request, Response

from .support.rig import MAC, MakePlatform


def _client(platform: ReferencePlatform) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(platform.ca_file))
    return httpx.AsyncClient(verify=ctx, headers={"Mac-Identity": MAC}, trust_env=False)


async def _ok(req: Request) -> Response:
    return Response(200, b"ok")


async def test_routes_added_before_start_share_the_https_port_and_survive_a_restart(
    make_platform: MakePlatform,
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": request.match_info["name"]})

    def add(p: ReferencePlatform) -> None:
        p.web_app.router.add_get("/extra/{name}", hello)

    p = await make_platform(before_start=add)
    async with _client(p) as http:
        for _ in range(2):
            r = await http.get(f"{p.schedule_url}/extra/there")
            assert (r.status_code, r.json()) == (200, {"hello": "there"})
            vs = await http.get(f"{p.schedule_url}/Vs/getServerAddr", params={"macid": MAC})
            assert vs.status_code == 200 and vs.json()["Secure_PassPort"] == p.vd_port
            # Not an added route: the platform's own handler answers.
            assert (await http.get(f"{p.schedule_url}/nowhere")).status_code == 404
            await p.restart(0.05)


async def _serve(
    handler: platform_web.Handler, idle_timeout: float = platform_web.IDLE_TIMEOUT
) -> tuple[HttpServer, int]:
    server = HttpServer(handler, None, idle_timeout=idle_timeout)
    return server, await server.start("127.0.0.1", 0)


async def test_a_body_over_max_body_is_refused_413_before_it_is_read() -> None:
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return Response(200, b"ok")

    server, port = await _serve(handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = platform_web.MAX_BODY + 1
        head = f"PUT /upload/x HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
        writer.write(head.encode())
        writer.write(b"x" * 1000)  # the rest never comes: the answer must not wait for it
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 413")
        assert seen == []
        writer.close()
    finally:
        await server.close()


async def test_an_idle_keepalive_connection_is_closed_after_the_idle_timeout() -> None:
    server, port = await _serve(_ok, idle_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed by the server
        assert 0.2 < time.monotonic() - t0 < 2
        writer.close()
    finally:
        await server.close()


async def test_a_body_that_stops_arriving_is_dropped_after_the_idle_timeout() -> None:
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return Response(200, b"ok")

    server, port = await _serve(handler, idle_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        t0 = time.monotonic()
        with contextlib.suppress(ConnectionError):  # reset or EOF: either is a drop
            assert await asyncio.wait_for(reader.read(1), 5) == b""
        assert 0.2 < time.monotonic() - t0 < 2
        assert seen == []
        writer.close()
    finally:
        await server.close()


async def test_close_cuts_an_idle_keepalive_tls_connection_at_once(pki: Pki) -> None:
    """A TLS close waits for the peer's close_notify; an idle client never sends it."""
    server = HttpServer(_ok, pki.server_context())
    port = await server.start("127.0.0.1", 0)
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    await server.close()
    assert time.monotonic() - t0 < 1
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        assert await asyncio.wait_for(reader.read(1), 5) == b""
    writer.transport.abort()


@pytest.mark.parametrize("where", ["handler", "stream"])
async def test_abort_connection_answers_nothing_and_logs_no_error(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Raised by a handler: no response at all; by a stream: the bytes sent so far reach
    the peer, then the connection drops (no clean end of the chunked body)."""

    async def body() -> AsyncIterator[bytes]:
        yield b"first-bytes"
        raise platform_web.AbortConnection("cut")

    async def handler(req: Request) -> Response:
        if where == "handler":
            raise platform_web.AbortConnection("drop")
        return Response(200, b"", stream=body())

    server, port = await _serve(handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                got += chunk
        if where == "handler":
            assert got == b""
        else:
            assert got.startswith(b"HTTP/1.1 200") and b"first-bytes" in got
            assert not got.endswith(b"0\r\n\r\n")  # never ended cleanly
        writer.close()
    finally:
        await server.close()
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
