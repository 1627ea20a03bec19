"""A lossy userspace UDP relay between one SRT caller and a listener on loopback.

The kernel here has no ``tc netem``, so loss is injected in between: datagrams from the
caller go to ``target`` and replies go back to the caller, each direction dropped with
its own probability from a seeded RNG (a failing run can be replayed). Optional fixed
delay gives the link an RTT; ``reorder`` holds a caller datagram back until the next one
has gone (or 20 ms have passed). Drop, delay and reorder may be changed while it runs.
Every queue is bounded: delayed datagrams in flight are
capped, and beyond the cap (or a full socket buffer) a datagram is dropped and counted.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["RelayCounts", "UdpRelay"]


@dataclass
class RelayCounts:
    forwarded: int = 0  # caller -> listener
    dropped: int = 0
    returned: int = 0  # listener -> caller
    dropped_back: int = 0
    reordered: int = 0  # caller datagrams sent after the one that followed them
    overflow: int = 0  # dropped because a bound was reached, either way


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, front: bool) -> None:
        self.relay = relay
        self.front = front

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.front:
            self.relay._from_caller(data, addr)
        else:
            self.relay._from_listener(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the listener is down: the caller sees silence.
        self.relay.errors += 1


class UdpRelay:
    """``async with UdpRelay(("127.0.0.1", port), drop=0.05, drop_back=0.02) as r``: the
    caller connects to ``127.0.0.1:r.port``."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        drop: float = 0.0,
        drop_back: float = 0.0,
        delay: float = 0.0,
        reorder: float = 0.0,
        seed: int = 1,
        max_in_flight: int = 4096,
        max_write_buffer: int = 1 << 20,
    ) -> None:
        if not (0.0 <= drop < 1.0 and 0.0 <= drop_back < 1.0 and 0.0 <= reorder < 1.0):
            raise ValueError("drop and reorder probabilities in [0, 1)")
        if not 0.0 <= delay <= 1.0:
            raise ValueError("delay in [0, 1] s")
        self.target = target
        self.drop = drop
        self.drop_back = drop_back
        self.delay = delay
        self.reorder = reorder
        self.max_in_flight = max_in_flight
        self.max_write_buffer = max_write_buffer
        self.counts = RelayCounts()
        self.errors = 0
        self.port = 0
        self._rng = random.Random(seed)
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None
        self._caller: tuple[Any, ...] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._drop_next = 0
        self._held: bytes | None = None
        self._held_timer: asyncio.TimerHandle | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._front, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self, True), local_addr=("127.0.0.1", 0)
        )
        self._back, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self, False), remote_addr=self.target
        )
        self.port = self._front.get_extra_info("sockname")[1]
        return self.port

    async def stop(self) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
        self._held = None
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        for tr in (self._front, self._back):
            if tr is not None:
                tr.close()
        self._front = self._back = None
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> UdpRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_next_data(self, n: int = 1) -> None:
        """Drop the next ``n`` SRT data packets from the caller (first header bit 0), whatever
        the drop probability: a controlled loss, e.g. to arm the receiver's NAK timer."""
        self._drop_next = n

    def _from_caller(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._caller = addr  # one caller at a time; the latest one gets the replies
        if self._drop_next and data and not data[0] & 0x80:
            self._drop_next -= 1
            self.counts.dropped += 1
        elif self._rng.random() < self.drop:
            self.counts.dropped += 1
        elif self._held is None and self.reorder and self._rng.random() < self.reorder:
            self._held = data
            self._held_timer = asyncio.get_running_loop().call_later(0.02, self._release)
        else:
            if self._emit(self._back, data, None):
                self.counts.forwarded += 1
            if self._held is not None:
                self.counts.reordered += 1
                self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        if held is not None and self._emit(self._back, held, None):
            self.counts.forwarded += 1

    def _from_listener(self, data: bytes) -> None:
        if self._caller is None:
            return
        if self._rng.random() < self.drop_back:
            self.counts.dropped_back += 1
        elif self._emit(self._front, data, self._caller):
            self.counts.returned += 1

    def _emit(
        self, tr: asyncio.DatagramTransport | None, data: bytes, addr: tuple[Any, ...] | None
    ) -> bool:
        # asyncio buffers unsent datagrams without limit; typeshed lacks the getter.
        buffered = getattr(tr, "get_write_buffer_size", lambda: 0)
        if tr is None or tr.is_closing() or buffered() > self.max_write_buffer:
            self.counts.overflow += 1
            return False
        if self.delay <= 0:
            tr.sendto(data, addr)
            return True
        if len(self._timers) >= self.max_in_flight:
            self.counts.overflow += 1
            return False
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            if not tr.is_closing():
                tr.sendto(data, addr)

        handle = loop.call_later(self.delay, fire)
        self._timers.add(handle)
        return True
