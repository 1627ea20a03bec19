"""The hardware layer: the profile's GPIO devices on gpiozero.

The only package that imports gpiozero (tests/test_hw_board.py holds this): services see
a :class:`Board` with inputs that report to an AlarmSink and LEDs that show patterns.
"""

from hss_pu.hw.board import Board
from hss_pu.hw.pins import GpioUnavailable

__all__ = ["Board", "GpioUnavailable"]
