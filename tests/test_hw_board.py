"""The hardware layer (hss_pu/hw) on gpiozero's MockFactory pins: debounce, hold-off,
state vs pulse alarms, LED patterns, the profile fields they come from."""

from __future__ import annotations

import ast
import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hss_pu
from hss_pu.errors import InvalidParam, NotSupported
from hss_pu.hw import Board, GpioUnavailable
from hss_pu.hw import board as board_module
from hss_pu.hw.pins import ENV, DebouncedMockPin, open_factory
from hss_pu.profiles import Profile, load_profile, load_profile_file
from hss_pu.schema import SchemaError
from hss_pu.wire.alarms import ALARM_KINDS, KIND_OF_SENSOR

from .conftest import on_raspberry_pi
from .support.recording_sink import RecordingSink
from .support.rig import until

CHANNEL = """
[[channels]]
id = {id}
backend = "emulated"
encoder = "libx264"
resolutions = [[320, 180]]
max_fps = 15
max_bitrate = 1_000_000
default_bitrate = 300_000
"""


def toml_profile(tmp_path: Path, body: str, *, channels: int = 1, gpio: str = "mock") -> Profile:
    head = f'hardware_model = "TEST"\nfirmware_model = "test"\ngpio = "{gpio}"\n'
    text = head + "".join(CHANNEL.format(id=i) for i in range(channels)) + body
    path = tmp_path / "test-profile.toml"
    path.write_text(text)
    return load_profile_file(path)


def sensor(kind: str, pin: int, **fields: Any) -> str:
    lines = [f'kind = "{kind}"', f"pin = {pin}"]
    for k, v in fields.items():
        lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else v}")
    return "\n[[sensors]]\n" + "\n".join(lines) + "\n"


ACTIVE_LOW = {"active_high": False, "pull_up": True}
MakeBoard = Callable[..., Board]


@pytest.fixture
def make_board() -> Iterator[MakeBoard]:
    """Boards on their own mock pins (Board.open), closed at the end."""
    boards: list[Board] = []

    def make(profile: Profile, sink: Any, clock: Callable[[], float] = time.time) -> Board:
        b = Board.open(profile, sink, clock)
        boards.append(b)
        return b

    yield make
    for b in boards:
        b.close()


def chatter(pin: Any, toggles: int, seconds: float) -> float:
    """Toggle a mock input pin ``toggles`` times, evenly over ``seconds`` (a contact
    bouncing); returns how long it took."""
    t0 = time.monotonic()
    for i in range(toggles):
        if pin.state:
            pin.drive_low()
        else:
            pin.drive_high()
        delay = t0 + (i + 1) * seconds / toggles - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return time.monotonic() - t0


# --- debounce ----------------------------------------------------------------------------


async def test_a_thousand_bounces_in_a_second_give_one_edge_per_debounce_window(
    tmp_path: Path, make_board: MakeBoard
) -> None:
    bounce = 0.05
    prof = toml_profile(
        tmp_path,
        sensor("bell", 27, bounce_ms=50, holdoff_ms=0, **ACTIVE_LOW)
        + sensor("pir", 17, bounce_ms=50, holdoff_ms=0)
        + sensor("lock", 22, bounce_ms=0, holdoff_ms=0, **ACTIVE_LOW),
    )
    sink = RecordingSink()
    board = make_board(prof, sink)
    bell, pir, lock = board.find("bell"), board.find("pir"), board.find("lock")

    # The door bell: 1,000 bounces in a second, ending released.
    took = await asyncio.to_thread(chatter, bell.device.pin, 1000, 1.0)
    await asyncio.sleep(2 * bounce)  # the last window settles
    windows = took / bounce + 2  # each reported edge opens a window; the last one settles
    assert 2 <= bell.edges <= windows, (bell.edges, took)
    assert sink.of("bell") == ["pulse"] * len(sink.of("bell"))
    assert 1 <= len(sink.of("bell")) <= bell.edges / 2 + 1
    assert not bell.level  # released, and the board sees it so

    # The PIR: 999 bounces, ending active: the board ends in the state the pin is in.
    took = await asyncio.to_thread(chatter, pir.device.pin, 999, 1.0)
    await asyncio.sleep(2 * bounce)
    assert 1 <= pir.edges <= took / bounce + 2, (pir.edges, took)
    assert pir.level and pir.active and sink.of("pir")[-1] == "start"

    # Without bounce_time every toggle arrives: the filtering above is the debounce.
    await asyncio.to_thread(chatter, lock.device.pin, 200, 0.2)
    assert await until(lambda: lock.edges == 200, 2), lock.edges


