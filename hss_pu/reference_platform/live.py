"""Vm on the platform side: receive a PU's SRT push with the real ``srt-live-transmit``.

Each receiver is one ``srt-live-transmit`` listener writing the TS to its stdout, which we
read, store (one file per connection), hand to subscribers (the console's live viewers:
:meth:`LiveReceiver.subscribe`) and, for demos, forward to a second ``srt-live-transmit``
listening for a viewer (``ffplay srt://...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hss_pu.media.tsjoin import TsJoin

__all__ = ["LiveReceiver", "LiveSubscriber", "bound_udp_ports", "free_udp_port"]

log = logging.getLogger("hss_pu.platform.live")

READ_CHUNK = 1316 * 32
VIEWER_BACKLOG = 4 << 20  # bytes buffered towards a slow viewer before we skip data
UDP_TABLES = (Path("/proc/net/udp"), Path("/proc/net/udp6"))
BIND_WAIT = 2.0  # seconds a new listener gets to bind its port
# What a subscriber may fall behind by, beyond the key frame it started at, before it is
# dropped: 8 s at 2 Mbit/s (a viewer further behind than that is not watching live).
SUBSCRIBER_BACKLOG = 2 << 20
SUBSCRIBER_READ = 256 << 10  # bytes one read() hands over at most


class LiveSubscriber:
    """One consumer of a receiver's TS bytes: whole 188-byte packets, as received, from a
    key frame (PAT and PMT first) on, so that a player starts decoding at once.

    Its queue is bounded in bytes (``limit``: the backlog allowed plus the start
    snapshot): one that falls further behind is dropped (``dropped``; its queue freed),
    never buffered without limit. :meth:`read` returns b"" once it is closed and drained.
    """

    def __init__(self, backlog: int, on_close: Callable[[LiveSubscriber], object]) -> None:
        self.backlog = backlog
        self.limit = backlog
        self.queued = 0  # bytes waiting for read()
        self.peak = 0  # the most ever queued
        self.delivered = 0  # bytes handed out by read()
        self.started = False  # has its key frame: later bytes are queued as they come
        self.closed = False
        self.dropped = False  # closed for falling behind
        self.reason = ""
        self._chunks: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.ended = asyncio.Event()  # set once closed
        self._on_close = on_close

    def start(self, snapshot: bytes) -> None:
        """Begin with ``snapshot`` (PAT, PMT and the GOP so far)."""
        self.started = True
        self.limit = self.backlog + len(snapshot)
        self.offer(snapshot)

    def offer(self, data: bytes) -> None:
        """Queue the next bytes of the stream (ignored before :meth:`start`)."""
        if self.closed or not self.started or not data:
            return
        if self.queued + len(data) > self.limit:
            self.dropped = True
            self._chunks.clear()
            self.queued = 0
            self.close(f"fell more than {self.backlog} bytes behind the live stream")
            return
        self._chunks.append(data)
        self.queued += len(data)
        self.peak = max(self.peak, self.queued)
        self._wake.set()

    async def read(self, max_bytes: int = SUBSCRIBER_READ) -> bytes:
        """What has arrived since the last read (at least one chunk, at most about
        ``max_bytes``), waiting for it; b"" once closed and drained."""
        while not self._chunks:
            if self.closed:
                return b""
            self._wake.clear()
            await self._wake.wait()
        out = [self._chunks.popleft()]
        n = len(out[0])
        while self._chunks and n + len(self._chunks[0]) <= max_bytes:
            chunk = self._chunks.popleft()
            out.append(chunk)
            n += len(chunk)
        self.queued -= n
        self.delivered += n
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self, reason: str = "unsubscribed") -> None:
        """Stop taking bytes; read() hands out what is queued, then b""."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self._wake.set()
        self.ended.set()
        self._on_close(self)


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bound_udp_ports(tables: tuple[Path, ...] = UDP_TABLES) -> set[int]:
    """The local ports of this host's UDP sockets (Linux: /proc/net/udp*; elsewhere, or
    unreadable: none)."""
    ports: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1 and ":" in fields[1]:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _slt() -> str:
    exe = shutil.which("srt-live-transmit")
    if exe is None:
        raise RuntimeError(
            "srt-live-transmit not found (Debian package srt-tools; make setup installs it)"
        )
    return exe


