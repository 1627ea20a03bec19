"""Motion detection on a small luma plane. Pure: numpy only, no I/O, no clocks, no threads.

What it does per analysed frame (a plane of ~120 rows, a few times a second), and why:

1. A [1 2 1] blur: sensor noise (worst in the dark, under IR) must not reach the
   difference; it also softens the aliasing of the strided downscale.
2. A global photometric fit ``frame ≈ a·background + b`` (least squares over the whole
   picture, two dot products): the camera's exposure, a lamp, clouds, flickering IR LEDs
   change every pixel alike, and are taken out *before* differencing instead of being
   detected and then recovered from. The background is "re-lit" with the same fit, so a
   lighting change costs no blind frames at all.
3. ``|frame - relit background| > max(floor, k · noise)``: the noise level is learnt from
   the quiet frames (a clipped mean: no per-frame percentiles), so a noisy night picture
   raises its own threshold.
4. A 2x2 erosion (isolated pixels are noise, an object covers neighbours), the motion
   regions, and a minimum changed area; and some of those pixels must also have changed
   since the last frame: a change that stays put (a moved chair, what is left of a
   lighting change) is not motion, and is absorbed into the background within seconds.
5. What the fit could not explain and changes a large part of the picture at once (the
   IR-cut filter switching to a monochrome picture, a lamp lighting half the room) while
   nothing was moving: the background is re-learnt from this frame and the frame counts
   as no motion. The detector sees again from the next frame on (Motion's
   ``lightswitch_frames`` blinded it for frames, users' work-arounds for seconds). A
   large change while motion is under way (a visitor filling a door-bell picture)
   still counts as motion (Frigate's ``lightning_threshold`` missed that case); a lone
   frame of a run that had not started yet does not (the noise of a picture that has
   just gone dark, before the IR LEDs switch on).
6. Persistence: motion in ``start_frames`` analysed frames in a row (one quiet frame
   forgiven) starts it; no motion for :data:`END_SECONDS` ends it. Unchanged pixels
   follow the scene quickly (2 s), changed ones that keep still in ~6 s, moving ones
   slowly (20 s), so a walker is not absorbed while it walks.

Sensitivity 0-100 maps to the thresholds of :func:`thresholds` (the table is in
docs/protocol.md, reading 22). Cost: ~0.1 ms per analysed frame at 120 rows on a laptop
core, no per-frame percentile or sort (bench/motion.py); the caller downscales with
:func:`downscale` (a strided copy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ANALYSIS_ROWS",
    "MotionDetector",
    "Rect",
    "Thresholds",
    "Transition",
    "analysis_step",
    "downscale",
    "parse_regions",
    "thresholds",
]

ANALYSIS_ROWS = 120  # the analysed plane's height, about (Frigate: 100; older 180)
END_SECONDS = 1.0  # quiet this long ends motion (the alarm service then adds its hold)
WARMUP_SECONDS = 1.0  # learning the first background and its noise: no detection yet
BG_TAU = 2.0  # s: how fast an unchanged pixel follows the scene (sun, shadows)
STILL_TAU = 6.0  # s: a changed pixel that keeps still (a light's residue, a moved chair)
FG_TAU = 20.0  # s: a changed pixel that keeps changing (what moves is not absorbed)
NOISE_TAU = 5.0  # s: the noise level's memory (over quiet frames only)
LIGHT_FRACTION = 0.25  # changed at once with nothing moving before: a lighting change
HUGE_FRACTION = 0.6  # changed at once, whatever was moving: re-learn (stays motion)
MAX_REGIONS = 16

Rect = tuple[float, float, float, float]  # x, y, w, h in 0-1 picture coordinates


@dataclass(frozen=True, slots=True)
class Thresholds:
    floor: float  # luma levels: a pixel changed by less never counts
    noise_k: float  # ... nor by less than this many times the learnt noise level
    min_area: float  # fraction of the picture that must change
    start_seconds: float  # motion must persist this long to start


# (sensitivity, floor, noise_k, min_area, start_seconds): interpolated in between.
_TABLE = (
    (0, 40.0, 6.0, 0.02, 1.0),
    (50, 20.0, 4.5, 0.003, 0.4),
    (100, 10.0, 3.5, 0.0008, 0.2),
)


def thresholds(sensitivity: int) -> Thresholds:
    """The thresholds of a sensitivity 0-100 (clamped): linear between the table's rows,
    the area geometric (each step a constant ratio)."""
    s = min(100, max(0, int(sensitivity)))
    lo, hi = (_TABLE[0], _TABLE[1]) if s <= 50 else (_TABLE[1], _TABLE[2])
    f = (s - lo[0]) / (hi[0] - lo[0])

    def lin(i: int) -> float:
        return lo[i] + (hi[i] - lo[i]) * f

    area = math.exp(math.log(lo[3]) + (math.log(hi[3]) - math.log(lo[3])) * f)
    return Thresholds(lin(1), lin(2), area, lin(4))


@dataclass(frozen=True, slots=True)
class Transition:
    active: bool
    at: float  # the capture time of the frame where motion started / was first gone


def analysis_step(height: int, rows: int = ANALYSIS_ROWS) -> int:
    """The stride that brings a plane of ``height`` rows to about ``rows``."""
    return max(1, round(height / rows))


def downscale(plane: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th pixel of every ``step``-th row, copied (the frame's buffer is
    reused or painted on after this; so even at step 1). ~10 µs from 720p: no
    full-resolution arithmetic."""
    return plane[::step, ::step].copy()


