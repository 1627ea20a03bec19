"""PTZ: CtrlPTZ's 24 ops and GetPTZPresetList for the device's one pan/tilt/zoom head.

The head is on channel 0 (the camera it carries); its moves are planned by
:mod:`hss_pu.wire.ptz` and run here as one task that steps the position every
:data:`TICK` and hands each new position to the outputs (the servos, the channel's
digital zoom, the emulated camera's view, the motion detector's pause). A new op
replaces the move under way, so a platform that sends ``left`` then ``up`` gets what a
joystick gives.

Presets (ids 0-255, at most the profile's ``presets`` at once) are stored in
``ptz-presets.json`` under ``storage.dir``, written atomically off the event loop.
CtrlPTZ is an event: what cannot be done (an unknown preset, a full preset table, a
value outside 0-100) raises InvalidParam, which the Vd session logs; nothing is replied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec

from hss_pu.errors import InvalidParam, NotSupported
from hss_pu.fsutil import atomic_write
from hss_pu.profiles import PtzSpec
from hss_pu.wire.ptz import Limits, Motion, Position, advance, move_to, plan
from hss_pu.wire.vd import CtrlPTZParams

__all__ = ["PRESETS_FILE", "TICK", "PresetStore", "PtzService", "limits_for"]

log = logging.getLogger("hss_pu.ptz")

TICK = 0.02  # s between two positions of a move: 50 Hz, the servos' own frame rate
PRESETS_FILE = "ptz-presets.json"
MAX_PRESET_ID = 255

Output = Callable[[Position], None]


class _Preset(msgspec.Struct, frozen=True):
    pan: float
    tilt: float
    zoom: Annotated[float, msgspec.Meta(ge=1.0, le=16.0)]


class _PresetFile(msgspec.Struct):
    version: int = 1
    presets: dict[Annotated[int, msgspec.Meta(ge=0, le=MAX_PRESET_ID)], _Preset] = {}


def limits_for(spec: PtzSpec, *, zoom: bool) -> Limits:
    """The head's limits: the servos' ranges (an axis without a servo stays at 0), and
    1.0 .. ``max_zoom`` where the channel can zoom (``zoom``: its frames pass through
    us or its camera crops)."""
    pan = tuple(map(float, spec.pan_range)) if spec.pan_pin is not None else (0.0, 0.0)
    tilt = tuple(map(float, spec.tilt_range)) if spec.tilt_pin is not None else (0.0, 0.0)
    if spec.type != "servos":
        pan = tilt = (0.0, 0.0)
    z = (1.0, float(spec.max_zoom)) if zoom else (1.0, 1.0)
    return Limits(pan=(pan[0], pan[1]), tilt=(tilt[0], tilt[1]), zoom=z)


class PresetStore:
    """The stored presets; loaded once, every change written atomically off the loop."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self.presets: dict[int, Position] = {}
        self._lock = asyncio.Lock()
        try:
            doc = msgspec.json.decode(path.read_bytes(), type=_PresetFile)
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("ptz: %s is unusable (%s): starting with no presets", path, exc)
            return
        for pid, p in sorted(doc.presets.items())[:capacity]:
            self.presets[pid] = Position(p.pan, p.tilt, p.zoom)

    def ids(self) -> list[int]:
        return sorted(self.presets)

    async def set(self, pid: int, pos: Position) -> None:
        if pid not in self.presets and len(self.presets) >= self.capacity:
            raise InvalidParam(f"preset {pid}: all {self.capacity} presets are in use")
        self.presets[pid] = pos.rounded()
        await self._save()

    async def clear(self, pid: int) -> bool:
        if self.presets.pop(pid, None) is None:
            return False
        await self._save()
        return True

    async def _save(self) -> None:
        async with self._lock:  # writes land in the order they were made
            doc = _PresetFile(
                presets={i: _Preset(p.pan, p.tilt, p.zoom) for i, p in self.presets.items()}
            )
            data = msgspec.json.encode(doc)
            await asyncio.to_thread(atomic_write, self.path, data)


