"""Crash-safe file writes (a camera loses power at any moment, state must survive it), and
bounded reads of files a person or a past run left (they may be anything)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["FileRefused", "atomic_write", "ensure_private_dir", "fsync_dir", "read_bounded"]


def atomic_write(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never a mix.

    temp file in the same directory, fsync, rename, fsync the directory (so the rename
    itself survives a power cut).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path | str) -> None:
    """Make a rename or a new file in ``path`` durable (the directory's own entry list)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_private_dir(path: Path | str) -> Path:
    """Create ``path`` (0700) if needed and prove it is writable."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    probe = p / ".write-probe"
    atomic_write(probe, b"ok\n")
    probe.unlink()
    return p


class FileRefused(OSError):
    """A file that is not a regular file, or is larger than the reader allows."""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_bounded(path: Path | str, limit: int) -> tuple[bytes, os.stat_result]:
    """The whole content of a regular file of at most ``limit`` bytes, and its fstat.

    Opened non-blocking so a FIFO cannot hang us; checked with fstat on the open
    descriptor so the check and the read see the same file; never more than ``limit``+1
    bytes read, so /dev/zero or a file still growing cannot exhaust memory. Raises
    FileRefused (an OSError) for anything else.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
            raise FileRefused(f"not a regular file ({kind})")
        if st.st_size > limit:
            raise FileRefused(f"larger than {limit} bytes ({st.st_size} bytes)")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(f"larger than {limit} bytes (still growing)")
        return b"".join(chunks), st
    finally:
        os.close(fd)
