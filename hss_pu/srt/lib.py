"""A small typed ctypes binding over the system libsrt 1.5: loading and version checks,
the functions we call with their exact signatures, option ids, errors.

Why our own binding: PyPI's ``srt``/``pysrt`` are subtitle parsers, and the PyAV wheel has
no SRT protocol. libsrt is loaded on first use (:func:`load`), never at import. libsrt is
thread-safe and ctypes releases the GIL around each call; its last error is thread-local,
so it is read on the thread whose call failed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from typing import Any, Final

from hss_pu.errors import HssError
from hss_pu.logsetup import redact

__all__ = [
    "LIVE_PAYLOAD_SIZE",
    "SRT_EASYNCSND",
    "SRT_ECONNLOST",
    "SRT_ECONNREJ",
    "SRT_EINVSOCK",
    "SRT_ENOCONN",
    "SRT_ENOSERVER",
    "TS_PACKET_SIZE",
    "SrtError",
    "SrtLib",
    "SrtUnavailable",
    "TraceBStats",
    "load",
]

SONAME: Final = "libsrt.so.1.5"
MIN_VERSION: Final = 0x010500
LIVE_PAYLOAD_SIZE: Final = 1316  # 7 x 188: one SRT live message, one UDP datagram
TS_PACKET_SIZE: Final = 188
STATS_BUF_SIZE: Final = 1024  # later libsrt versions append fields to SRT_TRACEBSTATS
_TRACEBSTATS_SIZE_1_5: Final = 496

# SRT_SOCKOPT (srtcore/srt.h, 1.5.x)
SRTO_SNDSYN: Final = 1
SRTO_MAXBW: Final = 16
SRTO_LATENCY: Final = 23
SRTO_INPUTBW: Final = 24
SRTO_PASSPHRASE: Final = 26
SRTO_PBKEYLEN: Final = 27
SRTO_CONNTIMEO: Final = 36
SRTO_STREAMID: Final = 46
SRTO_PAYLOADSIZE: Final = 49
SRTO_TRANSTYPE: Final = 50
SRTO_PEERIDLETIMEO: Final = 55
SRTT_LIVE: Final = 0

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

SRTS_BROKEN: Final = 6  # SRT_SOCKSTATUS: BROKEN, CLOSING, CLOSED, NONEXIST follow


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


class TraceBStats(ctypes.Structure):
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
        size = ctypes.sizeof(TraceBStats)
        if size != _TRACEBSTATS_SIZE_1_5 or size > STATS_BUF_SIZE:
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
