"""The status LED's pattern and the IR LEDs at night.

The status LED tells a person at the camera how it is (docs/protocol.md, "LEDs"):

=============  =========================================  ==========================
pattern        shape (``#`` lit, ``.`` dark, 100 ms each)  when
=============  =========================================  ==========================
connecting     1 s on, 1 s off                            no Vd session
online         steady on                                  logged in, idle
streaming      two short flashes every 2 s                a live push or a recording
error          5 flashes a second                         a camera has failed (state 3)
off            dark                                       SetConfig ``led`` false
=============  =========================================  ==========================

A ``record`` LED, where the profile has one, is lit while a channel records. ``led``
false darkens both indicators (status and record).

The IR LEDs follow the light level (:meth:`LedService.set_light_level`: picamera2's
``Lux`` metadata, or the emulated camera's dark scene) with hysteresis and a minimum time
between switches, so that dusk, and the IR light brightening what the camera measures,
do not make them flap. ``led`` does not switch them: they are how the camera sees.
While the device hibernates (its camera stopped) they are off; on waking, the first
reading decides again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from hss_pu.profiles import LedSpec
from hss_pu.services.channels import ERROR, ChannelState
from hss_pu.services.devconfig import DevConfigStore

__all__ = ["STATUS_PATTERNS", "IrSwitch", "LedBoard", "LedService", "status_mode"]

log = logging.getLogger("hss_pu.leds")

STATUS_PATTERNS: dict[str, str] = {
    "connecting": "#" * 10 + "." * 10,
    "online": "#",
    "streaming": "#.#" + "." * 17,
    "error": "#.",
    "off": ".",
}
IR_PATTERNS = {True: "#", False: "."}
REFRESH = 0.25  # seconds between looks at the device's state


class _HasSpec(Protocol):
    @property
    def spec(self) -> LedSpec: ...


class LedBoard(Protocol):
    """What this service needs of hw.Board."""

    @property
    def leds(self) -> Mapping[str, _HasSpec]: ...
    def show(self, role: str, pattern: str, label: str) -> None: ...


def status_mode(channels: Iterable[ChannelState], online: bool) -> str:
    """The status LED's pattern name for the device's state now."""
    chans = list(channels)
    if any(c.state == ERROR for c in chans):
        return "error"
    if not online:
        return "connecting"
    if any(c.stream_id or c.record_session for c in chans):
        return "streaming"
    return "online"


class IrSwitch:
    """On below ``on_below`` lux, off above ``off_above``, at most one switch per
    ``min_switch`` seconds; the first reading decides at once."""

    def __init__(self, on_below: float, off_above: float, min_switch: float) -> None:
        self.on_below = on_below
        self.off_above = off_above
        self.min_switch = min_switch
        self.on = False
        self.switched_at = -math.inf
        self.switches = 0

    def update(self, lux: float, now: float) -> bool | None:
        """The new state if this reading switches the IR LEDs, else None."""
        want = lux <= self.off_above if self.on else lux < self.on_below
        if want == self.on or now - self.switched_at < self.min_switch:
            return None
        self.on, self.switched_at = want, now
        self.switches += 1
        return want


class LedService:
    """Drives the board's ``status`` and ``ir`` LEDs (whichever the profile has)."""

    def __init__(
        self,
        board: LedBoard,
        devconfig: DevConfigStore,
        mode: Callable[[], str],
        *,
        recording: Callable[[], bool] = lambda: False,
        light: Callable[[], float | None] | None = None,
        asleep: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.board = board
        self.devconfig = devconfig
        self.mode = mode
        self.recording = recording
        self.light = light  # read at each refresh: the camera's light level (lux)
        self.asleep = asleep  # hibernating: no camera to light
        self._monotonic = monotonic
        self.status_on = "status" in board.leds
        self.record_on = "record" in board.leds
        ir = board.leds.get("ir")
        self.ir = (
            IrSwitch(ir.spec.on_below_lux, ir.spec.off_above_lux, ir.spec.min_switch_s)
            if ir is not None
            else None
        )
        self.lux: float | None = None
        self.ir_listeners: list[Callable[[bool], None]] = []
        self._wake = asyncio.Event()
        devconfig.subscribe(self._wake.set)

    def set_light_level(self, lux: float) -> None:
        """The scene's light level in lux, from any thread (the capture thread's picamera2
        metadata); acted on within REFRESH seconds. Not a number, or negative: ignored."""
        if isinstance(lux, int | float) and math.isfinite(lux) and lux >= 0:
            self.lux = float(lux)

    def refresh(self) -> None:
        """Bring the LEDs in line with the device's state and the light level now."""
        indicators = bool(self.devconfig.get().get("led", True))
        if self.status_on:
            name = self.mode() if indicators else "off"
            self.board.show("status", STATUS_PATTERNS[name], name)
        if self.record_on:
            rec = indicators and self.recording()
            self.board.show("record", "#" if rec else ".", "recording" if rec else "off")
        if self.light is not None:
            level = self.light()
            if level is not None:
                self.set_light_level(level)
        lux = self.lux
        if self.ir is not None and self.asleep():
            changed = False if self.ir.on else None
            self.ir.on, self.ir.switched_at = False, -math.inf  # waking decides at once
            if changed is not None:
                log.info("IR LEDs off (asleep)")
                self.board.show("ir", IR_PATTERNS[False], "asleep")
                self._tell_ir(False)
        elif self.ir is not None and lux is not None:
            changed = self.ir.update(lux, self._monotonic())
            if changed is not None:
                log.info("IR LEDs %s (%.1f lux)", "on" if changed else "off", lux)
                self.board.show("ir", IR_PATTERNS[changed], "night" if changed else "day")
                self._tell_ir(changed)

    def _tell_ir(self, on: bool) -> None:
        for listener in self.ir_listeners:
            try:
                listener(on)
            except Exception:
                log.exception("IR listener failed")

    def status(self) -> dict[str, Any]:
        """For ``hss-pu status``: the light level and what the IR LEDs make of it."""
        return {
            "led_setting": bool(self.devconfig.get().get("led", True)),
            "lux": self.lux,
            "ir": None if self.ir is None else {"on": self.ir.on, "switches": self.ir.switches},
        }

    async def run(self) -> None:
        """Refresh every REFRESH seconds and at once after a configuration change. An LED
        that cannot be driven is logged (once per kind of error), never fatal."""
        failed: set[str] = set()
        while True:
            try:
                self.refresh()
            except Exception as exc:
                if repr(exc) not in failed and len(failed) < 10:
                    failed.add(repr(exc))
                    log.exception("LEDs: cannot show the device's state")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REFRESH)
