"""The daemon as a real process: steps logged, READY/STOPPING, clean stop, secrets kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform

from .conftest import WriteConfig

PASSWORD = "s3cret-Pa55word"


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait_for(self, text: str, timeout: float = 20.0) -> str:
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            for line in self.lines:
                if text in line:
                    return line
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"exited before {text!r}: {self.lines}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if text in line:
                    return line

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        assert self.proc.stderr is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rest = await asyncio.wait_for(self.proc.stderr.read(), 10)
        rc = await asyncio.wait_for(self.proc.wait(), 10)
        self.lines += rest.decode().splitlines()
        return rc, time.monotonic() - t0


async def start(*args: str, env: dict[str, str] | None = None) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hss_pu",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    return Proc(proc)


def marked_processes(mark: str) -> list[int]:
    """Processes whose environment carries ``mark``: a daemon and everything it started,
    reparented or not."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if mark.encode() in env.split(b"\0") and state != "Z":
                found.append(int(entry))
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_embedded_default_runs_and_stops(tmp_path: Path, sig: signal.Signals) -> None:
    """The stop comes right after scheduling, while the embedded platform starts its demo
    live receiver: every process of the run must be gone afterwards. A leaked child used to
    keep the pipe open and hang the test: every wait here is bounded."""
    token = uuid.uuid4().hex
    mark = f"HSS_PU_TEST_RUN={token}"
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "NOTIFY_SOCKET": "", "HSS_PU_TEST_RUN": token}
    p = await start("run", env=env)
    try:
        await p.wait_for("embedded default")
        await p.wait_for("reference platform: Vs https://127.0.0.1:")
        await p.wait_for("profile emulated")
        await p.wait_for("storage: ")
        await p.wait_for("ready")
        await p.wait_for("Vs: scheduled to Vd at wss://127.0.0.1:")
        rc, took = await p.stop(sig)
    finally:
        if p.proc.returncode is None:
            p.proc.kill()
            await asyncio.wait_for(p.proc.wait(), 10)
        for _ in range(40):  # a killed process is gone within milliseconds, a leaked one stays
            if not (left := marked_processes(mark)):
                break
            await asyncio.sleep(0.05)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the run left behind: {left}"
    assert rc == 0, p.lines
    assert took < 5.0
    assert any(f"{sig.name} received: stopping" in line for line in p.lines)
    assert p.lines[-1].endswith("stopped")
    assert not any("Traceback" in line for line in p.lines)
    assert not any("embedded-demo-pass" in line for line in p.lines)


async def test_config_file_run_notify_and_clock(
    tmp_path: Path, write_config: WriteConfig, platform: ReferencePlatform
) -> None:
    path = write_config(
        schedule_url=platform.schedule_url, ca_line=f'ca_file = "{platform.ca_file}"'
    )
    path.write_text(path.read_text() + '[log]\nlevel = "debug"\n')
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.setblocking(False)
    try:
        p = await start("run", "--config", str(path), env={"NOTIFY_SOCKET": str(notify)})
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
    assert platform.vs_requests[-1].headers["mac-identity"] == "02:00:00:00:00:01"
    # Debug level logs the most; the password is still nowhere.
    assert not any(PASSWORD in line for line in p.lines), p.lines


async def test_unreachable_vs_backs_off_and_still_stops(write_config: WriteConfig) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    path = write_config(schedule_url=f"https://127.0.0.1:{port}")
    p = await start("run", "--config", str(path))
    await p.wait_for("attempt 1 failed")
    await p.wait_for("attempt 3 failed")
    rc, took = await p.stop()
    assert rc == 0 and took < 5.0


async def test_bad_config_exits_2(write_config: WriteConfig) -> None:
    path = write_config(mode=0o644)
    p = await start("run", "--config", str(path))
    rc = await asyncio.wait_for(p.proc.wait(), 20)
    assert p.proc.stderr is not None
    err = (await p.proc.stderr.read()).decode()
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
    # GetCap: the servos are in the profile, but no PTZ service drives them yet.
    assert r.returncode == 0 and '"ptz": false' in r.stdout and '"auto_reboot": true' in r.stdout


@pytest.fixture
async def vd_platform(tmp_path: Path) -> AsyncIterator[ReferencePlatform]:
    p = ReferencePlatform(
        PlatformOptions(state_dir=tmp_path / "vdplatform", devices={"PU-0001": PASSWORD})
    )
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hss_pu", *args], capture_output=True, text=True, timeout=30
    )


async def test_bind_and_status_through_the_running_daemon(
    write_config: WriteConfig, vd_platform: ReferencePlatform
) -> None:
    path = write_config(
        schedule_url=vd_platform.schedule_url, ca_line=f'ca_file = "{vd_platform.ca_file}"'
    )
    p = await start("run", "--config", str(path))
    try:
        await p.wait_for("Vd: online")
        r = await asyncio.to_thread(_cli, "bind", "BIND-42", "--config", str(path))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"ok": True, "sent": True}
        ev = await vd_platform.wait_record(lambda rec: rec.name == "Bind")
        assert ev.params == {"mac_id": "02:00:00:00:00:01", "bind_id": "BIND-42"}
        r = await asyncio.to_thread(_cli, "status", "--config", str(path))
        status = json.loads(r.stdout)
        assert status["online"] is True and status["device"] == "PU-0001"
    finally:
        rc, _ = await p.stop()
    assert rc == 0
    r = await asyncio.to_thread(_cli, "bind", "X", "--config", str(path))
    assert r.returncode == 1 and "no running daemon" in r.stderr


async def test_reboot_device_restarts_the_daemon(
    write_config: WriteConfig, vd_platform: ReferencePlatform
) -> None:
    path = write_config(
        schedule_url=vd_platform.schedule_url, ca_line=f'ca_file = "{vd_platform.ca_file}"'
    )
    p = await start("run", "--config", str(path))
    try:
        await p.wait_for("Vd: online")
        first = vd_platform.logins[-1]
        await vd_platform.send_event("PU-0001", "RebootDevice")
        await p.wait_for("RebootDevice: restarting the daemon")
        await p.wait_for("starting: device PU-0001")  # the same PID, started afresh
        again = await vd_platform.wait_login(lambda r: r.accepted and r is not first, timeout=15)
        assert again.params["reconnect"] == "0"  # a fresh start, as after a reboot
        assert p.proc.returncode is None
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
    write_config: WriteConfig, platform: ReferencePlatform
) -> None:
    path = write_config(
        schedule_url=platform.schedule_url, ca_line=f'ca_file = "{platform.ca_file}"'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", INJECTED_FAULT, "run", "--config", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "NOTIFY_SOCKET": ""},
    )  # fmt: skip
    assert proc.stderr is not None
    err = (await asyncio.wait_for(proc.stderr.read(), 20)).decode()
    rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == 1, err
    assert "platform-link" in err and "injected link fault" in err
    # A clean stop all the same, saying why the status is 1.
    assert err.rstrip().endswith("stopped: exit status 1 (task platform-link failed)")
    assert PASSWORD not in err
