"""The console's front end as files (issue 14, item 8): the pages and the npm players are
served by the console itself, nothing from another origin. (In a browser:
test_console_browser.py.)"""

from __future__ import annotations

import re

import httpx

from hss_pu.reference_platform.console import frontend
from hss_pu.reference_platform.server import ReferencePlatform

from .support.console import serve_console


async def test_vendor_files_come_from_node_modules(platform: ReferencePlatform) -> None:
    async with serve_console(platform) as base, httpx.AsyncClient() as client:
        for name, rel in frontend.VENDOR.items():
            r = await client.get(f"{base}/console/vendor/{name}")
            assert r.status_code == 200, (name, r.text)
            assert r.content == (frontend.node_modules() / rel).read_bytes()
        assert (await client.get(f"{base}/console/vendor/..%2Fpackage.json")).status_code == 404
        page = await client.get(f"{base}/console/")
        assert page.status_code == 200 and "common.js" in page.text
        # No page names a script, style or picture of another origin.
        for f in frontend.STATIC_DIR.iterdir():
            assert not re.search(r"(src|href)=\"(https?:)?//", f.read_text()), f
