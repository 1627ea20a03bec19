"""Saved TS segments joined into one MPEG-TS file without re-encoding (the console's
download of a time range).

Plain concatenation is not one valid stream: each segment comes from a muxer of its own,
so at every join the continuity counters restart (measured on the PU's segments: a break
on each of PAT, SDT, PMT, video and audio, every join) and, across a stop, the timestamps
jump by the stop (the file's duration counts the stop as if it were video).
This demuxes the segments and muxes their packets again into one MPEG-TS muxer
(``ffmpeg -c copy``): counters run on, and where the timestamps do not follow on (a gap,
an overlap, a restarted encoder, a wrap) the next segment is laid right after the last
frame, so the file plays its recorded video end to end and its duration is what was
recorded. The range is cut at the video key frame at or before ``start`` (so the file
decodes from its first frame) and after the last frame before ``end``.

Blocking and CPU-light (no decoding): run it in a worker thread. Memory: the packets in
flight (at most MAX_HELD held while a segment's first video frame is awaited), never a
whole segment or the whole file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = ["Piece", "RemuxReport", "remux"]

log = logging.getLogger("hss_pu.platform.console")

# A segment whose first frame lands further than this from where the previous one ended
# (in the file's own timestamps) is laid on again: as the timeline's gap tolerance.
FOLLOW_TOLERANCE = Fraction(1, 2)
FALLBACK_STEP = Fraction(1, 15)  # s: the frame step when the last frame did not say
MAX_HELD = 1000  # packets held while a segment's first video frame has not come yet


@dataclass(frozen=True, slots=True)
class Piece:
    """A segment file and the epoch time of its first video frame (Vr ``start``)."""

    path: Path
    start: float


@dataclass
class RemuxReport:
    pieces: int = 0  # segments that gave packets
    skipped: int = 0  # segments that could not be read (gone, broken)
    packets: int = 0
    video_frames: int = 0
    relaid: int = 0  # segments whose timestamps did not follow on, laid on again
    dropped: int = 0  # packets that would have gone back in time (an overlap)
    duration: float = 0.0  # s: first video frame to the end of the last one


class _Writer:
    """The file-like object PyAV writes into (``write`` only: not seekable); remembers
    that its callback failed, so that failure is not taken for a broken segment."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self.failed = False

    def write(self, data: bytes) -> int:
        try:
            self._write(bytes(data))
        except BaseException:
            self.failed = True
            raise
        return len(data)


class _Join:
    """The output muxer and where its timeline stands."""

    def __init__(self, out: Any, report: RemuxReport) -> None:
        self.out = out
        self.report = report
        self.streams: dict[str, Any] = {}  # "video" / "audio" -> output stream
        self.shift: Fraction | None = None  # s added to the current segment's timestamps
        self.first: Fraction | None = None  # output time of the first video frame
        self.next: Fraction | None = None  # output time right after the last video frame
        self.last_dts: dict[str, Fraction] = {}

    def add_streams(self, templates: dict[str, Any]) -> None:
        for kind, stream in templates.items():
            self.streams[kind] = self.out.add_stream_from_template(stream)

    def anchor(self, first_dts: Fraction) -> None:
        """The current segment's first kept video frame is at ``first_dts`` (its file's
        time): keep the running shift if it follows on, else lay it on at ``next``."""
        if self.shift is None or self.next is None:
            self.shift = -first_dts
            return
        if abs(first_dts + self.shift - self.next) > FOLLOW_TOLERANCE:
            self.shift = self.next - first_dts
            self.report.relaid += 1

    def mux(self, kind: str, packet: Any, tb: Fraction) -> None:
        assert self.shift is not None
        offset = self.shift / tb
        if offset.denominator != 1:
            offset = Fraction(round(offset))
        pts = packet.pts + int(offset)
        dts = (packet.dts if packet.dts is not None else packet.pts) + int(offset)
        t = dts * tb
        last = self.last_dts.get(kind)
        if last is not None and t <= last:
            self.report.dropped += 1
            return
        self.last_dts[kind] = t
        packet.pts, packet.dts = pts, dts
        packet.stream = self.streams[kind]
        self.out.mux(packet)
        self.report.packets += 1
        if kind == "video":
            self.report.video_frames += 1
            step = packet.duration * tb if packet.duration else FALLBACK_STEP
            if self.first is None:
                self.first = pts * tb
            self.next = t + step


