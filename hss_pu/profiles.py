"""Firmware profiles: what one hardware model can do, and so what ``GetCap`` reports.

A profile is a TOML file in ``firmware_profiles/`` (shipped inside the wheel as
``hss_pu/_firmware_profiles``). Camera makers add a file per model instead of code, so
the schema is strict: a typo in a GPIO pin must fail at start-up, not at the first alarm.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from hss_pu import __version__
from hss_pu.schema import SchemaError, convert, key_error, load_toml
from hss_pu.wire.alarms import ALARM_KINDS, KIND_OF_SENSOR

__all__ = [
    "ADC_CHANNELS",
    "ALARM_TYPE_OF_SENSOR",
    "IMPLEMENTED",
    "PCM_NAME",
    "AdcSpec",
    "AudioSpec",
    "BatterySpec",
    "ChannelSpec",
    "EmulatedBatterySpec",
    "LedSpec",
    "Profile",
    "ProfileDoc",
    "PtzSpec",
    "RecordingSpec",
    "SensorSpec",
    "load_profile",
    "profile_names",
    "profiles_dir",
]

# BCM numbering; the 40-pin header exposes GPIO 0-27.
Pin = Annotated[int, msgspec.Meta(ge=0, le=27)]
Backend = Literal["emulated", "picamera2", "v4l2", "file", "rtsp"]
# picamera2-h264: the VideoCore hardware encoder through picamera2 (Pi Zero 2 W .. Pi 4);
# h264_v4l2m2m: the same block through FFmpeg; libx264: software (Pi 5, laptops);
# passthrough: the source already delivers H.264 (RTSP cameras, H.264 files).
Encoder = Literal["picamera2-h264", "h264_v4l2m2m", "libx264", "passthrough"]
SensorKind = Literal["pir", "bell", "lock", "external"]
# Which pins the GPIO devices are on (hss_pu/hw): "lgpio", the machine's gpiochip through
# lgpio (a Pi); "mock", gpiozero's MockFactory, pins that exist only in the daemon and
# that ``hss-pu sensor`` drives; "auto", mock when every channel is emulated, else lgpio.
GpioPins = Literal["auto", "lgpio", "mock"]

# The GetCap features this build implements end to end (a profile's hardware decides the
# rest). The issue that lands a feature adds its key here, with its exerciser in
# tests/test_getcap_walk.py. Alarms count per kind (``alarms.<kind>``: the standard keys
# io, motion, body, and ours, pir, bell, lock, listed by GetCap's ``sensors``). Never
# here: voice_out (talkback, which no message of Table 9-4 carries; docs/protocol.md).
# ``battery`` (BatteryChange, DevStatus) and ``alarms.battery`` (alarm 8, low battery)
# come with a profile's battery; ``firmware_download_https`` (UpgradeFirmware) with
# ``upgrade.trusted_keys`` (control.rpc_GetCap).
IMPLEMENTED: frozenset[str] = frozenset(
    {"cloud_record", "pic_upload_https", "video_encrypt", "auto_reboot", "switch", "led"}
    | {"log_upload_https", "audio_out", "ptz"}
    | {"alarms.io", "alarms.motion", "alarms.body", "alarms.pir", "alarms.bell", "alarms.lock"}
    | {"battery", "alarms.battery"}
    | {"firmware_download_https"}
)

# The alarms without a standard key GetCap lists under ``sensors`` (wired sensors and
# low battery; an external input is alarms.io).
_SENSOR_KINDS = ("pir", "bell", "lock", "battery")


def _person_detection() -> bool:
    """Whether human-shape detection (alarms.body) can run here: OpenCV's HOG people
    detector is importable (the ``people`` extra, or Debian's python3-opencv). Imported
    when asked: numpy and OpenCV have no place in the quick commands."""
    from hss_pu.media.people import people_available

    return people_available()


# A sensor's hold-off when the profile gives none: how long a re-trigger is absorbed (a
# state input's end waits this long for it; a pulse input raises at most one per hold-off).
# An HC-SR501 PIR drops its output for a moment between re-triggers; a door bell is pressed
# several times by an impatient visitor; a lock contact chatters while it is forced.
DEFAULT_HOLDOFF_MS: dict[str, int] = {"pir": 2000, "bell": 3000, "lock": 3000, "external": 1000}

# H.627.2 Table I.2-16 alarm type values for the sensors a profile can wire up.
ALARM_TYPE_OF_SENSOR: dict[str, int] = {
    sensor: ALARM_KINDS[kind].type for sensor, kind in KIND_OF_SENSOR.items()
}

# Backends whose sound this build captures and encodes (an AAC track when there is sound).
_AUDIO_BACKENDS = frozenset({"emulated", "file", "rtsp"})

_ENCODERS_FOR_BACKEND: dict[str, frozenset[str]] = {
    "emulated": frozenset({"libx264", "h264_v4l2m2m"}),
    "picamera2": frozenset({"picamera2-h264", "libx264"}),
    "v4l2": frozenset({"libx264", "h264_v4l2m2m", "passthrough"}),
    "file": frozenset({"libx264", "passthrough"}),
    "rtsp": frozenset({"passthrough", "libx264"}),
}


class _Spec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


# An ALSA PCM name as aplay -L lists them ("default", "plughw:CARD=Headphones,DEV=0",
# "hw:1,0"), or "null".
PCM_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.:,=-]{0,79}$"


class AudioSpec(_Spec, frozen=True, kw_only=True):
    input: bool = False
    # A speaker: PlayVideo plays to it (GetCap audio_out).
    output: bool = False
    # Where the speaker is: an ALSA PCM name, or "null" (no sound, still played in real
    # time). Absent: "null" on an emulated channel, "default" on real hardware.
    output_device: Annotated[str, msgspec.Meta(pattern=PCM_NAME)] | None = None
    # The largest file PlayVideo downloads (MiB); it is stored under storage.dir while it
    # plays, so this bounds the disk a platform can fill.
    play_max_mb: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    codec: Literal["aac"] = "aac"
    sample_rate: Annotated[int, msgspec.Meta(ge=8000, le=48000)] = 48000


class ChannelSpec(_Spec, frozen=True, kw_only=True):
    id: Annotated[int, msgspec.Meta(ge=0, le=15)]
    name: str = ""
    backend: Backend
    encoder: Encoder
    sensor: str = ""
    resolutions: Annotated[
        list[
            tuple[
                Annotated[int, msgspec.Meta(ge=16, le=8192)],
                Annotated[int, msgspec.Meta(ge=16, le=8192)],
            ]
        ],
        msgspec.Meta(min_length=1),
    ]
    max_fps: Annotated[int, msgspec.Meta(ge=1, le=120)]
    max_bitrate: Annotated[int, msgspec.Meta(ge=64_000, le=100_000_000)]
    default_bitrate: Annotated[int, msgspec.Meta(ge=64_000, le=100_000_000)]
    gop_seconds: Annotated[float, msgspec.Meta(gt=0, le=2.0)] = 1.0
    audio: AudioSpec = AudioSpec()
    motion_detection: bool = False
    image_flip: bool = True

    @property
    def max_resolution(self) -> tuple[int, int]:
        return max(self.resolutions, key=lambda r: r[0] * r[1])

    @property
    def audio_output(self) -> str | None:
        """The channel's speaker (an ALSA PCM name, or "null"); None without one."""
        a = self.audio
        if not a.output:
            return None
        if a.output_device is not None:
            return a.output_device
        return "null" if self.backend == "emulated" else "default"


class PtzSpec(_Spec, frozen=True, kw_only=True):
    type: Literal["none", "servos", "digital"] = "none"
    pan_pin: Pin | None = None
    tilt_pin: Pin | None = None
    pan_range: tuple[int, int] = (-90, 90)
    tilt_range: tuple[int, int] = (-45, 45)
    # Servo pulse widths in microseconds (SG90-class defaults).
    min_pulse_us: Annotated[int, msgspec.Meta(ge=200, le=3000)] = 500
    max_pulse_us: Annotated[int, msgspec.Meta(ge=200, le=3000)] = 2500
    max_zoom: Annotated[float, msgspec.Meta(ge=1.0, le=16.0)] = 1.0
    presets: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0


class SensorSpec(_Spec, frozen=True, kw_only=True):
    kind: SensorKind
    pin: Pin
    channel: Annotated[int, msgspec.Meta(ge=0, le=15)] = 0
    # True: the pin reads high while the sensor is active (HC-SR501 PIR output).
    active_high: bool = True
    # None: floating (the sensor drives the line both ways). gpiozero's rule: an input
    # pulled up is active low, one pulled down active high (checked at load).
    pull_up: bool | None = None
    # Debounce (gpiozero bounce_time): edges within this time of the last one are ignored.
    bounce_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 50
    # None: DEFAULT_HOLDOFF_MS for the kind.
    holdoff_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] | None = None

    @property
    def alarm_type(self) -> int:
        return ALARM_TYPE_OF_SENSOR[self.kind]

    @property
    def holdoff(self) -> float:
        """The hold-off in seconds."""
        ms = DEFAULT_HOLDOFF_MS[self.kind] if self.holdoff_ms is None else self.holdoff_ms
        return ms / 1000


