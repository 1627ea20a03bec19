"""The ``PushLive.url`` of Vm: parsing and checking, and the MAXBW rule. Pure: no ctypes,
no I/O, so it is cheap to import and test.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from hss_pu.config import Secret
from hss_pu.wire.urls import redact_url

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_MS",
    "DEFAULT_LATENCY_MS",
    "SrtUrl",
    "maxbw_for_bitrate",
    "parse_srt_url",
]

# SRT's live default is 120 ms. Retransmissions need latency >= 4-5 x RTT; 200 ms covers
# home uplinks up to ~40-50 ms RTT. The platform can ask for more in the URL, and on lossy
# links should: libsrt 1.5.1's receiver re-requests a packet lost twice in the first loss
# episode of a connection only ~300 ms later (docs/protocol.md, Vm).
DEFAULT_LATENCY_MS: Final = 200
DEFAULT_CONNECT_TIMEOUT_MS: Final = 3000  # libsrt's caller default


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
        """The URL as used, shown by :func:`~hss_pu.wire.urls.redact_url`'s rule: tuning
        values stay, the streamid and the passphrase do not."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        q: list[str] = []
        if self.streamid is not None:
            q.append("streamid=" + quote(self.streamid, safe=""))
        q.append(f"latency={self.latency_ms}")
        if self.passphrase is not None:
            q.append("passphrase=" + quote(self.passphrase.reveal(), safe=""))
        if self.pbkeylen is not None:
            q.append(f"pbkeylen={self.pbkeylen}")
        q.append(f"connect_timeout={self.connect_timeout_ms}")
        if self.maxbw is not None:
            q.append(f"maxbw={self.maxbw}")
        return redact_url(f"srt://{host}:{self.port}?" + "&".join(q))

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
