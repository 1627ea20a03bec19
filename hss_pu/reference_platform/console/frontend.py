"""The console's pages: plain HTML, JS and CSS from ``static/`` (no build step), and the
player libraries npm installed (package-lock.json at the repository's root) under
``/console/vendor/``. Nothing is loaded from anywhere else: the console works on a home
network with no way out.

- ``/console/`` the device list, ``/console/{device,live,recordings,alarms}`` the other
  pages (their arguments in the query string);
- ``/console/static/...`` the files of ``static/``;
- ``/console/vendor/mpegts.js``, ``/console/vendor/hls.js``: the players' dist files.

The login form is :mod:`.auth`'s (no script). The console's setup sends a page asked for
without a session there; the pages' scripts do the same when the API answers 401 (the
session ended while the page was open).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from hss_pu.reference_platform.server import ReferencePlatform

__all__ = ["PAGES", "STATIC_DIR", "VENDOR", "add_routes", "node_modules"]

STATIC_DIR = Path(__file__).parent / "static"
PAGES = ("device", "live", "recordings", "alarms")

# What the pages load from npm's packages: URL name -> the file inside node_modules.
VENDOR = {
    "mpegts.js": "mpegts.js/dist/mpegts.js",
    "mpegts.js.map": "mpegts.js/dist/mpegts.js.map",
    "hls.js": "hls.js/dist/hls.min.js",
    "hls.min.js.map": "hls.js/dist/hls.min.js.map",
}

# Pages and scripts change with the package: the browser asks again every time.
_NO_CACHE = {"Cache-Control": "no-cache"}


def node_modules() -> Path:
    """Where ``make setup`` (``npm ci``) put the packages: the repository's root."""
    return Path(__file__).resolve().parents[3] / "node_modules"


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / f"{name}.html", headers=_NO_CACHE)


async def _index(request: web.Request) -> web.StreamResponse:
    return _page("index")


async def _named_page(request: web.Request) -> web.StreamResponse:
    return _page(request.path.removeprefix("/console/"))


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/")


async def _vendor(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    rel = VENDOR.get(name)
    if rel is None:
        return web.json_response({"info": "no such file"}, status=404)
    path = node_modules() / rel
    if not path.is_file():
        return web.json_response(
            {"info": f"{rel} is not installed: run `make setup` (npm ci) in the repository"},
            status=404,
        )
    ctype = "application/json" if name.endswith(".map") else "text/javascript"
    return web.FileResponse(path, headers={**_NO_CACHE, "Content-Type": ctype})


def add_routes(app: web.Application, platform: ReferencePlatform) -> None:
    """The pages, their static files and the vendor files."""
    app.router.add_get("/console", _redirect)
    app.router.add_get("/console/", _index)
    for page in PAGES:
        app.router.add_get(f"/console/{page}", _named_page)
    app.router.add_get("/console/vendor/{name}", _vendor)
    app.router.add_static("/console/static/", STATIC_DIR, append_version=False)
