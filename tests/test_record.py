"""Vr end to end: the daemon's emulated camera recorded to the reference platform."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.reference_platform.vr import VrSegment
from hss_pu.services import spool as spool_mod
from hss_pu.services.record import RecordService
from hss_pu.wire.vd import Code

from .support.probe import decode_errors, ffprobe
from .support.rig import DEVICE, MAC, ConfigFile, Rig, Spawn, until

W, H, FPS = 320, 180, 15
FRAME = 1 / FPS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.platform(hb_interval=1),
    pytest.mark.rig(
        size=(W, H), fps=FPS, bitrate=300_000, prerecord_seconds=3, backoff_scale=0.05, seed=5
    ),
]


def count(rec: RecordService, key: str) -> int:
    """One of the record service's counters (``hss-pu status``)."""
    value = rec.status()[key]
    assert isinstance(value, int), (key, value)
    return value


def assert_tiles(segs: list[VrSegment]) -> None:
    """Consecutive segments: each starts where the one before ended (one frame)."""
    for a, b in itertools.pairwise(segs):
        assert abs(b.start - a.end) <= FRAME, (a, b)
        assert not b.discontinue, b


SEGMENTS, SEG_SECONDS = 12, 2


async def test_twelve_segments_in_a_row_tile_exactly(rig: Rig, tmp_path: Path) -> None:
    """24 s recorded in 2 s segments (two GOPs each): every segment within a frame of
    2 s, each starting where the one before ended (11 boundaries), each decodable, and
    all of them together one stream with every frame there."""
    length = SEGMENTS * SEG_SECONDS
    t0 = rig.platform.now()
    reply = await rig.start_record(seg_duration=SEG_SECONDS)
    assert reply.err is None, reply
    ka = await wait_keepalive(rig, lambda ch: ch.get("record_session") == "rec-1")
    assert ka
    await asyncio.sleep(length)  # the recording itself
    assert (await rig.call("StopRecord", {"session_id": "rec-1", "channel": 0})).err is None
    await wait_keepalive(rig, lambda ch: ch.get("record_session") is None)
    rec = rig.daemon.record
    assert rec is not None
    segs = await rig.platform.vr.wait_segments(0, SEGMENTS, timeout=20)
    # StopRecord handed the last, partial segment over before it answered: once nothing
    # is queued, every segment is on the platform.
    assert await until(
        lambda: rec.status()["queued_memory"] == rec.status()["queued_disk"] == 0, 10
    )
    segs = list(rig.platform.vr_segments[0])
    total = sum(s.duration for s in segs)
    assert length - 1 <= total <= length + 2.5, [s.duration for s in segs]
    assert segs[0].start <= t0 + 1.5  # at once (a key frame is asked for)
    assert all(abs(s.duration - SEG_SECONDS) <= FRAME for s in segs[:-1]), [
        s.duration for s in segs
    ]
    assert_tiles(segs)
    for s in segs:
        assert s.check is not None and s.check.ok and s.check.key_first, s
        probe = ffprobe(s.path)
        assert (probe["codec_name"], probe["width"], probe["height"]) == ("h264", W, H)
        assert abs(int(probe["nb_read_frames"]) - s.duration * FPS) <= 1, (probe, s)
        assert s.mac == MAC and s.put_content_type == "video/mp2t"
    whole = tmp_path / "all.ts"
    whole.write_bytes(b"".join(s.path.read_bytes() for s in segs))
    assert decode_errors(whole) == ""
    assert abs(int(ffprobe(whole)["nb_read_frames"]) - total * FPS) <= 2


