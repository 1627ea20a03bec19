"""Battery sources (hss_pu/hw/battery.py) and their profile keys: a Linux power supply in
a fake sysfs tree, an MCP3008 on gpiozero's mock SPI, the emulated model; each turns
what the hardware says into a percent or refuses it, and a profile that cannot work
fails at load naming its key."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockSPIDevice

from hss_pu.hw.battery import (
    AdcBattery,
    BatteryError,
    EmulatedBattery,
    SysfsBattery,
    find_system_battery,
    open_source,
    percent_on_curve,
)
from hss_pu.profiles import LIION_CURVE, AdcSpec, EmulatedBatterySpec, load_profile_file
from hss_pu.schema import SchemaError

# --- sysfs -----------------------------------------------------------------------------------


def supply(root: Path, name: str, **attrs: object) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for key, value in attrs.items():
        (d / key).write_text(f"{value}\n")
    return d


def test_sysfs_capacity_and_status(tmp_path: Path) -> None:
    supply(tmp_path, "AC", type="Mains", online=1)
    supply(tmp_path, "BAT0", type="Battery", present=1, capacity=87, status="Discharging")
    src = SysfsBattery("", tmp_path)
    r = src.read()
    assert (r.percent, r.charging) == (87.0, False)
    assert src.describe() == f"sysfs {tmp_path / 'BAT0'}"
    (tmp_path / "BAT0" / "status").write_text("Charging\n")
    assert src.read().charging is True
    (tmp_path / "BAT0" / "status").write_text("Unknown\n")
    assert src.read().charging is None


def test_sysfs_energy_and_charge_ratios(tmp_path: Path) -> None:
    supply(tmp_path, "BAT1", type="Battery", energy_now=30_000_000, energy_full=40_000_000)
    assert SysfsBattery("BAT1", tmp_path).read().percent == 75.0
    # After a calibration energy_now may sit a little above energy_full: that is full.
    supply(tmp_path, "BAT2", type="Battery", charge_now=4_100_000, charge_full=4_000_000)
    assert SysfsBattery("BAT2", tmp_path).read().percent == 100.0


def test_sysfs_system_battery_skips_peripherals_and_absent_ones(tmp_path: Path) -> None:
    assert find_system_battery(tmp_path) is None
    supply(tmp_path, "AC0", type="Mains")
    supply(tmp_path, "BAT0", type="Battery", present=0, capacity=50)
    supply(tmp_path, "hid-mouse-battery", type="Battery", scope="Device", capacity=20)
    supply(tmp_path, "max17048", type="Battery", capacity=64)  # a UPS HAT's fuel gauge
    assert find_system_battery(tmp_path) == tmp_path / "max17048"
    assert SysfsBattery("", tmp_path).read().percent == 64


@pytest.mark.parametrize(
    ("attrs", "problem"),
    [
        ({"capacity": "garbage"}, "is not a number"),
        ({"capacity": ""}, "is not a number"),
        ({"capacity": 101}, "is not a percentage"),
        ({"capacity": -1}, "is not a percentage"),
        ({"capacity": "9" * 80}, "not a sysfs value"),
        ({"energy_now": 5, "energy_full": 0}, "energy_now 5 of energy_full 0"),
        ({"energy_now": 900, "energy_full": 100}, "energy_now 900"),
        ({"charge_now": -4, "charge_full": 100}, "charge_now -4"),
        ({"status": "Charging"}, "no capacity, energy_now or charge_now"),
        ({"capacity": 50, "present": 0}, "not present"),
    ],
)
def test_sysfs_garbage_is_refused(tmp_path: Path, attrs: dict[str, Any], problem: str) -> None:
    supply(tmp_path, "BAT0", type="Battery", **attrs)
    with pytest.raises(BatteryError, match=problem):
        SysfsBattery("BAT0", tmp_path).read()


def test_sysfs_missing_supply_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(BatteryError, match="no such power supply"):
        SysfsBattery("BAT9", tmp_path).read()
    with pytest.raises(BatteryError, match="no battery under"):
        SysfsBattery("", tmp_path).read()
    for name in ("../etc", ".."):
        with pytest.raises(ValueError):
            SysfsBattery(name, tmp_path)
    # A battery that appears later (a driver that loads late) is found then.
    src = SysfsBattery("", tmp_path)
    with pytest.raises(BatteryError):
        src.read()
    supply(tmp_path, "BAT0", type="Battery", capacity=40)
    assert src.read().percent == 40


# --- the emulated model ----------------------------------------------------------------------


def test_emulated_drains_charges_and_refuses_nonsense() -> None:
    now = [0.0]
    spec = EmulatedBatterySpec(start_percent=50, drain_per_hour=10, charge_per_hour=60)
    b = EmulatedBattery(spec, monotonic=lambda: now[0])
    assert b.read().percent == 50 and b.read().charging is False
    now[0] = 1800  # half an hour
    assert b.read().percent == pytest.approx(45)
    b.set(99, charging=True)
    now[0] += 1800
    assert b.read().percent == 100 and b.read().charging is True  # full, and it stays full
    b.set(1, charging=False)
    now[0] += 3600
    assert b.read().percent == 0  # flat, not negative
    for bad in (math.nan, -1, 100.5, math.inf):
        with pytest.raises(BatteryError):
            b.set(bad)


# --- an ADC on SPI -----------------------------------------------------------------------------


def test_voltage_curve() -> None:
    assert percent_on_curve(3.0, LIION_CURVE) == 0
    assert percent_on_curve(3.3, LIION_CURVE) == 0
    assert percent_on_curve(3.75, LIION_CURVE) == pytest.approx(42.5)
    assert percent_on_curve(4.2, LIION_CURVE) == 100
    assert percent_on_curve(4.5, LIION_CURVE) == 100


class MockMcp3008(MockSPIDevice):  # type: ignore[misc]
    """The MCP3008's side of the wire on SPI0 CE0 (GPIO 11, 10, 9, 8): a start bit, the
    single/differential bit, 3 channel bits in; a null bit and 10 result bits out.
    ``volts[ch]`` is what each channel sees."""

    rx_buf: list[int]

    def __init__(self, factory: MockFactory) -> None:
        super().__init__(11, 10, 9, 8, pin_factory=factory)
        self.factory = factory
        self.volts = [0.0] * 8
        self.vref = 3.3
        self.state = "idle"
        self.conversions = 0
        self.dip_every = 0  # every n-th conversion reads 0 V (0: none)

    def on_start(self) -> None:
        super().on_start()
        self.state = "idle"

    def on_bit(self) -> None:
        if self.state == "idle" and self.rx_buf[-1]:
            self.state, self.rx_buf = "mode", []
        elif self.state == "mode":
            self.state, self.rx_buf = "channel", []
        elif self.state == "channel" and len(self.rx_buf) == 3:
            self.conversions += 1
            v = min(max(self.volts[self.rx_word()], 0.0), self.vref)
            if self.dip_every and self.conversions % self.dip_every == 0:
                v = 0.0
            self.tx_word(min(1023, int(v / self.vref * 1024)), 12)
            self.state = "result"


@pytest.fixture
def spi(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockMcp3008]:
    """An MCP3008 on a MockFactory. gpiozero's software SPI needs the default factory
    to be the mock one too (hw/battery.py AdcBattery)."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    factory = MockFactory()
    chip = MockMcp3008(factory)
    yield chip
    chip.close()
    factory.close()


