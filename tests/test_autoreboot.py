"""The daily auto-reboot: the pure planner by construction, then the service with a clock
we move (offset from the real one, so waits are real but short)."""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hss_pu.config import make_config
from hss_pu.services.autoreboot import STATE_FILE, AutoReboot
from hss_pu.services.devconfig import DevConfigStore
from hss_pu.wire.autoreboot import DAY, MIN_GAP, next_reboot, parse_hhmm

from .support.rig import daemon_config, until

H = 3600.0


def utc(text: str) -> float:
    """ISO "YYYY-MM-DDTHH:MM:SS" in UTC as an epoch."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))


def local(epoch: float, tz: int) -> str:
    zone = dt.timezone(dt.timedelta(hours=tz))
    return dt.datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%dT%H:%M:%S")


# --- the planner ------------------------------------------------------------------------


def test_later_today() -> None:
    assert next_reboot(utc("2030-01-01T03:00:00"), 0, "03:30") == utc("2030-01-01T03:30:00")


def test_already_passed_today_is_tomorrow() -> None:
    now = utc("2030-01-01T03:31:00")
    assert next_reboot(now, 0, "03:30") == utc("2030-01-02T03:30:00")
    # Exactly at the time: that one is "now", not after it.
    assert next_reboot(utc("2030-01-01T03:30:00"), 0, "03:30") == utc("2030-01-02T03:30:00")


@pytest.mark.parametrize(
    ("now", "tz", "expect_utc"),
    [
        ("2030-01-01T00:00:00", 8, "2030-01-01T19:30:00"),  # 08:00 local: tomorrow 03:30
        ("2030-01-01T18:00:00", 8, "2030-01-01T19:30:00"),  # 02:00 local, next day already
        ("2030-01-01T00:00:00", -5, "2030-01-01T08:30:00"),  # 19:00 the day before
        ("2030-01-01T12:00:00", 14, "2030-01-01T13:30:00"),  # 02:00 on Jan 2 at UTC+14
        ("2030-01-01T12:00:00", -12, "2030-01-01T15:30:00"),  # 00:00 on Jan 1 at UTC-12
    ],
)
def test_zones(now: str, tz: int, expect_utc: str) -> None:
    got = next_reboot(utc(now), tz, "03:30")
    assert got == utc(expect_utc), (local(got, 0), local(got, tz))
    assert local(got, tz).endswith("T03:30:00")


def test_midnight_and_last_minute() -> None:
    assert next_reboot(utc("2030-03-01T23:59:30"), 0, "00:00") == utc("2030-03-02T00:00:00")
    assert next_reboot(utc("2030-03-01T23:58:00"), 0, "23:59") == utc("2030-03-01T23:59:00")


def test_never_twice_for_the_same_day() -> None:
    fired = utc("2030-01-01T03:30:00")
    # Back within seconds (daemon mode), or with a clock a little behind (no RTC).
    for now in (fired + 3, fired - 10, fired - 3 * H):
        assert next_reboot(now, 0, "03:30", last=fired) == fired + DAY
    # The time moved to later the same day: not again today.
    assert next_reboot(fired + H, 0, "12:00", last=fired) == utc("2030-01-02T12:00:00")
    # A zone change that brings the next 03:30 within MIN_GAP: that one is skipped too.
    nxt = next_reboot(fired + 60, -8, "03:30", last=fired)
    assert nxt - fired > MIN_GAP and local(nxt, -8).endswith("T03:30:00")
    # Far from the last reboot (a clock now right, or long after): the plain answer.
    now = utc("2030-06-01T01:00:00")
    assert next_reboot(now, 0, "03:30", last=fired) == next_reboot(now, 0, "03:30")
    assert next_reboot(now, 0, "03:30", last=float("inf")) == next_reboot(now, 0, "03:30")


def test_clock_changes_give_the_new_days_time() -> None:
    """The planner is a function of the clock: after a Settime it plans from the new time."""
    a = next_reboot(utc("2030-01-01T10:00:00"), 0, "03:30")
    b = next_reboot(utc("2030-01-01T10:00:00") - DAY, 0, "03:30")
    c = next_reboot(utc("2031-07-15T03:29:00"), 0, "03:30")
    assert (a - b, c) == (DAY, utc("2031-07-15T03:30:00"))


@given(
    now=st.floats(min_value=utc("2020-01-01T00:00:00"), max_value=utc("2100-01-01T00:00:00")),
    tz=st.integers(-12, 14),
    hh=st.integers(0, 23),
    mm=st.integers(0, 59),
    last_delta=st.none() | st.floats(min_value=-3 * DAY, max_value=3 * DAY),
)
def test_planner_by_construction(
    now: float, tz: int, hh: int, mm: int, last_delta: float | None
) -> None:
    hhmm = f"{hh:02d}:{mm:02d}"
    last = None if last_delta is None else now + last_delta
    t = next_reboot(now, tz, hhmm, last)
    assert t > now
    assert t - now <= 3 * DAY  # today or tomorrow, one or two more when skipping
    assert local(t, tz)[11:16] == hhmm and t % 60 == 0
    if last is not None:
        assert not last - DAY < t <= last + MIN_GAP
        # ... and it is the first such occurrence.
        earlier = t - DAY
        assert earlier <= now or last - DAY < earlier <= last + MIN_GAP
    else:
        assert t - now <= DAY


def test_parse_hhmm() -> None:
    assert parse_hhmm("00:00") == 0 and parse_hhmm("23:59") == 86_340
    for bad in ("24:00", "3:30", "03:60", "03:30:00", ""):
        with pytest.raises(ValueError):
            parse_hhmm(bad)


# --- the service --------------------------------------------------------------------------


@dataclass
class Clock:
    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def set(self, epoch: float) -> None:
        self.offset = epoch - time.time()


@dataclass
class Reboots:
    times: list[float] = field(default_factory=list)
    clock: Clock | None = None

    async def __call__(self) -> None:
        assert self.clock is not None
        self.times.append(self.clock())


def store(tmp_path: Path) -> DevConfigStore:
    return DevConfigStore(make_config(daemon_config("https://127.0.0.1:1", tmp_path)))


@dataclass
class Running:
    """The service running in this loop, with the clock and the reboots it sees."""

    devconfig: DevConfigStore
    clock: Clock
    reboots: Reboots
    service: AutoReboot
    task: asyncio.Task[None]


async def start_service(
    tmp_path: Path, clock: Clock, devconfig: DevConfigStore | None = None
) -> Running:
    dc = devconfig or store(tmp_path)
    reboots = Reboots(clock=clock)
    svc = AutoReboot(dc, clock, reboots, tmp_path, poll=0.1)
    task = asyncio.create_task(svc.run())
    await asyncio.sleep(0.05)
    return Running(dc, clock, reboots, svc, task)


async def stop_service(running: Running) -> None:
    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running.task


@pytest.fixture
async def autoreboot(tmp_path: Path) -> AsyncIterator[Running]:
    """The service, its clock at 2030-05-05T03:29:59.4 (0.6 s before a 03:30 reboot)."""
    clock = Clock()
    clock.set(utc("2030-05-05T03:29:59") + 0.4)
    r = await start_service(tmp_path, clock)
    try:
        yield r
    finally:
        if not r.task.done():
            await stop_service(r)


async def test_off_by_default_then_fires_once_at_the_time(
    autoreboot: Running, tmp_path: Path
) -> None:
    assert autoreboot.service.target is None  # factory settings: off
    await autoreboot.devconfig.set({"auto_reboot": {"on": True, "time": "03:30"}})
    assert await until(lambda: autoreboot.reboots.times, 3)
    at = autoreboot.reboots.times[0]
    assert utc("2030-05-05T03:30:00") <= at < utc("2030-05-05T03:30:00") + 1
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved == {"last": utc("2030-05-05T03:30:00")}
    await asyncio.sleep(0.5)
    assert len(autoreboot.reboots.times) == 1
    assert autoreboot.service.target == utc("2030-05-06T03:30:00")


async def test_no_loop_after_a_restart(autoreboot: Running, tmp_path: Path) -> None:
    await autoreboot.devconfig.set({"auto_reboot": {"on": True, "time": "03:30"}})
    assert await until(lambda: autoreboot.reboots.times, 3)
    await stop_service(autoreboot)
    # The device is back with its clock a little behind the time it rebooted at.
    clock = Clock()
    clock.set(utc("2030-05-05T03:29:59") + 0.6)
    again = await start_service(tmp_path, clock, store(tmp_path))
    try:
        assert again.devconfig.get()["auto_reboot"]["on"] is True
        await asyncio.sleep(1.0)
        assert again.reboots.times == []
        assert again.service.target == utc("2030-05-06T03:30:00")
    finally:
        await stop_service(again)


async def test_settime_replans(autoreboot: Running) -> None:
    """The clock moved by Settime (no document change): followed within the poll."""
    autoreboot.clock.set(utc("2030-05-05T10:00:00"))
    await autoreboot.devconfig.set({"auto_reboot": {"on": True, "time": "03:30"}})
    await asyncio.sleep(0.2)
    assert autoreboot.service.target == utc("2030-05-06T03:30:00")
    autoreboot.clock.set(utc("2030-05-06T03:29:59") + 0.5)
    assert await until(lambda: autoreboot.reboots.times, 2)
    autoreboot.clock.set(utc("2030-05-06T02:00:00"))  # moved back: the day's reboot is done
    await asyncio.sleep(0.3)
    assert len(autoreboot.reboots.times) == 1
    assert autoreboot.service.target == utc("2030-05-07T03:30:00")


async def test_tz_change_replans(autoreboot: Running) -> None:
    autoreboot.clock.set(utc("2030-05-05T02:29:59") + 0.4)  # 03:29:59 at UTC+1
    await autoreboot.devconfig.set({"auto_reboot": {"on": True, "time": "03:30"}})
    await asyncio.sleep(0.2)
    assert autoreboot.service.target == utc("2030-05-05T03:30:00")
    await autoreboot.devconfig.set_tz(1)  # what Settime with tz=1 does
    assert await until(lambda: autoreboot.reboots.times, 2)
    assert autoreboot.reboots.times[0] < utc("2030-05-05T02:30:01")


async def test_turned_off_or_moved_before_the_time(autoreboot: Running) -> None:
    await autoreboot.devconfig.set({"auto_reboot": {"on": True, "time": "03:30"}})
    await autoreboot.devconfig.set({"auto_reboot": {"on": False}})
    await asyncio.sleep(1.0)
    assert autoreboot.reboots.times == [] and autoreboot.service.target is None
    await autoreboot.devconfig.set({"auto_reboot": {"on": True, "time": "05:00"}})
    await asyncio.sleep(0.2)
    assert autoreboot.service.target == utc("2030-05-05T05:00:00")
    await autoreboot.devconfig.reset()  # ResetConfig: off again
    await asyncio.sleep(0.2)
    assert autoreboot.service.target is None and autoreboot.reboots.times == []


async def test_no_reboot_it_cannot_remember(autoreboot: Running, tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir()  # the record cannot be written
    await autoreboot.devconfig.set({"auto_reboot": {"on": True, "time": "03:30"}})
    await asyncio.sleep(1.2)
    assert autoreboot.reboots.times == []
    assert autoreboot.service.target == utc("2030-05-06T03:30:00")  # and not again today


async def test_clock_jump_far_past_the_time_is_not_a_late_reboot(autoreboot: Running) -> None:
    autoreboot.clock.set(utc("2030-05-05T03:29:59") + 0.7)
    await autoreboot.devconfig.set({"auto_reboot": {"on": True, "time": "03:30"}})
    await asyncio.sleep(0.1)
    autoreboot.clock.set(utc("2030-05-05T09:00:00"))  # e.g. the first Vs sync of the day
    await asyncio.sleep(0.6)
    assert autoreboot.reboots.times == []
    assert autoreboot.service.target == utc("2030-05-06T03:30:00")
