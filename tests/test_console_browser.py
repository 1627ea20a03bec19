"""The web console in a real browser (issue 14: items 2, 6 and 8 as a person sees them):
headless Chromium on the console's pages, served beside a real reference platform and a
real daemon. Screenshots of each page go to tests/artifacts/.

The alarms part's routes (its list and the pictures), the live relay and the recordings
routes are other parts of the console; where a page needs one before it is merged here,
a stand-in named as such serves the contract of CONSOLE.md from the real platform's data.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from hss_pu.reference_platform.console import devices, frontend
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.services.localctl import send_command

from .support.browser import PageErrors, screenshot
from .support.console import serve_console
from .support.rig import DEVICE, MakeRig, Rig

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.rig(keepalive=2.0)]


def stand_in_alarms(app: web.Application, platform: ReferencePlatform) -> None:
    """Stand-in for the alarms part (its list and pictures), from the platform's alarms."""

    async def alarms(request: web.Request) -> web.Response:
        found = platform.alarms(request.query.get("device") or None)
        last = int(request.query.get("last", "0"))
        return web.json_response(
            {"alarms": [devices.alarm_json(a) for a in (found[-last:] if last else found)]}
        )

    async def picture(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        for a in platform.alarms():
            if a.picture is not None and f"{a.pic_name}.jpg" == name:
                return web.FileResponse(a.picture.path)
        raise web.HTTPNotFound()

    app.router.add_get("/console/api/alarms", alarms)
    app.router.add_get("/console/api/pictures/{name}", picture)


PARTS = (devices.add_routes, frontend.add_routes, stand_in_alarms)


async def _rig(platform: ReferencePlatform, make_rig: MakeRig) -> Rig:
    rig = await make_rig()
    platform.options.device_sockets[DEVICE] = rig.storage
    return rig


async def _open(browser: Browser, url: str, errors: PageErrors) -> Page:
    page = errors.watch(await browser.new_page(viewport={"width": 1100, "height": 800}))
    await page.goto(url)
    return page


async def test_the_device_list_shows_the_emulated_device_online_and_follows_it(
    platform: ReferencePlatform, make_rig: MakeRig, browser: Browser
) -> None:
    rig = await _rig(platform, make_rig)
    errors = PageErrors()
    async with serve_console(platform, PARTS) as base:
        page = await _open(browser, f"{base}/console/", errors)
        row = page.locator(f'tr[data-device="{DEVICE}"]')
        await row.locator(".online").wait_for(timeout=5000)
        assert await row.locator(".online").inner_text() == "online"
        text = await row.inner_text()
        assert "HSS-PU-EMU" in text and "hss-pu-emulated" in text
        await row.locator('.channel[data-channel="0"]').wait_for(timeout=5000)
        await screenshot(page, "console-devices")
        # Live: the device goes away, then comes back; the page follows without a reload.
        await rig.stop()
        await row.locator(".offline").wait_for(timeout=5000)
        await make_rig()
        await row.locator(".online").wait_for(timeout=10000)
        # Each script (and vendor file) came from the console, none from elsewhere.
        assert (await page.evaluate("typeof C.api")) == "function"
    assert errors.errors == []


async def test_a_bell_press_shows_its_alarm_with_its_picture_within_2_s(
    platform: ReferencePlatform, make_rig: MakeRig, browser: Browser
) -> None:
    rig = await _rig(platform, make_rig)
    errors = PageErrors()
    async with serve_console(platform, PARTS) as base:
        page = await _open(browser, f"{base}/console/alarms", errors)
        await page.locator("#live-state", has_text="live").wait_for(timeout=5000)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # What `hss-pu sensor bell press` does: the command on the daemon's control socket.
        reply = await asyncio.to_thread(
            send_command, rig.storage, {"cmd": "sensor", "name": "bell", "action": "press"}
        )
        assert reply["ok"], reply
        row = page.locator('tr[data-type="10"]')
        img = row.locator("img.thumb")
        await img.wait_for(timeout=2000)
        await page.wait_for_function(
            "() => { const i = document.querySelector('tr[data-type=\"10\"] img.thumb');"
            " return i && i.complete && i.naturalWidth > 0; }",
            timeout=max(100, int(2000 - (loop.time() - t0) * 1000)),
        )
        assert loop.time() - t0 < 2.0
        assert "bell ring" in await row.inner_text()
        kept = platform.alarms(DEVICE)[-1]
        assert kept.picture is not None
        assert await img.evaluate("i => i.naturalWidth") == kept.picture.width
        await screenshot(page, "console-alarms")
    assert errors.errors == []


async def test_the_device_page_drives_the_device_and_shows_its_refusals(
    platform: ReferencePlatform, make_rig: MakeRig, browser: Browser
) -> None:
    rig = await _rig(platform, make_rig)
    errors = PageErrors()
    async with serve_console(platform, PARTS) as base:
        page = await _open(browser, f"{base}/console/device?id={DEVICE}", errors)
        await page.locator("#online", has_text="online").wait_for(timeout=5000)
        result = page.locator("#result")

        # The emulated bell, from its button.
        await page.get_by_role("button", name="Ring the bell").click()
        await platform.wait_alarm(DEVICE, type=10, timeout=5)

        # Snapshot: the picture the device uploaded, shown.
        await page.locator('.channel[data-channel="0"] button.snapshot').click()
        await page.wait_for_function(
            "() => { const i = document.querySelector('img.snapshot');"
            " return i && i.complete && i.naturalWidth > 0; }",
            timeout=10000,
        )
        assert await page.locator("img.snapshot").evaluate("i => i.naturalWidth") == 320

        # Recording: start, the Keepalive says so, stop.
        await page.locator("button.start-record").click()
        await page.locator(".badge.rec").wait_for(timeout=5000)
        await rig.keepalive(lambda c: bool(c.get("record_session")))
        await page.locator("button.stop-record").click()
        await result.locator(".message.ok", has_text="Stop recording").wait_for(timeout=10000)

        # PTZ: the emulated servos move one step right.
        await page.locator("#ptz").wait_for(state="visible", timeout=5000)
        pan = (await rig.status())["ptz"]["pan"]
        await page.locator('#ptz-pad button[data-op="right_step"]').click()
        for _ in range(50):
            if (await rig.status())["ptz"]["pan"] != pan:
                break
            await asyncio.sleep(0.1)
        assert (await rig.status())["ptz"]["pan"] != pan

        # The configuration as a form: a value the device refuses shows its own message.
        await page.get_by_role("button", name="Load (GetConfig)").click()
        field = page.locator('[id="cfg-channels.0.alarms.motion.sensitivity"]')
        await field.wait_for(timeout=10000)
        await field.fill("500")
        await page.get_by_role("button", name="Save changes (SetConfig)").click()
        refusal = page.locator("#config-result .message.error")
        await refusal.wait_for(timeout=10000)
        text = await refusal.inner_text()
        assert re.search(r"refused \(12\).*sensitivity", text), text
        await field.fill("70")
        await page.get_by_role("button", name="Save changes (SetConfig)").click()
        await page.locator("#config-result .message.ok").wait_for(timeout=10000)
        doc = (await rig.call("GetConfig")).resp
        assert doc["channels"]["0"]["alarms"]["motion"]["sensitivity"] == 70
        await screenshot(page, "console-device")
    # A device's refusal is an answer (200), not a failure of the page.
    assert errors.errors == []


# --- the players, from npm, in Chromium ---------------------------------------------------


@pytest.fixture
def test_ts(tmp_path: Path) -> bytes:
    """4 s of H.264 in MPEG-TS, made by ffmpeg (what a camera's push carries)."""
    out = tmp_path / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc=size=320x180:rate=15", "-t", "4", "-c:v", "libx264", "-preset",
         "ultrafast", "-tune", "zerolatency", "-g", "15", "-pix_fmt", "yuv420p",
         "-f", "mpegts", str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    return out.read_bytes()


async def test_the_live_page_plays_mpegts_over_a_websocket_with_the_npm_player(
    platform: ReferencePlatform, browser: Browser, test_ts: bytes
) -> None:
    data = test_ts

    def stand_in_live(app: web.Application, _platform: ReferencePlatform) -> None:
        """Stand-in for the live relay: the clip's TS bytes, paced at about real time."""

        async def live(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            chunk = 188 * 32
            pace = 4.0 / (len(data) / chunk)
            for i in range(0, len(data), chunk):
                await ws.send_bytes(data[i : i + chunk])
                await asyncio.sleep(pace)
            await asyncio.sleep(5)
            await ws.close()
            return ws

        app.router.add_get("/console/api/live/{device}/{channel}", live)

    errors = PageErrors()
    parts = (devices.add_routes, frontend.add_routes, stand_in_live)
    async with serve_console(platform, parts) as base:
        page = await _open(browser, f"{base}/console/live?device={DEVICE}&channel=0", errors)
        await page.wait_for_function(
            "() => document.getElementById('video').currentTime > 1.5", timeout=10000
        )
        # A decoded frame that is not blank: testsrc's colour bars.
        spread = await page.evaluate(
            """() => {
              const v = document.getElementById('video');
              const c = document.createElement('canvas');
              c.width = v.videoWidth; c.height = v.videoHeight;
              const g = c.getContext('2d');
              g.drawImage(v, 0, 0);
              const px = g.getImageData(0, 0, c.width, c.height).data;
              let lo = 255, hi = 0;
              for (let i = 0; i < px.length; i += 4 * 97) {
                lo = Math.min(lo, px[i]); hi = Math.max(hi, px[i]);
              }
              return [c.width, hi - lo];
            }"""
        )
        assert spread[0] == 320 and spread[1] > 100
        await screenshot(page, "console-live")
    assert errors.errors == []


@pytest.fixture
def clip_segments(tmp_path: Path) -> list[tuple[str, bytes]]:
    """6 s of H.264 cut by ffmpeg into three 2 s MPEG-TS segments (as Vr stores them)."""
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc=size=320x180:rate=15", "-t", "6", "-c:v", "libx264", "-preset",
         "ultrafast", "-g", "15", "-pix_fmt", "yuv420p", "-f", "segment",
         "-segment_time", "2", "-segment_format", "mpegts", str(tmp_path / "seg%d.ts")],
        check=True, timeout=60,
    )  # fmt: skip
    return [(f"seg{i}.ts", (tmp_path / f"seg{i}.ts").read_bytes()) for i in range(3)]