def test_adc_reads_the_divided_voltage_through_the_curve(spi: MockMcp3008) -> None:
    spec = AdcSpec(chip="mcp3008", channel=2, vref=3.3, divider=2.0)
    adc = AdcBattery(spec, spi.factory)
    try:
        spi.volts[2] = 3.75 / 2  # a cell at 3.75 V behind a 1:2 divider
        r = adc.read()
        assert r.percent == pytest.approx(42.5, abs=1.0) and r.charging is None
        spi.volts[2] = 2.05  # 4.1 V
        assert adc.read().percent == pytest.approx(90, abs=1.5)
        assert "mcp3008 channel 2" in adc.describe()
    finally:
        adc.close()


def test_adc_refuses_a_loose_divider_and_full_scale(spi: MockMcp3008) -> None:
    adc = AdcBattery(AdcSpec(channel=0), spi.factory)
    try:
        spi.volts[0] = 0.0
        with pytest.raises(BatteryError, match="reads 0 V"):
            adc.read()
        spi.volts[0] = 3.3
        with pytest.raises(BatteryError, match="full scale"):
            adc.read()
    finally:
        adc.close()


def test_adc_takes_the_median_of_its_samples(spi: MockMcp3008) -> None:
    adc = AdcBattery(AdcSpec(channel=1), spi.factory, samples=5)
    try:
        spi.volts[1] = 1.9  # 3.8 V: 55 %
        spi.dip_every = 2  # every other conversion dips to nothing (a radio burst)
        assert adc.read().percent == pytest.approx(55, abs=1.5)
        assert spi.conversions == 5
        spi.dip_every = 1  # every conversion: that is the wiring, not a burst
        with pytest.raises(BatteryError, match="reads 0 V"):
            adc.read()
    finally:
        adc.close()


