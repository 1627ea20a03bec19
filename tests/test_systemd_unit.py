"""The systemd unit: syntax per systemd-analyze, required settings, exposure score."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "hss-pu.service"
EXEC_START = "/opt/hss-pu/current/venv/bin/hss-pu run --config /etc/hss-pu/config.toml"
# Measured 1.5 with systemd 252 (docs/systemd.md); headroom for other versions'
# weights, but a dropped hardening line shows up.
MAX_EXPOSURE = 2.0

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Section -> key -> every value, in order (DeviceAllow= repeats)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"continuation lines are not expected: {raw!r}"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], defaultdict(list))
            continue
        assert section is not None, f"assignment outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        section[key.strip()].append(value.strip())
    return unit


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def _one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= expected once, got {values}"
    return values[0]


def test_sections() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["Wants"]


def test_lifecycle(service: dict[str, list[str]]) -> None:
    assert _one(service, "Type") == "notify"
    assert _one(service, "NotifyAccess") == "main"
    assert _one(service, "ExecStart") == EXEC_START
    assert _one(service, "WatchdogSec") == "30"
    assert _one(service, "Restart") == "on-failure"
    assert _one(service, "RestartSec") == "5"
    assert _one(service, "TimeoutStopSec") == "10"


def test_identity_and_directories(service: dict[str, list[str]]) -> None:
    assert _one(service, "User") == "hss-pu"
    assert _one(service, "Group") == "hss-pu"
    groups = " ".join(service["SupplementaryGroups"]).split()
    assert {"video", "gpio"} <= set(groups)
    assert _one(service, "StateDirectory") == "hss-pu"
    assert _one(service, "StateDirectoryMode") == "0750"
    assert _one(service, "ConfigurationDirectory") == "hss-pu"
    assert _one(service, "UMask") == "0077"
    # Firmware upgrades write versions, links and state there (ProtectSystem=strict).
    assert _one(service, "ReadWritePaths") == "/opt/hss-pu"


def test_hardening(service: dict[str, list[str]]) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert _one(service, key) == value, key
    # Empty: no capability at all.
    assert service["CapabilityBoundingSet"] == [""]
    assert service["SystemCallFilter"][0] == "@system-service"
    families = set(_one(service, "RestrictAddressFamilies").split())
    # AF_UNIX carries sd_notify and the D-Bus call to logind for a reboot.
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # Deliberately off; see the comments in the unit.
    for key in ("MemoryDenyWriteExecute", "PrivateUsers", "PrivateDevices", "IPAddressDeny"):
        assert key not in service, key


def test_device_allow(service: dict[str, list[str]]) -> None:
    allowed = {tuple(v.split()) for v in service["DeviceAllow"]}
    assert allowed == {
        ("char-video4linux", "rw"),
        ("char-media", "rw"),
        ("char-dma_heap", "rw"),
        ("char-gpiochip", "rw"),
    }
    # systemd takes either a real node path or a /proc/devices group; a glob
    # path such as /dev/video* would silently allow nothing.
    for value in service["DeviceAllow"]:
        assert "*" not in value


# --- systemd-analyze --------------------------------------------------------

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def _complaints(output: str, unit_name: str) -> list[str]:
    """Lines about our unit: '<path>:<line>: ...' or '<unit>: ...'.

    Lines about other units or the host (no systemd running, a container)
    are not the unit's fault and are ignored.
    """
    return [line for line in output.splitlines() if unit_name in line]


def _copy_with_true(tmp_path: Path, text: str | None = None) -> Path:
    """The unit, with ExecStart pointing at a binary that exists here."""
    body = UNIT.read_text() if text is None else text
    rewritten = body.replace(
        "ExecStart=/opt/hss-pu/current/venv/bin/hss-pu ", f"ExecStart={shutil.which('true')} "
    )
    assert rewritten != body
    copy = tmp_path / UNIT.name
    copy.write_text(rewritten)
    return copy


@needs_analyze
def test_verify_has_no_complaints(tmp_path: Path) -> None:
    copy = _copy_with_true(tmp_path)
    result = _analyze("verify", str(copy), cwd=tmp_path)
    assert _complaints(result.stdout + result.stderr, UNIT.name) == []


@needs_analyze
def test_verify_as_shipped_only_misses_the_binary(tmp_path: Path) -> None:
    """Unrewritten, the one tolerated complaint is the venv absent on this host."""
    result = _analyze("verify", str(UNIT), cwd=tmp_path)
    complaints = _complaints(result.stdout + result.stderr, UNIT.name)
    if Path("/opt/hss-pu/current/venv/bin/hss-pu").exists():
        assert complaints == []
    else:
        assert complaints, "expected systemd-analyze to notice the missing ExecStart binary"
        for line in complaints:
            assert "/opt/hss-pu/current/venv/bin/hss-pu is not executable" in line, line


@needs_analyze
def test_verify_catches_syntax_errors(tmp_path: Path) -> None:
    """The filter above must not swallow real complaints."""
    broken = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes\nNoSuchKey=1")
    copy = _copy_with_true(tmp_path, broken)
    result = _analyze("verify", str(copy), cwd=tmp_path)
    complaints = _complaints(result.stdout + result.stderr, UNIT.name)
    assert any("NoSuchKey" in line for line in complaints), result.stderr
    assert any("sometimes" in line for line in complaints), result.stderr


@cache
def _has_offline_security() -> bool:
    if shutil.which("systemd-analyze") is None:
        return False
    return "--offline" in _analyze("--help").stdout


@pytest.mark.skipif(
    not _has_offline_security(), reason="systemd-analyze lacks security --offline (systemd < 250)"
)
def test_security_exposure(tmp_path: Path) -> None:
    result = _analyze("security", "--offline=true", "--no-pager", str(UNIT), cwd=tmp_path)
    match = re.search(r"Overall exposure level for hss-pu\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
