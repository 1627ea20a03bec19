"""Hibernation: wake latency, and what a sleeping daemon costs.

Run: .venv/bin/python bench/power.py [--wakes 20] [--cpu-seconds 30]

The reference platform (TLS on loopback, with its hibernation server) runs in this
process; the daemon runs as ``hss-pu run`` in its own process, with the emulated camera
as a battery device (a doorbell: PIR, bell, battery, no PTZ) at 640x360@25, 1 Mbit/s,
``power.idle_sleep_seconds = 1`` and the heartbeat every 60 s as wire-notes say.

Each wake: wait until the device sleeps (Vd closed, heartbeat received), send TOWAKEUP
and time (a) until its Vd login is accepted ("online") and (b) until the first bytes of
its live stream reach an srt-live-transmit listener, PushLive being sent the moment it
is online (the stream starts at a key frame: the first bytes are the first frame). Then
StopLive; the device goes back to sleep after the idle second. Prints p50 / p99 / max of
both (target p99 <= 2 s to online).

Then, asleep, the daemon's CPU from /proc/<pid>/stat (utime + stime) over
``--cpu-seconds`` as a percentage of one core (target < 0.5 %), and its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchconfig
from percentile import pct
from procstat import cpu_seconds, rss_mb

from hss_pu.logsetup import setup_logging
from hss_pu.reference_platform.options import PlatformOptions
from hss_pu.reference_platform.server import ReferencePlatform

REPO = Path(__file__).resolve().parent.parent
DEVICE, PASSWORD, MAC = "PU-BENCH", "bench-pass-123", "02:00:00:00:0b:0b"


def battery_profile(directory: Path) -> Path:
    text = (REPO / "firmware_profiles" / "emulated.toml").read_text()
    text = re.sub(r"(?ms)^\[ptz\]\n.*?(?=^\[)", "", text)
    text = text.replace("[battery]\npresent = false", "[battery]\npresent = true")
    path = directory / "bench-doorbell.toml"
    path.write_text(text)
    return path


def write_config(tmp: Path, platform: ReferencePlatform) -> Path:
    return benchconfig.write_config(
        tmp,
        device=DEVICE,
        password=PASSWORD,
        mac=MAC,
        profile=str(battery_profile(tmp)),
        schedule_url=platform.schedule_url,
        ca_file=str(platform.ca_file),
        camera="width = 640\nheight = 360\nfps = 25\nbitrate = 1000000\n",
        sections="[power]\nidle_sleep_seconds = 1\n",
    )


def show(what: str, values: list[float]) -> None:
    print(
        f"{what}, {len(values)} wakes: p50 {statistics.median(values) * 1000:.0f} ms, "
        f"p99 {pct(values, 0.99) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
    )


async def asleep(platform: ReferencePlatform, timeout: float = 30.0) -> None:
    assert platform.hibernation is not None
    await platform.wait_offline(DEVICE, timeout=timeout)
    await platform.hibernation.wait_sleeping(DEVICE, timeout=timeout)


async def run(wakes: int, cpu_window: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        platform = ReferencePlatform(
            PlatformOptions(
                state_dir=tmp / "platform",
                devices={DEVICE: PASSWORD},
                hb_interval=10,
                alarm_record=False,
                hibernation_port=0,
            )
        )
        await platform.start()
        config = write_config(tmp, platform)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hss_pu", "run", "--config", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": ""},
        )  # fmt: skip
        online: list[float] = []
        first_frame: list[float] = []
        try:
            await platform.wait_online(DEVICE, timeout=30)
            for k in range(wakes):
                await asleep(platform)
                await asyncio.sleep(0.5)  # asleep for a moment, as a real one would be
                rx = await platform.open_live(f"wake-{k}")
                t0 = time.monotonic()
                await platform.wake(DEVICE)
                online.append(time.monotonic() - t0)
                reply = await platform.call(
                    DEVICE, "PushLive",
                    {"channel": 0, "url": rx.url, "stream_id": f"wake-{k}", "max_bitrate": 0},
                    timeout=20,
                )  # fmt: skip
                assert reply.err is None, reply.err
                await asyncio.wait_for(rx.growing.wait(), 20)
                first_frame.append(time.monotonic() - t0)
                await platform.call(DEVICE, "StopLive", {"channel": 0, "stream_id": f"wake-{k}"})
                await rx.close()
                platform.receivers.pop(f"wake-{k}", None)
            await asleep(platform)
            await asyncio.sleep(2.0)  # settled: the cameras' threads are gone
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(cpu_window)
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
            assert platform.hibernation is not None and platform.hibernation.is_sleeping(DEVICE)
            rss = rss_mb(proc.pid)
        finally:
            if proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 15)
            await platform.close()
    show("TOWAKEUP sent -> Vd login accepted (online)", online)
    show("TOWAKEUP sent -> first live bytes at the SRT receiver", first_frame)
    print(
        f"asleep: CPU {(c1 - c0) / (t1 - t0) * 100:.2f} % of one core over {t1 - t0:.0f} s, "
        f"RSS {rss:.0f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--wakes", type=int, default=20)
    ap.add_argument("--cpu-seconds", type=float, default=30.0)
    args = ap.parse_args()
    setup_logging("warning")
    asyncio.run(run(args.wakes, args.cpu_seconds))


if __name__ == "__main__":
    main()
