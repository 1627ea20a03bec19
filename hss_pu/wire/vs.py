"""Vs (scheduling, clause 9.3.1 / Table I.1): the getServerAddr exchange, no I/O."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlencode

import msgspec

from hss_pu.errors import HssError
from hss_pu.wire.timewindow import WINDOW, plausible_time

__all__ = [
    "MAC_PATTERN",
    "ServerAddr",
    "VsFormatError",
    "encode_server_addr",
    "parse_server_addr",
    "server_addr_path",
    "valid_host",
    "vd_base_url",
]

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]

# A device MAC as macid / Mac-Identity carry it: six colon-separated hex pairs.
MAC_PATTERN = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


class VsFormatError(HssError, ValueError):
    """The Vs reply is not something we can schedule on."""


class _RawServerAddr(msgspec.Struct, kw_only=True):
    # Field names are the table's; unknown fields are ignored (tolerant reader). Strings
    # are trimmed and checked after decoding; times are read one by one (a bad time is
    # ignored, not fatal).
    PassDomain: str
    PassPort: Port = 0
    Secure_PassPort: Port = 0
    P2p_passDomain: str = ""
    P2p_passPort: Port = 0
    TurnDomain: str = ""
    TurnPort: Port = 0
    HibernationDomain: str = ""
    SyncTime: msgspec.Raw = msgspec.Raw()
    Timestamp: msgspec.Raw = msgspec.Raw()
    timestamp: msgspec.Raw = msgspec.Raw()


class ServerAddr(msgspec.Struct, frozen=True, kw_only=True):
    pass_domain: str
    pass_port: int
    secure_pass_port: int
    p2p_domain: str = ""
    p2p_port: int = 0
    turn_domain: str = ""
    turn_port: int = 0
    hibernation_domain: str = ""
    platform_time: float | None = None  # epoch seconds
    # What the reply carried that we could not use, one note per field, for the log.
    ignored: tuple[str, ...] = ()


# One DNS label (RFC 1123): letters, digits, hyphens, 1..63, no hyphen at either end.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def valid_host(host: str) -> str | None:
    """``host`` as a URL may carry it (IPv6 without brackets), or None when it is neither
    an IP literal nor a host name that the resolver's IDNA step accepts."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        return inner if "%" not in inner and _ip_version(inner) == 6 else None
    if "%" not in host and _ip_version(host):
        return host
    name = host[:-1] if host.endswith(".") else host
    if not 0 < len(name) <= 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    # "1.2.3.999" is no IP address, and no top-level domain is all digits.
    return None if labels[-1].isdigit() else host


def _ip_version(text: str) -> int:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


def _host_port(value: str) -> bool:
    """HibernationDomain: a host, optionally with ``:port``."""
    host, sep, port = value.rpartition(":")
    if sep and port.isascii() and port.isdigit() and valid_host(host) and int(port) <= 65535:
        return True
    return valid_host(value) is not None


def _seconds(value: float) -> float:
    # wire-notes: SyncTime is ms; Timestamp is s; anything above 1e11 is ms whatever its name.
    return value / 1000.0 if value > 1e11 else value


def _platform_time(raw: _RawServerAddr, notes: list[str]) -> float | None:
    """The first of SyncTime, Timestamp, timestamp that is a time in the window."""
    for name in ("SyncTime", "Timestamp", "timestamp"):
        text: msgspec.Raw = getattr(raw, name)
        if not text or bytes(text) == b"null":
            continue
        try:
            value = _seconds(msgspec.json.decode(text, type=float))
        except (msgspec.ValidationError, msgspec.DecodeError):
            notes.append(f"{name}: not a number; ignored")
            continue
        if not plausible_time(value):
            notes.append(f"{name}: {value:.6g} s is outside {WINDOW}; ignored")
            continue
        return value
    return None


def server_addr_path(mac: str) -> str:
    return "/Vs/getServerAddr?" + urlencode({"macid": mac})


def parse_server_addr(body: bytes) -> ServerAddr:
    """The reply, checked: an unusable PassDomain or port raises VsFormatError (a failed
    attempt); a bad optional field is left out with a note in ``ignored``."""
    try:
        raw = msgspec.json.decode(body, type=_RawServerAddr)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise VsFormatError(f"bad getServerAddr reply: {exc}") from None
    except (RecursionError, UnicodeError):
        # msgspec recurses per nesting level, even in a field it skips: a reply of 10^5
        # "[" must be a failed attempt, not an exception that ends the link task.
        raise VsFormatError("bad getServerAddr reply: not JSON (nested too deeply)") from None
    if raw.PassPort == 0 and raw.Secure_PassPort == 0:
        raise VsFormatError("bad getServerAddr reply: neither PassPort nor Secure_PassPort")
    domain = valid_host(raw.PassDomain.strip())
    if domain is None:
        shown = raw.PassDomain.strip()[:80].encode("ascii", "backslashreplace").decode()
        raise VsFormatError(
            f"bad getServerAddr reply: PassDomain {shown!r} is neither a host name nor an IP"
        )
    notes: list[str] = []

    def optional(name: str, value: str, ok: bool) -> str:
        if value and not ok:
            notes.append(f"{name}: not a host name; ignored")
            return ""
        return value

    p2p, turn, hib = (
        raw.P2p_passDomain.strip(),
        raw.TurnDomain.strip(),
        raw.HibernationDomain.strip(),
    )
    return ServerAddr(
        pass_domain=domain,
        pass_port=raw.PassPort,
        secure_pass_port=raw.Secure_PassPort,
        p2p_domain=optional("P2p_passDomain", p2p, valid_host(p2p) is not None),
        p2p_port=raw.P2p_passPort,
        turn_domain=optional("TurnDomain", turn, valid_host(turn) is not None),
        turn_port=raw.TurnPort,
        hibernation_domain=optional("HibernationDomain", hib, _host_port(hib)),
        platform_time=_platform_time(raw, notes),
        ignored=tuple(notes),
    )


def encode_server_addr(addr: ServerAddr) -> bytes:
    """The platform side: the reply body, time as SyncTime in ms."""
    body: dict[str, object] = {
        "PassDomain": addr.pass_domain,
        "PassPort": addr.pass_port,
        "Secure_PassPort": addr.secure_pass_port,
        "P2p_passDomain": addr.p2p_domain,
        "P2p_passPort": addr.p2p_port,
        "TurnDomain": addr.turn_domain,
        "TurnPort": addr.turn_port,
        "HibernationDomain": addr.hibernation_domain,
    }
    if addr.platform_time is not None:
        body["SyncTime"] = round(addr.platform_time * 1000)
    return msgspec.json.encode(body)


def vd_base_url(addr: ServerAddr, *, allow_insecure: bool) -> str:
    """``wss://PassDomain:Secure_PassPort/Vd``; ws:// only when allowed (wire-notes)."""
    host = addr.pass_domain
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if addr.secure_pass_port:
        return f"wss://{host}:{addr.secure_pass_port}/Vd"
    if not allow_insecure:
        raise VsFormatError(
            "the platform offers only plain ws:// for Vd (Secure_PassPort = 0) and "
            "platform.allow_insecure is off"
        )
    return f"ws://{host}:{addr.pass_port}/Vd"
