"""The live push's capture-thread sink: TS out in SRT-sized messages, whole GOPs when the
send buffer is full, a broken link reported once. The sender is a stand-in (a libsrt send
buffer cannot be filled on demand); the muxer and the packets are real."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import pytest

from hss_pu.media.encoder import EncodeSettings, VideoEncoder
from hss_pu.media.packets import EncodedPacket, StreamInfo
from hss_pu.media.sources import EmulatedSource, RawVideo, iter_items
from hss_pu.media.tscheck import check_ts
from hss_pu.services.live import (
    NULL_MESSAGE,
    SEND_STALL_LIMIT,
    TAIL_MESSAGES,
    PushStats,
    _LinkStalled,
    _LiveSink,
)
from hss_pu.srt import SRT_ECONNLOST, SrtError

GOP = 10


@pytest.fixture(scope="module")
def gops() -> tuple[list[EncodedPacket], StreamInfo]:
    """Four GOPs of 320x180 emulated video."""
    s = EncodeSettings(320, 180, 30, 400_000, GOP, "libx264")
    src = EmulatedSource(s, lambda: 1.7e9, threading.Event(), realtime=False)
    src.open()
    enc = VideoEncoder(s)
    pkts: list[EncodedPacket] = []
    for item in iter_items(src, 4 * GOP):
        assert isinstance(item, RawVideo)
        pkts += enc.encode(item.frame, item.pts, item.capture_time)
    pkts += enc.flush()
    assert enc.info is not None
    return pkts, enc.info


class Sender:
    """send_nowait as libsrt's: True (queued), False (buffer full) or SrtError."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.full = False
        self.error: SrtError | None = None

    def send_nowait(self, msg: bytes) -> bool:
        assert 0 < len(msg) <= 1316 and len(msg) % 188 == 0
        if self.error is not None:
            raise self.error
        if self.full:
            return False
        self.sent.append(msg)
        return True


def make_sink(sender: Sender) -> tuple[_LiveSink, PushStats, list[BaseException]]:
    stats, broken = PushStats(), list[BaseException]()
    return _LiveSink(sender, stats, broken.append), stats, broken  # type: ignore[arg-type]


def feed(sink: _LiveSink, pkts: list[EncodedPacket], info: StreamInfo) -> None:
    for p in pkts:
        sink.on_packet(p, info, None)
        sink.on_flush()


def frames_in(ts: bytes, tmp: Path) -> int:
    f = tmp / "out.ts"
    f.write_bytes(ts)
    with av.open(str(f)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_stream_is_whole_messages_and_decodes(
    gops: tuple[list[EncodedPacket], StreamInfo], tmp_path: Path
) -> None:
    pkts, info = gops
    sender = Sender()
    sink, stats, broken = make_sink(sender)
    feed(sink, pkts[3:], info)  # starts mid-GOP: waits for the next key frame
    sink.close()
    assert sender.sent[-TAIL_MESSAGES:] == [NULL_MESSAGE] * TAIL_MESSAGES
    ts = b"".join(sender.sent[:-TAIL_MESSAGES])
    first_pids = [((ts[i + 1] & 0x1F) << 8) | ts[i + 2] for i in range(0, 3 * 188, 188)]
    assert 0 in first_pids  # SDT, PAT, PMT before any media
    report = check_ts(ts)
    assert report.ok, report
    assert frames_in(ts, tmp_path) == 3 * GOP
    # Full messages: only a frame's last message may be short.
    assert sum(len(m) < 1316 for m in sender.sent) <= len(pkts)
    assert stats.messages == len(sender.sent) - TAIL_MESSAGES and not broken


def test_full_buffer_drops_to_the_next_key_frame(
    gops: tuple[list[EncodedPacket], StreamInfo], tmp_path: Path
) -> None:
    pkts, info = gops
    sender = Sender()
    sink, stats, broken = make_sink(sender)
    feed(sink, pkts[: GOP + 2], info)  # GOP 1 and two frames of GOP 2
    sender.full = True
    feed(sink, pkts[GOP + 2 : GOP + 3], info)  # refused
    sender.full = False
    n = len(sender.sent)
    feed(sink, pkts[GOP + 3 : 2 * GOP], info)  # the rest of GOP 2: skipped
    assert len(sender.sent) == n
    feed(sink, pkts[2 * GOP :], info)  # GOP 3 on: sent again
    assert stats.dropped_gops == 1 and stats.dropped_messages == 1 and not broken
    sink.close()
    frames = frames_in(b"".join(sender.sent), tmp_path)
    assert frames >= GOP + 2 + 2 * GOP  # what was sent decodes (a partial frame may too)


def test_stalled_or_lost_link_is_reported_once(
    gops: tuple[list[EncodedPacket], StreamInfo],
) -> None:
    pkts, info = gops
    sender = Sender()
    sink, stats, broken = make_sink(sender)
    sender.full = True
    for _ in range(SEND_STALL_LIMIT):  # one refused message per key frame offered
        feed(sink, pkts[:1], info)
    assert len(broken) == 1 and isinstance(broken[0], _LinkStalled)
    feed(sink, pkts, info)
    assert len(broken) == 1 and stats.dropped_messages == SEND_STALL_LIMIT

    sender = Sender()
    sink, stats, broken = make_sink(sender)
    feed(sink, pkts[:3], info)
    sender.error = SrtError(SRT_ECONNLOST, "Connection was broken")
    feed(sink, pkts[3:], info)
    sink.close()  # no tail on a dead link, and no second report
    assert len(broken) == 1 and isinstance(broken[0], SrtError)
