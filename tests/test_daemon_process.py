"""The daemon as a real process: steps logged, READY/STOPPING, clean stop, secrets kept."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hss_pu.reference_platform.server import ReferencePlatform

from .support.rig import DEVICE, MAC, PASSWORD, ConfigFile, Spawn


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_embedded_default_runs_and_stops(
    tmp_path: Path, spawn: Spawn, sig: signal.Signals
) -> None:
    """The stop comes right after scheduling, while the embedded platform starts its demo
    live receiver: every process of the run must be gone afterwards. A leaked child used to
    keep the pipe open and hang the test: every wait here is bounded."""
    p = await spawn("run", env={"XDG_STATE_HOME": str(tmp_path / "state")})
    try:
        await p.wait_for("embedded default")
        await p.wait_for("reference platform: Vs https://127.0.0.1:")
        await p.wait_for("web console on https://127.0.0.1:")
        await p.wait_for("profile emulated")
        await p.wait_for("storage: ")
        await p.wait_for("ready")
        await p.wait_for("Vs: scheduled to Vd at wss://127.0.0.1:")
        rc, took = await p.stop(sig)
    finally:
        if p.returncode is None:
            await p.kill()
        left = await p.reap_leftovers(wait=2.0)
    assert not left, f"processes of the run left behind: {left}"
    assert rc == 0, p.lines
    assert took < 5.0
    assert any(f"{sig.name} received: stopping" in line for line in p.lines)
    assert p.lines[-1].endswith("stopped")
    assert not any("Traceback" in line for line in p.lines)
    assert not any("embedded-demo-pass" in line for line in p.lines)
    console = tmp_path / "state" / "hss-pu" / "embedded" / "platform" / "console.json"
    assert console.stat().st_mode & 0o777 == 0o600  # a password was made, and not logged


@pytest.mark.platform(clock_offset=3600)
async def test_config_file_run_notify_and_clock(
    tmp_path: Path, config_file: ConfigFile, platform: ReferencePlatform, spawn: Spawn
) -> None:
    path = config_file(platform, log_level="debug")
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.setblocking(False)
    try:
        p = await spawn("run", "--config", str(path), env={"NOTIFY_SOCKET": str(notify)})
        await p.wait_for("Vs: scheduled")
        line = await p.wait_for("clock: platform time adopted, offset ")
        assert float(line.rsplit("offset ", 1)[1].split()[0]) == pytest.approx(3600, abs=2)
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
        assert b"READY=1" in ready
        rc, took = await p.stop()
        stopping = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
        assert b"STOPPING=1" in stopping
    finally:
        sock.close()
    assert rc == 0 and took < 5.0
    assert platform.vs_requests[-1].headers["mac-identity"] == MAC
    # Debug level logs the most; the password is still nowhere.
    assert not any(PASSWORD in line for line in p.lines), p.lines


async def test_unreachable_vs_backs_off_and_still_stops(
    config_file: ConfigFile, spawn: Spawn
) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    path = config_file(f"https://127.0.0.1:{port}")
    p = await spawn("run", "--config", str(path))
    await p.wait_for("attempt 1 failed")
    await p.wait_for("attempt 3 failed")
    rc, took = await p.stop()
    assert rc == 0 and took < 5.0


async def test_bad_config_exits_2(config_file: ConfigFile, spawn: Spawn) -> None:
    path = config_file("https://127.0.0.1:8443", mode=0o644)
    p = await spawn("run", "--config", str(path))
    rc = await p.wait(20)
    err = "\n".join(p.lines)
    assert rc == 2
    assert "device.password" in err and len(err.strip().splitlines()) == 1
    assert PASSWORD not in err


def test_version_and_profiles_commands() -> None:
    import subprocess

    from hss_pu import __version__

    r = subprocess.run(
        [sys.executable, "-m", "hss_pu", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.strip() == f"hss-pu {__version__}"
    r = subprocess.run([sys.executable, "-m", "hss_pu", "profiles"], capture_output=True, text=True)
    assert r.returncode == 0 and "pi5-cam3-ptz" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "hss_pu", "profiles", "pi5-cam3-ptz"], capture_output=True, text=True
    )
    # GetCap: the servos are in the profile, and services/ptz.py drives them.
    assert r.returncode == 0 and '"ptz": true' in r.stdout and '"auto_reboot": true' in r.stdout


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hss_pu", *args], capture_output=True, text=True, timeout=30
    )


async def test_bind_and_status_through_the_running_daemon(
    config_file: ConfigFile, platform: ReferencePlatform, spawn: Spawn
) -> None:
    path = config_file(platform)
    p = await spawn("run", "--config", str(path))
    try:
        await p.wait_for("Vd: online")
        r = await asyncio.to_thread(_cli, "bind", "BIND-42", "--config", str(path))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"ok": True, "sent": True}
        ev = await platform.wait_record(lambda rec: rec.name == "Bind")
        assert ev.params == {"mac_id": MAC, "bind_id": "BIND-42"}
        r = await asyncio.to_thread(_cli, "status", "--config", str(path))
        status = json.loads(r.stdout)
        assert status["online"] is True and status["device"] == DEVICE
    finally:
        rc, _ = await p.stop()
    assert rc == 0
    r = await asyncio.to_thread(_cli, "bind", "X", "--config", str(path))
    assert r.returncode == 1 and "no running daemon" in r.stderr


async def test_reboot_device_restarts_the_daemon(
    config_file: ConfigFile, platform: ReferencePlatform, spawn: Spawn
) -> None:
    path = config_file(platform)
    p = await spawn("run", "--config", str(path))
    try:
        await p.wait_for("Vd: online")
        first = platform.logins[-1]
        await platform.send_event(DEVICE, "RebootDevice")
        line = await p.wait_for("RebootDevice: restarting the daemon")
        # The same PID, started afresh (after that line, not the first start's).
        await p.wait_for(f"starting: device {DEVICE}", since=p.lines.index(line))
        again = await platform.wait_login(lambda r: r.accepted and r is not first, timeout=15)
        assert again.params["reconnect"] == "0"  # a fresh start, as after a reboot
        assert p.returncode is None
    finally:
        rc, took = await p.stop()
    assert rc == 0 and took < 5.0


# A real `hss-pu run --config` whose platform link hits a bug (injected: no natural one is
# left once everything the platform sends is validated where it enters).
INJECTED_FAULT = """
import sys
from hss_pu.services import link

async def broken(self, *args):
    raise RuntimeError("injected link fault")

link.PlatformLink._schedule = broken
from hss_pu.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def test_a_task_that_dies_exits_1_so_systemd_restarts_us(
    config_file: ConfigFile, platform: ReferencePlatform, spawn: Spawn
) -> None:
    path = config_file(platform)
    p = await spawn("run", "--config", str(path), code=INJECTED_FAULT)
    rc = await p.wait(30)
    err = "\n".join(p.lines)
    assert rc == 1, err
    assert "platform-link" in err and "injected link fault" in err
    # A clean stop all the same, saying why the status is 1.
    assert err.rstrip().endswith("stopped: exit status 1 (task platform-link failed)")
    assert PASSWORD not in err
