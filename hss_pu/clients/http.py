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

URL safety (wire-notes; the rules are :mod:`hss_pu.wire.urlsafety`): a client for URLs
the platform hands out is made with a :class:`UrlGuard`, and then *every* request it
sends, retries and redirects' targets included, is checked where it cannot be missed:
the scheme before the request, and the addresses at the moment a connection is opened,
by a network backend that resolves the name itself (off the event loop), refuses it
unless every address is public (or the host is exempt), and connects to the very
addresses it checked, so a name that answers differently a moment later (DNS
rebinding) cannot slip a private address past the check. :meth:`UrlGuard.check` runs
the same check ahead of time, for an RPC that must answer 12 before doing anything.

httpx's exceptions never leave ``clients/``: :func:`upload` maps them to
:class:`UploadError`, ``vs.fetch_server_addr`` and ``vr.VrClient`` do the same for theirs.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, BinaryIO

import httpcore
import httpx

from hss_pu.errors import LinkError
from hss_pu.logsetup import redacted_logger
from hss_pu.wire.urls import redact_url, scrub_url
from hss_pu.wire.urlsafety import (
    Target,
    UrlRefused,
    check_addresses,
    host_target,
    is_exempt,
    parse_target,
)

# httpx logs every request's URL (at info, which we show only at debug): the platform's
# signed upload, snapshot and playback URLs are credentials.
redacted_logger("httpx", queries=True)

__all__ = [
    "MAX_UPLOAD_REPLY",
    "DownloadError",
    "DownloadTooLarge",
    "HttpClient",
    "Resolver",
    "Trust",
    "UploadError",
    "UrlGuard",
    "UrlNotAllowed",
    "download",
    "platform_http",
    "resolve",
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


class UrlNotAllowed(UploadError):
    """The URL breaks the URL-safety rules; nothing was sent to it."""


class DownloadError(LinkError):
    """A download failed; the message is safe to log (the URL's secrets are out)."""


class DownloadTooLarge(DownloadError):
    """The body is larger than the caller's limit; the rest was not read."""


# (host, port) -> the addresses the name has, in the resolver's order.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to; getaddrinfo runs in the loop's executor, never
    on the event loop thread. OSError (socket.gaierror) when the name does not resolve."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for *_, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in out:
            out.append(addr)
    return out


class UrlGuard:
    """The URL-safety rules of one device: its ``allow_insecure``, its
    ``platform.allowed_hosts``, and the platform's own hosts (asked each time: the Vd
    host changes when Vs schedules us elsewhere)."""

    def __init__(
        self,
        *,
        allow_insecure: bool,
        allowed_hosts: Iterable[str] = (),
        platform_hosts: Callable[[], Iterable[str]] = lambda: (),
        resolver: Resolver = resolve,
    ) -> None:
        self.allow_insecure = allow_insecure
        self.allowed_hosts = tuple(allowed_hosts)
        self.platform_hosts = platform_hosts
        self.resolver = resolver

    def exempt(self, host: str) -> bool:
        return is_exempt(host, (*self.platform_hosts(), *self.allowed_hosts))

    def target(self, url: str) -> Target:
        """The scheme rules alone (no I/O); UrlNotAllowed when they refuse."""
        try:
            return parse_target(url, allow_insecure=self.allow_insecure)
        except UrlRefused as exc:
            raise UrlNotAllowed(str(exc)) from None

    async def check(self, url: str) -> None:
        """The whole check ahead of a request: UrlNotAllowed when the rules refuse the URL,
        UploadError when its name does not resolve (a network fault, not a bad URL)."""
        t = self.target(url)
        await self.addresses(t.host, t.port, url)

    async def addresses(self, host: str, port: int, url: str = "") -> list[str] | None:
        """The checked addresses to connect to, or None for an exempt host (connect to it
        by name). UrlNotAllowed / UploadError as :meth:`check`."""
        if self.exempt(host):
            return None
        t = host_target(host, port)
        where = url or (f"[{t.host}]:{port}" if ":" in t.host else f"{t.host}:{port}")
        if t.literal is not None:
            found = [str(t.literal)]
        else:
            try:
                found = await self.resolver(t.host, port)
            except OSError as exc:
                raise UploadError(f"cannot resolve {t.host}: {exc}") from None
        try:
            check_addresses(where, t, found)
        except UrlRefused as exc:
            raise UrlNotAllowed(str(exc)) from None
        return found


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the guard accepted, the ones it checked."""

    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._guard.addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except UrlNotAllowed:
            raise
        except UploadError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        last: Exception | None = None
        for addr in addresses or [host]:
            try:
                return await self._inner.connect_tcp(
                    addr, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )  # fmt: skip
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not platform URLs")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the scheme checked per request and connections opened
    through :class:`_GuardedBackend` (httpx takes no network backend, so its pool is
    replaced by one made with ours: tests/test_url_safety.py notices if that stops
    working)."""

    def __init__(self, ctx: ssl.SSLContext, guard: UrlGuard) -> None:
        super().__init__(verify=ctx, trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ctx,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(guard),
        )
        self._guard = guard

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._guard.target(str(request.url))
        return await super().handle_async_request(request)


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
    guard: UrlGuard | None = None,
) -> HttpClient:
    """A keep-alive client for the platform (one per purpose; close it with ``aclose``
    or ``async with``). ``mac`` goes out as ``Mac-Identity`` on every request. With a
    ``guard`` (every client for URLs the platform hands out), each request obeys it and
    a refused one raises UrlNotAllowed before anything is sent."""
    if not mac:
        raise ValueError("an HTTP client for the platform needs the device's MAC (9.2)")
    if timeout <= 0 or (connect_timeout is not None and connect_timeout <= 0):
        raise ValueError("timeouts must be positive")
    ctx = tls_context(ca_file, trust)
    return httpx.AsyncClient(
        verify=ctx,
        transport=_GuardedTransport(ctx, guard) if guard is not None else None,
        headers={"Mac-Identity": mac},
        timeout=httpx.Timeout(timeout, connect=connect_timeout or timeout),
        follow_redirects=False,
        trust_env=False,
    )


