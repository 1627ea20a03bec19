"""A real recording disk filled by somebody else's file (the soak's disk-full fault):
``hss-pu run`` records onto its own small filesystem (a profile with ``store = "mount"``,
as a camera's SD card), Vr goes away so segments go to that disk, then another file takes
all its free space. What the daemon already spooled is kept (evicting it would not make
room), new segments wait in bounded memory and the oldest of them are dropped and
reported; once Vr is back and the file gone, every other segment is saved once."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.services.localctl import send_command
from tests.support.faults import DiskFull, Supervisor
from tests.support.rig import DEVICE, daemon_config, start_platform, write_config_file
from tests.support.smalldisk import SmallDisk, card_profile

SEG = 2
_CLOSED = re.compile(r"segment closed: start ([0-9.]+)")
_DROPPED = re.compile(r"segment dropped: start ([0-9.]+) \((\w+)\)")


@pytest.fixture
async def disk(tmp_path: Path) -> AsyncIterator[SmallDisk]:
    d = SmallDisk(tmp_path / "card", 12)
    try:
        await d.start()
    except RuntimeError as exc:
        pytest.skip(f"no small disk here: {exc}")
    try:
        yield d
    finally:
        await d.stop()


def _spooled(disk: SmallDisk) -> set[str]:
    spool = disk.outside(disk.path / "spool")
    return {p.stem for p in spool.glob("*.json")} if spool.is_dir() else set()


async def _status(storage: Path) -> dict[str, object]:
    st = await asyncio.to_thread(send_command, storage, {"cmd": "status"}, 10.0)
    rec = st.get("record", {})
    assert isinstance(rec, dict)
    return rec


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_disk_filled_by_another_file_keeps_the_spool_and_reports_what_it_drops(
    tmp_path: Path, disk: SmallDisk
) -> None:
    platform: ReferencePlatform = await start_platform(tmp_path / "platform")
    storage = tmp_path / "pu"
    doc = daemon_config(
        platform,
        storage,
        profile=str(card_profile(disk.path, tmp_path / "card.toml")),
        bitrate=2_000_000,  # ~0.32 MB segments (what the pattern gives)
        memory_queue_mb=4,  # the least: about 12 segments
        log_level="debug",
    )
    sup = Supervisor(write_config_file(doc, tmp_path / "config.toml"), wrapper=disk.prefix)
    await sup.start()
    try:
        try:
            await platform.wait_online(DEVICE, timeout=30)
        except TimeoutError:
            print("\n".join(sup.lines()[-20:]))
            raise
        reply = await platform.call(DEVICE, "StartRecord", {
            "session_id": "s", "channel": 0, "max_bitrate": 0, "seg_duration": SEG,
            "seg_max_size": 8 << 20, "seg_max_count": 5, "start_ts": platform.now(),
            "cbk_url": platform.vr_cbk_url(0),
        }, timeout=20)  # fmt: skip
        assert reply.err is None, reply.err
        await platform.vr.wait_segments(0, 2, timeout=30)

        # Vr away: segments go to the card (about 4 of them), then the card fills up.
        platform.vr_down = True
        deadline = time.monotonic() + 30
        while len(_spooled(disk)) < 3:
            assert time.monotonic() < deadline, "nothing spooled on the card"
            await asyncio.sleep(0.2)
        before = _spooled(disk)
        fault = DiskFull(disk, platform, random.Random(1), min_seconds=36.0, max_seconds=36.0)
        what = asyncio.create_task(fault.fire())
        await asyncio.sleep(0.5)
        assert disk.free() < 256 * 1024
        await asyncio.sleep(32)  # ~16 more segments: memory holds about 12
        rec = await _status(storage)
        assert int(rec["queued_memory"]) >= 1  # type: ignore[call-overload]
        assert before <= _spooled(disk), "a spooled segment was evicted for nothing"
        text = await what  # Vr back, the file deleted
        assert "Vr away 36 s" in text

        deadline = time.monotonic() + 60
        while True:
            rec = await _status(storage)
            if rec["queued_memory"] == 0 and rec["queued_disk"] == 0:
                break
            assert time.monotonic() < deadline, rec
            await asyncio.sleep(0.5)
        reply = await platform.call(DEVICE, "StopRecord", {"session_id": "s", "channel": 0})
        assert reply.err is None
        await asyncio.sleep(1)  # the last, short segment
        while (rec := await _status(storage))["queued_memory"] != 0:
            assert time.monotonic() < deadline, rec
            await asyncio.sleep(0.5)
    finally:
        await sup.stop()
        await platform.close()

    lines = sup.lines()
    closed = [round(float(m[1]), 3) for line in lines if (m := _CLOSED.search(line))]
    dropped = {round(float(m[1]), 3): m[2] for line in lines if (m := _DROPPED.search(line))}
    saved = Counter(round(s.start, 3) for s in platform.vr.segments[0])
    assert any("no space left on the device" in line for line in lines)
    assert set(dropped.values()) == {"memory"}, dropped  # nothing evicted from the card
    assert max(saved.values()) == 1, "a segment saved twice"
    assert sum(s.dropped_nb for s in platform.vr_stats) == len(dropped) >= 1
    missing = [c for c in closed if c not in saved and c not in dropped]
    assert missing == [], f"{len(missing)} segments neither saved nor reported"
    assert not sup.crashes