async def test_mock_pin_without_bounce_reports_every_edge() -> None:
    from gpiozero import DigitalInputDevice
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory(pin_class=DebouncedMockPin)
    seen: list[bool] = []
    dev = DigitalInputDevice(5, pull_up=False, pin_factory=factory)
    dev.when_activated = lambda: seen.append(True)
    dev.when_deactivated = lambda: seen.append(False)
    for _ in range(3):
        dev.pin.drive_high()
        dev.pin.drive_low()
    assert seen == [True, False] * 3
    dev.close()
    factory.close()


# --- hold-off ----------------------------------------------------------------------------


async def test_a_pulse_input_raises_once_per_holdoff(tmp_path: Path, make_board: MakeBoard) -> None:
    prof = toml_profile(tmp_path, sensor("bell", 27, bounce_ms=0, holdoff_ms=400, **ACTIVE_LOW))
    sink = RecordingSink()
    board = make_board(prof, sink)
    t0 = time.monotonic()
    for _ in range(5):  # an impatient visitor
        await board.drive("bell", "on")
        await board.drive("bell", "off")
    await asyncio.sleep(0.05)
    assert time.monotonic() - t0 < 0.4
    bell = board.find("bell")
    assert sink.of("bell") == ["pulse"] and bell.absorbed == 4
    await asyncio.sleep(0.4)
    await board.drive("bell", "on")
    await board.drive("bell", "off")
    assert await until(lambda: len(sink.calls) == 2, 1)
    assert sink.of("bell") == ["pulse", "pulse"]


async def test_a_state_input_retriggered_within_the_holdoff_does_not_end(
    tmp_path: Path, make_board: MakeBoard
) -> None:
    now = [100.0]
    prof = toml_profile(tmp_path, sensor("pir", 17, bounce_ms=0, holdoff_ms=300))
    sink = RecordingSink()
    board = make_board(prof, sink, lambda: now[0])
    for t, action in ((101.0, "on"), (102.0, "off"), (103.0, "on"), (104.0, "off")):
        now[0] = t
        await board.drive("pir", action)
        await asyncio.sleep(0.05)
    assert sink.of("pir") == ["start"]  # the off at 102 was followed by an on within 300 ms
    assert board.find("pir").absorbed == 1
    assert await until(lambda: len(sink.calls) == 2, 1)
    start, end = sink.calls
    assert (start.what, start.at, end.what, end.at) == ("start", 101.0, "end", 104.0)
    await asyncio.sleep(0.4)
    assert len(sink.calls) == 2


# --- what reaches the sink ----------------------------------------------------------------


@pytest.mark.parametrize("sensor_kind", sorted(KIND_OF_SENSOR))
async def test_each_sensor_kind_raises_its_alarm_kind_state_or_pulse(
    tmp_path: Path, make_board: MakeBoard, sensor_kind: str
) -> None:
    prof = toml_profile(
        tmp_path, sensor(sensor_kind, 6, bounce_ms=0, holdoff_ms=0, channel=1), channels=2
    )
    sink = RecordingSink()
    board = make_board(prof, sink)
    with pytest.raises(InvalidParam, match=f"no {sensor_kind} input on channel 0"):
        await board.drive(sensor_kind, "on", 0)
    reply = await board.drive(sensor_kind, "press", 1)
    assert reply["ok"] and reply["channel"] == 1
    kind = KIND_OF_SENSOR[sensor_kind]
    want = ["pulse"] if ALARM_KINDS[kind].state == "pulse" else ["start", "end"]
    assert await until(lambda: len(sink.calls) == len(want), 1)
    await asyncio.sleep(0.05)
    assert [(c.what, c.kind, c.channel) for c in sink.calls] == [(w, kind, 1) for w in want]
    assert {c.thread for c in sink.calls} == {threading.get_ident()}  # on the loop


