"""The status LED's patterns, the ``led`` setting and the IR LEDs' hysteresis
(services/leds.py) on gpiozero's MockFactory pins."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hss_pu.config import make_config
from hss_pu.hw import Board
from hss_pu.hw import board as board_module
from hss_pu.profiles import load_profile
from hss_pu.services import leds as leds_module
from hss_pu.services.channels import ChannelState
from hss_pu.services.devconfig import DevConfigStore
from hss_pu.services.leds import STATUS_PATTERNS, IrSwitch, LedService, status_mode

from .support.recording_sink import RecordingSink
from .support.rig import daemon_config, until

TICK = 0.02  # LED pattern characters, sped up 5x for the tests


def test_status_mode_from_the_device_state() -> None:
    idle, live, rec = ChannelState(0), ChannelState(1, stream_id="s"), ChannelState(2)
    rec.record_session = "r"
    broken = ChannelState(3, camera=lambda: 3)
    assert status_mode([idle], online=False) == "connecting"
    assert status_mode([idle], online=True) == "online"
    assert status_mode([idle, live], online=True) == "streaming"
    assert status_mode([rec], online=True) == "streaming"
    assert status_mode([idle, live, broken], online=True) == "error"
    assert status_mode([broken], online=False) == "error"


@dataclass
class Leds:
    service: LedService
    board: Board
    store: DevConfigStore
    mode: list[str]
    now: list[float]


@pytest.fixture
async def led_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Leds]:
    """The emulated profile's board with the LED service running on it; the device's
    state (``mode``) and the service's monotonic clock (``now``) set by the test."""
    monkeypatch.setattr(board_module, "TICK", TICK)
    storage = tmp_path / "pu"
    storage.mkdir()
    store = DevConfigStore(make_config(daemon_config("https://127.0.0.1:9/vs", storage)))
    board = Board.open(load_profile("emulated"), RecordingSink(), time.time)
    mode, now = ["connecting"], [1000.0]
    service = LedService(board, store, lambda: mode[0], monotonic=lambda: now[0])
    task = asyncio.create_task(service.run())
    try:
        yield Leds(service, board, store, mode, now)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        board.close()


def levels_over(pin: object, seconds: float) -> list[bool]:
    """The levels a mock pin went through (its recorded states) from now for ``seconds``."""
    pin.clear_states()  # type: ignore[attr-defined]
    time.sleep(seconds)
    return [s.state for s in pin.states]  # type: ignore[attr-defined]


async def test_status_led_shows_the_device_state(led_service: Leds) -> None:
    status = led_service.board.leds["status"]
    pin = status.device.pin
    assert await until(lambda: status.label == "connecting", 1)
    # 1 s on, 1 s off at full speed: 10 ticks each.
    seen = await asyncio.to_thread(levels_over, pin, 50 * TICK)
    assert 3 <= len(seen) <= 7 and True in seen and False in seen, seen  # 2.5 slow periods
    led_service.mode[0] = "online"
    assert await until(lambda: status.label == "online", 1)
    assert await asyncio.to_thread(levels_over, pin, 20 * TICK) == [True]  # steady
    led_service.mode[0] = "error"
    assert await until(lambda: status.label == "error", 1)
    seen = await asyncio.to_thread(levels_over, pin, 20 * TICK)
    assert len(seen) >= 9, seen  # a change per tick, where the slow blink had 2 in 20
    assert STATUS_PATTERNS["streaming"].count("#") == 2  # a double flash per period


