from __future__ import annotations

from pathlib import Path

import pytest

from hss_pu import profiles
from hss_pu.media.people import people_available
from hss_pu.profiles import (
    ALARM_TYPE_OF_SENSOR,
    load_profile,
    load_profile_file,
    profile_names,
    profiles_dir,
)
from hss_pu.schema import SchemaError

REQUIRED = {"emulated", "pi-zero-2w-cam3", "pi4-hq", "pi5-cam3-ptz", "usb-webcam"}
GETCAP_KEYS = {
    "ptz", "battery", "media_protocol", "audio_out", "voice_out", "cloud_record", "trace",
    "alarms", "pic_upload_https", "log_upload_https", "firmware_download_https",
    "video_encrypt", "switch", "led", "auto_reboot",
}  # fmt: skip


def test_required_profiles_ship() -> None:
    assert set(profile_names()) >= REQUIRED


@pytest.mark.parametrize("name", sorted(REQUIRED | {"emulated-dual"}))
def test_profile_loads_and_reports_getcap(name: str) -> None:
    p = load_profile(name)
    cap = p.capabilities()
    assert cap.keys() >= GETCAP_KEYS
    assert cap["media_protocol"] == "srt"
    assert set(cap["alarms"]) == {"io", "face", "cry", "voice", "motion", "body", "cross"}
    assert all(
        isinstance(v, bool)
        for k, v in cap.items()
        if k in GETCAP_KEYS - {"alarms", "media_protocol"}
    )
    assert p.firmware_model.startswith(p.doc.firmware_model)
    assert [c.id for c in p.channels] == list(range(len(p.channels)))


NOT_BUILT = (
    "battery", "voice_out", "trace",
)  # fmt: skip


# The detectors each profile runs: its wired inputs, motion where a channel has it; no
# person detection (alarms.body) in this build.
ALARMS = {
    "emulated": ({"io", "motion"}, ["pir", "bell", "lock"]),
    "emulated-dual": (set(), []),
    "pi-zero-2w-cam3": (set(), ["pir"]),
    "pi4-hq": ({"io", "motion"}, ["bell", "lock"]),
    "pi5-cam3-ptz": ({"motion"}, ["pir"]),
    "usb-webcam": ({"motion"}, []),
}


@pytest.mark.parametrize("name", sorted(REQUIRED | {"emulated-dual"}))
def test_getcap_claims_nothing_this_build_lacks(name: str) -> None:
    """Hardware alone does not make a capability: the alarm keys are exactly the
    detectors the profile runs. LogUploadAsync works on every profile, and so can an
    upgrade (a device says so only with upgrade.trusted_keys: test_upgrade.py)."""
    cap = load_profile(name).capabilities()
    for key in NOT_BUILT:
        assert cap[key] is False, key
    assert cap["log_upload_https"] is True
    assert cap["firmware_download_https"] is True
    # PlayVideo plays to a speaker (services/playback.py): true where a channel has one.
    assert cap["audio_out"] is any(c.audio.output for c in load_profile(name).channels)
    # PTZ: servos, or digital zoom on a picture we decode (services/ptz.py).
    assert cap["ptz"] is (name in {"emulated", "pi5-cam3-ptz", "usb-webcam"})
    # SetConfig led switches the status LED (services/leds.py): true where there is one.
    assert cap["led"] is any(led.role == "status" for led in load_profile(name).doc.leds)
    standard, sensors = ALARMS[name]
    if "motion" in standard and people_available():  # person detection confirms motion
        standard = standard | {"body"}
    assert {k for k, on in cap["alarms"].items() if on} == standard
    assert cap["sensors"] == sensors
    # Our own keys say nothing the device cannot back either: no PTZ, and only the
    # emulated source produces audio.
    assert not {"ptz_type", "ptz_presets"} & cap.keys()
    audio = [ch["audio_in"] for ch in cap["channels"]]
    assert audio == [name == "emulated"] * len(audio)  # pi4-hq, pi5, usb list a microphone


def test_capabilities_follow_hardware_once_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built = profiles.IMPLEMENTED | {"ptz", "alarms.io", "alarms.motion", "led", "audio_out"}
    monkeypatch.setattr(profiles, "IMPLEMENTED", built)
    # Without a person detector, a PIR does not make human-shape detection (alarms.body).
    monkeypatch.setattr(profiles, "_person_detection", lambda: False)
    pi5 = load_profile("pi5-cam3-ptz")
    assert pi5.capabilities()["ptz"] is True
    assert pi5.capabilities()["alarms"]["body"] is False  # a PIR is not human detection
    assert pi5.channels[0].encoder == "libx264"  # no hardware H.264 on a Pi 5
    z2w = load_profile("pi-zero-2w-cam3")
    assert z2w.capabilities()["ptz"] is False
    assert z2w.capabilities()["audio_out"] is False
    assert z2w.capabilities()["alarms"]["io"] is False  # a PIR only
    assert z2w.channels[0].encoder == "picamera2-h264"
    hq = load_profile("pi4-hq")
    assert hq.capabilities()["alarms"]["io"] is True  # the external input (type 2)
    assert hq.capabilities()["led"] is True
    assert {s.alarm_type for s in hq.doc.sensors} == {
        ALARM_TYPE_OF_SENSOR[k] for k in ("bell", "lock", "external")
    }
    assert load_profile("usb-webcam").doc.ptz.type == "digital"
    assert load_profile("usb-webcam").capabilities()["led"] is False


