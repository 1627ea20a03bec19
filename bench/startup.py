"""Start-up cost of the daemon's embedded default: time to READY, to Vs scheduled, RSS.

Run: .venv/bin/python bench/startup.py [runs]. Prints one line per figure.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(state: str) -> tuple[float, float, float, float]:
    env = {**os.environ, "XDG_STATE_HOME": state}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hss_pu", "run"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    ready = scheduled = float("nan")
    for line in proc.stderr:
        if line.rstrip().endswith(" ready"):
            ready = time.monotonic() - t0
        if "Vs: scheduled" in line:
            scheduled = time.monotonic() - t0
            break
    rss = rss_mb(proc.pid)
    t1 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    return ready, scheduled, rss, time.monotonic() - t1


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as state:
        results = [one_run(state) for _ in range(runs)]
    for i, name, unit in (
        (0, "start to READY", "s"),
        (1, "start to Vs scheduled", "s"),
        (2, "RSS after scheduling", "MB"),
        (3, "SIGTERM to exit", "s"),
    ):
        vals = [r[i] for r in results]
        print(f"{name}: median {statistics.median(vals):.3f} {unit}, max {max(vals):.3f} {unit}")


if __name__ == "__main__":
    main()