Lux = Annotated[float, msgspec.Meta(ge=0, le=200_000)]


class LedSpec(_Spec, frozen=True, kw_only=True):
    role: Literal["status", "ir", "record"]
    pin: Pin
    active_high: bool = True
    # role "ir": on below ``on_below_lux``, off above ``off_above_lux`` (the gap is the
    # hysteresis), and at most one switch per ``min_switch_s`` (the IR light itself
    # brightens what the camera measures).
    on_below_lux: Lux = 5.0
    off_above_lux: Lux = 30.0
    min_switch_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0


Volts = Annotated[float, msgspec.Meta(ge=0, le=100)]
# The MCP3xxx ADCs gpiozero drives (single-ended) and their channel counts.
ADC_CHANNELS: dict[str, int] = {
    "mcp3002": 2, "mcp3004": 4, "mcp3008": 8, "mcp3202": 2, "mcp3204": 4, "mcp3208": 8,
}  # fmt: skip
# A single-cell Li-ion's resting voltage -> charge (a common approximation).
LIION_CURVE: list[tuple[float, int]] = [
    (3.3, 0), (3.5, 5), (3.6, 10), (3.7, 30), (3.8, 55), (3.9, 70), (4.0, 80), (4.1, 90),
    (4.2, 100),
]  # fmt: skip


