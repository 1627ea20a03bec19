"""PTZ motion planning (CtrlPTZ, Table I.2-17): where a move goes, how fast, and when it
stops. Pure: positions in, positions out, times given by the caller.

The readings (docs/protocol.md, "PTZ"): a continuous move (``up`` .. ``zoomout``) runs
at ``value`` speed (0-100, default 50) towards the limit in its direction until
``stop``, the next move, the limit, or :data:`SAFETY_TIMEOUT`; a ``*_step`` moves one
step of size ``value`` (0-100, default 0) at the top speed; ``goto_preset`` moves to the
stored position at the top speed. Pan and tilt are in degrees (right and up positive),
zoom a magnification (1.0 the whole picture).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_SPEED",
    "DEFAULT_STEP",
    "DIRECTIONS",
    "MAX_SPEED_DPS",
    "MAX_STEP_DEG",
    "MAX_ZOOM_RATE",
    "MAX_ZOOM_STEP",
    "MIN_SPEED_DPS",
    "MIN_STEP_DEG",
    "MIN_ZOOM_RATE",
    "MIN_ZOOM_STEP",
    "PRESET_OPS",
    "SAFETY_TIMEOUT",
    "Limits",
    "Motion",
    "Position",
    "advance",
    "move_to",
    "plan",
    "speed_dps",
    "step_deg",
    "zoom_rate",
    "zoom_step",
]

DEFAULT_SPEED = 50  # a continuous move's ``value`` when none is given
DEFAULT_STEP = 0  # a step's ``value`` when none is given (the smallest step)
MIN_SPEED_DPS, MAX_SPEED_DPS = 5.0, 90.0  # pan/tilt at value 0 and 100, degrees/s
MIN_ZOOM_RATE, MAX_ZOOM_RATE = 0.25, 2.0  # zoom at value 0 and 100, magnification/s
MIN_STEP_DEG, MAX_STEP_DEG = 1.0, 30.0  # a pan/tilt step at value 0 and 100
MIN_ZOOM_STEP, MAX_ZOOM_STEP = 0.1, 1.0  # a zoom step at value 0 and 100
# A continuous move whose ``stop`` never came (a lost event, a platform that crashed)
# ends after this long: a camera must not grind against its limit or sweep for ever.
SAFETY_TIMEOUT = 20.0

# (pan, tilt, zoom) sign of each move op, with and without ``_step``.
DIRECTIONS: dict[str, tuple[int, int, int]] = {
    "up": (0, 1, 0),
    "down": (0, -1, 0),
    "left": (-1, 0, 0),
    "right": (1, 0, 0),
    "upleft": (-1, 1, 0),
    "upright": (1, 1, 0),
    "downleft": (-1, -1, 0),
    "downright": (1, -1, 0),
    "zoomin": (0, 0, 1),
    "zoomout": (0, 0, -1),
}
PRESET_OPS = ("goto_preset", "set_preset", "clear_preset")


@dataclass(frozen=True, slots=True)
class Position:
    pan: float = 0.0
    tilt: float = 0.0
    zoom: float = 1.0

    def rounded(self) -> Position:
        """For status and presets: a tenth of a degree, a hundredth of zoom."""
        return Position(round(self.pan, 1), round(self.tilt, 1), round(self.zoom, 2))


@dataclass(frozen=True, slots=True)
class Limits:
    """Where the head may go: the profile's angle ranges, 1.0 .. max_zoom. A device
    without a pan (or tilt, or zoom) axis has that range collapsed to one value."""

    pan: tuple[float, float] = (0.0, 0.0)
    tilt: tuple[float, float] = (0.0, 0.0)
    zoom: tuple[float, float] = (1.0, 1.0)

    def clamp(self, p: Position) -> Position:
        return Position(
            _clamp(p.pan, self.pan), _clamp(p.tilt, self.tilt), _clamp(p.zoom, self.zoom)
        )

    def home(self) -> Position:
        """Straight ahead (0, 0) where the ranges allow, unzoomed."""
        return self.clamp(Position())


@dataclass(frozen=True, slots=True)
class Motion:
    """A move under way: each axis runs towards ``target`` at its ``rate`` (degrees/s,
    magnification/s) and the move ends there, or at ``deadline`` (monotonic s)."""

    target: Position
    rate: Position
    deadline: float | None = None
    label: str = ""


def _clamp(v: float, r: tuple[float, float]) -> float:
    return min(r[1], max(r[0], v))


def _lerp(lo: float, hi: float, value: int) -> float:
    return lo + (hi - lo) * value / 100


def _value(value: int | None, default: int) -> int:
    v = default if value is None else value
    if not 0 <= v <= 100:
        raise ValueError(f"value {v} is outside 0-100")
    return v


def speed_dps(value: int | None) -> float:
    """A continuous pan/tilt move's speed in degrees per second."""
    return _lerp(MIN_SPEED_DPS, MAX_SPEED_DPS, _value(value, DEFAULT_SPEED))


