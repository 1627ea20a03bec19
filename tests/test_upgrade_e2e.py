"""A real upgrade of ``hss-pu run`` (issue 12, items 4, 5 and 7), processes and all.

The bundle holds this checkout's wheel and every dependency wheel (pip wheel, ~60 MB),
served by the reference platform over TLS; the daemon downloads it, installs it into a
new venv under storage.dir/firmware, restarts through the launcher (execv) into it on
trial, and the trial commits once healthy, or is rolled back when its Keepalives go
unanswered, and the old code runs again and says why.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hss_pu.config import UpgradeSection
from hss_pu.firmware.slots import SlotStore, emulated_root
from hss_pu.reference_platform.server import ReferencePlatform

from .support.bundles import make_bundle, new_key
from .support.rig import DEVICE, Proc, Spawn, daemon_config, write_config_file

pytestmark = [pytest.mark.slow, pytest.mark.platform(hb_interval=1, admin_port=0)]

REPO = Path(__file__).resolve().parents[1]
NEW = "HSS-PU-EMU-2.0"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """This checkout's wheel and its dependencies' (from pip's cache or index)."""
    out = tmp_path_factory.mktemp("wheels")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
         "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.skip(f"no wheel set here: {built.stderr.strip()[-300:]}")
    return sorted(out.glob("*.whl"))


async def start(
    platform: ReferencePlatform,
    spawn: Spawn,
    tmp_path: Path,
    wheels: list[Path],
    *,
    send: bool = True,
) -> tuple[Proc, Path, str, Path]:
    """The daemon as a process trusting a new key, and a signed bundle of ``NEW``."""
    key, pub = new_key(tmp_path / "keys")
    bundle = make_bundle(tmp_path / "fw.bundle", wheels, [key], model=NEW, number=2)
    storage = tmp_path / "pu"
    doc = daemon_config(
        platform, storage, keepalive=1.0,
        upgrade=UpgradeSection(trusted_keys=[str(pub)], trial_seconds=8),
    )  # fmt: skip
    cfg = write_config_file(doc, tmp_path / "pu.toml")
    proc = await spawn("run", "--config", str(cfg))
    login = await platform.wait_login(lambda r: r.accepted, timeout=30)
    if send:
        url = platform.firmware.url_for(platform.firmware.add(bundle))
        await platform.send_event(DEVICE, "UpgradeFirmware", {"firmware_model": NEW, "url": url})
    return proc, storage, login.params["firmware_model"], bundle


async def follow(
    platform: ReferencePlatform,
    until_status: str,
    on: dict[str, Callable[[], None]] | None = None,
) -> list[tuple[str, int, str]]:
    """QueryUpgrade every 0.1 s (through the restarts) until ``until_status``; ``on``
    calls a function the first time a status is seen."""
    seen: list[tuple[str, int, str]] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            r = await resp(platform, "QueryUpgrade", timeout=5)
        except (LookupError, TimeoutError, ConnectionError):
            await asyncio.sleep(0.1)
            continue
        seen.append((r["upgrade_status"], r["progress"], r["firmware_model"]))
        if on is not None and r["upgrade_status"] in on:
            on.pop(r["upgrade_status"])()
        if r["upgrade_status"] == until_status:
            return seen
        assert r["upgrade_status"] != "error", (r, seen)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {until_status}: {seen[-5:]}")


async def resp(platform: ReferencePlatform, method: str, timeout: float = 20) -> dict[str, Any]:
    reply = await platform.call(DEVICE, method, timeout=timeout)
    assert reply.err is None and isinstance(reply.resp, dict), reply
    return reply.resp


def first_seen(seen: list[tuple[str, int, str]]) -> list[str]:
    out: list[str] = []
    for status, _, _ in seen:
        if status not in out:
            out.append(status)
    return out


async def test_a_good_bundle_installs_and_the_device_comes_back_as_the_new_model(
    platform: ReferencePlatform, spawn: Spawn, tmp_path: Path, wheels: list[Path]
) -> None:
    proc, storage, old, bundle = await start(platform, spawn, tmp_path, wheels, send=False)
    assert old != NEW
    # As a person would: hss-pu platform upgrade serves it, sends it and shows progress.
    t0 = time.monotonic()
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hss_pu", "platform", "upgrade", DEVICE, str(bundle),
        "--state-dir", str(platform.options.state_dir), "--timeout", "170",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    seen = await follow(platform, "done")
    took = time.monotonic() - t0
    out, _ = await asyncio.wait_for(cli.communicate(), 30)
    shown = out.decode()
    assert cli.returncode == 0, shown
    assert f"UpgradeFirmware sent to {DEVICE}: {NEW}" in shown
    assert f"done: {DEVICE} runs {NEW} (committed)" in shown
    while seen and seen[0][0] == "notstart":  # polled before the command sent it
        seen.pop(0)
    assert first_seen(seen) == ["downloading", "installing", "upgrading", "done"], seen
    progress = [p for _, p, _ in seen]
    assert progress == sorted(progress) and progress[-1] == 100, seen
    assert seen[-1][2] == NEW
    login = await platform.wait_login(
        lambda r: r.accepted and r.params["firmware_model"] == NEW, timeout=5
    )
    assert login.params["reconnect"] == "0"  # a new process (execv): its first login
    status = await resp(platform, "DevStatus")
    assert status["firmware_model"] == NEW
    assert any(r.name == "Keepalive" and r.params["state"] == 2 for r in platform.records)
    store = SlotStore(emulated_root(storage))
    state = store.load_state()
    assert store.link("current") == "2-HSS-PU-EMU-2.0" and store.is_complete("2-HSS-PU-EMU-2.0")
    assert state.trial is None and state.last is not None and state.last.result == "committed"
    assert state.highest == 2
    assert not (storage / "upgrade").exists()
    await proc.wait_for("passed its health check: committed")
    rc, _ = await proc.stop()
    assert rc == 0
    print(f"UpgradeFirmware to committed: {took:.1f} s")


async def test_a_version_that_fails_its_health_check_is_rolled_back(
    platform: ReferencePlatform, spawn: Spawn, tmp_path: Path, wheels: list[Path]
) -> None:
    proc, storage, old, _ = await start(platform, spawn, tmp_path, wheels)

    def refuse_keepalives() -> None:  # from the install on: the new version's go unanswered
        platform.options.answer_keepalive = False

    await follow(platform, "installing", {"installing": refuse_keepalives})
    trial = await platform.wait_login(
        lambda r: r.accepted and r.params["firmware_model"] == NEW, 60
    )
    try:
        back = await platform.wait_login(
            lambda r: r.accepted and r.params["firmware_model"] == old and r.time > trial.time, 40
        )
    except TimeoutError:
        print("\n".join(proc.lines[-80:]))
        raise
    platform.options.answer_keepalive = True
    assert back.params["reconnect"] == "0"
    r = await resp(platform, "QueryUpgrade")
    assert r["upgrade_status"] == "error" and r["firmware_model"] == old
    assert r["reason"].startswith("rolled back: did not pass the health check in 8 s"), r
    assert "Keepalive" in r["reason"]
    assert (await resp(platform, "DevStatus"))["firmware_model"] == old
    store = SlotStore(emulated_root(storage))
    assert store.link("current") is None  # the checkout's code runs, as before
    assert store.load_state().trial is None
    assert not (store.versions / "2-HSS-PU-EMU-2.0").exists()  # removed at that start
    assert store.load_state().highest == 2  # the rolled-back number is never taken again
    rc, _ = await proc.stop()
    assert rc == 0
