"""The console's live view: glass-to-glass delay and the platform's CPU per viewer.

The emulated camera (1280x720@30, 2 Mbit/s, hss-pu as a process) pushes over SRT (latency
200 ms, the platform's default) to the reference platform, itself a process that serves
the console's live route (``WS /console/api/live/{device}/{channel}``). Viewers connect
to that WebSocket: the first decodes what it receives with PyAV and reads the time code
the emulated source drew into each frame (the delay from capture to a decoded frame, as
bench/live.py measures it over plain SRT); the others only take the bytes, as a browser's
network stack would. For 1, 2 and 4 viewers it prints the delay (p50/p99) and the CPU of
the platform's process (and of its srt-live-transmit receiver), per viewer.

The delay in a real browser (time code read from the page's ``<video>``) is
:func:`browser_delays`' job, for the console's front end to fill in.

Run: .venv/bin/python bench/console.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import av
from procstat import cpu_seconds

from hss_pu.media.sources import read_timecode

W, H, FPS, BITRATE, LATENCY = 1280, 720, 30, 2_000_000, 200
DEVICE, PASSWORD = "PU-BENCH", "bench-password-1"
SETTLE = 3.0  # s after viewers join before measuring (their start GOP is behind live)
VIEWERS = (1, 2, 4)
GRACE = 5.0  # console.live.GRACE: how long a push outlives its last viewer


# --- the platform, in a process of its own --------------------------------------------------


async def serve_platform(state: Path) -> None:
    """The reference platform with the console's live route on loopback; prints where,
    then runs until its standard input closes."""
    from aiohttp import web

    from hss_pu.reference_platform.console import live
    from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform

    platform = ReferencePlatform(PlatformOptions(state_dir=state, devices={DEVICE: PASSWORD}))
    await platform.start()
    app = web.Application()
    live.add_routes(app, platform)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    where = {
        "schedule_url": platform.schedule_url,
        "ca_file": str(platform.ca_file),
        "console": f"http://127.0.0.1:{runner.addresses[0][1]}",
    }
    print(json.dumps(where), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()
    await platform.close()


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_tree(pid: int) -> tuple[float, float]:
    """CPU seconds of the process itself, and of its children (srt-live-transmit)."""
    own = cpu_seconds(pid)
    kids = 0.0
    for child in children(pid):
        with contextlib.suppress(OSError):  # gone
            kids += cpu_seconds(child)
    return own, kids


# --- viewers ------------------------------------------------------------------------------


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

    def __init__(self, url: str, *, decode: bool) -> None:
        self.url = url
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
        ws = await session.ws_connect(self.url)
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
            # A small AVIO buffer: a read that waits to fill would add to the delay.
            with av.open(
                self._feed, format="mpegts", buffer_size=1316, options={"fflags": "nobuffer"}
            ) as c:
                assert isinstance(c, av.container.InputContainer)
                c.streams.video[0].thread_type = "SLICE"
                for frame in c.decode(video=0):
                    now = time.time()
                    self.frames += 1
                    if self.first_frame_at is None:
                        self.first_frame_at = now
                    tc = read_timecode(frame)
                    if tc is not None:
                        self.delays.append(now - tc)
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


async def browser_delays(console_url: str, seconds: float) -> list[float] | None:
    """Glass-to-glass delays (s) measured in a real browser: the console's live page in
    headless Chromium, the time code read from frames of its ``<video>`` (drawn to a
    canvas) against the page's clock. None until the console's front end exists; that
    helper fills this in."""
    return None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- the run ------------------------------------------------------------------------------


def write_config(tmp: Path, schedule_url: str, ca_file: str) -> Path:
    pw = tmp / "password"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    cfg = tmp / "config.toml"
    cfg.write_text(
        f"""[device]
