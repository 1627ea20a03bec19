from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from hss_pu.clock import OffsetClock
from hss_pu.fsutil import atomic_write, ensure_private_dir


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    atomic_write(p, b"one")
    atomic_write(p, b"two", 0o640)
    assert p.read_bytes() == b"two"
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert [x.name for x in tmp_path.iterdir()] == ["state.json"]  # no temp files left


def test_atomic_write_failure_leaves_old_file(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    atomic_write(p, b"old")

    with pytest.raises(TypeError):
        atomic_write(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"old"
    assert len(list(tmp_path.iterdir())) == 1


def test_ensure_private_dir(tmp_path: Path) -> None:
    d = ensure_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert list(d.iterdir()) == []


def test_ensure_private_dir_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        ensure_private_dir(blocker / "sub")  # works even as root, unlike chmod tricks


def test_offset_clock_threshold() -> None:
    c = OffsetClock()
    now = time.time()
    assert c.sync(now + 5, received_at=now) is False
    assert c.offset == 0
    assert c.sync(now + 3600, received_at=now) is True
    assert c.now() == pytest.approx(time.time() + 3600, abs=1)
    assert c.sync(now + 3601, received_at=now) is False  # within 10 s of our adjusted time


@pytest.mark.parametrize("bad", [1e300, float("nan"), float("inf"), -5.0, 0.0, 4_200_000_000.0])
def test_offset_clock_ignores_implausible_platform_time(
    bad: float, caplog: pytest.LogCaptureFixture
) -> None:
    """Vr's getcurrenttime reaches sync() too: 1e300 must not become our clock."""
    c = OffsetClock()
    assert c.sync(bad) is False
    assert c.offset == 0
    assert "ignoring a platform time outside" in caplog.text
    c.now()  # still usable