class PtzService:
    """services.interfaces.PtzService for the head on ``channel``. Make it on the loop."""

    def __init__(
        self,
        spec: PtzSpec,
        state_dir: Path,
        *,
        zoom: bool,
        channel: int = 0,
        outputs: list[Output] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        tick: float = TICK,
    ) -> None:
        self.spec = spec
        self.channel = channel
        self.limits = limits_for(spec, zoom=zoom)
        self.outputs: list[Output] = list(outputs or [])
        self.store = PresetStore(state_dir / PRESETS_FILE, spec.presets)
        self.position = self.limits.home()
        self.motion: Motion | None = None
        self.stops: dict[str, int] = {"stop": 0, "target": 0, "limit": 0, "timeout": 0}
        self._monotonic = monotonic
        self._tick = tick
        self._task: asyncio.Task[None] | None = None

    # --- services.interfaces.PtzService ----------------------------------------------

    async def control(self, p: CtrlPTZParams) -> None:
        self._channel(p.channel)
        op = p.op
        if op == "stop":
            self._halt("stop")
        elif op in ("set_preset", "goto_preset", "clear_preset"):
            await self._preset(op, self._preset_id(op, p.value))
        else:
            try:
                m = plan(op, p.value, self.position, self.limits, self._monotonic())
            except ValueError as exc:
                raise InvalidParam(f"CtrlPTZ {op}: {exc}") from None
            self._start(m)

    def presets(self, channel: int) -> list[int]:
        self._channel(channel)
        return self.store.ids()

    # --- moves --------------------------------------------------------------------------

    def _channel(self, channel: int) -> None:
        if channel != self.channel:
            raise NotSupported(f"channel {channel} has no PTZ (the head is on {self.channel})")

    @staticmethod
    def _preset_id(op: str, value: int | None) -> int:
        if value is None or not 0 <= value <= MAX_PRESET_ID:
            raise InvalidParam(f"CtrlPTZ {op}: preset id {value} is not 0-{MAX_PRESET_ID}")
        return value

    async def _preset(self, op: str, pid: int) -> None:
        if op == "set_preset":
            # A step or a preset recall still under way: where it goes is what the
            # platform means (it sent the step, then set_preset, without waiting).
            m = self.motion
            at = m.target if m is not None and m.deadline is None else self.position
            await self.store.set(pid, at)
            log.info("ptz: preset %d stored at %s", pid, _fmt(at))
        elif op == "clear_preset":
            if await self.store.clear(pid):
                log.info("ptz: preset %d cleared", pid)
            else:
                log.info("ptz: clear_preset %d: no such preset (ignored)", pid)
        else:
            target = self.store.presets.get(pid)
            if target is None:
                raise InvalidParam(f"CtrlPTZ goto_preset: no preset {pid}")
            self._start(move_to(target, self.limits, f"preset {pid}"))

    def _start(self, m: Motion) -> None:
        if self.motion is not None:
            log.debug("ptz: %s replaces %s", m.label, self.motion.label)
        self.motion = m
        log.debug("ptz: %s from %s to %s", m.label, _fmt(self.position), _fmt(m.target))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ptz-move")

    def _halt(self, why: str) -> None:
        m, self.motion = self.motion, None
        if m is not None:
            self.stops[why] += 1
            log.info("ptz: %s ended (%s) at %s", m.label, why, _fmt(self.position))

    async def _run(self) -> None:
        """Step the current move until it ends; a new move just replaces ``motion``."""
        last = self._monotonic()
        while self.motion is not None:
            await asyncio.sleep(self._tick)
            m = self.motion
            if m is None:
                break
            now = self._monotonic()
            pos, done = advance(self.position, m, now - last, now)
            last = now
            if pos != self.position:
                self.position = pos
                self._output(pos)
            if done and self.motion is m:
                timed_out = m.deadline is not None and now >= m.deadline and pos != m.target
                limit = m.deadline is not None and not timed_out
                self._halt("timeout" if timed_out else "limit" if limit else "target")

    def _output(self, pos: Position) -> None:
        for out in self.outputs:
            try:
                out(pos)
            except Exception:  # one output failing must not stop the others or the move
                log.exception("ptz: an output failed at %s", _fmt(pos))

    def apply_position(self) -> None:
        """Drive every output to the current position (at start, after a camera restart)."""
        self._output(self.position)

    async def close(self) -> None:
        self.motion = None
        t = self._task
        if t is not None and not t.done():
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def status(self) -> dict[str, Any]:
        pos = self.position.rounded()
        return {
            "channel": self.channel,
            "pan": pos.pan,
            "tilt": pos.tilt,
            "zoom": pos.zoom,
            "moving": self.motion.label if self.motion is not None else None,
            "limits": {"pan": self.limits.pan, "tilt": self.limits.tilt, "zoom": self.limits.zoom},
            "presets": self.store.ids(),
            "stops": dict(self.stops),
        }


def _fmt(p: Position) -> str:
    return f"pan {p.pan:.1f}°, tilt {p.tilt:.1f}°, zoom {p.zoom:.2f}x"
