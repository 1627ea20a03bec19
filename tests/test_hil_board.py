"""Hardware-in-the-loop checks on the rig of docs/hil.md (a Pi, spare outputs jumpered to
the sensor inputs of tests/fixtures/hil/hil-rig.toml); skipped off a Pi."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hss_pu.hw import Board
from hss_pu.profiles import Profile, load_profile_file
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.wire.alarms import ALARM_KINDS, KIND_OF_SENSOR

from .support.recording_sink import RecordingSink
from .support.rig import DEVICE, build_daemon, run_daemon, until

pytestmark = pytest.mark.hil

HIL_PROFILE = Path(__file__).parent / "fixtures" / "hil" / "hil-rig.toml"
# docs/hil.md: sensor input (BCM) <- the spare output jumpered to it.
JUMPERS = {17: 6, 27: 16, 22: 20, 5: 21}
LED_READBACK = (23, 26)  # the status LED's pin -> the input that reads it back


def test_gpio_chip_and_pin_factory() -> None:
    from gpiozero import Device

    assert any(Path("/dev").glob("gpiochip*"))
    Device.ensure_pin_factory()
    assert Device.pin_factory is not None
    assert Device.pin_factory.board_info.model  # gpiozero recognised the board


def test_picamera2_importable_with_camera() -> None:
    picamera2 = pytest.importorskip("picamera2")
    cams = picamera2.Picamera2.global_camera_info()
    assert cams, "no camera detected by libcamera"


def hil_profile() -> Profile:
    return load_profile_file(HIL_PROFILE)


def outputs(board: Board) -> dict[str, Any]:
    """A gpiozero output per jumper, on the board's own factory (gpiozero's local pin
    factories share one pin table: a second factory would get the board's pins), at
    rest (the input inactive)."""
    from gpiozero import DigitalOutputDevice

    return {
        inp.name: DigitalOutputDevice(
            JUMPERS[inp.spec.pin],
            active_high=inp.spec.active_high,
            initial_value=False,
            pin_factory=board.factory,
        )
        for inp in board.inputs
    }


@pytest.fixture
async def hil_board() -> AsyncIterator[tuple[Board, RecordingSink, dict[str, Any]]]:
    sink = RecordingSink()
    board = Board.open(hil_profile(), sink, time.time)
    outs = outputs(board)
    await asyncio.sleep(0.1)  # the inputs settle at rest
    sink.calls.clear()
    try:
        yield board, sink, outs
    finally:
        for out in outs.values():
            out.close()
        board.close()


async def exercise(sink: RecordingSink, outs: dict[str, Any]) -> None:
    """Each jumper on then off; each input's alarm kind arrives, state or pulse."""
    for name, out in outs.items():
        kind = KIND_OF_SENSOR[name]
        want = ["pulse"] if ALARM_KINDS[kind].state == "pulse" else ["start", "end"]
        out.on()
        await asyncio.sleep(0.1)
        out.off()

        def arrived(kind: str = kind, want: list[str] = want) -> bool:
            return sink.of(kind) == want

        assert await until(arrived, 2), (name, sink.calls)


async def test_board_reports_the_jumpered_edges(
    hil_board: tuple[Board, RecordingSink, dict[str, Any]],
) -> None:
    board, sink, outs = hil_board
    assert not board.emulated and board.status()["pins"] == "lgpio"
    await exercise(sink, outs)


async def test_real_bounces_are_debounced_by_lgpio(
    hil_board: tuple[Board, RecordingSink, dict[str, Any]],
) -> None:
    board, sink, outs = hil_board
    bell = board.find("bell")
    before = bell.edges
    t0 = time.monotonic()
    for _ in range(500):  # far faster than the 10 ms debounce
        outs["bell"].on()
        outs["bell"].off()
    took = time.monotonic() - t0
    await asyncio.sleep(0.1)
    assert bell.edges - before <= took / 0.010 + 2, (bell.edges - before, took)
    assert len(sink.of("bell")) <= 1 + took / 0.2  # and one pulse per hold-off


async def test_status_led_pattern_on_a_real_pin(
    hil_board: tuple[Board, RecordingSink, dict[str, Any]],
) -> None:
    from gpiozero import DigitalInputDevice

    board, _, _ = hil_board
    readback = DigitalInputDevice(LED_READBACK[1], pull_up=False, pin_factory=board.factory)
    try:
        changes: list[float] = []
        board.show("status", "#.", "error")  # 5 flashes a second
        last, t0 = readback.value, time.monotonic()
        while time.monotonic() - t0 < 1.0:
            if readback.value != last:
                last = readback.value
                changes.append(time.monotonic() - t0)
            await asyncio.sleep(0.005)
        assert 8 <= len(changes) <= 12, changes
        board.show("status", ".", "off")
        await asyncio.sleep(0.05)
        assert readback.value == 0
    finally:
        readback.close()


async def test_daemon_raises_the_jumpered_inputs(
    platform: ReferencePlatform, tmp_path: Path
) -> None:
    """The real daemon on the rig's profile, end to end: each jumpered input, on lgpio
    pins, reaches the reference platform as AlarmNotify of its type (state inputs start
    and end, pulse inputs once)."""
    daemon = build_daemon(
        platform, tmp_path / "pu", profile=str(HIL_PROFILE), size=(320, 180), start_media=False
    )
    rig = await run_daemon(platform, daemon)
    try:
        board = daemon.board
        assert board is not None and not board.emulated
        runs = daemon.config.profile.alarm_kinds(0)
        holds = {k: {"hold": 1} for k in ("pir", "io") if k in runs}
        assert (await rig.set_config({"channels": {"0": {"alarms": holds}}})).err is None
        outs = outputs(board)
        await asyncio.sleep(0.1)
        try:
            for name, out in outs.items():
                spec = ALARM_KINDS[KIND_OF_SENSOR[name]]
                want = ["pulse"] if spec.state == "pulse" else ["start", "end"]
                out.on()
                await asyncio.sleep(0.1)
                out.off()

                def arrived(t: int = spec.type, want: list[str] = want) -> bool:
                    got = [a.state for a in platform.alarms(DEVICE) if a.type == t]
                    return got == want

                assert await until(arrived, 8), (name, platform.alarms(DEVICE))
        finally:
            for out in outs.values():
                out.close()
    finally:
        assert await rig.stop() == 0
