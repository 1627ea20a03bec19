"""The web console in a real browser (issue 14, "Shown by"): Debian's headless Chromium on
the console of a real reference platform (``PlatformOptions.console``: HTTPS with the
platform's own CA, its login, every part), with a real daemon (the rig's, in this
process) that pushes live over SRT, records to Vr and raises alarms from its emulated
sensors. No stand-ins: every route a page uses is the console's own.

One test, one platform, one daemon and one browser: each line of the issue's "Shown by" is
a step, reported as a subtest (a step that fails does not stop the next ones), in a
browser context of its own (a session of its own, logged in through the login form). A
recording of 20 s starts with them and runs in the background while the other steps
fill its time. (Separate tests sharing a module fixture would each build all of it again
on their own xdist worker: pytest-xdist's --dist loadgroup no longer groups anything
with pytest 9.2, pytest-dev/pytest-xdist#1386.) Screenshots of each page go to
tests/artifacts/.

HTTPS: Chromium trusts this platform's CA, made for this test, by its key
(support/browser.py: ``launch(trust=...)``), not ``ignore_https_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hss_pu.reference_platform.console.live import LIVE_HUB, LiveHub
from hss_pu.reference_platform.console.recordings import device_segments
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.services.localctl import send_command

from .support.browser import PageErrors, launch, screenshot, why_no_browser
from .support.rig import (
    DEVICE,
    Rig,
    daemon_config,
    start_daemon,
    start_platform,
    start_process,
    until,
    write_config_file,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, ViewportSize

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORDING = "console-browser-20s"  # the session of the background recording
RECORD_SECONDS = 20.0
SEG_SECONDS = 2
VIEWPORT: ViewportSize = {"width": 1100, "height": 800}


@dataclass
class Site:
    """The console under test and what stands behind it."""

    platform: ReferencePlatform
    rig: Rig
    browser: Browser
    password: str
    config: Path  # the daemon's config file, for `hss-pu sensor ...`
    recording: asyncio.Task[tuple[float, float]]

    @property
    def base(self) -> str:
        return self.platform.schedule_url

    @property
    def live(self) -> LiveHub:
        return self.platform.web_app[LIVE_HUB]


async def record(rig: Rig, seconds: float) -> tuple[float, float]:
    """StartRecord with short segments to the platform's Vr, StopRecord ``seconds``
    later: (start, stop) on the platform's clock, once the last segment is saved."""
    p = rig.platform
    start = p.now()
    reply = await rig.start_record(
        RECORDING,
        seg_duration=SEG_SECONDS,
        start_ts=start,
        cbk_url=f"{p.vr_cbk_url(0)}?session={RECORDING}",
    )
    assert reply.err is None, reply.err
    await asyncio.sleep(seconds)
    reply = await rig.stop_record(RECORDING)
    assert reply.err is None, reply.err
    stop = p.now()

    def saved_to_the_end() -> bool:
        segs = [s for s in p.vr_segments.get(0, ()) if s.session == RECORDING]
        return bool(segs) and max(s.end for s in segs) >= stop - 1.0

    assert await until(saved_to_the_end, timeout=20), "the recording's last segment"
    return start, stop


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """The platform with its console, the daemon online, the 20 s recording started, and
    Chromium trusting the platform's CA."""
    why = why_no_browser()
    if why is not None:
        pytest.skip(why)
    tmp = tmp_path
    async with contextlib.AsyncExitStack() as stack:
        platform = await start_platform(tmp / "platform", console=True)
        stack.push_async_callback(platform.close)
        storage = tmp / "pu"
        # The console's sensor buttons reach the daemon's control socket (as `make run`).
        platform.options.device_sockets[DEVICE] = storage
        rig = await start_daemon(platform, storage, keepalive=2.0)
        stack.push_async_callback(rig.stop)
        assert platform.console is not None and platform.ca_file is not None
        password = platform.console.take_generated_password()
        assert password is not None
        config = write_config_file(daemon_config(platform, storage), tmp / "pu.toml")
        recording = asyncio.create_task(record(rig, RECORD_SECONDS))

        async def end_recording() -> None:
            recording.cancel()
            await asyncio.wait([recording])

        stack.push_async_callback(end_recording)
        browser = await stack.enter_async_context(launch(trust=platform.ca_file))
        yield Site(platform, rig, browser, password, config, recording)


