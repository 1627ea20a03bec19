"""The on-disk recording spool: closed segments that wait for the platform.

Each segment is two files under the spool directory, both written atomically (temp file,
fsync, rename, fsync of the directory): ``<seq>.ts`` first, then ``<seq>.json`` (its
metadata, with the name the platform gave it once ``create`` answered). A ``.json`` names
a complete segment; a ``.ts`` without one is a write that a power cut interrupted and is
removed at start-up, as is any stray temp file. Sequence numbers order segments across
channels and restarts.

The spool is bounded twice: by its configured size, and by the space the filesystem
really has left (``statvfs``), keeping a reserve for the rest of the device. Making room
evicts the oldest segments that are not pinned (a segment being uploaded is pinned: it may
be saved yet); the caller accounts for every segment evicted, and only for those whose
metadata was really removed.

Every method blocks on disk I/O and must run on one worker thread (the uploader's), except
:meth:`pin` / :meth:`unpin`, which the event loop calls: they only take a lock that is never
held across I/O.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from hss_pu.errors import HssError
from hss_pu.fsutil import atomic_write

__all__ = ["SegmentMeta", "Spool", "SpoolEntry", "SpoolError", "default_reserve"]

log = logging.getLogger("hss_pu.record.spool")

MiB = 1024 * 1024
# Beyond the segment's bytes a write needs its metadata file and rounding to blocks.
WRITE_SLACK = 64 * 1024


class SegmentMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What an upload needs besides the bytes; survives restarts with them.

    ``name`` / ``url``: what ``op=create`` gave, once it did, so that an upload cut short
    (kill -9 during the save reply) resumes with the same name instead of creating the
    segment a second time.
    """

    seq: int
    channel: int
    session_id: str
    cbk_url: str
    https: bool
    start: float
    duration: float
    size: int
    discontinue: bool
    name: str = ""
    url: str = ""


class SpoolError(HssError):
    """The spool cannot take a segment (disk full, read-only filesystem, I/O error).

    ``evicted``: what was evicted before the write failed (really removed; account for it).
    """

    def __init__(self, message: str, evicted: list[SpoolEntry] | None = None) -> None:
        super().__init__(message)
        self.evicted: list[SpoolEntry] = evicted if evicted is not None else []


@dataclass(frozen=True)
class SpoolEntry:
    meta: SegmentMeta
    path: Path  # the .ts file

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "the filesystem is read-only"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)


