"""The web console, served by the reference platform on its HTTPS port under /console/.

:func:`setup` adds it to the platform's aiohttp app before the platform listens: the login
(:mod:`.auth`: its form, and its middleware guarding every ``/console/api/...`` path),
a guard that sends a page asked for without a session to the login form (``?next=`` the
page), then each part's ``add_routes(app, platform)``: devices (and the controls), live,
recordings, alarms, and the front end (the pages, their scripts, the npm players).

HTTPS with the platform's CA; plain HTTP only while the platform listens on loopback
(a password and a session cookie in clear text beyond this machine would be the
console open to the network).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from hss_pu.reference_platform.console import alarms, devices, frontend, live, recordings
from hss_pu.reference_platform.console.auth import ConsoleAuth, Handler, login_url

if TYPE_CHECKING:
    from hss_pu.reference_platform.server import ReferencePlatform

__all__ = ["PARTS", "Console", "ConsoleRefused", "is_loopback", "setup"]

log = logging.getLogger("hss_pu.platform.console")

PREFIX = "/console/"
# The parts, each with add_routes(app, platform), added in this order.
PARTS = (devices, live, recordings, alarms, frontend)
# The pages: without a session, the login form instead (then back to the page).
PAGES = frozenset({PREFIX, *(f"{PREFIX}{name}" for name in frontend.PAGES)})


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


def _pages_guard(auth: ConsoleAuth) -> Middleware:
    """A page asked for without a session: 303 to the login form, which comes back to it
    (no script needed, and no page shown only to be left at its first API call)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PAGES and auth.session(request) is None:
            raise web.HTTPSeeOther(login_url(request.path_qs))
        return await handler(request)

    return guard


async def setup(platform: ReferencePlatform) -> Console:
    """Add the console to ``platform.web_app`` (before it starts); reads or creates the
    password file. ConsoleRefused, auth.PasswordFileError: not served."""
    opts = platform.options
    check_transport(opts.host, opts.tls)
    auth = ConsoleAuth(opts.state_dir, secure=opts.tls)
    await auth.load()
    app = platform.web_app
    app.middlewares.append(auth.middleware)
    app.middlewares.append(_pages_guard(auth))
    app.router.add_post("/console/api/login", auth.login)
    app.router.add_post("/console/api/logout", auth.logout)
    app.router.add_get("/console/api/session", auth.whoami)
    app.router.add_get("/console/login", auth.login_form)
    for part in PARTS:
        part.add_routes(app, platform)
    return Console(platform, auth)
