"""SRT (Vm) sender: a small typed ctypes binding over the system libsrt 1.5.

Why our own binding: PyPI's ``srt``/``pysrt`` are subtitle parsers, and the PyAV wheel has no
SRT protocol, so the live service muxes MPEG-TS itself and hands 1316-byte messages to
:class:`SrtSender`. Only caller mode and live mode are bound; the tests use
``srt-live-transmit`` as the listener.

Threads: libsrt is thread-safe and ctypes releases the GIL around each call. Every call here
runs on the event loop thread (none blocks: sends are non-blocking, stats, state and close
return at once) except the blocking ``srt_connect``, which runs in a worker thread of its own
(see :class:`_ConnectJob`). libsrt's last error is thread-local, so it is read on the thread
whose call failed. An :class:`SrtSender` belongs to one event loop; do not share it across
threads. The passphrase is held as a :class:`~hss_pu.config.Secret`, registered with the
log redactor on connect, and never put in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import re
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from hss_pu.config import Secret
from hss_pu.errors import HssError
from hss_pu.logsetup import add_secret, redact, redacted_logger

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_MS",
    "DEFAULT_LATENCY_MS",
    "LIVE_PAYLOAD_SIZE",
    "SRT_EASYNCSND",
    "SRT_ECONNLOST",
    "SRT_ECONNREJ",
    "SRT_EINVSOCK",
    "SRT_ENOCONN",
    "SRT_ENOSERVER",
    "SrtError",
    "SrtLib",
    "SrtSender",
    "SrtStats",
    "SrtUnavailable",
    "SrtUrl",
    "load",
    "maxbw_for_bitrate",
    "parse_srt_url",
]

log = redacted_logger("hss_pu.srt")

SONAME: Final = "libsrt.so.1.5"
MIN_VERSION: Final = 0x010500
LIVE_PAYLOAD_SIZE: Final = 1316  # 7 x 188: one SRT live message, one UDP datagram
TS_PACKET_SIZE: Final = 188
# SRT's live default is 120 ms. Retransmissions need latency >= 4-5 x RTT; 200 ms covers
# home uplinks up to ~40-50 ms RTT. The platform can ask for more in the URL, and on lossy
# links should: libsrt 1.5.1's receiver re-requests a packet lost twice in the first loss
# episode of a connection only ~300 ms later (docs/protocol.md, Vm).
DEFAULT_LATENCY_MS: Final = 200
DEFAULT_CONNECT_TIMEOUT_MS: Final = 3000  # libsrt's caller default
_STATS_BUF_SIZE: Final = 1024  # later libsrt versions append fields to SRT_TRACEBSTATS
_TRACEBSTATS_SIZE_1_5: Final = 496

# SRT_SOCKOPT (srtcore/srt.h, 1.5.x)
_SRTO_SNDSYN: Final = 1
_SRTO_MAXBW: Final = 16
_SRTO_LATENCY: Final = 23
_SRTO_INPUTBW: Final = 24
_SRTO_PASSPHRASE: Final = 26
_SRTO_PBKEYLEN: Final = 27
_SRTO_CONNTIMEO: Final = 36
_SRTO_STREAMID: Final = 46
_SRTO_PAYLOADSIZE: Final = 49
_SRTO_TRANSTYPE: Final = 50
_SRTO_PEERIDLETIMEO: Final = 55
_SRTT_LIVE: Final = 0

# SRT_ERRNO
SRT_ENOSERVER: Final = 1001
SRT_ECONNREJ: Final = 1002
SRT_ECONNLOST: Final = 2001
SRT_ENOCONN: Final = 2002
SRT_EINVSOCK: Final = 5004
SRT_EASYNCSND: Final = 6001
_RECONNECTABLE: Final = frozenset(
    {SRT_ENOSERVER, SRT_ECONNREJ, SRT_ECONNLOST, SRT_ENOCONN, SRT_EINVSOCK}
)

# SRT_REJECT_REASON
_REJECT_NAMES: Final = (
    "UNKNOWN",
    "SYSTEM",
    "PEER",
    "RESOURCE",
    "ROGUE",
    "BACKLOG",
    "IPE",
    "CLOSE",
    "VERSION",
    "RDVCOOKIE",
    "BADSECRET",
    "UNSECURE",
    "MESSAGEAPI",
    "CONGESTION",
    "FILTER",
    "GROUP",
    "TIMEOUT",
)
SRT_REJ_BADSECRET: Final = 10
SRT_REJ_UNSECURE: Final = 11

_SRTS_BROKEN: Final = 6  # SRT_SOCKSTATUS: BROKEN, CLOSING, CLOSED, NONEXIST follow


class SrtUnavailable(HssError, RuntimeError):
    """libsrt is missing or unusable; raised on first use, never at import."""


class SrtError(HssError, OSError):
    """A libsrt failure: ``code`` is libsrt's SRT_ERRNO, ``reject_reason`` its
    SRT_REJECT_REASON for a refused connection (None otherwise)."""

    def __init__(
        self,
        code: int,
        text: str,
        *,
        op: str = "",
        reject_reason: int | None = None,
        reject_text: str = "",
    ) -> None:
        self.code = code
        self.text = text
        self.reject_reason = reject_reason
        msg = f"SRT {op + ' ' if op else ''}failed: {text} [{code}]"
        if reject_reason is not None:
            why = f"{reject_text} " if reject_text else ""
            msg += f"; rejected: {why}({self.reject_name}, {reject_reason})"
        # Defence in depth: libsrt never echoes the passphrase, but redact anyway.
        self.message = redact(msg)
        super().__init__(code, self.message)

    @property
    def reject_name(self) -> str | None:
        r = self.reject_reason
        if r is None:
            return None
        if 0 <= r < len(_REJECT_NAMES):
            return _REJECT_NAMES[r]
        return "SERVER" if r < 2000 else "USER"  # SRT_REJC_PREDEFINED / USERDEFINED

    @property
    def is_reconnectable(self) -> bool:
        """True when the live service should connect again (after its back-off)."""
        return self.code in _RECONNECTABLE

    @property
    def is_auth_failure(self) -> bool:
        """Wrong or missing passphrase: retrying will fail the same way until the URL changes."""
        return self.reject_reason in (SRT_REJ_BADSECRET, SRT_REJ_UNSECURE)

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- URL


@dataclasses.dataclass(frozen=True, repr=False, kw_only=True)
class SrtUrl:
    """A validated ``PushLive`` URL; str/repr never show the passphrase."""

    host: str
    port: int
    streamid: str | None = None
    latency_ms: int = DEFAULT_LATENCY_MS
    passphrase: Secret | None = None
    pbkeylen: int | None = None  # None: libsrt's default (16)
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    maxbw: int | None = None  # bytes/s; -1 unlimited; None: the caller's absolute value
    ignored: tuple[str, ...] = ()  # parameter names we do not use, for a log line

    def redacted(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        q: list[str] = []
        if self.streamid is not None:
            q.append("streamid=" + quote(self.streamid, safe="#!:,=/@.-_~"))
        q.append(f"latency={self.latency_ms}")
        if self.passphrase is not None:
            q.append("passphrase=***")
        if self.pbkeylen is not None:
            q.append(f"pbkeylen={self.pbkeylen}")
        q.append(f"connect_timeout={self.connect_timeout_ms}")
        if self.maxbw is not None:
            q.append(f"maxbw={self.maxbw}")
        return f"srt://{host}:{self.port}?" + "&".join(q)

    __str__ = redacted

    def __repr__(self) -> str:
        return f"SrtUrl({self.redacted()!r})"


_MAX_STREAMID_BYTES: Final = 512


def _bad(param: str, why: str) -> ValueError:
    return ValueError(f"SRT URL parameter {param!r}: {why}")


def _int_param(params: dict[str, str], name: str, lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        val = int(raw, 10)
    except ValueError:
        raise _bad(name, f"not an integer ({raw[:32]!r})") from None
    if not lo <= val <= hi:
        raise _bad(name, f"{val} is outside {lo}..{hi}")
    return val


_OPTION_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KNOWN: Final = frozenset(
    {
        "streamid",
        "latency",
        "passphrase",
        "pbkeylen",
        "connect_timeout",
        "conntimeo",
        "maxbw",
        "mode",
    }
)


def parse_srt_url(url: str, default_streamid: str | None = None) -> SrtUrl:
    """Validate a ``PushLive.url`` (srt-live-transmit conventions, latency in ms).

    Pure. Errors are ValueError naming the parameter; none carries the passphrase or the URL.
    Parameter names are matched case-insensitively so that a ``Passphrase=`` cannot silently
    turn into an unencrypted stream; other parameters (srt-live-transmit has many) are kept
    in ``ignored``.
    """
    if not isinstance(url, str) or len(url) > 4096:
        raise _bad("url", "not a string of at most 4096 characters")
    # No fragments: an access-control streamid ("#!::r=...,m=publish") may carry a raw '#'.
    parts = urlsplit(url.strip(), allow_fragments=False)
    if parts.scheme.lower() != "srt":
        raise _bad("scheme", f"{parts.scheme!r} is not srt")
    if "@" in parts.netloc:
        raise _bad("host", "user information is not allowed")
    host = parts.hostname
    if not host:
        raise _bad("host", "missing (only caller mode is supported)")
    try:
        port = parts.port
    except ValueError:
        raise _bad("port", "not a valid port number") from None
    if port is None or port == 0:
        raise _bad("port", "missing")

    params: dict[str, str] = {}
    ignored: list[str] = []
    for item in parts.query.split("&"):
        if not item:
            continue
        raw_key, _, raw_val = item.partition("=")
        key = unquote(raw_key).strip().lower()
        if key not in _KNOWN:
            # Only name-like keys are kept: a passphrase with a raw '&' in it would otherwise
            # leave its tail here, on its way to a log line.
            if _OPTION_NAME.fullmatch(key) and key not in ignored:
                ignored.append(key)
            continue
        if key in params:
            raise _bad(key, "given twice")
        # unquote, not unquote_plus: '+' is literal in srt-live-transmit URIs.
        params[key] = unquote(raw_val)

    mode = params.get("mode", "caller").lower()
    if mode != "caller":
        raise _bad("mode", f"{mode[:32]!r} is not supported (caller only)")

    streamid: str | None = params.get("streamid") or default_streamid or None
    if streamid is not None and len(streamid.encode()) > _MAX_STREAMID_BYTES:
        raise _bad("streamid", f"longer than {_MAX_STREAMID_BYTES} bytes")

    passphrase: Secret | None = None
    if "passphrase" in params:
        n = len(params["passphrase"].encode())
        if not 10 <= n <= 79:  # never echo the value, not even its prefix
            raise _bad("passphrase", f"must be 10 to 79 bytes long (got {n})")
        passphrase = Secret(params["passphrase"])

    pbkeylen = _int_param(params, "pbkeylen", 0, 32)
    if pbkeylen not in (None, 16, 24, 32):
        raise _bad("pbkeylen", f"{pbkeylen} is not 16, 24 or 32")

    if "connect_timeout" in params and "conntimeo" in params:
        raise _bad("connect_timeout", "given twice (as connect_timeout and conntimeo)")
    ctimeo = _int_param(params, "connect_timeout", 100, 120_000)
    if ctimeo is None:
        ctimeo = _int_param(params, "conntimeo", 100, 120_000)

    latency = _int_param(params, "latency", 0, 60_000)
    maxbw = _int_param(params, "maxbw", -1, 10**10)
    if maxbw == 0:  # relative mode: the key-frame trap in the notes; use the caller's cap
        maxbw = None

    return SrtUrl(
        host=host,
        port=port,
        streamid=streamid,
        latency_ms=DEFAULT_LATENCY_MS if latency is None else latency,
        passphrase=passphrase,
        pbkeylen=pbkeylen,
        connect_timeout_ms=DEFAULT_CONNECT_TIMEOUT_MS if ctimeo is None else ctimeo,
        maxbw=maxbw,
        ignored=tuple(ignored),
    )


def maxbw_for_bitrate(bitrate_bps: int, factor: float = 3.0) -> int:
    """An absolute MAXBW (bytes/s) for a stream of ``bitrate_bps``.

    The default relative cap (1.25 x input rate) paces a big I-frame out so slowly that
    retransmissions miss the latency window; 2-4 x the bitrate measured loss-free.
    """
    if bitrate_bps <= 0 or not 1.0 <= factor <= 10.0:
        raise ValueError("bitrate must be positive and factor within 1..10")
    return max(int(bitrate_bps * factor / 8), 125_000)


# --------------------------------------------------------------------------- library


class _TraceBStats(ctypes.Structure):
    """SRT_TRACEBSTATS (struct CBytePerfMon, srtcore/srt.h) as of 1.5.0: 496 bytes on LP64
    and on 32-bit ARM (no pointers or longs; int64/double 8-aligned on both). Newer
    versions only append, so libsrt writes into a 1 KiB buffer and we read this prefix."""

    _fields_ = [
        ("msTimeStamp", ctypes.c_int64),
        ("pktSentTotal", ctypes.c_int64),
        ("pktRecvTotal", ctypes.c_int64),
        ("pktSndLossTotal", ctypes.c_int),
        ("pktRcvLossTotal", ctypes.c_int),
        ("pktRetransTotal", ctypes.c_int),
        ("pktSentACKTotal", ctypes.c_int),
        ("pktRecvACKTotal", ctypes.c_int),
        ("pktSentNAKTotal", ctypes.c_int),
        ("pktRecvNAKTotal", ctypes.c_int),
        ("usSndDurationTotal", ctypes.c_int64),
        ("pktSndDropTotal", ctypes.c_int),
        ("pktRcvDropTotal", ctypes.c_int),
        ("pktRcvUndecryptTotal", ctypes.c_int),
        ("byteSentTotal", ctypes.c_uint64),
        ("byteRecvTotal", ctypes.c_uint64),
        ("byteRcvLossTotal", ctypes.c_uint64),
        ("byteRetransTotal", ctypes.c_uint64),
        ("byteSndDropTotal", ctypes.c_uint64),
        ("byteRcvDropTotal", ctypes.c_uint64),
        ("byteRcvUndecryptTotal", ctypes.c_uint64),
        ("pktSent", ctypes.c_int64),
        ("pktRecv", ctypes.c_int64),
        ("pktSndLoss", ctypes.c_int),
        ("pktRcvLoss", ctypes.c_int),
        ("pktRetrans", ctypes.c_int),
        ("pktRcvRetrans", ctypes.c_int),
        ("pktSentACK", ctypes.c_int),
        ("pktRecvACK", ctypes.c_int),
        ("pktSentNAK", ctypes.c_int),
        ("pktRecvNAK", ctypes.c_int),
        ("mbpsSendRate", ctypes.c_double),
        ("mbpsRecvRate", ctypes.c_double),
        ("usSndDuration", ctypes.c_int64),
        ("pktReorderDistance", ctypes.c_int),
        ("pktRcvAvgBelatedTime", ctypes.c_double),
        ("pktRcvBelated", ctypes.c_int64),
        ("pktSndDrop", ctypes.c_int),
        ("pktRcvDrop", ctypes.c_int),
        ("pktRcvUndecrypt", ctypes.c_int),
        ("byteSent", ctypes.c_uint64),
        ("byteRecv", ctypes.c_uint64),
        ("byteRcvLoss", ctypes.c_uint64),
        ("byteRetrans", ctypes.c_uint64),
        ("byteSndDrop", ctypes.c_uint64),
        ("byteRcvDrop", ctypes.c_uint64),
        ("byteRcvUndecrypt", ctypes.c_uint64),
        ("usPktSndPeriod", ctypes.c_double),
        ("pktFlowWindow", ctypes.c_int),
        ("pktCongestionWindow", ctypes.c_int),
        ("pktFlightSize", ctypes.c_int),
        ("msRTT", ctypes.c_double),
        ("mbpsBandwidth", ctypes.c_double),
        ("byteAvailSndBuf", ctypes.c_int),
        ("byteAvailRcvBuf", ctypes.c_int),
        ("mbpsMaxBW", ctypes.c_double),
        ("byteMSS", ctypes.c_int),
        ("pktSndBuf", ctypes.c_int),
        ("byteSndBuf", ctypes.c_int),
        ("msSndBuf", ctypes.c_int),
        ("msSndTsbPdDelay", ctypes.c_int),
        ("pktRcvBuf", ctypes.c_int),
        ("byteRcvBuf", ctypes.c_int),
        ("msRcvBuf", ctypes.c_int),
        ("msRcvTsbPdDelay", ctypes.c_int),
        ("pktSndFilterExtraTotal", ctypes.c_int),
        ("pktRcvFilterExtraTotal", ctypes.c_int),
        ("pktRcvFilterSupplyTotal", ctypes.c_int),
        ("pktRcvFilterLossTotal", ctypes.c_int),
        ("pktSndFilterExtra", ctypes.c_int),
        ("pktRcvFilterExtra", ctypes.c_int),
        ("pktRcvFilterSupply", ctypes.c_int),
        ("pktRcvFilterLoss", ctypes.c_int),
        ("pktReorderTolerance", ctypes.c_int),
        ("pktSentUniqueTotal", ctypes.c_int64),
        ("pktRecvUniqueTotal", ctypes.c_int64),
        ("byteSentUniqueTotal", ctypes.c_uint64),
        ("byteRecvUniqueTotal", ctypes.c_uint64),
        ("pktSentUnique", ctypes.c_int64),
        ("pktRecvUnique", ctypes.c_int64),
        ("byteSentUnique", ctypes.c_uint64),
        ("byteRecvUnique", ctypes.c_uint64),
    ]


_CFunc = Callable[..., Any]


class SrtLib:
    """The loaded libsrt with every function we call declared (argtypes and restype:
    int64 and pointer arguments go wrong on 32-bit ARM without them)."""

    def __init__(self, dll: ctypes.CDLL, path: str) -> None:
        self.path = path
        c_int, c_i32, c_char_p, c_void_p = (
            ctypes.c_int,
            ctypes.c_int32,
            ctypes.c_char_p,
            ctypes.c_void_p,
        )
        p_int, p_size = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t)

        def fn(name: str, restype: Any, *argtypes: Any) -> _CFunc:
            f = getattr(dll, name)
            f.restype = restype
            f.argtypes = list(argtypes)
            return f  # type: ignore[no-any-return]

        self.getversion = fn("srt_getversion", ctypes.c_uint32)
        self.startup = fn("srt_startup", c_int)
        self.create_socket = fn("srt_create_socket", c_i32)
        self.setsockflag = fn("srt_setsockflag", c_int, c_i32, c_int, c_void_p, c_int)
        self.connect = fn("srt_connect", c_int, c_i32, c_void_p, c_int)
        self.close = fn("srt_close", c_int, c_i32)
        self.sendmsg2 = fn("srt_sendmsg2", c_int, c_i32, c_char_p, c_int, c_void_p)
        self.getlasterror = fn("srt_getlasterror", c_int, p_int)
        self.getlasterror_str = fn("srt_getlasterror_str", c_char_p)
        self.clearlasterror = fn("srt_clearlasterror", None)
        self.getrejectreason = fn("srt_getrejectreason", c_int, c_i32)
        self.rejectreason_str = fn("srt_rejectreason_str", c_char_p, c_int)
        self.bistats = fn("srt_bistats", c_int, c_i32, c_void_p, c_int, c_int)
        self.getsockstate = fn("srt_getsockstate", c_int, c_i32)
        self.getsndbuffer = fn("srt_getsndbuffer", c_int, c_i32, p_size, p_size)

        version = int(self.getversion())
        self.version = version
        if version < MIN_VERSION or version >> 16 != 1:
            raise SrtUnavailable(
                f"libsrt {_fmt_version(version)} at {path} is too old: need 1.5.0 or later "
                "(install libsrt1.5-openssl)"
            )
        size = ctypes.sizeof(_TraceBStats)
        if size != _TRACEBSTATS_SIZE_1_5 or size > _STATS_BUF_SIZE:
            raise SrtUnavailable(
                f"SRT_TRACEBSTATS is {size} bytes on this ABI, expected "
                f"{_TRACEBSTATS_SIZE_1_5}: the stats layout cannot be trusted"
            )
        if int(self.startup()) < 0:
            raise SrtUnavailable(f"srt_startup failed: {self.last_error()[1]}")

    def last_error(self) -> tuple[int, str]:
        """This thread's last libsrt error (code, text); libsrt keeps it per thread."""
        sys_errno = ctypes.c_int(0)
        code = int(self.getlasterror(ctypes.byref(sys_errno)))
        raw = self.getlasterror_str()
        text = raw.decode(errors="replace") if raw else "unknown error"
        return code, text

    def error(self, op: str) -> SrtError:
        code, text = self.last_error()
        return SrtError(code, text, op=op)

    def set_int(self, sock: int, opt: int, value: int, width: int = 4) -> None:
        buf: ctypes.c_int32 | ctypes.c_int64 = (
            ctypes.c_int32(value) if width == 4 else ctypes.c_int64(value)
        )
        if int(self.setsockflag(sock, opt, ctypes.byref(buf), width)) < 0:
            raise self.error(f"setting option {opt}")

    def set_bytes(self, sock: int, opt: int, value: bytes, what: str) -> None:
        buf = ctypes.create_string_buffer(value, len(value))
        if int(self.setsockflag(sock, opt, buf, len(value))) < 0:
            raise self.error(f"setting {what}")  # the value itself never goes into the text


