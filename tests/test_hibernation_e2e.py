"""Hibernation end to end (issue 11, item 3; "Shown by", power tests): the real daemon
with a battery profile against the reference platform and its hibernation server. An
idle device sleeps (Vd closed, camera stopped), its heartbeats arrive byte-exact, and
TOWAKEUP, a PIR edge (a MockFactory pin) or a PushLive wakes it; KeepAwaken holds it
awake; without a hibernation address, or without a battery, it never sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hss_pu.config import PowerSection
from hss_pu.reference_platform.server import ReferencePlatform

from .support.rig import DEVICE, MakePlatform, Rig, start_daemon, until

REPO = Path(__file__).resolve().parent.parent
PIR_TYPE, BELL_TYPE = 12, 10
IDLE = 1.0  # s: power.idle_sleep_seconds in these tests
BEAT = 0.3  # s: power.heartbeat_seconds

MakeBattery = Callable[..., Awaitable[Rig]]


def battery_profile(directory: Path) -> Path:
    """The emulated camera as a battery device without PTZ (a doorbell: PIR and bell)."""
    text = (REPO / "firmware_profiles" / "emulated.toml").read_text()
    text = re.sub(r"(?ms)^\[ptz\]\n.*?(?=^\[)", "", text)
    text = text.replace("[battery]\npresent = false", "[battery]\npresent = true")
    assert "present = true" in text and "[ptz]" not in text
    path = directory / "battery-doorbell.toml"
    path.write_text(text)
    return path


@pytest.fixture
async def make_battery(tmp_path: Path) -> AsyncIterator[MakeBattery]:
    """Daemons with the battery profile (unless ``profile=``) on a given platform, short
    idle and heartbeat times; stopped at the end."""
    rigs: list[Rig] = []

    async def make(
        platform: ReferencePlatform, *, idle: float = IDLE, beat: float = BEAT, **kw: Any
    ) -> Rig:
        kw.setdefault("profile", str(battery_profile(tmp_path)))
        power = PowerSection(idle_sleep_seconds=idle, heartbeat_seconds=beat)
        rig = await start_daemon(platform, tmp_path / f"pu{len(rigs)}", power=power, **kw)
        rigs.append(rig)
        return rig

    try:
        yield make
    finally:
        for r in rigs:
            assert await r.stop() == 0


async def hib_platform(make_platform: MakePlatform, **kw: Any) -> ReferencePlatform:
    return await make_platform(hibernation_port=0, hb_interval=1, **kw)


async def asleep(rig: Rig, timeout: float = IDLE + 8) -> None:
    """Wait until the device has closed Vd and is heartbeating on the server."""
    p = rig.platform
    assert p.hibernation is not None
    await p.wait_offline(DEVICE, timeout=timeout)
    await p.hibernation.wait_sleeping(DEVICE, timeout=5)
    assert rig.daemon.hibernation is not None and rig.daemon.hibernation.state == "asleep"


def expected_heartbeat(token: str) -> bytes:
    return (
        b"\xcc\x00"
        + (40).to_bytes(2, "big")
        + DEVICE.encode().ljust(16, b"\0")
        + b"\x4a\x00\x00\x00"
        + token.encode().ljust(16, b"\0")
    )


async def test_an_idle_battery_device_hibernates_and_its_heartbeats_are_byte_exact(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    p = await hib_platform(make_platform)
    rig = await make_battery(p, prerecord_seconds=2)
    media = rig.daemon.media[0]
    assert await media.wait_running()
    online_at = time.time()
    record = rig.daemon.record
    assert record is not None
    ring = record.rings[0]
    assert await until(lambda: ring.since(0) != [], 1)  # the ring fills while awake
    await asleep(rig)
    assert p.hibernation is not None
    slept_at = time.time()
    assert slept_at - online_at >= IDLE - 0.1  # not before the idle time
    token = p.hibernation.token_for(DEVICE)
    assert len(token) == 16  # GetServerInfo gave the device its own token
    first = await p.hibernation.wait_heartbeat(lambda r: r.device_id == DEVICE)
    assert first.ok, first.reason
    assert first.raw == expected_heartbeat(token)
    assert len(first.raw) == 40
    # Capture and encoding stopped; the pre-record ring too (no frames come).
    assert not media.running and media.stats.state == "stopped"
    assert media.latest_frame() is None
    assert ring.span == 0.0 and ring.since(0) == []  # video from before a sleep is gone
    board = rig.daemon.board
    assert board is not None  # the status LED goes dark rather than blink "connecting"
    assert await until(lambda: board.leds["status"].label == "off", 2)
    # Heartbeats keep coming, every interval, all good, on one connection.
    n0 = len(p.hibernation.heartbeats)
    await asyncio.sleep(BEAT * 4 + 0.2)
    later = p.hibernation.heartbeats[n0:]
    assert len(later) >= 3 and all(r.ok and r.raw == first.raw for r in later)
    assert not p.online(DEVICE)
    st = await rig.status()
    assert st["power"]["state"] == "asleep" and st["power"]["sleeps"] == 1
    assert st["power"]["hibernation"]["connected"] is True
    assert p.sleeping()[0]["id"] == DEVICE


async def test_towakeup_brings_it_back_online_with_reconnect_1_and_it_sleeps_again(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    p = await hib_platform(make_platform)
    rig = await make_battery(p)
    await asleep(rig)
    logins, vs = len(p.logins), len(p.vs_requests)
    seconds = await p.wake(DEVICE)
    assert seconds < 3.0
    login = p.logins[-1]
    assert len(p.logins) == logins + 1 and login.accepted
    assert login.params["reconnect"] == "1"
    assert len(p.vs_requests) == vs  # straight back to Vd: sleep is no failure
    assert rig.daemon.link is not None and rig.daemon.link.vd_failures == 0
    assert await rig.daemon.media[0].wait_running()  # capture is back
    power = rig.daemon.hibernation
    assert power is not None and power.wakes["TOWAKEUP"] == 1
    assert p.hibernation is not None and not p.hibernation.is_sleeping(DEVICE)
    # Nothing to do after the wake: asleep again after the idle time.
    await asleep(rig)
    assert power.sleeps == 2


async def test_a_pir_edge_while_asleep_wakes_it_and_its_alarm_arrives(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    p = await hib_platform(make_platform)
    rig = await make_battery(p, scene="static")
    await rig.call("SetConfig", {"channels": {"0": {"alarms": {"pir": {"on": True}}}}})
    await asleep(rig)
    board = rig.daemon.board
    assert board is not None
    raised = rig.daemon.clock.now()
    logins = len(p.logins)
    board.find("pir").device.pin.drive_high()
    alarm = await p.wait_alarm(DEVICE, type=PIR_TYPE, state="start", picture=True, timeout=15)
    # When the PIR fired (the edge is stamped a moment after ``raised``), not when sent.
    assert int(raised) <= alarm.timestamp <= int(raised) + 1
    assert len(p.logins) > logins and p.logins[logins].params["reconnect"] == "1"
    assert alarm.picture is not None and alarm.picture.content_type == "image/jpeg"
    power = rig.daemon.hibernation
    assert power is not None and power.wakes["pir alarm"] == 1
    # Awake while the alarm is active.
    st = await rig.status()
    assert st["power"]["state"] == "awake"
    assert "alarm active on ch0" in st["power"]["why_awake"]


async def test_a_bell_press_while_asleep_wakes_it_and_its_pulse_arrives(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    p = await hib_platform(make_platform)
    rig = await make_battery(p, start_media=False)
    await asleep(rig)
    board = rig.daemon.board
    assert board is not None
    bell = board.find("bell").device.pin
    bell.drive_low()  # pressed (active low)
    bell.drive_high()
    await p.wait_alarm(DEVICE, type=BELL_TYPE, state="pulse", timeout=10)
    power = rig.daemon.hibernation
    assert power is not None and power.wakes["bell alarm"] == 1


async def test_keepawaken_prevents_sleep_for_the_asked_time(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    p = await hib_platform(make_platform)
    rig = await make_battery(p, idle=1.5)
    t0 = time.monotonic()
    reply = await rig.call("KeepAwaken", {"channel": 0, "expired": 4})
    assert reply.err is None and reply.resp == {}
    st = await rig.status()
    assert any(r.startswith("KeepAwaken for") for r in st["power"]["why_awake"])
    # Online throughout the window, although idle is 1.5 s ...
    assert not await until(lambda: not p.online(DEVICE), 4 - 0.3 - (time.monotonic() - t0))
    # ... and asleep once it and the idle time have passed.
    await asleep(rig, timeout=1.5 + 4)
    assert time.monotonic() - t0 >= 4 + 1.5 - 0.3


async def test_a_clip_playing_keeps_the_device_awake_until_it_ends(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    """A PlayVideo under way is work too: sleeping would cut the clip off (and the Vd
    link that CtrlVideo and QueryVideoStatus need)."""
    p = await hib_platform(make_platform)
    rig = await make_battery(p)
    await p.media.path_for("tone-3s.m4a")
    t0 = time.monotonic()
    await p.play_video(DEVICE, 0, p.media_url("tone-3s.m4a"))
    assert await until(
        lambda: (
            rig.daemon.hibernation is not None
            and "playback on ch0" in rig.daemon.hibernation.status()["why_awake"]
        ),
        2,
    )
    # Online while it plays, although idle is 1 s ...
    assert not await until(lambda: not p.online(DEVICE), 3 - 0.3 - (time.monotonic() - t0))
    # ... and asleep once it has ended and the idle time has passed.
    await asleep(rig, timeout=IDLE + 8)
    assert time.monotonic() - t0 >= 3 + IDLE - 0.3


async def test_a_pushlive_asked_of_a_sleeping_device_wakes_it_first(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    p = await hib_platform(make_platform)
    rig = await make_battery(p)
    await asleep(rig)
    rx, reply = await p.push_live(DEVICE, 0, "wake-live")
    assert reply.err is None, reply.err
    assert p.online(DEVICE)
    await asyncio.wait_for(rx.growing.wait(), 10)
    st = await rig.status()
    assert "live push on ch0" in st["power"]["why_awake"]
    await asyncio.sleep(IDLE + 0.5)
    assert p.online(DEVICE)  # a live push keeps it awake
    await p.call(DEVICE, "StopLive", {"channel": 0, "stream_id": "wake-live"})
    await asleep(rig)


async def test_no_sleep_without_hibernation_in_getserverinfo(
    make_platform: MakePlatform,
    make_battery: MakeBattery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hss_pu.power")
    p = await make_platform(hb_interval=1)  # no hibernation server
    rig = await make_battery(p)
    await asyncio.sleep(IDLE + 2)
    assert p.online(DEVICE) and len(p.logins) == 1
    st = await rig.status()
    assert st["power"]["why_awake"] == ["GetServerInfo has no hibernation address"]
    assert st["power"]["sleeps"] == 0
    said = [r for r in caplog.records if "no hibernation address" in r.getMessage()]
    assert len(said) == 1  # once, not at every look


async def test_a_non_battery_profile_never_sleeps(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    p = await hib_platform(make_platform)
    rig = await make_battery(p, profile="emulated")
    await asyncio.sleep(IDLE + 2)
    assert p.online(DEVICE) and len(p.logins) == 1
    assert p.hibernation is not None and p.hibernation.heartbeats == []
    st = await rig.status()
    assert st["power"]["state"] == "awake"
    assert st["power"]["why_awake"] == ["not a battery device (profile battery.present = false)"]


async def test_a_device_that_cannot_reach_the_hibernation_server_returns_to_vd(
    make_platform: MakePlatform, make_battery: MakeBattery
) -> None:
    """Asleep without the heartbeat connection, nobody could wake it: after 2.25
    heartbeat intervals (135 s at 60 s) without one going out it logs in again."""
    p = await hib_platform(make_platform)
    rig = await make_battery(p)
    await asleep(rig)
    assert p.hibernation is not None
    await p.hibernation.close()  # the server goes away; its port refuses
    await p.wait_online(DEVICE, timeout=5)
    power = rig.daemon.hibernation
    assert power is not None and power.wakes["hibernation server unreachable"] >= 1
    assert p.logins[-1].params["reconnect"] == "1"
