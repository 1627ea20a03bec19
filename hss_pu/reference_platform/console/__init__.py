"""The web console, served by the reference platform on its HTTPS port under /console/.

:func:`setup` adds it to the platform's aiohttp app before the platform listens: the login
(:mod:`.auth`: its middleware guards every ``/console/api/...`` path), the pages, then
each part's ``add_routes(app, platform)`` (live, recordings, alarms, devices: one module
each). A part not there yet is skipped, so the parts land one by one.

HTTPS with the platform's CA; plain HTTP only while the platform listens on loopback
(a password and a session cookie in clear text beyond this machine would be the
console open to the network).
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from hss_pu.reference_platform.console.auth import PAGE_HEADERS, ConsoleAuth

if TYPE_CHECKING:
    from hss_pu.reference_platform.server import ReferencePlatform

__all__ = ["PARTS", "Console", "ConsoleRefused", "is_loopback", "setup"]

log = logging.getLogger("hss_pu.platform.console")

PREFIX = "/console/"
STATIC = Path(__file__).parent / "static"
# The parts' modules, each with add_routes(app, platform), added in this order.
PARTS = ("devices", "live", "recordings", "alarms", "frontend")

PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hss-pu console</title></head>
<body><h1>hss-pu console</h1><p>Logged in. The console's pages are not installed.</p>
<form method="post" action="/console/api/logout"><button>Log out</button></form>
</body></html>
"""


class ConsoleRefused(ValueError):
    """The console cannot be served as configured (plain HTTP beyond loopback)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Console:
    """What the platform keeps of its console: the login state and where it is."""

    def __init__(self, platform: ReferencePlatform, auth: ConsoleAuth) -> None:
        self._platform = platform
        self.auth = auth

    @property
    def url(self) -> str:
        return f"{self._platform.schedule_url}{PREFIX}"

    def take_generated_password(self) -> str | None:
        """The password generated at this first start, once: print it, never log it."""
        return self.auth.take_generated_password()


def check_transport(host: str, tls: bool) -> None:
    """ConsoleRefused: plain HTTP on a host beyond loopback."""
    if not tls and not is_loopback(host):
        raise ConsoleRefused(
            f"the web console needs HTTPS when the platform listens beyond loopback "
            f"(host {host}): drop --plain, listen on 127.0.0.1, or turn the console off "
            "(--no-console)"
        )


async def setup(platform: ReferencePlatform) -> Console:
    """Add the console to ``platform.web_app`` (before it starts); reads or creates the
    password file. ConsoleRefused, auth.PasswordFileError: not served."""
    opts = platform.options
    check_transport(opts.host, opts.tls)
    auth = ConsoleAuth(opts.state_dir, secure=opts.tls)
    await auth.load()
    app = platform.web_app
    app.middlewares.append(auth.middleware)
    app.router.add_post("/console/api/login", auth.login)
    app.router.add_post("/console/api/logout", auth.logout)
    app.router.add_get("/console/api/session", auth.whoami)
    app.router.add_get("/console/login", auth.login_form)

    async def to_index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(PREFIX)

    async def index(request: web.Request) -> web.StreamResponse:
        if auth.session(request) is None:
            raise web.HTTPSeeOther("/console/login")
        page = STATIC / "index.html"
        if page.is_file():
            return web.FileResponse(page, headers={"Cache-Control": "no-store"})
        return web.Response(text=PLACEHOLDER, content_type="text/html", headers=PAGE_HEADERS)

    app.router.add_get("/console", to_index)
    app.router.add_get(PREFIX, index)
    if STATIC.is_dir():
        app.router.add_static("/console/static/", STATIC)
    for name in PARTS:
        try:
            part = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the part is there, but something it imports is not
            log.debug("console: no %s part", name)
            continue
        part.add_routes(app, platform)
    return Console(platform, auth)
