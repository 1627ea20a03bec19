"""A capture-thread sink that keeps what a channel produced, for tests to read on the loop.

Like every sink (hss_pu/media/packets.py) it is bounded and drops to the next key frame
when full, so a test that stops reading cannot grow memory; ``get`` waits on the loop,
woken through the daemon's own :class:`~hss_pu.bridge.LoopBridge`.
"""

from __future__ import annotations

import asyncio
import collections
import threading

from hss_pu.bridge import LoopBridge
from hss_pu.media.packets import EncodedPacket, KeyframeGate, PacketHub, StreamInfo


class PacketCollector:
    def __init__(self, hub: PacketHub, *, max_packets: int = 1000, max_bytes: int = 8 << 20):
        """Attached to ``hub`` at once (make it on the loop, before the channel starts so
        as not to miss its first key frame)."""
        self.hub = hub
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.received = 0  # packets the hub handed over
        self.delivered = 0  # packets read by the test
        self.dropped_packets = 0
        self.dropped_gops = 0
        self._queue: collections.deque[EncodedPacket] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._gate = KeyframeGate()
        self._bridge = LoopBridge()
        self._wake = asyncio.Event()
        hub.attach(self)

    # capture thread

    def on_packet(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        with self._lock:
            self.received += 1
            if len(self._queue) >= self.max_packets or self._bytes + pkt.size > self.max_bytes:
                self.dropped_packets += len(self._queue)
                self._queue.clear()
                self._bytes = 0
                if self._gate.reset():
                    self.dropped_gops += 1
            if not self._gate.admit(pkt):
                self.dropped_packets += 1
                return
            self._queue.append(pkt)
            self._bytes += pkt.size

    def on_flush(self) -> None:
        if self._queue:
            self._bridge.call(self._wake.set)

    # event loop

    def get_nowait(self) -> EncodedPacket | None:
        with self._lock:
            if not self._queue:
                return None
            pkt = self._queue.popleft()
            self._bytes -= pkt.size
        self.delivered += 1
        return pkt

    async def get(self) -> EncodedPacket:
        """The next packet, waiting for it (wrap in ``asyncio.wait_for``)."""
        while True:
            pkt = self.get_nowait()
            if pkt is not None:
                return pkt
            self._wake.clear()
            pkt = self.get_nowait()  # one that came before the clear
            if pkt is not None:
                return pkt
            await self._wake.wait()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self.hub.detach(self)
