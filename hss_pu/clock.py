"""The daemon's idea of the time: the host clock plus an offset learnt from the platform.

A camera often boots with no RTC and no NTP, and in emulated mode (or without
CAP_SYS_TIME) we must not touch the host clock, so every timestamp the daemon reports
comes from here.
"""

from __future__ import annotations

import time

__all__ = ["SYNC_THRESHOLD", "OffsetClock"]

# Clause 9.3.1: resynchronise when the device is more than 10 s off the platform.
SYNC_THRESHOLD = 10.0


class OffsetClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def sync(self, platform_time: float, *, received_at: float | None = None) -> bool:
        """Adopt the platform's time when we are more than 10 s off; True if it changed."""
        host = time.time() if received_at is None else received_at
        skew = platform_time - (host + self.offset)
        if abs(skew) <= SYNC_THRESHOLD:
            return False
        self.offset = platform_time - host
        return True
