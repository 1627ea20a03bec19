"""A channel's saved recording as the console shows it: the timeline and its HLS playlist.

Pure (no I/O, no clock): segments in, the segments of a time range, the gaps between them,
the places a player must be told the timestamps break, and the text of an HLS VOD
playlist (RFC 8216) over the stored files. Times are epoch seconds as the device declared
them in Vr ``create``; a device's segments tile time to within a frame unless
``discontinue`` (wire-notes, Vr), so a hole wider than :data:`GAP_TOLERANCE` is a gap:
the recording was stopped, or segments were lost.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GAP_TOLERANCE",
    "Gap",
    "Segment",
    "breaks",
    "gaps",
    "playlist",
    "positions",
    "select",
    "target_duration",
]

# Wider than a few frames at any frame rate a camera uses (the PU cuts a segment at a hole
# of 3 frames), far narrower than any stop a person would want to see.
GAP_TOLERANCE = 0.5


@dataclass(frozen=True, slots=True)
class Segment:
    """One saved segment: its Vr name and what its ``create`` declared."""

    name: str
    start: float
    duration: float
    size: int
    discontinue: bool

    @property
    def end(self) -> float:
        return self.start + self.duration

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start,
            "duration": self.duration,
            "size": self.size,
            "discontinue": self.discontinue,
        }


@dataclass(frozen=True, slots=True)
class Gap:
    start: float
    end: float

    def to_json(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end}


def select(
    segments: Iterable[Segment], start: float = -math.inf, end: float = math.inf
) -> list[Segment]:
    """The segments that hold some of [start, end] (one that holds the instant ``start``
    when start == end), in time order."""
    found = [s for s in segments if s.end > start and (s.start < end or s.start <= start)]
    return sorted(found, key=lambda s: (s.start, s.name))


def gaps(segments: Sequence[Segment], tolerance: float = GAP_TOLERANCE) -> list[Gap]:
    """The holes between time-ordered segments wider than ``tolerance``."""
    found = []
    reach = -math.inf
    for s in segments:
        if s.start - reach > tolerance and reach != -math.inf:
            found.append(Gap(reach, s.start))
        reach = max(reach, s.end)
    return found


def breaks(segments: Sequence[Segment], tolerance: float = GAP_TOLERANCE) -> list[bool]:
    """Per time-ordered segment: do its timestamps not follow on from the one before?
    It says ``discontinue``, or starts more than ``tolerance`` away from the previous end
    (a gap, or an overlap). Never the first."""
    out = [False] * len(segments)
    for i in range(1, len(segments)):
        s, prev = segments[i], segments[i - 1]
        out[i] = s.discontinue or abs(s.start - prev.end) > tolerance
    return out


def positions(segments: Sequence[Segment]) -> list[float]:
    """Where each segment begins in the playlist's media time: the durations before it
    (a player seeking to an instant adds its offset into the segment)."""
    out, t = [], 0.0
    for s in segments:
        out.append(round(t, 6))
        t += s.duration
    return out


def target_duration(segments: Iterable[Segment]) -> int:
    """EXT-X-TARGETDURATION: every EXTINF rounded to the nearest integer is at most this
    (RFC 8216 4.3.3.1); at least 1."""
    return max((math.floor(s.duration + 0.5) for s in segments), default=1) or 1


def playlist(segments: Sequence[Segment], uri: Callable[[Segment], str]) -> str:
    """An HLS VOD playlist over time-ordered segments (``uri``: each one's URI), with
    EXT-X-DISCONTINUITY where :func:`breaks` says, and the wall-clock time of the first
    segment and of each one after a break (EXT-X-PROGRAM-DATE-TIME)."""
    if not segments:
        raise ValueError("a playlist needs at least one segment")
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",  # decimal EXTINF durations
        f"#EXT-X-TARGETDURATION:{target_duration(segments)}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
    ]
    for i, (s, brk) in enumerate(zip(segments, breaks(segments), strict=True)):
        if brk:
            lines.append("#EXT-X-DISCONTINUITY")
        if brk or i == 0:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_date_time(s.start)}")
        lines += [f"#EXTINF:{s.duration:.3f},", uri(s)]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _date_time(epoch: float) -> str:
    t = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