async def upload(http: HttpClient, url: str, data: bytes, content_type: str) -> None:
    """PUT ``data`` to ``url``; any 2xx is success. UploadError otherwise (transport
    failure, bad URL, a redirect or an error status), its message free of the URL's
    secrets; UrlNotAllowed when the client's guard refused the URL (nothing was sent)."""
    where = redact_url(url)
    try:
        async with http.stream(
            "PUT", url, content=data, headers={"Content-Type": content_type}
        ) as resp:
            body = await _read_prefix(resp)
    except UploadError:
        raise
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


async def download(
    http: HttpClient, url: str, out: BinaryIO, *, max_bytes: int, timeout: float
) -> int:
    """GET ``url`` into ``out`` (written off the event loop, a chunk at a time: never the
    whole body in memory); the number of bytes. At most ``max_bytes``: a larger
    Content-Length is refused before the body is read, and a body that goes on past it
    (no length, or a false one) is cut there and the connection dropped
    (DownloadTooLarge). ``timeout`` bounds the whole download (a server that trickles
    one byte at a time cannot hold it open). The body is asked for, and taken, without
    Content-Encoding: a compressed one could inflate past any limit inside one chunk.
    DownloadError otherwise, UrlNotAllowed when the client's guard refused the URL."""
    where = redact_url(url)
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async with http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status_code != 200:
                    redirect = 300 <= resp.status_code < 400
                    note = ": redirects are not followed" if redirect else ""
                    raise DownloadError(f"HTTP {resp.status_code} ({where}){note}")
                coding = resp.headers.get("content-encoding", "identity").strip().lower()
                if coding not in ("", "identity"):
                    raise DownloadError(f"Content-Encoding {coding[:40]!r} refused ({where})")
                length = resp.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > max_bytes:
                    raise DownloadTooLarge(
                        f"{int(length)} bytes, more than the {max_bytes} allowed ({where})"
                    )
                async for chunk in resp.aiter_raw():
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadTooLarge(
                            f"more than the {max_bytes} bytes allowed ({where}); not read further"
                        )
                    try:
                        await asyncio.to_thread(out.write, chunk)
                    except OSError as exc:
                        raise DownloadError(f"cannot store the download: {exc}") from None
    except (DownloadError, UrlNotAllowed):
        raise
    except TimeoutError:
        raise DownloadError(f"not done within {timeout:g} s ({where})") from None
    except UploadError as exc:  # the guard's resolver failed: a network fault
        raise DownloadError(str(exc)) from None
    except Exception as exc:  # httpx and anyio raise more than HTTPError (InvalidURL, ...)
        detail = scrub_url(str(exc), url)
        reason = f"{type(exc).__name__} ({where})" + (f": {detail}" if detail else "")
        raise DownloadError(reason[:500]) from None
    return size