def _fmt_version(v: int) -> str:
    return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"


_lib: SrtLib | None = None
_lib_lock = threading.Lock()


def load() -> SrtLib:
    """The process-wide :class:`SrtLib`, loaded and started on first use."""
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is None:
            candidates = [SONAME]
            found = ctypes.util.find_library("srt")
            if found and found != SONAME:
                candidates.append(found)
            dll: ctypes.CDLL | None = None
            path = SONAME
            for path in candidates:
                try:
                    dll = ctypes.CDLL(path)
                    break
                except OSError:
                    continue
            if dll is None:
                raise SrtUnavailable(
                    "libsrt 1.5 not found (libsrt.so.1.5): install libsrt1.5-openssl"
                )
            try:
                _lib = SrtLib(dll, path)
            except AttributeError as exc:
                raise SrtUnavailable(f"{path} lacks a needed function: {exc}") from None
    return _lib


# --------------------------------------------------------------------------- sender


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
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[SrtError | None] = loop.create_future()

        def deliver(result: SrtError | None, exc: BaseException | None) -> None:
            if fut.done():  # cancelled meanwhile
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        def work() -> None:
            try:
                result, exc = self.run(), None
            except Exception as e:  # not expected; handed to the awaiting task
                result, exc = None, e
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(deliver, result, exc)

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
            lib.set_int(sock, _SRTO_TRANSTYPE, _SRTT_LIVE)
            lib.set_int(sock, _SRTO_PAYLOADSIZE, LIVE_PAYLOAD_SIZE)
            lib.set_int(sock, _SRTO_LATENCY, url.latency_ms)
            if url.streamid is not None:
                lib.set_bytes(sock, _SRTO_STREAMID, url.streamid.encode(), "streamid")
            if url.passphrase is not None:
                secret = url.passphrase.reveal().encode()
                lib.set_bytes(sock, _SRTO_PASSPHRASE, secret, "passphrase")
                if url.pbkeylen is not None:
                    lib.set_int(sock, _SRTO_PBKEYLEN, url.pbkeylen)
            lib.set_int(sock, _SRTO_CONNTIMEO, url.connect_timeout_ms)
            lib.set_int(sock, _SRTO_SNDSYN, 0)  # non-blocking sends; RCVSYN keeps connect blocking
            lib.set_int(sock, _SRTO_MAXBW, bw, 8)
            if inputbw is not None:
                lib.set_int(sock, _SRTO_INPUTBW, inputbw, 8)
            lib.set_int(sock, _SRTO_PEERIDLETIMEO, round(peer_idle_timeout * 1000))
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
        buf = ctypes.create_string_buffer(_STATS_BUF_SIZE)
        if int(self._lib.bistats(self._sock, buf, int(clear), 1)) < 0:
            raise self._lib.error("stats")
        s = _TraceBStats.from_buffer_copy(buf)
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
        if int(self._lib.getsockstate(self._sock)) >= _SRTS_BROKEN:
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
        buf = ctypes.create_string_buffer(_STATS_BUF_SIZE)
        if int(self._lib.bistats(self._sock, buf, 0, 1)) < 0:
            return self.url.latency_ms / 1000
        negotiated = int(_TraceBStats.from_buffer_copy(buf).msSndTsbPdDelay)
        return max(negotiated, self.url.latency_ms) / 1000

    async def __aenter__(self) -> SrtSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