async def test_the_recordings_page_shows_the_timeline_and_plays_from_a_moment(
    platform: ReferencePlatform, browser: Browser, clip_segments: list[tuple[str, bytes]]
) -> None:
    t0 = float(int(platform.now()) - 600)
    # Two segments back to back, a 10 s gap, then one that begins a new recording.
    starts = [t0, t0 + 2, t0 + 14]
    segs = [
        {"name": name, "start": start, "duration": 2.0, "size": len(data), "discontinue": i == 2}
        for i, ((name, data), start) in enumerate(zip(clip_segments, starts, strict=True))
    ]
    files = dict(clip_segments)

    def stand_in_recordings(app: web.Application, _platform: ReferencePlatform) -> None:
        """Stand-in for the recordings part: CONSOLE.md's contract over the three files."""
        path = "/console/api/recordings/{device}/{channel}"

        async def listing(request: web.Request) -> web.Response:
            return web.json_response(
                {"segments": segs, "gaps": [{"start": t0 + 4, "end": t0 + 14}]}
            )

        async def playlist(request: web.Request) -> web.Response:
            lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2",
                     "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-MEDIA-SEQUENCE:0"]  # fmt: skip
            for s in segs:
                if s["discontinue"]:
                    lines.append("#EXT-X-DISCONTINUITY")
                lines += [
                    f"#EXTINF:{s['duration']:.3f},",
                    f"{request.path.removesuffix('/index.m3u8')}/seg/{s['name']}",
                ]
            lines.append("#EXT-X-ENDLIST")
            return web.Response(
                text="\n".join(lines) + "\n", content_type="application/vnd.apple.mpegurl"
            )

        async def segment(request: web.Request) -> web.Response:
            return web.Response(body=files[request.match_info["name"]], content_type="video/mp2t")

        app.router.add_get(path, listing)
        app.router.add_get(path + "/index.m3u8", playlist)
        app.router.add_get(path + "/seg/{name}", segment)

    errors = PageErrors()
    parts = (devices.add_routes, frontend.add_routes, stand_in_recordings)
    async with serve_console(platform, parts) as base:
        url = f"{base}/console/recordings?device={DEVICE}&channel=0&at={t0 + 1}"
        page = await _open(browser, url, errors)
        await page.locator("#timeline .seg").nth(2).wait_for(timeout=5000)
        assert await page.locator("#timeline .gap").count() == 1
        assert await page.locator("#timeline .disc").count() == 1
        assert "3 segments, 6.0 s recorded, 1 gaps" in await page.locator("#summary").inner_text()
        href = await page.locator("#download").get_attribute("href")
        assert href is not None and href.startswith(f"/console/api/recordings/{DEVICE}/0/download?")
        # ?at= (an alarm's link) played from that moment: 1 s into the first segment.
        await page.wait_for_function(
            "() => document.getElementById('video').currentTime > 1.3", timeout=10000
        )
        # A click on the third segment plays after the gap, across the discontinuity.
        box = await page.locator("#timeline").bounding_box()
        assert box is not None
        span = 180.0  # the page's default range around ?at=: 60 s before, 120 s after
        x = box["x"] + box["width"] * ((t0 + 14.5) - (t0 + 1 - 60)) / span
        await page.mouse.click(x, box["y"] + box["height"] / 2)
        await page.wait_for_function(
            "() => { const v = document.getElementById('video');"
            " return v.currentTime > 4.4 && !v.paused; }",
            timeout=10000,
        )
        shown = await page.locator("#position").inner_text()
        assert shown.startswith("showing ")
        await screenshot(page, "console-recordings")
    assert errors.errors == []


