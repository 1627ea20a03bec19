"""Alarms from a pin to the platform: MockFactory pins, the real daemon, the reference
platform (issue 10, "Shown by", first line). Nothing here calls the alarm service
directly: a test drives a sensor's mock pin, as the wire from the sensor would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hss_pu.media.channel import jpeg_size

from .support.rig import DEVICE, PASSWORD, Rig, daemon_config, until, write_config_file
from .test_alarms import keepalive_alarm, next_keepalive, set_alarm
from .test_cli_imports import run_cli
from .test_hw_board import chatter

pytestmark = pytest.mark.platform(hb_interval=1)

PIR_TYPE, BELL_TYPE = 12, 10


def pin(rig: Rig, name: str) -> Any:
    board = rig.daemon.board
    assert board is not None and board.emulated
    return board.find(name).device.pin


def states(rig: Rig, alarm_type: int) -> list[str]:
    return [a.state for a in rig.platform.alarms(DEVICE) if a.type == alarm_type]


@pytest.mark.rig(size=(320, 180), scene="static")
async def test_a_pir_edge_gives_one_start_a_picture_and_after_the_hold_one_end(
    rig: Rig,
) -> None:
    await set_alarm(rig, "pir", hold=1)
    pin(rig, "pir").drive_high()
    alarm = await rig.platform.wait_alarm(DEVICE, type=PIR_TYPE, state="start", picture=True)
    pic = alarm.picture
    assert pic is not None and pic.content_type == "image/jpeg"
    assert jpeg_size(pic.path.read_bytes()) == (320, 180)  # the configured size
    assert await next_keepalive(rig) & (1 << PIR_TYPE)  # active: the bit is set
    pin(rig, "pir").drive_low()
    # The input's hold-off (2 s) absorbs a re-trigger, then the alarm's hold (1 s).
    await rig.platform.wait_alarm(DEVICE, type=PIR_TYPE, state="end", timeout=8)
    assert await until(lambda: not keepalive_alarm(rig) & (1 << PIR_TYPE), 3)
    assert not await next_keepalive(rig) & (1 << PIR_TYPE)  # and not after
    assert states(rig, PIR_TYPE) == ["start", "end"]


@pytest.mark.rig(start_media=False, alarms_per_minute=6)
async def test_a_bell_press_is_one_pulse_and_a_thousand_bounces_at_most_the_limit(
    rig: Rig,
) -> None:
    bell = pin(rig, "bell")
    bell.drive_low()  # pressed (the profile's bell input is active low)
    bell.drive_high()
    await rig.platform.wait_alarm(DEVICE, type=BELL_TYPE, state="pulse")
    assert await next_keepalive(rig) & (1 << BELL_TYPE)  # the pulse's bit, once
    assert not await next_keepalive(rig) & (1 << BELL_TYPE)
    assert states(rig, BELL_TYPE) == ["pulse"]
    # A bell that chatters for a second: never more than 6 a minute reach the platform.
    await asyncio.to_thread(chatter, bell, 1000, 1.0)
    await asyncio.sleep(1.0)
    assert 1 <= len(states(rig, BELL_TYPE)) <= 6, states(rig, BELL_TYPE)


@pytest.mark.rig(start_media=False)
async def test_a_bell_pressed_while_the_platform_is_down_arrives_with_its_time(
    rig: Rig,
) -> None:
    p = rig.platform
    p.options.devices = {}
    await p.kick(DEVICE)
    await p.wait_offline(DEVICE)
    pressed = rig.daemon.clock.now()
    bell = pin(rig, "bell")
    bell.drive_low()
    bell.drive_high()
    await asyncio.sleep(1.5)
    assert states(rig, BELL_TYPE) == []
    p.options.devices = {DEVICE: PASSWORD}
    alarm = await p.wait_alarm(DEVICE, type=BELL_TYPE, state="pulse", timeout=15)
    assert alarm.timestamp == int(pressed)  # the moment it was pressed, not when it was sent


@pytest.mark.rig(start_media=False)
async def test_a_sensor_switched_off_by_setconfig_raises_nothing(rig: Rig) -> None:
    await set_alarm(rig, "pir", on=False)
    await set_alarm(rig, "bell", on=False)
    pin(rig, "pir").drive_high()
    bell = pin(rig, "bell")
    bell.drive_low()
    bell.drive_high()
    await next_keepalive(rig, since=time.time() + 0.5)
    assert rig.platform.alarms(DEVICE) == [] and keepalive_alarm(rig) == 0
    # The pins were seen (the board's input is active), the alarm service stayed quiet.
    assert rig.daemon.board is not None and rig.daemon.board.find("pir").level


@pytest.mark.rig(size=(320, 180), scene="static")
async def test_night_falls_the_ir_leds_light_and_no_motion_alarm_is_raised(rig: Rig) -> None:
    """The emulated room goes dark: the IR LEDs switch on from the camera's light level,
    the picture turns monochrome, and neither change is motion; someone walking in right
    after still is."""
    await set_alarm(rig, "motion", on=True, hold=1)
    media = rig.daemon.media[0]
    board = rig.daemon.board
    assert media.scene is not None and board is not None
    await asyncio.sleep(3.0)  # the detector learns the quiet room
    assert board.leds["ir"].lit is False
    media.scene.set_dark(True)
    assert await until(lambda: board.leds["ir"].lit and media.scene.ir, 3)  # type: ignore[union-attr]
    await asyncio.sleep(4.0)
    assert states(rig, 3) == []  # darkness and IR light are not motion
    media.scene.set_motion(True)
    await rig.platform.wait_alarm(DEVICE, type=3, state="start", timeout=8)
    media.scene.set_motion(False)


@pytest.mark.rig(size=(320, 180), scene="static")
async def test_hss_pu_sensor_motion_walks_someone_across_the_emulated_camera(
    rig: Rig, tmp_path: Path
) -> None:
    """What a person on a laptop does: `hss-pu sensor motion on`, and the platform gets a
    motion alarm (type 3); `off`, and it ends."""
    await set_alarm(rig, "motion", on=True, hold=1)
    doc = daemon_config(rig.platform, rig.storage, size=(320, 180), scene="static")
    cfg = str(write_config_file(doc, tmp_path / "config.toml"))
    await asyncio.sleep(1.5)  # the detector learns the quiet room
    rc, _, err, _ = await run_cli("sensor", "motion", "on", "--config", cfg)
    assert rc == 0, err
    await rig.platform.wait_alarm(DEVICE, type=3, state="start", timeout=8)
    rc, _, err, _ = await run_cli("sensor", "motion", "off", "--config", cfg)
    assert rc == 0, err
    await rig.platform.wait_alarm(DEVICE, type=3, state="end", timeout=8)
    rc, _, err, _ = await run_cli("sensor", "motion", "press", "--config", cfg)
    assert rc == 1 and "on or off" in err
