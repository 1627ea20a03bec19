"""Where a live viewer may join an MPEG-TS byte stream (hss_pu/media/tsjoin.py), checked on
what FFmpeg's own muxer writes and judged by FFmpeg's decoder."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from hss_pu.media.tscheck import PACKET_SIZE, check_ts
from hss_pu.media.tsjoin import TsJoin

from .support.probe import decode_errors, key_frames

GOP = 10  # frames: a key frame a second at 10 fps


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Four seconds of H.264 at 10 fps in MPEG-TS, muxed by ffmpeg (key frame every GOP)."""
    path = tmp_path_factory.mktemp("tsjoin") / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=160x90:rate=10", "-t", "4", "-c:v", "libx264", "-preset", "ultrafast",
         "-g", str(GOP), "-keyint_min", str(GOP), "-sc_threshold", "0",
         "-x264-params", "repeat-headers=1", "-f", "mpegts", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path.read_bytes()


def _chunks(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut at random places (pipes and sockets do not keep packet boundaries)."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 3000)
        out.append(data[i : i + n])
        i += n
    return out


def _pid(pkt: bytes) -> int:
    return ((pkt[1] & 0x1F) << 8) | pkt[2]


def _packets(data: bytes) -> list[bytes]:
    return [data[i : i + PACKET_SIZE] for i in range(0, len(data), PACKET_SIZE)]


def test_the_stream_passes_through_unmodified_whatever_the_chunking(clip: bytes) -> None:
    j = TsJoin()
    out = b"".join(j.feed(c)[0] for c in _chunks(clip, 1))
    assert out == clip
    assert j.skipped == 0
    assert j.keyframes == 4  # 40 frames, GOP 10


def test_no_join_point_before_the_first_key_frame(clip: bytes) -> None:
    j = TsJoin()
    first_video = next(p for p in _packets(clip) if _pid(p) not in (0, 0x11, 0x1000))
    assert j.snapshot() is None
    # PAT, PMT (and SDT) but no picture yet.
    head = clip[: clip.index(first_video)]
    assert j.feed(head) == (head, False)
    assert j.snapshot() is None


def test_a_snapshot_starts_with_pat_pmt_then_a_key_frame_and_decodes_alone(
    clip: bytes, tmp_path: Path
) -> None:
    """Joined anywhere in the stream, a viewer gets bytes that start at a sync byte, PAT
    then PMT, then the key frame's PES, and (with the live bytes that follow) decode
    without an error from the first frame on (FFmpeg complains of missing SPS/PPS or
    references when a stream is cut anywhere else)."""
    j = TsJoin()
    chunks = _chunks(clip, 2)
    outs: list[bytes] = []
    snaps: list[tuple[bytes, int]] = []  # (snapshot, how many outputs it already holds)
    keys = 0
    for chunk in chunks:
        out, key = j.feed(chunk)
        outs.append(out)
        keys += key
        snap = j.snapshot()
        if snap is not None:
            snaps.append((snap, len(outs)))
    assert keys == 4 and len(snaps) > 10
    for n, (snap, upto) in enumerate(snaps[:: len(snaps) // 6]):
        assert snap[0] == 0x47 and len(snap) % PACKET_SIZE == 0
        pkts = _packets(snap)
        assert _pid(pkts[0]) == 0  # PAT
        assert pkts[1][1] & 0x40 and pkts[1][5 + pkts[1][4]] == 0x02  # PMT (table_id 2)
        video = pkts[2]
        assert video[1] & 0x40, "the key frame's PES starts the third packet"
        assert video[3] & 0x20 and video[5] & 0x40, "random_access_indicator"
        viewer = snap + b"".join(outs[upto:])
        assert check_ts(viewer).ok
        path = tmp_path / f"viewer{n}.ts"
        path.write_bytes(viewer)
        assert decode_errors(path) == ""
        frames = key_frames(path)
        assert frames and frames[0], frames[:3]


def test_the_snapshot_holds_the_whole_current_gop(clip: bytes) -> None:
    """Fed packet by packet, the snapshot right before a key frame is PAT + PMT + the whole
    previous GOP, byte for byte as it was received."""
    j = TsJoin()
    pkts = _packets(clip)
    key_at: list[int] = []
    for i, p in enumerate(pkts):
        if j.feed(p)[1]:
            key_at.append(i)
    assert len(key_at) == 4
    j2 = TsJoin()
    for p in pkts[: key_at[2]]:
        j2.feed(p)
    snap = j2.snapshot()
    assert snap is not None
    gop = b"".join(pkts[key_at[1] : key_at[2]])
    assert snap.endswith(gop)
    assert len(snap) - len(gop) == 2 * PACKET_SIZE  # PAT and PMT in front


def test_a_gop_too_big_to_keep_means_no_join_point_until_the_next_key(clip: bytes) -> None:
    j = TsJoin(max_gop_bytes=20 * PACKET_SIZE)
    after_key: list[bool] = []
    for p in _packets(clip):
        _, key = j.feed(p)
        snap = j.snapshot()
        assert snap is None or len(snap) <= 22 * PACKET_SIZE
        if key:
            after_key.append(snap is not None)
    # Right after each key frame there is a join point; late in the GOP there is none.
    assert after_key == [True] * 4 and j.snapshot() is None


def test_garbage_between_packets_is_skipped_and_output_stays_aligned(clip: bytes) -> None:
    pkts = _packets(clip)
    noisy = b"".join(pkts[:50]) + b"\x00\x47garbage" + b"".join(pkts[50:])
    j = TsJoin()
    out = b"".join(j.feed(c)[0] for c in _chunks(noisy, 3))
    assert out == clip and j.skipped == 9


def _pes_packet(pid: int, es: bytes, *, rai: bool = False, cc: int = 0) -> bytes:
    pes = b"\x00\x00\x01\xe0\x00\x00\x80\x80\x05\x21\x00\x01\x00\x01" + es
    if rai:
        af = bytes([0x40]) + b"\xff" * (PACKET_SIZE - 4 - 1 - 1 - len(pes))
        body = bytes([len(af)]) + af + pes
        head = bytes([0x47, 0x40 | pid >> 8, pid & 0xFF, 0x30 | cc])
    else:
        stuff = PACKET_SIZE - 4 - len(pes)  # an adaptation field of flags 0, then stuffing
        body = bytes([stuff - 1]) + (b"\x00" + b"\xff" * (stuff - 2))[: stuff - 1] + pes
        head = bytes([0x47, 0x40 | pid >> 8, pid & 0xFF, (0x30 if stuff else 0x10) | cc])
    pkt = head + body
    assert len(pkt) == PACKET_SIZE
    return pkt


def _pat_pmt(pmt_pid: int, video_pid: int, stream_type: int = 0x1B) -> bytes:
    def section(table_id: int, body: bytes) -> bytes:
        length = len(body) + 5 + 4
        sec = bytes([table_id, 0xB0 | length >> 8, length & 0xFF]) + b"\x00\x01\xc1\x00\x00"
        return sec + body + b"\x00\x00\x00\x00"  # CRC unchecked

    def packet(pid: int, sec: bytes) -> bytes:
        payload = b"\x00" + sec
        return (
            bytes([0x47, 0x40 | pid >> 8, pid & 0xFF, 0x10])
            + payload
            + b"\xff" * (PACKET_SIZE - 4 - len(payload))
        )

    pat = section(0, b"\x00\x01" + bytes([0xE0 | pmt_pid >> 8, pmt_pid & 0xFF]))
    es = bytes([stream_type, 0xE0 | video_pid >> 8, video_pid & 0xFF, 0xF0, 0x00])
    pmt = section(2, bytes([0xE0 | video_pid >> 8, video_pid & 0xFF, 0xF0, 0x00]) + es)
    return packet(0, pat) + packet(pmt_pid, pmt)


def test_key_frames_are_found_without_the_random_access_flag() -> None:
    """A muxer that does not set random_access_indicator: an SPS or an IDR slice at the
    start of the PES marks the key frame (a P slice does not)."""
    si = _pat_pmt(0x100, 0x101)
    p_slice = _pes_packet(0x101, b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01\x41\x9a")
    sps = _pes_packet(0x101, b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01\x67\x42\x00")
    idr = _pes_packet(0x101, b"\x00\x00\x01\x65\x88\x84")
    j = TsJoin()
    assert j.feed(si + p_slice) == (si + p_slice, False)
    assert j.snapshot() is None
    assert j.feed(sps)[1] is True
    assert j.snapshot() == si + sps
    assert j.feed(p_slice)[1] is False
    assert j.feed(idr)[1] is True
    assert j.snapshot() == si + idr
    # Another PID's PES (audio) never counts, nor does a video PID the PMT did not name.
    j2 = TsJoin()
    j2.feed(si)
    assert j2.feed(_pes_packet(0x102, b"\x00\x00\x01\x65\x88", rai=True))[1] is False
    assert j2.feed(_pes_packet(0x101, b"\x00\x00\x01\x41\x9a", rai=True))[1] is True


def test_reset_forgets_the_stream(clip: bytes) -> None:
    j = TsJoin()
    j.feed(clip[:-1])
    assert j.snapshot() is not None
    j.reset()
    assert j.snapshot() is None
    # The partial packet left over from before is dropped too: a new stream starts clean.
    assert j.feed(clip[: PACKET_SIZE * 3])[0] == clip[: PACKET_SIZE * 3]
