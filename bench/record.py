"""Recording cost: upload overhead, close→save latency, backlog drain, RSS with live.

At 1280x720@30 (2 Mbit/s, emulated camera) the daemon records 4 s segments to the
reference platform while it also pushes live over SRT, and this prints:
- upload overhead per segment: HTTP requests and bytes (headers + bodies) beyond the
  segment itself, as counted by the platform;
- time from a segment's close to its ``save`` succeeding (p50/p99, the daemon's figures);
- the backlog drain rate after an outage of ``--outage`` seconds (default 300: the
  platform refuses every Vr connection, the daemon spools to disk, then it comes back);
- the daemon's RSS while recording + live;
- the event-loop lag (p50/p99/max) while ``--spill-mb`` (default 100) of segments held in
  memory go to the disk spool at the start of an outage: an Uploader in this process, the
  reference platform on a thread of its own (so that its work is not counted as lag).

Run: .venv/bin/python bench/record.py [--seconds 60] [--outage 300] [--spill-mb 100]
     .venv/bin/python bench/record.py --spill-only
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchconfig

from hss_pu.clients.http import Trust, platform_http
from hss_pu.media.segmenter import Segment
from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform
from hss_pu.services.spool import Spool
from hss_pu.services.uploader import Uploader

W, H, FPS, BITRATE, SEG = 1280, 720, 30, 2_000_000, 4
DEVICE, PASSWORD = "PU-BENCH", "bench-password-1"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(tmp: Path, platform: ReferencePlatform) -> Path:
    return benchconfig.write_config(
        tmp,
        device=DEVICE,
        password=PASSWORD,
        mac="02:00:00:00:0b:02",
        profile="emulated",
        schedule_url=platform.schedule_url,
        ca_file=str(platform.ca_file),
        camera=f"width = {W}\nheight = {H}\nfps = {FPS}\nbitrate = {BITRATE}\n",
        storage="spool_max_mb = 512\n",
    )


def status(cfg: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "hss_pu", "status", "--config", str(cfg)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    rec: dict[str, Any] = json.loads(out.stdout)["record"]
    return rec


async def main_async(seconds: float, outage: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        platform = ReferencePlatform(
            PlatformOptions(state_dir=tmp / "platform", devices={DEVICE: PASSWORD})
        )
        await platform.start()
        cfg = write_config(tmp, platform)
        proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark, started once
            [sys.executable, "-m", "hss_pu", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await platform.wait_online(DEVICE, timeout=30)
            rx, reply = await platform.push_live(DEVICE, 0, "bench-live")
            assert reply.err is None, reply
            reply = await platform.call(
                DEVICE, "StartRecord",
                {"session_id": "bench", "channel": 0, "max_bitrate": 0, "seg_duration": SEG,
                 "seg_max_size": 16 << 20, "seg_max_count": 5, "start_ts": platform.now(),
                 "cbk_url": platform.vr_cbk_url(0)},
                timeout=20,
            )  # fmt: skip
            assert reply.err is None, reply
            await platform.vr.wait_segments(0, 1, timeout=30)
            n0 = len(platform.vr_segments[0])
            req0 = sum(platform.vr_requests.values())
            hdr0, body0 = platform.vr_header_bytes, platform.vr_body_bytes
            seg_bytes0 = sum(s.size for s in platform.vr_segments[0])
            await asyncio.sleep(seconds)
            rss = rss_mb(proc.pid)
            segs = platform.vr_segments[0][n0:]
            n = len(segs)
            reqs = sum(platform.vr_requests.values()) - req0
            hdr = platform.vr_header_bytes - hdr0
            body = platform.vr_body_bytes - body0
            seg_bytes = sum(s.size for s in platform.vr_segments[0]) - seg_bytes0
            st = await asyncio.to_thread(status, cfg)
            print(
                f"steady state, {n} segments of {SEG} s at {W}x{H}@{FPS} {BITRATE // 1000} kbit/s "
                f"(+ live SRT push): {reqs / n:.2f} requests/segment, overhead "
                f"{(hdr + body - seg_bytes) / n:.0f} bytes/segment beyond the segment "
                f"({(hdr + body - seg_bytes) / seg_bytes * 100:.2f} % of "
                f"{seg_bytes / n / 1e6:.2f} MB); close→save p50 "
                f"{st['close_to_save_ms_p50']:.0f} ms, p99 {st['close_to_save_ms_p99']:.0f} ms; "
                f"RSS {rss:.0f} MB"
            )
            platform.vr_down = True
            t_down = time.monotonic()
            peak_rss = rss
            while time.monotonic() - t_down < outage:
                await asyncio.sleep(5)
                peak_rss = max(peak_rss, rss_mb(proc.pid))
            st = await asyncio.to_thread(status, cfg)
            backlog, spool_mb = st["queued_disk"] + st["queued_memory"], st["spool_bytes"] / 1e6
            before = len(platform.vr_segments[0])
            platform.vr_down = False
            t_up = time.monotonic()
            t_first: float | None = None
            while True:
                await asyncio.sleep(0.5)
                if t_first is None and len(platform.vr_segments[0]) > before:
                    t_first = time.monotonic()
                st = await asyncio.to_thread(status, cfg)
                if st["queued_disk"] + st["queued_memory"] == 0:
                    break
                if time.monotonic() - t_up > 3 * outage + 60:
                    print("backlog did not drain")
                    break
            drain = time.monotonic() - (t_first or t_up)
            first = (t_first or t_up) - t_up
            drained = len(platform.vr_segments[0]) - before
            mb = sum(s.size for s in platform.vr_segments[0][before:]) / 1e6
            print(
                f"outage {outage:.0f} s: backlog {backlog} segments ({spool_mb:.1f} MB spooled); "
                f"first save {first:.1f} s after the platform came back (outage back-off), then "
                f"drained {drained} segments ({mb:.1f} MB) in {drain:.1f} s = "
                f"{drained / drain:.2f} segments/s, {mb / drain:.2f} MB/s "
                f"({drained * SEG / drain:.1f}x real time, while still recording); "
                f"dropped {st['segments_dropped']}; peak RSS during the outage {peak_rss:.0f} MB"
            )
            await rx.close()
        finally:
            proc.terminate()
            proc.wait(15)
            await platform.close()


class PlatformThread:
    """The reference platform on its own thread and event loop."""

    def __init__(self, state_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.platform = ReferencePlatform(
            PlatformOptions(state_dir=state_dir, vr_decode_check=False, vr_keep_segments=1)
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.platform.start(), self.loop).result(30)

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.loop.call_soon_threadsafe(lambda: fn(*args, **kw))

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.platform.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * q))]


async def spill_lag(spill_mb: int) -> None:
    """Fill memory with ``spill_mb`` 1 MiB segments while the platform holds the first
    create; its 503 starts an outage, and everything in memory goes to disk."""
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pt = PlatformThread(tmp / "platform")
        hold = 3.0 + spill_mb / 50  # time to fill memory
        pt.call(pt.platform.vr.fail, "create", 1, mode="timeout", hold=hold)
        http = platform_http(
            "02:00:00:00:0b:03",
            str(pt.platform.ca_file),
            trust=Trust.UPLOADS,
            timeout=30.0,
            connect_timeout=10.0,
        )
        up = Uploader(
            http, Spool(tmp / "spool", 4 * spill_mb * mib), memory_bytes=4 * spill_mb * mib
        )
        await up.resume()
        cbk = pt.platform.vr_cbk_url(0)
        for i in range(spill_mb + 1):  # +1: the one held at create stays in memory
            data = os.urandom(mib)
            up.submit(Segment(0, 1.7e9 + i, 1.0, data, i == 0, 0, 0), "s", cbk, True, 100_000)
            await asyncio.sleep(0)
        pt.call(setattr, pt.platform.vr, "down", True)  # the retries fail too
        gc_pauses: list[tuple[float, float]] = []  # (end, ms) of gen-2 collections
        gc_start = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_start[0] = time.perf_counter()
            elif info["generation"] == 2:
                now = time.perf_counter()
                gc_pauses.append((now, (now - gc_start[0]) * 1000))

        gc.callbacks.append(on_gc)
        lags: list[float] = []
        t_start = t_end = 0.0
        step = 0.005
        while True:
            t = time.perf_counter()
            await asyncio.sleep(step)
            lag = time.perf_counter() - t - step
            if not up.stats.reachable:
                if not t_start:
                    t_start = t
                lags.append(lag)
                if up.queued_bytes()[1] >= spill_mb * mib:
                    t_end = time.perf_counter()
                    break
            elif time.perf_counter() > t + hold + 30:
                raise RuntimeError("the outage never started")
        gc.callbacks.remove(on_gc)
        ms = [x * 1000 for x in lags]
        pauses = [p for t, p in gc_pauses if t_start <= t <= t_end]
        print(
            f"spill of {spill_mb} MiB at the start of an outage: {t_end - t_start:.2f} s to "
            f"disk; event-loop lag over {len(ms)} samples (5 ms sleeps): p50 "
            f"{statistics.median(ms):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
            f"max {max(ms):.1f} ms; gen-2 GC pauses meanwhile: {len(pauses)}"
            + (f" (longest {max(pauses):.1f} ms)" if pauses else "")
        )
        await up.close()
        pt.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--outage", type=float, default=300.0)
    ap.add_argument("--spill-mb", type=int, default=100)
    ap.add_argument("--spill-only", action="store_true")
    args = ap.parse_args()
    if args.spill_mb > 0:
        asyncio.run(spill_lag(args.spill_mb))
    if not args.spill_only:
        asyncio.run(main_async(args.seconds, args.outage))


if __name__ == "__main__":
    main()
