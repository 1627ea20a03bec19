"""A channel's pictures analysed for alarms: motion (type 3) and, confirming it, people
(type 11), reported to an alarm sink on the event loop.

Where the pictures come from, and what each costs the capture path:

- frames the channel encodes itself (libx264): :meth:`MotionAnalyser.frame` is called for
  every frame as it goes to the encoder (flipped, OSD drawn: regions are in the picture
  viewers see; the OSD is fixed text); about ``rate`` times a second it keeps a strided
  copy of the luma plane (~120 rows; ~10 µs from 720p), otherwise it returns at once;
- a source with its own low-resolution stream (picamera2's ``lores``, made by the ISP):
  :meth:`MotionAnalyser.luma` with that plane, from whichever thread has it;
- passthrough H.264 (files, RTSP, picamera2's hardware encoder without lores): only key
  frames, through :meth:`MotionAnalyser.keyframe`, decoded on the worker (so the analysed
  rate is one frame per GOP: a full decode would cost a Pi Zero more than a core).

The detector runs on a worker thread of its own behind a one-item hand-off that keeps
the newest picture (``dropped`` counts those it replaced): the capture thread never waits
for it. The person detector runs on a second worker, only while motion is active, at
most ``people_rate`` times a second, on a ~240-row grey picture.

Transitions reach the sink through a :class:`~hss_pu.bridge.LoopBridge`, ``at`` being the
capture time of the frame where motion started (or was first gone).

While the camera itself moves (PTZ) every pixel changes: :meth:`MotionAnalyser.suspend`
holds detection until the head has been still for a moment, and the background is then
learnt afresh from the new view, so turning the camera never raises a motion alarm.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import av
import av.error
import numpy as np
from av.video.frame import VideoFrame

from hss_pu.bridge import LoopBridge
from hss_pu.media.motion import (
    MotionDetector,
    Rect,
    Transition,
    analysis_step,
    downscale,
    parse_regions,
)
from hss_pu.media.packets import EncodedPacket
from hss_pu.media.people import PEOPLE_ROWS, PeopleDetector, people_available, score_threshold

__all__ = [
    "ANALYSIS_RATE",
    "PEOPLE_RATE",
    "SETTLE_SECONDS",
    "AnalysisConfig",
    "AnalysisStats",
    "MotionAnalyser",
    "StateSink",
    "parse_alarm_config",
]

log = logging.getLogger("hss_pu.media.analysis")

ANALYSIS_RATE = 5.0  # analysed frames per second
PEOPLE_RATE = 2.0  # person-detector calls per second at most, and only during motion
BODY_END_SECONDS = 3.0  # no person seen this long (motion going on) ends "body"
SETTLE_SECONDS = 0.5  # after the camera last moved, before its pictures are analysed
_PLANAR = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "nv12", "gray")


class StateSink(Protocol):
    """What the analyser reports to (services.interfaces.AlarmSink fits it)."""

    def state(self, channel: int, kind: str, active: bool, at: float) -> None: ...


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """A channel's detection settings (``channels.N.alarms.motion`` and ``.body``)."""

    motion: bool = False
    sensitivity: int = 50
    regions: tuple[Rect, ...] = ()
    body: bool = False
    body_sensitivity: int = 50


def _section(alarms: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    sec = alarms.get(kind, {})
    if not isinstance(sec, Mapping):
        raise ValueError(f"alarms.{kind} must be an object")
    return sec


def _flag(sec: Mapping[str, Any], kind: str) -> bool:
    on = sec.get("on", False)
    if not isinstance(on, bool):
        raise ValueError(f"alarms.{kind}.on must be true or false")
    return on


def _sensitivity(sec: Mapping[str, Any], kind: str) -> int:
    s = sec.get("sensitivity", 50)
    if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s <= 100:
        raise ValueError(f"alarms.{kind}.sensitivity must be a number 0-100")
    return round(s)


def parse_alarm_config(alarms: Mapping[str, Any]) -> AnalysisConfig:
    """A channel's ``alarms`` object (keys ``motion``, ``body``; others ignored) as an
    :class:`AnalysisConfig`. ValueError naming the key when a value is unusable."""
    motion, body = _section(alarms, "motion"), _section(alarms, "body")
    try:
        regions = parse_regions(motion.get("regions", []))
    except ValueError as exc:
        raise ValueError(f"alarms.motion.regions: {exc}") from None
    return AnalysisConfig(
        motion=_flag(motion, "motion"),
        sensitivity=_sensitivity(motion, "motion"),
        regions=regions,
        body=_flag(body, "body"),
        body_sensitivity=_sensitivity(body, "body"),
    )


@dataclass
class AnalysisStats:
    analysed: int = 0  # pictures the motion detector saw
    dropped: int = 0  # pictures replaced in the hand-off before the worker took them
    decode_errors: int = 0  # passthrough key frames that did not decode
    suspended: int = 0  # pictures skipped because the camera was moving (PTZ)
    relearnt: int = 0  # backgrounds learnt afresh after the camera moved
    motion_us_avg: float = 0.0  # detector (and key-frame decode) time per picture
    people_calls: int = 0
    people_ms_avg: float = 0.0
    errors: int = 0  # the worker's own failures (logged)


def _ema(avg: float, x: float, first: bool) -> float:
    return x if first else avg * 0.95 + x * 0.05


def _luma_plane(frame: VideoFrame) -> np.ndarray:
    """A view of the frame's luma (no copy) for the planar formats; else a converted copy."""
    if frame.format.name in _PLANAR:
        p = frame.planes[0]
        rows = np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)
        return rows[:, : frame.width]
    return frame.to_ndarray(format="gray")


