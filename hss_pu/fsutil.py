"""Crash-safe file writes: a camera loses power at any moment, state must survive it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "ensure_private_dir"]


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
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def ensure_private_dir(path: Path | str) -> Path:
    """Create ``path`` (0700) if needed and prove it is writable."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    probe = p / ".write-probe"
    atomic_write(probe, b"ok\n")
    probe.unlink()
    return p
