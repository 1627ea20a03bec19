"""What of a URL may be shown in a log line, an error or ``hss-pu status``: one rule.

A URL from the platform or the config can carry secrets in its user info
(``rtsp://admin:pw@cam``), its query (an SRT ``passphrase``, the ``X-Amz-Signature`` or
``token`` of a signed upload URL, a bare ``?<token>``) and its fragment. No list of
secret names can be complete, so the rule denies by default:

- user info becomes ``***@`` (a reader still sees that there was some);
- each query parameter keeps its name, when the name looks like one (letters, digits,
  ``_.-``, at most 64), and loses its value (``***``); only a plain integer given to one
  of :data:`SHOWN_OPTIONS` (transport tuning such as SRT's ``latency``) is kept;
- a query item without ``=`` and a name that is not name-like become ``***``;
- the fragment is dropped; scheme, host, port and path are kept as given.

Anything that is not a URL (``emulated``, ``/dev/video0``) comes back unchanged. Pure: no
I/O, so every layer can use it.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_plus, urlsplit

__all__ = ["REDACTED", "SHOWN_OPTIONS", "UNPARSEABLE", "redact_url", "scrub_url"]

REDACTED: Final = "***"
UNPARSEABLE: Final = "<unparseable URL>"

# Query parameters whose integer values are tuning, never a secret (SRT's URL options).
SHOWN_OPTIONS: Final = frozenset(
    {"latency", "rcvlatency", "peerlatency", "pbkeylen", "connect_timeout", "conntimeo", "maxbw"}
)

_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_INTEGER: Final = re.compile(r"-?[0-9]{1,12}")
# Values shorter than this are not searched for in free text: they would mangle it.
_MIN_SCRUB: Final = 4


def redact_url(url: str) -> str:
    """``url`` fit for logs, errors and status (the rule in the module docstring)."""
    try:
        # No fragment split: an SRT streamid may hold a raw '#'; in a query it ends up
        # inside a redacted value, in a path it is cut off below.
        parts = urlsplit(url, allow_fragments=False)
    except ValueError:  # an unbalanced '[' in the host, ...
        return UNPARSEABLE
    _userinfo, at, host = parts.netloc.rpartition("@")
    path = parts.path.partition("#")[0]
    if not at and not parts.query and path == parts.path:
        return url
    out = f"{parts.scheme}:" if parts.scheme else ""
    if parts.netloc or url[len(out) :].startswith("//"):
        out += "//" + (f"{REDACTED}@{host}" if at else host)
    out += path
    query = _redact_query(parts.query)
    return f"{out}?{query}" if query else out


def _redact_query(query: str) -> str:
    out: list[str] = []
    for item in query.split("&"):
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq or not _NAME.fullmatch(name):
            out.append(REDACTED)
        elif name.lower() in SHOWN_OPTIONS and _INTEGER.fullmatch(value):
            out.append(item)
        else:
            out.append(f"{name}={REDACTED}")
    return "&".join(out)


def scrub_url(text: str, url: str) -> str:
    """``text`` (an exception message from an HTTP or media library) with ``url`` and
    the secrets it carries replaced: the URL by :func:`redact_url`'s form, then its
    user info and its query values (raw and percent-decoded) wherever they still appear,
    since a server or a library may echo one alone ("signature X expired")."""
    if not url:
        return text
    text = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url, allow_fragments=False)
    except ValueError:
        return text
    secrets: set[str] = set()
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        secrets.add(userinfo)
        secrets.update(userinfo.split(":", 1))
    for item in parts.query.split("&"):
        name, eq, value = item.partition("=")
        raw = value if eq else name
        secrets.update({raw, unquote_plus(raw)})
        if eq and name.lower() in SHOWN_OPTIONS and _INTEGER.fullmatch(value):
            secrets.discard(value)
    for s in sorted(secrets, key=len, reverse=True):
        if len(s) >= _MIN_SCRUB:
            text = text.replace(s, REDACTED)
    return text
