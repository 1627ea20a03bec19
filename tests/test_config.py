from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hss_pu.config import (
    ConfigDoc,
    DeviceSection,
    PlatformSection,
    Secret,
    StorageSection,
    load_config,
    make_config,
)
from hss_pu.reference_platform.pki import ensure_pki
from hss_pu.schema import SchemaError

from .conftest import WriteConfig


def check_config(path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # Under a 3 GiB address-space limit: a check that reads /dev/zero whole must die of
    # MemoryError here, not take the machine with it.
    return subprocess.run(
        ["sh", "-c", 'ulimit -v 3145728 && exec "$0" "$@"', sys.executable, "-m", "hss_pu",
         "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip


def assert_one_line_error(path: Path, key: str, *words: str, timeout: float = 60) -> str:
    r = check_config(path, timeout)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert str(path) in line
    assert f": {key}: " in line
    for w in words:
        assert w in line, line
    assert r.stdout == ""
    return line


def test_valid_config_loads(write_config: WriteConfig) -> None:
    path = write_config()
    cfg = load_config(path)
    assert cfg.device.id == "PU-0001"
    assert cfg.device.mac == "02:00:00:00:00:01"
    assert cfg.profile.name == "emulated"
    assert cfg.password.reveal() == "s3cret-Pa55word"
    assert "s3cret" not in repr(cfg)
    assert cfg.platform.keepalive_interval == 10.0
    assert cfg.platform.allow_insecure is False
    assert cfg.bitrate == cfg.profile.channels[0].default_bitrate
    r = check_config(path)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "s3cret" not in r.stdout


def test_wrong_type_names_key(write_config: WriteConfig) -> None:
    line = assert_one_line_error(
        write_config(width='"wide"'), "camera.width", "expected int", "str"
    )
    assert "Traceback" not in line


def test_out_of_range(write_config: WriteConfig) -> None:
    path = write_config(extra='[log]\nlevel = "loud"\n')
    assert_one_line_error(path, "log.level", "expected one of")


def test_unknown_profile(write_config: WriteConfig) -> None:
    assert_one_line_error(
        write_config(profile="toaster-3000"),
        "device.profile",
        "unknown profile",
        "toaster-3000",
        "emulated",
    )


def test_world_readable_inline_password(write_config: WriteConfig) -> None:
    path = write_config(mode=0o644)
    line = assert_one_line_error(
        path, "device.password", "readable by group/others", "0644", "chmod 600"
    )
    assert "s3cret" not in line


def test_group_readable_password_file(write_config: WriteConfig, tmp_path: Path) -> None:
    pw = tmp_path / "password"
    pw.write_text("file-secret-123\n")
    os.chmod(pw, 0o640)
    path = write_config(password_line=f'password_file = "{pw}"', mode=0o644)
    line = assert_one_line_error(path, "device.password_file", "readable by group/others", "0640")
    assert "file-secret" not in line


def test_password_file_ok_and_relative(write_config: WriteConfig, tmp_path: Path) -> None:
    pw = tmp_path / "password"
    pw.write_text("file-secret-123\n")
    os.chmod(pw, 0o600)
    # A config without an inline password may be world-readable.
    cfg = load_config(write_config(password_line='password_file = "password"', mode=0o644))
    assert cfg.password == Secret("file-secret-123")


def test_missing_password_file(write_config: WriteConfig) -> None:
    assert_one_line_error(
        write_config(password_line='password_file = "/nonexistent/pw"'),
        "device.password_file",
        "does not exist",
    )


def test_password_and_file_both(write_config: WriteConfig) -> None:
    assert_one_line_error(
        write_config(password_line='password = "abc123"\npassword_file = "/x"'),
        "device.password",
        "not both",
    )


def test_no_password(write_config: WriteConfig) -> None:
    assert_one_line_error(write_config(password_line=""), "device.password", "missing")


def test_unknown_key(write_config: WriteConfig) -> None:
    assert_one_line_error(write_config(extra="[camera2]\nx = 1\n"), "camera2", "unknown key")


def test_missing_required_key(write_config: WriteConfig, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[device]\nid = "a"\npassword = "abcdef"\n[platform]\nschedule_url = "https://x"\n'
    )
    os.chmod(path, 0o600)
    assert_one_line_error(path, "device.mac", "missing required key")


def test_bad_mac(write_config: WriteConfig) -> None:
    path = write_config()
    path.write_text(path.read_text().replace("02:00:00:00:00:01", "02-00-00"))
    assert_one_line_error(path, "device.mac", "expected str matching")


def test_plain_http_refused_unless_allowed(write_config: WriteConfig) -> None:
    assert_one_line_error(
        write_config(schedule_url="http://127.0.0.1:8080"),
        "platform.schedule_url",
        "allow_insecure",
    )
    path = write_config(schedule_url="http://127.0.0.1:8080", name="insecure.toml")
    path.write_text(
        path.read_text().replace("backoff_scale", "allow_insecure = true\nbackoff_scale")
    )
    assert load_config(path).platform.allow_insecure is True


def test_missing_ca_file(write_config: WriteConfig) -> None:
    assert_one_line_error(
        write_config(ca_line='ca_file = "/nonexistent/ca.pem"'),
        "platform.ca_file",
        "does not exist",
    )


def test_resolution_outside_profile(write_config: WriteConfig) -> None:
    assert_one_line_error(write_config(width="1281"), "camera.width", "1281x720", "1280x720")


def test_prerecord_above_profile_cap(write_config: WriteConfig) -> None:
    path = write_config()
    path.write_text(path.read_text().replace("fps = 30", "fps = 30\nprerecord_seconds = 11"))
    assert_one_line_error(path, "camera.prerecord_seconds", "11", "cap of 10 s")


def test_picamera2_source_needs_pi_profile(write_config: WriteConfig) -> None:
    path = write_config()
    path.write_text(path.read_text().replace('source = "emulated"', 'source = "picamera2"'))
    assert_one_line_error(path, "camera.source", "picamera2")


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("v4l2:/dev/video0", True),
        ("v4l2:/dev/sda", False),
        ("rtsp://192.0.2.10:554/stream1", True),
        ("rtsp://", False),
        ("file:/nonexistent.mp4", False),
        ("webcam", False),
    ],
)
def test_sources(write_config: WriteConfig, source: str, ok: bool) -> None:
    path = write_config()
    path.write_text(path.read_text().replace('source = "emulated"', f'source = "{source}"'))
    if ok:
        assert load_config(path).camera_source == source
    else:
        with pytest.raises(SchemaError) as ei:
            load_config(path)
        assert ei.value.key == "camera.source"


def test_file_source_made_absolute(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\0")
    path = write_config()
    path.write_text(path.read_text().replace('source = "emulated"', 'source = "file:clip.mp4"'))
    assert load_config(path).camera_source == f"file:{tmp_path / 'clip.mp4'}"


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[device\nid = 1\n")
    r = check_config(path)
    assert r.returncode == 2
    assert "TOML syntax error" in r.stderr and str(path) in r.stderr


def test_missing_file(tmp_path: Path) -> None:
    r = check_config(tmp_path / "nope.toml")
    assert r.returncode == 2
    assert "cannot read" in r.stderr


def test_profile_by_path(write_config: WriteConfig, tmp_path: Path) -> None:
    src = Path(__file__).parent.parent / "firmware_profiles" / "usb-webcam.toml"
    custom = tmp_path / "my-model.toml"
    custom.write_text(src.read_text())
    cfg = load_config(write_config(profile=str(custom)))
    assert cfg.profile.hardware_model == "USB-UVC"


def test_example_config_is_valid(tmp_path: Path) -> None:
    """The example shipped in docs/ (installed by make install) must stay loadable."""
    example = Path(__file__).parent.parent / "docs" / "config.example.toml"
    text = example.read_text()
    assert 'password_file = "/etc/hss-pu/password"' in text
    pw = tmp_path / "password"
    pw.write_text("example-pass\n")
    os.chmod(pw, 0o600)
    copy = tmp_path / "config.toml"
    text = re.sub(r"(?m)^ca_file = .*$", "", text.replace("/etc/hss-pu/password", str(pw)))
    copy.write_text(text)
    cfg = load_config(copy)
    assert cfg.device.id


@pytest.mark.parametrize("scale", [0, 0.0, -1])
def test_backoff_scale_must_be_positive(scale: float) -> None:
    """A zero scale would make every retry loop spin without a delay (issue 9, item 11)."""
    import msgspec

    from hss_pu.config import PlatformSection

    with pytest.raises(msgspec.ValidationError, match="backoff_scale"):
        msgspec.convert({"schedule_url": "https://h", "backoff_scale": scale}, PlatformSection)


# --- files must be regular files of bounded size --------------------------------------------


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "dir"])
def test_password_file_must_be_a_regular_file(
    write_config: WriteConfig, tmp_path: Path, special: str
) -> None:
    if special == "fifo":
        target = tmp_path / "pw.fifo"
        os.mkfifo(target, 0o600)  # nobody ever writes: an open for reading would block
    elif special == "dir":
        target = tmp_path / "pwdir"
        target.mkdir(mode=0o700)
    else:
        target = Path(special)
    path = write_config(password_line=f'password_file = "{target}"')
    t0 = time.monotonic()
    assert_one_line_error(path, "device.password_file", "not a regular file", timeout=20)
    assert time.monotonic() - t0 < 15


def test_password_file_bounded(write_config: WriteConfig, tmp_path: Path) -> None:
    pw = tmp_path / "password"
    pw.write_text("x" * 5000 + "\n")
    os.chmod(pw, 0o600)
    line = assert_one_line_error(
        write_config(password_line=f'password_file = "{pw}"'),
        "device.password_file",
        "larger than 4096 bytes",
    )
    assert "xxxx" not in line


def test_config_file_bounded_and_regular(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    with big.open("wb") as f:
        f.write(b"# " + b"x" * (50 << 20) + b"\n")
    t0 = time.monotonic()
    r = check_config(big)
    assert r.returncode == 2 and "larger than 1048576 bytes" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(big) in r.stderr
    assert time.monotonic() - t0 < 20
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo, 0o600)
    r = check_config(fifo, timeout=20)
    assert r.returncode == 2 and "not a regular file (a FIFO)" in r.stderr, r.stderr


def test_ca_file_is_loaded(write_config: WriteConfig, tmp_path: Path) -> None:
    good = ensure_pki(tmp_path / "pki").ca_file
    assert load_config(write_config(ca_line=f'ca_file = "{good}"')).ca_file == str(good)
    junk = tmp_path / "junk.pem"
    junk.write_text("root:$6$abcdefgh$xyz:19000:0:99999:7:::\n")
    assert_one_line_error(
        write_config(ca_line=f'ca_file = "{junk}"'), "platform.ca_file", str(junk), "certificate"
    )
    broken = tmp_path / "broken.pem"
    text = good.read_text()
    broken.write_text(text[: len(text) // 2].replace("A", "!"))
    assert_one_line_error(write_config(ca_line=f'ca_file = "{broken}"'), "platform.ca_file")
    assert_one_line_error(
        write_config(ca_line='ca_file = "/dev/zero"'), "platform.ca_file", "not a regular file"
    )
    big = tmp_path / "big.pem"
    big.write_bytes(text.encode() * ((2 << 20) // len(text) + 1))
    assert_one_line_error(
        write_config(ca_line=f'ca_file = "{big}"'), "platform.ca_file", "larger than"
    )


def test_etc_shadow_is_not_a_ca_file(write_config: WriteConfig) -> None:
    """The probe from the issue: /etc/shadow passed check-config and `run` died."""
    if not Path("/etc/shadow").exists():
        pytest.skip("no /etc/shadow here")
    assert_one_line_error(
        write_config(ca_line='ca_file = "/etc/shadow"'), "platform.ca_file", "/etc/shadow"
    )


# --- URLs: ports and host names ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://127.0.0.1:99999", "port"),
        ("https://127.0.0.1:0", "port"),
        ("https://127.0.0.1:http", "port"),
        (f"https://{'a' * 64}.example.com", "host name"),
        (f"https://{'a.' * 127}com", "host name"),
        ("https://bad_-.example..com", "host name"),
        ("https://-lead.example.com", "host name"),
        ("https://b\u00fccher.example", "host name"),
    ],
)
def test_schedule_url_port_and_host_checked(
    write_config: WriteConfig, url: str, words: str
) -> None:
    assert_one_line_error(write_config(schedule_url=url), "platform.schedule_url", words)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443",
        "https://[::1]:8443",
        "https://vs.example.com",
        f"https://{'a' * 63}.example.com:443",
        "https://platform_1.lan:8443",
    ],
)
def test_good_schedule_urls(write_config: WriteConfig, url: str) -> None:
    assert load_config(write_config(schedule_url=url)).platform.schedule_url == url


@pytest.mark.parametrize(
    "source", ["rtsp://192.0.2.10:99999/s", f"rtsp://{'c' * 64}.lan/s", "rtsp://cam:0/s"]
)
def test_rtsp_source_port_and_host_checked(write_config: WriteConfig, source: str) -> None:
    path = write_config()
    path.write_text(path.read_text().replace('source = "emulated"', f'source = "{source}"'))
    assert_one_line_error(path, "camera.source")


# --- relative paths ------------------------------------------------------------------------


def test_relative_storage_dir_is_relative_to_the_config_file(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config()
    path.write_text(re.sub(r"(?m)^dir = .*$", 'dir = "state/pu"', path.read_text()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(path).storage_dir == str(tmp_path / "state" / "pu")
    # Loaded by a relative name, still the config file's directory.
    monkeypatch.chdir(tmp_path)
    assert load_config(Path(path.name)).storage_dir == str(tmp_path / "state" / "pu")


def test_relative_profile_path_is_relative_to_the_config_file(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = Path(__file__).parent.parent / "firmware_profiles" / "usb-webcam.toml"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "my-model.toml").write_text(src.read_text())
    path = write_config(profile="models/my-model.toml")
    monkeypatch.chdir(tmp_path / "models")  # where a cwd-relative lookup would miss it
    assert load_config(path).profile.hardware_model == "USB-UVC"


def test_relative_paths_without_a_config_file_are_refused(tmp_path: Path) -> None:
    """make_config without a file (the embedded default, tests) has no directory to resolve
    against: a relative path would silently follow the current directory."""

    def doc(storage_dir: str) -> ConfigDoc:
        return ConfigDoc(
            device=DeviceSection(id="PU-1", password="pw-123456", mac="02:00:00:00:00:01"),
            platform=PlatformSection(schedule_url="https://127.0.0.1:1"),
            storage=StorageSection(dir=storage_dir),
        )

    with pytest.raises(SchemaError) as ei:
        make_config(doc("state"))
    assert ei.value.key == "storage.dir" and "relative" in ei.value.problem
    assert make_config(doc(str(tmp_path))).storage_dir == str(tmp_path)


@pytest.mark.parametrize("interval", [0.001, 0.5, 0])
def test_keepalive_interval_has_a_one_second_floor(interval: float) -> None:
    """A configured 1 ms keep-alive would flood the platform."""
    import msgspec

    from hss_pu.config import PlatformSection

    with pytest.raises(msgspec.ValidationError, match="keepalive_interval"):
        msgspec.convert(
            {"schedule_url": "https://h", "keepalive_interval": interval}, PlatformSection
        )


def test_power_idle_sleep_seconds_default_and_range(write_config: WriteConfig) -> None:
    assert load_config(write_config()).doc.power.idle_sleep_seconds == 60
    cfg = load_config(write_config(extra="[power]\nidle_sleep_seconds = 5\n"))
    assert cfg.doc.power.idle_sleep_seconds == 5
    path = write_config(extra="[power]\nidle_sleep_seconds = 0\n")
    assert_one_line_error(path, "power.idle_sleep_seconds", ">= 1")
