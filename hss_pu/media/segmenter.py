"""Cutting a channel's packet stream into recording segments, and the pre-record ring.

Pure data work, no I/O: packets in, :class:`Segment` objects (MPEG-TS bytes plus their
place in time) out. Both run on the channel's capture thread as packet sinks.

Time: packets carry pts on the channel's monotonic 90 kHz line and the daemon-clock
``capture_time`` of their frame. A segmenter fixes one mapping pts → epoch (``anchor``)
when it sees its first packet and keeps it, so ``start`` of segment i+1 is exactly
``start + duration`` of segment i: segments tile time by construction. A gap in the
packets (the source restarted or skipped frames) ends the segment where the data
ends and marks the next one ``discontinue``; so does a new stream (other stream info: the
encoder restarted at another size), even without a gap.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

from hss_pu.media.packets import TIME_BASE, EncodedPacket, KeyframeGate, StreamInfo
from hss_pu.media.tsmux import TsMuxer

__all__ = ["PrerecordRing", "Segment", "Segmenter"]

log = logging.getLogger("hss_pu.media.segmenter")

HZ = TIME_BASE.denominator
# A gap in the video longer than this many frame durations is a discontinuity.
GAP_FRAMES = 3


@dataclass(frozen=True, slots=True)
class Segment:
    channel: int
    start: float  # epoch seconds, the daemon's synchronized clock
    duration: float  # seconds
    data: bytes  # MPEG-TS, starting with PAT/PMT and an IDR with SPS/PPS
    discontinue: bool  # does not follow on from the segment before it
    first_pts: int
    end_pts: int  # first_pts of the segment that follows on

    @property
    def size(self) -> int:
        return len(self.data)


class Segmenter:
    """Packets in; closed segments out of :meth:`push` / :meth:`flush`.

    A segment closes at the first video key frame at least ``seg_duration`` after its
    start, or earlier, at a key frame, when the next GOP would push it past
    ``max_size`` (predicted from the largest GOP seen). ``wants_keyframe`` turns True when
    a segment nears ``max_size`` mid-GOP: the caller asks the encoder for an IDR so the
    cut can come in time (a passthrough source cannot be asked: its GOP may overshoot,
    which is counted in ``oversize``).
    """

    def __init__(
        self,
        channel: int,
        seg_duration: float,
        max_size: int,
    ) -> None:
        self.channel = channel
        self.seg_ticks = round(seg_duration * HZ)
        self.max_size = max_size
        self.anchor: float | None = None  # epoch seconds at pts 0
        self.wants_keyframe = False
        self.oversize = 0
        self._next_discontinue = True  # nothing before the first segment of a run
        self._mux: TsMuxer | None = None
        self._out: list[bytes] = []
        self._bytes = 0
        self._first_pts = 0
        self._gop_start_bytes = 0
        self._max_gop = 0
        self._last_video_end: int | None = None  # pts + duration of the last video packet
        self._frame_ticks = 3000
        self._video: StreamInfo | None = None
        self._audio: StreamInfo | None = None

    def epoch(self, pts: int) -> float:
        assert self.anchor is not None
        return self.anchor + pts / HZ

    def push(
        self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None
    ) -> list[Segment]:
        closed: list[Segment] = []
        is_key = pkt.kind == "video" and pkt.keyframe
        if pkt.kind == "video":
            if pkt.duration > 0:
                self._frame_ticks = pkt.duration
            end = self._last_video_end
            if end is not None and pkt.pts - end > GAP_FRAMES * self._frame_ticks:
                # A hole in the video: end the segment where the data ended.
                seg = self._close(end)
                if seg is not None:
                    closed.append(seg)
                self._next_discontinue = True
        if self._mux is None:
            if not is_key:
                return closed  # every segment starts at a key frame
            self._begin(pkt, video, audio)
        elif is_key:
            gop = self._bytes - self._gop_start_bytes
            self._max_gop = max(self._max_gop, gop)
            long_enough = pkt.pts - self._first_pts >= self.seg_ticks - self._frame_ticks // 2
            too_big = self._bytes + self._max_gop > self.max_size
            new_stream = video != self._video or audio != self._audio
            if long_enough or too_big or new_stream:
                seg = self._close(pkt.pts)
                if seg is not None:
                    closed.append(seg)
                if new_stream:  # the encoder restarted (another quality, RebootChannel)
                    self._next_discontinue = True
                self._begin(pkt, video, audio)
            else:
                self._gop_start_bytes = self._bytes
        assert self._mux is not None
        if is_key:
            self.wants_keyframe = False
        self._mux.mux(pkt)
        if pkt.kind == "video":
            self._last_video_end = pkt.pts + max(pkt.duration, 0)
        # Near the limit mid-GOP: ask for an IDR now rather than overshoot.
        if not is_key and self._bytes + 2 * self._frame_bytes() > self.max_size:
            self.wants_keyframe = True
        return closed

    def flush(self) -> Segment | None:
        """Close the open segment where its data ends (StopRecord, shutdown)."""
        if self._mux is None or self._last_video_end is None:
            return None
        seg = self._close(self._last_video_end)
        self._next_discontinue = True
        return seg

    def _frame_bytes(self) -> int:
        frames = max(1, (self._last_video_end or 0) - self._first_pts) / self._frame_ticks
        return int(self._bytes / max(1.0, frames))

    def _begin(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        if self.anchor is None:
            self.anchor = pkt.capture_time - pkt.pts / HZ
        self._video, self._audio = video, audio
        self._out = []
        self._mux = TsMuxer(video, audio, self._on_bytes, message_size=None)
        self._bytes = 0
        self._gop_start_bytes = 0
        self._first_pts = pkt.pts

    def _on_bytes(self, data: bytes) -> None:
        self._out.append(data)
        self._bytes += len(data)

    def _close(self, end_pts: int) -> Segment | None:
        mux, self._mux = self._mux, None
        if mux is None:
            return None
        mux.close()
        data = b"".join(self._out)
        self._out = []
        if len(data) > self.max_size:
            self.oversize += 1
            log.warning(
                "ch%d: a segment of %d bytes exceeds seg_max_size %d (one GOP was larger)",
                self.channel,
                len(data),
                self.max_size,
            )
        end_pts = max(end_pts, self._first_pts + 1)
        seg = Segment(
            channel=self.channel,
            start=self.epoch(self._first_pts),
            duration=(end_pts - self._first_pts) / HZ,
            data=data,
            discontinue=self._next_discontinue,
            first_pts=self._first_pts,
            end_pts=end_pts,
        )
        self._next_discontinue = False
        return seg


class PrerecordRing:
    """The last ``seconds`` of a channel's packets, always from a video key frame on, so
    a recording can start before the alarm that asked for it. Bounded in time and bytes;
    runs on the capture thread."""

    def __init__(self, seconds: float, max_bytes: int | Callable[[], int]) -> None:
        """``max_bytes`` may be a callable read at each trim: the bound then follows the
        channel's bitrate when its quality changes."""
        self.seconds = seconds
        self.max_bytes = max_bytes
        self._pkts: collections.deque[EncodedPacket] = collections.deque()
        self._keys: collections.deque[EncodedPacket] = collections.deque()  # key frames held
        self._bytes = 0
        self._gate = KeyframeGate()  # what is held starts at a key frame

    def on_packet(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        if not self._gate.admit(pkt):
            return
        self._pkts.append(pkt)
        self._bytes += pkt.size
        if pkt.kind == "video" and pkt.keyframe:
            self._keys.append(pkt)
        self._trim(pkt.pts)

    def on_flush(self) -> None:
        pass

    def _trim(self, now_pts: int) -> None:
        horizon = now_pts - round(self.seconds * HZ)
        limit = self.max_bytes() if callable(self.max_bytes) else self.max_bytes
        # Drop whole GOPs from the front while the next key frame is still old enough
        # (or the bytes are over): what is left always starts at a key frame.
        while len(self._keys) >= 2 and (self._keys[1].pts <= horizon or self._bytes > limit):
            nxt = self._keys[1]
            while self._pkts and self._pkts[0] is not nxt:
                self._bytes -= self._pkts.popleft().size
            self._keys.popleft()

    def clear(self) -> None:
        """Forget what is held (the camera stopped for hibernation: video from before the
        sleep is no pre-record for an alarm after it). Only while no capture thread runs."""
        self._pkts.clear()
        self._keys.clear()
        self._bytes = 0
        self._gate = KeyframeGate()

    def since(self, pts: int) -> list[EncodedPacket]:
        """Packets from the latest key frame at or before ``pts`` (or the oldest held)."""
        start: EncodedPacket | None = None
        for k in self._keys:
            if start is None or k.pts <= pts:
                start = k
            if k.pts >= pts:
                break
        if start is None:
            return []
        out: list[EncodedPacket] = []
        for p in self._pkts:
            if out or p is start:
                out.append(p)
        return out

    def since_epoch(self, t: float) -> list[EncodedPacket]:
        """As :meth:`since`, for a daemon-clock time (mapped through the newest packet)."""
        if not self._pkts:
            return []
        last = self._pkts[-1]
        return self.since(last.pts + round((t - last.capture_time) * HZ))

    @property
    def span(self) -> float:
        """Seconds held, from the first key frame to the newest packet."""
        if not self._pkts:
            return 0.0
        return (self._pkts[-1].pts - self._pkts[0].pts) / HZ
