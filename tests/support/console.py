"""The web console served for tests: its parts' routes on an aiohttp server on loopback
beside a real reference platform, and a reader of its Server-Sent Events.

The client side is httpx (not aiohttp), so the two ends of a test do not share one
library's reading of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from aiohttp import web

from hss_pu.reference_platform.console import devices, frontend
from hss_pu.reference_platform.server import ReferencePlatform

__all__ = ["EventReader", "assert_refused", "read_events", "serve_console"]

Part = Callable[[web.Application, ReferencePlatform], None]


@contextlib.asynccontextmanager
async def serve_console(
    platform: ReferencePlatform, parts: tuple[Part, ...] | None = None
) -> AsyncIterator[str]:
    """The console's base URL (``http://127.0.0.1:PORT``) while it runs; ``parts``: the
    ``add_routes`` of each part (default: devices and the front end)."""
    app = web.Application()
    for add_routes in parts or (devices.add_routes, frontend.add_routes):
        add_routes(app, platform)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class EventReader:
    """The events of one ``GET /console/api/events`` stream, parsed as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lines = response.aiter_lines()

    async def _next(self) -> tuple[str, dict[str, Any]]:
        event, data = "message", ""
        async for line in self._lines:
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                parsed = (event, json.loads(data))
                self.events.append(parsed)
                return parsed
            elif line == "":
                event = "message"
        raise EOFError("the event stream ended")

    async def wait(
        self,
        event: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda _d: True,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """The next event of that name whose data matches (earlier ones are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                name, data = await self._next()
                if name == event and predicate(data):
                    return data


@contextlib.asynccontextmanager
async def read_events(client: httpx.AsyncClient, base: str) -> AsyncIterator[EventReader]:
    async with client.stream("GET", f"{base}/console/api/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventReader(response)


async def assert_refused(client: httpx.AsyncClient, refused: dict[str, int]) -> None:
    """Each path, sent as written (no client-side normalising of ``..`` or ``%2e``), gets
    its status and a JSON body whose ``info`` says why."""
    for path, status in refused.items():
        r = await client.get(path)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert r.url.raw_path == path.encode(), (path, r.url)
        body = r.json()
        assert isinstance(body["info"], str) and body["info"], (path, body)
