"""Encoded packets, the hub that hands them to every consumer (encode once), and the
key-frame gate every consumer drops with.

Every consumer of a channel's packets is a :class:`PacketSink` attached to the channel's
:class:`PacketHub`, called on the capture thread right after the packet is made: the live
push (mux, then a non-blocking SRT send), a recording's segmenter, the pre-record ring.
Nothing crosses to the event loop per packet: on a small machine a thread wake-up costs
more CPU than muxing the frame. A sink must be quick and must not block. It bounds
itself (the live push by libsrt's send buffer, a recording's segmenter by the segment
size, the pre-record ring by time and bytes) and, when it has to drop, drops until the
next key frame (:class:`KeyframeGate`), so that what it passes on is whole GOPs. A sink
that raises is logged and skipped: it never stops the camera or the other sinks.
Snapshot reads the hub's last key frame (passthrough sources) or the channel's latest
picture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

__all__ = [
    "TIME_BASE",
    "EncodedPacket",
    "KeyframeGate",
    "PacketHub",
    "PacketSink",
    "StreamInfo",
    "to_90k",
]

log = logging.getLogger("hss_pu.media.hub")

TIME_BASE = Fraction(1, 90_000)  # MPEG-TS clock; every packet is stamped in it


def to_90k(ts: int, tb: Fraction | None) -> int:
    """``round(ts * tb / TIME_BASE)`` (half to even, like round() of a Fraction) in integer
    arithmetic: this runs for every packet, and Fraction arithmetic costs microseconds."""
    if tb is None:
        return int(ts)
    num, den = tb.numerator * TIME_BASE.denominator, tb.denominator
    q, r = divmod(ts * num, den)
    if 2 * r > den or (2 * r == den and q & 1):
        q += 1
    return q


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a muxer needs to create its output streams."""

    kind: Literal["video", "audio"]
    codec: str  # "h264" | "aac"
    width: int = 0
    height: int = 0
    fps: int = 0
    sample_rate: int = 0
    channels: int = 0
    extradata: bytes | None = None  # SPS/PPS (avcC or Annex B) / AudioSpecificConfig
    # Which run of the channel's source and encoder made the stream: a restart is a new
    # stream for the recorder (a discontinuity) even when nothing else changed.
    run: int = 0


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    kind: Literal["video", "audio"]
    data: bytes  # H.264 in Annex B (start codes), AAC in ADTS or raw per StreamInfo
    pts: int  # in TIME_BASE, monotonic per stream
    dts: int
    duration: int
    keyframe: bool
    capture_time: float  # daemon clock (epoch s) when the frame was captured

    @property
    def size(self) -> int:
        return len(self.data)


class KeyframeGate:
    """Drop until the next video key frame: a consumer that starts, or that lost data
    (a full buffer, a reconnect, a new stream), resumes at a key frame and so only ever
    passes on whole GOPs that decode alone. ``dropped`` counts the packets it held back."""

    __slots__ = ("dropped", "waiting")

    def __init__(self) -> None:
        self.waiting = True  # a new consumer starts at a key frame too
        self.dropped = 0

    def admit(self, pkt: EncodedPacket) -> bool:
        """True when ``pkt`` may go on; the first one admitted is a video key frame."""
        if self.waiting:
            if not (pkt.kind == "video" and pkt.keyframe):
                self.dropped += 1
                return False
            self.waiting = False
        return True

    def reset(self) -> bool:
        """Drop from here to the next key frame; True when this cut a GOP short (the
        gate was passing packets), so a caller can count dropped GOPs."""
        was_open = not self.waiting
        self.waiting = True
        return was_open


class PacketSink(Protocol):
    """A consumer called on the capture thread: must be quick, must not block or raise."""

    def on_packet(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        """One packet, with the streams it belongs to."""

    def on_flush(self) -> None:
        """The capture produced nothing more for now (a frame and its audio are in)."""


class PacketHub:
    """One per channel: the capture thread publishes, attached sinks consume there.

    The stream info and the last key frame are plain attributes written by the capture
    thread and read by the loop (muxer set-up, snapshots): each write replaces a whole
    immutable object.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        # Replaced, never mutated: the capture thread iterates whatever tuple it read.
        self.sinks: tuple[PacketSink, ...] = ()
        self.video: StreamInfo | None = None
        self.audio: StreamInfo | None = None
        self.last_keyframe: EncodedPacket | None = None
        self.sink_errors = 0  # calls that raised, all sinks
        self._failures: dict[int, int] = {}  # per attached sink (by id), for the log

    def attach(self, sink: PacketSink) -> None:
        self.sinks = (*self.sinks, sink)

    def detach(self, sink: PacketSink) -> None:
        """After this returns the capture thread may still be inside one call of the sink
        (it read the old tuple): a sink that closes must guard itself (a lock)."""
        self.sinks = tuple(s for s in self.sinks if s is not sink)
        self._failures.pop(id(sink), None)

    def publish(self, pkt: EncodedPacket) -> None:
        """On the capture thread, once :attr:`video` is known: every sink gets ``pkt``."""
        video = self.video
        assert video is not None, "stream info comes before packets"
        if pkt.kind == "video" and pkt.keyframe:
            self.last_keyframe = pkt
        audio = self.audio
        for sink in self.sinks:
            try:
                sink.on_packet(pkt, video, audio)
            except Exception:  # a sink bug must not stop the camera or the other sinks
                self._sink_failed(sink)

    def flush(self) -> None:
        """On the capture thread: what one capture produced has been published."""
        for sink in self.sinks:
            try:
                sink.on_flush()
            except Exception:
                self._sink_failed(sink)

    def _sink_failed(self, sink: PacketSink) -> None:
        self.sink_errors += 1
        n = self._failures[id(sink)] = self._failures.get(id(sink), 0) + 1
        if n == 1 or n % 1000 == 0:  # once per frame would flood the journal
            log.exception("%s: packet sink %r failed (%d times)", self.name, sink, n)