def statvfs_space(path: Path) -> tuple[int, int]:
    """(bytes free for us, filesystem size) of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def default_reserve(total: int) -> int:
    """Space the spool leaves to the rest of the device: 2 % of it, 1 to 64 MiB."""
    return min(64 * MiB, max(1 * MiB, total // 50))


@dataclass
class _Pins:
    lock: threading.Lock = field(default_factory=threading.Lock)
    pinned: set[int] = field(default_factory=set)
    evicting: set[int] = field(default_factory=set)


class Spool:
    """``free_space(dir) -> (free, total)`` is the space probe (statvfs; injectable for
    tests); ``reserve_bytes``: what to leave free (None: :func:`default_reserve`).
    ``mount``: the card the spool lives on; while nothing is mounted there, nothing is
    written (the empty mount point is on the system's own disk, which recordings must
    not fill)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        reserve_bytes: int | None = None,
        free_space: Callable[[Path], tuple[int, int]] = statvfs_space,
        mount: Path | None = None,
    ) -> None:
        self.dir = directory
        self.mount = mount
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self._free_space = free_space
        self.used = 0
        self._entries: dict[int, SpoolEntry] = {}
        self._pins = _Pins()
        self.errors = 0
        self.last_error: str | None = None
        self._failing = False  # in a failure episode: logged once, until a write succeeds

    def load(self) -> list[SpoolEntry]:
        """Open the spool (creating it); returns what a previous run left, oldest first."""
        self._check_mounted()
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            names = os.listdir(self.dir)
        except OSError as exc:
            raise self._error("cannot open the spool", exc) from None
        metas = {n[:-5] for n in names if n.endswith(".json")}
        tss = {n[:-3] for n in names if n.endswith(".ts")}
        for n in names:
            stem = n.rsplit(".", 1)[0]
            partial = n.startswith(".") or (n.endswith(".ts") and stem not in metas)
            orphan = n.endswith(".json") and stem not in tss
            if partial or orphan:
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / n)
                log.warning("spool: removed an incomplete file %s", n)
        for stem in sorted(metas & tss):
            path = self.dir / f"{stem}.ts"
            try:
                meta = msgspec.json.decode(path.with_suffix(".json").read_bytes(), type=SegmentMeta)
                size = path.stat().st_size
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("spool: dropping unreadable segment %s (%s)", stem, exc)
                self._unlink(path)
                continue
            if size != meta.size:
                log.warning("spool: dropping %s: %d bytes, metadata says %d", stem, size, meta.size)
                self._unlink(path)
                continue
            self._entries[meta.seq] = SpoolEntry(meta, path)
            self.used += size
        if self.reserve_bytes is None:
            try:
                self.reserve_bytes = default_reserve(self._free_space(self.dir)[1])
            except OSError:
                self.reserve_bytes = default_reserve(0)
        return self.entries()

    def entries(self) -> list[SpoolEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    @property
    def next_seq(self) -> int:
        return max(self._entries, default=0) + 1

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: SpoolEntry) -> bool:
        return self._entries.get(entry.meta.seq) is entry

    # -- pins (event loop) ---------------------------------------------------------------

    def pin(self, seq: int, *, on_disk: bool) -> bool:
        """Keep segment ``seq`` from eviction (it is being uploaded). False when it is being
        evicted, or (``on_disk``) already gone: the caller's eviction report follows."""
        with self._pins.lock:
            if seq in self._pins.evicting or (on_disk and seq not in self._entries):
                return False
            self._pins.pinned.add(seq)
            return True

    def unpin(self, seq: int) -> None:
        with self._pins.lock:
            self._pins.pinned.discard(seq)

    # -- writes (worker thread) ----------------------------------------------------------

    def put(self, meta: SegmentMeta, data: bytes) -> tuple[SpoolEntry, list[SpoolEntry]]:
        """Store a segment; returns it and the entries evicted to make room (oldest first).
        Raises SpoolError when it cannot be stored; its ``evicted`` lists what was evicted
        on the way (removed for good: the caller must account for them)."""
        evicted: list[SpoolEntry] = []
        try:
            if len(data) > self.max_bytes:
                raise SpoolError(f"a {len(data)}-byte segment is larger than the whole spool")
            self._check_mounted()
            self._make_room(len(data), evicted)
            path = self.dir / f"{meta.seq:016d}.ts"
            try:
                atomic_write(path, data)
                atomic_write(path.with_suffix(".json"), msgspec.json.encode(meta))
            except OSError as exc:
                self._unlink(path)
                raise self._error("cannot spool a segment", exc) from None
        except SpoolError as exc:
            exc.evicted = evicted
            raise
        entry = SpoolEntry(meta, path)
        self._entries[meta.seq] = entry
        self.used += len(data)
        self._recovered()
        return entry, evicted

    def update_meta(self, meta: SegmentMeta) -> bool:
        """Rewrite a stored segment's metadata (atomically); False if it is not stored."""
        old = self._entries.get(meta.seq)
        if old is None:
            return False
        try:
            atomic_write(old.meta_path, msgspec.json.encode(meta))
        except OSError as exc:
            raise self._error("cannot update a segment's metadata", exc) from None
        self._entries[meta.seq] = SpoolEntry(meta, old.path)
        return True

    def remove(self, entry: SpoolEntry) -> bool:
        """Delete a segment (uploaded, or given up) and release its pin. True when its
        metadata is gone (the segment no longer exists for a restart)."""
        try:
            if entry.meta.seq not in self._entries:
                return True
            why = self._unlink(entry.path)
            if why is not None:
                self._fail(f"cannot remove {entry.path.stem} in {self.dir}: {why}")
                return False
            with self._pins.lock:
                if self._entries.pop(entry.meta.seq, None) is not None:
                    self.used -= entry.meta.size
            return True
        finally:
            self.unpin(entry.meta.seq)

    def wipe(self, destroy: Callable[[], None]) -> list[SpoolEntry]:
        """FormatDisk: ``destroy()`` the store (the spool's files with it), then open an
        empty spool on it. Returns every segment the spool held (all gone: the caller
        reports them). Raised by ``destroy`` (OSError, ...): the spool is read again,
        what survived stays."""
        try:
            destroy()
        except BaseException:
            self._reload()
            raise
        with self._pins.lock:
            gone = self.entries()
            self._entries.clear()
            self.used = 0
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error("cannot open the spool after the format", exc) from None
        self._recovered()
        return gone

    def _reload(self) -> None:
        """Forget entries whose files are gone (a format that failed half way)."""
        with self._pins.lock:
            for seq, e in list(self._entries.items()):
                if not e.meta_path.exists():
                    del self._entries[seq]
                    self.used -= e.meta.size

    def _make_room(self, size: int, evicted: list[SpoolEntry]) -> None:
        short = self._short_of_space(size)
        if short > 0 and short > self._evictable():
            # Something else filled the disk: evicting every recording we hold would
            # still not make room, so keep them (the new segment waits in memory).
            raise self._fail(
                f"no space left on the device for the spool in {self.dir} (keeping "
                f"{self.reserve_bytes or 0} bytes free; {short} bytes short, more than "
                "the spool could free)"
            )
        while True:
            over = self.used + size > self.max_bytes
            short = self._short_of_space(size)
            if not over and short <= 0:
                return
            victim = self._claim_oldest()
            if victim is None:
                if over:
                    raise self._fail(
                        f"spool full ({self.used} of {self.max_bytes} bytes; the rest is "
                        "being uploaded)"
                    )
                raise self._fail(
                    f"no space left on the device for the spool in {self.dir} (keeping "
                    f"{self.reserve_bytes or 0} bytes free)"
                )
            why = self._unlink(victim.path)
            with self._pins.lock:
                self._pins.evicting.discard(victim.meta.seq)
                if why is None:
                    del self._entries[victim.meta.seq]
                    self.used -= victim.meta.size
            if why is not None:
                raise self._fail(
                    f"cannot evict {victim.path.stem} in {self.dir} to make room: {why}"
                )
            evicted.append(victim)

    def _short_of_space(self, size: int) -> int:
        """Bytes missing on the filesystem for ``size`` more, keeping the reserve."""
        try:
            free, _total = self._free_space(self.dir)
        except OSError:
            return 0  # no probe: the configured bound alone
        return size + WRITE_SLACK + (self.reserve_bytes or 0) - free

    def _evictable(self) -> int:
        with self._pins.lock:
            return sum(
                e.meta.size for seq, e in self._entries.items() if seq not in self._pins.pinned
            )

    def _claim_oldest(self) -> SpoolEntry | None:
        with self._pins.lock:
            for seq in sorted(self._entries):
                if seq not in self._pins.pinned:
                    self._pins.evicting.add(seq)
                    return self._entries[seq]
        return None

    def _unlink(self, path: Path) -> str | None:
        """Metadata first: a .ts without .json is cleaned up at start, never re-sent.
        None when the metadata is gone, else why it is not."""
        for p in (path.with_suffix(".json"), path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if p.suffix == ".json":
                    return _why(exc)
                # Harmless: without its metadata it is cleaned up at the next start.
                log.warning("spool: cannot remove %s (%s)", p.name, _why(exc))
        return None

    def _check_mounted(self) -> None:
        if self.mount is not None and not os.path.ismount(self.mount):
            raise self._fail(f"nothing is mounted at {self.mount} (the card is out)")

    def _fail(self, message: str) -> SpoolError:
        self.errors += 1
        self.last_error = message
        if not self._failing:
            self._failing = True
            log.error("spool: %s", message)
        return SpoolError(message)

    def _error(self, what: str, exc: OSError) -> SpoolError:
        return self._fail(f"{what} in {self.dir}: {_why(exc)}")

    def _recovered(self) -> None:
        self.last_error = None
        if self._failing:
            self._failing = False
            log.info("spool: writing again (%d failures before)", self.errors)
