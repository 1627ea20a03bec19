"""Platform-side faults for soaks and tests: each a small object with a ``name`` and
``async fire()``, so a soak can pick one at random and say what it did.

Faults act on a running :class:`ReferencePlatform` in this process. A restart closes the
platform's listeners (Vs + Vr on the HTTPS port, Vd) and opens them again on the same
ports with the same CA, so the PU can come back; what the platform has stored (saved
segments, alarms) survives, as a real platform's database would.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hss_pu.reference_platform.live import LiveReceiver
    from hss_pu.reference_platform.server import ReferencePlatform

__all__ = [
    "Fault",
    "PlatformRestart",
    "SrtListenerRestart",
    "VrCutUpload",
    "VrFaults",
    "VrOutage",
    "restart_platform",
]


class Fault(Protocol):
    name: str

    async def fire(self) -> str:
        """Inject the fault (returning once it is over, or armed) and say what was done."""
        ...


async def restart_platform(platform: ReferencePlatform, down: float = 0.0) -> None:
    """:meth:`ReferencePlatform.restart`, under the name the benches know."""
    await platform.restart(down)


@dataclass
class PlatformRestart:
    """The platform goes away for 0-``max_down`` s (a crash or a deploy) and comes back."""

    platform: ReferencePlatform
    rng: random.Random
    max_down: float = 10.0
    name: str = "platform-restart"

    async def fire(self) -> str:
        down = self.rng.uniform(0.0, self.max_down)
        await restart_platform(self.platform, down)
        return f"Vs/Vd/Vr down {down:.1f} s"


@dataclass
class VrFaults:
    """The next 1-``max_count`` Vr requests of a random op answer a random misbehaviour:
    a 5xx, a 429 with Retry-After, a timeout (held, then 503), a slow reply (the op takes
    effect, its answer is held) or an aborted connection."""

    platform: ReferencePlatform
    rng: random.Random
    max_count: int = 3
    max_hold: float = 20.0
    ops: tuple[str, ...] = ("create", "put", "save", "stat")
    name: str = "vr-faults"

    async def fire(self) -> str:
        op = self.rng.choice(self.ops)
        count = self.rng.randint(1, self.max_count)
        kind = self.rng.choice(("5xx", "429", "timeout", "slow", "abort"))
        hold = round(self.rng.uniform(1.0, self.max_hold), 1)
        vr = self.platform.vr
        if kind == "5xx":
            status = self.rng.choice((500, 502, 503, 504))
            vr.fail(op, count, status=status)
            return f"next {count} {op}: {status}"
        if kind == "429":
            after = self.rng.randint(1, 5)
            vr.fail(op, count, status=429, retry_after=after)
            return f"next {count} {op}: 429, Retry-After {after}"
        if kind == "timeout":
            vr.fail(op, count, mode="timeout", hold=hold)
            return f"next {count} {op}: held {hold} s, then 503"
        if kind == "slow":
            vr.fail(op, count, mode="late", hold=hold)
            return f"next {count} {op}: done, answer held {hold} s"
        vr.fail(op, count, mode="abort")
        return f"next {count} {op}: connection aborted"


@dataclass
class VrCutUpload:
    """The next segment PUT is cut mid-body: the platform reads a random 5-95 % of it,
    stores nothing and drops the connection while the rest is still arriving, with no
    answer (the PU cannot tell how much arrived; its retry must complete the segment)."""

    platform: ReferencePlatform
    rng: random.Random
    name: str = "vr-cut-upload"

    async def fire(self) -> str:
        cut_at = round(self.rng.uniform(0.05, 0.95), 2)
        self.platform.vr.fail("put", 1, mode="cut", cut_at=cut_at)
        return f"next PUT cut after {round(cut_at * 100)} % of its body"


@dataclass
class SrtListenerRestart:
    """The live receiver (srt-live-transmit) is killed and started again on its port."""

    receiver: LiveReceiver
    name: str = "srt-listener-restart"
    restarts: list[float] = field(default_factory=list)

    async def fire(self) -> str:
        await self.receiver.restart()
        self.restarts.append(time.monotonic())
        return f"srt-live-transmit on port {self.receiver.port} restarted"


@dataclass
class VrOutage:
    """Vr unreachable (every request aborted) for 10-``max_seconds`` s: long enough, with
    a small ``storage.spool_max_mb``, to fill the PU's spool (the disk-full path: it
    evicts its oldest segments and reports them with op=stat)."""

    platform: ReferencePlatform
    rng: random.Random
    max_seconds: float = 60.0
    name: str = "vr-outage-spool-full"

    async def fire(self) -> str:
        seconds = self.rng.uniform(10.0, self.max_seconds)
        self.platform.vr_down = True
        try:
            await asyncio.sleep(seconds)
        finally:
            self.platform.vr_down = False
        return f"Vr away {seconds:.0f} s"
