"""Console parts served by aiohttp on loopback beside a real reference platform, and a
real aiohttp client for them (until the console app with its login exists, the parts'
routes are served bare)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from hss_pu.reference_platform.server import ReferencePlatform

__all__ = ["Console", "Routes", "serve_console"]

Routes = Callable[[web.Application, ReferencePlatform], None]


@dataclass(frozen=True)
class Console:
    base: str  # http://127.0.0.1:PORT
    client: aiohttp.ClientSession  # relative URLs are under ``base``
    app: web.Application


@contextlib.asynccontextmanager
async def serve_console(platform: ReferencePlatform, *parts: Routes) -> AsyncIterator[Console]:
    """An app with ``parts``' routes on 127.0.0.1, and a client for it."""
    app = web.Application()
    for add_routes in parts:
        add_routes(app, platform)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession(base) as client:
            yield Console(base, client, app)
    finally:
        await runner.cleanup()