async def test_at_is_the_clock_at_the_edge_not_when_the_loop_gets_to_it(
    tmp_path: Path, make_board: MakeBoard
) -> None:
    now = [1000.0]
    prof = toml_profile(tmp_path, sensor("bell", 27, bounce_ms=0, holdoff_ms=0, **ACTIVE_LOW))
    sink = RecordingSink()
    board = make_board(prof, sink, lambda: now[0])
    board.find("bell").device.pin.drive_low()  # pressed; the handover to the loop is queued
    now[0] = 2000.0
    assert await until(lambda: sink.calls, 1)
    assert sink.calls[0].at == 1000.0


async def test_an_input_active_at_start_is_an_alarm(tmp_path: Path) -> None:
    from gpiozero.pins.mock import MockFactory

    prof = toml_profile(tmp_path, sensor("external", 5, bounce_ms=0))
    factory = MockFactory(pin_class=DebouncedMockPin)
    factory.pin(5).drive_high()  # the door contact is open when the daemon starts
    sink = RecordingSink()
    board = Board(prof, sink, time.time, factory=factory, emulated=True)
    try:
        assert await until(lambda: sink.calls, 1)
        assert sink.of("io") == ["start"]
    finally:
        board.close()


async def test_a_failing_sink_does_not_stop_the_next_edge(
    tmp_path: Path, make_board: MakeBoard
) -> None:
    class Broken(RecordingSink):
        def pulse(self, channel: int, kind: str, at: float) -> None:
            super().pulse(channel, kind, at)
            if len(self.calls) == 1:
                raise RuntimeError("alarm service bug")

    prof = toml_profile(tmp_path, sensor("bell", 27, bounce_ms=0, holdoff_ms=0, **ACTIVE_LOW))
    sink = Broken()
    board = make_board(prof, sink)
    for _ in range(2):
        await board.drive("bell", "on")
        await board.drive("bell", "off")
    assert await until(lambda: len(sink.calls) == 2, 1)


async def test_drive_refused_on_real_pins(tmp_path: Path) -> None:
    from gpiozero.pins.mock import MockFactory

    prof = toml_profile(tmp_path, sensor("bell", 27, **ACTIVE_LOW), gpio="lgpio")
    # A factory marked real, as Board.open marks lgpio's: the pins are not ours to drive.
    board = Board(prof, RecordingSink(), time.time, factory=MockFactory(), emulated=False)
    try:
        with pytest.raises(NotSupported, match="real GPIO inputs"):
            await board.drive("bell", "press")
        assert board.status()["pins"] == "lgpio"
    finally:
        board.close()


@pytest.mark.skipif(on_raspberry_pi(), reason="a Pi has the GPIO chip")
async def test_real_pins_where_there_are_none_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(GpioUnavailable, match="pi4-hq"):
        Board.open(load_profile("pi4-hq"), RecordingSink(), time.time)


def test_gpiozero_mock_variable_puts_any_profile_on_mock_pins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "mock")
    factory, emulated = open_factory(load_profile("pi4-hq"))
    from gpiozero.pins.mock import MockFactory

    assert emulated and isinstance(factory, MockFactory)
    factory.close()


