"""The platform's hibernation server (wire-notes "Power"): where sleeping devices keep
their TCP connection and send the 40-byte heartbeat, and where ``TOWAKEUP`` comes from.

Strict, as the rest of the reference platform, so it finds PU bugs: every frame is
checked (magic, length, command, id, the device's own ``hb_token``); a bad one is
logged, recorded and dropped, and one that breaks the framing (magic, length) closes the
connection. Every frame is kept as received (``heartbeats``, bounded) for tests to
compare byte for byte. A device counts as sleeping while its connection is open and its
last good heartbeat is less than 135 s old. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hss_pu.wire.hibernation import (
    HEADER,
    HEARTBEAT_BYTES,
    WAKE,
    BadHeartbeat,
    Heartbeat,
    parse_heartbeat,
)

__all__ = ["OFFLINE_AFTER", "HeartbeatRecord", "HibernationServer"]

log = logging.getLogger("hss_pu.platform.hibernation")

OFFLINE_AFTER = 135.0  # s without a heartbeat: the device is gone (wire-notes)
MAX_RECORDS = 10_000
MAX_CONNECTIONS = 1_000


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    """One frame a connection sent: ``ok``, or ``reason`` it was dropped."""

    raw: bytes
    device_id: str | None  # as the frame names it (None when unreadable)
    ok: bool
    reason: str
    peer: str
    time: float  # host time.time()


@dataclass(eq=False)
class _Conn:
    peer: str
    writer: asyncio.StreamWriter
    since: float
    device_id: str | None = None  # from its last good heartbeat
    last_ok: float = 0.0  # monotonic time of it
    heartbeats: int = 0
    woken: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class HibernationServer:
    def __init__(self, devices: Callable[[], Mapping[str, str]], token: str | None = None):
        """``devices``: the ids that may log in (read at each frame); ``token``: one
        hb_token for all (the platform's ``hb_token`` option), else one per device."""
        self.devices = devices
        self.fixed_token = token
        self.port = 0
        self.heartbeats: list[HeartbeatRecord] = []
        self.wakes: list[tuple[str, float]] = []  # (device id, time.time()) of each TOWAKEUP
        self._tokens: dict[str, str] = {}
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._tick = asyncio.Event()

    # --- life cycle -------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # --- what the platform asks -----------------------------------------------------------

    def token_for(self, device_id: str) -> str:
        """The device's hb_token (16 hex characters, made at its first GetServerInfo)."""
        if self.fixed_token is not None:
            return self.fixed_token
        if device_id not in self._tokens and device_id in self.devices():
            self._tokens[device_id] = secrets.token_hex(8)
        return self._tokens.get(device_id, "")

    def _current(self, device_id: str) -> _Conn | None:
        """The device's newest open connection with a heartbeat in the last 135 s."""
        now = time.monotonic()
        best: _Conn | None = None
        for c in self._conns:
            fresh = c.device_id == device_id and now - c.last_ok < OFFLINE_AFTER
            if fresh and (best is None or c.last_ok > best.last_ok):
                best = c
        return best

    def is_sleeping(self, device_id: str) -> bool:
        return self._current(device_id) is not None

    def sleeping(self) -> list[dict[str, Any]]:
        """The sleeping devices: id, peer, since (connection), last heartbeat's age."""
        now = time.monotonic()
        ids = sorted({c.device_id for c in self._conns if c.device_id})
        out = []
        for i in ids:
            c = self._current(i)
            if c is not None:
                out.append({
                    "id": i, "peer": c.peer, "since": c.since, "heartbeats": c.heartbeats,
                    "last_heartbeat_age": round(now - c.last_ok, 1),
                })  # fmt: skip
        return out

    async def wake(self, device_id: str) -> None:
        """Send TOWAKEUP on the device's connection; LookupError when it is not asleep
        here, ConnectionError when the write fails."""
        c = self._current(device_id)
        if c is None:
            raise LookupError(f"device {device_id} is not sleeping (no heartbeat connection)")
        try:
            c.writer.write(WAKE)
            async with asyncio.timeout(5):
                await c.writer.drain()
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"TOWAKEUP to {device_id} not sent: {exc}") from None
        c.woken = True
        self.wakes.append((device_id, time.time()))
        del self.wakes[:-MAX_RECORDS]
        log.info("hibernation: TOWAKEUP sent to %s (%s)", device_id, c.peer)

    async def wait_heartbeat(
        self, predicate: Callable[[HeartbeatRecord], bool], timeout: float = 10.0
    ) -> HeartbeatRecord:
        """The first heartbeat record (already there or to come) that matches."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for r in self.heartbeats[seen:]:
                    if predicate(r):
                        return r
                seen = len(self.heartbeats)
                self._tick.clear()
                await self._tick.wait()

    async def wait_sleeping(self, device_id: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.is_sleeping(device_id):
                self._tick.clear()
                await self._tick.wait()

    # --- connections ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        if len(self._conns) >= MAX_CONNECTIONS:
            log.warning("hibernation: %s refused: %d connections already", peer, MAX_CONNECTIONS)
            writer.close()
            return
        conn = _Conn(peer, writer, time.time())
        self._conns.add(conn)
        log.info("hibernation: connection from %s", peer)
        try:
            while await self._frame(conn, reader):
                pass
        except (OSError, TimeoutError) as exc:
            log.info("hibernation: %s: %s", peer, exc or type(exc).__name__)
        finally:
            self._conns.discard(conn)
            conn.closed.set()
            self._notify()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info("hibernation: %s (%s) disconnected", peer, conn.device_id or "no heartbeat")

    async def _frame(self, conn: _Conn, reader: asyncio.StreamReader) -> bool:
        """Read and judge one frame; False when the connection is to close."""
        raw = b""
        try:
            async with asyncio.timeout(OFFLINE_AFTER):
                raw = await reader.readexactly(HEADER)
            first = parse_heartbeat(raw)
            if not (isinstance(first, BadHeartbeat) and first.resync):
                async with asyncio.timeout(OFFLINE_AFTER):
                    raw += await reader.readexactly(HEARTBEAT_BYTES - HEADER)
        except asyncio.IncompleteReadError as exc:
            raw += exc.partial
            if raw:
                self._record(conn, raw, None, f"closed mid-frame after {len(raw)} bytes")
            return False
        except TimeoutError:
            log.warning("hibernation: %s silent for %.0f s: closed", conn.peer, OFFLINE_AFTER)
            return False
        parsed = parse_heartbeat(raw)
        if isinstance(parsed, BadHeartbeat):
            self._record(conn, raw, None, parsed.reason)
            return not parsed.resync
        problem = self._check(parsed)
        self._record(conn, raw, parsed.device_id, problem)
        if problem is None:
            conn.device_id = parsed.device_id
            conn.last_ok = time.monotonic()
            conn.heartbeats += 1
        return True

    def _check(self, hb: Heartbeat) -> str | None:
        if hb.device_id not in self.devices():
            return "unknown device id"
        expected = self.token_for(hb.device_id)
        if not hmac.compare_digest(hb.token.encode(), expected.encode()):
            return "wrong hb_token"
        return None

    def _record(self, conn: _Conn, raw: bytes, device_id: str | None, problem: str | None) -> None:
        rec = HeartbeatRecord(
            raw=raw, device_id=device_id, ok=problem is None, reason=problem or "ok",
            peer=conn.peer, time=time.time(),
        )  # fmt: skip
        self.heartbeats.append(rec)
        del self.heartbeats[:-MAX_RECORDS]
        if problem is None:
            log.debug("hibernation: heartbeat from %s (%s)", device_id, conn.peer)
        else:
            log.warning("hibernation: %s: frame dropped: %s", conn.peer, problem)
        self._notify()

    def _notify(self) -> None:
        self._tick.set()
