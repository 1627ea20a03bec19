"""Each frame's delay from the emulated camera's capture to its decoding here.

Imported by the bench scripts as ``from framedelay import frame_delays``. The emulated
camera draws its capture time (epoch ms) into every frame (``read_timecode``); the
delay is when the frame is decoded minus that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

import av

from hss_pu.media.sources import read_timecode

__all__ = ["Readable", "frame_delays"]


class Readable(Protocol):
    """What PyAV reads a stream from: a pipe, or a bench's own feed of received bytes."""

    def read(self, n: int, /) -> bytes: ...


def frame_delays(feed: Readable) -> Iterator[tuple[float, float | None]]:
    """(decoded at, epoch s; its delay in s, or None where no time code reads) per frame
    of the MPEG-TS read from ``feed``, as soon as it decodes. PyAV's errors pass through:
    the caller knows whether its feed ending is news."""
    # A small AVIO buffer and no demuxer buffering: a 32 KiB read that waits to fill
    # would add ~130 ms at 2 Mbit/s to what is measured.
    with av.open(feed, format="mpegts", buffer_size=1316, options={"fflags": "nobuffer"}) as c:
        assert isinstance(c, av.container.InputContainer)
        c.streams.video[0].thread_type = "SLICE"
        for frame in c.decode(video=0):
            now = time.time()
            tc = read_timecode(frame)
            yield now, (None if tc is None else now - tc)
