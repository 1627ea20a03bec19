"""The fault-injection soak (bench/soak.py), short: every fault kind fires once against a
real ``hss-pu run`` process, and nothing recorded may be lost or saved twice."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.support.faults import Exit

REPO = Path(__file__).resolve().parent.parent


def _load_soak() -> ModuleType:
    # As when run as a script, its own directory is on the path: its sibling modules
    # (percentile, procstat) are imported by name.
    bench = str(REPO / "bench")
    if bench not in sys.path:
        sys.path.append(bench)
    spec = importlib.util.spec_from_file_location("bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_soak"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = _load_soak()

# 2.6 minutes of faults every 8-20 s plus start-up and drain: within the 3-minute budget.
MINUTES, SEED, EVERY, MAX_OUTAGE = 2.6, 2, (8.0, 20.0), 20.0


def test_the_short_plan_fires_every_kind_of_fault() -> None:
    names = [name for _, name in soak.plan(SEED, MINUTES, EVERY, MAX_OUTAGE)]
    assert set(names) == set(soak.FAULTS)


def _fake_soak(closed: list[float], saved: list[float], killed: bool = False) -> Any:
    """A Soak whose daemon logged ``closed`` segment starts and whose platform saved
    ``saved``: only its accounting runs."""
    s = soak.Soak.__new__(soak.Soak)
    s.result = soak.Result(1, 1)
    line = "2026-01-01T00:00:00 DEBUG hss_pu.record: record ch0: segment closed: start {:.3f}, 4 s"
    lines = [line.format(t) for t in closed]
    exits = [Exit(0.0, -9, True, [], len(lines))] if killed else []
    s.sup = SimpleNamespace(lines=lambda: lines, exits=exits, starts=[0.0], crashes=[])
    segs = [SimpleNamespace(start=t, check=None) for t in saved]
    s.platform = SimpleNamespace(
        vr=SimpleNamespace(segments={0: segs}), vr_stats=[], alarms=lambda _d: []
    )
    s.platform_back, s.online_at, s.samples = [], [], []
    return s


def test_the_accounting_finds_a_lost_and_a_duplicated_segment() -> None:
    t = time.time()
    ok = _fake_soak([t, t + 4], [t, t + 4])
    ok.account(0)
    assert ok.result.ok, ok.result.problems
    lost = _fake_soak([t, t + 4, t + 8], [t, t + 8])
    lost.account(0)
    assert lost.result.lost == [pytest.approx(t + 4, abs=0.01)]
    assert not lost.result.ok
    dup = _fake_soak([t, t + 4], [t, t + 4, t + 4])
    dup.account(0)
    assert dup.result.duplicates == 1 and not dup.result.ok
    # Closed by a daemon that was then SIGKILLed, never saved: RAM lost to kill -9, apart.
    killed = _fake_soak([t, t + 4], [t], killed=True)
    killed.account(0)
    assert len(killed.result.lost_to_kill) == 1 and killed.result.lost == []
    assert Counter(killed.result.problems) == Counter()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_soak_three_minutes() -> None:
    result = await soak.soak(MINUTES, SEED, EVERY, MAX_OUTAGE)
    print(result.report())
    # Only a machine that forbids user namespaces skips one (the disk-full fault; the
    # report says why, and tests/test_disk_full.py skips with the same reason).
    assert set(result.faults) == set(soak.FAULTS) - set(result.skipped), result.faults
    assert result.recorded >= 30 and result.saved > 0
    assert result.restarts >= 1 and result.crashes == 0
    assert result.reconnect, "no reconnect measured after the platform restart"
    assert result.ok, result.report()
