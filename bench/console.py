"""The console's live view: glass-to-glass delay and the platform's CPU per viewer.

The emulated camera (1280x720@30, 2 Mbit/s, hss-pu as a process) pushes over SRT (the
latency the console's live part asks for: ``ReferencePlatform.open_live``'s default) to
the reference platform, itself a process serving the whole web console over HTTPS with
its own CA, as ``hss-pu platform serve`` does; the bench logs in as admin with a password
it set through the console's auth module (``store_password``, what ``hss-pu platform
console-password`` does). Two kinds of viewer, each for 1, 2 and 4 viewers:

- bytes: WebSocket clients of ``/console/api/live/{device}/{channel}``; the first decodes
  what it receives with PyAV and reads the time code the emulated source drew into each
  frame (capture -> decoded frame, as bench/live.py measures it over plain SRT), the
  others only take the bytes;
- browser: pages of the console's live view (``/console/live``: mpegts.js, Media Source
  Extensions) in headless Chromium; each reads the time code of every frame its
  ``<video>`` presents (static/timecode.js, requestVideoFrameCallback) against the time
  that frame is due on the screen: the browser's glass-to-glass delay.

Camera, platform and browser share this machine's clock (the daemon adopts the
platform's time only when it is more than 10 s off; the bench sets no offset), so a time
code and the page's ``Date.now()`` compare directly. For each step it prints the delay
(p50/p99), the platform process's CPU (and its srt-live-transmit's), per viewer.

Run: .venv/bin/python bench/console.py [--seconds 20] [--no-bytes] [--no-browser]
     [--player-config '{"liveSync": false}'] (merged into the page's mpegts.js config)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import av
import benchconfig
from framedelay import frame_delays
from percentile import pct
from procstat import cpu_seconds

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.support.browser: the same Chromium as the tests
    sys.path.insert(0, str(REPO))

W, H, FPS, BITRATE = 1280, 720, 30, 2_000_000
DEVICE, PASSWORD = "PU-BENCH", "bench-password-1"
CONSOLE_PASSWORD = "bench-console-password"  # noqa: S105 (a throw-away state dir's)
SETTLE = 3.0  # s after viewers join before measuring (their start GOP is behind live)
VIEWERS = (1, 2, 4)
GRACE = 5.0  # console.live.GRACE: how long a push outlives its last viewer


# --- the platform, in a process of its own --------------------------------------------------


async def serve_platform(state: Path) -> None:
    """The reference platform with its console (HTTPS, a known password); prints where,
    then runs until its standard input closes."""
    import inspect

    from hss_pu.reference_platform.console.auth import store_password
    from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform

    store_password(state, CONSOLE_PASSWORD)
    opts = PlatformOptions(state_dir=state, devices={DEVICE: PASSWORD}, console=True)
    platform = ReferencePlatform(opts)
    await platform.start()
    assert platform.console is not None
    latency = inspect.signature(platform.open_live).parameters["latency_ms"].default
    where = {
        "schedule_url": platform.schedule_url,
        "ca_file": str(platform.ca_file),
        "console": platform.console.url.rstrip("/"),
        "latency_ms": latency,
    }
    print(json.dumps(where), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await platform.close()


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError, IndexError):  # gone
            total += cpu_seconds(p)
    return total


@dataclass
class Cpu:
    """CPU seconds so far: the platform's process, its children (srt-live-transmit), and
    every other process this bench started but the daemon (the browser, when there)."""

    platform: float
    receiver: float
    browser: float

    @classmethod
    def now(cls, platform: int, daemon: int) -> Cpu:
        mine = set(descendants(os.getpid()))
        kids = descendants(platform)
        others = mine - {platform, daemon, *kids, *descendants(daemon)}
        return cls(cpu_of([platform]), cpu_of(kids), cpu_of(sorted(others)))

    def per_s(self, before: Cpu, dt: float) -> Cpu:
        return Cpu(
            (self.platform - before.platform) / dt,
            (self.receiver - before.receiver) / dt,
            (self.browser - before.browser) / dt,
        )


@dataclass
class Row:
    viewers: int
    cpu: Cpu
    delays: list[float]
    unread: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# --- bytes-level viewers ------------------------------------------------------------------


class Feed:
    """A file PyAV reads from, fed with WebSocket messages from the event loop."""

    def __init__(self) -> None:
        self._q: queue.Queue[bytes] = queue.Queue()
        self._buf = b""

    def put(self, data: bytes) -> None:
        self._q.put(data)

    def close(self) -> None:
        self._q.put(b"")

    def read(self, n: int) -> bytes:
        if not self._buf:
            self._buf = self._q.get()
            if not self._buf:
                return b""
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


class Viewer:
    """One WebSocket viewer; ``decode``: also decode and read each frame's time code."""

    def __init__(self, url: str, tls: ssl.SSLContext, *, decode: bool) -> None:
        self.url = url
        self.tls = tls
        self.bytes = 0
        self.delays: list[float] = []
        self.frames = 0
        self.connected_at = 0.0
        self.first_frame_at: float | None = None
        self._feed = Feed() if decode else None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.connected_at = time.time()
        ws = await session.ws_connect(self.url, ssl=self.tls)
        if self._feed is not None:
            self._thread = threading.Thread(target=self._decode, daemon=True)
            self._thread.start()
        self._task = asyncio.create_task(self._run(ws))

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                self.bytes += len(msg.data)
                if self._feed is not None:
                    self._feed.put(msg.data)
            # The server ended the view (not our close(), which cancels this task).
            print(f"viewer closed by the platform: {ws.close_code}", file=sys.stderr)
        finally:
            await ws.close()

    def _decode(self) -> None:
        assert self._feed is not None
        try:
            for now, delay in frame_delays(self._feed):
                self.frames += 1
                if self.first_frame_at is None:
                    self.first_frame_at = now
                if delay is not None:
                    self.delays.append(delay)
        except (av.FFmpegError, OSError, ValueError) as exc:
            print(f"decoder stopped: {exc}", file=sys.stderr)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._feed is not None:
            self._feed.close()
        if self._thread is not None:
            self._thread.join(5)


