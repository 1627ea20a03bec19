"""The hardware layer: the profile's GPIO devices on gpiozero, and its battery gauge.

The only package that imports gpiozero (tests/test_hw_board.py holds this): services see
a :class:`Board` with inputs that report to an AlarmSink, LEDs that show patterns, and
the PTZ head's servos (:class:`PanTilt`); and a battery source (:mod:`hss_pu.hw.battery`)
that gives a percent or refuses.
"""

from hss_pu.hw.board import Board
from hss_pu.hw.pins import GpioUnavailable
from hss_pu.hw.servos import PanTilt

__all__ = ["Board", "GpioUnavailable", "PanTilt"]