def parse_regions(value: object) -> tuple[Rect, ...]:
    """``[[x, y, w, h], ...]`` in 0-1 picture coordinates; ValueError naming the problem.
    An empty list means the whole picture."""
    if not isinstance(value, list | tuple):
        raise ValueError("regions must be a list of [x, y, w, h]")
    if len(value) > MAX_REGIONS:
        raise ValueError(f"at most {MAX_REGIONS} regions")
    out = []
    for i, r in enumerate(value):
        if (
            not isinstance(r, list | tuple)
            or len(r) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in r)
        ):
            raise ValueError(f"region {i}: expected [x, y, w, h] (numbers)")
        x, y, w, h = (float(v) for v in r)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise ValueError(f"region {i}: not a finite number")
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > 1.0 + 1e-9 or y + h > 1.0 + 1e-9:
            raise ValueError(f"region {i}: x, y >= 0, w, h > 0 and x + w, y + h <= 1")
        out.append((x, y, w, h))
    return tuple(out)


def _mask(shape: tuple[int, int], regions: Iterable[Rect]) -> np.ndarray | None:
    """The regions on a grid of ``shape`` (True inside); None for the whole picture."""
    rows, cols = shape
    m = np.zeros(shape, dtype=bool)
    empty = True
    for x, y, w, h in regions:
        empty = False
        r0, r1 = math.floor(y * rows), math.ceil((y + h) * rows)
        c0, c1 = math.floor(x * cols), math.ceil((x + w) * cols)
        m[r0:r1, c0:c1] = True
    return None if empty else m


def _blur(p: np.ndarray) -> np.ndarray:
    """[1 2 1]/4 both ways, edges replicated; float32 in and out."""
    v = np.empty_like(p)
    v[1:-1] = p[1:-1] * 0.5 + (p[:-2] + p[2:]) * 0.25
    v[0], v[-1] = p[0], p[-1]
    out = np.empty_like(p)
    out[:, 1:-1] = v[:, 1:-1] * 0.5 + (v[:, :-2] + v[:, 2:]) * 0.25
    out[:, 0], out[:, -1] = v[:, 0], v[:, -1]
    return out


def _alpha(tau: float, rate: float) -> float:
    return 1.0 - math.exp(-1.0 / (tau * rate))


