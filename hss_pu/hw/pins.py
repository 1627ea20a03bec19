"""Which gpiozero pin factory the GPIO devices are on, and mock pins that debounce.

Every device gets its factory passed in (``pin_factory=``), never through the process-wide
``Device.pin_factory``: two daemons in one test process, or a test driving outputs next
to the board, each have their own pins.

gpiozero's ``MockPin`` stores ``bounce`` and ignores it ("XXX Need to implement this"),
while its ``Pin.bounce`` contract says a pin with edge detection must implement bounce
elimination. :class:`DebouncedMockPin` does, the way gpiozero's native pins do (an edge
within ``bounce`` of the last reported one is not reported), and adds what a sensor
needs on top: when the window closes, a level that differs from the last reported one
is reported, so a contact that bounced and came to rest is never left at the wrong state.
lgpio debounces in its own thread (a level must be stable for the time before it is
reported), which ends in the same state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from gpiozero import Factory
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin

from hss_pu.errors import HssError
from hss_pu.profiles import Profile

__all__ = ["BoardMockFactory", "DebouncedMockPin", "GpioUnavailable", "open_factory"]

log = logging.getLogger("hss_pu.hw")

# gpiozero's own switch for test runs (``GPIOZERO_PIN_FACTORY=mock``): mock pins whatever
# the profile says. Other values are left to the profile.
ENV = "GPIOZERO_PIN_FACTORY"


class GpioUnavailable(HssError):
    """The profile wants real pins and this machine cannot give them (no lgpio, no
    /dev/gpiochip*, no permission)."""


class DebouncedMockPin(MockPin):  # type: ignore[misc]
    """A MockPin whose ``bounce`` works: see the module docstring."""

    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self._debounce_lock = threading.Lock()
        self._window_end: float | None = None  # monotonic end of the current window
        self._reported: bool | None = None
        self._settle: threading.Timer | None = None

    def close(self) -> None:
        with self._debounce_lock:
            if self._settle is not None:
                self._settle.cancel()
                self._settle = None
        super().close()

    def _call_when_changed(self) -> None:
        bounce = self._bounce
        if not bounce:
            super()._call_when_changed()
            return
        with self._debounce_lock:
            now = time.monotonic()
            if self._window_end is not None and now < self._window_end:
                return  # inside the window: the settle check looks at where it ends up
            state = self._state
            self._open_window(now, bounce, state)
        self._report(now, state)

    def _open_window(self, now: float, bounce: float, state: bool) -> None:
        """Under the lock: the window after an edge reported now (a window that ended
        before its timer ran is replaced: that timer then finds it is not its own)."""
        if self._settle is not None:
            self._settle.cancel()
        self._reported = state
        self._window_end = now + bounce
        timer = threading.Timer(bounce, self._settled)
        timer.args = (timer,)
        timer.daemon = True
        self._settle = timer
        timer.start()

    def _settled(self, timer: threading.Timer) -> None:
        with self._debounce_lock:
            if timer is not self._settle:
                return  # a newer window is running
            self._settle = None
            self._window_end = None
            state = self._state
            bounce = self._bounce
            if state == self._reported or self._when_changed is None or not bounce:
                return
            now = time.monotonic()
            self._open_window(now, bounce, state)
        self._report(now, state)

    def _report(self, ticks: float, state: bool) -> None:
        # PiPin._call_when_changed: the handler, or nothing once it is gone.
        method = self._when_changed() if self._when_changed is not None else None
        if method is not None:
            method(ticks, state)


class BoardMockFactory(MockFactory):  # type: ignore[misc]
    """Mock pins for a profile: :class:`DebouncedMockPin` inputs and outputs, and
    gpiozero's ``MockPWMPin`` (a duty cycle, as a servo needs) on the ``pwm`` pins."""

    def __init__(self, pwm: tuple[int, ...] = ()) -> None:
        super().__init__(pin_class=DebouncedMockPin)
        self.pwm_names = frozenset(f"GPIO{n}" for n in pwm)

    def pin(self, name: Any, pin_class: Any = None, **kwargs: Any) -> Any:
        if pin_class is None:
            for _header, info in self.board_info.find_pin(name):
                if info.name in self.pwm_names:
                    pin_class = MockPWMPin
                break
        return super().pin(name, pin_class, **kwargs)


def _mock(profile: Profile) -> Factory:
    ptz = profile.doc.ptz
    pwm = (ptz.pan_pin, ptz.tilt_pin) if ptz.type == "servos" else ()
    return BoardMockFactory(tuple(p for p in pwm if p is not None))


def open_factory(profile: Profile) -> tuple[Factory, bool]:
    """The factory for ``profile``'s devices and whether its pins are mock ones."""
    if os.environ.get(ENV, "").lower() == "mock" and not profile.gpio_emulated:
        log.warning("gpio: %s=mock: the devices of profile %s are on mock pins", ENV, profile.name)
        return _mock(profile), True
    if profile.gpio_emulated:
        return _mock(profile), True
    try:
        from gpiozero.pins.lgpio import LGPIOFactory
    except ImportError as exc:
        raise GpioUnavailable(
            f"profile {profile.name} needs the lgpio module for its GPIO pins ({exc}); "
            "on Raspberry Pi OS: apt install python3-lgpio"
        ) from None
    try:
        return LGPIOFactory(), False
    except Exception as exc:  # lgpio.error, OSError: no gpiochip, no permission
        raise GpioUnavailable(
            f"profile {profile.name}: cannot open the GPIO chip through lgpio ({exc}); "
            "is this the right machine, and is the daemon's user in group gpio?"
        ) from None
