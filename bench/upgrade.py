"""Firmware upgrade: UpgradeFirmware to a committed new version, and to a rollback.

Run: .venv/bin/python bench/upgrade.py [--runs 3] [--trial-seconds 10]

Builds this checkout's wheel set (``pip wheel``) into a signed bundle, as ``hss-pu
firmware build`` does; the reference platform (TLS on loopback) runs in this process and
serves it; the daemon runs as ``hss-pu run`` (emulated camera, 640x360@25) in its own,
trusting the bundle's key, with a fresh storage.dir per run.

Commit runs: UpgradeFirmware, then QueryUpgrade every 50 ms (through the restart) until
``done``; prints the time to the end of the download (first ``installing``), of the
install (first ``upgrading``), to the new version's Vd login, and to the commit.

Rollback runs: the same bundle, but from ``installing`` on the platform leaves Keepalives
unanswered, so the trial fails its health check after ``--trial-seconds``; prints the
time to the old version's login again and QueryUpgrade's reason. The figure is the trial
seconds plus the two restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchconfig

from hss_pu.firmware.bundle import build
from hss_pu.firmware.keys import generate, load_private_key
from hss_pu.logsetup import setup_logging
from hss_pu.reference_platform.options import PlatformOptions
from hss_pu.reference_platform.server import ReferencePlatform

REPO = Path(__file__).resolve().parent.parent
DEVICE, PASSWORD, MAC = "PU-BENCH", "bench-pass-123", "02:00:00:00:0b:0c"
NEW = "HSS-PU-EMU-bench-2"


def write_config(tmp: Path, platform: ReferencePlatform, pub: Path, trial: float) -> Path:
    # The log stays at warning: the "installed and on trial after S s" line is a warning.
    return benchconfig.write_config(
        tmp,
        device=DEVICE,
        password=PASSWORD,
        mac=MAC,
        profile="emulated",
        schedule_url=platform.schedule_url,
        ca_file=str(platform.ca_file),
        camera="width = 640\nheight = 360\nfps = 25\nbitrate = 1000000\n",
        sections=f'[upgrade]\ntrusted_keys = ["{pub}"]\ntrial_seconds = {trial}\n',
    )


async def query(platform: ReferencePlatform) -> dict[str, Any] | None:
    try:
        reply = await platform.call(DEVICE, "QueryUpgrade", timeout=5)
    except (LookupError, TimeoutError, ConnectionError):
        return None
    return reply.resp if reply.err is None else None


async def one(
    tmp: Path, bundle: Path, pub: Path, trial: float, *, rollback: bool
) -> dict[str, float | str]:
    platform = ReferencePlatform(
        PlatformOptions(state_dir=tmp / "platform", devices={DEVICE: PASSWORD}, hb_interval=1)
    )
    await platform.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hss_pu", "run", "--config",
        str(write_config(tmp, platform, pub, trial)),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out: dict[str, float | str] = {}
    log: list[str] = []

    async def read_log() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.append(line.decode(errors="replace"))

    reader = asyncio.create_task(read_log())
    try:
        login = await platform.wait_login(lambda r: r.accepted, 30)
        old = login.params["firmware_model"]
        url = platform.firmware.url_for(platform.firmware.add(bundle))
        t0, wall0 = time.monotonic(), time.time()
        await platform.send_event(DEVICE, "UpgradeFirmware", {"firmware_model": NEW, "url": url})
        while time.monotonic() - t0 < 300:
            r = await query(platform)
            now = time.monotonic() - t0
            status = r["upgrade_status"] if r else "offline"
            if status == "installing" and "downloaded" not in out:
                out["downloaded"] = now
                if rollback:
                    platform.options.answer_keepalive = False
            for line in log:  # the daemon's own figure: request to trial recorded
                m = re.search(r"installed and on trial after ([0-9.]+) s", line)
                if m and "installed (on trial)" not in out:
                    out["installed (on trial)"] = float(m.group(1))
            new = [x for x in platform.logins if x.accepted and x.params["firmware_model"] == NEW]
            if new and "new version's login" not in out:
                out["new version's login"] = new[0].time - wall0
            if status == "done":
                out["committed"] = now
                break
            if status == "error":
                platform.options.answer_keepalive = True
                back = [
                    x for x in platform.logins
                    if x.accepted and x.params["firmware_model"] == old and x.time > login.time
                ]  # fmt: skip
                if back:
                    out["old login again"] = back[0].time - wall0
                out["rolled back"] = now
                out["reason"] = r["reason"] if r else ""
                break
            await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        await proc.wait()
        await reader
        await platform.close()
    return out


def show(what: str, values: list[float]) -> None:
    if values:
        print(
            f"  {what:34} median {statistics.median(values):6.1f} s  "
            f"min {min(values):6.1f}  max {max(values):6.1f}  (n={len(values)})"
        )


async def run(runs: int, trial: float) -> None:
    with tempfile.TemporaryDirectory(prefix="hss-bench-upgrade-") as d:
        tmp = Path(d)
        wheels = tmp / "wheels"
        t = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
             "-w", str(wheels), str(REPO)],
            check=True, capture_output=True,
        )  # fmt: skip
        generate(tmp / "key")
        key, pub = load_private_key(tmp / "key"), tmp / "key.pub"
        bundle = tmp / "bench.bundle"
        now = int(time.time())
        build(
            wheels=sorted(wheels.glob("*.whl")), keys=[key], firmware_model=NEW,
            version_number=2, hardware_models=["HSS-PU-EMU"], expires=now + 86400,
            created=now, out=bundle,
        )  # fmt: skip
        n_wheels = len(list(wheels.glob("*.whl")))
        print(
            f"bundle: {bundle.stat().st_size / 1e6:.1f} MB ({n_wheels} wheels), "
            f"built in {time.monotonic() - t:.1f} s (pip wheel from the cache, sign)"
        )
        results: dict[str, list[float]] = {}
        reasons: list[str] = []
        for mode in ("commit", "rollback"):
            for i in range(runs):
                sub = tmp / f"{mode}-{i}"
                sub.mkdir()
                r = await one(sub, bundle, pub, trial, rollback=mode == "rollback")
                for k, v in r.items():
                    if isinstance(v, float):
                        results.setdefault(f"{mode}: {k}", []).append(v)
                    else:
                        reasons.append(v)
        print(f"UpgradeFirmware sent -> ... ({runs} runs each, trial_seconds {trial:g}):")
        for k, vs in results.items():
            show(k, vs)
        if reasons:
            print(f"  rollback reason: {reasons[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--trial-seconds", type=float, default=10.0)
    args = ap.parse_args()
    setup_logging("error")
    asyncio.run(run(args.runs, args.trial_seconds))


if __name__ == "__main__":
    main()
