"""The daily auto-reboot (config document ``auto_reboot {on, time}``, local time in ``tz``).

It waits for :func:`~hss_pu.wire.autoreboot.next_reboot` and then takes the RebootDevice
path (the daemon's ``reboot_device``). It plans again at once when the document changes
(SetConfig, ResetConfig, Settime's tz), and at least every ``poll`` seconds, so a clock
that Settime or Vs moved is followed without a hook in the clock.

The time of each auto-reboot is written (atomically, off the loop) *before* rebooting;
if it cannot be, the reboot is skipped: a device that cannot remember it rebooted must
not risk a reboot loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from hss_pu.fsutil import atomic_write, read_bounded
from hss_pu.services.devconfig import DevConfigStore
from hss_pu.wire.autoreboot import next_reboot

__all__ = ["GRACE", "POLL", "STATE_FILE", "AutoReboot"]

log = logging.getLogger("hss_pu.autoreboot")

STATE_FILE = "autoreboot.json"
POLL = 10.0  # longest wait between two looks at the clock
GRACE = 300.0  # woken this late (a busy loop, a small forward clock step): still reboot


class _State(msgspec.Struct):
    last: float  # epoch of the last auto-reboot's planned time


def _local(epoch: float, tz: int) -> str:
    zone = dt.timezone(dt.timedelta(hours=tz))
    return dt.datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M %Z")


class AutoReboot:
    def __init__(
        self,
        devconfig: DevConfigStore,
        clock: Callable[[], float],
        reboot: Callable[[], Awaitable[None]],
        state_dir: Path,
        *,
        poll: float = POLL,
        grace: float = GRACE,
    ) -> None:
        self.devconfig = devconfig
        self.clock = clock
        self.reboot = reboot
        self.path = state_dir / STATE_FILE
        self.poll = poll
        self.grace = grace
        self.last: float | None = None
        self.target: float | None = None  # the planned reboot, None while off
        self._changed = asyncio.Event()
        devconfig.subscribe(self._changed.set)

    def _settings(self) -> tuple[bool, str, int]:
        doc = self.devconfig.get()
        ar = doc["auto_reboot"]
        return bool(ar["on"]), str(ar["time"]), int(doc["tz"])

    def _read_last(self) -> float | None:
        try:
            raw, _ = read_bounded(self.path, 4096)
            last = msgspec.json.decode(raw, type=_State).last
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("auto-reboot: %s unusable (%s); no earlier reboot known", self.path, exc)
            return None
        return last if math.isfinite(last) else None

    async def _wait(self, timeout: float | None) -> bool:
        """Sleep up to ``timeout``; True when the document changed meanwhile."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    async def run(self) -> None:
        self.last = await asyncio.to_thread(self._read_last)
        target: float | None = None
        while True:
            on, hhmm, tz = self._settings()
            if not on:
                target = self.target = None
                await self._wait(None)
                continue
            now = self.clock()
            if target is not None and target <= now:
                if now - target <= self.grace:
                    await self._fire(target, tz)
                else:
                    log.warning("auto-reboot: %s passed while the clock jumped", _local(target, tz))
                target = None
                continue
            plan = next_reboot(now, tz, hhmm, self.last)
            if plan != target:
                log.info("auto-reboot: next at %s", _local(plan, tz))
            target = self.target = plan
            if await self._wait(min(target - now, self.poll)):
                target = None  # the document changed: plan from it, never fire the old plan

    async def _fire(self, target: float, tz: int) -> None:
        self.last = target
        data = msgspec.json.encode(_State(last=target))
        try:
            await asyncio.to_thread(atomic_write, self.path, data)
        except OSError as exc:
            log.error(
                "auto-reboot: cannot record it in %s (%s); skipped so a restart cannot loop",
                self.path,
                exc.strerror or exc,
            )
            return
        log.warning("auto-reboot: daily reboot (%s)", _local(target, tz))
        try:
            await self.reboot()
        except OSError as exc:
            log.error("auto-reboot: the reboot failed: %s", exc)
