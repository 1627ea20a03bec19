"""Encoded packets and the fan-out that hands them to every consumer (encode once).

The capture/encode side publishes into a :class:`PacketHub`; live, recording, pre-record
and snapshot each hold a :class:`Subscription`. A subscription is bounded: when its
consumer falls behind, everything it has queued is dropped and it resumes at the next
key frame, so it only ever sees whole GOPs, and capture and the other consumers never
wait for it. The hub lives on the event loop thread; the encoder thread hands packets
over with ``loop.call_soon_threadsafe(hub.publish, packet)``.

A consumer whose work per packet is short and never blocks (the live push: mux, then a
non-blocking SRT send) can instead attach a :class:`PacketSink`, called on the capture
thread itself. That saves two thread wake-ups per frame, which on a small machine cost
more CPU than the muxing; the sink bounds itself (libsrt's send buffer) and drops to the
next key frame when that is full.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, Protocol

__all__ = [
    "TIME_BASE",
    "EncodedPacket",
    "PacketHub",
    "PacketSink",
    "StreamInfo",
    "Subscription",
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


@dataclass
class Subscription:
    name: str
    max_packets: int
    max_bytes: int
    hub: PacketHub
    _queue: collections.deque[EncodedPacket] = field(default_factory=collections.deque)
    _bytes: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    waiting_keyframe: bool = True  # a new consumer starts at a key frame too
    dropped_gops: int = 0
    dropped_packets: int = 0
    delivered: int = 0
    closed: bool = False

    def _offer(self, pkt: EncodedPacket) -> None:
        if self.closed:
            return
        if self.waiting_keyframe:
            if not (pkt.kind == "video" and pkt.keyframe):
                self.dropped_packets += 1
                return
            self.waiting_keyframe = False
        if len(self._queue) >= self.max_packets or self._bytes + pkt.size > self.max_bytes:
            self._drop_backlog()
            if not (pkt.kind == "video" and pkt.keyframe):
                self.dropped_packets += 1
                return
            self.waiting_keyframe = False
        self._queue.append(pkt)
        self._bytes += pkt.size
        self._wake.set()

    def _drop_backlog(self) -> None:
        gops = sum(1 for p in self._queue if p.kind == "video" and p.keyframe) or 1
        self.dropped_gops += gops
        self.dropped_packets += len(self._queue)
        if self.dropped_gops == gops or self.dropped_gops % 100 == 0:
            log.warning(
                "%s fell behind: dropped %d GOP(s) (%d in all)", self.name, gops, self.dropped_gops
            )
        self._queue.clear()
        self._bytes = 0
        self.waiting_keyframe = True

    def get_nowait(self) -> EncodedPacket | None:
        if not self._queue:
            return None
        pkt = self._queue.popleft()
        self._bytes -= pkt.size
        self.delivered += 1
        return pkt

    async def get(self) -> EncodedPacket:
        """The next packet; raises EOFError once closed and drained."""
        while True:
            pkt = self.get_nowait()
            if pkt is not None:
                return pkt
            if self.closed:
                raise EOFError(self.name)
            self._wake.clear()
            await self._wake.wait()

    def restart_at_keyframe(self) -> None:
        """Forget the backlog and resume at the next key frame (e.g. after a reconnect)."""
        self._queue.clear()
        self._bytes = 0
        self.waiting_keyframe = True

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self.closed = True
        self._wake.set()
        self.hub._subs.discard(self)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


class PacketSink(Protocol):
    """A consumer called on the capture thread: must be quick, must not block or raise."""

    def on_packet(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        """One packet, with the streams it belongs to."""

    def on_flush(self) -> None:
        """The capture produced nothing more for now (a frame and its audio are in)."""


class PacketHub:
    """One per channel: the encoder publishes, every consumer subscribes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._subs: set[Subscription] = set()
        # Replaced, never mutated: the capture thread iterates whatever tuple it read.
        self.sinks: tuple[PacketSink, ...] = ()
        self.video: StreamInfo | None = None
        self.audio: StreamInfo | None = None
        self.published = 0
        self.last_keyframe: EncodedPacket | None = None

    def subscribe(
        self, name: str, *, max_packets: int = 300, max_bytes: int = 8 << 20
    ) -> Subscription:
        sub = Subscription(
            name=f"{self.name}/{name}", max_packets=max_packets, max_bytes=max_bytes, hub=self
        )
        self._subs.add(sub)
        return sub

    def attach(self, sink: PacketSink) -> None:
        self.sinks = (*self.sinks, sink)

    def detach(self, sink: PacketSink) -> None:
        """After this returns the capture thread may still be inside one call of the sink
        (it read the old tuple): a sink that closes must guard itself (a lock)."""
        self.sinks = tuple(s for s in self.sinks if s is not sink)

    def publish(self, pkt: EncodedPacket) -> None:
        self.published += 1
        if pkt.kind == "video" and pkt.keyframe:
            self.last_keyframe = pkt
        for sub in list(self._subs):
            sub._offer(pkt)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