class LiveReceiver:
    def __init__(
        self,
        directory: Path,
        *,
        stream_id: str,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 200,
        passphrase: str | None = None,
        viewer_port: int | None = None,
    ) -> None:
        self.directory = directory
        self.stream_id = stream_id
        self.host = host
        self.port = port or free_udp_port(host)
        self.latency_ms = latency_ms
        self.passphrase = passphrase
        self.viewer_port = viewer_port
        self.bytes_received = 0
        self.connections = 0  # receiver (re)starts
        self.files: list[Path] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._viewer: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stats_path = directory / f"{_safe(stream_id)}.stats.json"
        self.growing = asyncio.Event()
        self.last_data: float | None = None  # time.monotonic() of the last bytes
        self._join = TsJoin()
        self._subscribers: set[LiveSubscriber] = set()
        self._closed = False

    @property
    def url(self) -> str:
        """What the platform puts in PushLive: the PU calls this listener."""
        q: dict[str, Any] = {"latency": self.latency_ms}
        if self.passphrase:
            q["passphrase"] = self.passphrase
        return f"srt://{self.host}:{self.port}?{urlencode(q)}"

    @property
    def viewer_url(self) -> str | None:
        return f"srt://{self.host}:{self.viewer_port}" if self.viewer_port else None

    def _listener_uri(self, port: int) -> str:
        q: dict[str, Any] = {"mode": "listener", "latency": self.latency_ms}
        if self.passphrase and port == self.port:
            q["passphrase"] = self.passphrase
        return f"srt://{self.host}:{port}?{urlencode(q)}"

    async def start(self) -> None:
        """Start the listener (and the viewer relay). Cancelled or failing half way, it
        kills what it had started: no process outlives the receiver."""
        if self._closed:
            raise RuntimeError(f"live receiver {self.stream_id} is closed")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{_safe(self.stream_id)}-{self.connections}.ts"
        self.files.append(path)
        self.connections += 1
        try:
            self._proc = await self._spawn(
                "-s", "200", "-f", "-pf", "json", "-statsout", str(self._stats_path),
                self._listener_uri(self.port), "file://con",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            if self.viewer_port and self._viewer is None:
                self._viewer = await self._spawn(
                    "file://con", self._listener_uri(self.viewer_port),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
            await self._bound(self._proc)
        except BaseException:
            await self._abandon()
            raise
        self._reader = asyncio.create_task(self._read(self._proc, path))
        log.info("live: listening for %s on srt://%s:%d", self.stream_id, self.host, self.port)

    async def _bound(self, proc: asyncio.subprocess.Process) -> None:
        """Return once the listener's port is bound, so that a PushLive sent now connects
        at the first try (a PU refused retries only after its back-off). Where the bound
        ports cannot be read (no /proc), or the process has exited, it does not wait."""
        if not any(t.exists() for t in UDP_TABLES):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BIND_WAIT
        while proc.returncode is None and loop.time() < deadline:
            if self.port in bound_udp_ports():  # procfs: no disk behind it
                return
            await asyncio.sleep(0.005)

    async def _spawn(self, *args: str, **kw: Any) -> asyncio.subprocess.Process:
        # asyncio kills a child whose start is cancelled; one started while close() ran
        # elsewhere is ours to kill.
        proc = await asyncio.create_subprocess_exec(
            _slt(), "-q", *args, stderr=asyncio.subprocess.DEVNULL, **kw
        )
        if self._closed:
            _signal(proc, kill=True)
            await proc.wait()
            raise RuntimeError(f"live receiver {self.stream_id} closed while starting")
        return proc

    async def _abandon(self) -> None:
        """SIGKILL at once (no await may come first: a second cancel would skip it), then
        reap. A receiver that failed to start has nothing worth a graceful stop."""
        procs = [p for p in (self._proc, self._viewer) if p is not None]
        self._proc = self._viewer = None
        for proc in procs:
            _signal(proc, kill=True)
        for proc in procs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 2)

    async def _read(self, proc: asyncio.subprocess.Process, path: Path) -> None:
        assert proc.stdout is not None
        with path.open("wb") as f:
            while True:
                chunk = await proc.stdout.read(READ_CHUNK)
                if not chunk:
                    return
                f.write(chunk)
                self.bytes_received += len(chunk)
                self.last_data = time.monotonic()
                self.growing.set()
                self._to_viewer(chunk)
                self._to_subscribers(chunk)

    def subscribe(self, backlog: int = SUBSCRIBER_BACKLOG) -> LiveSubscriber:
        """A new consumer of the stream from its last key frame on (or from the next one,
        if none is known yet). RuntimeError once the receiver is closed."""
        if self._closed:
            raise RuntimeError(f"live receiver {self.stream_id} is closed")
        sub = LiveSubscriber(backlog, self._subscribers.discard)
        snapshot = self._join.snapshot()
        if snapshot is not None:
            sub.start(snapshot)
        self._subscribers.add(sub)
        return sub

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _to_subscribers(self, chunk: bytes) -> None:
        data, key = self._join.feed(chunk)
        if not self._subscribers:
            return
        snapshot = None
        for sub in list(self._subscribers):
            if sub.started:
                sub.offer(data)
            elif key:
                if snapshot is None:
                    snapshot = self._join.snapshot()
                if snapshot is not None:
                    sub.start(snapshot)

    def _to_viewer(self, chunk: bytes) -> None:
        v = self._viewer
        if v is None or v.stdin is None or v.stdin.is_closing():
            return
        transport = v.stdin.transport
        if transport.get_write_buffer_size() > VIEWER_BACKLOG:
            return  # a stalled viewer must not grow our memory
        v.stdin.write(chunk)

    async def _kill(self, proc: asyncio.subprocess.Process | None) -> None:
        if proc is None or proc.returncode is not None:
            return
        # The viewer relay blocks reading its stdin and does not act on SIGTERM until that
        # read returns: EOF first.
        if proc.stdin is not None:
            proc.stdin.close()
        _signal(proc, kill=False)
        try:
            await asyncio.wait_for(proc.wait(), 2)
        except TimeoutError:
            _signal(proc, kill=True)
            await proc.wait()
        except BaseException:  # cancelled: still no process left behind
            _signal(proc, kill=True)
            raise

    async def restart(self) -> None:
        """Kill the listener and start a new one on the same port (a receiver restart)."""
        await self._stop_listener()
        await self.start()

    async def _stop_listener(self) -> None:
        await self._kill(self._proc)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2)
            self._reader = None
        self._proc = None
        # The next connection is a new TS (new muxer, tables, counters): new subscribers
        # must wait for its first key frame, not start in the old one.
        self._join.reset()

    async def close(self) -> None:
        self._closed = True  # a start() still under way kills what it starts
        for sub in list(self._subscribers):
            sub.close(f"live receiver {self.stream_id} closed")
        await self._stop_listener()
        await self._kill(self._viewer)
        self._viewer = None

    def stats(self) -> dict[str, Any]:
        """The receiver-side counters of the last (cumulative, -f) statistics record."""
        try:
            lines = self._stats_path.read_text().strip().splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                obj = json.loads(line.rstrip(","))
                if isinstance(obj, dict):
                    recv = obj.get("recv", obj)
                    return recv if isinstance(recv, dict) else {}
        return {}

    async def wait_bytes(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.bytes_received < n:
                self.growing.clear()
                await self.growing.wait()


def _signal(proc: asyncio.subprocess.Process, *, kill: bool) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        if kill:
            proc.kill()
        else:
            proc.terminate()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "stream"