def _people_picture(frame: VideoFrame) -> np.ndarray:
    h = min(PEOPLE_ROWS, frame.height)
    w = max(2, round(frame.width * h / frame.height)) & ~1
    return frame.reformat(width=w, height=h, format="gray").to_ndarray()


class _Slot:
    """A one-item hand-off between threads that keeps the newest item."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.item: Any = None
        self.stop = False
        self.wake = False  # something else to look at (the configuration)
        self.busy = False  # the worker is on an item it took

    def put(self, item: Any) -> bool:
        """False when it replaced an item not yet taken."""
        with self.cond:
            replaced = self.item is not None
            self.item = item
            self.cond.notify_all()
        return not replaced

    def poke(self) -> None:
        with self.cond:
            self.wake = True
            self.cond.notify_all()

    def take(self) -> tuple[bool, Any]:
        """(stop, item); the item may be None when poked."""
        with self.cond:
            self.busy = False
            self.cond.notify_all()
            while self.item is None and not self.stop and not self.wake:
                self.cond.wait()
            item, self.item, self.wake = self.item, None, False
            self.busy = not self.stop
            return self.stop, item

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: self.stop or (self.item is None and not self.wake and not self.busy),
                timeout,
            )

    def close(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()


class MotionAnalyser:
    """Motion (and person) detection for one channel. Made on the event loop (its
    LoopBridge binds there); the capture side calls :meth:`frame`, :meth:`luma` or
    :meth:`keyframe` (the channel does, once attached with
    ``MediaChannel.attach_analysis``); :meth:`apply` takes the channel's alarm settings
    live; :meth:`close` ends the workers.
    """

    def __init__(
        self,
        channel: int,
        sink: StateSink,
        clock: Callable[[], float],
        *,
        rate: float = ANALYSIS_RATE,
        people_rate: float = PEOPLE_RATE,
        config: AnalysisConfig | None = None,
        bridge: LoopBridge | None = None,
    ) -> None:
        self.channel = channel
        self.sink = sink
        self.clock = clock
        self.rate = rate
        self.people_rate = people_rate
        self.stats = AnalysisStats()
        self._bridge = bridge if bridge is not None else LoopBridge()
        self.config = config if config is not None else AnalysisConfig()
        self._on = self._detecting(self.config)  # read by the capture side per frame
        self._config_version = 0
        self._min_gap = 0.9 / rate
        self._last_pick = -1e18
        self._want_people = False  # set by the worker, served by the capture side
        self._slot = _Slot()
        self._people_slot = _Slot()
        self._detector = MotionDetector(rate=rate)
        self._applied: AnalysisConfig | None = None
        self._last_t: float | None = None  # the last analysed picture's capture time
        self._interval: float | None = None
        self._people_due = -1e18
        self._people: PeopleDetector | None = None
        self._people_failed = False
        self._body_lock = threading.Lock()
        self._body_active = False
        self._body_last_seen = 0.0
        self._motion_active = False  # the detector's state
        self._reported = False  # ... and what the sink was told (motion may be off)
        self._body_threshold = score_threshold(self.config.body_sensitivity)
        self._hold_until = -1e18  # capture-clock time until which pictures are skipped
        self._relearn_for = -1e18  # the hold the worker last relearnt after
        self._thread = threading.Thread(target=self._run, name=f"motion-ch{channel}", daemon=True)
        self._people_thread: threading.Thread | None = None
        self._thread.start()

    # -- the event loop's side ----------------------------------------------------------

    def apply(self, alarms: Mapping[str, Any] | AnalysisConfig) -> None:
        """The channel's ``alarms`` settings (see :func:`parse_alarm_config`), in force
        from the next picture. Switching motion (or body) off ends its active alarm now.
        Motion is detected while either is on: ``body`` alone still needs motion to
        look for people, it is just not reported. Raises ValueError on an unusable value
        (nothing is changed then)."""
        cfg = alarms if isinstance(alarms, AnalysisConfig) else parse_alarm_config(alarms)
        self.config = cfg
        self._on = self._detecting(cfg)
        self._body_threshold = score_threshold(cfg.body_sensitivity)
        self._slot.poke()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until the workers have dealt with every picture handed over (tests and
        the benchmark feed faster than real time; never call it on the event loop)."""
        deadline = time.monotonic() + timeout
        ok = self._slot.wait_idle(timeout)
        return ok and self._people_slot.wait_idle(max(0.0, deadline - time.monotonic()))

    def suspend(self, seconds: float = SETTLE_SECONDS) -> None:
        """The camera is moving (PTZ): skip pictures until it has been still ``seconds``
        (call it again at every step of the move), then learn the background afresh.
        A plain attribute write, from any thread."""
        self._hold_until = max(self._hold_until, self.clock() + seconds)

    @property
    def suspended(self) -> bool:
        return self.clock() < self._hold_until

    @staticmethod
    def _detecting(cfg: AnalysisConfig) -> bool:
        return cfg.motion or cfg.body

    @property
    def active(self) -> bool:
        """Motion is going on (whether or not it is reported)."""
        return self._motion_active

    async def close(self) -> None:
        """Stop the workers (an active alarm is not ended: the daemon is stopping)."""
        self._on = False
        self._slot.close()
        self._people_slot.close()
        for t in (self._thread, self._people_thread):
            if t is not None and t.is_alive():
                await asyncio.to_thread(t.join, 2.0)

    # -- the capture side: return at once ----------------------------------------------

    def _held(self, capture_time: float) -> bool:
        if capture_time < self._hold_until:
            self.stats.suspended += 1
            return True
        return False

    def frame(self, frame: VideoFrame, capture_time: float) -> None:
        """A raw frame about to be encoded."""
        if not self._on or self._held(capture_time):
            return
        pick = self._due(capture_time)
        if not pick and not self._want_people:
            return
        if pick:
            self._last_pick = capture_time
            plane = _luma_plane(frame)
            self._post(downscale(plane, analysis_step(plane.shape[0])), capture_time)
        if self._want_people:
            self._want_people = False
            self._post_people(_people_picture(frame), capture_time)

    def luma(self, plane: np.ndarray, capture_time: float) -> None:
        """A low-resolution luma plane the source made itself (picamera2's lores); the
        plane may be reused by its owner after this returns."""
        if not self._on or self._held(capture_time):
            return
        if self._due(capture_time):
            self._last_pick = capture_time
            self._post(downscale(plane, analysis_step(plane.shape[0])), capture_time)
        if self._want_people:
            self._want_people = False
            step = max(1, plane.shape[0] // PEOPLE_ROWS)
            self._post_people(downscale(plane, step), capture_time)

    def _due(self, capture_time: float) -> bool:
        """Time for the next analysed picture (a clock set backwards counts as due)."""
        gap = capture_time - self._last_pick
        return gap >= self._min_gap or gap < 0

    def keyframe(self, pkt: EncodedPacket) -> None:
        """A passthrough key frame (Annex B, with SPS/PPS)."""
        if not (self._on and pkt.kind == "video" and pkt.keyframe):
            return
        if self._held(pkt.capture_time):
            return
        if not self._slot.put(("h264", pkt.data, pkt.capture_time)):
            self.stats.dropped += 1

    def _post(self, plane: np.ndarray, capture_time: float) -> None:
        if not self._slot.put(("luma", plane, capture_time)):
            self.stats.dropped += 1

    def _post_people(self, picture: np.ndarray, capture_time: float) -> None:
        self._people_slot.put((picture, capture_time))

    # -- the motion worker -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stop, item = self._slot.take()
            if stop:
                return
            try:
                self._reconfigure()
                if item is not None and self._detecting(self.config):
                    self._analyse(*item)
            except Exception:  # a bug must not end detection for good: log, go on
                self.stats.errors += 1
                if self.stats.errors <= 3:
                    log.exception("channel %d: motion analysis failed", self.channel)

    def _reconfigure(self) -> None:
        cfg = self.config
        if cfg is self._applied:
            return
        old, self._applied = self._applied, cfg
        self._detector.configure(cfg.sensitivity, cfg.regions)
        now = self.clock()
        if not self._detecting(cfg):
            self._detector.stop(now)
            self._motion_active = False
            self._want_people = False
        elif old is not None and not self._detecting(old):
            self._detector.reset()  # pictures missed while off: learn afresh
        if self._reported and not (cfg.motion and self._motion_active):
            self._report_motion(False, now)
        if not (cfg.body and self._motion_active):
            self._end_body(now)

    def _analyse(self, kind: str, data: Any, capture_time: float) -> None:
        hold = self._hold_until
        if capture_time < hold:
            return  # taken before the move began, looked at after: the view is gone
        if hold > self._relearn_for:
            self._relearn_for = hold
            self._detector.reset()  # the first picture of the new view is its background
            self._last_t = None
            self.stats.relearnt += 1
        t0 = time.perf_counter()
        if kind == "h264":
            frame = self._decode(data)
            if frame is None:
                return
            plane = downscale(_luma_plane(frame), analysis_step(frame.height))
        else:
            frame, plane = None, data
        self._track_rate(capture_time)
        tr = self._detector.feed(plane, capture_time)
        st = self.stats
        st.motion_us_avg = _ema(st.motion_us_avg, (time.perf_counter() - t0) * 1e6, not st.analysed)
        st.analysed += 1
        if tr is not None:
            self._motion(tr)
        due = self._motion_active and self.config.body and capture_time >= self._people_due
        if due and self._people_ready():
            self._people_due = capture_time + 1.0 / self.people_rate
            if frame is not None:
                self._post_people(_people_picture(frame), capture_time)
            else:
                self._want_people = True

    def _track_rate(self, t: float) -> None:
        """Passthrough key frames (and slow cameras) come slower than ``rate``: the
        detector's time constants follow the pace pictures really come at."""
        last, self._last_t = self._last_t, t
        if last is None or not 0 < t - last < 10:
            return
        gap = t - last
        iv = self._interval = gap if self._interval is None else self._interval * 0.8 + gap * 0.2
        real = 1.0 / iv
        if abs(real - self._detector.rate) > 0.25 * self._detector.rate:
            self._detector.set_rate(min(real, self.rate * 1.5))

    def _decode(self, data: bytes) -> VideoFrame | None:
        # A fresh decoder per key frame: it outputs the picture at once (a kept one
        # would hold it back for reordering), and a change of stream costs nothing.
        ctx = av.CodecContext.create("h264", "r")
        try:
            frames = ctx.decode(av.Packet(data)) + ctx.decode(None)
        except av.error.FFmpegError as exc:
            self.stats.decode_errors += 1
            if self.stats.decode_errors <= 3:
                log.warning("channel %d: a key frame did not decode: %s", self.channel, exc)
            return None
        return frames[0] if frames else None

    def _motion(self, tr: Transition) -> None:
        self._motion_active = tr.active
        if self.config.motion or self._reported:
            self._report_motion(tr.active, tr.at)
        if not tr.active:
            self._want_people = False
            self._end_body(tr.at)

    def _report_motion(self, active: bool, at: float) -> None:
        if active != self._reported:
            self._reported = active
            self._bridge.call(self.sink.state, self.channel, "motion", active, at)

    # -- people ------------------------------------------------------------------------

    def _people_ready(self) -> bool:
        """The person detector's worker is running (started on first need); False when
        OpenCV is missing (logged once: GetCap says alarms.body false then)."""
        if self._people_thread is not None:
            return True
        if self._people_failed:
            return False
        if not people_available():
            self._people_failed = True
            log.warning("channel %d: person detection unavailable (no OpenCV 4)", self.channel)
            return False
        self._people = PeopleDetector()
        self._people_thread = threading.Thread(
            target=self._run_people, name=f"people-ch{self.channel}", daemon=True
        )
        self._people_thread.start()
        return True

    def _run_people(self) -> None:
        while True:
            stop, item = self._people_slot.take()
            if stop:
                return
            if item is None or not self._motion_active or not self.config.body:
                continue
            picture, t = item
            try:
                self._look_for_people(picture, t)
            except Exception:
                self.stats.errors += 1
                if self.stats.errors <= 3:
                    log.exception("channel %d: person detection failed", self.channel)

    def _look_for_people(self, picture: np.ndarray, t: float) -> None:
        assert self._people is not None
        t0 = time.perf_counter()
        found = self._people.detect(picture, self._body_threshold)
        st = self.stats
        ms = (time.perf_counter() - t0) * 1e3
        st.people_ms_avg = _ema(st.people_ms_avg, ms, not st.people_calls)
        st.people_calls += 1
        with self._body_lock:
            if not self._motion_active:
                return  # motion ended meanwhile: so did "body"
            if found:
                self._body_last_seen = t
                if not self._body_active:
                    self._body_active = True
                    self._bridge.call(self.sink.state, self.channel, "body", True, t)
            elif self._body_active and t - self._body_last_seen >= BODY_END_SECONDS:
                self._body_active = False
                self._bridge.call(self.sink.state, self.channel, "body", False, t)

    def _end_body(self, at: float) -> None:
        with self._body_lock:
            if self._body_active:
                self._body_active = False
                self._bridge.call(self.sink.state, self.channel, "body", False, at)
