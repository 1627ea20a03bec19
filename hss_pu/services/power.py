"""The battery service: the source's level becomes BatteryChange, DevStatus ``battery``
and the low-battery alarm (wire-notes "Power"; docs/protocol.md "Battery").

- **Reading.** The profile's source (hw/battery.py) every ``poll_seconds``, off the
  event loop, one read at a time (a set from ``hss-pu battery`` reads at once, in the
  same order). A read that fails or makes no sense is logged (once per kind of
  problem) and ignored: the last good level stands.
- **Level.** The reading rounded to a whole percent, changed only by a reading at least
  :data:`DEADBAND` away from it. Until the first good reading there is none: DevStatus
  leaves ``battery`` out and nothing is sent.
- **BatteryChange.** After each login, the level at once; then whenever the whole
  percent differs from the one last sent, at most one per ``report_interval_seconds``
  (a change inside the interval waits for its end, and the latest level then wins; a
  level that came back to the one sent sends nothing). Offline, nothing is queued: the
  login sends the level of that moment.
- **Low battery.** Alarm 8 (a pulse, through the alarm service: its rate limit, its
  queue while offline, ``channels.0.alarms.battery`` switches it) once when the level
  falls below ``low_percent``; re-armed only when it has risen to ``low_percent +
  hysteresis_percent``, so a level wobbling around the threshold alarms once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hss_pu.hw.battery import BatteryError, BatterySource, Reading
from hss_pu.profiles import BatterySpec
from hss_pu.services.interfaces import AlarmSink
from hss_pu.tasks import TaskSet
from hss_pu.wire.vd import BatteryChangeParams, UpEvent

__all__ = ["BATTERY_CHANNEL", "DEADBAND", "EventLink", "PowerService", "PowerStats"]

log = logging.getLogger("hss_pu.power")

BATTERY_CHANNEL = 0  # the device's alarms go on its first channel
# A new level needs a reading this far from the current one (a gauge hovering on a
# rounding boundary, 50.49 / 50.51, does not flap between 50 and 51).
DEADBAND = 0.75


class EventLink(Protocol):
    """What the service needs of the platform link (services.link.PlatformLink)."""

    async def send_event(self, params: UpEvent) -> bool: ...


@dataclass
class PowerStats:
    reads: int = 0
    bad_reads: int = 0
    sent: int = 0  # BatteryChange sent
    alarms: int = 0  # low-battery alarms raised


class PowerService:
    def __init__(
        self,
        source: BatterySource,
        spec: BatterySpec,
        link: EventLink,
        alarms: AlarmSink | None,
        clock: Callable[[], float],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.spec = spec
        self.link = link
        self.alarms = alarms
        self.clock = clock
        self._monotonic = monotonic
        self.stats = PowerStats()
        self.level: int | None = None  # the whole percent, once a reading made sense
        self.charging: bool | None = None
        self.error: str | None = None  # the last read's problem, None once one works
        self._armed = True  # the low-battery alarm fires at the next fall below
        self._sent: int | None = None  # the level last sent in this session
        self._last_sent = -math.inf  # monotonic
        self._login_due = False
        self._offline = False  # a send found no session: wait for the next login
        self._wake = asyncio.Event()
        self._read_lock = asyncio.Lock()
        self._told: set[str] = set()
        self._tasks = TaskSet(log)

    # --- life cycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Poll the source and report, until cancelled."""
        log.info(
            "battery: %s, low below %d %%, BatteryChange at most every %g s",
            self.source.describe(), self.spec.low_percent, self.spec.report_interval_seconds,
        )  # fmt: skip
        self._tasks.spawn(self._report_loop(), "battery-report")
        try:
            while True:
                await self.sample()
                await asyncio.sleep(self.spec.poll_seconds)
        finally:
            await self._tasks.cancel_all(2.0)

    async def close(self) -> None:
        await self._tasks.cancel_all(2.0)
        await asyncio.to_thread(self.source.close)

    def logged_in(self, _session: object = None) -> None:
        """The link's on_login hook: the level goes out now, whatever the rate limit."""
        self._sent = None
        self._login_due = True
        self._offline = False
        self._wake.set()

    # --- reading ----------------------------------------------------------------------------

    async def sample(self) -> int | None:
        """Read the source now and act on it; the level after it."""
        async with self._read_lock:
            self.stats.reads += 1
            try:
                reading = await asyncio.to_thread(self.source.read)
            except BatteryError as exc:
                self._bad(str(exc))
            except Exception as exc:  # a driver's surprise: the daemon goes on
                self._bad(f"{type(exc).__name__}: {exc}")
            else:
                self.observe(reading)
        return self.level

    def _bad(self, problem: str) -> None:
        self.stats.bad_reads += 1
        self.error = problem
        key = problem[:60]
        if key not in self._told and len(self._told) < 32:
            self._told.add(key)
            log.warning("battery: reading ignored: %s", problem)

    def observe(self, reading: Reading) -> None:
        """A reading from the source (checked again here: the last line of defence)."""
        p = reading.percent
        if not isinstance(p, int | float) or not math.isfinite(p) or not 0 <= p <= 100:
            self._bad(f"{self.source.kind}: {p!r} is not a percentage")
            return
        self.error = None
        self.charging = reading.charging
        if self.level is not None and abs(p - self.level) < DEADBAND:
            return
        level = min(100, max(0, round(p)))
        if level == self.level:
            return
        before, self.level = self.level, level
        log.debug("battery: %d %%%s", level, "" if before is None else f" (was {before} %)")
        self._low_battery(level)
        self._wake.set()

    def _low_battery(self, level: int) -> None:
        low = self.spec.low_percent
        if level >= low + self.spec.hysteresis_percent:
            self._armed = True
        elif level < low and self._armed:
            self._armed = False
            self.stats.alarms += 1
            log.warning("battery: %d %% is below %d %%: low-battery alarm", level, low)
            if self.alarms is not None:
                self.alarms.pulse(BATTERY_CHANNEL, "battery", self.clock())

    # --- reporting ---------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            self._wake.clear()
            due = self._due()
            if due is None:
                await self._wake.wait()
            elif due > 0:  # inside the interval: the level at its end wins
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due)
            else:
                await self._send()

    def _due(self) -> float | None:
        """Seconds until a BatteryChange is due (0: now), None when none is."""
        if self.level is None or (self._offline and not self._login_due):
            return None
        if self._login_due:
            return 0.0
        if self.level == self._sent:
            return None
        return max(0.0, self._last_sent + self.spec.report_interval_seconds - self._monotonic())

    async def _send(self) -> None:
        assert self.level is not None
        level, login = self.level, self._login_due
        self._login_due = False
        if not await self.link.send_event(BatteryChangeParams(battery=level)):
            self._offline = True  # the next login sends the level of that moment
            return
        self._sent = level
        self._last_sent = self._monotonic()
        self.stats.sent += 1
        log.info("BatteryChange %d %% sent%s", level, " (after login)" if login else "")

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For ``hss-pu status``."""
        return {
            "level": self.level,
            "charging": self.charging,
            "source": self.source.describe(),
            "low_percent": self.spec.low_percent,
            "low": self.level is not None and not self._armed,
            "error": self.error,
            **vars(self.stats),
        }
