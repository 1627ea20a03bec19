"""The console's recording timeline and HLS playlist text (pure: console/timeline.py)."""

from __future__ import annotations

import math
import re

from hypothesis import given
from hypothesis import strategies as st

from hss_pu.reference_platform.console.timeline import (
    Gap,
    Segment,
    breaks,
    gaps,
    playlist,
    positions,
    select,
    target_duration,
)

T0 = 1_700_000_000.0


def seg(name: str, start: float, duration: float, discontinue: bool = False) -> Segment:
    return Segment(name, T0 + start, duration, 1000, discontinue)


# Session 1: 0-6 s in 2 s segments and a one-frame tail; stopped; session 2 from 9 s.
A = [seg("a1", 0, 2, True), seg("a2", 2, 2), seg("a3", 4, 2), seg("a4", 6, 0.067)]
B = [seg("b1", 9.1, 2, True), seg("b2", 11.1, 2.5)]


def test_select_is_time_ordered_and_keeps_what_overlaps() -> None:
    shuffled = [B[1], A[2], A[0], B[0], A[3], A[1]]
    assert select(shuffled) == A + B
    assert select(shuffled, T0 + 3, T0 + 10) == [A[1], A[2], A[3], B[0]]
    assert select(shuffled, T0 + 2, T0 + 4) == [A[1]]  # ends and starts are not overlaps
    assert select(shuffled, T0 + 3, T0 + 3) == [A[1]]  # an instant: the segment holding it
    assert select(shuffled, T0 + 7, T0 + 9) == []  # inside the gap
    assert select(shuffled, T0 + 100, T0 + 200) == []


def test_gaps_are_where_the_recording_stopped() -> None:
    whole = A + B
    assert gaps(whole) == [Gap(T0 + 6.067, T0 + 9.1)]
    assert gaps(A) == []
    assert gaps([]) == []
    # Within a frame is not a gap; a hole of a second is one even without discontinue.
    jitter = [seg("x", 0, 2), seg("y", 2.04, 2), seg("z", 5.04, 1)]
    assert gaps(jitter) == [Gap(T0 + 4.04, T0 + 5.04)]
    # A long segment covering a shorter one's end: the gap starts at the furthest end.
    nested = [seg("p", 0, 10), seg("q", 1, 2), seg("r", 12, 1)]
    assert gaps(nested) == [Gap(T0 + 10, T0 + 12)]


def test_breaks_at_discontinue_gaps_and_overlaps_never_first() -> None:
    assert breaks(A + B) == [False, False, False, False, True, False]
    assert breaks([seg("x", 0, 2), seg("y", 2, 2, True)]) == [False, True]  # flag alone
    assert breaks([seg("x", 0, 2), seg("y", 3, 2)]) == [False, True]  # gap alone
    assert breaks([seg("x", 0, 2), seg("y", 1, 2)]) == [False, True]  # overlap
    assert breaks([seg("x", 0, 2, True)]) == [False]


def test_target_duration_is_the_largest_rounded_extinf() -> None:
    assert target_duration(A + B) == 3  # 2.5 rounds up (RFC 8216: nearest integer)
    assert target_duration([seg("x", 0, 2.49)]) == 2
    assert target_duration([seg("x", 0, 0.067)]) == 1
    assert target_duration([]) == 1


def test_playlist_text() -> None:
    text = playlist(A + B, lambda s: f"seg/{s.name}.ts")
    assert text == (
        "#EXTM3U\n"
        "#EXT-X-VERSION:3\n"
        "#EXT-X-TARGETDURATION:3\n"
        "#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXT-X-PLAYLIST-TYPE:VOD\n"
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n"
        "#EXTINF:2.000,\nseg/a1.ts\n"
        "#EXTINF:2.000,\nseg/a2.ts\n"
        "#EXTINF:2.000,\nseg/a3.ts\n"
        "#EXTINF:0.067,\nseg/a4.ts\n"
        "#EXT-X-DISCONTINUITY\n"
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:29.100Z\n"
        "#EXTINF:2.000,\nseg/b1.ts\n"
        "#EXTINF:2.500,\nseg/b2.ts\n"
        "#EXT-X-ENDLIST\n"
    )


def test_positions_are_the_media_time_before_each_segment() -> None:
    assert positions(A + B) == [0, 2, 4, 6, 6.067, 8.067]


segments = st.lists(
    st.builds(
        Segment,
        name=st.from_regex(r"ch0-[0-9]{1,4}-[0-9a-f]{8}", fullmatch=True),
        start=st.floats(T0, T0 + 86_400, allow_nan=False),
        duration=st.floats(0.001, 600, allow_nan=False),
        size=st.integers(1, 1 << 24),
        discontinue=st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


@given(segments)
def test_any_playlist_is_well_formed(segs: list[Segment]) -> None:
    ordered = select(segs)
    text = playlist(ordered, lambda s: s.name + ".ts")
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and lines[-1] == "#EXT-X-ENDLIST"
    target = int(lines[2].removeprefix("#EXT-X-TARGETDURATION:"))
    extinf = [float(m) for m in re.findall(r"^#EXTINF:([0-9.]+),$", text, re.M)]
    assert len(extinf) == len(ordered)
    assert all(math.floor(d + 0.5) <= target for d in extinf)
    assert math.isclose(sum(extinf), sum(s.duration for s in ordered), abs_tol=len(ordered) * 5e-4)
    assert text.count("#EXT-X-DISCONTINUITY\n") == sum(breaks(ordered))
    assert [ln for ln in lines if not ln.startswith("#")] == [s.name + ".ts" for s in ordered]
    # Gaps never overlap a segment and lie in time order.
    for g in gaps(ordered):
        assert g.start < g.end
        assert not any(s.start < g.end and s.end > g.start for s in ordered)
