"""End-to-end alarm latency: a sensor's edge to AlarmNotify received by the platform.

Run: .venv/bin/python bench/alarms.py [--trials 20]

The reference platform (TLS on loopback) and the daemon (emulated profile, its camera at
320x180, MockFactory pins) run in this process. Each trial drives the PIR's mock pin high,
as the sensor's wire would, and waits for the platform to receive the AlarmNotify
``start`` (type 12); latency = the platform's receive time minus the edge. Then the pin
goes low and the alarm ends (the input's hold-off and a 1 s hold) before the next trial.
Prints p50 / p99 / max (target p99 <= 100 ms) and the daemon's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hss_pu.config import (
    AlarmsSection,
    CameraSection,
    ConfigDoc,
    DeviceSection,
    PlatformSection,
    StorageSection,
    make_config,
)
from hss_pu.daemon import Daemon
from hss_pu.logsetup import setup_logging
from hss_pu.reference_platform.options import PlatformOptions
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.reference_platform.vd import Record

DEVICE, PASSWORD, MAC = "PU-BENCH", "bench-pass-123", "02:00:00:00:0b:0a"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def notify(state: str, since: float) -> Callable[[Record], bool]:
    """An AlarmNotify of ``state`` the platform received from ``since`` on."""

    def match(r: Record) -> bool:
        return r.name == "AlarmNotify" and r.time >= since and r.params["state"] == state

    return match


async def run(trials: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        platform = ReferencePlatform(
            PlatformOptions(
                state_dir=tmp / "platform",
                devices={DEVICE: PASSWORD},
                hb_interval=10,
                alarm_record=False,
            )
        )
        await platform.start()
        doc = ConfigDoc(
            device=DeviceSection(id=DEVICE, password=PASSWORD, mac=MAC, profile="emulated"),
            platform=PlatformSection(
                schedule_url=platform.schedule_url, ca_file=str(platform.ca_file)
            ),
            camera=CameraSection(width=320, height=180, fps=15, bitrate=300_000),
            storage=StorageSection(dir=str(tmp / "pu")),
            alarms=AlarmsSection(max_per_minute=600),
        )
        daemon = Daemon(make_config(doc))
        task = asyncio.create_task(daemon.run())
        lat: list[float] = []
        try:
            await platform.wait_online(DEVICE, timeout=20)
            reply = await platform.call(
                DEVICE, "SetConfig", {"channels": {"0": {"alarms": {"pir": {"hold": 1}}}}}
            )
            assert reply.err is None, reply
            await asyncio.sleep(1.0)
            board = daemon.board
            assert board is not None
            pin = board.find("pir").device.pin
            for k in range(trials):
                t0 = time.time()
                pin.drive_high()
                rec = await platform.wait_record(notify("start", t0), timeout=5)
                lat.append((rec.time - t0) * 1000)
                pin.drive_low()
                await platform.wait_record(notify("end", t0), timeout=10)
                if k == 0:
                    print(f"first trial {lat[0]:.1f} ms; RSS {rss_mb():.0f} MB (daemon + platform)")
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 10)
            await platform.close()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(
        f"PIR edge -> AlarmNotify received by the platform, {trials} trials: "
        f"p50 {statistics.median(lat):.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    setup_logging("warning")
    asyncio.run(run(args.trials))


if __name__ == "__main__":
    main()
