"""What every source shares: the items it yields, the interface, pacing.

A source either hands raw frames to the channel's encoder (:class:`RawVideo`, and
:class:`RawAudio` when it has sound) or already-encoded H.264 (passthrough:
:class:`~hss_pu.media.packets.EncodedPacket`, Annex B with SPS/PPS on key frames). Its
timestamps are in TIME_BASE from its own origin; the channel maps them onto one
monotonic timeline across restarts. Every source runs on the channel's worker thread
and must return from :meth:`Source.read` within about a second so stop stays prompt.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from av.video.frame import VideoFrame

from hss_pu.media.packets import TIME_BASE, EncodedPacket, StreamInfo

__all__ = [
    "HZ",
    "STALL_SECONDS",
    "STOP_POLL",
    "Clock",
    "RawAudio",
    "RawVideo",
    "Source",
    "SourceItem",
    "iter_items",
    "pause",
]

Clock = Callable[[], float]
HZ = TIME_BASE.denominator
STALL_SECONDS = 5.0  # a live source silent this long is treated as gone
STOP_POLL = 0.1  # a pacing wait notices stop within this many seconds


@dataclass(slots=True)
class RawVideo:
    frame: VideoFrame  # yuv420p at the channel's size; never written to after capture
    pts: int  # TIME_BASE, from the source's origin
    capture_time: float  # daemon clock, epoch seconds


@dataclass(slots=True)
class RawAudio:
    samples: np.ndarray  # float32 (channels, n)
    pts: int
    capture_time: float


SourceItem = RawVideo | RawAudio | EncodedPacket


class Source(abc.ABC):
    """Opened, read and closed on the channel's worker thread only."""

    name: str = "source"
    passthrough = False  # read() yields EncodedPacket rather than raw frames
    audio = False  # read() yields RawAudio too: the channel declares an AAC track
    frames_writable = False  # its frames are ours to draw on (not a decoder's references)
    camera_flips = False  # settings.picture's flips are done by the camera itself
    video_info: StreamInfo | None = None  # passthrough: known once SPS/PPS were seen
    dropped = 0  # frames the source itself had to skip
    # Analysis (motion detection): the channel sets ``luma_tap`` before open(); a source
    # that makes its own low-resolution luma (picamera2's lores) calls it with each such
    # plane and its capture time, and sets ``own_luma`` (its frames are then not tapped).
    luma_tap: Callable[[np.ndarray, float], None] | None = None
    # The light on the scene in lux, where the source can tell (picamera2's ``Lux``
    # metadata, the emulated scene); None: unknown. Read by the IR LEDs.
    lux: float | None = None
    own_luma = False
    # Digital zoom (PTZ): the channel sets ``zoom_of`` (the magnification asked now); a
    # source that zooms itself (picamera2's ScalerCrop, the emulated camera's view) sets
    # ``own_zoom``, otherwise the channel crops its frames.
    zoom_of: Callable[[], float] | None = None
    own_zoom = False

    @abc.abstractmethod
    def open(self) -> None:
        """Raise MediaError (SourceUnavailable when worth retrying) if it cannot run."""

    @abc.abstractmethod
    def read(self) -> SourceItem | None:
        """The next item, paced in real time; None when nothing came (check for stop)."""

    def has_ready(self) -> bool:
        """True when the next :meth:`read` returns at once, with no pacing wait."""
        return False

    def close(self) -> None:  # noqa: B027 - most sources have nothing to release
        pass


def pause(stop: threading.Event, seconds: float) -> bool:
    """Wait ``seconds`` for the next item's time; True if ``stop`` was set meanwhile.

    ``time.sleep`` rather than ``stop.wait(seconds)``: a timed Event.wait (a Condition, a
    fresh lock, a timed semaphore wait) cost ~1.8x the CPU of a sleep per wake-up here,
    and sources wait once per frame.
    """
    end = time.monotonic() + seconds
    while not stop.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, STOP_POLL))
    return True


def iter_items(source: Source, limit: int) -> Iterator[SourceItem]:
    """Up to ``limit`` items from an opened source (tests and the benchmark)."""
    n = 0
    while n < limit:
        item = source.read()
        if item is not None:
            n += 1
            yield item