class AdcSpec(_Spec, frozen=True, kw_only=True):
    """A battery voltage through a divider into an MCP3xxx ADC on SPI (hw/battery.py)."""

    chip: Literal["mcp3002", "mcp3004", "mcp3008", "mcp3202", "mcp3204", "mcp3208"] = "mcp3008"
    channel: Annotated[int, msgspec.Meta(ge=0, le=7)] = 0
    # SPI port 0, chip select 0 or 1 (CE0 GPIO 8, CE1 GPIO 7).
    select: Annotated[int, msgspec.Meta(ge=0, le=1)] = 0
    vref: Annotated[float, msgspec.Meta(gt=0, le=5.5)] = 3.3
    # Battery volts = ADC volts x divider ((R1 + R2) / R2 of the resistor divider).
    divider: Annotated[float, msgspec.Meta(ge=1, le=100)] = 2.0
    # Battery volts -> percent, points in rising order; between them linear, outside clamped.
    curve: Annotated[
        list[tuple[Volts, Annotated[int, msgspec.Meta(ge=0, le=100)]]],
        msgspec.Meta(min_length=2, max_length=32),
    ] = msgspec.field(default_factory=lambda: list(LIION_CURVE))


class EmulatedBatterySpec(_Spec, frozen=True, kw_only=True):
    """The emulated battery's model: it starts at ``start_percent`` and drains (or,
    charging, fills) at the given rates; ``hss-pu battery`` sets it."""

    start_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 80.0
    drain_per_hour: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 2.0
    charge_per_hour: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 20.0
    charging: bool = False


