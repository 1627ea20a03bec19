"""GetDiskInfo and FormatDisk, on the recording store only (wire-notes).

The recording store is where the spool keeps segments that wait for the platform: a
directory on the data filesystem (profile ``[recording] store = "dir"``: the spool under
``storage.dir``), or a filesystem of its own mounted at ``path`` (``"mount"``: an SD card
or USB disk, the spool on it); ``"none"`` has no store (state 0, "no card").

Formatting a directory store empties that directory and nothing else: the spool's own
files, removed through a descriptor of the directory opened without following symlinks,
so a link planted in it cannot take the deletion elsewhere, and ``storage.dir``'s other
state (configuration, presets, log files) is never in reach. Formatting a mount store
runs ``mkfs`` of the device mounted there (found in /proc/self/mountinfo), between an
unmount and a mount with the same options, and is refused for the device the system runs
from (the one holding ``/``, ``/boot``, ``/boot/firmware`` or ``storage.dir``, or a
partition of the same disk), for anything that is not a block device, and for a device
mounted elsewhere too. The blocking work runs on the uploader's disk thread, after the
spool writes already under way; what it destroys is reported through ``op=stat``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hss_pu.errors import DeviceFailure, HssError, UnsupportedConfig
from hss_pu.services.spool import Spool
from hss_pu.services.uploader import Uploader
from hss_pu.tasks import TaskSet
from hss_pu.wire.vd import GetDiskInfoResp

__all__ = [
    "PROTECTED_PATHS",
    "DiskService",
    "FormatRefused",
    "Mount",
    "empty_dir",
    "format_mount",
    "format_refusal",
    "mkfs_command",
    "mount_at",
    "mount_command",
    "mount_holding",
    "parse_mountinfo",
    "privilege_problem",
]

log = logging.getLogger("hss_pu.disk")

MiB = 1024 * 1024
PROTECTED_PATHS = ("/", "/boot", "/boot/firmware")  # plus storage.dir
PROBE_TIMEOUT = 2.0  # s: a store that does not answer statvfs in this is state 2
COMMAND_TIMEOUT = 600.0  # s for umount, mkfs or mount
LABEL = "HSS-PU"

StoreKind = Literal["none", "dir", "mount"]


class FormatRefused(HssError):
    """The store cannot or must not be formatted; ``str()`` says why."""


# --- /proc/self/mountinfo (pure) -------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo (proc(5))."""

    dev: str  # major:minor
    point: str
    options: str  # per-mount options
    fstype: str
    source: str
    super_options: str


_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every well-formed line, in order (a later mount on the same point hides earlier
    ones); malformed lines are skipped."""
    out: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        a, b = left.split(), right.split()
        if not sep or len(a) < 6 or len(b) < 2:
            continue
        out.append(
            Mount(
                dev=a[2],
                point=_unescape(a[4]),
                options=a[5],
                fstype=b[0],
                source=_unescape(b[1]),
                super_options=b[2] if len(b) > 2 else "",
            )
        )
    return out


def mount_at(mounts: Sequence[Mount], path: str) -> Mount | None:
    """The mount whose mount point is exactly ``path`` (the topmost one)."""
    found = [m for m in mounts if m.point == path]
    return found[-1] if found else None


def mount_holding(mounts: Sequence[Mount], path: str) -> Mount | None:
    """The mount that holds ``path``: the longest mount point above it (the topmost)."""
    best: Mount | None = None
    for m in mounts:
        p = m.point.rstrip("/") or "/"
        if (p == "/" or path == p or path.startswith(p + "/")) and (
            best is None or len(p) >= len(best.point.rstrip("/") or "/")
        ):
            best = m
    return best


_PARTITION = re.compile(r"^p?\d+$")


def _same_disk(a: str, b: str) -> bool:
    """``a`` and ``b`` are the same device node or one is a partition of the other
    (/dev/sda and /dev/sda1, /dev/mmcblk0 and /dev/mmcblk0p2)."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and bool(_PARTITION.match(long[len(short) :]))


def format_refusal(store: Mount, mounts: Sequence[Mount], protected: Iterable[str]) -> str | None:
    """Why the filesystem mounted as ``store`` must not be formatted (None: it may)."""
    if not store.source.startswith("/dev/"):
        return f"{store.point} is {store.fstype} from {store.source!r}, not a block device"
    for path in protected:
        holder = mount_holding(mounts, path)
        if holder is None:
            continue
        if holder.dev == store.dev or _same_disk(holder.source, store.source):
            return (
                f"{store.source} is the device the system runs from ({path} is on {holder.source})"
            )
    elsewhere = [m.point for m in mounts if m.dev == store.dev and m.point != store.point]
    if elsewhere:
        return f"{store.source} is also mounted at {', '.join(elsewhere)}"
    return None


