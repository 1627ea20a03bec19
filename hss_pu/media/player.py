"""Plays one downloaded media file to an audio output, in real time (PlayVideo).

Two threads per playback, so neither the event loop nor decoding waits on the speaker:

- the *decoder* demuxes and decodes with PyAV: audio is resampled to the output's format
  (s16 stereo at the output's rate, 1024-sample frames); video frames are decoded for the
  null display and only their times are passed on;
- the *output* thread takes them from a :class:`Handover` (bounded in items and bytes)
  and releases each at its time on the stream's clock, anchored at the first frame:
  pacing follows the file's timestamps, not how fast it decodes. Pause stops the clock
  (and the writes); resume carries on from where it stopped.

A sink is an FFmpeg output device through PyAV: ``alsa`` (a speaker; the device blocks
when its buffer is full, so frames go out ``lead`` seconds ahead of the clock to keep it
from running dry) or FFmpeg's ``null`` muxer (the emulated camera; the same encode and
mux path, nothing heard). A file that cannot be opened, decoded or played, or that ends
early, ends the playback with an error in its :class:`PlayResult`: never an exception
out of a thread.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import av
import av.container

from hss_pu.threadname import set_native_name

__all__ = [
    "MAX_STEP",
    "Handover",
    "OutputSpec",
    "PlayResult",
    "Player",
    "alsa_environment",
    "open_sink",
]

log = logging.getLogger("hss_pu.playback")

OUT_LAYOUT: Final = "stereo"
OUT_FORMAT: Final = "s16"
OUT_FRAME: Final = 1024  # samples per resampled frame (21 ms at 48 kHz)
BYTES_PER_SAMPLE: Final = 4  # s16 stereo
# A timestamp more than this past the previous one is a jump (a broken or hostile file):
# the clock moves on by this much at most, so a file cannot hold "playing" for hours.
MAX_STEP: Final = 1.0
# The video the null display decodes; a larger picture is not decoded (a hostile file
# must not cost a Pi Zero its memory).
MAX_VIDEO_PIXELS: Final = 1920 * 1088
ALSA_LEAD: Final = 0.2  # seconds of audio kept queued in the ALSA device
QUEUE_ITEMS: Final = 96  # about 2 s of 1024-sample frames at 48 kHz
QUEUE_BYTES: Final = QUEUE_ITEMS * OUT_FRAME * BYTES_PER_SAMPLE


@dataclass(frozen=True)
class OutputSpec:
    """Where a channel's sound goes: ``null`` (no sound, still paced) or an ALSA PCM."""

    kind: Literal["null", "alsa"]
    device: str
    rate: int

    @property
    def lead(self) -> float:
        return ALSA_LEAD if self.kind == "alsa" else 0.0

    def describe(self) -> str:
        return "null sink" if self.kind == "null" else f"ALSA {self.device}"


def alsa_environment(environ: dict[str, str] | None = None) -> None:
    """Point PyAV's own ALSA library at the system's configuration.

    The PyAV wheel bundles alsa-lib built to look for its configuration under a build
    path (/tmp/vendor/share/alsa), so every PCM name, even ``default`` or ``hw:0``, is
    "Unknown PCM" unless ALSA_CONFIG_DIR names the system's. Called once, on the event
    loop thread, before any playback thread opens a device; a value already set wins.
    """
    env = os.environ if environ is None else environ
    if "ALSA_CONFIG_DIR" not in env and Path("/usr/share/alsa/alsa.conf").is_file():
        env["ALSA_CONFIG_DIR"] = "/usr/share/alsa"


class _AvSink:
    """PCM to an FFmpeg output device (ALSA or the null muxer) through PyAV."""

    def __init__(self, spec: OutputSpec) -> None:
        target = spec.device if spec.kind == "alsa" else "null"
        self._c: Any = av.open(target, "w", format=spec.kind)
        self._s: Any = self._c.add_stream("pcm_s16le", rate=spec.rate, layout=OUT_LAYOUT)

    def write(self, frame: av.AudioFrame) -> None:
        for packet in self._s.encode(frame):
            self._c.mux(packet)

    def close(self) -> None:
        try:
            for packet in self._s.encode(None):
                self._c.mux(packet)
        finally:
            self._c.close()


def open_sink(spec: OutputSpec) -> _AvSink:
    """The output opened (the device itself opens at the first write)."""
    return _AvSink(spec)


@dataclass(frozen=True)
class _Item:
    t: float  # seconds on the stream's clock, from the first frame
    frame: av.AudioFrame | None  # None: a video frame, shown on the null display
    nbytes: int = 0


