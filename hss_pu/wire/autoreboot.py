"""When the daily auto-reboot (config document ``auto_reboot {on, time}``) is due. Pure.

The device's zone is ``tz``: whole hours east of UTC, with no daylight saving (wire-notes,
Settime), so local time is plain arithmetic on the epoch.

A reboot never comes twice for the same day, however the clock moves: an occurrence less
than a day before the last auto-reboot, or less than :data:`MIN_GAP` after it, is skipped.
That covers a daemon back within seconds of its own reboot, a Pi whose clock comes up a
little behind the time it rebooted at, and a ``tz`` change that brings the next local
``HH:MM`` closer.
"""

from __future__ import annotations

import math
import re

__all__ = ["DAY", "MIN_GAP", "next_reboot", "parse_hhmm"]

DAY = 86_400.0
MIN_GAP = 20 * 3600.0
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(text: str) -> int:
    """``"HH:MM"`` as seconds after midnight; ValueError if it is not one."""
    m = _HHMM.match(text)
    if m is None:
        raise ValueError(f"expected HH:MM, got {text!r}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def next_reboot(now: float, tz: int, hhmm: str, last: float | None = None) -> float:
    """The epoch of the first local ``hhmm`` (zone UTC+``tz``) strictly after ``now`` that
    is not within a day before, or MIN_GAP after, ``last`` (the last auto-reboot's time)."""
    offset = tz * 3600.0
    midnight = math.floor((now + offset) / DAY) * DAY - offset  # today's local midnight
    t = midnight + parse_hhmm(hhmm)
    if t <= now:
        t += DAY
    if last is not None and math.isfinite(last):
        while last - DAY < t <= last + MIN_GAP:  # a window under two days: two steps at most
            t += DAY
    return t