def remux(
    pieces: Sequence[Piece],
    write: Callable[[bytes], None],
    *,
    start: float = -math.inf,
    end: float = math.inf,
) -> RemuxReport:
    """Write ``pieces`` (in time order) as one MPEG-TS through ``write``, cut to
    [start, end] (epoch s). An exception out of ``write`` stops it (and is raised). A
    segment that cannot be read is skipped (logged); ValueError when none could be."""
    import av  # here: the CLI imports the platform and need not pay for PyAV

    report = RemuxReport()
    writer = _Writer(write)
    with av.open(writer, "w", format="mpegts") as out:
        join = _Join(out, report)
        for piece in pieces:
            try:
                _copy(join, piece, start, end)
            except (av.error.FFmpegError, OSError) as exc:
                if writer.failed:
                    raise
                report.skipped += 1
                log.warning("download: segment %s skipped: %s", piece.path.name, exc)
        if not report.packets:
            raise ValueError(f"none of the {len(pieces)} segments gave a packet")
    if join.first is not None and join.next is not None:
        report.duration = float(join.next - join.first)
    return report


def _copy(join: _Join, piece: Piece, start: float, end: float) -> None:
    import av

    with av.open(str(piece.path)) as inp:
        if not inp.streams.video:
            raise OSError("no video stream")
        templates: dict[str, Any] = {"video": inp.streams.video[0]}
        if inp.streams.audio:
            templates["audio"] = inp.streams.audio[0]
        if not join.streams:
            join.add_streams(templates)
        used = [templates[k] for k in join.streams if k in templates]
        kinds = {s.index: k for k, s in templates.items()}
        tbs = {s.index: _time_base(s) for s in used}
        vtb = tbs[templates["video"].index]
        cut = _cut_point(piece, start) if start > piece.start else None
        held: list[tuple[str, Any, Fraction]] = []
        zero: Fraction | None = None  # file time of the first video frame (= piece.start)
        started = False  # the cut key frame has been kept
        for packet in _packets(inp, used):
            kind = kinds[packet.stream.index]
            tb = tbs[packet.stream.index]
            t = packet.pts * tb
            if kind == "video" and zero is None:
                zero = t
            if zero is None:  # audio before the first video frame: its place is unknown
                if len(held) < MAX_HELD:
                    held.append((kind, packet, tb))
                continue
            if not started:
                if kind != "video":
                    held.append((kind, packet, tb))
                    del held[:-MAX_HELD]
                    continue
                if not packet.is_keyframe or (cut is not None and t < zero + cut):
                    continue
                started = True
                join.anchor(packet.dts * vtb if packet.dts is not None else t)
                for k, p, ptb in held:
                    if p.pts * ptb >= t and _before(piece, zero, p, ptb, end):
                        join.mux(k, p, ptb)
                held.clear()
            if not _before(piece, zero, packet, tb, end):
                if kind == "video":
                    break
                continue
            join.mux(kind, packet, tb)
        if started:
            join.report.pieces += 1


def _before(piece: Piece, zero: Fraction, packet: Any, tb: Fraction, end: float) -> bool:
    """Does the packet come before ``end``? Video by its decoding time (what is kept then
    decodes: nothing kept refers to a frame left out), audio by its presentation time."""
    if end == math.inf:
        return True
    ts = packet.dts if packet.stream.type == "video" and packet.dts is not None else packet.pts
    return piece.start + float(ts * tb - zero) < end


def _time_base(stream: Any) -> Fraction:
    if not stream.time_base:
        raise OSError(f"stream {stream.index} has no time base")
    return Fraction(stream.time_base)


def _packets(inp: Any, streams: list[Any]) -> Iterator[Any]:
    for packet in inp.demux(streams):
        if packet.size and packet.pts is not None:
            yield packet


def _cut_point(piece: Piece, start: float) -> Fraction:
    """Where in the segment (s after its first video frame) the last key frame at or
    before ``start`` is: a first pass over the video packets, demuxed only."""
    import av

    best = Fraction(0)
    with av.open(str(piece.path)) as inp:
        video = inp.streams.video[0]
        tb = _time_base(video)
        zero: Fraction | None = None
        for packet in _packets(inp, [video]):
            t = packet.pts * tb
            if zero is None:
                zero = t
            if piece.start + float(t - zero) > start + 1e-3:
                break
            if packet.is_keyframe:
                best = t - zero
    return best
