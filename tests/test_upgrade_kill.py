"""Power loss at every step of an upgrade (issue 12, item 6): SIGKILL of the whole upgrade
at each step of download, check, unpack, install, trial, start-up and commit, then the
next start: a complete version runs every time, nothing half-written is left, and the new
version runs only from the step its trial was recorded on (tests/support/upgrade_driver.py;
the slot store's own steps, in more detail, are in test_firmware_slots.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from hss_pu.firmware.slots import SlotStore
from hss_pu.reference_platform.server import ReferencePlatform

from .support.bundles import fake_bundle, new_key
from .support.fakewheel import build_fake_wheel
from .support.upgrade_driver import service

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NEW = "2-HSS-PU-EMU-2.0"


async def drive(
    root: Path, staging: Path, url: str, ca: str, pub: Path, kill_at: int
) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.upgrade_driver",
        str(root), str(staging), url, ca, str(pub), "HSS-PU-EMU-2.0", str(kill_at),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    deadline = time.monotonic() + 10  # the group's children go too, as at a power cut
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the killed upgrade's processes are still there")
    assert proc.returncode is not None
    steps = [line.split(" ", 1)[1] for line in out.decode().splitlines()]
    return proc.returncode, steps


async def recovers(root: Path, staging: Path, ca: str, pub: Path, label: str) -> str:
    """The next start (the launcher's rules, the upgrade service's start): what runs."""
    plan = await asyncio.to_thread(SlotStore(root).startup)
    svc = service(root, staging, ca, pub, plan.run, asyncio.Event())
    await svc.start()
    await svc.close()
    assert plan.run in {"1.0", NEW}, label
    await asyncio.to_thread(complete, root, staging, label)
    return plan.run


def complete(root: Path, staging: Path, label: str) -> None:
    store = SlotStore(root)
    assert not staging.exists(), label
    current = store.link("current")
    assert current is not None and store.is_complete(current), label
    for name in os.listdir(store.versions):
        assert store.is_complete(name), f"{label}: {name} left half-written"
    assert not [p for p in os.listdir(root) if p.endswith(".tmp")], label
    assert not store.load_state().problem, label


async def test_sigkill_at_every_step_of_an_upgrade_leaves_a_complete_version(
    platform: ReferencePlatform, tmp_path: Path
) -> None:
    key, pub = new_key(tmp_path / "keys")
    bundle = fake_bundle(tmp_path, [key])
    url = platform.firmware.url_for(platform.firmware.add(bundle))
    ca = str(platform.ca_file)
    root, staging = tmp_path / "fw", tmp_path / "staging"
    store = SlotStore(root)
    store.install(build_fake_wheel(tmp_path / "w1", "1.0").parent, "1.0", with_pip=False)
    store.adopt("1.0")
    template = tmp_path / "template"
    shutil.copytree(root, template, symlinks=True)
    rc, steps = await drive(root, staging, url, ca, pub, 0)
    assert rc == 0, steps
    assert SlotStore(root).link("current") == NEW
    for first in ("download-head", "check", "extract-member", "pip", "trial-state", "committed"):
        assert first in steps, (first, steps)
    assert len(steps) >= 20, steps
    trial_at = steps.index("trial-state") + 1
    ran: dict[int, str] = {}
    for k in range(1, len(steps) + 1):
        shutil.rmtree(root)
        shutil.copytree(template, root, symlinks=True)  # same path: the venv's scripts work
        rc, _ = await drive(root, staging, url, ca, pub, k)
        label = f"killed at step {k} ({steps[k - 1]})"
        assert rc == -signal.SIGKILL, f"{label}: exit {rc}"
        ran[k] = await recovers(root, staging, ca, pub, label)
        await recovers(root, staging, ca, pub, label + ", and the start after")
    assert all(v == "1.0" for k, v in ran.items() if k < trial_at), ran
    assert all(v == NEW for k, v in ran.items() if k >= trial_at), ran
    print(f"{len(ran)} kill points, trial recorded at step {trial_at}")
