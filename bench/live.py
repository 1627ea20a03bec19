"""Live push cost and latency: hss-pu against ffmpeg doing the same encode + SRT push.

For 1280x720@30 (2 Mbit/s, x264 ultrafast/zerolatency, 1 s GOP, AAC tone) on the emulated
source and on a file source, prints CPU seconds per minute of video for the hss-pu
daemon and for ffmpeg pushing to the same srt-live-transmit listener, their ratio, the
daemon's RSS, and glass-to-glass latency (p50/p99) read from the time code the emulated
source draws into each frame, measured where the receiver decodes it.

Run: .venv/bin/python bench/live.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import benchconfig
from framedelay import frame_delays
from percentile import pct
from procstat import CLK_TCK, cpu_seconds, rss_mb

from hss_pu.reference_platform.live import free_udp_port
from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform
from hss_pu.services.live import MAXBW_FACTOR
from hss_pu.srt import maxbw_for_bitrate

THREADS = False  # --threads: print the daemon's CPU per thread
W, H, FPS, BITRATE, LATENCY = 1280, 720, 30, 2_000_000, 200
DEVICE, PASSWORD = "PU-BENCH", "bench-password-1"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def print_threads(who: str, th0: dict[str, float], th1: dict[str, float], dt: float) -> None:
    if not THREADS:
        return
    per_min = {n: (v - th0.get(n, 0.0)) * 60 / dt for n, v in th1.items()}
    print(f"  {who} per thread (CPU s/min):", ", ".join(
        f"{n} {v:.2f}" for n, v in sorted(per_min.items(), key=lambda kv: -kv[1]) if v > 0
    ))  # fmt: skip


class Receiver:
    """srt-live-transmit listener; its output decoded live to read the time codes."""

    def __init__(self) -> None:
        self.port = free_udp_port()
        self.proc = subprocess.Popen(
            [shutil.which("srt-live-transmit") or "srt-live-transmit", "-q",
             f"srt://127.0.0.1:{self.port}?mode=listener&latency={LATENCY}", "file://con"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        )  # fmt: skip
        self.latencies: list[float] = []
        self.frames = 0
        self.thread = threading.Thread(target=self._decode, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"srt://127.0.0.1:{self.port}?latency={LATENCY}"

    def _decode(self) -> None:
        assert self.proc.stdout is not None
        try:
            for _, delay in frame_delays(self.proc.stdout):
                self.frames += 1
                if delay is not None:
                    self.latencies.append(delay)
        except (av.FFmpegError, OSError, ValueError):
            pass

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.thread.join(5)


def write_config(tmp: Path, platform: ReferencePlatform, source: str) -> Path:
    return benchconfig.write_config(
        tmp,
        device=DEVICE,
        password=PASSWORD,
        mac="02:00:00:00:0b:01",
        profile="emulated",
        schedule_url=platform.schedule_url,
        ca_file=str(platform.ca_file),
        camera=(
            f'source = "{source}"\nwidth = {W}\nheight = {H}\nfps = {FPS}\nbitrate = {BITRATE}\n'
        ),
    )


async def run_hss_pu(tmp: Path, source: str, seconds: float) -> dict[str, float]:
    platform = ReferencePlatform(
        PlatformOptions(state_dir=tmp / "platform", devices={DEVICE: PASSWORD})
    )
    await platform.start()
    cfg = write_config(tmp, platform, source)
    proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark, started once
        [sys.executable, "-m", "hss_pu", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rx = Receiver()
    try:
        await platform.wait_online(DEVICE, timeout=30)
        reply = await platform.call(
            DEVICE, "PushLive",
            {"channel": 0, "url": rx.url, "stream_id": "bench", "max_bitrate": 0}, timeout=20,
        )  # fmt: skip
        assert reply.err is None, reply
        await asyncio.sleep(3)  # settle
        rx.latencies.clear()
        c0, t0, th0 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
        await asyncio.sleep(seconds)
        c1, t1, th1 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
        rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        rx.close()
        await platform.close()
    print_threads("hss-pu", th0, th1, t1 - t0)
    return {
        "cpu_per_min": (c1 - c0) * 60 / (t1 - t0),
        "rss_mb": rss,
        "p50": pct(rx.latencies, 0.5),
        "p99": pct(rx.latencies, 0.99),
        "frames": rx.frames,
    }


def run_ffmpeg(
    inputs: list[str], encode: list[str], seconds: float, srt_opts: str = ""
) -> dict[str, float]:
    rx = Receiver()
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", *inputs, *encode,
           "-f", "mpegts", rx.url + "&pkt_size=1316" + srt_opts]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        time.sleep(3)
        c0, t0, th0 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
        time.sleep(seconds)
        c1, t1, th1 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
        print_threads("ffmpeg", th0, th1, t1 - t0)
    finally:
        proc.terminate()
        proc.wait(10)
        rx.close()
    return {"cpu_per_min": (c1 - c0) * 60 / (t1 - t0), "frames": rx.frames}


# ffmpeg with libsrt's defaults, and with the absolute MAXBW hss-pu sets for loss recovery
# (the same SRT push; libsrt's send thread paces packets at that rate in both).
SRT_VARIANTS = ["", f"&maxbw={maxbw_for_bitrate(BITRATE, MAXBW_FACTOR)}"]
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(FPS),
        "-keyint_min", str(FPS), "-sc_threshold", "0", "-b:v", str(BITRATE),
        "-maxrate", str(BITRATE), "-bufsize", str(BITRATE * 5 // FPS),
        "-x264-params", "repeat-headers=1", "-pix_fmt", "yuv420p"]  # fmt: skip
AAC = ["-c:a", "aac", "-b:a", "64k"]


def make_clip(path: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={W}x{H}:rate={FPS}", "-t", "20", *X264, str(path)],
        check=True,
    )  # fmt: skip


def report(name: str, ours: dict[str, float], theirs: dict[str, float]) -> None:
    ratio = ours["cpu_per_min"] / theirs["cpu_per_min"] if theirs["cpu_per_min"] else float("nan")
    print(
        f"{name}: hss-pu {ours['cpu_per_min']:.2f} CPU s/min, "
        f"ffmpeg {theirs['cpu_per_min']:.2f} CPU s/min, ratio {ratio:.2f}; "
        f"hss-pu RSS {ours['rss_mb']:.0f} MB; latency p50 {ours['p50'] * 1000:.0f} ms, "
        f"p99 {ours['p99'] * 1000:.0f} ms (SRT latency {LATENCY} ms); "
        f"frames received {ours['frames']:.0f} / {theirs['frames']:.0f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--threads", action="store_true", help="hss-pu CPU per thread")
    ap.add_argument("--only", choices=["emulated", "file"], help="run one of the two")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only in (None, "emulated"):
            ours = asyncio.run(run_hss_pu(tmp / "emu", "emulated", args.seconds))
            inputs = ["-re", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate={FPS}",
                      "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"]  # fmt: skip
            for srt_opts in SRT_VARIANTS:
                theirs = run_ffmpeg(inputs, [*X264, *AAC], args.seconds, srt_opts)
                report(f"emulated 1280x720@30, ffmpeg {srt_opts or 'SRT defaults'}", ours, theirs)
        if args.only in (None, "file"):
            clip = tmp / "clip.mp4"
            make_clip(clip)
            ours = asyncio.run(run_hss_pu(tmp / "file", f"file:{clip}", args.seconds))
            inputs = ["-re", "-stream_loop", "-1", "-i", str(clip)]
            for srt_opts in SRT_VARIANTS:
                theirs = run_ffmpeg(inputs, ["-c", "copy"], args.seconds, srt_opts)
                report(
                    f"file 1280x720@30 (H.264 passed through by both), ffmpeg "
                    f"{srt_opts or 'SRT defaults'}",
                    ours,
                    theirs,
                )


if __name__ == "__main__":
    main()