async def login(session: aiohttp.ClientSession, console: str, tls: ssl.SSLContext) -> None:
    """The console's session cookie, through its login API (the real password check)."""
    body = {"user": "admin", "password": CONSOLE_PASSWORD}
    async with session.post(f"{console}/api/login", json=body, ssl=tls) as r:
        if r.status != 200:
            raise RuntimeError(f"console login refused: {r.status} {await r.text()}")


async def wait_stream(
    session: aiohttp.ClientSession, url: str, tls: ssl.SSLContext, timeout: float = 60
) -> None:
    """Until the live route gives bytes (the device has logged in and pushes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.ws_connect(url, ssl=tls) as ws:
            msg = await ws.receive(timeout=30)
            if msg.type == aiohttp.WSMsgType.BINARY:
                return
        await asyncio.sleep(0.5)
    raise TimeoutError("no live stream from the device")


async def bytes_viewers(
    session: aiohttp.ClientSession, url: str, tls: ssl.SSLContext, seconds: float,
    pids: tuple[int, int],
) -> tuple[list[Row], float]:  # fmt: skip
    """Rows for 1, 2, 4 WebSocket viewers; and the first's connect -> first decoded frame."""
    viewers: list[Viewer] = []
    rows: list[Row] = []
    try:
        for n in VIEWERS:
            while len(viewers) < n:
                v = Viewer(url, tls, decode=not viewers)
                await v.start(session)
                viewers.append(v)
            await asyncio.sleep(SETTLE)
            viewers[0].delays.clear()
            b0 = sum(v.bytes for v in viewers)
            c0, t0 = Cpu.now(*pids), time.monotonic()
            await asyncio.sleep(seconds)
            c1, t1 = Cpu.now(*pids), time.monotonic()
            nbytes = sum(v.bytes for v in viewers) - b0
            rows.append(Row(n, c1.per_s(c0, t1 - t0), list(viewers[0].delays),
                            nbytes=nbytes, seconds=t1 - t0))  # fmt: skip
        first = viewers[0]
        start = (first.first_frame_at or float("nan")) - first.connected_at
    finally:
        for v in viewers:
            await v.close()
    return rows, start


# --- browser viewers ------------------------------------------------------------------------

# The first frame the page's <video> presents: ms since the page's navigation began.
FIRST_FRAME = """() => new Promise((resolve) => {
  const v = document.getElementById("video");
  v.requestVideoFrameCallback((now, meta) => resolve(meta.presentationTime));
})"""
# For s seconds: [time code, shown] per presented frame (static/timecode.js), the media
# buffered ahead of the playback position (s, every 200 ms), stalls ("waiting" events),
# frames decoded and dropped.
SAMPLE = """async (s) => {
  const v = document.getElementById("video");
  const ahead = [];
  let stalls = 0;
  const stalled = () => stalls++;
  v.addEventListener("waiting", stalled);
  const poll = setInterval(() => {
    const b = v.buffered;
    if (b.length) ahead.push(b.end(b.length - 1) - v.currentTime);
  }, 200);
  const q0 = v.getVideoPlaybackQuality();
  const samples = await hssSampleTimecodes(v, s);
  const q1 = v.getVideoPlaybackQuality();
  clearInterval(poll);
  v.removeEventListener("waiting", stalled);
  return { samples, ahead, stalls, decoded: q1.totalVideoFrames - q0.totalVideoFrames,
           dropped: q1.droppedVideoFrames - q0.droppedVideoFrames };
}"""


