"""The span of times the device believes from a platform: 2020-01-01 to 2100-01-01 UTC.

A platform clock (Vs ``SyncTime``, ``Settime``) far outside it is a platform bug or an
attack, and adopting it breaks everything downstream that formats a date (a time of
1e300 s overflows ``datetime`` on the camera thread). Pure, no I/O.
"""

from __future__ import annotations

import math

__all__ = ["TIME_MAX", "TIME_MIN", "WINDOW", "plausible_time"]

TIME_MIN = 1_577_836_800.0  # 2020-01-01T00:00:00Z
TIME_MAX = 4_102_444_800.0  # 2100-01-01T00:00:00Z (excluded)
WINDOW = "2020-01-01 to 2100-01-01 UTC"


def plausible_time(t: float) -> bool:
    """True for an epoch time inside the window (NaN and infinities are not)."""
    return math.isfinite(t) and TIME_MIN <= t < TIME_MAX