async def test_status_shows_each_input_and_led(tmp_path: Path, make_board: MakeBoard) -> None:
    board = make_board(load_profile("emulated"), RecordingSink())
    await board.drive("pir", "on")
    st = board.status()
    assert st["pins"] == "mock"
    inputs = {i["name"]: i for i in st["inputs"]}
    assert set(inputs) == {"pir", "bell", "lock", "external"}
    assert inputs["pir"]["level"] == "active" and inputs["bell"]["level"] == "inactive"
    assert inputs["bell"]["gpio"] == 27 and inputs["external"]["alarm"] == "io"
    assert {led["role"]: led["lit"] for led in st["leds"]} == {"status": False, "ir": False}


# --- LEDs ---------------------------------------------------------------------------------


async def test_led_pattern_runs_on_the_pin(
    tmp_path: Path, make_board: MakeBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    tick = 0.02
    monkeypatch.setattr(board_module, "TICK", tick)
    prof = toml_profile(tmp_path, '\n[[leds]]\nrole = "status"\npin = 23\n')
    board = make_board(prof, RecordingSink())
    pin = board.leds["status"].device.pin
    board.show("status", "#.#" + "." * 7, "double")  # two flashes per 10 ticks
    await asyncio.sleep(25 * tick)
    board.show("status", "#", "steady")
    states = list(pin.states)
    # (seconds since the previous change, new level): off at start, then the pattern.
    levels = [s.state for s in states[1:]]
    assert levels[:8] == [True, False, True, False, True, False, True, False], levels
    # Lit 1, dark 1, lit 1, dark 7, lit 1... ticks: whatever a tick really takes here.
    gaps = [s.timestamp for s in states[2:7]]
    short = [gaps[0], gaps[1], gaps[2], gaps[4]]
    assert max(short) < 2 * min(short) and 5 < gaps[3] / (sum(short) / 4) < 9, gaps
    assert pin.state and board.leds["status"].lit
    pin.clear_states()
    await asyncio.sleep(5 * tick)
    assert [s.state for s in pin.states] == [True]  # steady: no more changes
    board.show("status", ".", "off")
    assert not pin.state


# --- profile fields -------------------------------------------------------------------------


def test_profile_sensor_fields_and_their_checks(tmp_path: Path) -> None:
    prof = toml_profile(tmp_path, sensor("pir", 17) + sensor("bell", 27, **ACTIVE_LOW))
    pir, bell = prof.doc.sensors
    assert (pir.bounce_ms, pir.holdoff, bell.holdoff) == (50, 2.0, 3.0)
    with pytest.raises(SchemaError, match=r"sensors\[0\].active_high.*active low"):
        toml_profile(tmp_path, sensor("bell", 27, pull_up=True))
    with pytest.raises(SchemaError, match=r"sensors\[1\].*second pir on channel 0"):
        toml_profile(tmp_path, sensor("pir", 17) + sensor("pir", 18))
    with pytest.raises(SchemaError, match="holdoff_ms"):
        toml_profile(tmp_path, sensor("pir", 17, holdoff_ms=-1))
    with pytest.raises(SchemaError, match=r"leds\[0\].on_below_lux"):
        toml_profile(tmp_path, '[[leds]]\nrole = "ir"\npin = 24\non_below_lux = 50.0\n')


def test_which_profiles_are_on_mock_pins() -> None:
    assert load_profile("emulated").gpio_emulated
    assert load_profile("emulated-dual").gpio_emulated  # auto: every channel emulated
    for name in ("pi-zero-2w-cam3", "pi4-hq", "pi5-cam3-ptz", "usb-webcam"):
        assert not load_profile(name).gpio_emulated, name


def test_gpiozero_stays_inside_hw() -> None:
    """Nothing above the hardware layer knows gpiozero (issue 10, Deliver 1)."""
    root = Path(hss_pu.__file__).parent
    users = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("gpiozero", "lgpio") for n in names):
                users.add(path.relative_to(root.parent).as_posix())
    assert users and all(u.startswith("hss_pu/hw/") for u in users), users
