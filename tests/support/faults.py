"""Process-side faults for soaks and tests (the platform-side ones are in
hss_pu.reference_platform.faults): the daemon SIGKILLed and restarted as systemd would,
the SRT path through a :class:`UdpRelay` dropping, delaying and reordering packets, and
the daemon's recording disk (a :class:`SmallDisk`) filled by somebody else's file.

:class:`Supervisor` is the systemd of the rig: ``hss-pu run`` as a process, restarted
``restart_sec`` after any exit that is not clean (``Restart=on-failure``), with each exit
classified: a kill it was told about, or a crash (explained by nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hss_pu.reference_platform.server import ReferencePlatform
from tests.support.rig import Proc, start_process
from tests.support.smalldisk import SmallDisk
from tests.support.udp_relay import UdpRelay

__all__ = ["DaemonKill", "DiskFull", "Exit", "RelayChaos", "Supervisor"]


@dataclass
class Exit:
    at: float  # monotonic
    rc: int | None
    expected: bool  # a kill we injected (or our own stop)
    tail: list[str]  # the last lines of its log
    lines: int  # how many lines it logged


@dataclass
class Supervisor:
    """``hss-pu run --config <config>`` kept running, as systemd's Restart=on-failure."""

    config: Path
    restart_sec: float = 5.0  # the unit's RestartSec
    log_level: str | None = None
    wrapper: Sequence[str] = ()  # e.g. a SmallDisk's prefix: run inside its namespace
    proc: Proc | None = None
    exits: list[Exit] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # monotonic, each process start
    logs: list[str] = field(default_factory=list)  # every line of every incarnation
    _expect_exit: bool = False
    _stopping: bool = False
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._watch(), name="supervisor")

    async def _spawn(self) -> None:
        args = ["run", "--config", str(self.config)]
        if self.log_level:
            args += ["--log-level", self.log_level]
        self.proc = await start_process(*args, wrapper=self.wrapper)
        self.starts.append(time.monotonic())

    @property
    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.returncode is not None else self.proc.proc.pid

    @property
    def crashes(self) -> list[Exit]:
        return [e for e in self.exits if not e.expected]

    async def _watch(self) -> None:
        while not self._stopping:
            proc = self.proc
            assert proc is not None
            rc = await proc.proc.wait()
            with contextlib.suppress(TimeoutError):
                await proc.wait(5)  # the log read to its end
            self.logs += proc.lines
            self.exits.append(
                Exit(time.monotonic(), rc, self._expect_exit, proc.lines[-40:], len(proc.lines))
            )
            self._expect_exit = False
            await proc.reap_leftovers()
            if self._stopping or rc == 0:  # on-failure: a clean exit stays down
                return
            await asyncio.sleep(self.restart_sec)
            if not self._stopping:
                await self._spawn()

    async def kill(self) -> bool:
        """SIGKILL the daemon (a power cut, an OOM kill); False when it was not running."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        self._expect_exit = True
        self.proc.proc.send_signal(signal.SIGKILL)
        return True

    def lines(self) -> list[str]:
        """Every log line so far, of every incarnation."""
        running = self.proc.lines if self.proc is not None and self.pid is not None else []
        return self.logs + running

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (a clean stop is not restarted); its exit status."""
        self._stopping = True
        rc = None
        if self.proc is not None and self.proc.returncode is None:
            self._expect_exit = True
            rc, _ = await self.proc.stop(timeout=timeout)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout)
        return rc


@dataclass
class DaemonKill:
    """SIGKILL the daemon now; the supervisor restarts it after RestartSec."""

    supervisor: Supervisor
    name: str = "daemon-sigkill"

    async def fire(self) -> str:
        if await self.supervisor.kill():
            return f"SIGKILL, restart in {self.supervisor.restart_sec:g} s"
        return "not running (already restarting)"


@dataclass
class RelayChaos:
    """For 5-``max_seconds`` s the SRT path drops (up to 10 %), delays (up to 100 ms) and
    reorders packets, then it is clean again."""

    relay: UdpRelay
    rng: random.Random
    max_seconds: float = 20.0
    name: str = "srt-relay-chaos"

    async def fire(self) -> str:
        drop = round(self.rng.uniform(0.0, 0.1), 3)
        drop_back = round(self.rng.uniform(0.0, 0.05), 3)
        delay = round(self.rng.uniform(0.0, 0.1), 3)
        reorder = round(self.rng.uniform(0.0, 0.05), 3)
        seconds = self.rng.uniform(5.0, self.max_seconds)
        r = self.relay
        r.drop, r.drop_back, r.delay, r.reorder = drop, drop_back, delay, reorder
        try:
            await asyncio.sleep(seconds)
        finally:
            r.drop = r.drop_back = r.delay = r.reorder = 0.0
        return (
            f"{seconds:.0f} s of drop {drop:.1%}/{drop_back:.1%} back, delay "
            f"{delay * 1000:.0f} ms, reorder {reorder:.1%}"
        )


@dataclass
class DiskFull:
    """Another program's file takes every free byte of the recording disk while Vr is
    away for ``min_seconds``-``max_seconds`` s (so the segments have nowhere to go but
    memory); then Vr comes back and the file is deleted."""

    disk: SmallDisk
    platform: ReferencePlatform
    rng: random.Random
    max_seconds: float = 60.0
    min_seconds: float = 10.0
    name: str = "disk-full"

    async def fire(self) -> str:
        seconds = self.rng.uniform(self.min_seconds, self.max_seconds)
        size = await asyncio.to_thread(self.disk.fill)
        free = self.disk.free()
        self.platform.vr_down = True
        try:
            await asyncio.sleep(seconds)
        finally:
            self.platform.vr_down = False
            await asyncio.to_thread(self.disk.unfill)
        return f"a {size / 1e6:.1f} MB file left {free} bytes free, with Vr away {seconds:.0f} s"
