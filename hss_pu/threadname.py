"""Native names for our threads, so ``top -H``, ``ps -L`` and per-thread CPU figures show
``media-ch0`` rather than ``python`` (Python before 3.14 does not set them)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["set_native_name"]

_PR_SET_NAME = 15
_libc: ctypes.CDLL | None = None
if sys.platform == "linux":
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        _libc = None


def set_native_name(name: str) -> None:
    """Name the calling thread (Linux truncates to 15 bytes); a no-op elsewhere."""
    if _libc is None:
        return
    _libc.prctl(_PR_SET_NAME, name.encode("ascii", "replace")[:15], 0, 0, 0)