# --player-config: merged into the config live.js gives mpegts.createPlayer, by wrapping
# it as the vendor script defines window.mpegts (the page itself is served unchanged).
OVERRIDE = """(override) => {
  let lib;
  Object.defineProperty(window, "mpegts", {
    configurable: true,
    get: () => lib,
    set: (v) => {
      const create = v.createPlayer.bind(v);
      v.createPlayer = (source, config) => create(source, { ...config, ...override });
      lib = v;
    },
  });
}"""


async def viewer_page(browser: Browser, console: str, override: dict[str, Any]) -> Page:
    """A page in a context of its own, logged in through the console's login API.

    One context (window) per viewer: pages sharing one are tabs, and Chromium presents
    frames at full rate only in the tab in front."""
    # The platform's own CA is not the browser's: a bench on loopback skips the check
    # (the WebSocket clients verify the same certificate).
    context = await browser.new_context(
        ignore_https_errors=True, viewport={"width": 1400, "height": 900}
    )
    body = {"user": "admin", "password": CONSOLE_PASSWORD}
    r = await context.request.post(f"{console}/api/login", data=body)
    if not r.ok:
        raise RuntimeError(f"console login refused: {r.status} {await r.text()}")
    if override:
        await context.add_init_script(script=f"({OVERRIDE})({json.dumps(override)})")
    page = await context.new_page()
    page.on("pageerror", lambda e: print(f"page error: {e}", file=sys.stderr))
    return page


async def browser_viewers(
    console: str, seconds: float, pids: tuple[int, int], override: dict[str, Any]
) -> tuple[list[Row], list[float]]:
    """Rows for 1, 2, 4 pages of the console's live view in headless Chromium; and each
    page's load -> first presented frame (s)."""
    from playwright.async_api import async_playwright

    from tests.support.browser import ARGS, CHROMIUM, why_no_browser

    why = why_no_browser()
    if why is not None:
        raise RuntimeError(why)
    live = f"{console}/live?device={DEVICE}&channel=0"
    rows: list[Row] = []
    starts: list[float] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            pages: list[Page] = []
            for n in VIEWERS:
                while len(pages) < n:
                    pages.append(page := await viewer_page(browser, console, override))
                    await page.goto(live)
                    starts.append(await page.evaluate(FIRST_FRAME) / 1000)
                await asyncio.sleep(SETTLE)
                c0, t0 = Cpu.now(*pids), time.monotonic()
                got: list[dict[str, Any]] = await asyncio.gather(
                    *(p.evaluate(SAMPLE, seconds) for p in pages)
                )
                c1, t1 = Cpu.now(*pids), time.monotonic()
                pairs = [pair for g in got for pair in g["samples"]]
                delays = [shown - tc for tc, shown in pairs if tc is not None]
                unread = sum(1 for tc, _ in pairs if tc is None)
                row = Row(n, c1.per_s(c0, t1 - t0), delays, unread=unread, seconds=t1 - t0)
                for i, g in enumerate(got):
                    own = [shown - tc for tc, shown in g["samples"] if tc is not None]
                    row.notes.append(
                        f"page {i + 1}: p50 {pct(own, 0.5) * 1000:.0f} ms, "
                        f"{len(g['samples']) / (t1 - t0):.1f} frames/s shown, "
                        f"{g['dropped']} of {g['decoded']} dropped, {g['stalls']} stalls, "
                        f"buffered ahead p50 {pct(g['ahead'], 0.5):.2f} s "
                        f"(max {max(g['ahead'], default=float('nan')):.2f})"
                    )
                rows.append(row)
        finally:
            await browser.close()
    return rows, starts


# --- the run ------------------------------------------------------------------------------


def write_config(tmp: Path, schedule_url: str, ca_file: str) -> Path:
    return benchconfig.write_config(
        tmp,
        device=DEVICE,
        password=PASSWORD,
        mac="02:00:00:00:0b:02",
        profile="emulated",
        schedule_url=schedule_url,
        ca_file=ca_file,
        camera=(
            f'source = "emulated"\nwidth = {W}\nheight = {H}\nfps = {FPS}\nbitrate = {BITRATE}\n'
        ),
    )


