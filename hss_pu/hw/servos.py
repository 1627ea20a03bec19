"""The pan/tilt head: two hobby servos as gpiozero ``AngularServo``s.

A hobby servo's pulse widths (the profile's ``min_pulse_us`` .. ``max_pulse_us``) span
its whole travel, and the travel is symmetric about the centre: ±90° for the usual
180° servo (SG90, MG90S), wider only when the profile's limits say so. The profile's
``pan_range`` / ``tilt_range`` are the bracket's limits inside that travel; the service
never asks past them, and :meth:`PanTilt.set` clamps again (a servo driven into its
bracket stalls, draws its stall current and strips its gears).
"""

from __future__ import annotations

import logging
from typing import Any

from gpiozero import AngularServo, Factory

from hss_pu.profiles import PtzSpec

__all__ = ["FRAME_S", "PanTilt", "servo_travel"]

log = logging.getLogger("hss_pu.hw")

FRAME_S = 0.020  # 50 Hz, what hobby servos expect


def servo_travel(lo: float, hi: float) -> float:
    """Half the servo's travel: ±90°, or the profile's widest limit beyond that."""
    return max(90.0, abs(lo), abs(hi))


class PanTilt:
    """The profile's servos on ``factory`` (the board's pins); either may be absent."""

    def __init__(self, spec: PtzSpec, factory: Factory) -> None:
        self.spec = spec
        self.servos: dict[str, Any] = {}  # "pan"/"tilt" -> gpiozero AngularServo
        try:
            for axis, pin, (lo, hi) in (
                ("pan", spec.pan_pin, spec.pan_range),
                ("tilt", spec.tilt_pin, spec.tilt_range),
            ):
                if pin is None:
                    continue
                half = servo_travel(lo, hi)
                self.servos[axis] = AngularServo(
                    pin,
                    initial_angle=min(hi, max(lo, 0.0)),
                    min_angle=-half,
                    max_angle=half,
                    min_pulse_width=spec.min_pulse_us / 1e6,
                    max_pulse_width=spec.max_pulse_us / 1e6,
                    frame_width=FRAME_S,
                    pin_factory=factory,
                )
        except BaseException:
            self.close()
            raise

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(self.servos)

    def set(self, pan: float, tilt: float) -> None:
        """Drive the servos to these angles (degrees), within the profile's limits."""
        for axis, angle, (lo, hi) in (
            ("pan", pan, self.spec.pan_range),
            ("tilt", tilt, self.spec.tilt_range),
        ):
            servo = self.servos.get(axis)
            if servo is not None:
                servo.angle = min(hi, max(lo, angle))

    def pulse_us(self, axis: str) -> float | None:
        """The pulse width the servo is being sent, µs (None: no such servo, or limp)."""
        servo = self.servos.get(axis)
        if servo is None or servo.pulse_width is None:
            return None
        return float(servo.pulse_width) * 1e6

    def status(self) -> dict[str, Any]:
        return {
            axis: {
                "gpio": pin,
                "pulse_us": None if (p := self.pulse_us(axis)) is None else round(p),
            }
            for axis, pin in (("pan", self.spec.pan_pin), ("tilt", self.spec.tilt_pin))
            if axis in self.servos
        }

    def close(self) -> None:
        for axis, servo in self.servos.items():
            try:
                servo.close()
            except Exception as exc:  # the other servo matters more
                log.warning("gpio: closing the %s servo: %s", axis, exc)
        self.servos.clear()
