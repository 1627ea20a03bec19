"""The device configuration document, persisted atomically under storage.dir.

What is read back from disk is bounded (a regular file of at most MAX_STORED_BYTES,
validated like a SetConfig), and services that follow the document (auto-reboot) are
told when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from hss_pu.config import Config
from hss_pu.errors import DeviceError, DeviceFailure
from hss_pu.fsutil import FileRefused, atomic_write, read_bounded
from hss_pu.wire import devconfig as wire

__all__ = ["MAX_STORED_BYTES", "DevConfigStore"]

log = logging.getLogger("hss_pu.devconfig")

FILENAME = "devconfig.json"
# A full document is a few KiB (each extension at most 4 KiB); anything far larger is not ours.
MAX_STORED_BYTES = 256 * 1024


class DevConfigStore:
    """GetConfig/SetConfig/ResetConfig state that survives restarts (and power cuts)."""

    def __init__(self, config: Config) -> None:
        self.profile = config.profile
        cam = config.camera
        self.base = wire.Base(
            width=cam.width, height=cam.height, fps=cam.fps, bitrate=config.bitrate
        )
        self.path = Path(config.storage_dir) / FILENAME
        self._listeners: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()  # one change at a time: each is merged onto the last
        self.doc = self._load()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the caller's thread, so it must not block) after a change."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def _defaults(self) -> dict[str, Any]:
        return wire.default_document(self.profile, self.base)

    def _load(self) -> dict[str, Any]:
        try:
            return self._read()
        except FileNotFoundError:
            return self._defaults()
        # RecursionError: msgspec's own guard against a document nested too deep.
        except (FileRefused, msgspec.DecodeError, RecursionError, DeviceError) as exc:
            bad = self.path.with_suffix(".json.bad")
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            log.error(
                "devconfig: %s is unusable (%s); kept as %s, using factory settings",
                self.path,
                exc,
                bad.name,
            )
        except OSError as exc:  # e.g. EIO: leave the file for the next start
            log.error("devconfig: cannot read %s (%s); using factory settings", self.path, exc)
        return self._defaults()

    def _read(self) -> dict[str, Any]:
        raw, _ = read_bounded(self.path, MAX_STORED_BYTES)
        return wire.validate_stored(msgspec.json.decode(raw), self.profile, self.base)

    def get(self) -> dict[str, Any]:
        return self.doc

    async def set(
        self, patch: Any, check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Merge, validate, persist; the document stays as it was if any of it fails.
        ``check(new, old)`` may refuse the result (what the running device cannot apply)
        by raising a DeviceError before anything is saved. The write and its fsync run
        off the event loop; the new document is adopted once it is on disk."""
        async with self._lock:
            new = wire.merge(self.doc, patch, self.profile, self.base)
            if check is not None:
                check(new, self.doc)
            data = msgspec.json.format(msgspec.json.encode(new)) + b"\n"
            try:
                await asyncio.to_thread(atomic_write, self.path, data)
            except OSError as exc:
                raise DeviceFailure(f"cannot save configuration: {exc.strerror or exc}") from None
            self.doc = new
            self._changed()
            return self.doc

    async def reset(self) -> dict[str, Any]:
        async with self._lock:
            try:
                await asyncio.to_thread(self.path.unlink, missing_ok=True)
            except OSError as exc:
                raise DeviceFailure(f"cannot reset configuration: {exc.strerror or exc}") from None
            self.doc = self._defaults()
            self._changed()
            return self.doc

    @property
    def tz(self) -> int:
        return int(self.doc["tz"])

    async def set_tz(self, tz: int) -> None:
        await self.set({"tz": tz})