@dataclass
class Tab:
    """The browser contexts of one step (each its own cookies): pages, and what went
    wrong in them."""

    site: Site
    errors: PageErrors = field(default_factory=PageErrors)
    contexts: list[BrowserContext] = field(default_factory=list)

    async def page(self) -> Page:
        """A new page in a new context: no session yet."""
        ctx = await self.site.browser.new_context(base_url=self.site.base, viewport=VIEWPORT)
        ctx.set_default_timeout(10_000)
        self.contexts.append(ctx)
        return self.errors.watch(await ctx.new_page())

    async def login(self, page: Page) -> None:
        """The login form, as a person fills it in."""
        await page.locator("#password").fill(self.site.password)
        await page.get_by_role("button", name="Log in").click()

    async def open(self, path: str) -> Page:
        """``path`` in a new context: sent to the login form, logged in, back at ``path``."""
        page = await self.page()
        await page.goto(path)
        await page.wait_for_url(re.compile(r"/console/login(\?next=|$)"))
        await self.login(page)
        await page.wait_for_url(self.site.base + path)
        return page


@contextlib.asynccontextmanager
async def browsing(site: Site) -> AsyncIterator[Tab]:
    """A step's tab: its browser contexts closed at the end."""
    t = Tab(site)
    try:
        yield t
    finally:
        for ctx in t.contexts:
            await ctx.close()


def pushing(rig: Rig) -> str | None:
    """The stream id the device pushes channel 0 to (None: no push)."""
    assert rig.daemon.live is not None
    push = rig.daemon.live.pushes.get(0)
    return None if push is None else push.stream_id


# --- log in ---------------------------------------------------------------------------------


async def the_login_refuses_a_wrong_password_and_goes_back_to_the_page(
    site: Site, tab: Tab
) -> None:
    page = await tab.page()
    await page.goto(f"/console/device?id={DEVICE}")
    await page.wait_for_url(re.compile(r"/console/login\?next="))
    assert await page.locator("script").count() == 0  # a plain form
    await page.locator("#password").fill(site.password + "-wrong")
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("alert").filter(has_text="Wrong user or password").wait_for()
    assert await page.context.cookies() == []
    await screenshot(page, "console-login")
    # The form shown again still goes back to the page asked for.
    await tab.login(page)
    await page.wait_for_url(f"{site.base}/console/device?id={DEVICE}")
    await page.locator("#online", has_text="online").wait_for(timeout=5000)
    [cookie] = await page.context.cookies()
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    # The wrong password's answer (401, and Chromium's line about it) and nothing else.
    errors = tab.errors.errors
    assert f"401: {site.base}/console/api/login" in errors, errors
    assert all("401" in e for e in errors), errors


async def the_api_refuses_requests_without_a_session(site: Site, tab: Tab) -> None:
    page = await tab.page()
    # A document of the console's origin that needs no session, to call the API from (the
    # login form's Content-Security-Policy lets it call nothing at all).
    # (Chromium asks such a document for /favicon.ico, which nobody serves: answered here.)
    await page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    await page.goto("/console/static/console.css")
    ask = """async (paths) => {
        const out = [];
        for (const p of paths) {
            const post = p.endsWith('/call');
            const r = await fetch(p, {method: post ? 'POST' : 'GET',
                                      headers: {'Content-Type': 'application/json'},
                                      body: post ? '{"method": "GetCap"}' : undefined});
            out.push([r.status, (await r.json()).info || null]);
        }
        return out;
    }"""
    paths = [
        "/console/api/devices",
        "/console/api/alarms",
        f"/console/api/recordings/{DEVICE}/0",
        f"/console/api/devices/{DEVICE}/call",
        "/console/api/session",
    ]
    assert await page.evaluate(ask, paths) == [[401, "log in first"]] * len(paths)
    # The live relay and the event stream too: no push is asked of the device.
    opened = await page.evaluate(
        """(device) => new Promise((done) => {
            const ws = new WebSocket(`wss://${location.host}/console/api/live/${device}/0`);
            ws.onopen = () => done('open');
            ws.onclose = () => done('refused');
        })""",
        DEVICE,
    )
    assert opened == "refused" and pushing(site.rig) is None
    # Logged in, the same requests are answered.
    await page.goto("/console/login?next=/console/alarms")
    await tab.login(page)
    await page.wait_for_url(f"{site.base}/console/alarms")
    statuses = [s for s, _ in await page.evaluate(ask, paths[:3])]
    assert statuses == [200, 200, 200]
    # What went wrong in the page: those refusals, and nothing else.
    refused = [e for e in tab.errors.errors if "401" in e or "HTTP Authentication failed" in e]
    assert len(refused) >= len(paths) and refused == tab.errors.errors, tab.errors.errors


# --- devices --------------------------------------------------------------------------------


