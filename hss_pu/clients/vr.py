"""Vr client (clause 9.3.4, Appendix I.3): the HTTP side of cloud recording, no policy.

``VrClient`` sends the ``cbk_url`` form POSTs (create, save, fail, stat, getcurrenttime)
and the segment PUT; bodies and replies come from :mod:`hss_pu.wire.vr`. Every failure
is one :class:`VrError` that says whether retrying can help, and :func:`retrying` is the
backoff loop around it. What to record, when to give up and what to drop belong to the
recording service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import math
import os
import random
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar, cast
from urllib.parse import urlsplit

import httpx

from hss_pu.clients.http import UrlNotAllowed
from hss_pu.errors import LinkError
from hss_pu.logsetup import redact
from hss_pu.wire import vr as wire
from hss_pu.wire.urls import redact_url, scrub_url

__all__ = [
    "CHUNK_SIZE",
    "MAX_RETRY_AFTER",
    "OpStats",
    "SegmentBody",
    "SegmentBodyError",
    "VrClient",
    "VrCounters",
    "VrError",
    "parse_retry_after",
    "retrying",
]

CHUNK_SIZE = 64 * 1024
# A platform's Retry-After is obeyed up to this; beyond it the recorder would rather drop.
MAX_RETRY_AFTER = 300.0
# Reply bodies are small JSON; storage endpoints may send more (XML errors): keep a prefix.
_MAX_REPLY = 64 * 1024
_INFO_MAX = 200
_TRANSIENT_STATUS = frozenset({408, 429})
_DELTA_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")

T = TypeVar("T")


# --- errors ---------------------------------------------------------------------------


class VrError(LinkError):
    """A Vr request failed. ``transient``: the same request may succeed later (network
    error, timeout, 5xx, 408, 429); ``retry_after``: the server's wish, in seconds.
    The message is safe to log: URLs lose their query strings (signed upload tokens)."""

    def __init__(
        self,
        op: str,
        reason: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"Vr {op} failed: {reason}")
        self.op = op
        self.transient = transient
        self.status = status
        self.retry_after = retry_after


class SegmentBodyError(OSError):
    """The segment file cannot be read as declared (gone, shrunk, grown): not retryable."""


def _scrub(text: str, url: str) -> str:
    """Exception texts from the HTTP stack may quote the URL: keep its secrets out."""
    return redact(scrub_url(text, url))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After (RFC 9110 10.2.3) as seconds clamped to [0, 300]; None if absent or
    unreadable. Delta-seconds (decimals tolerated) or an HTTP-date."""
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000" zone: UTC by RFC 5322
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _cert_failure(exc: BaseException) -> bool:
    """A certificate that does not verify is a configuration fault, not a network blip."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, ssl.SSLCertVerificationError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _transport_error(op: str, url: str, exc: Exception) -> VrError:
    where = redact_url(url)
    if isinstance(exc, httpx.ConnectError) and _cert_failure(exc):
        return VrError(
            op,
            f"TLS certificate of {where} does not verify: {_scrub(str(exc), url)}",
            transient=False,
        )
    # Timeouts, refused/reset connections and a server closing mid-reply may clear up;
    # an unsupported scheme, a bad URL or our own protocol misuse will not.
    transient = isinstance(
        exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )
    detail = _scrub(str(exc), url)
    reason = f"{type(exc).__name__} ({where})" + (f": {detail}" if detail else "")
    return VrError(op, reason, transient=transient)


def _status_error(op: str, url: str, resp: httpx.Response, body: bytes) -> VrError:
    status = resp.status_code
    reason = f"HTTP {status}"
    if resp.reason_phrase:
        reason += f" {resp.reason_phrase}"
    reason += f" ({redact_url(url)})"
    try:
        info = wire.parse_error_info(body)
    except wire.VrFormatError:
        info = ""
    if info:
        info = _scrub(info, url)
        reason += ": " + (info[:_INFO_MAX] + "..." if len(info) > _INFO_MAX else info)
    return VrError(
        op,
        reason,
        transient=status >= 500 or status in _TRANSIENT_STATUS,
        status=status,
        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
    )


# --- request bodies -------------------------------------------------------------------


def _read_chunk(f: BinaryIO, n: int) -> bytes:
    return f.read(n)


class SegmentBody:
    """What a PUT sends: a file streamed from disk, or bytes in memory sent without a
    copy. ``size`` goes out as Content-Length: storage endpoints often refuse chunked
    transfer encoding, and a segment's size is known before it is uploaded."""

    def __init__(
        self, *, path: Path | None = None, data: memoryview | None = None, size: int
    ) -> None:
        if (path is None) == (data is None):
            raise ValueError("a SegmentBody is a file or bytes, not both or neither")
        self.path = path
        self._data = data
        self.size = size

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SegmentBody:
        """The file's size now (one stat); reading checks that it has not changed since."""
        p = Path(path)
        return cls(path=p, size=p.stat().st_size)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> SegmentBody:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")  # len() must count bytes, not items
        return cls(data=view, size=view.nbytes)

    def __repr__(self) -> str:
        what = f"path={str(self.path)!r}" if self.path is not None else "memory"
        return f"SegmentBody({what}, size={self.size})"

    def chunks(self) -> AsyncGenerator[bytes | memoryview, None]:
        """Pieces of at most CHUNK_SIZE bytes, ``size`` bytes in all; a fresh iterator
        each call, so a retried PUT starts again from the first byte."""
        if self._data is not None:
            return self._memory_chunks(self._data)
        assert self.path is not None
        return self._file_chunks(self.path)

    @staticmethod
    async def _memory_chunks(view: memoryview) -> AsyncGenerator[bytes | memoryview, None]:
        for offset in range(0, view.nbytes, CHUNK_SIZE):
            yield view[offset : offset + CHUNK_SIZE]

    async def _file_chunks(self, path: Path) -> AsyncGenerator[bytes | memoryview, None]:
        # Each blocking read runs in a worker thread: a slow SD card must not stall the
        # event loop, which also carries the Vd session and live pushes.
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except OSError as exc:
            raise SegmentBodyError(f"cannot open segment {path}: {exc.strerror}") from None
        try:
            actual = os.fstat(f.fileno()).st_size
            if actual != self.size:
                raise SegmentBodyError(
                    f"segment {path} is {actual} bytes, {self.size} were declared"
                )
            left = self.size
            while left > 0:
                try:
                    chunk = await asyncio.to_thread(_read_chunk, f, min(CHUNK_SIZE, left))
                except OSError as exc:
                    raise SegmentBodyError(f"cannot read segment {path}: {exc}") from None
                if not chunk:
                    raise SegmentBodyError(
                        f"segment {path} ended after {self.size - left} of {self.size} bytes"
                    )
                left -= len(chunk)
                yield chunk
        finally:
            f.close()