class MotionDetector:
    """Feed it every analysed plane (uint8, ~48 to ~240 rows; the size may change, which
    re-learns) with its capture time; it answers a :class:`Transition` when motion
    starts or ends.

    ``rate``: analysed frames per second (the time constants and the persistence are in
    seconds). Not thread-safe: one thread feeds and configures it.
    """

    def __init__(
        self, *, rate: float = 5.0, sensitivity: int = 50, regions: Sequence[Rect] = ()
    ) -> None:
        self.rate = 1.0
        self.th = thresholds(sensitivity)
        self.regions: tuple[Rect, ...] = tuple(regions)
        self.active = False
        self.area = 0.0  # the last frame's changed area (fraction of the picture)
        self.changed = 0.0  # the last frame's changed pixels before despeckling
        self.light_changes = 0  # frames taken as a lighting change (re-learnt)
        self.frames = 0
        self._bg: np.ndarray | None = None
        self._prev: np.ndarray | None = None  # the last frame's residual
        self._mask: np.ndarray | None = None
        self._noise = 1.0
        self._run = 0  # analysed frames with motion in a row
        self._gap = 0  # quiet frames since the last motion frame
        self._run_start = 0.0
        self._quiet_since: float | None = None
        self._seen = 0  # frames since the background was started
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        self.rate = max(0.1, float(rate))
        r = self.rate
        self._a_bg, self._a_still, self._a_fg, self._a_noise = (
            _alpha(t, r) for t in (BG_TAU, STILL_TAU, FG_TAU, NOISE_TAU)
        )
        self._warmup = max(3, math.ceil(WARMUP_SECONDS * r))
        self._start_frames = max(2 if r >= 2 else 1, round(self.th.start_seconds * r))

    def configure(self, sensitivity: int, regions: Sequence[Rect] = ()) -> None:
        """A new sensitivity and regions, applied from the next frame; the background is
        kept (no re-learning, no blind time)."""
        self.th = thresholds(sensitivity)
        self.regions = tuple(regions)
        self._mask = None if self._bg is None else self._region_mask(self._bg.shape)
        self.set_rate(self.rate)

    def reset(self) -> None:
        """Forget the background (the picture changed size or source, the camera turned);
        not the state."""
        self._bg = None
        self._prev = None

    def _region_mask(self, shape: tuple[int, ...]) -> np.ndarray | None:
        m = _mask((shape[0], shape[1]), self.regions)
        return None if m is None else m[:-1, :-1] & m[1:, 1:]  # on the eroded grid

    def feed(self, plane: np.ndarray, at: float) -> Transition | None:
        self.frames += 1
        cur = _blur(plane.astype(np.float32))
        bg = self._bg
        if bg is None or bg.shape != cur.shape:
            self._bg = cur
            self._mask = self._region_mask(cur.shape)
            self._seen = 1
            return self._quiet(at)
        self._seen += 1
        warming = self._seen <= self._warmup
        n = cur.size
        # cur ≈ a·bg + b over the whole picture.
        mb, mc = float(bg.mean()), float(cur.mean())
        db = (bg - mb).ravel()
        var = float(np.dot(db, db)) / n
        a = float(np.dot(db, cur.ravel())) / (n * var) if var > 4.0 else 1.0
        a = min(2.0, max(0.5, a))
        pred = bg * a + (mc - a * mb)
        r = cur - pred
        ar = np.abs(r)
        th = self.th
        limit = max(th.floor, th.noise_k * self._noise)
        m = ar > limit
        changed = float(np.count_nonzero(m)) / n
        self.changed = changed
        if warming:
            self._noise += (float(np.minimum(ar, limit).mean()) - self._noise) * 0.5
            pred += r * 0.5
            self._bg = pred
            return self._quiet(at)
        # Only motion already under way makes a large change motion: a lone frame of a
        # run (noise right after night fell, before the noise level caught up) must not
        # turn the IR LEDs switching on a moment later into an alarm.
        busy = self.active
        if changed > HUGE_FRACTION or (changed > LIGHT_FRACTION and not busy):
            # A lighting change the fit could not explain: see again from the next frame.
            self._bg = cur
            self._prev = None
            self.light_changes += 1
            self.area = 0.0
            if busy:
                return self._motion(at)
            self._run = 0  # what led up to it was the light, not something moving
            return None
        e = m[:-1, :-1] & m[1:, :-1] & m[:-1, 1:] & m[1:, 1:]
        mask = self._mask
        if mask is not None:
            e &= mask
            need = min(th.min_area * n, np.count_nonzero(mask) / 4)
        else:
            need = th.min_area * n
        need = max(4.0, need)
        # Moving: changed from the background *and* since the last frame. A change that
        # stays put (a light's residue, a parked car, a moved chair) is not motion, and is
        # absorbed within seconds; what moves is absorbed slowly.
        prev, self._prev = self._prev, r
        moved = np.abs(r - prev) > limit if prev is not None and prev.shape == r.shape else m
        mv = e & moved[:-1, :-1]
        count = np.count_nonzero(e)
        moving = np.count_nonzero(mv)
        self.area = count / n
        motion = count >= need and moving >= need / 10
        a_changed = np.where(moved, np.float32(self._a_fg), np.float32(self._a_still))
        pred += r * np.where(m, a_changed, np.float32(self._a_bg))
        self._bg = pred
        if motion:
            return self._motion(at)
        self._noise += (float(np.minimum(ar, limit).mean()) - self._noise) * self._a_noise
        return self._quiet(at)

    def _motion(self, at: float) -> Transition | None:
        if self._run == 0:
            self._run_start = at
        self._run += 1
        self._gap = 0
        self._quiet_since = None
        if not self.active and self._run >= self._start_frames:
            self.active = True
            return Transition(True, self._run_start)
        return None

    def _quiet(self, at: float) -> Transition | None:
        self._gap += 1
        if self._gap > 1:
            self._run = 0
        if not self.active:
            return None
        if self._quiet_since is None or at < self._quiet_since:  # (a clock set back)
            self._quiet_since = at
        if at - self._quiet_since >= END_SECONDS - 0.5 / self.rate:
            self.active = False
            since, self._quiet_since = self._quiet_since, None
            return Transition(False, since)
        return None

    def stop(self, at: float) -> Transition | None:
        """Detection switched off: an active motion ends now."""
        self._run = 0
        self._quiet_since = None
        if self.active:
            self.active = False
            return Transition(False, at)
        return None
