"""A small real filesystem for a daemon under test, mounted without privileges.

A tmpfs of ``size_mb`` is mounted at ``path`` inside a private user + mount namespace
held by a sleeping process; the daemon is started inside that namespace
(:attr:`SmallDisk.prefix`, nsenter), so it sees the small disk at ``path`` while the rest of
the machine still sees the directory underneath. The namespace outlives every daemon
(SIGKILLed and restarted ones included), as a real SD card outlives its camera's process.
The test side reaches the disk's files through ``/proc/<holder>/root`` (:meth:`outside`),
which is how :meth:`fill` takes all its free space the way another program's file would.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from pathlib import Path

from hss_pu.profiles import profiles_dir

__all__ = ["SmallDisk", "card_profile", "unavailable"]

_READY = b"small-disk-ready\n"


def unavailable() -> str | None:
    """Why no small disk can be made here, or None."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    return None


class SmallDisk:
    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self._holder: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Raises RuntimeError (with unshare's words) where namespaces are not allowed."""
        why = unavailable()
        if why is not None:
            raise RuntimeError(why)
        self.path.mkdir(parents=True, exist_ok=True)
        script = (
            f'mount -t tmpfs -o size={self.size_mb}m,mode=0700 tmpfs "$1" && '
            "echo small-disk-ready && exec sleep infinity"
        )
        self._holder = await asyncio.create_subprocess_exec(
            "unshare", "--user", "--map-current-user", "--mount", "--propagation", "private",
            "sh", "-c", script, "small-disk", str(self.path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._holder.stdout is not None and self._holder.stderr is not None
        line = await asyncio.wait_for(self._holder.stdout.readline(), 10)
        if line != _READY:
            err = (await self._holder.stderr.read()).decode(errors="replace").strip()
            await self.stop()
            raise RuntimeError(f"cannot mount a small disk in a user namespace: {err}")

    @property
    def pid(self) -> int:
        assert self._holder is not None, "not started"
        return self._holder.pid

    @property
    def prefix(self) -> list[str]:
        """Prepended to a command to run it inside (same pid: nsenter execs it)."""
        return [
            "nsenter", f"--target={self.pid}", "--user", "--mount", "--preserve-credentials",
            "--",
        ]  # fmt: skip

    def outside(self, inside: Path) -> Path:
        """The path through which this process reaches ``inside`` (a path on the disk)."""
        return Path(f"/proc/{self.pid}/root") / inside.resolve().relative_to("/")

    def fill(self, keep: int = 0) -> int:
        """Write a filler file until the disk is full (but for ``keep`` bytes, roughly);
        returns its size. Blocking: call it on a thread."""
        filler = self.outside(self.path / "filler")
        chunk = b"\0" * (1 << 20)
        written = 0
        with filler.open("wb") as f:
            try:
                while True:
                    st = os.statvfs(self.outside(self.path))
                    free = st.f_bavail * st.f_frsize
                    if free <= keep:
                        break
                    written += f.write(chunk[: min(len(chunk), max(4096, free - keep))])
                    f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        return written

    def free(self) -> int:
        """Bytes free on the disk now."""
        st = os.statvfs(self.outside(self.path))
        return st.f_bavail * st.f_frsize

    def unfill(self) -> None:
        self.outside(self.path / "filler").unlink(missing_ok=True)

    async def stop(self) -> None:
        """The namespace ends with its holder; the tmpfs and what is on it are gone."""
        if self._holder is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._holder.kill()
        await self._holder.wait()
        self._holder = None


def card_profile(card: Path, dest: Path) -> Path:
    """The emulated profile with its recordings on their own filesystem at ``card``
    (``store = "mount"``, as a camera with an SD card), written to ``dest``."""
    text = (profiles_dir() / "emulated.toml").read_text()
    old = 'store = "dir"'
    assert old in text, "the emulated profile's recording store moved"
    dest.write_text(text.replace(old, f'store = "mount"\npath = "{card}"'))
    return dest