def zoom_rate(value: int | None) -> float:
    """A continuous zoom's speed in magnification per second."""
    return _lerp(MIN_ZOOM_RATE, MAX_ZOOM_RATE, _value(value, DEFAULT_SPEED))


def step_deg(value: int | None) -> float:
    return _lerp(MIN_STEP_DEG, MAX_STEP_DEG, _value(value, DEFAULT_STEP))


def zoom_step(value: int | None) -> float:
    return _lerp(MIN_ZOOM_STEP, MAX_ZOOM_STEP, _value(value, DEFAULT_STEP))


def _top_rate() -> Position:
    return Position(MAX_SPEED_DPS, MAX_SPEED_DPS, MAX_ZOOM_RATE)


def move_to(target: Position, limits: Limits, label: str = "") -> Motion:
    """To ``target`` (clamped to the limits) at the top speed: a preset, a step."""
    return Motion(limits.clamp(target), _top_rate(), None, label)


def plan(op: str, value: int | None, pos: Position, limits: Limits, now: float) -> Motion:
    """The move a direction or zoom op asks for, from ``pos`` at monotonic ``now``.
    ValueError for an op that is not a move (stop, presets) or a value outside 0-100."""
    step = op.endswith("_step")
    base = op[: -len("_step")] if step else op
    if base not in DIRECTIONS:
        raise ValueError(f"{op!r} is not a move")
    dp, dt, dz = DIRECTIONS[base]
    if step:
        deg, z = step_deg(value), zoom_step(value)
        target = Position(pos.pan + dp * deg, pos.tilt + dt * deg, pos.zoom + dz * z)
        return move_to(target, limits, op)
    sp, zr = speed_dps(value), zoom_rate(value)

    def end(sign: int, cur: float, r: tuple[float, float]) -> float:
        return r[1] if sign > 0 else r[0] if sign < 0 else cur

    target = Position(
        end(dp, pos.pan, limits.pan), end(dt, pos.tilt, limits.tilt), end(dz, pos.zoom, limits.zoom)
    )
    rate = Position(sp if dp else 0.0, sp if dt else 0.0, zr if dz else 0.0)
    return Motion(limits.clamp(target), rate, now + SAFETY_TIMEOUT, op)


def _toward(cur: float, target: float, most: float) -> float:
    if target > cur:
        return min(target, cur + most)
    return max(target, cur - most)


def advance(pos: Position, m: Motion, dt: float, now: float) -> tuple[Position, bool]:
    """``pos`` after ``dt`` seconds of ``m`` (ending at monotonic ``now``), and whether
    the move is over (target reached, or its deadline passed)."""
    if m.deadline is not None and now >= m.deadline:
        dt = max(0.0, dt - (now - m.deadline))  # only the part before the deadline
    dt = max(0.0, dt)
    new = Position(
        _toward(pos.pan, m.target.pan, m.rate.pan * dt),
        _toward(pos.tilt, m.target.tilt, m.rate.tilt * dt),
        _toward(pos.zoom, m.target.zoom, m.rate.zoom * dt),
    )
    reached = all(
        r == 0 or v == t
        for v, t, r in (
            (new.pan, m.target.pan, m.rate.pan),
            (new.tilt, m.target.tilt, m.rate.tilt),
            (new.zoom, m.target.zoom, m.rate.zoom),
        )
    )
    return new, reached or (m.deadline is not None and now >= m.deadline)