_MKFS: dict[str, Callable[[str, str], list[str]]] = {
    "vfat": lambda dev, label: ["mkfs.vfat", "-n", label[:11], dev],
    "exfat": lambda dev, label: ["mkfs.exfat", "-n", label[:15], dev],
    "ext4": lambda dev, label: ["mkfs.ext4", "-F", "-q", "-L", label[:16], dev],
    "ext3": lambda dev, label: ["mkfs.ext3", "-F", "-q", "-L", label[:16], dev],
    "ext2": lambda dev, label: ["mkfs.ext2", "-F", "-q", "-L", label[:16], dev],
    "f2fs": lambda dev, label: ["mkfs.f2fs", "-f", "-l", label[:16], dev],
}


def mkfs_command(fstype: str, device: str, label: str = LABEL) -> list[str]:
    """The command that makes a new, empty ``fstype`` on ``device`` (the same type it
    had); FormatRefused for a type we do not know how to make."""
    make = _MKFS.get(fstype)
    if make is None:
        known = ", ".join(sorted(_MKFS))
        raise FormatRefused(f"cannot format {fstype} (known: {known})")
    if not device.startswith("/dev/") or ".." in device:
        raise FormatRefused(f"{device!r} is not a device node")
    return make(device, label)


CAP_SYS_ADMIN = 21  # capabilities(7)


def privilege_problem(proc_status: str, device: str, device_writable: bool) -> str | None:
    """What this process lacks to format a mount (None: nothing): CAP_SYS_ADMIN for
    umount and mount (from /proc/self/status ``CapEff``), write access to the device
    node for mkfs."""
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)\s*$", proc_status, re.MULTILINE)
    if m is None or not int(m.group(1), 16) & (1 << CAP_SYS_ADMIN):
        return "the daemon lacks CAP_SYS_ADMIN to unmount and mount the card (docs/systemd.md)"
    if not device_writable:
        return f"the daemon may not write to {device} (mkfs needs it; docs/systemd.md)"
    return None


def mount_command(m: Mount) -> list[str]:
    """Mount ``m``'s device again where it was, with the options it had."""
    seen: list[str] = []
    for opt in (*m.options.split(","), *m.super_options.split(",")):
        if opt and opt not in seen:
            seen.append(opt)
    return ["mount", "-t", m.fstype, "-o", ",".join(seen), m.source, m.point]


# --- the blocking work (the uploader's disk thread) ---------------------------------------


def empty_dir(path: Path) -> int:
    """Remove everything in ``path`` (not ``path`` itself), never following a symlink:
    a link in it is removed, not what it names. Returns how many entries went.
    OSError when ``path`` is not a real directory (a symlink in its place is refused)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise FormatRefused(f"{path} is not a directory (a symlink in its place?)")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    n = 0
    try:
        with os.scandir(fd) as it:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in names:
            if is_dir:
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
            n += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return n


Runner = Callable[[list[str]], None]


def run_command(cmd: list[str]) -> None:
    """Run a system command; FormatRefused with its stderr when it fails."""
    try:
        proc = subprocess.run(  # a fixed argv, no shell
            cmd, capture_output=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FormatRefused(f"{cmd[0]}: {exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise FormatRefused(f"{cmd[0]} failed ({proc.returncode}): {err[-1] if err else ''}")


def read_mounts() -> list[Mount]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def check_mount(point: str, protected: Iterable[str]) -> Mount:
    """The store's mount, or FormatRefused saying why it may not be formatted."""
    mounts = read_mounts()
    store = mount_at(mounts, point)
    if store is None:
        raise FormatRefused(f"nothing is mounted at {point} (no card?)")
    why = format_refusal(store, mounts, protected)
    if why is not None:
        raise FormatRefused(why)
    mkfs_command(store.fstype, store.source)  # a type we can make, before anything else
    return store


# Right after umount the kernel or udev (blkid probing the "remove" event) may still hold
# the device a moment, and mkfs opens it exclusively: "apparently in use by the system".
BUSY = re.compile(r"in use|busy", re.IGNORECASE)
MKFS_ATTEMPTS = 10
MKFS_RETRY = 0.5  # s between attempts