@dataclass(frozen=True)
class _End:
    t: float  # when the last frame ends
    error: str | None = None


class Handover:
    """A queue between two threads, bounded in items and in bytes; ``close`` wakes both
    sides for good (put then returns False, get returns None)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._q: collections.deque[tuple[object, int]] = collections.deque()
        self._bytes = 0
        self._closed = False
        self._cv = threading.Condition()

    def put(self, item: object, nbytes: int = 0) -> bool:
        with self._cv:
            while (
                not self._closed
                and self._q
                and (len(self._q) >= self.max_items or self._bytes + nbytes > self.max_bytes)
            ):
                self._cv.wait()
            if self._closed:
                return False
            self._q.append((item, nbytes))
            self._bytes += nbytes
            self._cv.notify_all()
            return True

    def get(self) -> object | None:
        with self._cv:
            while not self._q and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            item, nbytes = self._q.popleft()
            self._bytes -= nbytes
            self._cv.notify_all()
            return item

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._q.clear()
            self._bytes = 0
            self._cv.notify_all()

    @property
    def size(self) -> tuple[int, int]:
        with self._cv:
            return len(self._q), self._bytes


@dataclass
class PlayResult:
    """How a playback ended: ``end`` (played to the end), ``stopped`` (asked), or
    ``error`` (``error`` says what; ``played`` how much went out before)."""

    reason: Literal["end", "stopped", "error"]
    error: str | None = None
    played: float = 0.0  # seconds of the stream's clock that went out
    audio_frames: int = 0
    video_frames: int = 0
    late_video: int = 0  # video frames more than half a second late (not "shown")
    expected: float | None = None  # the duration the file declares, if it does


@dataclass
class _Clock:
    """The stream's clock: runs from the first frame, stands still while paused."""

    started: float | None = None
    paused_at: float | None = None
    paused_total: float = 0.0

    def now(self, mono: float) -> float:
        if self.started is None:
            return 0.0
        held = self.paused_total + (mono - self.paused_at if self.paused_at is not None else 0)
        return mono - self.started - held


