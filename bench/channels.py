"""Channel scaling: one rtsp-bridge PU with N = 1, 2, 4, 8, 16 IP cameras.

Each camera is a mount of a real RTSP server (GStreamer's gst-rtsp-server under Debian's
/usr/bin/python3, tests/support/rtsp_server.py) serving a pre-encoded 1920x1080@25
H.264 clip (4 Mbit/s, 1 s GOP, made once with ffmpeg). The daemon (`hss-pu run`, its own
process) passes every channel through, pushing it live over SRT to the reference
platform and recording 4 s segments to its Vr, and this prints per N: the daemon's CPU
(% of one core, over the measuring window), its RSS at the end, the cost per channel,
and what arrived (live Mbit/s per channel, segments saved per channel) to show that the
daemon kept up. The platform and the RTSP server run in other processes or threads;
their cost is not the PU's and is not counted.

Run: .venv/bin/python bench/channels.py [--seconds 30] [--counts 1,2,4,8,16]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchconfig

from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from a checkout
from procstat import cpu_seconds, rss_mb

from tests.support.rtsp import RtspServer, make_clip, rtsp_unavailable

W, H, FPS, SEG = 1920, 1080, 25, 4
DEVICE, PASSWORD = "PU-BENCH", "bench-password-1"
CAM_USER, CAM_PASSWORD = "admin", "bench-camera-pw"


def write_config(tmp: Path, platform: ReferencePlatform, sources: list[str]) -> Path:
    listed = ", ".join(f'"{s}"' for s in sources)
    return benchconfig.write_config(
        tmp,
        device=DEVICE,
        password=PASSWORD,
        mac="02:00:00:00:0b:02",
        profile="rtsp-bridge",
        schedule_url=platform.schedule_url,
        ca_file=str(platform.ca_file),
        camera=f"sources = [{listed}]\nwidth = {W}\nheight = {H}\nfps = {FPS}\n",
    )


async def run_n(tmp: Path, clip: Path, n: int, seconds: float) -> dict[str, float]:
    server = RtspServer(clip, mounts=n, user=CAM_USER, password=CAM_PASSWORD)
    await server.start()
    platform = ReferencePlatform(
        PlatformOptions(state_dir=tmp / "platform", devices={DEVICE: PASSWORD})
    )
    await platform.start()
    cfg = write_config(tmp, platform, [server.url(i) for i in range(n)])
    log = (tmp / "daemon.log").open("wb")
    proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark, started once
        [sys.executable, "-m", "hss_pu", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    receivers = []
    try:
        await platform.wait_online(DEVICE, timeout=30)
        for ch in range(n):
            rx, reply = await platform.push_live(DEVICE, ch, f"bench-{ch}")
            assert reply.err is None, reply
            receivers.append(rx)
            reply = await platform.call(
                DEVICE, "StartRecord",
                {"session_id": f"rec-{ch}", "channel": ch, "max_bitrate": 0,
                 "seg_duration": SEG, "seg_max_size": 16 << 20, "seg_max_count": 5,
                 "start_ts": platform.now(), "cbk_url": platform.vr_cbk_url(ch)},
            )  # fmt: skip
            assert reply.err is None, reply
        await asyncio.sleep(5)  # every camera connected, the first segments cut
        b0 = [rx.bytes_received for rx in receivers]
        s0 = [len(platform.vr.segments[ch]) for ch in range(n)]
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss = rss_mb(proc.pid)
        dt = t1 - t0
        live = [(rx.bytes_received - b) * 8 / dt / 1e6 for rx, b in zip(receivers, b0, strict=True)]
        segs = [len(platform.vr.segments[ch]) - s for ch, s in zip(range(n), s0, strict=True)]
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        for rx in receivers:
            await rx.close()
        await platform.close()
        await server.stop()
    leaked = CAM_PASSWORD.encode() in (tmp / "daemon.log").read_bytes()
    return {
        "cpu": (c1 - c0) / dt * 100,
        "rss": rss,
        "live_min": min(live),
        "live_mean": sum(live) / n,
        "segs_min": min(segs),
        "segs_expected": dt / SEG,
        "leaked": float(leaked),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--counts", default="1,2,4,8,16")
    args = ap.parse_args()
    why = rtsp_unavailable()
    if why:
        raise SystemExit(why)
    counts = [int(x) for x in args.counts.split(",")]
    cache = Path(tempfile.gettempdir()) / "hss-pu-bench"
    cache.mkdir(exist_ok=True)
    clip = make_clip(cache / f"clip-{W}x{H}-{FPS}.mkv", (W, H), int(args.seconds) + 60, FPS)
    print(f"{W}x{H}@{FPS} H.264 passthrough, live + record ({SEG} s segments), {args.seconds:g} s")
    print("N   CPU %   CPU %/ch  RSS MB  live Mbit/s/ch (min/mean)  segments/ch (min/expected)")
    for n in counts:
        with tempfile.TemporaryDirectory() as d:
            r = await run_n(Path(d), clip, n, args.seconds)
        print(
            f"{n:<3} {r['cpu']:6.1f}  {r['cpu'] / n:7.2f}  {r['rss']:6.0f}  "
            f"{r['live_min']:6.2f} / {r['live_mean']:5.2f}            "
            f"{r['segs_min']:.0f} / {r['segs_expected']:.1f}"
            + ("  CAMERA PASSWORD IN THE LOG" if r["leaked"] else ""),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
