"""SRT (Vm) sender: one live-mode caller connection over :mod:`hss_pu.srt.lib`.

The live service muxes MPEG-TS itself and hands 1316-byte messages to :class:`SrtSender`.
Only caller mode and live mode are used; the tests use ``srt-live-transmit`` as the
listener.

Threads: nothing here blocks the caller. :meth:`SrtSender.send_nowait` is called on the
channel's capture thread (the live push's sink, which holds its own lock so that its
last send comes before the loop closes the sender); connecting, stats, MAXBW changes
and close run on the event loop; the blocking ``srt_connect`` runs in a thread of its
own that reports back through a :class:`~hss_pu.bridge.LoopBridge` (see
:class:`_ConnectJob`). libsrt itself is thread-safe. An :class:`SrtSender` belongs to
the loop that connected it. The
passphrase is held as a :class:`~hss_pu.config.Secret`, registered with the log redactor
on connect, and never put in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import socket
import struct
import threading
import time
import weakref
from typing import Any

from hss_pu.bridge import LoopBridge
from hss_pu.logsetup import add_secret, redacted_logger
from hss_pu.srt.lib import (
    LIVE_PAYLOAD_SIZE,
    SRT_EASYNCSND,
    SRT_ECONNREJ,
    SRT_EINVSOCK,
    SRT_ENOSERVER,
    SRTO_CONNTIMEO,
    SRTO_INPUTBW,
    SRTO_LATENCY,
    SRTO_MAXBW,
    SRTO_PASSPHRASE,
    SRTO_PAYLOADSIZE,
    SRTO_PBKEYLEN,
    SRTO_PEERIDLETIMEO,
    SRTO_SNDSYN,
    SRTO_STREAMID,
    SRTO_TRANSTYPE,
    SRTS_BROKEN,
    SRTT_LIVE,
    STATS_BUF_SIZE,
    TS_PACKET_SIZE,
    SrtError,
    SrtLib,
    TraceBStats,
    load,
)
from hss_pu.srt.url import SrtUrl

__all__ = ["SrtSender", "SrtStats"]

log = redacted_logger("hss_pu.srt")


@dataclasses.dataclass(frozen=True, slots=True)
class SrtStats:
    """Sender-side totals since connect; rates, RTT and buffer figures are instantaneous.

    Byte counts are libsrt's: payload plus 44 bytes of SRT+UDP+IPv4 headers per packet.
    """

    bytes_sent: int  # unique (first transmissions)
    packets_sent: int  # unique
    packets_retransmitted: int
    packets_lost: int  # loss reports from the receiver
    packets_dropped: int  # too late to send (past the latency window)
    rtt_ms: float
    send_rate_mbps: float
    bandwidth_mbps: float  # libsrt's estimate of the link
    max_bw_mbps: float  # the pacing cap in force
    snd_buffer_ms: int  # unacknowledged span in the send buffer
    snd_buffer_packets: int


def _sockaddr(info: tuple[Any, ...]) -> bytes:
    """A Linux struct sockaddr_in/_in6 for one getaddrinfo result."""
    family, addr = info[0], info[4]
    if family == socket.AF_INET:
        return (
            struct.pack("=H", socket.AF_INET)
            + struct.pack("!H", addr[1])
            + socket.inet_pton(socket.AF_INET, addr[0])
            + bytes(8)
        )
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", addr[1], addr[2])
        + socket.inet_pton(socket.AF_INET6, addr[0].split("%")[0])
        + struct.pack("=I", addr[3])
    )


class _ConnectJob:
    """A blocking ``srt_connect`` in a worker thread that the caller may abandon.

    ``srt_close`` on a socket that is still connecting blocks until the connect gives up
    (measured: the rest of the connect timeout), so a cancelled caller must not close it on
    the event loop; whichever side finishes last closes it instead.
    """

    def __init__(self, lib: SrtLib, sock: int, addr: bytes, op: str) -> None:
        self.lib, self.sock, self.addr, self.op = lib, sock, addr, op
        self._lock = threading.Lock()
        self._finished = False
        self._abandoned = False

    def run(self) -> SrtError | None:
        """Runs in the worker thread; libsrt's error is thread-local, so it is read here."""
        lib, sock = self.lib, self.sock
        buf = ctypes.create_string_buffer(self.addr, len(self.addr))
        err: SrtError | None = None
        connected = False
        try:
            if int(lib.connect(sock, buf, len(self.addr))) >= 0:
                connected = True
            else:
                code, text = lib.last_error()
                reject: int | None = None
                reject_text = ""
                if code in (SRT_ECONNREJ, SRT_ENOSERVER):
                    reject = int(lib.getrejectreason(sock))
                    raw = lib.rejectreason_str(reject)
                    reject_text = raw.decode(errors="replace") if raw else ""
                err = SrtError(
                    code, text, op=self.op, reject_reason=reject, reject_text=reject_text
                )
        finally:
            with self._lock:
                self._finished = True
                if self._abandoned or not connected:
                    lib.close(sock)
        return err

    def start(self) -> asyncio.Future[SrtError | None]:
        """Run :meth:`run` in a daemon thread of its own, not asyncio's default executor: an
        abandoned connect must not hold up ``asyncio.run``'s executor shutdown (and so the
        daemon's stop) for the rest of the connect timeout."""
        bridge = LoopBridge()
        fut: asyncio.Future[SrtError | None] = bridge.loop.create_future()

        def work() -> None:
            # A future cancelled meanwhile is left alone; a closed loop has nobody waiting.
            try:
                bridge.set_result(fut, self.run())
            except Exception as e:  # not expected; handed to the awaiting task
                bridge.set_exception(fut, e)

        threading.Thread(target=work, name="srt-connect", daemon=True).start()
        return fut

    def abandon(self) -> None:
        """Called on the loop when the awaiting task is cancelled; never blocks for long."""
        with self._lock:
            self._abandoned = True
            if self._finished:
                self.lib.close(self.sock)