class _BodyFailed(Exception):
    """Carries a SegmentBodyError out through httpx, which must not mistake it for I/O."""

    def __init__(self, error: SegmentBodyError) -> None:
        super().__init__(str(error))
        self.error = error


# --- counters -------------------------------------------------------------------------


@dataclass
class OpStats:
    """Per-op traffic. ``header_bytes``: request line and headers as sent over HTTP/1.1
    (TLS framing not counted); ``body_bytes``: the declared Content-Length. An attempt
    counts in full when sent, even if it failed on the way (``failures``)."""

    requests: int = 0
    header_bytes: int = 0
    body_bytes: int = 0
    failures: int = 0

    @property
    def bytes(self) -> int:
        return self.header_bytes + self.body_bytes


@dataclass
class VrCounters:
    """Requests and bytes per Vr op (create, put, save, fail, stat, getcurrenttime), so a
    benchmark can state the upload overhead per segment."""

    ops: dict[str, OpStats] = field(default_factory=dict)

    def __getitem__(self, op: str) -> OpStats:
        return self.ops.setdefault(op, OpStats())

    def total(self) -> OpStats:
        t = OpStats()
        for s in self.ops.values():
            t.requests += s.requests
            t.header_bytes += s.header_bytes
            t.body_bytes += s.body_bytes
            t.failures += s.failures
        return t

    def reset(self) -> None:
        self.ops.clear()


def _head_size(req: httpx.Request) -> int:
    line = len(req.method) + 1 + len(req.url.raw_path) + len(b" HTTP/1.1\r\n")
    return line + sum(len(k) + len(v) + 4 for k, v in req.headers.raw) + 2


# --- the client -----------------------------------------------------------------------