async def wait_keepalive(rig: Rig, pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ka = rig.platform.last_keepalive(DEVICE)
        if ka is not None and pred(ka["channels"][0]):
            return True
        await asyncio.sleep(0.1)
    raise AssertionError(f"keepalive never matched: {rig.platform.last_keepalive(DEVICE)}")


async def test_start_record_rules(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hss_pu.record")
    assert (await rig.start_record("a", seg_duration=2)).err is None
    assert (await rig.start_record("a", seg_duration=2)).err is None  # idempotent
    await asyncio.sleep(3)
    assert (await rig.start_record("b", seg_duration=2)).err is None  # replaces "a"
    await wait_keepalive(rig, lambda ch: ch.get("record_session") == "b")
    bad = await rig.start_record("c", max_bitrate=100_000)
    assert bad.err is not None and bad.err.code == Code.STREAM_TOO_LARGE
    bad = await rig.start_record("c", channel=7)
    assert bad.err is not None and bad.err.code == Code.NO_CHANNEL
    bad = await rig.start_record("c", cbk_url="http://127.0.0.1:1/live/cseg/0")
    assert bad.err is not None and bad.err.code == Code.PARAM and "http" in bad.err.msg
    assert (await rig.call("StopRecord", {"session_id": "zzz", "channel": 0})).err is None
    await wait_keepalive(rig, lambda ch: ch.get("record_session") == "b")
    rec = rig.daemon.record
    assert rec is not None
    # 8 MiB segments fit the emulated profile's 64 MiB memory queue (a segment may take a
    # quarter of it); 1 TiB ones are capped, and the log says so.
    assert rec.sessions[0].sink.seg.max_size == 8 << 20
    assert (await rig.start_record("d", seg_duration=2, seg_max_size=1 << 40)).err is None
    assert rec.sessions[0].sink.seg.max_size == rec.uploader.max_segment_bytes == 16 << 20
    assert "seg_max_size 1099511627776 capped to 16777216" in caplog.text
    # "a" (3 s): one whole segment, and its partial one flushed when "b" replaced it.
    segs = await rig.platform.vr.wait_segments(0, 2, timeout=10)
    assert abs(segs[0].duration - 2) <= FRAME and 0.5 <= segs[1].duration < 2 - FRAME
    assert_tiles(segs[:2])
    assert all(s.check is not None and s.check.ok for s in segs)


async def test_put_fails_three_times_then_saved_once(rig: Rig) -> None:
    rig.platform.vr.fail("put", 3)
    assert (await rig.start_record(seg_duration=1)).err is None
    segs = await rig.platform.vr.wait_segments(0, 3, timeout=20)
    assert rig.platform.vr_requests["put"] >= 3 + 3
    names = [s.name for s in segs]
    assert len(names) == len(set(names))
    assert_tiles(segs)  # the retried one is in its place, once
    assert rig.platform.vr_failed == [] and rig.platform.vr_stats == []


async def test_put_cut_mid_body_is_retried_and_saved_once(rig: Rig) -> None:
    """The first segment's PUT is cut after half its body: the platform drops the
    connection mid-upload, the PU retries, and the segment is saved once, whole."""
    rig.platform.vr.fail("put", 1, mode="cut", cut_at=0.5)
    assert (await rig.start_record(seg_duration=1)).err is None
    segs = await rig.platform.vr.wait_segments(0, 3, timeout=20)
    (cut,) = rig.platform.vr.cuts
    assert cut.size is not None and 0 < cut.at == cut.size // 2 < cut.size
    names = [s.name for s in segs]
    assert len(names) == len(set(names)) and names.count(cut.name) == 1
    seg = segs[names.index(cut.name)]
    assert seg.size == cut.size == seg.path.stat().st_size
    assert seg.check is not None and seg.check.ok and seg.check.key_first
    assert rig.platform.vr_requests["put"] >= 3 + 1
    assert_tiles(segs)
    assert rig.platform.vr_failed == [] and rig.platform.vr_stats == []


async def test_put_always_failing_is_failed_and_reported(rig: Rig) -> None:
    rig.platform.vr.fail("put", 5, status=500)  # PUT_ATTEMPTS for the first segment
    assert (await rig.start_record(seg_duration=1)).err is None
    await until(lambda: rig.platform.vr_stats, 20)
    assert [f.reason for f in rig.platform.vr_failed] == ["fail"]
    stat = rig.platform.vr_stats[0]
    assert stat.dropped_nb == 1 and abs(stat.dropped_time - 1.0) <= FRAME
    segs = await rig.platform.vr.wait_segments(0, 2, timeout=10)
    assert segs[0].discontinue  # the one before it never arrived


async def test_outage_loses_nothing(rig: Rig) -> None:
    """1 s segments, at most 2 in memory: an outage of a dozen segments goes to disk, and
    once Vr is back every segment arrives, in order, while the recording goes on."""
    assert (await rig.start_record(seg_duration=1, seg_max_count=2)).err is None
    await rig.platform.vr.wait_segments(0, 1, timeout=10)
    rig.platform.vr_down = True
    spool = rig.storage / "spool"
    # The outage went to disk.
    assert await until(lambda: len(list(spool.glob("*.json"))) >= 12, 30)
    rig.platform.vr_down = False
    assert await until(lambda: len(rig.platform.vr_segments[0]) >= 17, 20)
    assert (await rig.call("StopRecord", {"session_id": "rec-1", "channel": 0})).err is None
    rec = rig.daemon.record
    assert rec is not None
    await until(lambda: rec.status()["queued_memory"] == rec.status()["queued_disk"] == 0, 40)
    segs = list(rig.platform.vr_segments[0])
    assert len(segs) >= 17
    assert_tiles(segs)  # in order, no gap, nothing lost
    assert all(s.check is not None and s.check.ok for s in segs)
    assert rig.platform.vr_stats == [] and not list(spool.glob("*.ts"))


@pytest.mark.rig(spool_max_mb=1, bitrate=1_500_000)
async def test_full_spool_evicts_oldest_and_reports(rig: Rig) -> None:
    """A 1 MiB spool, 2 s segments of about 320 kB: from the fourth segment of the
    outage on, each new one evicts the oldest."""
    platform = rig.platform
    rec = rig.daemon.record
    assert rec is not None
    assert (await rig.start_record(seg_duration=2, seg_max_count=1)).err is None
    await platform.vr.wait_segments(0, 1, timeout=10)
    platform.vr_down = True
    assert await until(lambda: count(rec, "segments_evicted") >= 3, 40), rec.status()
    st = rec.status()
    evicted = st["segments_evicted"]
    assert isinstance(evicted, int) and evicted >= 3, st
    platform.vr_down = False
    await until(lambda: platform.vr_stats, 30)
    assert sum(s.dropped_nb for s in platform.vr_stats) >= evicted
    segs = await platform.vr.wait_segments(0, 2, timeout=30)
    assert segs[1].discontinue  # the first kept after the evicted ones
    assert segs[1].start - segs[0].end >= 2 * evicted - 1


async def test_prerecord_starts_before_start_ts(rig: Rig) -> None:
    rec = rig.daemon.record
    assert rec is not None
    ring = rec.rings[0]  # camera.prerecord_seconds = 3
    assert await until(lambda: ring.span >= 3, 10), ring.span  # the ring is full
    start_ts = rig.platform.now()
    assert (await rig.start_record(prerecord_seconds=2, start_ts=start_ts)).err is None
    segs = await rig.platform.vr.wait_segments(0, 1, timeout=15)
    lead = start_ts - segs[0].start
    assert 1.5 <= lead <= 3.1, lead  # at the key frame at or before start_ts - 2
    assert segs[0].check is not None and segs[0].check.ok and segs[0].check.key_first


async def test_sigkill_during_a_save_reply_then_restart_saves_each_segment_once(
    platform: ReferencePlatform, config_file: ConfigFile, spawn: Spawn, tmp_path: Path
) -> None:
    """kill -9 while the platform holds the reply of a save it carried out: the restarted
    daemon uploads that segment again under the name create gave (persisted with it),
    so the platform keeps it once; the rest of the spool follows, in order."""
    cfg = config_file(platform, size=(W, H), fps=FPS, bitrate=300_000, backoff_scale=0.05)
    spool = tmp_path / "state" / "spool"
    run = ("run", "--config", str(cfg))
    proc = await spawn(*run)
    await platform.wait_online(DEVICE, timeout=30)
    reply = await platform.call(
        DEVICE, "StartRecord",
        {"session_id": "k", "channel": 0, "max_bitrate": 0, "seg_duration": 1,
         "seg_max_size": 8 << 20, "seg_max_count": 1, "start_ts": platform.now(),
         "cbk_url": platform.vr_cbk_url(0)},
        timeout=20,
    )  # fmt: skip
    assert reply.err is None, reply
    await platform.vr.wait_segments(0, 1, timeout=15)
    platform.vr_down = True
    await until(lambda: len(list(spool.glob("*.json"))) >= 4, 15)
    saved_before = len(platform.vr_segments[0])
    # Back, but the next save is answered only after a minute: kill -9 before that.
    platform.vr.fail("save", 1, mode="late", hold=60)
    platform.vr_down = False
    await platform.vr.wait_segments(0, saved_before + 1, timeout=20)
    await proc.kill()
    held = platform.vr_segments[0][saved_before]
    metas = [json.loads(p.read_text()) for p in sorted(spool.glob("*.json"))]
    assert metas[0]["name"] == held.name, metas[0]  # persisted before the PUT
    spooled = [round(m["start"], 3) for m in metas]
    assert len(spooled) >= 3, spooled
    platform.vr.clear_faults()
    proc = await spawn(*run)
    drained = await until(lambda: not list(spool.glob("*.json")), 30)
    assert drained, ("spool not drained", proc.lines[-20:])
    await asyncio.sleep(0.5)
    segs = platform.vr_segments[0]
    starts = [round(s.start, 3) for s in segs]
    assert len(starts) == len(set(starts)), starts  # no segment saved twice
    assert starts[saved_before : saved_before + len(spooled)] == spooled  # in order
    assert platform.vr.reputs == 1 and platform.vr_requests["save"] >= len(spooled) + 1
    assert all(s.check is not None and s.check.ok for s in segs)
    assert_tiles(segs[: saved_before + len(spooled)])
    # The session itself was resumed: Keepalive shows it, and new segments follow.
    ka = await until(
        lambda: (
            (platform.last_keepalive(DEVICE) or {}).get("channels", [{}])[0].get("record_session")
            == "k"
        ),
        15,
    )
    assert ka, platform.last_keepalive(DEVICE)
    n = len(segs)
    await platform.vr.wait_segments(0, n + 1, timeout=15)
    new = platform.vr_segments[0][n]
    assert new.start > spooled[-1] and new.discontinue
    rc, _ = await proc.stop()
    assert rc == 0, proc.lines[-20:]


async def test_full_disk_is_reported_and_memory_keeps_what_it_can(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(path: Path | str, data: bytes, mode: int = 0o600) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_mod, "atomic_write", disk_full)  # an SD card that filled up
    assert (await rig.start_record(seg_duration=1, seg_max_count=2)).err is None
    await rig.platform.vr.wait_segments(0, 1, timeout=10)
    rig.platform.vr_down = True
    rec = rig.daemon.record
    assert rec is not None
    assert await until(lambda: count(rec, "queued_memory") >= 3, 10), rec.status()
    assert not rig.task.done()
    st = rec.status()
    assert "no space left" in str(st["last_error"]) and "no space left" in str(st["spool_error"])
    assert st["queued_disk"] == 0 and isinstance(st["queued_memory"], int)
    assert st["queued_memory"] >= 3  # within memory_queue_mb: kept, not dropped
    assert st["segments_dropped"] == 0
    mem = st["queued_memory_bytes"]
    assert isinstance(mem, int) and 0 < mem <= int(str(st["memory_queue_bytes"]))
    rig.platform.vr_down = False
    assert await until(lambda: rec.status()["queued_memory"] == 0, 20)
    assert rec.status()["last_error"] == ""
    assert_tiles(list(rig.platform.vr_segments[0]))  # nothing lost
    assert (await rig.call("StopRecord", {"session_id": "rec-1", "channel": 0})).err is None