class Player:
    """One file, played once; control methods are thread-safe and never block."""

    def __init__(
        self,
        path: Path,
        output: OutputSpec,
        on_end: Callable[[PlayResult], None],
        *,
        name: str = "play",
        sink_factory: Callable[[OutputSpec], Any] = open_sink,
    ) -> None:
        self.path = path
        self.output = output
        self._on_end = on_end
        self._name = name
        self._sink_factory = sink_factory
        self._handover = Handover(QUEUE_ITEMS, QUEUE_BYTES)
        self._cv = threading.Condition()
        self._stop = False
        self._paused = False
        self._clock = _Clock()
        self.result = PlayResult("end")
        self._decoder = threading.Thread(target=self._decode, name=f"{name}-dec", daemon=True)
        self._output = threading.Thread(target=self._play, name=f"{name}-out", daemon=True)

    # --- control (any thread) ---------------------------------------------------------

    def start(self, *, paused: bool = False) -> None:
        self._paused = paused
        self._decoder.start()
        self._output.start()

    def pause(self) -> None:
        with self._cv:
            if not self._paused:
                self._paused = True
                if self._clock.started is not None:  # else the clock has not started yet
                    self._clock.paused_at = time.monotonic()
            self._cv.notify_all()

    def resume(self) -> None:
        with self._cv:
            if self._paused:
                self._paused = False
                if self._clock.paused_at is not None:
                    self._clock.paused_total += time.monotonic() - self._clock.paused_at
                    self._clock.paused_at = None
            self._cv.notify_all()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._handover.close()

    @property
    def position(self) -> float:
        """Seconds of the stream played so far."""
        with self._cv:
            return max(0.0, self._clock.now(time.monotonic()))

    # --- the decoder thread -------------------------------------------------------------

    def _decode(self) -> None:
        set_native_name(f"{self._name}-dec")
        end = 0.0
        error: str | None = None
        try:
            end = self._decode_file()
        except Exception as exc:  # a bad file is a result, not a crash (av.FFmpegError, ...)
            error = f"{type(exc).__name__}: {exc}"[:300]
        self._handover.put(_End(end, error))

    def _decode_file(self) -> float:
        """Decode into the hand-over; the stream's end time (seconds from the first frame)."""
        with av.open(str(self.path), "r") as c:
            if c.duration is not None and c.duration > 0:
                self.result.expected = c.duration / 1_000_000  # read at the end, after _End
            audio = c.streams.audio[0] if c.streams.audio else None
            video = c.streams.video[0] if c.streams.video else None
            if video is not None:
                ctx = video.codec_context
                if (ctx.width or 0) * (ctx.height or 0) > MAX_VIDEO_PIXELS:
                    log.info("%s: %dx%d video not decoded", self._name, ctx.width, ctx.height)
                    video = None
            if audio is None and video is None:
                raise ValueError("no audio or video stream")
            if video is not None:
                video.thread_type = "AUTO"
            resampler = av.AudioResampler(
                format=OUT_FORMAT, layout=OUT_LAYOUT, rate=self.output.rate, frame_size=OUT_FRAME
            )
            tl = _Timeline()
            audio0: float | None = None  # the resampler counts from 0: its first input's time
            streams = [s for s in (audio, video) if s is not None]
            for packet in c.demux(*streams):
                if self._stop:
                    return tl.end
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        if audio0 is None:
                            audio0 = frame.time or 0.0
                        for out in resampler.resample(frame):
                            if not self._put_audio(tl, audio0, out):
                                return tl.end
                    elif (
                        isinstance(frame, av.VideoFrame)
                        and frame.time is not None
                        and not self._handover.put(_Item(tl.at(frame.time, 0.0), None))
                    ):
                        return tl.end
            if audio0 is not None:
                for out in resampler.resample(None):
                    if not self._put_audio(tl, audio0, out):
                        break
            return tl.end

    def _put_audio(self, tl: _Timeline, audio0: float, frame: av.AudioFrame) -> bool:
        t = audio0 + float(frame.pts or 0) / self.output.rate
        nbytes = frame.samples * BYTES_PER_SAMPLE
        return self._handover.put(
            _Item(tl.at(t, frame.samples / self.output.rate), frame, nbytes), nbytes
        )

    # --- the output thread ---------------------------------------------------------------

    def _play(self) -> None:
        set_native_name(f"{self._name}-out")
        r = self.result
        sink: Any = None
        try:
            while True:
                item = self._handover.get()
                if item is None:
                    r.reason = "stopped"
                    break
                if isinstance(item, _End):
                    if item.error is not None:
                        r.reason, r.error = "error", item.error
                    if r.audio_frames == 0 and r.video_frames == 0 and r.error is None:
                        r.reason, r.error = "error", "nothing to play in the file"
                    if not self._wait_until(item.t, 0.0) and r.reason == "end":
                        r.reason = "stopped"
                    break
                assert isinstance(item, _Item)
                if not self._wait_until(item.t, self.output.lead):
                    r.reason = "stopped"
                    break
                if item.frame is None:
                    r.video_frames += 1
                    with self._cv:
                        late = self._clock.now(time.monotonic()) - item.t
                    r.late_video += late > 0.5
                    continue
                if sink is None:
                    sink = self._sink_factory(self.output)
                sink.write(item.frame)
                r.audio_frames += 1
        except Exception as exc:  # the device failed (no card, unplugged USB speaker, ...)
            r.reason, r.error = "error", f"{self.output.describe()}: {type(exc).__name__}: {exc}"
        finally:
            self._handover.close()  # a decoder still running stops at its next put
            if sink is not None:
                try:
                    sink.close()
                except Exception as exc:
                    log.debug("%s: closing the output: %s", self._name, exc)
            self._decoder.join(timeout=5)
            r.played = self.position
            self._on_end(r)

    def _wait_until(self, t: float, lead: float) -> bool:
        """Wait until the clock reaches ``t - lead`` (paused time does not count); False
        when stopped first. The first call starts the clock."""
        with self._cv:
            while True:
                if self._stop:
                    return False
                mono = time.monotonic()
                if self._clock.started is None and not self._paused:
                    self._clock.started = mono
                if self._paused or self._clock.started is None:
                    self._cv.wait()
                    continue
                left = t - lead - self._clock.now(mono)
                if left <= 0:
                    return True
                self._cv.wait(left)


@dataclass
class _Timeline:
    """Frame times made relative to the first frame, with jumps taken out: a frame more
    than MAX_STEP after (or before) the previous one is taken to follow on from it, so
    pacing follows the file but a broken timestamp cannot stall it for hours."""

    origin: float | None = None
    last: float = 0.0
    end: float = 0.0
    jumps: int = 0

    def at(self, time_s: float, duration: float) -> float:
        if self.origin is None:
            self.origin = time_s
        t = time_s - self.origin
        if t > self.last + MAX_STEP or t < self.last - MAX_STEP:
            self.jumps += 1
            self.origin += t - self.end
            t = self.end
        self.last = max(self.last, t)
        self.end = max(self.end, t + duration)
        return t