class BatterySpec(_Spec, frozen=True, kw_only=True):
    present: bool = False
    # emulated: a model (``hss-pu battery PERCENT``); sysfs: a Linux power supply
    # (/sys/class/power_supply/<sysfs_name>, "" the first system battery); adc: ``adc``.
    source: Literal["emulated", "sysfs", "adc"] = "emulated"
    sysfs_name: Annotated[str, msgspec.Meta(max_length=64)] = ""
    adc: AdcSpec | None = None
    emulated: EmulatedBatterySpec = EmulatedBatterySpec()
    # Alarm 8 (low battery) once the level falls below low_percent; again only after it
    # has risen to low_percent + hysteresis_percent.
    low_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 15
    hysteresis_percent: Annotated[int, msgspec.Meta(ge=1, le=50)] = 5
    # How often the source is read, and the least time between two BatteryChange.
    poll_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 30.0
    report_interval_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0


class RecordingSpec(_Spec, frozen=True, kw_only=True):
    # "dir": a directory under storage.dir; "mount": its own filesystem at ``path``
    # (an SD card or USB disk) that FormatDisk may format.
    store: Literal["none", "dir", "mount"] = "dir"
    path: str = ""
    max_mb: Annotated[int, msgspec.Meta(ge=0)] = 1024
    max_prerecord_seconds: Annotated[int, msgspec.Meta(ge=0, le=60)] = 10
    # Closed segments held in memory (MiB), whatever the platform asks (storage.memory_queue_mb).
    memory_queue_mb: Annotated[int, msgspec.Meta(ge=4, le=4096)] = 64


