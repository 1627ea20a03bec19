"""Segments cut from real encoded packets; the pre-record ring; the on-disk spool."""

from __future__ import annotations

import dataclasses
import errno
import itertools
import threading
from pathlib import Path

import av
import pytest

from hss_pu.media.encoder import EncodeSettings, VideoEncoder
from hss_pu.media.packets import EncodedPacket, StreamInfo
from hss_pu.media.segmenter import PrerecordRing, Segment, Segmenter
from hss_pu.media.sources import EmulatedSource, RawVideo, iter_items
from hss_pu.services import spool as spool_mod
from hss_pu.services.spool import SegmentMeta, Spool, SpoolError

FPS, GOP = 15, 15
T0 = 1.7e9


@pytest.fixture(scope="module")
def stream() -> tuple[list[EncodedPacket], StreamInfo]:
    """13 s of 320x180@15 emulated video, 1 s GOPs, on a clock at exactly fps."""
    s = EncodeSettings(320, 180, FPS, 300_000, GOP, "libx264")
    ticks = iter(range(10**9))
    src = EmulatedSource(s, lambda: T0 + next(ticks) / FPS, threading.Event(), realtime=False)
    src.open()
    enc = VideoEncoder(s)
    pkts: list[EncodedPacket] = []
    for item in iter_items(src, 13 * FPS):
        assert isinstance(item, RawVideo)
        pkts += enc.encode(item.frame, item.pts + 90_000, item.capture_time)
    pkts += enc.flush()
    assert enc.info is not None
    return pkts, enc.info


def run(seg: Segmenter, pkts: list[EncodedPacket], info: StreamInfo) -> list[Segment]:
    out: list[Segment] = []
    for p in pkts:
        out += seg.push(p, info, None)
    last = seg.flush()
    if last is not None:
        out.append(last)
    return out


def decode(seg: Segment, tmp: Path) -> list[av.VideoFrame]:
    path = tmp / f"seg-{seg.first_pts}.ts"
    path.write_bytes(seg.data)
    with av.open(str(path)) as c:
        first = next(c.demux(video=0))
        assert first.is_keyframe
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def test_a_new_stream_without_a_gap_starts_a_discontinue_segment(
    stream: tuple[list[EncodedPacket], StreamInfo], tmp_path: Path
) -> None:
    """The encoder restarted at another quality (SetConfig) faster than a gap shows: the
    segment in progress ends there and the next is marked discontinue all the same."""
    pkts, info = stream
    first = pkts[: 2 * GOP]
    s = EncodeSettings(640, 360, FPS, 500_000, GOP, "libx264")
    src = EmulatedSource(s, lambda: T0 + 2, threading.Event(), realtime=False)
    src.open()
    enc = VideoEncoder(s)
    second: list[EncodedPacket] = []
    end = first[-1].pts + first[-1].duration
    for item in iter_items(src, 2 * GOP):
        assert isinstance(item, RawVideo)
        second += enc.encode(item.frame, item.pts + end, T0 + 2 + item.pts / 90_000)
    second += enc.flush()
    assert enc.info is not None and enc.info != info
    seg = Segmenter(0, 4, 10 << 20)
    out = [x for p in first for x in seg.push(p, info, None)]
    out += [x for p in second for x in seg.push(p, enc.info, None)]
    last = seg.flush()
    assert last is not None
    out.append(last)
    assert [round(x.duration, 3) for x in out] == [2.0, 2.0]
    assert out[1].discontinue
    assert [len(decode(x, tmp_path)) for x in out] == [2 * GOP, 2 * GOP]
    assert decode(out[1], tmp_path)[0].width == 640


def test_a_restart_with_the_same_settings_is_a_new_stream(
    stream: tuple[list[EncodedPacket], StreamInfo],
) -> None:
    """RebootChannel restarts the encoder with equal parameters, possibly within a frame
    or two: the run number in StreamInfo still marks the next segment discontinue."""
    pkts, info = stream
    seg = Segmenter(0, 4, 10 << 20)
    restarted = dataclasses.replace(info, run=info.run + 1)
    out = [x for p in pkts[: 2 * GOP] for x in seg.push(p, info, None)]
    out += [x for p in pkts[2 * GOP : 4 * GOP] for x in seg.push(p, restarted, None)]
    last = seg.flush()
    assert last is not None
    out.append(last)
    assert [round(x.duration, 3) for x in out] == [2.0, 2.0]
    assert out[1].discontinue


