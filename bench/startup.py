"""Start-up cost of the daemon, and how fast the quick commands answer.

Run: .venv/bin/python bench/startup.py [runs]. Prints one line per figure (median and max
over the runs):

- the embedded default (``hss-pu run``: daemon and reference platform in one process);
- ``hss-pu run --config`` against a reference platform in another process (what a camera
  runs), time to READY, to Vs scheduled and to the Vd login, and its RSS;
- ``import hss_pu.cli`` alone, and ``check-config``, ``status`` and ``bind`` against that
  running daemon: wall time from spawn to exit, and the child's peak RSS.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HSS_PU = [sys.executable, "-m", "hss_pu"]
PASSWORD = "embedded-demo-pass"  # noqa: S105 - the reference platform's default demo device


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def daemon_run(args: Sequence[str], env: dict[str, str]) -> tuple[float, ...]:
    """(to READY, to Vs scheduled, to Vd online, RSS at Vs scheduled, RSS 0.5 s after the
    login, SIGTERM to exit) of one start."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*HSS_PU, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stderr is not None
    ready = scheduled = online = rss_scheduled = float("nan")
    for line in proc.stderr:
        if line.rstrip().endswith(" ready"):
            ready = time.monotonic() - t0
        if "Vs: scheduled" in line:
            scheduled = time.monotonic() - t0
            rss_scheduled = rss_mb(proc.pid)
        if "Vd: online" in line:
            online = time.monotonic() - t0
            break
    else:
        raise SystemExit(f"{' '.join(args)} exited {proc.wait()} before its Vd login")
    time.sleep(0.5)  # let the first Keepalive and GetServerInfo settle
    rss = rss_mb(proc.pid)
    t1 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    return ready, scheduled, online, rss_scheduled, rss, time.monotonic() - t1


def timed(args: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one short command, which must succeed."""
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {err}")
    return took, usage.ru_maxrss / 1024


def report(name: str, unit: str, vals: Sequence[float]) -> None:
    print(f"{name}: median {statistics.median(vals):.3f} {unit}, max {max(vals):.3f} {unit}")


def write_config(tmp: Path, state: dict[str, str]) -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(
        f"""[device]
id = "PU-0001"
password = "{PASSWORD}"
mac = "02:00:00:00:00:01"
profile = "emulated"

[platform]
schedule_url = "{state["schedule_url"]}"
ca_file = "{state["ca_file"]}"

[camera]
source = "emulated"
width = 320
height = 180
fps = 15

[storage]
dir = "{tmp / "pu"}"
"""
    )
    os.chmod(cfg, 0o600)
    return cfg


def start_platform(state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [*HSS_PU, "platform", "serve", "--state-dir", str(state_dir), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("try:"):
            break
    else:
        raise SystemExit("the reference platform did not start")
    state: dict[str, str] = json.loads((state_dir / "platform.json").read_text())
    return proc, state


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "XDG_STATE_HOME": str(tmp / "xdg"), "NOTIFY_SOCKET": ""}
        names = (
            "start to READY",
            "start to Vs scheduled",
            "start to Vd online",
            "RSS at Vs scheduled",
            "RSS 0.5 s after the Vd login",
            "SIGTERM to exit",
        )
        units = ("s", "s", "s", "MB", "MB", "s")
        embedded = [daemon_run(["run"], env) for _ in range(runs)]
        for i, name in enumerate(names):
            report(f"embedded default: {name}", units[i], [r[i] for r in embedded])

        platform, state = start_platform(tmp / "platform")
        try:
            cfg = write_config(tmp, state)
            configured = [daemon_run(["run", "--config", str(cfg)], env) for _ in range(runs)]
            for i, name in enumerate(names):
                report(f"run --config: {name}", units[i], [r[i] for r in configured])

            daemon = subprocess.Popen(
                [*HSS_PU, "run", "--config", str(cfg)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            assert daemon.stderr is not None
            for line in daemon.stderr:
                if "Vd: online" in line:
                    break
            # Keep reading its log so the daemon never blocks on a full pipe.
            threading.Thread(target=daemon.stderr.read, daemon=True).start()
            try:
                imp = [sys.executable, "-c", "import hss_pu.cli"]
                quick: list[tuple[str, Callable[[], tuple[float, float]]]] = [
                    ("import hss_pu.cli", lambda: timed(imp)),
                    ("hss-pu check-config", lambda: timed([*HSS_PU, "check-config", str(cfg)])),
                    ("hss-pu status", lambda: timed([*HSS_PU, "status", "-c", str(cfg)])),
                    ("hss-pu bind", lambda: timed([*HSS_PU, "bind", "B-1", "-c", str(cfg)])),
                ]
                for name, fn in quick:
                    results = [fn() for _ in range(max(runs, 5))]
                    report(f"{name}: time", "s", [r[0] for r in results])
                    report(f"{name}: peak RSS", "MB", [r[1] for r in results])
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.communicate(timeout=10)
        finally:
            platform.send_signal(signal.SIGTERM)
            platform.communicate(timeout=10)


if __name__ == "__main__":
    main()
