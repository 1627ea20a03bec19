"""Vs (scheduling, clause 9.3.1 / Table I.1): the getServerAddr exchange, no I/O."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

import msgspec

from hss_pu.errors import HssError

__all__ = [
    "MAC_PATTERN",
    "ServerAddr",
    "VsFormatError",
    "encode_server_addr",
    "parse_server_addr",
    "server_addr_path",
    "vd_base_url",
]

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]

# A device MAC as macid / Mac-Identity carry it: six colon-separated hex pairs.
MAC_PATTERN = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


class VsFormatError(HssError, ValueError):
    """The Vs reply is not something we can schedule on."""


class _RawServerAddr(msgspec.Struct, kw_only=True):
    # Field names are the table's; unknown fields are ignored (tolerant reader).
    PassDomain: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    PassPort: Port = 0
    Secure_PassPort: Port = 0
    P2p_passDomain: str = ""
    P2p_passPort: Port = 0
    TurnDomain: str = ""
    TurnPort: Port = 0
    HibernationDomain: str = ""
    SyncTime: float | None = None
    Timestamp: float | None = None
    timestamp: float | None = None


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


def _seconds(value: float) -> float:
    # wire-notes: SyncTime is ms; Timestamp is s; anything above 1e11 is ms whatever its name.
    return value / 1000.0 if value > 1e11 else value


def server_addr_path(mac: str) -> str:
    return "/Vs/getServerAddr?" + urlencode({"macid": mac})


def parse_server_addr(body: bytes) -> ServerAddr:
    try:
        raw = msgspec.json.decode(body, type=_RawServerAddr)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise VsFormatError(f"bad getServerAddr reply: {exc}") from None
    if raw.PassPort == 0 and raw.Secure_PassPort == 0:
        raise VsFormatError("bad getServerAddr reply: neither PassPort nor Secure_PassPort")
    t = next((v for v in (raw.SyncTime, raw.Timestamp, raw.timestamp) if v is not None), None)
    return ServerAddr(
        pass_domain=raw.PassDomain,
        pass_port=raw.PassPort,
        secure_pass_port=raw.Secure_PassPort,
        p2p_domain=raw.P2p_passDomain,
        p2p_port=raw.P2p_passPort,
        turn_domain=raw.TurnDomain,
        turn_port=raw.TurnPort,
        hibernation_domain=raw.HibernationDomain,
        platform_time=_seconds(t) if t is not None and t > 0 else None,
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