def stand_in_auth(app: web.Application, _platform: ReferencePlatform) -> None:
    """Stand-in for the console's login (auth.py's contract: JSON {user, password} ->
    {user} and a cookie, 401 {info} when wrong; every other /console/api/ path 401 without
    the cookie)."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        api = path.startswith("/console/api/") and path != "/console/api/login"
        if api and request.cookies.get("stand-in") != "yes":
            return web.json_response({"info": "log in first"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"user": "admin", "password": "right-password"}:
            return web.json_response({"info": "wrong user or password"}, status=401)
        resp = web.json_response({"user": "admin"})
        resp.set_cookie("stand-in", "yes", httponly=True, samesite="Strict", path="/console/")
        return resp

    app.middlewares.append(guard)
    app.router.add_post("/console/api/login", login)


async def test_without_a_session_a_page_goes_to_the_login_and_comes_back(
    platform: ReferencePlatform, make_rig: MakeRig, browser: Browser
) -> None:
    await _rig(platform, make_rig)
    errors = PageErrors()
    parts = (stand_in_auth, devices.add_routes, frontend.add_routes)
    async with serve_console(platform, parts) as base:
        page = await _open(browser, f"{base}/console/device?id={DEVICE}", errors)
        await page.wait_for_url(re.compile(r"/console/login\?next="), timeout=5000)
        await page.locator("#password").fill("wrong-password")
        await page.get_by_role("button", name="Log in").click()
        await page.locator("#result .message.error", has_text="Wrong").wait_for(timeout=5000)
        await screenshot(page, "console-login")
        await page.locator("#password").fill("right-password")
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url(f"{base}/console/device?id={DEVICE}", timeout=5000)
        await page.locator("#online", has_text="online").wait_for(timeout=5000)
    # The refusals the page met on its way (401s) and nothing else.
    assert errors.errors and all("401" in e for e in errors.errors), errors.errors