def test_segments_tile_time_and_decode_alone(
    stream: tuple[list[EncodedPacket], StreamInfo], tmp_path: Path
) -> None:
    pkts, info = stream
    segs = run(Segmenter(0, 4, 10 << 20), pkts, info)
    assert [round(s.duration, 3) for s in segs] == [4.0, 4.0, 4.0, 1.0]
    assert segs[0].start == pytest.approx(T0, abs=1e-6)  # capture time of the first frame
    for a, b in itertools.pairwise(segs):
        assert a.start + a.duration == pytest.approx(b.start, abs=1e-9)
        assert not b.discontinue
    assert segs[0].discontinue  # nothing before it in this run
    frames = [len(decode(s, tmp_path)) for s in segs]
    assert frames == [60, 60, 60, 15]
    # The concatenation plays as one stream.
    whole = tmp_path / "all.ts"
    whole.write_bytes(b"".join(s.data for s in segs))
    with av.open(str(whole)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 13 * FPS


def test_gap_ends_segment_and_marks_the_next_discontinue(
    stream: tuple[list[EncodedPacket], StreamInfo],
) -> None:
    pkts, info = stream
    video = [p for p in pkts if p.kind == "video"]
    # Frames 0..89 (6 s), then nothing until frame 120 (a key frame): a 2 s hole.
    segs = run(Segmenter(0, 4, 10 << 20), video[:90] + video[120:], info)
    assert [round(s.duration, 3) for s in segs] == [4.0, 2.0, 4.0, 1.0]
    assert [s.discontinue for s in segs] == [True, False, True, False]
    assert segs[2].start == pytest.approx(segs[1].start + 4.0)


def test_max_size_cuts_early_at_key_frames(
    stream: tuple[list[EncodedPacket], StreamInfo],
) -> None:
    pkts, info = stream
    gop_bytes = max(
        sum(p.size for p in pkts[i * GOP : (i + 1) * GOP]) for i in range(len(pkts) // GOP)
    )
    limit = int(gop_bytes * 2.5)
    seg = Segmenter(0, 10, limit)
    segs = run(seg, pkts, info)
    assert len(segs) >= 5
    assert all(s.size <= limit for s in segs), [s.size for s in segs]
    assert seg.oversize == 0
    for a, b in itertools.pairwise(segs):
        assert a.start + a.duration == pytest.approx(b.start)


def test_ring_keeps_seconds_from_a_key_frame(
    stream: tuple[list[EncodedPacket], StreamInfo],
) -> None:
    pkts, info = stream
    ring = PrerecordRing(3, 10 << 20)
    for p in pkts:
        ring.on_packet(p, info, None)
    held = ring.since(0)
    assert held[0].keyframe and 3.0 <= ring.span <= 4.0 + 1 / FPS
    last = pkts[-1]
    # 5 s before the newest frame is older than the ring: the oldest key frame it has.
    assert ring.since_epoch(last.capture_time - 5)[0] is held[0]
    # 2.5 s before: the latest key frame at or before that moment.
    got = ring.since_epoch(last.capture_time - 2.5)
    assert got[0].keyframe
    assert last.capture_time - 3.5 <= got[0].capture_time <= last.capture_time - 2.5
    bounded = PrerecordRing(10, max_bytes=gop_size(pkts) * 2)
    for p in pkts:
        bounded.on_packet(p, info, None)
    assert bounded.span <= 3.0  # the byte bound won over the 10 s


def test_ring_byte_bound_follows_the_bitrate(
    stream: tuple[list[EncodedPacket], StreamInfo],
) -> None:
    """A quality change raises the bitrate: a bound read at each trim keeps N seconds."""
    pkts, info = stream
    limit = [gop_size(pkts) * 2]
    ring = PrerecordRing(10, lambda: limit[0])
    half = len(pkts) // 2
    for p in pkts[:half]:
        ring.on_packet(p, info, None)
    assert ring.span <= 3.0  # the low bound
    limit[0] = 10 << 20  # the encoder now runs at a higher bitrate
    for p in pkts[half:]:
        ring.on_packet(p, info, None)
    assert ring.span > 3.0


def gop_size(pkts: list[EncodedPacket]) -> int:
    return max(sum(p.size for p in pkts[i : i + GOP]) for i in range(0, len(pkts) - GOP, GOP))


def meta(seq: int, size: int, channel: int = 0) -> SegmentMeta:
    return SegmentMeta(
        seq=seq,
        channel=channel,
        session_id="s",
        cbk_url="https://p/live/cseg/0",
        https=True,
        start=T0 + seq * 4,
        duration=4.0,
        size=size,
        discontinue=False,
    )


def test_spool_survives_reload_and_evicts_oldest(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool", max_bytes=3000)
    assert sp.load() == []
    for seq in (1, 2, 3):
        _, evicted = sp.put(meta(seq, 1000), bytes([seq]) * 1000)
        assert evicted == []
    _entry, evicted = sp.put(meta(4, 1000), b"\x04" * 1000)
    assert [e.meta.seq for e in evicted] == [1] and sp.used == 3000
    # A write cut short by a power failure: a .ts with no metadata, and a temp file.
    (tmp_path / "spool" / f"{9:016d}.ts").write_bytes(b"partial")
    (tmp_path / "spool" / ".0000000000000010.ts.x.tmp").write_bytes(b"tmp")
    again = Spool(tmp_path / "spool", max_bytes=3000)
    kept = again.load()
    assert [e.meta.seq for e in kept] == [2, 3, 4] and again.next_seq == 5
    assert kept[2].path.read_bytes() == b"\x04" * 1000
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == sorted(
        [f"{n:016d}.{ext}" for n in (2, 3, 4) for ext in ("ts", "json")]
    )
    again.remove(kept[0])
    assert again.used == 2000 and len(again) == 2


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_spool_reports_a_full_or_read_only_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    sp = Spool(tmp_path / "spool", max_bytes=10_000)
    sp.load()

    def refuse(path: Path | str, data: bytes, mode: int = 0o600) -> None:
        raise OSError(code, "simulated")

    monkeypatch.setattr(spool_mod, "atomic_write", refuse)
    with pytest.raises(SpoolError, match=r"no space|read-only"):
        sp.put(meta(1, 10), b"x" * 10)
    assert sp.errors == 1 and len(sp) == 0 and sp.last_error