async def test_led_setting_darkens_the_status_led_at_once_and_for_good(
    led_service: Leds, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = led_service.board.leds["status"]
    pin = status.device.pin
    led_service.mode[0] = "online"
    assert await until(lambda: status.lit, 1)
    monkeypatch.setattr(leds_module, "REFRESH", 60.0)
    await asyncio.sleep(0.3)  # the running wait ends: from now on only a wake-up refreshes
    await led_service.store.set({"led": False})
    assert await until(lambda: not pin.state, 1)  # told by the store, at once
    for m in ("connecting", "error", "online"):  # whatever the device does
        led_service.mode[0] = m
        led_service.service.refresh()
        assert await asyncio.to_thread(levels_over, pin, 15 * TICK) == [False], m
    assert led_service.service.status()["led_setting"] is False
    await led_service.store.set({"led": True})
    assert await until(lambda: status.label == "online" and pin.state, 1)


async def test_a_failing_look_at_the_device_does_not_stop_the_leds(led_service: Leds) -> None:
    status = led_service.board.leds["status"]
    led_service.mode[0] = "no such pattern"  # KeyError in every refresh
    await asyncio.sleep(0.6)
    led_service.mode[0] = "online"
    assert await until(lambda: status.label == "online" and status.lit, 1)


def dusk(seconds: int, seed: int = 1) -> list[tuple[float, float, float]]:
    """(time, lux without IR, noise) once a second: from 200 lux to 0 over ``seconds``,
    with camera noise of +-4 lux."""
    rng = random.Random(seed)
    return [(t, max(0.0, 200 * (1 - t / seconds)), rng.uniform(-4, 4)) for t in range(seconds)]


@pytest.mark.parametrize(
    ("switch", "most"),
    [
        (IrSwitch(5, 30, 30), 1),  # the profile defaults: once, and for good
        (IrSwitch(10, 10, 0), None),  # one threshold, no hysteresis: flaps
    ],
)
def test_ir_at_dusk_switches_once(switch: IrSwitch, most: int | None) -> None:
    """The camera measures the scene lit by the IR LEDs too (a NoIR sensor sees them):
    +20 lux while they are on. With the hysteresis the IR goes on once at dusk."""
    for t, lux, noise in dusk(600):
        measured = max(0.0, lux + noise + (20 if switch.on else 0))
        switch.update(measured, float(t))
    assert switch.on
    if most is None:
        assert switch.switches > 5  # what the hysteresis is for
    else:
        assert switch.switches == most


async def test_ir_leds_follow_the_light_level(led_service: Leds) -> None:
    ir = led_service.board.leds["ir"]
    changes: list[bool] = []
    led_service.service.ir_listeners.append(changes.append)  # the motion detector's hook
    for bad in (math.nan, -1.0, math.inf):
        led_service.service.set_light_level(bad)
    assert led_service.service.lux is None
    led_service.service.set_light_level(2.0)  # night (from the capture thread, in the field)
    assert await until(lambda: ir.lit and ir.label == "night", 1)
    led_service.service.set_light_level(500.0)  # a car's headlights: within min_switch_s
    await asyncio.sleep(0.3)
    assert ir.lit
    led_service.now[0] += 31  # the profile's min_switch_s is 30 s
    assert await until(lambda: not ir.lit and ir.label == "day", 1)
    assert changes == [True, False]
    st = led_service.service.status()
    assert st["lux"] == 500.0 and st["ir"] == {"on": False, "switches": 2}


async def test_ir_leds_are_off_while_the_device_hibernates(led_service: Leds) -> None:
    """A sleeping battery camera has no picture to light: the IR LEDs go off, and on
    waking the light level decides again at once (no min_switch_s wait)."""
    ir = led_service.board.leds["ir"]
    changes: list[bool] = []
    led_service.service.ir_listeners.append(changes.append)
    asleep = [False]
    led_service.service.asleep = lambda: asleep[0]
    led_service.service.set_light_level(2.0)
    assert await until(lambda: ir.lit and ir.label == "night", 1)
    asleep[0] = True
    assert await until(lambda: not ir.lit and ir.label == "asleep", 1)
    asleep[0] = False  # awake, still night, at the same moment of the service's clock
    assert await until(lambda: ir.lit and ir.label == "night", 1)
    assert changes == [True, False, True]
