"""The profile's GPIO devices: sensor inputs that raise alarms, LEDs that show patterns.

Inputs are gpiozero ``DigitalInputDevice``s (debounced by ``bounce_time``); their edges
arrive on gpiozero's threads (lgpio's callback thread, a mock pin's driver or settle
timer), are stamped there with the daemon clock, and handed to the loop through a
:class:`~hss_pu.bridge.LoopBridge`. On the loop each edge goes through the input's
hold-off and then to the :class:`~hss_pu.services.interfaces.AlarmSink`:

- a *state* kind (``pir``, ``io``): ``sink.state(channel, kind, True, at)`` when it goes
  active; when it goes inactive, the end waits for the hold-off, and a re-trigger within
  it cancels the end (one alarm, not an end and a new start); ``at`` of the end is the
  time of the edge that ended it;
- a *pulse* kind (``bell``, ``lock``): ``sink.pulse(channel, kind, at)`` on activation, at
  most one per hold-off.

LEDs are gpiozero ``LED``s; a pattern is a string of ``#`` (lit) and ``.`` (dark), one
character per :data:`TICK`, repeated (gpiozero's ``source``/``source_delay`` run it on
their own thread, so the loop is not woken for it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero import LED, DigitalInputDevice, Factory

from hss_pu.bridge import LoopBridge
from hss_pu.errors import InvalidParam, NotSupported
from hss_pu.hw.pins import GpioUnavailable, open_factory
from hss_pu.hw.servos import PanTilt
from hss_pu.profiles import LedSpec, Profile, SensorSpec
from hss_pu.services.interfaces import AlarmSink
from hss_pu.wire.alarms import ALARM_KINDS, KIND_OF_SENSOR

__all__ = ["PRESS_SECONDS", "TICK", "Board", "Input", "Led"]

log = logging.getLogger("hss_pu.hw")

TICK = 0.1  # seconds per character of an LED pattern
PRESS_SECONDS = 0.3  # ``hss-pu sensor NAME press``: long enough for any bounce_ms default
ACTIONS = ("on", "off", "press")


@dataclass(eq=False)
class Input:
    """One sensor input and what the board has made of its edges."""

    spec: SensorSpec
    device: Any  # gpiozero DigitalInputDevice
    kind: str  # the alarm kind (wire.alarms.ALARM_KINDS)
    pulse: bool
    active: bool = False  # a state input: as the sink was told
    edges: int = 0  # debounced edges that reached the loop
    absorbed: int = 0  # edges the hold-off swallowed
    raised: int = 0  # sink calls: starts, ends and pulses
    last_pulse: float | None = None  # monotonic
    pending_end: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.spec.kind

    @property
    def level(self) -> bool:
        """The input as the pin reads it now (debounced or not)."""
        return bool(self.device.is_active)


@dataclass(eq=False)
class Led:
    spec: LedSpec
    device: Any  # gpiozero LED
    pattern: str = "."
    label: str = "off"

    @property
    def lit(self) -> bool:
        return bool(self.device.is_lit)


class Board:
    """The GPIO devices of one profile on one pin factory. Make it on the event loop."""

    def __init__(
        self,
        profile: Profile,
        sink: AlarmSink,
        clock: Callable[[], float],
        *,
        factory: Factory,
        emulated: bool,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.sink = sink
        self.clock = clock
        self.factory = factory
        self.emulated = emulated
        self._monotonic = monotonic
        self._loop = asyncio.get_running_loop()
        self._bridge = LoopBridge(self._loop)
        self.inputs: list[Input] = []
        self.leds: dict[str, Led] = {}
        self.pan_tilt: PanTilt | None = None  # the PTZ servos, when the profile has them
        self._closed = False
        try:
            for spec in profile.doc.sensors:
                self.inputs.append(self._input(spec))
            for led_spec in profile.doc.leds:
                self.leds[led_spec.role] = self._led(led_spec)
            if profile.doc.ptz.type == "servos":
                self.pan_tilt = PanTilt(profile.doc.ptz, factory)
        except BaseException:
            self.close()
            raise
        for inp in self.inputs:
            if not inp.pulse and inp.level:  # already active at start: that is an alarm
                self._bridge.call(self._edge, inp, True, clock(), monotonic())
        log.info(
            "gpio: %s pins, inputs %s, LEDs %s",
            "mock" if emulated else "lgpio",
            ", ".join(f"{i.name}@{i.spec.pin}" for i in self.inputs) or "none",
            ", ".join(f"{r}@{led.spec.pin}" for r, led in self.leds.items()) or "none",
        )
        if self.pan_tilt is not None:
            ptz = profile.doc.ptz
            log.info("gpio: PTZ servos pan@%s tilt@%s", ptz.pan_pin, ptz.tilt_pin)

    @classmethod
    def open(cls, profile: Profile, sink: AlarmSink, clock: Callable[[], float]) -> Board:
        """On the factory that fits the profile and machine (:func:`open_factory`);
        GpioUnavailable when the pins cannot be had (no lgpio or gpiochip, a pin taken)."""
        factory, emulated = open_factory(profile)
        try:
            return cls(profile, sink, clock, factory=factory, emulated=emulated)
        except Exception as exc:  # gpiozero's and lgpio's errors, at this layer's edge
            factory.close()
            raise GpioUnavailable(f"profile {profile.name}: {exc}") from exc

    @staticmethod
    def refusal(profile: Profile) -> str:
        """Why ``hss-pu sensor`` does not drive this profile's inputs (real pins)."""
        return (
            f"the sensors of profile {profile.name} are real GPIO inputs (lgpio): "
            "hss-pu sensor drives only an emulated device's pins"
        )

    def _input(self, spec: SensorSpec) -> Input:
        kind = KIND_OF_SENSOR[spec.kind]
        device = DigitalInputDevice(
            spec.pin,
            pull_up=spec.pull_up,
            active_state=spec.active_high if spec.pull_up is None else None,
            bounce_time=spec.bounce_ms / 1000 or None,
            pin_factory=self.factory,
        )
        inp = Input(spec, device, kind, ALARM_KINDS[kind].state == "pulse")
        # gpiozero calls these on its own threads: stamp the edge there, act on the loop.
        device.when_activated = lambda: self._from_pin(inp, True)
        device.when_deactivated = lambda: self._from_pin(inp, False)
        return inp

    def _led(self, spec: LedSpec) -> Led:
        device = LED(
            spec.pin, active_high=spec.active_high, initial_value=False, pin_factory=self.factory
        )
        device.source_delay = TICK
        return Led(spec, device)

    # --- inputs ---------------------------------------------------------------------

    def _from_pin(self, inp: Input, active: bool) -> None:
        self._bridge.call(self._edge, inp, active, self.clock(), self._monotonic())

    def _edge(self, inp: Input, active: bool, at: float, mono: float) -> None:
        if self._closed:
            return
        inp.edges += 1
        if inp.pulse:
            if not active:
                return
            if inp.last_pulse is not None and mono - inp.last_pulse < inp.spec.holdoff:
                inp.absorbed += 1
                return
            inp.last_pulse = mono
            self._tell(inp, "pulse", at)
            return
        if active:
            if inp.pending_end is not None:  # a re-trigger within the hold-off: no end
                inp.pending_end.cancel()
                inp.pending_end = None
                inp.absorbed += 1
            elif not inp.active:
                inp.active = True
                self._tell(inp, "start", at)
        elif inp.active and inp.pending_end is None:
            delay = inp.spec.holdoff - max(0.0, self._monotonic() - mono)
            if delay <= 0:
                self._end(inp, at)
            else:
                inp.pending_end = self._loop.call_later(delay, self._end, inp, at)

    def _end(self, inp: Input, at: float) -> None:
        inp.pending_end = None
        if inp.active and not self._closed:
            inp.active = False
            self._tell(inp, "end", at)

    def _tell(self, inp: Input, what: str, at: float) -> None:
        inp.raised += 1
        ch = inp.spec.channel
        log.info("gpio: %s (GPIO %d, ch%d): %s", inp.name, inp.spec.pin, ch, what)
        try:
            if what == "pulse":
                self.sink.pulse(ch, inp.kind, at)
            else:
                self.sink.state(ch, inp.kind, what == "start", at)
        except Exception:  # the alarm side failing must not stop the next edge
            log.exception("gpio: the alarm sink failed on %s %s", inp.name, what)

    def find(self, name: str, channel: int | None = None) -> Input:
        """The input ``name`` (a sensor kind) on ``channel`` (any, if only one has it)."""
        found = [i for i in self.inputs if i.name == name]
        if channel is not None:
            found = [i for i in found if i.spec.channel == channel]
        if not found:
            have = ", ".join(sorted({f"{i.name} (ch{i.spec.channel})" for i in self.inputs}))
            where = "" if channel is None else f" on channel {channel}"
            raise InvalidParam(f"no {name} input{where} (this device has: {have or 'none'})")
        if len(found) > 1:
            chans = ", ".join(str(i.spec.channel) for i in found)
            raise InvalidParam(f"{name} inputs on channels {chans}: name one with --channel")
        return found[0]

    async def drive(self, name: str, action: str, channel: int | None = None) -> dict[str, Any]:
        """``hss-pu sensor``: put a mock input's pin at its active (``on``) or resting
        (``off``) level, or both in turn (``press``). Refused on real pins."""
        if not self.emulated:
            raise NotSupported(self.refusal(self.profile))
        if action not in ACTIONS:
            raise InvalidParam(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        inp = self.find(name, channel)
        if action in ("on", "press"):
            self._set_level(inp, True)
        if action == "press":
            await asyncio.sleep(max(PRESS_SECONDS, 2 * inp.spec.bounce_ms / 1000))
        if action in ("off", "press"):
            self._set_level(inp, False)
        return {"ok": True, "sensor": name, "channel": inp.spec.channel, "action": action}

    def _set_level(self, inp: Input, active: bool) -> None:
        pin = inp.device.pin
        # The profile check makes active_high the active level, pulled or floating.
        if active == inp.spec.active_high:
            pin.drive_high()
        else:
            pin.drive_low()

    # --- LEDs -------------------------------------------------------------------------

    def show(self, role: str, pattern: str, label: str) -> None:
        """Run ``pattern`` (``#`` lit, ``.`` dark, one character per TICK, repeated) on
        the ``role`` LED; a pattern of one kind of character is steady."""
        led = self.leds[role]
        if self._closed or (pattern == led.pattern and label == led.label):
            return
        levels = [c == "#" for c in pattern]
        if not levels or set(pattern) - {"#", "."}:
            raise ValueError(f"bad LED pattern {pattern!r}")
        device = led.device
        device.source = None  # stops a running pattern's thread
        if all(levels):
            device.on()
        elif not any(levels):
            device.off()
        else:
            device.source = itertools.cycle(levels)
        led.pattern, led.label = pattern, label
        log.debug("gpio: %s LED (GPIO %d): %s", role, led.spec.pin, label)

    # --- the rest ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For ``hss-pu status``: each input's level and each LED's (and the servos')."""
        servos = {} if self.pan_tilt is None else {"servos": self.pan_tilt.status()}
        return servos | {
            "pins": "mock" if self.emulated else "lgpio",
            "inputs": [
                {
                    "name": i.name,
                    "channel": i.spec.channel,
                    "gpio": i.spec.pin,
                    "alarm": i.kind,
                    "level": "active" if i.level else "inactive",
                    **({} if i.pulse else {"alarm_active": i.active}),
                    "edges": i.edges,
                    "absorbed": i.absorbed,
                    "raised": i.raised,
                }
                for i in self.inputs
            ],
            "leds": [
                {"role": r, "gpio": led.spec.pin, "lit": led.lit, "shows": led.label}
                for r, led in self.leds.items()
            ],
        }

    def close(self) -> None:
        """Release the pins (LEDs dark) and the factory; later edges are dropped."""
        self._closed = True
        for inp in self.inputs:
            if inp.pending_end is not None:
                inp.pending_end.cancel()
        if self.pan_tilt is not None:
            self.pan_tilt.close()
        for dev in [*(i.device for i in self.inputs), *(led.device for led in self.leds.values())]:
            try:
                dev.close()
            except Exception as exc:  # closing the rest matters more
                log.warning("gpio: closing %r: %s", dev, exc)
        try:
            self.factory.close()
        except Exception as exc:
            log.warning("gpio: closing the pin factory: %s", exc)
