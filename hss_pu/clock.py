"""The daemon's idea of the time: the host clock plus an offset learnt from the platform.

A camera often boots with no RTC and no NTP, and in emulated mode (or without
CAP_SYS_TIME) we must not touch the host clock, so every timestamp the daemon reports
comes from here. With ``set_host`` (config ``device.set_system_clock``) the host clock
itself is set, falling back to the offset when the kernel says no.
"""

from __future__ import annotations

import logging
import time

from hss_pu.wire.timewindow import WINDOW, plausible_time

__all__ = ["SYNC_THRESHOLD", "OffsetClock"]

log = logging.getLogger("hss_pu.clock")

# Clause 9.3.1: resynchronise when the device is more than 10 s off the platform.
SYNC_THRESHOLD = 10.0


class OffsetClock:
    def __init__(self, *, set_host: bool = False) -> None:
        self.offset = 0.0
        self.set_host = set_host

    def now(self) -> float:
        return time.time() + self.offset

    def set(self, t: float) -> None:
        """Make now() read ``t``."""
        if self.set_host:
            try:
                time.clock_settime(time.CLOCK_REALTIME, t)
                self.offset = 0.0
                log.info("clock: host clock set")
                return
            except OSError as exc:
                log.warning("clock: cannot set the host clock (%s); keeping an offset", exc)
                self.set_host = False
        self.offset = t - time.time()

    def sync(self, platform_time: float, *, received_at: float | None = None) -> bool:
        """Adopt the platform's time when we are more than 10 s off; True if it changed.

        A time outside the plausible window (a broken or hostile platform) is ignored
        with a log line, whichever path it came by (Vs, Vr getcurrenttime, ...).
        """
        if not plausible_time(platform_time):
            log.warning("clock: ignoring a platform time outside %s (%r)", WINDOW, platform_time)
            return False
        host = time.time() if received_at is None else received_at
        skew = platform_time - (host + self.offset)
        if abs(skew) <= SYNC_THRESHOLD:
            return False
        self.set(platform_time + (time.time() - host))
        return True
