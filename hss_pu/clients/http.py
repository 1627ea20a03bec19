"""The one factory for HTTP clients that talk to the platform and the hosts it names.

Vs, Vr (``cbk_url`` and the segment PUT), Snapshot and every later upload or download
get their client from :func:`platform_http`, and each such client

- sends ``Mac-Identity`` on every request (clause 9.2);
- verifies TLS, always (``platform.allow_insecure`` only lets callers accept ``http://``
  URLs; it never turns verification off);
- has timeouts (``timeout`` for each of connect, read, write and pool wait, unless
  ``connect_timeout`` says otherwise for the connect);
- refuses redirects: a 3xx is an answer like any other, so ``Mac-Identity`` and a PUT
  body never follow a ``Location`` to a host nobody checked (and an ``https`` upload
  cannot be redirected to plain ``http``);
- ignores httpx's environment (``trust_env`` off): an ``HTTPS_PROXY`` or a ``.netrc``
  left in a service's environment must not send the device's traffic elsewhere or add
  credentials to it.

Trust differs on purpose, and the caller says which it needs (:class:`Trust`):

- ``Trust.PLATFORM``, the platform's own servers (Vs, and the Vd websocket through
  :func:`tls_context`): the configured CA file *replaces* the system store, so a platform
  with its own CA cannot be impersonated with a public certificate for its name; without
  a CA file, the system store.
- ``Trust.UPLOADS``, URLs the platform hands out (Vr's ``cbk_url`` and upload URLs,
  Snapshot and alarm pictures): these often point at public cloud storage, so the
  system store, *plus* the configured CA file for a platform that hosts them itself.

httpx's exceptions never leave ``clients/``: :func:`upload` maps them to
:class:`UploadError`, ``vs.fetch_server_addr`` and ``vr.VrClient`` do the same for theirs.
"""

from __future__ import annotations

import enum
import ssl

import httpx

from hss_pu.errors import LinkError
from hss_pu.wire.urls import redact_url, scrub_url

__all__ = [
    "MAX_UPLOAD_REPLY",
    "HttpClient",
    "Trust",
    "UploadError",
    "platform_http",
    "tls_context",
    "upload",
]

HttpClient = httpx.AsyncClient  # what platform_http returns, for callers' annotations

# An upload's reply is read up to this (an error text, at most); the rest is not read.
MAX_UPLOAD_REPLY = 4096


class Trust(enum.Enum):
    """Which certificates a client accepts (see the module docstring for why)."""

    PLATFORM = "platform"  # the CA file if configured, else the system store
    UPLOADS = "uploads"  # the system store plus the CA file if configured


class UploadError(LinkError):
    """An upload failed; the message is safe to log (the URL's secrets are out)."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


def tls_context(ca_file: str | None, trust: Trust) -> ssl.SSLContext:
    """A verifying client context; certificate and host name are always checked."""
    if trust is Trust.PLATFORM and ca_file:
        return ssl.create_default_context(cafile=ca_file)
    ctx = ssl.create_default_context()
    if trust is Trust.UPLOADS and ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


def platform_http(
    mac: str,
    ca_file: str | None,
    *,
    trust: Trust,
    timeout: float,
    connect_timeout: float | None = None,
) -> HttpClient:
    """A keep-alive client for the platform (one per purpose; close it with ``aclose``
    or ``async with``). ``mac`` goes out as ``Mac-Identity`` on every request."""
    if not mac:
        raise ValueError("an HTTP client for the platform needs the device's MAC (9.2)")
    if timeout <= 0 or (connect_timeout is not None and connect_timeout <= 0):
        raise ValueError("timeouts must be positive")
    return httpx.AsyncClient(
        verify=tls_context(ca_file, trust),
        headers={"Mac-Identity": mac},
        timeout=httpx.Timeout(timeout, connect=connect_timeout or timeout),
        follow_redirects=False,
        trust_env=False,
    )


async def upload(http: HttpClient, url: str, data: bytes, content_type: str) -> None:
    """PUT ``data`` to ``url``; any 2xx is success. UploadError otherwise (transport
    failure, bad URL, a redirect or an error status), its message free of the URL's
    secrets. The caller decides which URL schemes it accepts."""
    where = redact_url(url)
    try:
        async with http.stream(
            "PUT", url, content=data, headers={"Content-Type": content_type}
        ) as resp:
            body = await _read_prefix(resp)
    except Exception as exc:  # httpx and anyio raise more than HTTPError (InvalidURL, ...)
        detail = scrub_url(str(exc), url)
        reason = f"{type(exc).__name__} ({where})" + (f": {detail}" if detail else "")
        raise UploadError(reason[:500]) from None
    status = resp.status_code
    if not 200 <= status < 300:
        text = _printable(scrub_url(body[:200].decode("utf-8", "replace"), url))
        reason = f"HTTP {status} ({where})"
        if 300 <= status < 400:
            reason += ": redirects are not followed"
        elif text.strip():
            reason += f": {text.strip()}"
        raise UploadError(reason, status=status)


def _printable(text: str) -> str:
    """A server's text goes into logs and Vd error messages: one line, no controls."""
    return "".join(c if c.isprintable() else " " for c in text)


async def _read_prefix(resp: httpx.Response) -> bytes:
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        buf += chunk
        if len(buf) >= MAX_UPLOAD_REPLY:
            break  # closing the stream then drops the connection instead of draining it
    return bytes(buf[:MAX_UPLOAD_REPLY])