class ProfileDoc(_Spec, frozen=True, kw_only=True):
    hardware_model: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    firmware_model: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    description: str = ""
    # RebootDevice: "host" asks systemd-logind to reboot; "daemon" restarts only us.
    reboot: Literal["host", "daemon"] = "daemon"
    channels: Annotated[list[ChannelSpec], msgspec.Meta(min_length=1, max_length=16)]
    ptz: PtzSpec = PtzSpec()
    gpio: GpioPins = "auto"
    sensors: list[SensorSpec] = []
    leds: list[LedSpec] = []
    battery: BatterySpec = BatterySpec()
    recording: RecordingSpec = RecordingSpec()


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """A validated profile plus where it came from."""

    name: str
    path: str
    doc: ProfileDoc
    # The signed bundle's firmware_model of the installed version running now (issue 12);
    # None: this code was not installed from a bundle.
    installed_firmware: str | None = None

    @property
    def hardware_model(self) -> str:
        return self.doc.hardware_model

    @property
    def firmware_model(self) -> str:
        """The firmware version reported to the platform: an installed bundle's own, else
        the model line plus our version."""
        if self.installed_firmware is not None:
            return self.installed_firmware
        return f"{self.doc.firmware_model}-{__version__}"

    @property
    def channels(self) -> list[ChannelSpec]:
        return self.doc.channels

    @property
    def gpio_emulated(self) -> bool:
        """Whether the profile's GPIO devices are on mock pins (``gpio``, or ``auto`` and
        every channel emulated): a laptop, CI, or a demo without wiring."""
        gpio = self.doc.gpio
        if gpio == "auto":
            return all(c.backend == "emulated" for c in self.doc.channels)
        return gpio == "mock"

    def channel(self, channel_id: int) -> ChannelSpec | None:
        return next((c for c in self.doc.channels if c.id == channel_id), None)

    def alarm_kinds(self, channel_id: int) -> list[str]:
        """The detectors this device runs on the channel (keys of wire.alarms.ALARM_KINDS,
        in its order): its wired sensors, low battery (channel 0), motion where the
        channel has it, person detection on top of motion where available; each only
        once this build drives it (:data:`IMPLEMENTED`). What ``channels.N.alarms``
        lists, and GetCap claims."""
        ch = self.channel(channel_id)
        if ch is None:
            return []
        kinds = {KIND_OF_SENSOR[s.kind] for s in self.doc.sensors if s.channel == channel_id}
        if channel_id == 0 and self.doc.battery.present:  # the device's, on its first channel
            kinds.add("battery")
        if ch.motion_detection:
            kinds.add("motion")
            if _person_detection():
                kinds.add("body")
        return [k for k in ALARM_KINDS if k in kinds and f"alarms.{k}" in IMPLEMENTED]

    def capabilities(self) -> dict[str, Any]:
        """The ``GetCap`` reply, with the origin protocol's keys (wire-notes).

        A key is true only when the hardware has the feature *and* this build drives it
        end to end (:data:`IMPLEMENTED`); tests/test_getcap_walk.py exercises every true
        key against the reference platform.
        """
        d = self.doc

        def has(feature: str, hardware: bool = True) -> bool:
            return hardware and feature in IMPLEMENTED

        kinds = {k for c in d.channels for k in self.alarm_kinds(c.id)}
        audio_out = any(c.audio.output for c in d.channels)
        # Digital zoom needs frames we decode, or a camera that crops (picamera2).
        ch0 = d.channels[0]
        zoomable = ch0.backend == "picamera2" or ch0.encoder != "passthrough"
        return {
            "ptz": has("ptz", d.ptz.type == "servos" or (d.ptz.type == "digital" and zoomable)),
            "battery": has("battery", d.battery.present),
            "media_protocol": "srt",
            # audio_out: PlayVideo plays a file to the speaker (the origin protocol's
            # AudioOutPlay). voice_out is talkback (live voice from the app), which no
            # message of Table 9-4 carries: false until a protocol for it exists.
            "audio_out": has("audio_out", audio_out),
            "voice_out": False,
            "cloud_record": has("cloud_record"),
            "trace": False,
            # The detectors this device runs (alarm_kinds); a PIR is type 12, not body (11).
            "alarms": {
                "io": "io" in kinds,
                "face": False,
                "cry": False,
                "voice": False,
                "motion": "motion" in kinds,
                "body": "body" in kinds,
                "cross": False,
            },
            "pic_upload_https": has("pic_upload_https"),
            "log_upload_https": has("log_upload_https"),
            "firmware_download_https": has("firmware_download_https"),
            "video_encrypt": has("video_encrypt"),
            "switch": has("switch"),
            # SetConfig ``led`` switches the status LED (services/leds.py).
            "led": has("led", any(led.role == "status" for led in d.leds)),
            "auto_reboot": has("auto_reboot"),
            # Ours, after the standard keys.
            "sensors": [k for k in _SENSOR_KINDS if k in kinds],
            "channels": [
                {
                    "channel": c.id,
                    "resolutions": [f"{w}x{h}" for w, h in c.resolutions],
                    "max_fps": c.max_fps,
                    "max_bitrate": c.max_bitrate,
                    # Sound is carried from the emulated tone and from a file's or RTSP
                    # camera's audio track; picamera2 and v4l2 capture video only yet,
                    # whatever microphone the profile lists.
                    "audio_in": c.audio.input and c.backend in _AUDIO_BACKENDS,
                    "encoder": c.encoder,
                }
                for c in d.channels
            ],
        }


