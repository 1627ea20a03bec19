"""UpgradeFirmware and QueryUpgrade against the reference platform (issue 12, items 2, 3
and 7): every refusal with its reason and nothing changed, one upgrade at a time, a cut
download resumed with Range, and a good bundle installed and put on trial (the restart
into it, and the trial's health gate, are in test_upgrade_e2e.py, with processes)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hss_pu.config import UpgradeSection
from hss_pu.firmware.slots import SlotStore, emulated_root
from hss_pu.reference_platform.upgrade import bundle_model

from .support.bundles import fake_bundle, new_key
from .support.fakewheel import build_fake_wheel
from .support.rig import DEVICE, MakeRig, Rig, until

pytestmark = [
    pytest.mark.platform(hb_interval=1),
    pytest.mark.rig(start_media=False, keepalive=1.0),
]

INSTALLED = "2-HSS-PU-EMU-2.0"


@dataclass
class Keys:
    k1: Ed25519PrivateKey
    k2: Ed25519PrivateKey
    k3: Ed25519PrivateKey  # not trusted by the device
    pubs: list[Path]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    (k1, p1), (k2, p2), (k3, _) = (new_key(tmp_path / "keys", n) for n in ("k1", "k2", "k3"))
    return Keys(k1, k2, k3, [p1, p2])


async def query(rig: Rig) -> dict[str, Any]:
    reply = await rig.call("QueryUpgrade")
    assert reply.err is None, reply.err
    resp: dict[str, Any] = reply.resp
    return resp


async def upgrade(rig: Rig, bundle: Path, model: str | None = None, url: str | None = None) -> None:
    platform = rig.platform
    name = platform.firmware.add(bundle)
    model = model or bundle_model(bundle)  # as `hss-pu platform upgrade` reads it
    url = url or platform.firmware.url_for(name)
    await platform.send_event(DEVICE, "UpgradeFirmware", {"firmware_model": model, "url": url})


REFUSED = "refused, nothing changed"


async def refused(rig: Rig, caplog: pytest.LogCaptureFixture, n: int) -> dict[str, Any]:
    """QueryUpgrade once the device has logged its ``n``-th refusal."""
    for _ in range(200):
        if caplog.text.count(REFUSED) >= n:
            return await query(rig)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no refusal {n}: {await query(rig)}")


def committed_v2(storage: Path, k: Keys) -> SlotStore:
    """The device already runs version number 2 (installed from a bundle, committed)."""
    store = SlotStore(emulated_root(storage))
    wheels = build_fake_wheel(storage.parent / "w2", "2.0").parent
    store.install(wheels, INSTALLED, with_pip=False)
    store.begin_trial(INSTALLED, 2, trial_seconds=60)
    store.startup()
    store.commit(INSTALLED)
    return store


def snapshot(store: SlotStore) -> tuple[Any, ...]:
    s = store.load_state()
    return (
        store.link("current"),
        store.link("previous"),
        sorted(os.listdir(store.versions)),
        s.highest,
        s.trial,
    )


@pytest.fixture
async def upgradable(
    make_rig: MakeRig, tmp_path: Path, keys: Keys
) -> AsyncIterator[tuple[Rig, SlotStore]]:
    storage = tmp_path / "pu"
    store = committed_v2(storage, keys)
    up = UpgradeSection(trusted_keys=[str(p) for p in keys.pubs], threshold=2, trial_seconds=30)
    rig = await make_rig(storage=storage, upgrade=up)
    yield rig, store


async def test_no_trusted_keys_refuses_and_getcap_says_so(
    rig: Rig, tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    cap = (await rig.call("GetCap")).resp
    assert cap["firmware_download_https"] is False
    assert await query(rig) == {
        "upgrade_status": "notstart", "progress": 0,
        "firmware_model": rig.daemon.config.profile.firmware_model,
    }  # fmt: skip
    await upgrade(rig, fake_bundle(tmp_path, [keys.k1]))
    r = await refused(rig, caplog, 1)
    assert r["upgrade_status"] == "error"
    assert r["reason"].startswith("no trusted keys")
    name = rig.platform.firmware.add(fake_bundle(tmp_path, [keys.k1]))
    assert not rig.platform.firmware.requests_for(name)  # nothing was downloaded


async def test_every_bad_bundle_is_refused_with_its_reason_and_nothing_changes(
    upgradable: tuple[Rig, SlotStore], tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    rig, store = upgradable
    cap = (await rig.call("GetCap")).resp
    assert cap["firmware_download_https"] is True
    before = snapshot(store)
    both = [keys.k1, keys.k2]
    good3 = fake_bundle(tmp_path, both, model="HSS-PU-EMU-3.0", number=3)
    data = good3.read_bytes()
    tampered_payload = tmp_path / "tampered-payload.bundle"
    tampered_payload.write_bytes(data[:-700] + bytes([data[-700] ^ 0x01]) + data[-699:])
    tampered_manifest = tmp_path / "tampered-manifest.bundle"
    tampered_manifest.write_bytes(data.replace(b'"version_number":3', b'"version_number":9', 1))
    assert tampered_manifest.read_bytes() != data
    cases: list[tuple[str, Path, str | None, str]] = [
        ("tampered payload byte", tampered_payload, None, "length and hash: payload sha256"),
        ("tampered manifest", tampered_manifest, None, "signature: 0 valid"),
        ("unknown key", fake_bundle(tmp_path, [keys.k3], number=3, name="k3.bundle"), None,
         "signature: 0 valid"),
        ("below threshold", fake_bundle(tmp_path, [keys.k1], number=3, name="k1.bundle"), None,
         "signature: 1 valid"),
        ("older version number", fake_bundle(tmp_path, both, number=1, model="HSS-PU-EMU-1.0"),
         None, "version number: version number 1 is not above 2"),
        ("replayed bundle", fake_bundle(tmp_path, both, number=2, name="replay.bundle"), None,
         "version number: version number 2 is not above 2"),
        ("wrong hardware model",
         fake_bundle(tmp_path, both, number=3, hardware=["RPI4-HQ"], name="hw.bundle"), None,
         "hardware model: made for RPI4-HQ"),
        ("expired", fake_bundle(tmp_path, both, number=3, expires_in=-10, name="old.bundle"),
         None, "expiry: expired"),
        ("another model than asked", good3, "HSS-PU-EMU-4.0", "firmware model: the bundle is"),
    ]  # fmt: skip
    for n, (label, bundle, model, reason) in enumerate(cases, 1):
        await upgrade(rig, bundle, model)
        r = await refused(rig, caplog, n)
        assert r["upgrade_status"] == "error", label
        assert r["reason"].startswith(reason), (label, r["reason"])
        assert r["firmware_model"] == rig.daemon.config.profile.firmware_model, label
        assert snapshot(store) == before, label
        assert not (rig.storage / "upgrade").exists(), label
    # Over-long: the platform sends the bundle and more; the device stops at the length.
    rig.platform.firmware.overlong_next(4096)
    await upgrade(rig, good3)
    r = await refused(rig, caplog, len(cases) + 1)
    assert r["reason"].startswith("length and hash: payload runs past"), r
    assert snapshot(store) == before
    # A URL the device may not fetch (plain http): refused before anything is sent.
    await upgrade(rig, good3, url=rig.platform.firmware.url_for("x").replace("https:", "http:"))
    r = await refused(rig, caplog, len(cases) + 2)
    assert r["reason"].startswith("download:") and "http" in r["reason"], r
    # Nothing was ever installed: Keepalive never said "upgrading" (state 2).
    assert not [x for x in rig.platform.records if x.name == "Keepalive" and x.params["state"] == 2]


async def test_a_second_upgrade_while_one_runs_is_ignored(
    upgradable: tuple[Rig, SlotStore], tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    rig, _ = upgradable
    both = [keys.k1, keys.k2]
    first = fake_bundle(tmp_path, both, number=3, hardware=["RPI4-HQ"], name="first.bundle")
    second = fake_bundle(tmp_path, both, number=4, model="HSS-PU-EMU-4.0", name="second.bundle")
    # The first download is cut twice, so it is still under way when the second comes.
    rig.platform.firmware.cut_next(20, count=2)
    with caplog.at_level(logging.WARNING, "hss_pu.upgrade"):
        await upgrade(rig, first)
        await upgrade(rig, second)
        r = await refused(rig, caplog, 1)
    assert r["reason"].startswith("hardware model"), r
    assert "UpgradeFirmware to HSS-PU-EMU-4.0 ignored" in caplog.text
    platform = rig.platform
    assert not platform.firmware.requests_for(platform.firmware.add(second))


async def test_cut_download_resumes_with_range_and_the_bundle_goes_on_trial(
    upgradable: tuple[Rig, SlotStore], tmp_path: Path, keys: Keys
) -> None:
    rig, store = upgradable
    bundle = fake_bundle(tmp_path, [keys.k1, keys.k2], number=3, model="HSS-PU-EMU-3.0")
    size = bundle.stat().st_size
    rig.platform.firmware.cut_next(size // 2)
    await upgrade(rig, bundle)
    seen: list[tuple[str, int]] = []
    why_awake: list[str] = []
    for _ in range(1200):
        if rig.task.done():
            break
        try:
            r = await query(rig)
        except (LookupError, ConnectionError):
            # Gone between two polls: restarting into the bundle (asserted below);
            # "upgrading" lasts only from the end of the install to the restart.
            break
        seen.append((r["upgrade_status"], r["progress"]))
        if r["upgrade_status"] == "installing" and not why_awake:
            # A battery device would not fall asleep in the middle of it.
            why_awake = (await rig.status())["power"]["why_awake"]
        if r["upgrade_status"] in ("upgrading", "error"):
            break
        await asyncio.sleep(0.05)
    assert seen and seen[-1][0] in ("installing", "upgrading"), seen
    name = rig.platform.firmware.add(bundle)
    reqs = rig.platform.firmware.requests_for(name)
    assert len(reqs) == 2, reqs
    assert reqs[0].range is None and not reqs[0].complete
    assert reqs[1].range == f"bytes={reqs[0].sent}-" and reqs[1].status == 206
    # Installed, on trial, and the daemon restarts (in-process: run() returns).
    assert await until(lambda: rig.task.done(), 15)
    assert rig.daemon.restart_requested and rig.task.result() == 0
    state = store.load_state()
    assert state.trial is not None and state.trial.name == "3-HSS-PU-EMU-3.0"
    assert state.highest == 3 and store.is_complete("3-HSS-PU-EMU-3.0")
    assert store.link("current") == INSTALLED  # not switched before the trial commits
    assert store.manifest("3-HSS-PU-EMU-3.0") is not None
    assert not (rig.storage / "upgrade").exists()
    assert "installing" in [s for s, _ in seen]
    assert "firmware upgrade" in why_awake, why_awake
    progress = [p for _, p in seen]
    assert progress == sorted(progress), seen
    assert any(x.name == "Keepalive" and x.params["state"] == 2 for x in rig.platform.records), (
        "Keepalive state 2 while installing"
    )


async def test_a_bundle_without_room_for_it_is_refused_before_the_download(
    upgradable: tuple[Rig, SlotStore],
    tmp_path: Path,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig, store = upgradable
    before = snapshot(store)
    real = shutil.disk_usage

    def full(path: str | Path) -> Any:  # 10 MiB left on the staging file system
        u = real(path)
        return type(u)(u.total, u.total - (10 << 20), 10 << 20)

    monkeypatch.setattr(shutil, "disk_usage", full)
    bundle = fake_bundle(tmp_path, [keys.k1, keys.k2], number=3)
    await upgrade(rig, bundle)
    r = await refused(rig, caplog, 1)
    assert r["reason"].startswith("disk space: 10 MiB free"), r
    assert snapshot(store) == before
