"""bench/fleet.py runs (issue 13, item 4): a small fleet comes back by itself after the
platform restarts on the same ports and CA, and the bench's figures add up. The full
storm (N = 100 and 1,000 on the real schedule) is the bench's, not the suite's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "fleet.py"
N = 20


def test_fleet_bench_small_fleet_all_back_after_a_platform_restart() -> None:
    # backoff_scale 0.2: the schedule's try 1 is uniform in [0, 1] s, not [0, 5] s.
    out = subprocess.run(
        [sys.executable, str(BENCH), str(N), "--json", "--backoff-scale", "0.2",
         "--settle", "0.5", "--timeout", "30"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    r = json.loads(out.strip().splitlines()[-1])
    assert r["n"] == N and r["back"] == N
    # Every PU logged in again after the restart, none before the new platform served.
    assert sum(r["logins_per_s"].values()) >= N
    assert r["attempts"] == r["attempts_failed"] + sum(r["logins_per_s"].values())
    assert 0 < r["back_p50_s"] <= r["back_p95_s"] <= r["back_p100_s"] < 30
    assert r["back_p100_s"] >= r["platform_up_s"] > r["platform_down_s"]
    # A quick restart: the PUs stay on Vd (fewer than 16 failures), so no Vs storm.
    assert r["vs_requests_platform"] == r["vs_requests_pu"] == 0