def print_rows(kind: str, rows: list[Row]) -> None:
    base = None
    for r in rows:
        if base is None:
            base = r.cpu.platform
            per = "the push's own receiving included"
        else:
            per = f"{(r.cpu.platform - base) * 100 / (r.viewers - 1):.2f}% per viewer added"
        line = (
            f"  {r.viewers} viewer(s): {kind} p50 {pct(r.delays, 0.5) * 1000:.0f} ms, "
            f"p99 {pct(r.delays, 0.99) * 1000:.0f} ms ({len(r.delays)} frames"
        )
        line += f", {r.unread} unread)" if kind.startswith("browser") else ")"
        line += (
            f"; platform CPU {r.cpu.platform * 100:.1f}% ({per}), its srt-live-transmit "
            f"{r.cpu.receiver * 100:.1f}%"
        )
        if r.nbytes:
            line += f"; relayed {r.nbytes * 8 / r.seconds / 1e6:.2f} Mbit/s in all"
        if kind.startswith("browser"):
            line += f"; the browser {r.cpu.browser * 100:.0f}%"
        print(line)
        for note in r.notes:
            print(f"      {note}")


async def run(
    tmp: Path, seconds: float, *, with_bytes: bool, with_browser: bool, override: dict[str, Any]
) -> None:
    platform = subprocess.Popen(  # noqa: ASYNC220 - a benchmark, started once
        [sys.executable, __file__, "--serve", str(tmp / "platform")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert platform.stdout is not None and platform.stdin is not None
    where = json.loads(platform.stdout.readline())
    console = where["console"]
    tls = ssl.create_default_context(cafile=where["ca_file"])
    cfg = write_config(tmp, where["schedule_url"], where["ca_file"])
    daemon = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "hss_pu", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pids = (platform.pid, daemon.pid)
    url = f"{console.replace('https:', 'wss:', 1)}/api/live/{DEVICE}/0"
    bytes_rows: list[Row] = []
    browser_rows: list[Row] = []
    start, starts = float("nan"), list[float]()
    try:
        # The IP host's cookies: aiohttp keeps none from an IP address unless unsafe.
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            await login(session, console, tls)
            await wait_stream(session, url, tls)  # the device is online and pushes
            await asyncio.sleep(GRACE + 1)  # ... and stops again
            c0, t0 = Cpu.now(*pids), time.monotonic()
            await asyncio.sleep(seconds / 2)
            idle = Cpu.now(*pids).per_s(c0, time.monotonic() - t0)
            if with_bytes:
                bytes_rows, start = await bytes_viewers(session, url, tls, seconds, pids)
                await asyncio.sleep(GRACE + 1)  # the push stops: the browser starts afresh
        if with_browser:
            browser_rows, starts = await browser_viewers(console, seconds, pids, override)
    finally:
        daemon.terminate()
        daemon.wait(10)
        platform.stdin.close()
        try:
            platform.wait(15)
        except subprocess.TimeoutExpired:
            platform.kill()
    print(
        f"console live view, {W}x{H}@{FPS} {BITRATE // 1000} kbit/s, SRT latency "
        f"{where['latency_ms']} ms (the console's PushLive default), console over HTTPS, "
        f"{seconds:.0f} s per step, load average at the end {os.getloadavg()[0]:.2f}; "
        f"platform process CPU with the device online and no viewer (no push) "
        f"{idle.platform * 100:.1f}%"
    )
    if bytes_rows:
        print("WebSocket clients (the first decodes with PyAV):")
        print_rows("capture->decoded frame", bytes_rows)
        print(f"  first decoded frame {start * 1000:.0f} ms after the first viewer connected")
    if browser_rows:
        how = f", player config changed by {json.dumps(override)}" if override else ""
        print(f"headless Chromium pages of /console/live (mpegts.js{how}):")
        print_rows("browser capture->frame shown", browser_rows)
        print(
            "  first frame shown "
            + ", ".join(f"{s * 1000:.0f}" for s in starts)
            + " ms after each page's navigation began"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--no-bytes", action="store_true", help="skip the WebSocket clients")
    ap.add_argument("--no-browser", action="store_true", help="skip the browser pages")
    ap.add_argument(
        "--player-config",
        type=json.loads,
        default={},
        help="JSON merged into the page's mpegts.js config (to compare settings)",
    )
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the platform's process
    args = ap.parse_args()
    if args.serve is not None:
        asyncio.run(serve_platform(args.serve))
        return
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(
            run(Path(d), args.seconds, with_bytes=not args.no_bytes,
                with_browser=not args.no_browser, override=args.player_config)
        )  # fmt: skip


if __name__ == "__main__":
    main()