def format_mount(
    point: str,
    protected: Iterable[str],
    run: Runner = run_command,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """umount, mkfs, mount again; checked again right before (the mounts may have
    changed since the RPC). A device still busy after the umount is tried again for a
    few seconds; a failed mkfs still mounts the old filesystem back."""
    store = check_mount(point, protected)
    mkfs = mkfs_command(store.fstype, store.source)
    run(["umount", store.point])
    try:
        for attempt in range(1, MKFS_ATTEMPTS + 1):
            try:
                run(mkfs)
                break
            except FormatRefused as exc:
                if attempt == MKFS_ATTEMPTS or not BUSY.search(str(exc)):
                    raise
                log.info("disk: %s busy after umount (%s); trying again", store.source, exc)
                sleep(MKFS_RETRY)
    finally:
        run(mount_command(store))


# --- the service ---------------------------------------------------------------------------


class DiskService:
    """``store``/``point``: the profile's recording store (``point``: the store directory
    for "dir", the mount point for "mount"); ``spool``: the spool on it (its size and
    bound), ``uploader``: what reports the segments a format destroys."""

    def __init__(
        self,
        store: StoreKind,
        point: Path,
        *,
        spool: Spool | None,
        uploader: Uploader | None,
        protected: Sequence[str],
        run: Runner = run_command,
    ) -> None:
        self.store = store
        self.point = point
        self.spool = spool
        self.uploader = uploader
        self.protected = tuple(protected)
        self._run = run
        self.formatting = False
        self.formats = 0
        self.last_error: str | None = None  # the last format's failure, until one succeeds
        self._last = GetDiskInfoResp(state=0, total=0, free=0)
        self._probe: asyncio.Future[tuple[int, int]] | None = None
        self._tasks = TaskSet(log)

    # -- GetDiskInfo -----------------------------------------------------------------------

    def _space(self) -> tuple[int, int]:
        """(total, free) bytes of the store; blocks (statvfs, mountinfo)."""
        if self.store == "mount" and mount_at(read_mounts(), str(self.point)) is None:
            raise FileNotFoundError(f"nothing is mounted at {self.point}")
        # A directory store not made yet (the spool opens once the daemon runs) is
        # measured on the filesystem it will be on.
        exists = self.store == "mount" or self.point.exists()
        st = os.statvfs(self.point if exists else self.point.parent)
        fs_total, fs_free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        if self.store == "mount" or self.spool is None:
            return fs_total, fs_free
        # A directory shares its filesystem: the store is the spool's bound (or the
        # filesystem, if smaller), and what is free of it.
        total = min(self.spool.max_bytes, fs_total)
        free = min(total - self.spool.used, fs_free - (self.spool.reserve_bytes or 0))
        return total, max(0, free)

    async def info(self) -> GetDiskInfoResp:
        if self.store == "none":
            return GetDiskInfoResp(state=0, total=0, free=0)
        if self.formatting:
            return GetDiskInfoResp(state=3, total=self._last.total, free=self._last.free)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(self._space))
        try:
            total, free = await asyncio.wait_for(asyncio.shield(self._probe), PROBE_TIMEOUT)
        except FileNotFoundError:
            return GetDiskInfoResp(state=0, total=0, free=0)
        except (OSError, TimeoutError) as exc:
            log.warning("disk: the store at %s does not answer (%s)", self.point, exc)
            return GetDiskInfoResp(state=2, total=self._last.total, free=self._last.free)
        broken = self.last_error or (self.spool is not None and self.spool.last_error)
        unusable = self.uploader is not None and self.uploader.spool is None
        state: Literal[1, 2] = 2 if broken or unusable else 1
        self._last = GetDiskInfoResp(state=state, total=total // MiB, free=free // MiB)
        return self._last

    # -- FormatDisk ------------------------------------------------------------------------

    async def format(self) -> None:
        """Checks now (a refusal is the RPC's error), formats in the background."""
        if self.store == "none":
            raise DeviceFailure("no recording store to format (GetDiskInfo state 0)")
        if self.formatting:
            return  # one format at a time; this one is what was asked
        try:
            await asyncio.to_thread(self._check)
        except FormatRefused as exc:
            raise UnsupportedConfig(f"FormatDisk refused: {exc}") from None
        except OSError as exc:
            raise DeviceFailure(f"FormatDisk: {exc.strerror or exc}") from None
        await self.info()  # total/free to report while formatting
        self.formatting = True
        self._tasks.spawn(self._format(), "format-disk")

    def _check(self) -> None:
        """What makes a format impossible, before it is answered: FormatRefused."""
        if self.store == "mount":
            store = check_mount(str(self.point), self.protected)
            why = privilege_problem(
                Path("/proc/self/status").read_text(), store.source,
                os.access(store.source, os.W_OK),
            )  # fmt: skip
            if why is not None:
                raise FormatRefused(why)
        elif self.point.is_symlink() or (self.point.exists() and not self.point.is_dir()):
            raise FormatRefused(f"{self.point} is not a directory (a symlink in its place?)")

    def _wipe(self) -> None:
        if self.store == "mount":
            format_mount(str(self.point), self.protected, self._run)
        elif self.point.exists() or self.point.is_symlink():
            empty_dir(self.point)

    async def _format(self) -> None:
        log.warning("disk: formatting the recording store at %s", self.point)
        try:
            if self.uploader is not None:
                lost = await self.uploader.format_spool(self._wipe)
            else:
                await asyncio.to_thread(self._wipe)
                lost = 0
        except (HssError, OSError) as exc:  # FormatRefused, SpoolError, what mkfs said
            self.last_error = str(exc)
            log.error("disk: format of %s failed: %s", self.point, exc)
        else:
            self.last_error = None
            self.formats += 1
            log.warning("disk: %s formatted (%d spooled segment(s) lost)", self.point, lost)
        finally:
            self.formatting = False

    def status(self) -> dict[str, object]:
        return {
            "store": self.store,
            "path": str(self.point),
            "state": 3 if self.formatting else self._last.state,
            "total_mb": self._last.total,
            "free_mb": self._last.free,
            "formats": self.formats,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        await self._tasks.cancel_all(2.0)