def profiles_dir() -> Path:
    """Where the shipped profiles are: inside the wheel, else the source checkout."""
    override = os.environ.get("HSS_PU_PROFILES_DIR")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    packaged = here / "_firmware_profiles"
    return packaged if packaged.is_dir() else here.parent / "firmware_profiles"


def profile_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(".toml")


def resolve_profile(ref: str, base: Path | None = None) -> Path | None:
    """A profile name or path (relative to ``base``, the config file's directory) to its
    file; None when no such profile exists."""
    if _looks_like_path(ref):
        p = Path(ref).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        return p if p.is_file() else None
    if not ref.replace("-", "").replace("_", "").isalnum():
        return None
    p = profiles_dir() / f"{ref}.toml"
    return p if p.is_file() else None


def _check(doc: ProfileDoc, path: Path) -> None:
    """Cross-field rules the type system cannot say."""
    ids = [c.id for c in doc.channels]
    if sorted(ids) != list(range(len(ids))):
        raise key_error(path, "channels", f"channel ids must be 0..{len(ids) - 1}, got {ids}")
    for i, c in enumerate(doc.channels):
        key = f"channels[{i}]"
        if c.encoder not in _ENCODERS_FOR_BACKEND[c.backend]:
            allowed = ", ".join(sorted(_ENCODERS_FOR_BACKEND[c.backend]))
            raise key_error(
                path,
                f"{key}.encoder",
                f"{c.encoder!r} cannot encode a {c.backend} source ({allowed})",
            )
        if c.default_bitrate > c.max_bitrate:
            raise key_error(path, f"{key}.default_bitrate", "above max_bitrate")
    used: dict[int, str] = {}

    def claim(pin: int | None, key: str) -> None:
        if pin is None:
            return
        if pin in used:
            raise key_error(path, key, f"GPIO {pin} is already used by {used[pin]}")
        used[pin] = key

    p = doc.ptz
    if p.type == "servos":
        if p.pan_pin is None and p.tilt_pin is None:
            raise key_error(path, "ptz.pan_pin", "servo PTZ needs pan_pin and/or tilt_pin")
        if p.min_pulse_us >= p.max_pulse_us:
            raise key_error(path, "ptz.min_pulse_us", "must be below max_pulse_us")
    elif p.pan_pin is not None or p.tilt_pin is not None:
        raise key_error(path, "ptz.type", f"pins given but type is {p.type!r} (want 'servos')")
    if p.type == "digital" and p.max_zoom <= 1.0:
        raise key_error(path, "ptz.max_zoom", "digital zoom needs max_zoom above 1.0")
    for name, (lo, hi) in (("pan_range", p.pan_range), ("tilt_range", p.tilt_range)):
        if not -180 <= lo < hi <= 180:
            raise key_error(
                path, f"ptz.{name}", f"want -180 <= low < high <= 180, got [{lo}, {hi}]"
            )
    claim(p.pan_pin, "ptz.pan_pin")
    claim(p.tilt_pin, "ptz.tilt_pin")
    seen: set[tuple[str, int]] = set()
    for i, s in enumerate(doc.sensors):
        if s.channel not in ids:
            raise key_error(path, f"sensors[{i}].channel", f"no channel {s.channel}")
        if s.pull_up is not None and s.pull_up == s.active_high:
            want = "false" if s.pull_up else "true"
            raise key_error(
                path,
                f"sensors[{i}].active_high",
                f"an input pulled {'up' if s.pull_up else 'down'} is active "
                f"{'low' if s.pull_up else 'high'}: set active_high = {want}",
            )
        if (s.kind, s.channel) in seen:
            raise key_error(path, f"sensors[{i}]", f"a second {s.kind} on channel {s.channel}")
        seen.add((s.kind, s.channel))
        claim(s.pin, f"sensors[{i}].pin")
    for i, led in enumerate(doc.leds):
        claim(led.pin, f"leds[{i}].pin")
        if led.on_below_lux >= led.off_above_lux:
            raise key_error(path, f"leds[{i}].on_below_lux", "must be below off_above_lux")
    roles = [led.role for led in doc.leds]
    for role in set(roles):
        if roles.count(role) > 1:
            raise key_error(path, "leds", f"more than one {role!r} LED")
    _check_battery(doc.battery, path, claim)
    r = doc.recording
    if r.store == "mount" and not r.path.startswith("/"):
        raise key_error(path, "recording.path", "a 'mount' store needs an absolute path")