# --- profile keys ---------------------------------------------------------------------------------

BASE = """\
hardware_model = "T"
firmware_model = "t"
[[channels]]
id = 0
backend = "emulated"
encoder = "libx264"
resolutions = [[320, 180]]
max_fps = 10
max_bitrate = 1_000_000
default_bitrate = 500_000
"""


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "p.toml"
    path.write_text(BASE + text)
    return load_profile_file(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[battery]\nsource = "sysfs"\n', "battery.present"),
        ('[battery]\npresent = true\nsource = "adc"\n', "battery.adc"),
        ('[battery]\npresent = true\nsysfs_name = "BAT0"\n', "battery.sysfs_name"),
        (
            '[battery]\npresent = true\nsource = "sysfs"\nsysfs_name = "../x"\n',
            "battery.sysfs_name",
        ),
        ("[battery]\npresent = true\nlow_percent = 98\n", "battery.hysteresis_percent"),
        ("[battery]\npresent = true\nlow_percent = 101\n", "battery.low_percent"),
        ("[battery]\npresent = true\npoll_seconds = 0\n", "battery.poll_seconds"),
        (
            '[battery]\npresent = true\nsource = "adc"\nadc = { chip = "mcp3004", channel = 5 }\n',
            "battery.adc.channel",
        ),
        (
            '[battery]\npresent = true\nsource = "adc"\nadc = { curve = [[4.2, 0], [3.3, 100]] }\n',
            "battery.adc.curve",
        ),
        (
            '[battery]\npresent = true\nsource = "adc"\n'
            "adc = { curve = [[3.3, 10], [4.2, 100]] }\n",
            "battery.adc.curve",
        ),
        (
            '[battery]\npresent = true\nsource = "adc"\nadc = { vref = 3.3, divider = 1.0 }\n',
            "battery.adc.curve",  # 4.2 V cannot be read through 3.3 V undivided
        ),
        (
            '[battery]\npresent = true\nsource = "adc"\nadc = { channel = 0 }\n'
            '[[sensors]]\nkind = "pir"\npin = 9\n',
            "battery.adc (SPI miso)",
        ),
    ],
)
def test_profile_battery_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SchemaError) as err:
        load(tmp_path, text)
    assert key in str(err.value)


def test_profile_battery_sources_load(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        '[battery]\npresent = true\nsource = "adc"\n'
        'adc = { chip = "mcp3208", channel = 7, select = 1, divider = 3.0 }\n',
    )
    assert p.doc.battery.adc.channel == 7 and p.capabilities()["battery"] is True
    assert p.capabilities()["sensors"] == ["battery"]
    p = load(tmp_path, '[battery]\npresent = true\nsource = "sysfs"\nsysfs_name = "BAT0"\n')
    src = open_source(p, sysfs_root=tmp_path)
    assert isinstance(src, SysfsBattery) and src.describe().endswith("BAT0")
    p = load(tmp_path, "[battery]\npresent = false\n")
    assert p.capabilities()["battery"] is False and p.alarm_kinds(0) == []


def test_emulated_battery_profile_is_a_battery_doorbell() -> None:
    from hss_pu.profiles import load_profile

    p = load_profile("emulated-battery")
    d = p.doc
    assert [c.backend for c in d.channels] == ["emulated"] and d.channels[0].motion_detection
    assert {s.kind for s in d.sensors} == {"pir", "bell"} and p.gpio_emulated
    assert [led.role for led in d.leds] == ["status"]
    assert d.battery.present and d.battery.source == "emulated" and d.ptz.type == "none"
    cap = p.capabilities()
    assert cap["battery"] is True and cap["ptz"] is False and cap["led"] is True
    assert cap["alarms"]["motion"] is True and cap["sensors"] == ["pir", "bell", "battery"]
    # Every other profile has no battery: GetCap says so.
    from hss_pu.profiles import iter_profiles

    others = [q.name for q in iter_profiles() if q.capabilities()["battery"]]
    assert others == ["emulated-battery"]