async def the_device_list_shows_the_emulated_device_online_and_follows_it(
    site: Site, tab: Tab
) -> None:
    page = await tab.open("/console/")
    row = page.locator(f'tr[data-device="{DEVICE}"]')
    await row.locator(".online").wait_for(timeout=5000)
    assert await row.locator(".online").inner_text() == "online"
    text = await row.inner_text()
    assert "HSS-PU-EMU" in text and "hss-pu-emulated" in text
    await row.locator('.channel[data-channel="0"]').wait_for(timeout=5000)
    await page.locator("#live-state", has_text="live").wait_for(timeout=5000)
    await screenshot(page, "console-devices")
    # Live, without a reload: the PIR sees someone, the Keepalive's alarm flag shows;
    # and no longer (its alarm held 1 s instead of 10 after the PIR goes quiet).
    reply = await site.rig.set_config({"channels": {"0": {"alarms": {"pir": {"hold": 1}}}}})
    assert reply.err is None, reply.err
    storage = site.rig.storage
    reply = await asyncio.to_thread(
        send_command, storage, {"cmd": "sensor", "name": "pir", "action": "on"}
    )
    assert reply["ok"], reply
    await page.locator(f'tr.alarm[data-device="{DEVICE}"]').wait_for(timeout=8000)
    assert "PIR motion" in await row.inner_text()
    reply = await asyncio.to_thread(
        send_command, storage, {"cmd": "sensor", "name": "pir", "action": "off"}
    )
    assert reply["ok"], reply
    await page.locator(f'tr.alarm[data-device="{DEVICE}"]').wait_for(
        state="detached", timeout=10000
    )
    assert tab.errors.errors == []


# --- live -----------------------------------------------------------------------------------