BASE = """
hardware_model = "X"
firmware_model = "x"
[[channels]]
id = 0
backend = "emulated"
encoder = "libx264"
resolutions = [[640, 360]]
max_fps = 30
max_bitrate = 1000000
default_bitrate = 500000
"""


def _bad(tmp_path: Path, extra: str, key: str, words: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(BASE + extra)
    with pytest.raises(SchemaError) as ei:
        load_profile_file(f)
    assert ei.value.key == key, str(ei.value)
    assert words in ei.value.problem
    assert str(f) in str(ei.value)


def test_pin_used_twice(tmp_path: Path) -> None:
    _bad(
        tmp_path,
        '[[sensors]]\nkind = "pir"\npin = 17\n[[leds]]\nrole = "status"\npin = 17\n',
        "leds[0].pin",
        "GPIO 17 is already used by sensors[0].pin",
    )


def test_pin_out_of_header(tmp_path: Path) -> None:
    _bad(tmp_path, '[[sensors]]\nkind = "pir"\npin = 40\n', "sensors[0].pin", "<= 27")


def test_encoder_backend_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(BASE.replace('encoder = "libx264"', 'encoder = "picamera2-h264"'))
    with pytest.raises(SchemaError) as ei:
        load_profile_file(f)
    assert ei.value.key == "channels[0].encoder"


def test_servo_ptz_needs_pins(tmp_path: Path) -> None:
    _bad(tmp_path, '[ptz]\ntype = "servos"\n', "ptz.pan_pin", "needs pan_pin")


def test_unknown_sensor_kind(tmp_path: Path) -> None:
    _bad(tmp_path, '[[sensors]]\nkind = "laser"\npin = 4\n', "sensors[0].kind", "expected one of")


def test_unknown_key_in_profile(tmp_path: Path) -> None:
    _bad(tmp_path, "colour = 1\n", "channels[0].colour", "unknown key")


def test_channel_ids_contiguous(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(BASE.replace("id = 0", "id = 1"))
    with pytest.raises(SchemaError, match=r"channel ids must be 0\.\.0"):
        load_profile_file(f)


def test_profiles_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "only.toml").write_text(BASE)
    monkeypatch.setenv("HSS_PU_PROFILES_DIR", str(tmp_path))
    assert profiles_dir() == tmp_path
    assert profile_names() == ["only"]


def test_profile_name_cannot_escape_dir() -> None:
    with pytest.raises(SchemaError, match="unknown profile"):
        load_profile("..")


@pytest.mark.parametrize(
    ("backend", "encoder", "claimed"),
    [("file", "passthrough", True), ("rtsp", "passthrough", True), ("v4l2", "libx264", False)],
)
def test_audio_in_follows_what_the_backend_captures(
    tmp_path: Path, backend: str, encoder: str, claimed: bool
) -> None:
    """A file or RTSP camera's sound reaches the stream (an AAC track); v4l2 and picamera2
    capture video only, whatever microphone the profile lists."""
    path = tmp_path / "custom.toml"
    path.write_text(
        'hardware_model = "X"\nfirmware_model = "x"\n[[channels]]\nid = 0\n'
        f'backend = "{backend}"\nencoder = "{encoder}"\nresolutions = [[640, 360]]\n'
        "max_fps = 30\nmax_bitrate = 2000000\ndefault_bitrate = 1000000\n"
        "audio = { input = true }\n"
    )
    cap = profiles.load_profile_file(path).capabilities()
    assert cap["channels"][0]["audio_in"] is claimed


def test_audio_output_device_defaults_and_validation(tmp_path: Path) -> None:
    """The speaker: null on the emulated camera, ALSA's default on hardware unless the
    profile names a PCM; a name that is no PCM name is refused at load."""
    assert load_profile("emulated").channels[0].audio_output == "null"
    assert load_profile("pi5-cam3-ptz").channels[0].audio_output == "default"
    assert load_profile("pi4-hq").channels[0].audio_output is None
    assert load_profile("emulated").channels[0].audio.play_max_mb == 16
    text = load_profile("emulated").path
    src = Path(text).read_text()
    for bad, key in (
        ('output_device = "default; rm -rf /"', "output_device"),
        ("play_max_mb = 0", "play_max_mb"),
    ):
        f = tmp_path / "p.toml"
        f.write_text(src.replace('output_device = "null"', bad))
        with pytest.raises(SchemaError, match=key):
            load_profile(str(f))