id = "{DEVICE}"
password_file = "{pw}"
mac = "02:00:00:00:0b:02"
profile = "emulated"
[platform]
schedule_url = "{schedule_url}"
ca_file = "{ca_file}"
[camera]
source = "emulated"
width = {W}
height = {H}
fps = {FPS}
bitrate = {BITRATE}
[storage]
dir = "{tmp / "state"}"
[log]
level = "warning"
"""
    )
    cfg.chmod(0o600)
    return cfg


async def wait_stream(session: aiohttp.ClientSession, url: str, timeout: float = 60) -> None:
    """Until the live route gives bytes (the device has logged in and pushes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.ws_connect(url) as ws:
            msg = await ws.receive(timeout=30)
            if msg.type == aiohttp.WSMsgType.BINARY:
                return
        await asyncio.sleep(0.5)
    raise TimeoutError("no live stream from the device")


async def run(tmp: Path, seconds: float) -> None:
    platform = subprocess.Popen(  # noqa: ASYNC220 - a benchmark, started once
        [sys.executable, __file__, "--serve", str(tmp / "platform")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert platform.stdout is not None and platform.stdin is not None
    where = json.loads(platform.stdout.readline())
    cfg = write_config(tmp, where["schedule_url"], where["ca_file"])
    daemon = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "hss_pu", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"{where['console']}/console/api/live/{DEVICE}/0"
    viewers: list[Viewer] = []
    rows: list[tuple[int, float, float, float, float, int]] = []
    try:
        async with aiohttp.ClientSession() as session:
            await wait_stream(session, url)  # the device is online and pushes
            await asyncio.sleep(GRACE + 1)  # ... and stops again
            c0, t0 = cpu_tree(platform.pid), time.monotonic()
            await asyncio.sleep(seconds / 2)
            c1, t1 = cpu_tree(platform.pid), time.monotonic()
            idle = ((c1[0] - c0[0]) / (t1 - t0), (c1[1] - c0[1]) / (t1 - t0))
            for n in VIEWERS:
                while len(viewers) < n:
                    v = Viewer(url, decode=not viewers)
                    await v.start(session)
                    viewers.append(v)
                await asyncio.sleep(SETTLE)
                viewers[0].delays.clear()
                b0 = sum(v.bytes for v in viewers)
                c0, t0 = cpu_tree(platform.pid), time.monotonic()
                await asyncio.sleep(seconds)
                c1, t1 = cpu_tree(platform.pid), time.monotonic()
                dt = t1 - t0
                d = viewers[0].delays
                rows.append((
                    n, (c1[0] - c0[0]) / dt, (c1[1] - c0[1]) / dt, pct(d, 0.5), pct(d, 0.99),
                    sum(v.bytes for v in viewers) - b0,
                ))  # fmt: skip
            first = viewers[0]
            start = (first.first_frame_at or float("nan")) - first.connected_at
            browser = await browser_delays(where["console"], seconds)
    finally:
        for v in viewers:
            await v.close()
        daemon.terminate()
        daemon.wait(10)
        platform.stdin.close()
        try:
            platform.wait(15)
        except subprocess.TimeoutExpired:
            platform.kill()
    print(
        f"console live view, {W}x{H}@{FPS} {BITRATE // 1000} kbit/s, SRT latency {LATENCY} ms, "
        f"{seconds:.0f} s per step; platform process CPU with the device online and no "
        f"viewer (no push) {idle[0] * 100:.1f}%"
    )
    base = None
    for n, own, kids, p50, p99, nbytes in rows:
        if base is None:
            base = own
            per = "the push's own receiving included"
        else:
            per = f"{(own - base) * 100 / (n - 1):.2f}% per viewer added to the first"
        print(
            f"  {n} viewer(s): delay capture->decoded frame p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms; platform CPU {own * 100:.1f}% ({per}), its "
            f"srt-live-transmit {kids * 100:.1f}%; relayed {nbytes * 8 / seconds / 1e6:.2f} "
            "Mbit/s in all"
        )
    print(f"  first decoded frame {start * 1000:.0f} ms after the first viewer connected")
    if browser is None:
        print("  in a browser: not measured (browser_delays: the console's front end)")
    else:
        print(
            f"  in a browser: p50 {pct(browser, 0.5) * 1000:.0f} ms, "
            f"p99 {pct(browser, 0.99) * 1000:.0f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the platform's process
    args = ap.parse_args()
    if args.serve is not None:
        asyncio.run(serve_platform(args.serve))
        return
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(Path(d), args.seconds))


if __name__ == "__main__":
    main()