# SPI port 0's pins (BCM): clock, MOSI, MISO, and the chip selects CE0, CE1.
_SPI_PINS = {"clock": 11, "mosi": 10, "miso": 9}
_SPI_SELECT = (8, 7)


def _check_battery(b: BatterySpec, path: Path, claim: Callable[[int | None, str], None]) -> None:
    if not b.present:
        if b.source != "emulated" or b.adc is not None or b.sysfs_name:
            raise key_error(path, "battery.present", "a battery source is given: set present")
        return
    if b.adc is not None and b.source != "adc":
        raise key_error(path, "battery.adc", f"given but source is {b.source!r} (want 'adc')")
    if b.sysfs_name and b.source != "sysfs":
        raise key_error(path, "battery.sysfs_name", f"given but source is {b.source!r}")
    if b.sysfs_name and (
        b.sysfs_name in (".", "..") or not all(c.isalnum() or c in "-_.:" for c in b.sysfs_name)
    ):
        raise key_error(path, "battery.sysfs_name", f"not a power-supply name: {b.sysfs_name!r}")
    if b.low_percent + b.hysteresis_percent > 100:
        raise key_error(
            path, "battery.hysteresis_percent", "low_percent + hysteresis_percent is above 100"
        )
    if b.source != "adc":
        return
    a = b.adc
    if a is None:
        raise key_error(path, "battery.adc", "source 'adc' needs an [battery.adc] table")
    if a.channel >= ADC_CHANNELS[a.chip]:
        raise key_error(
            path, "battery.adc.channel", f"{a.chip} has channels 0..{ADC_CHANNELS[a.chip] - 1}"
        )
    volts = [v for v, _ in a.curve]
    percents = [p for _, p in a.curve]
    if any(x >= y for x, y in itertools.pairwise(volts)) or any(
        x > y for x, y in itertools.pairwise(percents)
    ):
        raise key_error(
            path, "battery.adc.curve", "points must rise in volts (and not fall in percent)"
        )
    if percents[0] != 0 or percents[-1] != 100:
        raise key_error(path, "battery.adc.curve", "must run from 0 to 100 percent")
    if volts[-1] > a.vref * a.divider:
        raise key_error(
            path,
            "battery.adc.curve",
            f"{volts[-1]} V is above what the ADC can read ({a.vref * a.divider:g} V = "
            "vref x divider)",
        )
    for name, pin in _SPI_PINS.items():
        claim(pin, f"battery.adc (SPI {name})")
    claim(_SPI_SELECT[a.select], "battery.adc.select")


def load_profile_file(path: Path, name: str | None = None) -> Profile:
    data = load_toml(path)
    doc = convert(data, ProfileDoc, path)
    _check(doc, path)
    return Profile(name=name or path.stem, path=str(path), doc=doc)


def load_profile(ref: str, *, config_path: Path | str | None = None) -> Profile:
    """Load a profile by name or path (a relative one from the config file's directory);
    errors name ``device.profile`` in the config."""
    base = Path(config_path).parent if config_path is not None else None
    path = resolve_profile(ref, base)
    if path is None:
        known = ", ".join(profile_names()) or "none installed"
        what = "no such profile file" if _looks_like_path(ref) else "unknown profile"
        raise SchemaError(config_path, "device.profile", f"{what} {ref!r} (known: {known})")
    return load_profile_file(path, None if _looks_like_path(ref) else ref)


def iter_profiles() -> Iterator[Profile]:
    for name in profile_names():
        yield load_profile(name)
