"""scripts/install.sh, planned with --dry-run against a fake root: nothing is installed."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install.sh"

PASSWD_BASE = "root:x:0:0:root:/root:/bin/bash\n"
GROUP_BASE = "root:x:0:\n"


@dataclass
class Plan:
    returncode: int
    stdout: str
    stderr: str

    @property
    def commands(self) -> list[list[str]]:
        return [shlex.split(line[2:]) for line in self.stdout.splitlines() if line.startswith("+ ")]

    def index(self, *prefix: str) -> int:
        """Position of the first command starting with prefix; fails if absent."""
        for i, argv in enumerate(self.commands):
            if argv[: len(prefix)] == list(prefix):
                return i
        raise AssertionError(f"no command {prefix} in plan:\n{self.stdout}")

    def has(self, *prefix: str) -> bool:
        return any(argv[: len(prefix)] == list(prefix) for argv in self.commands)


def _plan(root: Path, *extra: str) -> Plan:
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--prefix", str(root), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    return Plan(result.returncode, result.stdout, result.stderr)


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host with a video group but no gpio group, no hss-pu user: a laptop."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(PASSWD_BASE)
    (r / "etc" / "group").write_text(GROUP_BASE + "video:x:44:\n")
    return r


def _make_pi(r: Path, *, user: bool) -> None:
    (r / "proc" / "device-tree").mkdir(parents=True)
    (r / "proc" / "device-tree" / "model").write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\0")
    members = "hss-pu" if user else ""
    (r / "etc" / "group").write_text(
        GROUP_BASE
        + f"video:x:44:{members}\ngpio:x:997:{members}\n"
        + ("hss-pu:x:998:\n" if user else "")
    )
    if user:
        (r / "etc" / "passwd").write_text(
            PASSWD_BASE + "hss-pu:x:998:998::/var/lib/hss-pu:/usr/sbin/nologin\n"
        )


SLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # hss_pu.firmware.slots


def _version_name(text: str, root: Path) -> str:
    match = re.search(re.escape(f"{root}/opt/hss-pu/versions/") + r"([^/\s]+)/venv", text)
    assert match, text
    return match.group(1)


def test_script_is_executable_and_parses() -> None:
    # `make install` runs it directly.
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean() -> None:
    result = subprocess.run(
        ["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout


def test_fresh_install_plan(root: Path) -> None:
    plan = _plan(root)
    assert plan.returncode == 0, plan.stderr

    assert plan.has("groupadd", "--system", "hss-pu")
    useradd = plan.commands[plan.index("useradd")]
    for flag in ("--system", "--no-create-home"):
        assert flag in useradd
    assert useradd[useradd.index("--shell") + 1] == "/usr/sbin/nologin"
    assert useradd[-1] == "hss-pu"
    # Only groups that exist: gpio does not here.
    assert plan.has("usermod", "--append", "--groups", "video", "hss-pu")
    # ... and the unit's SupplementaryGroups=video gpio is narrowed by a drop-in.
    dropin = f"{root}/etc/systemd/system/hss-pu.service.d/50-install-groups.conf"
    assert plan.has("cat", ">", dropin)
    assert "SupplementaryGroups=\nSupplementaryGroups=video\nEOF" in plan.stdout

    # A new version directory, complete before current is switched to it (reading 33).
    owned = plan.index(
        "install", "-d", "-m", "0755", "-o", "hss-pu", "-g", "hss-pu", f"{root}/opt/hss-pu"
    )
    assert plan.commands[owned][-1] == f"{root}/opt/hss-pu/versions"
    venv_i = plan.index(sys.executable, "-m", "venv")
    venv_cmd = plan.commands[venv_i]
    assert "--system-site-packages" in venv_cmd
    name = _version_name(venv_cmd[-1], root)
    version = f"{root}/opt/hss-pu/versions/{name}"
    assert venv_cmd[-1] == f"{version}/venv"
    pip_i = plan.index(f"{version}/venv/bin/python", "-m", "pip", "install")
    pip = plan.commands[pip_i]
    assert pip[-1] == str(REPO)  # not a Pi: no [pi] extra
    assert "-e" not in pip and "--editable" not in pip
    smoke = plan.index(f"{version}/venv/bin/hss-pu", "--version")
    chown = plan.index("chown", "-R", "hss-pu:hss-pu", version)
    adopt = next(
        i
        for i, argv in enumerate(plan.commands)
        if argv[-4:] == ["hss_pu.firmware.slots", "adopt", "/opt/hss-pu", name]
    )
    assert owned < venv_i < pip_i < smoke < chown < adopt

    unit = plan.index(
        "install",
        "-D",
        "-m",
        "0644",
        f"{REPO}/systemd/hss-pu.service",
        f"{root}/etc/systemd/system/hss-pu.service",
    )
    etc = plan.index(
        "install", "-d", "-m", "0750", "-o", "root", "-g", "hss-pu", f"{root}/etc/hss-pu"
    )
    config = plan.index(
        "install",
        "-m",
        "0600",
        "-o",
        "hss-pu",
        "-g",
        "hss-pu",
        f"{REPO}/docs/config.example.toml",
        f"{root}/etc/hss-pu/config.toml",
    )
    reload = plan.index("systemctl", "daemon-reload")
    check = next(
        i
        for i, argv in enumerate(plan.commands)
        if argv[-2:] == ["check-config", "/etc/hss-pu/config.toml"]
    )
    enable = plan.index("systemctl", "enable", "--now", "hss-pu.service")
    assert plan.index("useradd") < etc < config
    assert adopt < unit < reload < check < enable
    assert plan.commands[check][-3] == "/opt/hss-pu/current/venv/bin/hss-pu"
    # check-config runs as the service user where runuser exists.
    if shutil.which("runuser"):
        assert plan.commands[check][:4] == ["runuser", "-u", "hss-pu", "--"]


def test_raspberry_pi_plan(root: Path) -> None:
    _make_pi(root, user=True)
    plan = _plan(root)
    assert plan.returncode == 0, plan.stderr
    # User and groups in place: nothing to create or add.
    for cmd in ("groupadd", "useradd", "usermod"):
        assert not plan.has(cmd), cmd
    assert "50-install-groups.conf" not in plan.stdout
    pip = next(a for a in plan.commands if a[1:4] == ["-m", "pip", "install"])
    assert pip[0].startswith(f"{root}/opt/hss-pu/versions/")
    assert pip[-1] == f"{REPO}[pi]"


def test_pi_without_user_joins_both_groups(root: Path) -> None:
    _make_pi(root, user=False)
    plan = _plan(root)
    assert plan.returncode == 0, plan.stderr
    assert plan.has("usermod", "--append", "--groups", "video,gpio", "hss-pu")
    assert "50-install-groups.conf" not in plan.stdout


def test_upgrade_is_a_new_version_and_keeps_config(root: Path) -> None:
    _make_pi(root, user=True)
    # Installed before versions/ existed: one venv the unit ran directly.
    old_venv = root / "opt" / "hss-pu" / "venv"
    (old_venv / "bin").mkdir(parents=True)
    (old_venv / "bin" / "python").symlink_to(sys.executable)
    config = root / "etc" / "hss-pu" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# edited by the owner\n")
    # Left from an install made before the gpio group existed.
    dropin = root / "etc" / "systemd" / "system" / "hss-pu.service.d" / "50-install-groups.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nSupplementaryGroups=\n")

    plan = _plan(root)
    assert plan.returncode == 0, plan.stderr
    assert not any(argv[-1] == str(config) for argv in plan.commands)
    assert "keeping the existing /etc/hss-pu/config.toml" in plan.stderr
    assert plan.has("rm", "-f", str(dropin))
    # The code goes into a new version; the old venv goes once current points at it.
    adopt = next(i for i, a in enumerate(plan.commands) if "adopt" in a)
    assert plan.index("rm", "-rf", str(old_venv)) > adopt
    assert plan.has("install", "-D", "-m", "0644", f"{REPO}/systemd/hss-pu.service")
    assert plan.has("systemctl", "try-restart", "hss-pu.service")
    # State lives in /var/lib/hss-pu (StateDirectory=); the installer never touches it.
    assert "/var/lib/hss-pu" not in "".join(
        " ".join(argv) for argv in plan.commands if argv[0] != "useradd"
    )


def test_version_name_is_a_slot_name(root: Path) -> None:
    name = _version_name(_plan(root).stdout, root)
    assert name.startswith("0.1.0+local.")
    assert SLOT_NAME.fullmatch(name)


def test_dry_run_touches_nothing(root: Path) -> None:
    before = _snapshot(root)
    real = [Path(p) for p in ("/opt/hss-pu", "/etc/hss-pu", "/etc/systemd/system/hss-pu.service")]
    existed = {p: p.exists() for p in real}
    assert _plan(root).returncode == 0
    assert _snapshot(root) == before
    assert {p: p.exists() for p in real} == existed


def test_prefix_requires_dry_run(root: Path) -> None:
    before = _snapshot(root)
    result = subprocess.run(
        ["bash", str(SCRIPT), "--prefix", str(root)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode != 0
    assert "only supported with --dry-run" in result.stderr
    assert _snapshot(root) == before


def test_unknown_argument_is_an_error(root: Path) -> None:
    plan = _plan(root, "--frobnicate")
    assert plan.returncode != 0
    assert "unknown argument" in plan.stderr
    assert plan.commands == []