class SrtSender:
    """One live-mode caller connection; the muxer's messages go out through
    :meth:`send_nowait` (never blocks) or :meth:`send` (waits a bounded time)."""

    def __init__(self, lib: SrtLib, sock: int, url: SrtUrl, maxbw: int) -> None:
        self._lib = lib
        self._sock = sock
        self.url = url
        self.maxbw = maxbw
        self._closed = False
        self._last_send = time.monotonic()
        self.final_stats: SrtStats | None = None  # taken by close(), for the last log line
        # A sender dropped without close() must not leak the libsrt socket.
        self._finalizer = weakref.finalize(self, lib.close, sock)

    @classmethod
    async def connect(
        cls,
        url: SrtUrl,
        *,
        maxbw: int | None,
        inputbw: int | None = None,
        peer_idle_timeout: float = 5.0,
    ) -> SrtSender:
        """Connect as caller. ``maxbw`` (bytes/s, see :func:`maxbw_for_bitrate`) applies
        unless the URL gives its own; one of them must be set. ``inputbw`` only matters
        with ``maxbw=0`` (relative mode, not recommended). ``peer_idle_timeout`` below ~5 s
        has no effect in libsrt 1.5.1 (see docs/protocol.md). The blocking connect runs in
        a worker thread; cancelling this coroutine returns at once, and the socket is
        closed when that thread's connect ends (within the connect timeout)."""
        bw = url.maxbw if url.maxbw is not None else maxbw
        if bw is None:
            raise ValueError("maxbw: give an absolute MAXBW (2-4 x the stream's byte rate)")
        if bw < -1:
            raise ValueError(f"maxbw: {bw} is below -1")
        if not 0.1 <= peer_idle_timeout <= 600:
            raise ValueError("peer_idle_timeout: outside 0.1..600 s")
        lib = load()
        if url.passphrase is not None:
            add_secret(url.passphrase.reveal())
        if url.ignored:
            log.info("SRT URL parameters not used: %s", ", ".join(url.ignored))
        where = f"{url.host}:{url.port}"
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(url.host, url.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise SrtError(
                SRT_ENOSERVER, f"cannot resolve {url.host}: {exc}", op=f"connect to {where}"
            ) from None
        # IPv4 first: SRT listeners commonly bind 0.0.0.0 only, and "localhost" may list ::1 first.
        infos.sort(key=lambda i: i[0] != socket.AF_INET)
        addr = _sockaddr(infos[0])

        sock = int(lib.create_socket())
        if sock < 0:
            raise lib.error("socket creation")
        try:
            # TRANSTYPE first: it resets the live defaults that the rest override.
            lib.set_int(sock, SRTO_TRANSTYPE, SRTT_LIVE)
            lib.set_int(sock, SRTO_PAYLOADSIZE, LIVE_PAYLOAD_SIZE)
            lib.set_int(sock, SRTO_LATENCY, url.latency_ms)
            if url.streamid is not None:
                lib.set_bytes(sock, SRTO_STREAMID, url.streamid.encode(), "streamid")
            if url.passphrase is not None:
                secret = url.passphrase.reveal().encode()
                lib.set_bytes(sock, SRTO_PASSPHRASE, secret, "passphrase")
                if url.pbkeylen is not None:
                    lib.set_int(sock, SRTO_PBKEYLEN, url.pbkeylen)
            lib.set_int(sock, SRTO_CONNTIMEO, url.connect_timeout_ms)
            lib.set_int(sock, SRTO_SNDSYN, 0)  # non-blocking sends; RCVSYN keeps connect blocking
            lib.set_int(sock, SRTO_MAXBW, bw, 8)
            if inputbw is not None:
                lib.set_int(sock, SRTO_INPUTBW, inputbw, 8)
            lib.set_int(sock, SRTO_PEERIDLETIMEO, round(peer_idle_timeout * 1000))
        except BaseException:
            lib.close(sock)
            raise

        job = _ConnectJob(lib, sock, addr, f"connect to {where}")
        try:
            err = await job.start()
        except BaseException:
            job.abandon()
            raise
        if err is not None:
            raise err
        log.info("SRT connected to %s (maxbw %d B/s)", url.redacted(), bw)
        return cls(lib, sock, url, bw)

    @property
    def closed(self) -> bool:
        return self._closed

    def set_maxbw(self, maxbw: int) -> None:
        """A new pacing cap (bytes/s) on the live connection: the stream's bitrate
        changed. A MAXBW from the URL stays."""
        if self._closed or self.url.maxbw is not None or maxbw == self.maxbw:
            return
        self._lib.set_int(self._sock, SRTO_MAXBW, maxbw, 8)
        self.maxbw = maxbw

    def send_nowait(self, msg: bytes | bytearray | memoryview) -> bool:
        """Queue one live-mode message (whole TS packets, at most 1316 bytes).

        Returns False when libsrt's send buffer is full (the link is far behind): the
        caller drops and counts. Raises SrtError when the connection is gone; its
        ``is_reconnectable`` says whether to connect again.
        """
        n = len(msg)
        if n == 0 or n > LIVE_PAYLOAD_SIZE or n % TS_PACKET_SIZE:
            raise ValueError(f"an SRT live message is 188..1316 bytes in whole TS packets, not {n}")
        if self._closed:
            raise SrtError(SRT_EINVSOCK, "sender closed", op="send")
        if not isinstance(msg, bytes):
            msg = bytes(msg)
        if int(self._lib.sendmsg2(self._sock, msg, n, None)) >= 0:
            self._last_send = time.monotonic()
            return True
        code, text = self._lib.last_error()
        if code == SRT_EASYNCSND:
            return False
        raise SrtError(code, text, op="send")

    async def send(self, msg: bytes | bytearray | memoryview, timeout: float = 0.5) -> bool:
        """Like :meth:`send_nowait`, but waits up to ``timeout`` s for room; False if none."""
        deadline = time.monotonic() + timeout
        while not self.send_nowait(msg):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def stats(self, clear: bool = False) -> SrtStats:
        """Counters from ``srt_bistats``. ``clear`` resets libsrt's per-interval counters
        (which feed ``send_rate_mbps``); the totals reported here are never reset."""
        if self._closed:
            raise SrtError(SRT_EINVSOCK, "sender closed", op="stats")
        buf = ctypes.create_string_buffer(STATS_BUF_SIZE)
        if int(self._lib.bistats(self._sock, buf, int(clear), 1)) < 0:
            raise self._lib.error("stats")
        s = TraceBStats.from_buffer_copy(buf)
        return SrtStats(
            bytes_sent=s.byteSentUniqueTotal,
            packets_sent=s.pktSentUniqueTotal,
            packets_retransmitted=s.pktRetransTotal,
            packets_lost=s.pktSndLossTotal,
            packets_dropped=s.pktSndDropTotal,
            rtt_ms=s.msRTT,
            send_rate_mbps=s.mbpsSendRate,
            bandwidth_mbps=s.mbpsBandwidth,
            max_bw_mbps=s.mbpsMaxBW,
            snd_buffer_ms=s.msSndBuf,
            snd_buffer_packets=s.pktSndBuf,
        )

    def _unacked_packets(self) -> int:
        """Packets still in the send buffer (unacknowledged); -1 once the socket is broken."""
        if int(self._lib.getsockstate(self._sock)) >= SRTS_BROKEN:
            return -1
        blocks, nbytes = ctypes.c_size_t(0), ctypes.c_size_t(0)
        if int(self._lib.getsndbuffer(self._sock, ctypes.byref(blocks), ctypes.byref(nbytes))) < 0:
            return -1
        return blocks.value

    async def close(self, linger: float = 1.0) -> None:
        """Flush, then close: wait (up to ``linger`` s in all) until the receiver has
        acknowledged everything, and then one latency more, since the receiver holds each
        packet for the latency and discards what it still holds when we close. (SRTO_LINGER
        is 0 in live mode and would not cover that hold.)"""
        if self._closed:
            return
        deadline = time.monotonic() + max(0.0, linger)
        try:
            while time.monotonic() < deadline:
                unacked = self._unacked_packets()
                if unacked < 0:
                    break
                if unacked == 0:
                    delivered = self._last_send + self._latency_s() + 0.05
                    await asyncio.sleep(max(0.0, min(delivered, deadline) - time.monotonic()))
                    break
                await asyncio.sleep(0.01)
        finally:
            with contextlib.suppress(SrtError):
                self.final_stats = self.stats()
            self._closed = True
            self._finalizer()  # srt_close, once

    def _latency_s(self) -> float:
        """The negotiated latency (the larger of both sides'), from the stats."""
        buf = ctypes.create_string_buffer(STATS_BUF_SIZE)
        if int(self._lib.bistats(self._sock, buf, 0, 1)) < 0:
            return self.url.latency_ms / 1000
        negotiated = int(TraceBStats.from_buffer_copy(buf).msSndTsbPdDelay)
        return max(negotiated, self.url.latency_ms) / 1000

    async def __aenter__(self) -> SrtSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