class VrClient:
    """One record session's Vr calls to ``cbk_url``, over a shared keep-alive client.

    ``http`` must carry ``Mac-Identity`` (``clients.vs.make_http_client``): it is also set
    on each request, the PUT to a storage host included (clause 9.2 asks it of every
    request). ``https`` is the create form's flag asking for an HTTPS upload URL; with
    it set, a plain ``http://`` upload URL is refused rather than sent in the clear.
    """

    def __init__(self, cbk_url: str, http: httpx.AsyncClient, *, https: bool) -> None:
        u = urlsplit(cbk_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"cbk_url must be an http(s) URL, not {redact_url(cbk_url)!r}")
        mac = http.headers.get("Mac-Identity")
        if not mac:
            raise ValueError("the HTTP client carries no Mac-Identity header (clause 9.2)")
        self.cbk_url = cbk_url
        self.http = http
        self.https = https
        self.counters = VrCounters()
        self._mac = mac

    # POSTs

    async def create(
        self, size: int, start: float, duration: float, discontinue: bool
    ) -> wire.CreateReply:
        """Ask where to upload a segment. ``reply.drop``: the platform does not want it."""
        body = wire.encode_create(size, start, duration, discontinue, self.https)
        reply = await self._post("create", body)
        try:
            return wire.parse_create_reply(reply)
        except wire.VrFormatError as exc:
            raise VrError(
                "create", f"{exc} ({redact_url(self.cbk_url)})", transient=False
            ) from None

    async def save(self, name: str) -> None:
        await self._post("save", wire.encode_save(name))

    async def fail(self, name: str) -> None:
        await self._post("fail", wire.encode_fail(name))

    async def stat(self, dropped_nb: int, dropped_time: float) -> None:
        await self._post("stat", wire.encode_stat(dropped_nb, dropped_time))

    async def current_time(self) -> float:
        """The platform's clock, epoch seconds."""
        reply = await self._post("getcurrenttime", wire.encode_getcurrenttime())
        try:
            return wire.parse_currenttime(reply)
        except wire.VrFormatError as exc:
            raise VrError(
                "getcurrenttime", f"{exc} ({redact_url(self.cbk_url)})", transient=False
            ) from None

    async def _post(self, op: str, body: bytes) -> bytes:
        return await self._send(
            op,
            "POST",
            self.cbk_url,
            body,
            len(body),
            {"Content-Type": wire.CONTENT_TYPE_FORM, "Mac-Identity": self._mac},
        )

    # PUT

    async def put(self, url: str, body: SegmentBody) -> None:
        """Upload the segment to the URL that create gave; any 2xx is success."""
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise VrError("put", f"bad upload URL {redact_url(url)!r}", transient=False)
        if u.scheme == "http" and self.https:
            raise VrError(
                "put", f"plain http:// upload URL refused ({redact_url(url)})", transient=False
            )
        chunks = body.chunks()

        async def stream() -> AsyncIterator[bytes | memoryview]:
            try:
                async for chunk in chunks:
                    yield chunk
            except SegmentBodyError as exc:
                raise _BodyFailed(exc) from None

        headers = {
            "Content-Type": wire.CONTENT_TYPE_TS,
            # Explicit, so httpx does not fall back to chunked transfer encoding.
            "Content-Length": str(body.size),
            "Mac-Identity": self._mac,
        }
        try:
            # h11 writes any bytes-like object; memoryview slices avoid a copy per chunk.
            content = cast("AsyncIterable[bytes]", stream())
            await self._send("put", "PUT", url, content, body.size, headers)
        except _BodyFailed as exc:
            raise VrError("put", str(exc.error), transient=False) from None
        finally:
            await chunks.aclose()

    # transport

    async def _send(
        self,
        op: str,
        method: str,
        url: str,
        content: bytes | AsyncIterable[bytes],
        size: int,
        headers: dict[str, str],
    ) -> bytes:
        """One request; the reply body (a prefix of at most 64 KiB) on 2xx, else VrError."""
        stats = self.counters[op]
        try:
            req = self.http.build_request(method, url, content=content, headers=headers)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            stats.failures += 1
            raise VrError(
                op, f"bad URL {redact_url(url)!r}: {type(exc).__name__}", transient=False
            ) from None
        stats.requests += 1
        stats.header_bytes += _head_size(req)
        stats.body_bytes += size
        try:
            resp = await self.http.send(req, stream=True)
            try:
                reply = await _read_prefix(resp)
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            stats.failures += 1
            raise _transport_error(op, url, exc) from None
        except UrlNotAllowed as exc:  # URL safety: nothing was sent, and never will be
            stats.failures += 1
            raise VrError(op, str(exc), transient=False) from None
        except BaseException:
            stats.failures += 1
            raise
        if not 200 <= resp.status_code < 300:
            stats.failures += 1
            raise _status_error(op, url, resp, reply)
        return reply


async def _read_prefix(resp: httpx.Response) -> bytes:
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        buf += chunk
        if len(buf) >= _MAX_REPLY:
            break  # aclose() then drops the connection rather than draining the rest
    return bytes(buf[:_MAX_REPLY])


# --- retry ----------------------------------------------------------------------------


async def retrying(
    op: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base: float = 1.0,
    cap: float = 30.0,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_retry: Callable[[VrError, float], None] | None = None,
) -> T:
    """Call ``op`` up to ``attempts`` times while it fails with a transient VrError.

    Before retry n (n = 0 first) sleep uniform(0, min(cap, base * 2**n)) ("full jitter":
    PUs that lost the platform together do not come back together), or the server's
    Retry-After when that is longer (it is already capped at 300 s). A non-transient
    error, or the last attempt's error, is raised. ``on_retry(error, delay)`` is told
    before each sleep (logging, counters).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, not {attempts}")
    uniform = rng.uniform if rng is not None else random.uniform
    n = 0
    while True:
        try:
            return await op()
        except VrError as exc:
            if not exc.transient or n + 1 >= attempts:
                raise
            delay = uniform(0.0, min(cap, base * 2.0 ** min(n, 64)))
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
            if on_retry is not None:
                on_retry(exc, delay)
            await sleep(delay)
            n += 1
