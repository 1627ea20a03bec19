"""The on-disk recording spool: closed segments that wait for the platform.

Each segment is two files under the spool directory, both written atomically (temp file,
fsync, rename, fsync of the directory): ``<seq>.ts`` first, then ``<seq>.json`` (its
metadata). A ``.json`` names a complete segment; a ``.ts`` without one is a write that a
power cut interrupted and is removed at start-up, as is any stray temp file. Sequence
numbers order segments across channels and restarts. The spool is bounded in bytes:
making room evicts the oldest segments, and the caller accounts for them (``op=stat``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from hss_pu.errors import HssError
from hss_pu.fsutil import atomic_write

__all__ = ["SegmentMeta", "Spool", "SpoolEntry", "SpoolError"]

log = logging.getLogger("hss_pu.record.spool")


class SegmentMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What an upload needs besides the bytes; survives restarts with them."""

    seq: int
    channel: int
    session_id: str
    cbk_url: str
    https: bool
    start: float
    duration: float
    size: int
    discontinue: bool


class SpoolError(HssError):
    """The spool cannot take a segment (disk full, read-only filesystem, I/O error)."""


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


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.used = 0
        self._entries: dict[int, SpoolEntry] = {}
        self.errors = 0
        self.last_error: str | None = None

    def load(self) -> list[SpoolEntry]:
        """Open the spool (creating it); returns what a previous run left, oldest first."""
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
        return self.entries()

    def entries(self) -> list[SpoolEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    @property
    def next_seq(self) -> int:
        return max(self._entries, default=0) + 1

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, meta: SegmentMeta, data: bytes) -> tuple[SpoolEntry, list[SpoolEntry]]:
        """Store a segment; returns it and the entries evicted to make room (oldest first).
        Raises SpoolError when it cannot be stored (then nothing was evicted for it in
        vain: eviction happens only when the segment fits the bound at all)."""
        if len(data) > self.max_bytes:
            raise SpoolError(f"a {len(data)}-byte segment is larger than the whole spool")
        evicted: list[SpoolEntry] = []
        while self.used + len(data) > self.max_bytes and self._entries:
            oldest = self._entries[min(self._entries)]
            self.remove(oldest)
            evicted.append(oldest)
        path = self.dir / f"{meta.seq:016d}.ts"
        try:
            atomic_write(path, data)
            atomic_write(path.with_suffix(".json"), msgspec.json.encode(meta))
        except OSError as exc:
            self._unlink(path)
            raise self._error("cannot spool a segment", exc) from None
        entry = SpoolEntry(meta, path)
        self._entries[meta.seq] = entry
        self.used += len(data)
        return entry, evicted

    def remove(self, entry: SpoolEntry) -> None:
        if self._entries.pop(entry.meta.seq, None) is not None:
            self.used -= entry.meta.size
        self._unlink(entry.path)

    def __contains__(self, entry: SpoolEntry) -> bool:
        return self._entries.get(entry.meta.seq) is entry

    def _unlink(self, path: Path) -> None:
        # Metadata first: a .ts without .json is cleaned up at start, never re-sent.
        for p in (path.with_suffix(".json"), path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._error(f"cannot remove {p.name}", exc)

    def _error(self, what: str, exc: OSError) -> SpoolError:
        self.errors += 1
        self.last_error = f"{what} in {self.dir}: {_why(exc)}"
        log.error("spool: %s", self.last_error)
        return SpoolError(self.last_error)
