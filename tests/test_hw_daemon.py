"""The hardware layer in the real daemon: ``hss-pu sensor`` through the real control
socket drives the emulated inputs into the AlarmSink, ``hss-pu status`` shows inputs and
LEDs, and a device with real pins refuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hss_pu.hw.pins import ENV
from hss_pu.reference_platform.server import ReferencePlatform

from .conftest import on_raspberry_pi
from .support.rig import DEVICE, MakeRig, Rig, build_daemon, daemon_config, run_daemon, until
from .support.rig import write_config_file as write_rig_config
from .test_cli_imports import heavy, imported, run_cli


@dataclass
class Sensing:
    rig: Rig
    config: Path  # for hss-pu ... --config

    def alarms(self, alarm_type: int | None = None) -> list[str]:
        """The AlarmNotify states the platform got (of one type), in order."""
        got = self.rig.platform.alarms(DEVICE)
        return [a.state for a in got if alarm_type is None or a.type == alarm_type]


@pytest.fixture
async def sensing_rig(platform: ReferencePlatform, tmp_path: Path) -> AsyncIterator[Sensing]:
    """The emulated device online (control plane only), its board reporting to the
    alarm service, and its config file for the CLI."""
    storage = tmp_path / "pu"
    rig = await run_daemon(platform, build_daemon(platform, storage, start_media=False))
    config = write_rig_config(daemon_config(platform, storage), tmp_path / "config.toml")
    try:
        # A short alarm hold, so a PIR's end follows its hold-off within the test.
        r = await rig.set_config({"channels": {"0": {"alarms": {"pir": {"hold": 1}}}}})
        assert r.err is None, r
        yield Sensing(rig, config)
    finally:
        assert await rig.stop() == 0


async def cli(*args: str) -> tuple[int, str, str]:
    rc, out, err, _ = await run_cli(*args)
    return rc, out, err


async def test_sensor_command_drives_emulated_inputs_into_the_alarm_sink(
    sensing_rig: Sensing,
) -> None:
    s = sensing_rig
    cfg = str(s.config)
    rc, out, err, _ = await run_cli("sensor", "bell", "press", "--config", cfg, importtime=True)
    assert rc == 0, (out, err[-2000:])
    modules = imported(err)
    assert "hss_pu.cli" in modules and heavy(modules) == [] and "gpiozero" not in modules
    assert json.loads(out) == {"ok": True, "sensor": "bell", "channel": 0, "action": "press"}
    assert await until(lambda: s.alarms(), 3)
    assert [(a.type, a.state, a.channel) for a in s.rig.platform.alarms(DEVICE)] == [
        (10, "pulse", 0)
    ]

    assert (await cli("sensor", "pir", "on", "--config", cfg))[0] == 0
    assert await until(lambda: s.alarms(12) == ["start"], 3)
    rc, out, err = await cli("status", "--config", cfg)
    assert rc == 0, err
    hw = json.loads(out)["hw"]
    inputs = {i["name"]: i for i in hw["inputs"]}
    assert inputs["pir"]["level"] == "active" and inputs["pir"]["alarm_active"] is True
    assert inputs["bell"]["level"] == "inactive" and inputs["bell"]["raised"] == 1
    leds = {led["role"]: led for led in hw["leds"]}
    assert leds["status"]["shows"] == "online" and leds["status"]["lit"] is True
    assert leds["ir"]["lit"] is False and hw["light"]["led_setting"] is True

    assert (await cli("sensor", "pir", "off", "--config", cfg))[0] == 0
    # After the input's hold-off (2 s) and the alarm's hold (1 s).
    assert await until(lambda: s.alarms(12) == ["start", "end"], 6)
    assert s.rig.daemon.board is not None
    assert s.rig.daemon.board.find("pir").absorbed == 0


async def test_sensor_command_says_what_it_cannot_do(sensing_rig: Sensing) -> None:
    cfg = str(sensing_rig.config)
    rc, out, err = await cli("sensor", "motion", "on", "--config", cfg)
    assert rc == 1 and out == ""
    assert "no sensor 'motion' on this device (have: bell, external, lock, pir)" in err
    rc, _, err = await cli("sensor", "bell", "on", "--channel", "1", "--config", cfg)
    assert rc == 1 and "no bell input on channel 1" in err
    rc, _, err = await cli("sensor", "doorbell", "on", "--config", cfg)
    assert rc == 2 and "invalid choice" in err  # argparse: NAME is one of the known ones
    await asyncio.sleep(0.3)
    assert sensing_rig.alarms() == []


async def test_sensor_command_refused_on_real_hardware(
    make_rig: MakeRig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    rig = await make_rig(profile="pi4-hq", size=(640, 360), start_media=False)
    doc = daemon_config(rig.platform, rig.storage, profile="pi4-hq", size=(640, 360))
    config = write_rig_config(doc, tmp_path / "pi.toml")
    rc, out, err = await cli("sensor", "bell", "press", "--config", str(config))
    assert rc == 1 and out == ""
    assert "the sensors of profile pi4-hq are real GPIO inputs" in err, err
    if not on_raspberry_pi():  # no GPIO chip here: the daemon runs on without the board
        hw = (await rig.status())["hw"]
        assert "lgpio" in hw["error"]
        assert rig.daemon.board is None and not rig.task.done()
