"""Which URLs the platform hands the device it may use (wire-notes "URL safety"). Pure.

A platform (or whoever got hold of one) must not be able to turn the camera into a probe
of the home network it sits in: a Snapshot to ``http://192.168.1.1/cgi-bin/...`` or a
segment upload to ``https://router.lan/`` would carry a picture, a recording and the
device's ``Mac-Identity`` to a host nobody chose. So every such URL (snapshot, alarm
picture, segment upload and its ``cbk_url``, later logs, firmware and playback):

- is ``https://`` (``http://`` only with ``platform.allow_insecure``), with a host;
- names a host whose *every* address is public: no loopback, link-local, multicast,
  private, unspecified or otherwise non-global address (an IPv4 address hidden in an
  IPv6 one, ``::ffff:a.b.c.d``, 6to4 ``2002::/16`` or NAT64 ``64:ff9b::/96``, counts as
  that IPv4 address);
- unless its host is *exempt*: the host the device reached Vs or Vd on (a platform on
  the LAN keeps working), or one listed in ``platform.allowed_hosts``. A host is
  compared as written (lower case, without a trailing dot or IPv6 brackets): an
  exempt name does not exempt the addresses it resolves to, so another name for them
  is still checked.

The resolution itself (every address a name has) is I/O and lives in clients/http.py;
this module only says yes or no, with a reason that is safe to log.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from hss_pu.wire.urls import redact_url

__all__ = [
    "MAX_ALLOWED_HOSTS",
    "Target",
    "UrlRefused",
    "address_problem",
    "check_addresses",
    "host_problem",
    "host_target",
    "is_exempt",
    "normalize_host",
    "parse_target",
]

MAX_ALLOWED_HOSTS: Final = 64
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
# A DNS label (RFC 1123, plus "_" which LAN names use).
_LABEL: Final = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


class UrlRefused(ValueError):
    """A URL the device will not use; the message names it without its secrets."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: ``host`` normalized, ``literal`` when it is an IP address."""

    scheme: str
    host: str
    port: int
    literal: IpAddress | None


def normalize_host(host: str) -> str:
    """A host as compared against the exempt ones: lower case, no trailing dot, no
    brackets around an IPv6 literal, an IP literal in its canonical form."""
    h = host.strip().lower().removeprefix("[").removesuffix("]").removesuffix(".")
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return h


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be an entry of ``platform.allowed_hosts`` (None: it can)."""
    h = normalize_host(host)
    try:
        ipaddress.ip_address(h)
        return None
    except ValueError:
        pass
    if not h or len(h) > 253 or not all(_LABEL.match(x) for x in h.split(".")):
        return f"{host[:80]!r} is neither an IP address nor a host name"
    return None


def parse_target(url: str, *, allow_insecure: bool) -> Target:
    """The URL's scheme, host and port, or UrlRefused (scheme, no host, bad port)."""
    where = redact_url(url)
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        raise UrlRefused(f"not a usable URL ({where})") from None
    scheme = u.scheme.lower()
    if scheme == "http" and not allow_insecure:
        raise UrlRefused(f"plain http:// refused, platform.allow_insecure is off ({where})")
    if scheme not in ("https", "http"):
        raise UrlRefused(f"not an https:// URL ({where})")
    if not u.hostname:
        raise UrlRefused(f"no host in the URL ({where})")
    if port == 0:
        raise UrlRefused(f"port 0 ({where})")
    return host_target(u.hostname, port or (443 if scheme == "https" else 80), scheme)


def host_target(host: str, port: int, scheme: str = "https") -> Target:
    """The target of a connection to ``host`` (a name or an IP literal) and ``port``."""
    h = normalize_host(host)
    try:
        literal: IpAddress | None = ipaddress.ip_address(h)
    except ValueError:
        literal = None
    return Target(scheme, h, port, literal)


def is_exempt(host: str, exempt: Iterable[str]) -> bool:
    """``host`` is one of the exempt hosts (the platform's, the configured ones)."""
    h = normalize_host(host)
    return any(h == normalize_host(e) for e in exempt if e)


def _embedded_ipv4(addr: IpAddress) -> IpAddress:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), else itself."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.sixtofour is not None:
            return addr.sixtofour
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def address_problem(address: str | IpAddress) -> str | None:
    """What kind of non-public address this is ("loopback", ...), None for a public one
    (or for text that is not an address: the caller resolves names first)."""
    try:
        addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return None
    addr = _embedded_ipv4(addr)
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_private or not addr.is_global:
        return "private"
    return None


def check_addresses(url: str, target: Target, addresses: Iterable[str]) -> None:
    """UrlRefused unless every address ``target.host`` resolved to is public (the caller
    skips this for an exempt host), and there is at least one."""
    seen = False
    for a in addresses:
        seen = True
        problem = address_problem(a)
        if problem is not None:
            host = target.host if target.literal is None else "the address"
            raise UrlRefused(
                f"{host} is {problem} ({a}), not allowed for platform URLs unless listed in "
                f"platform.allowed_hosts ({redact_url(url)})"
            )
    if not seen:
        raise UrlRefused(f"{target.host} has no address ({redact_url(url)})")
