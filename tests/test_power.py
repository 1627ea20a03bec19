"""Power (issue 11, item 2) in the real daemon against the reference platform:
BatteryChange after each login and per whole-percent change (rate limited, the latest
level winning), exactly one alarm 8 below the threshold until the level has risen past
the hysteresis, DevStatus ``battery``, garbage from the gauge ignored, KeepAwaken's
latest deadline, and ``hss-pu battery`` / ``hss-pu status`` through the control socket."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hss_pu.hw.battery import BatteryError, EmulatedBattery, Reading
from hss_pu.profiles import profiles_dir
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.services.power import PowerService

from .support.rig import (
    DEVICE,
    MakePlatform,
    Rig,
    build_daemon,
    daemon_config,
    run_daemon,
    until,
)
from .support.rig import write_config_file as write_rig_config
from .test_cli_imports import run_cli

pytestmark = pytest.mark.platform(hb_interval=1)  # a Keepalive a second

INTERVAL = 1.0  # s: the test profile's report_interval_seconds


def battery_profile(tmp_path: Path, **battery: object) -> Path:
    """emulated-battery with a still model (no drain) and a short report interval."""
    text = (profiles_dir() / "emulated-battery.toml").read_text()
    text = text.replace("report_interval_seconds = 5.0", f"report_interval_seconds = {INTERVAL}")
    text = text.replace("drain_per_hour = 2.0", "drain_per_hour = 0.0")
    text = text.replace("start_percent = 80.0", "start_percent = 60.0")
    for key, value in battery.items():
        text = text.replace("[battery]\n", f"[battery]\n{key} = {value}\n")
    path = tmp_path / "battery-test.toml"
    path.write_text(text)
    return path


@dataclass
class Powered:
    rig: Rig
    config: Path

    @property
    def platform(self) -> ReferencePlatform:
        return self.rig.platform

    @property
    def power(self) -> PowerService:
        assert self.rig.daemon.power is not None
        return self.rig.daemon.power

    def changes(self, since: float = 0.0) -> list[int]:
        return [
            int(r.params["battery"])
            for r in self.platform.records
            if r.name == "BatteryChange" and r.time >= since and r.err is None
        ]

    def change_times(self) -> list[float]:
        return [r.time for r in self.platform.records if r.name == "BatteryChange"]

    def low_alarms(self) -> list[tuple[int, str, int, str]]:
        return [
            (a.type, a.state, a.channel, a.desc)
            for a in self.platform.alarms(DEVICE)
            if a.type == 8
        ]

    async def set(self, percent: float) -> int | None:
        reply = await self.rig.daemon._cmd_battery({"cmd": "battery", "percent": percent})
        assert reply["ok"], reply
        level: int | None = reply["battery"]
        return level


@pytest.fixture
async def powered(platform: ReferencePlatform, tmp_path: Path) -> AsyncIterator[Powered]:
    """The battery doorbell (control plane only) online, with its config for the CLI."""
    storage = tmp_path / "pu"
    profile = str(battery_profile(tmp_path))
    daemon = build_daemon(platform, storage, start_media=False, profile=profile)
    rig = await run_daemon(platform, daemon)
    config = write_rig_config(
        daemon_config(platform, storage, profile=profile), tmp_path / "config.toml"
    )
    try:
        yield Powered(rig, config)
    finally:
        assert await rig.stop() == 0


async def test_battery_change_after_login_and_per_whole_percent(powered: Powered) -> None:
    p = powered
    # After the login: the level at once.
    assert await until(lambda: p.changes() == [60], 3), p.changes()
    assert p.platform.battery(DEVICE) == 60
    await p.set(59.6)  # still 60 as a whole percent: nothing
    await p.set(60.4)
    t0 = time.time()
    assert await p.set(55) == 55
    assert await until(lambda: p.changes() == [60, 55], INTERVAL + 2), p.changes()
    # A burst inside the interval: one BatteryChange at its end, the latest level.
    for level in (54, 53, 52, 51):
        await p.set(level)
    assert await until(lambda: p.changes() == [60, 55, 51], INTERVAL + 2), p.changes()
    times = p.change_times()
    assert times[-1] - times[-2] >= INTERVAL - 0.5, times  # arrival times: some jitter
    # Back to the level last sent within the interval: nothing to say.
    await p.set(50)
    await p.set(51)
    await until(lambda: len(p.changes()) > 3, INTERVAL + 0.5)
    assert p.changes() == [60, 55, 51]
    assert p.power.stats.sent == 3 and time.time() - t0 < 10

    # DevStatus carries the level.
    status = (await p.rig.call("DevStatus")).resp
    assert status["battery"] == 51

    # Another login: the level again at once, whatever the interval.
    since = time.time()
    await p.platform.kick(DEVICE)
    await p.platform.wait_login(lambda r: r.accepted and r.time >= since, timeout=10)
    assert await until(lambda: p.changes(since) == [51], 3), p.changes(since)


async def test_a_reading_on_a_rounding_boundary_does_not_flap(powered: Powered) -> None:
    p = powered
    assert await p.set(50) == 50
    for reading, level in ((50.6, 50), (50.4, 50), (50.8, 51), (50.3, 51), (50.2, 50)):
        assert await p.set(reading) == level, reading


async def test_one_low_battery_alarm_until_the_level_recovers(powered: Powered) -> None:
    p = powered  # low_percent 15, hysteresis 5: re-armed at 20
    for level in (16, 15):
        await p.set(level)
    assert p.low_alarms() == [] and p.power.stats.alarms == 0
    await p.set(14)
    assert await until(lambda: p.low_alarms(), 3)
    for level in (13, 9, 14, 16, 19, 12):  # wobbling below the re-arm level: no more
        await p.set(level)
    await until(lambda: len(p.low_alarms()) > 1, 1.0)
    assert p.low_alarms() == [(8, "pulse", 0, "low battery")]
    # Bit 8 in the next Keepalive after the pulse (one a second here).
    assert await until(
        lambda: any(
            r.name == "Keepalive" and int(r.params["channels"][0].get("alarm") or 0) & (1 << 8)
            for r in p.platform.records
        ),
        3,
    )
    await p.set(20)  # recovered: armed again
    await p.set(14)
    assert await until(lambda: len(p.low_alarms()) == 2, 3), p.low_alarms()
    assert p.power.stats.alarms == 2


async def test_low_battery_alarm_follows_the_config_document(powered: Powered) -> None:
    p = powered
    conf = (await p.rig.call("GetConfig")).resp
    assert conf["channels"]["0"]["alarms"]["battery"] == {"on": True, "sensitivity": 50}
    r = await p.rig.set_config({"channels": {"0": {"alarms": {"battery": {"on": False}}}}})
    assert r.err is None, r
    await p.set(10)
    await until(lambda: p.low_alarms(), 1.0)
    assert p.low_alarms() == []  # switched off by the platform


async def test_the_platform_records_nothing_for_a_low_battery(
    make_platform: MakePlatform, tmp_path: Path
) -> None:
    """The reference platform's alarm policy films a bell's pulse, not a low battery."""
    platform = await make_platform(alarm_record=True)
    profile = str(battery_profile(tmp_path))
    daemon = build_daemon(platform, tmp_path / "pu", start_media=False, profile=profile)
    rig = await run_daemon(platform, daemon)
    try:
        p = Powered(rig, Path(profile))
        await p.set(10)
        assert await until(lambda: p.low_alarms(), 3)
        assert platform.alarm_recordings(DEVICE) == []
        (low,) = [a for a in platform.alarms(DEVICE) if a.type == 8]
        assert low.session_id is None
        assert low.to_json()["picture_expected"] is False  # `platform alarms`: no "(yet)"
        assert rig.daemon.sensors  # the bell, for contrast: its pulse starts a recording
        await rig.daemon.sensors["bell"]("press", 0)
        assert await until(lambda: platform.alarm_recordings(DEVICE), 3)
    finally:
        assert await rig.stop() == 0


async def test_garbage_from_the_gauge_is_ignored(
    powered: Powered, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = powered
    assert await until(lambda: p.changes() == [60], 3)
    source = p.power.source
    assert isinstance(source, EmulatedBattery)
    bad: list[object] = [
        Reading(math.nan),
        Reading(-3.0),
        Reading(250.0),
        Reading(math.inf),
        BatteryError("capacity: 'garbage' is not a number"),
        OSError("EIO"),
    ]

    def read() -> Reading:
        item = bad.pop(0)
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, Reading)
        return item

    monkeypatch.setattr(source, "read", read)
    for _ in range(6):
        assert await p.power.sample() == 60
    assert p.power.stats.bad_reads >= 6 and p.power.error is not None
    status = await p.rig.status()
    assert status["battery"]["level"] == 60 and status["battery"]["error"]
    await until(lambda: len(p.changes()) > 1, INTERVAL + 0.5)
    assert p.changes() == [60] and p.low_alarms() == []
    assert (await p.rig.call("DevStatus")).resp["battery"] == 60
    assert not p.rig.task.done()


async def test_keep_awaken_latest_deadline_wins(powered: Powered) -> None:
    channels = powered.rig.daemon.channels
    assert not channels.keep_awake_open() and channels.awake_until() == 0.0
    t0 = time.monotonic()
    assert (await powered.rig.call("KeepAwaken", {"channel": 0, "expired": 30})).err is None
    assert channels.keep_awake_open()
    assert 29 <= channels.awake_until() - t0 <= 31
    # A shorter window asked later does not cut the longer one short...
    assert (await powered.rig.call("KeepAwaken", {"channel": 0, "expired": 2})).err is None
    assert 29 <= channels.awake_until() - t0 <= 31
    # ...and a longer one extends it.
    assert (await powered.rig.call("KeepAwaken", {"channel": 0, "expired": 120})).err is None
    assert 119 <= channels.awake_until() - t0 <= 121


async def test_keep_awaken_window_closes() -> None:
    from hss_pu.profiles import load_profile
    from hss_pu.services.channels import ChannelRegistry

    reg = ChannelRegistry(load_profile("emulated-battery"))
    reg.keep_awake(0, 1)
    assert reg.keep_awake_open() and reg.awake(0)
    reg.keep_awake(0, 0)  # zero seconds: nothing changes
    assert reg.keep_awake_open()
    assert await until(lambda: not reg.keep_awake_open(), 2)
    assert not reg.awake(0)


async def test_battery_and_status_through_the_cli(powered: Powered) -> None:
    p = powered
    cfg = str(p.config)
    assert await until(lambda: p.changes() == [60], 3)
    rc, out, err, _ = await run_cli("battery", "12", "--config", cfg)
    assert rc == 0, err
    assert json.loads(out) == {"ok": True, "battery": 12, "charging": False}
    assert await until(lambda: p.low_alarms() == [(8, "pulse", 0, "low battery")], 3)
    assert await until(lambda: p.changes()[-1:] == [12], INTERVAL + 2), p.changes()
    assert p.platform.battery(DEVICE) == 12
    rc, out, err, _ = await run_cli("status", "--config", cfg)
    assert rc == 0, err
    battery = json.loads(out)["battery"]
    assert battery["level"] == 12 and battery["source"] == "emulated" and battery["low"]
    # Charging: the model fills from there.
    rc, out, err, _ = await run_cli("battery", "30", "--charging", "--config", cfg)
    assert rc == 0 and json.loads(out)["charging"] is True, err
    rc, _, err, _ = await run_cli("battery", "120", "--config", cfg)
    assert rc == 2 and "not in 0..100" in err


async def test_battery_command_refused_without_a_battery(
    platform: ReferencePlatform, tmp_path: Path
) -> None:
    storage = tmp_path / "pu"
    rig = await run_daemon(platform, build_daemon(platform, storage, start_media=False))
    try:
        cfg = write_rig_config(daemon_config(platform, storage), tmp_path / "config.toml")
        rc, out, err, _ = await run_cli("battery", "50", "--config", str(cfg))
        assert rc == 1 and out == "" and "this device has no battery" in err
        assert "battery" not in (await rig.call("DevStatus")).resp
        assert (await rig.call("GetCap")).resp["battery"] is False
    finally:
        assert await rig.stop() == 0


async def test_adc_battery_in_the_daemon(
    platform: ReferencePlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile whose battery is an MCP3008 behind a 1:2 divider, on the board's pins
    (gpiozero's MockFactory with the chip's side of SPI attached: there is no ADC here)."""
    from gpiozero.pins.mock import MockFactory

    from hss_pu.hw import board
    from hss_pu.hw.pins import DebouncedMockPin

    from .test_battery_sources import MockMcp3008

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")  # gpiozero's software SPI needs it
    factory = MockFactory(pin_class=DebouncedMockPin)
    chip = MockMcp3008(factory)
    chip.volts[3] = 1.9  # a cell at 3.8 V: 55 %
    monkeypatch.setattr(board, "open_factory", lambda profile: (factory, True))
    path = battery_profile(tmp_path)
    text = path.read_text().replace('source = "emulated"', 'source = "adc"')
    path.write_text(text.replace("[battery]\n", "[battery]\nadc = { channel = 3 }\n"))
    daemon = build_daemon(platform, tmp_path / "pu", start_media=False, profile=str(path))
    rig = await run_daemon(platform, daemon)
    try:
        p = Powered(rig, path)
        assert await until(lambda: p.changes() == [55], 5), p.changes()
        assert "mcp3008 channel 3" in p.power.source.describe()
        chip.volts[3] = 1.7  # 3.4 V: 2.5 %
        assert await p.power.sample() in (2, 3)
        assert await until(lambda: p.low_alarms() == [(8, "pulse", 0, "low battery")], 3)
        chip.volts[3] = 0.0  # the divider came loose: not an empty battery
        level = p.power.level
        assert await p.power.sample() == level and "reads 0 V" in (p.power.error or "")
        reply = await rig.daemon._cmd_battery({"cmd": "battery", "percent": 50})
        assert not reply["ok"] and "real one" in reply["error"]
    finally:
        assert await rig.stop() == 0
        chip.close()