async def the_live_view_plays_through_the_live_relay_and_stops_the_push_after(
    site: Site, tab: Tab
) -> None:
    stream = LiveHub.stream_id(DEVICE, 0)
    assert pushing(site.rig) is None
    page = await tab.open(f"/console/live?device={DEVICE}&channel=0")
    # The page's WebSocket made the platform send PushLive: the device pushes to it.
    assert await until(lambda: pushing(site.rig) == stream, timeout=15)
    await page.wait_for_function(
        "() => document.getElementById('video').currentTime > 1.5", timeout=15000
    )
    t0 = await page.evaluate("document.getElementById('video').currentTime")
    await asyncio.sleep(1.0)
    assert await page.evaluate("document.getElementById('video').currentTime") > t0 + 0.5
    # A decoded frame that is not blank: the emulated test pattern's colours.
    width, spread = await page.evaluate(
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
    assert width == 320 and spread > 100, (width, spread)
    assert [(p["stream_id"], p["viewers"]) for p in site.live.active()] == [(stream, 1)]
    await screenshot(page, "console-live")
    # The last viewer leaves: after the grace (a reload would keep the push), StopLive.
    await page.context.close()
    left = time.monotonic()
    grace = site.live.grace
    assert await until(lambda: pushing(site.rig) is None, timeout=grace + 10)
    assert time.monotonic() - left >= grace - 0.5
    # ... and the platform's listener for it is gone too.
    assert await until(
        lambda: site.live.active() == [] and stream not in site.platform.receivers, timeout=5
    )
    assert tab.errors.errors == []


# --- alarms ---------------------------------------------------------------------------------

SHOWN = """(n) => [...document.querySelectorAll('tr[data-type="10"] img.thumb')]
    .filter((i) => i.complete && i.naturalWidth > 0).length >= n"""


async def a_bell_press_shows_its_alarm_with_its_picture_within_2_s(site: Site, tab: Tab) -> None:
    page = await tab.open("/console/alarms")
    await page.locator("#live-state", has_text="live").wait_for(timeout=5000)
    before = len([a for a in site.platform.alarms(DEVICE) if a.type == 10])
    loop = asyncio.get_running_loop()
    # `hss-pu sensor bell press`, the command a person types, against the daemon's
    # storage.dir (its control socket). Timed from its answer: the 2 s are the alarm's
    # way to the page, not Python's start-up.
    started = loop.time()
    cli = await start_process("sensor", "bell", "press", "--config", str(site.config))
    assert await cli.wait(30) == 0, cli.lines
    pressed = loop.time()
    await page.wait_for_function(SHOWN, arg=before + 1, timeout=2000)
    shown = loop.time()
    assert shown - pressed < 2.0, shown - pressed
    kept = site.platform.alarms(DEVICE)[-1]
    assert kept.type == 10 and kept.picture is not None and kept.pic_name is not None
    row = page.locator(f'tr[data-alarm="{kept.index}"]')
    assert "bell ring" in await row.inner_text()
    img = row.locator("img.thumb")
    assert await img.get_attribute("src") == f"/console/api/pictures/{kept.pic_name}.jpg"
    assert await img.evaluate("i => i.naturalWidth") == kept.picture.width
    # The console's own button (the device page), after the bell's hold-off of 3 s.
    device = await tab.open(f"/console/device?id={DEVICE}")
    button = device.get_by_role("button", name="Ring the bell")
    await button.wait_for(timeout=5000)
    await asyncio.sleep(max(0.0, 3.2 - (loop.time() - pressed)))
    clicked = loop.time()
    await button.click()
    await page.wait_for_function(SHOWN, arg=before + 2, timeout=2000)
    assert loop.time() - clicked < 2.0
    await screenshot(page, "console-alarms")
    print(  # the numbers, for the report (pytest -s)
        f"bell: the CLI took {pressed - started:.2f} s; shown {shown - pressed:.2f} s after it, "
        f"{loop.time() - clicked:.2f} s after the button"
    )
    assert tab.errors.errors == []


# --- recordings -----------------------------------------------------------------------------


async def a_20_s_recording_plays_from_its_timeline(site: Site, tab: Tab) -> None:
    start, stop = await site.recording
    assert stop - start >= RECORD_SECONDS
    at = start + 0.5
    page = await tab.open(f"/console/recordings?device={DEVICE}&channel=0&at={at:.1f}")
    # The page's range: 60 s before ?at= to 120 s after.
    lo, hi = at - 60, at + 120
    segs = [s for s in device_segments(site.platform, DEVICE, 0) if s.end > lo and s.start < hi]
    ours = [s for s in segs if s.session == RECORDING]
    assert len(ours) >= RECORD_SECONDS / SEG_SECONDS - 1
    await page.locator("#timeline .seg").nth(len(segs) - 1).wait_for(timeout=5000)
    assert await page.locator("#timeline .seg").count() == len(segs)
    summary = await page.locator("#summary").inner_text()
    m = re.match(r"(\d+) segments, ([\d.]+) s recorded", summary)
    assert m and int(m[1]) == len(segs) and float(m[2]) >= RECORD_SECONDS - 1, summary
    # Played from ?at=, through several segments: its time goes past a few seconds.
    await page.wait_for_function(
        "() => { const v = document.getElementById('video');"
        " return v.currentTime > 5.5 && !v.paused; }",
        timeout=15000,
    )
    await screenshot(page, "console-recordings")
    assert tab.errors.errors == []


# --- the device page ------------------------------------------------------------------------


async def the_device_page_drives_the_device_and_shows_its_refusals(site: Site, tab: Tab) -> None:
    rig = site.rig
    await site.recording  # its StartRecord would replace the 20 s one
    page = await tab.open(f"/console/device?id={DEVICE}")
    await page.locator("#online", has_text="online").wait_for(timeout=5000)
    result = page.locator("#result")

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
    await page.locator("button.start-record").wait_for(timeout=6000)  # the next Keepalive

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
    setting = page.locator('[id="cfg-channels.0.alarms.motion.sensitivity"]')
    await setting.wait_for(timeout=10000)
    await setting.fill("500")
    await page.get_by_role("button", name="Save changes (SetConfig)").click()
    refusal = page.locator("#config-result .message.error")
    await refusal.wait_for(timeout=10000)
    text = await refusal.inner_text()
    assert re.search(r"refused \(12\).*sensitivity", text), text
    await setting.fill("70")
    await page.get_by_role("button", name="Save changes (SetConfig)").click()
    await page.locator("#config-result .message.ok").wait_for(timeout=10000)
    doc = (await rig.call("GetConfig")).resp
    assert doc["channels"]["0"]["alarms"]["motion"]["sensitivity"] == 70
    await screenshot(page, "console-device")
    # A device's refusal is an answer (200), not a failure of the page.
    assert tab.errors.errors == []


# --- the test -------------------------------------------------------------------------------

Step = Callable[[Site, Tab], Awaitable[None]]

# In this order: the device page's own recording would replace the 20 s one (it waits
# for it), and the steps before the recording's fill its 20 s.
STEPS: tuple[Step, ...] = (
    the_login_refuses_a_wrong_password_and_goes_back_to_the_page,
    the_api_refuses_requests_without_a_session,
    the_device_list_shows_the_emulated_device_online_and_follows_it,
    the_live_view_plays_through_the_live_relay_and_stops_the_push_after,
    a_bell_press_shows_its_alarm_with_its_picture_within_2_s,
    a_20_s_recording_plays_from_its_timeline,
    the_device_page_drives_the_device_and_shows_its_refusals,
)


@pytest.mark.timeout(300)
async def test_the_console_in_a_browser(site: Site, subtests: pytest.Subtests) -> None:
    for step in STEPS:
        with subtests.test(step.__name__):
            async with browsing(site) as tab:
                await step(site, tab)
