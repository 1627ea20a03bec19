"""Battery sources: where the charge level comes from, one small interface for three kinds.

- :class:`EmulatedBattery`: a model that drains (or, charging, fills) at the profile's
  rates; ``hss-pu battery PERCENT`` sets it. A laptop or CI machine playing a battery
  camera.
- :class:`SysfsBattery`: a Linux power supply, ``/sys/class/power_supply/<name>``:
  ``capacity`` (percent), else ``energy_now/energy_full`` or ``charge_now/charge_full``;
  ``status`` tells charging. A laptop's own battery, a UPS HAT with a kernel driver.
- :class:`AdcBattery`: the cell's voltage through a resistor divider into an MCP3xxx ADC
  on SPI (gpiozero), turned into percent by the profile's voltage curve.

A source's :meth:`~BatterySource.read` may block (sysfs, SPI): the service calls it off
the event loop. Whatever the hardware says, it returns a percent in 0-100 or raises
:class:`BatteryError` naming what was wrong: a gauge that returns garbage must not make
the device report nonsense.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hss_pu.errors import HssError
from hss_pu.hw.pins import open_factory
from hss_pu.profiles import AdcSpec, EmulatedBatterySpec, Profile

__all__ = [
    "SYSFS_ROOT",
    "AdcBattery",
    "BatteryError",
    "BatterySource",
    "EmulatedBattery",
    "Reading",
    "SysfsBattery",
    "open_source",
    "percent_on_curve",
]

log = logging.getLogger("hss_pu.hw.battery")

SYSFS_ROOT = Path("/sys/class/power_supply")
ADC_SAMPLES = 5  # one reading is the median of these (a radio burst dips the rail)
_MAX_SYSFS_BYTES = 64  # a sysfs attribute we read is a short line
# energy_now slightly above energy_full is normal after a calibration; far above is not.
_RATIO_SLACK = 1.1


class BatteryError(HssError):
    """The source gave no usable reading (missing, unreadable, or out of range)."""


@dataclass(frozen=True, slots=True)
class Reading:
    percent: float  # 0..100, finite
    charging: bool | None = None  # None: the source cannot tell


class BatterySource(Protocol):
    kind: str  # "emulated", "sysfs", "adc"

    def describe(self) -> str:
        """Where the level comes from, for the log and ``hss-pu status``."""
        ...

    def read(self) -> Reading:
        """The level now (may block: call it off the event loop); BatteryError when
        there is none that makes sense."""
        ...

    def close(self) -> None: ...


def _checked(percent: float, what: str) -> float:
    if not math.isfinite(percent) or not 0.0 <= percent <= 100.0:
        raise BatteryError(f"{what}: {percent!r} is not a percentage")
    return percent


class EmulatedBattery:
    """A battery model: ``level`` drains at ``drain_per_hour`` while discharging and fills
    at ``charge_per_hour`` while charging (then stays full). Thread-safe: the daemon sets
    it on the loop, the service reads it on a worker thread."""

    kind = "emulated"

    def __init__(
        self, spec: EmulatedBatterySpec, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.spec = spec
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._level = float(spec.start_percent)
        self._charging = spec.charging
        self._since = monotonic()

    def describe(self) -> str:
        return "emulated"

    def _now_locked(self) -> float:
        hours = max(0.0, self._monotonic() - self._since) / 3600
        if self._charging:
            return min(100.0, self._level + hours * self.spec.charge_per_hour)
        return max(0.0, self._level - hours * self.spec.drain_per_hour)

    def set(self, percent: float, charging: bool | None = None) -> None:
        """Set the level (and, given, whether it charges) from now on."""
        _checked(percent, "emulated battery")
        with self._lock:
            self._level = float(percent)
            if charging is not None:
                self._charging = charging
            self._since = self._monotonic()

    def read(self) -> Reading:
        with self._lock:
            return Reading(self._now_locked(), self._charging)

    def close(self) -> None:
        pass


# --- Linux power supply -------------------------------------------------------------------


def _attr(directory: Path, name: str) -> str | None:
    """A sysfs attribute's text, None when the driver has no such attribute."""
    try:
        with (directory / name).open("rb") as f:
            raw = f.read(_MAX_SYSFS_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:  # EIO, ENODATA: the gauge did not answer this time
        raise BatteryError(f"{directory / name}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_SYSFS_BYTES:
        raise BatteryError(f"{directory / name}: not a sysfs value (over {_MAX_SYSFS_BYTES} B)")
    return raw.decode("ascii", errors="replace").strip()


def _int_attr(directory: Path, name: str) -> int | None:
    text = _attr(directory, name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise BatteryError(f"{directory / name}: {text[:20]!r} is not a number") from None


def parse_power_supply(directory: Path) -> Reading:
    """One power supply's level: ``capacity``, else the energy or charge ratio."""
    capacity = _int_attr(directory, "capacity")
    if capacity is not None:
        percent = _checked(float(capacity), str(directory / "capacity"))
    else:
        percent = -1.0
        for now_name, full_name in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
            now, full = _int_attr(directory, now_name), _int_attr(directory, full_name)
            if now is None or full is None:
                continue
            if full <= 0 or now < 0 or now > full * _RATIO_SLACK:
                raise BatteryError(f"{directory}: {now_name} {now} of {full_name} {full}")
            percent = min(100.0, 100.0 * now / full)
            break
        if percent < 0:
            raise BatteryError(f"{directory}: no capacity, energy_now or charge_now")
    status = _attr(directory, "status")
    charging = {"Charging": True, "Full": True, "Discharging": False, "Not charging": False}
    return Reading(percent, charging.get(status or ""))


def find_system_battery(root: Path) -> Path | None:
    """The first power supply that is the system's battery: type Battery, present, and
    not a peripheral's (scope Device: a mouse, a headset)."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return None
    for d in entries:
        try:
            if _attr(d, "type") != "Battery" or _attr(d, "scope") == "Device":
                continue
            if _attr(d, "present") == "0":
                continue
        except BatteryError:
            continue
        return d
    return None


class SysfsBattery:
    """``root/<name>``; with no name the first system battery (looked for again at each
    read until one appears: a UPS HAT whose driver loads late)."""

    kind = "sysfs"

    def __init__(self, name: str = "", root: Path = SYSFS_ROOT) -> None:
        if "/" in name or name in (".", ".."):
            raise ValueError(f"not a power-supply name: {name!r}")
        self.name = name
        self.root = root
        self._dir: Path | None = root / name if name else None

    def describe(self) -> str:
        d = self._dir
        return f"sysfs {d}" if d is not None else f"sysfs {self.root} (no battery found yet)"

    def read(self) -> Reading:
        d = self._dir
        if d is None:
            d = find_system_battery(self.root)
            if d is None:
                raise BatteryError(f"no battery under {self.root}")
            self._dir = d
            log.info("battery: using %s", d)
        if not d.is_dir():
            raise BatteryError(f"{d}: no such power supply")
        if _attr(d, "present") == "0":
            raise BatteryError(f"{d}: battery not present")
        return parse_power_supply(d)

    def close(self) -> None:
        pass


# --- an ADC on SPI ---------------------------------------------------------------------------


def percent_on_curve(volts: float, curve: Sequence[tuple[float, int]]) -> float:
    """Battery volts to percent on a rising curve (linear between points, clamped)."""
    if volts <= curve[0][0]:
        return float(curve[0][1])
    for (v0, p0), (v1, p1) in itertools.pairwise(curve):
        if volts <= v1:
            return p0 + (p1 - p0) * (volts - v0) / (v1 - v0)
    return float(curve[-1][1])


_ADC_CLASSES = {
    "mcp3002": "MCP3002", "mcp3004": "MCP3004", "mcp3008": "MCP3008",
    "mcp3202": "MCP3202", "mcp3204": "MCP3204", "mcp3208": "MCP3208",
}  # fmt: skip


class AdcBattery:
    """An MCP3xxx channel on SPI port 0 (``spec.select``: CE0 or CE1) of ``factory``.

    A reading is the median of :data:`ADC_SAMPLES` conversions. A conversion at 0 or at
    full scale is refused: a divider that came loose reads 0 V (or floats to the rail),
    and a cell above vref x divider cannot be measured; both mean the wiring, not the
    charge.

    gpiozero 2.0's software SPI (the mock factory's) builds a device without passing the
    factory on, so on mock pins ``GPIOZERO_PIN_FACTORY=mock`` must be set (as
    ``make test`` does); real pins use the hardware SPI.
    """

    kind = "adc"

    def __init__(
        self, spec: AdcSpec, factory: Any, *, samples: int = ADC_SAMPLES, owns_factory: bool = False
    ) -> None:
        import gpiozero

        self.spec = spec
        self.factory = factory
        self.owns_factory = owns_factory
        self.samples = max(1, samples)
        cls = getattr(gpiozero, _ADC_CLASSES[spec.chip])
        try:
            self.device = cls(
                channel=spec.channel, max_voltage=spec.vref, port=0, device=spec.select,
                pin_factory=factory,
            )  # fmt: skip
        except Exception as exc:  # gpiozero's and the SPI driver's errors, at our edge
            raise BatteryError(f"{spec.chip} on SPI0 CE{spec.select}: {exc}") from exc
        self._full = (1 << int(self.device.bits)) - 1

    def describe(self) -> str:
        s = self.spec
        return f"adc {s.chip} channel {s.channel} (SPI0 CE{s.select}, divider {s.divider:g})"

    def read(self) -> Reading:
        raws: list[int] = []
        for _ in range(self.samples):
            try:
                raws.append(int(self.device.raw_value))
            except Exception as exc:
                raise BatteryError(f"{self.spec.chip}: {exc}") from exc
        raw = statistics.median_low(raws)
        if raw <= 0:
            raise BatteryError(f"{self.spec.chip} channel {self.spec.channel} reads 0 V")
        if raw >= self._full:
            raise BatteryError(
                f"{self.spec.chip} channel {self.spec.channel} at full scale (above "
                f"{self.spec.vref:g} V: check the divider)"
            )
        volts = raw / self._full * self.spec.vref * self.spec.divider
        return Reading(percent_on_curve(volts, self.spec.curve), None)

    def close(self) -> None:
        self.device.close()
        if self.owns_factory:
            self.factory.close()


def open_source(
    profile: Profile, *, factory: Any = None, sysfs_root: Path = SYSFS_ROOT
) -> BatterySource:
    """The profile's battery source. An ADC goes on ``factory`` (the board's pins), else
    on pins of its own (:func:`~hss_pu.hw.pins.open_factory`, closed with it).
    BatteryError or GpioUnavailable when it cannot be opened."""
    spec = profile.doc.battery
    if spec.source == "sysfs":
        return SysfsBattery(spec.sysfs_name, sysfs_root)
    if spec.source == "adc":
        if spec.adc is None:
            raise BatteryError("source 'adc' needs [battery.adc]")
        if factory is not None:
            return AdcBattery(spec.adc, factory)
        own, _ = open_factory(profile)
        try:
            return AdcBattery(spec.adc, own, owns_factory=True)
        except BaseException:
            own.close()
            raise
    return EmulatedBattery(spec.emulated)
