"""GetDiskInfo and FormatDisk on the recording store: the numbers of a directory store,
state 3 while formatting, a format that empties the spool and nothing else, its lost
segments in op=stat, recording that goes on; and the mount store's refusals and
commands (pure: formatting a real device needs root and a spare disk)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hss_pu.errors import DeviceFailure
from hss_pu.services import disk
from hss_pu.services.disk import (
    DiskService,
    FormatRefused,
    Mount,
    empty_dir,
    format_mount,
    format_refusal,
    mkfs_command,
    mount_at,
    mount_command,
    mount_holding,
    parse_mountinfo,
    privilege_problem,
)
from hss_pu.wire.vd import GetDiskInfoResp

from .support.rig import MakeRig, until

PI = """\
21 1 179:2 / / rw,noatime - ext4 /dev/mmcblk0p2 rw
22 21 179:1 / /boot/firmware rw,relatime - vfat /dev/mmcblk0p1 rw,fmask=0022
30 21 8:1 / /mnt/hss-pu-store rw,nosuid,nodev,relatime - vfat /dev/sda1 rw,fmask=0022,dmask=0022
31 21 0:40 / /mnt/tmp\\040store rw - tmpfs tmpfs rw,size=1024k
32 21 8:17 / /mnt/usb rw - ext4 /dev/sdb1 rw
33 21 8:17 / /srv/again rw - ext4 /dev/sdb1 rw
34 21 179:3 / /var/lib/hss-pu rw - ext4 /dev/mmcblk0p3 rw
35 21 179:0 / /mnt/whole rw - ext4 /dev/mmcblk0 rw
malformed line
"""
PROTECTED = ("/", "/boot", "/boot/firmware", "/var/lib/hss-pu")


def _at(point: str) -> Mount:
    m = mount_at(parse_mountinfo(PI), point)
    assert m is not None
    return m


def test_mountinfo_parsing_and_lookup() -> None:
    mounts = parse_mountinfo(PI)
    assert len(mounts) == 8
    store = _at("/mnt/hss-pu-store")
    assert (store.dev, store.fstype, store.source) == ("8:1", "vfat", "/dev/sda1")
    assert _at("/mnt/tmp store").fstype == "tmpfs"  # \040 is a space
    holder = mount_holding(mounts, "/var/lib/hss-pu/spool")
    assert holder is not None and holder.source == "/dev/mmcblk0p3"
    root = mount_holding(mounts, "/boot")
    assert root is not None and root.point == "/"  # /boot is a directory on /
    assert mount_at(mounts, "/mnt/none") is None


def test_format_refused_for_the_system_device_and_odd_stores() -> None:
    mounts = parse_mountinfo(PI)
    assert format_refusal(_at("/mnt/hss-pu-store"), mounts, PROTECTED) is None
    assert "runs from" in (format_refusal(_at("/"), mounts, PROTECTED) or "")
    assert "runs from" in (format_refusal(_at("/boot/firmware"), mounts, PROTECTED) or "")
    # storage.dir's device holds the daemon's state.
    assert "runs from" in (format_refusal(_at("/var/lib/hss-pu"), mounts, PROTECTED) or "")
    # The whole disk the system's partitions are on.
    assert "runs from" in (format_refusal(_at("/mnt/whole"), mounts, PROTECTED) or "")
    assert "not a block device" in (format_refusal(_at("/mnt/tmp store"), mounts, PROTECTED) or "")
    assert "also mounted at /srv/again" in (
        format_refusal(_at("/mnt/usb"), mounts, PROTECTED) or ""
    )


def test_mkfs_and_mount_commands() -> None:
    assert mkfs_command("vfat", "/dev/sda1") == ["mkfs.vfat", "-n", "HSS-PU", "/dev/sda1"]
    assert mkfs_command("ext4", "/dev/sdb1") == [
        "mkfs.ext4",
        "-F",
        "-q",
        "-L",
        "HSS-PU",
        "/dev/sdb1",
    ]
    assert mkfs_command("exfat", "/dev/sdc1")[0] == "mkfs.exfat"
    with pytest.raises(FormatRefused, match="cannot format btrfs"):
        mkfs_command("btrfs", "/dev/sda1")
    with pytest.raises(FormatRefused, match="not a device node"):
        mkfs_command("ext4", "/tmp/../dev/sda1")
    assert mount_command(_at("/mnt/hss-pu-store")) == [
        "mount", "-t", "vfat", "-o", "rw,nosuid,nodev,relatime,fmask=0022,dmask=0022",
        "/dev/sda1", "/mnt/hss-pu-store",
    ]  # fmt: skip


def test_format_mount_runs_umount_mkfs_mount_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk, "read_mounts", lambda: parse_mountinfo(PI))
    ran: list[list[str]] = []
    format_mount("/mnt/hss-pu-store", PROTECTED, ran.append)
    assert [c[0] for c in ran] == ["umount", "mkfs.vfat", "mount"]
    assert ran[1][-1] == "/dev/sda1"
    ran.clear()
    with pytest.raises(FormatRefused, match="runs from"):
        format_mount("/var/lib/hss-pu", PROTECTED, ran.append)
    with pytest.raises(FormatRefused, match="nothing is mounted"):
        format_mount("/mnt/none", PROTECTED, ran.append)
    assert ran == []  # refused before anything ran

    def failing(cmd: list[str]) -> None:
        ran.append(cmd)
        if cmd[0].startswith("mkfs"):
            raise FormatRefused("mkfs.vfat failed (1)")

    with pytest.raises(FormatRefused, match=r"mkfs\.vfat failed"):
        format_mount("/mnt/hss-pu-store", PROTECTED, failing)
    assert [c[0] for c in ran] == ["umount", "mkfs.vfat", "mount"]  # mounted back


def test_a_device_busy_right_after_umount_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """mkfs refuses a device the kernel or udev still holds a moment after the umount."""
    monkeypatch.setattr(disk, "read_mounts", lambda: parse_mountinfo(PI))
    ran: list[str] = []
    waits: list[float] = []
    busy = "mkfs.vfat failed (1): /dev/sda1 is apparently in use by the system"

    def busy_twice(cmd: list[str]) -> None:
        ran.append(cmd[0])
        if cmd[0].startswith("mkfs") and ran.count(cmd[0]) <= 2:
            raise FormatRefused(busy)

    format_mount("/mnt/hss-pu-store", PROTECTED, busy_twice, waits.append)
    assert ran == ["umount", "mkfs.vfat", "mkfs.vfat", "mkfs.vfat", "mount"]
    assert waits == [disk.MKFS_RETRY] * 2

    ran.clear()

    def always_busy(cmd: list[str]) -> None:
        ran.append(cmd[0])
        if cmd[0].startswith("mkfs"):
            raise FormatRefused(busy)

    with pytest.raises(FormatRefused, match="in use"):
        format_mount("/mnt/hss-pu-store", PROTECTED, always_busy, waits.append)
    assert ran.count("mkfs.vfat") == disk.MKFS_ATTEMPTS and ran[-1] == "mount"


def test_formatting_a_mount_needs_cap_sys_admin_and_the_device() -> None:
    root = "Name:\tx\nCapEff:\t000001ffffffffff\n"
    unprivileged = "Name:\tx\nCapEff:\t0000000000000000\n"
    time_only = "CapEff:\t0000000002000000\n"  # CAP_SYS_TIME (25) alone
    assert privilege_problem(root, "/dev/sda1", True) is None
    assert "CAP_SYS_ADMIN" in (privilege_problem(unprivileged, "/dev/sda1", True) or "")
    assert "CAP_SYS_ADMIN" in (privilege_problem(time_only, "/dev/sda1", True) or "")
    assert "/dev/sda1" in (privilege_problem(root, "/dev/sda1", False) or "")


async def test_no_store_is_state_0_and_cannot_be_formatted(tmp_path: Path) -> None:
    svc = DiskService("none", tmp_path, spool=None, uploader=None, protected=())
    assert await svc.info() == GetDiskInfoResp(state=0, total=0, free=0)
    with pytest.raises(DeviceFailure, match="no recording store"):
        await svc.format()


def test_empty_dir_never_follows_symlinks(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (store / "a.ts").write_bytes(b"x")
    (store / "sub" / "b.ts").write_bytes(b"y")
    (store / "link").symlink_to(outside)
    (store / "sub" / "link2").symlink_to(outside / "precious")
    assert empty_dir(store) == 3
    assert list(store.iterdir()) == []
    assert (outside / "precious").read_text() == "keep"
    swapped = tmp_path / "swapped"
    swapped.symlink_to(outside)  # a symlink in the store's place is refused
    with pytest.raises(FormatRefused, match="not a directory"):
        empty_dir(swapped)
    assert (outside / "precious").exists()


@pytest.mark.slow
async def test_dir_store_info_format_stat_and_recording_goes_on(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig(spool_max_mb=64, fps=10)
    daemon, platform = rig.daemon, rig.platform
    info = (await rig.call("GetDiskInfo")).resp
    assert info["state"] == 1 and info["total"] == 64 and 0 < info["free"] <= 64, info
    assert daemon.record is not None
    up = daemon.record.uploader
    spool = up.spool
    assert spool is not None and spool.dir == rig.storage / "spool"

    # The platform goes away: segments pile up in the spool.
    platform.vr_down = True
    assert (await rig.start_record(seg_duration=1, seg_max_count=1)).err is None
    assert await until(lambda: len(spool) >= 3, 20), "nothing spooled"
    before = (await rig.call("GetDiskInfo")).resp
    assert before["free"] <= info["free"]
    # A link planted in the spool, and storage.dir's own state, must survive the format.
    outside = rig.storage.parent / "outside.txt"
    outside.write_text("keep")
    (spool.dir / "planted").symlink_to(outside)
    spooled = {p.name for p in spool.dir.iterdir() if p.suffix in (".ts", ".json")}
    state_files = sorted(p.name for p in rig.storage.iterdir() if p.name != "spool")
    assert "logs" in state_files

    real_wipe = daemon.disk._wipe if daemon.disk else None
    assert real_wipe is not None and daemon.disk is not None

    def slow_wipe() -> None:  # a real card takes a while: long enough to see state 3
        time.sleep(1.0)
        real_wipe()

    monkeypatch.setattr(daemon.disk, "_wipe", slow_wipe)
    t0 = time.monotonic()
    reply = await rig.call("FormatDisk")
    assert reply.err is None and reply.resp == {}
    assert time.monotonic() - t0 < 0.9  # answered at once
    during = (await rig.call("GetDiskInfo")).resp
    assert during["state"] == 3, during
    assert await until(lambda: not daemon.disk.formatting, 10)  # type: ignore[union-attr]
    formatted_at = daemon.clock.now()
    after = (await rig.call("GetDiskInfo")).resp
    assert after["state"] == 1, after
    lost = up.stats.segments_dropped
    assert lost >= 3
    left = {p.name for p in spool.dir.iterdir()}
    assert not left & spooled, "a spooled segment survived the format"
    assert "planted" not in left and outside.read_text() == "keep"
    assert sorted(p.name for p in rig.storage.iterdir() if p.name != "spool") == state_files

    # The platform is back: the lost segments are reported, recording went on.
    saved_before = len(platform.vr_segments[0])
    platform.vr_down = False
    assert await until(lambda: sum(s.dropped_nb for s in platform.vr_stats) >= lost, 15)
    assert sum(s.dropped_nb for s in platform.vr_stats) == lost
    assert await until(
        lambda: any(s.start >= formatted_at for s in platform.vr_segments[0][saved_before:]), 15
    ), "no segment recorded after the format arrived"
    status = await rig.status()
    assert status["disk"]["state"] == 1 and status["disk"]["formats"] == 1
    assert (await rig.stop_record()).err is None


# --- a real filesystem of its own: needs root (mount, losetup) ---------------------------


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def loop_mount(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 16 MiB ext4 on a loop device mounted at tmp_path/card: an SD card for FormatDisk.
    Skipped where this process may not set up loop devices and mount (not root)."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup to make a loop-mounted filesystem")
    img, point = tmp_path / "card.img", tmp_path / "card"
    point.mkdir()
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    try:
        _sh("mkfs.ext4", "-q", "-F", "-L", "OLD", str(img))
        dev = _sh("losetup", "--find", "--show", str(img))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no loop device here: {exc}")
    try:
        try:
            _sh("mount", dev, str(point))
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot mount here: {exc.stderr}")
        yield dev, point
    finally:  # the daemon is gone by now (this fixture is set up before the rig)
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


@pytest.mark.slow
async def test_mount_store_formatted_with_mkfs_and_recording_goes_on(
    loop_mount: tuple[str, Path], make_rig: MakeRig, tmp_path: Path
) -> None:
    dev, point = loop_mount
    text = (Path(__file__).parent.parent / "firmware_profiles" / "emulated.toml").read_text()
    profile = tmp_path / "card-camera.toml"
    profile.write_text(
        text.split("[recording]")[0]
        + f'[recording]\nstore = "mount"\npath = "{point}"\nmax_mb = 8\nmemory_queue_mb = 16\n'
    )
    rig = await make_rig(profile=str(profile), fps=10)
    platform, daemon = rig.platform, rig.daemon
    info = (await rig.call("GetDiskInfo")).resp
    assert info["state"] == 1 and 8 <= info["total"] <= 16 and 0 < info["free"] <= 16, info
    assert daemon.record is not None and daemon.record.uploader.spool is not None
    spool = daemon.record.uploader.spool
    assert spool.dir == point / "spool"
    (point / "left-by-someone").write_text("x")
    platform.vr_down = True
    assert (await rig.start_record(seg_duration=1, seg_max_count=1)).err is None
    assert await until(lambda: len(spool) >= 2, 20), "nothing spooled on the card"
    reply = await rig.call("FormatDisk")
    assert reply.err is None and reply.resp == {}
    assert daemon.disk is not None
    assert await until(lambda: not daemon.disk.formatting, 60)  # type: ignore[union-attr]
    formatted_at = daemon.clock.now()
    assert daemon.disk.last_error is None
    assert _sh("blkid", "-o", "value", "-s", "LABEL", dev) == "HSS-PU"  # a new filesystem
    m = mount_at(disk.read_mounts(), str(point))
    assert m is not None and m.fstype == "ext4"  # mounted back, same type
    assert not (point / "left-by-someone").exists()
    assert (await rig.call("GetDiskInfo")).resp["state"] == 1
    lost = daemon.record.uploader.stats.segments_dropped
    assert lost >= 2
    saved_before = len(platform.vr_segments[0])
    platform.vr_down = False
    assert await until(lambda: sum(s.dropped_nb for s in platform.vr_stats) == lost, 15)
    assert await until(
        lambda: any(s.start >= formatted_at for s in platform.vr_segments[0][saved_before:]), 15
    ), "no segment recorded after the format arrived"
    assert (await rig.stop_record()).err is None


async def test_mount_store_refused_when_it_holds_storage_dir(
    loop_mount: tuple[str, Path], make_rig: MakeRig, tmp_path: Path
) -> None:
    """The card also holds the daemon's state: formatting it would wipe the daemon."""
    _dev, point = loop_mount
    text = (Path(__file__).parent.parent / "firmware_profiles" / "emulated.toml").read_text()
    profile = tmp_path / "card-camera.toml"
    profile.write_text(
        text.split("[recording]")[0] + f'[recording]\nstore = "mount"\npath = "{point}"\n'
    )
    rig = await make_rig(profile=str(profile), storage=point / "state", spool_max_mb=8)
    reply = await rig.call("FormatDisk")
    assert reply.err is not None and reply.err.code == 13, reply
    assert "runs from" in reply.err.msg
    assert (point / "state" / "firmware.json").exists()  # nothing ran
