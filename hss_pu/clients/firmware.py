"""Download a firmware bundle (issue 12, item 2): head first, then the payload, resumable.

The head (magic, length, manifest and signatures) is read into memory and judged before
anything is written: by its format here, then by the caller's ``accept_head`` (the
signature, model and version rules live with the caller, not here). Only an accepted
head creates the file. The payload is hashed as it streams in and refused one byte past
the manifest's length: the excess is never written, the connection is dropped and the
digest's length says "too long" (``payload_length + 1``), so the caller's
``check_bundle`` names it.

A cut (a transport error, no byte for ``stall_timeout``, a body that ends short) is
mended by another GET with ``Range: bytes=<bytes on disk>-``; only a 206 that continues
exactly there, for this very bundle's size, is taken. A server that ignores Range (200)
starts the file over, after its head proved to be the same bundle's.

httpx and anyio exceptions stop here (as :class:`DownloadError`, the URL's secrets out);
:class:`UrlNotAllowed` (the client's guard refused the URL) passes through. On any
failure (cancellation included) the file this call created is removed: no half bundle
is left for anyone to trust, and a later call starts from byte 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from hss_pu.clients.http import DownloadError, HttpClient, UrlNotAllowed
from hss_pu.wire.firmware import (
    MAGIC,
    PREFIX_LEN,
    BundleHead,
    PayloadDigest,
    PayloadHasher,
    Rejected,
    head_length,
    parse_head,
)
from hss_pu.wire.urls import redact_url, scrub_url

__all__ = ["PROGRESS_INTERVAL", "BundleRefused", "Fetched", "fetch_bundle"]

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1  # s: progress is reported at most this often (and once at the end)
_CONTENT_RANGE = re.compile(r"bytes (\d{1,18})-(\d{1,18})/(\d{1,18})")
_RETRY_4XX = frozenset({408, 429})  # client errors that say "later", not "never"


class BundleRefused(DownloadError):
    """The head (format, or the caller's accept_head) refused the bundle: no payload byte
    kept. ``str()`` is ``"<check>: <reason>"``."""

    def __init__(self, rejected: Rejected) -> None:
        super().__init__(str(rejected))
        self.rejected = rejected


@dataclass(frozen=True)
class Fetched:
    """A downloaded bundle: its parsed head, what followed the head (length, counted to
    one byte past the manifest's, and sha256), and the file holding it, fsync'd."""

    head: BundleHead
    payload: PayloadDigest
    path: Path


class _Cut(Exception):
    """One GET failed in a way another GET may mend; the text is safe to log."""


async def fetch_bundle(
    http: HttpClient,
    url: str,
    path: Path,
    *,
    accept_head: Callable[[BundleHead], Rejected | None],
    progress: Callable[[int, int], None],
    attempts: int = 6,
    backoff: Callable[[int], float] = lambda n: min(30.0, 2.0**n),
    stall_timeout: float = 60.0,
    step: Callable[[str], None] | None = None,
) -> Fetched:
    """Download the bundle at ``url`` into ``path`` (created 0600; its directory is the
    caller's). ``progress(received, total)`` counts bundle bytes; ``attempts`` is the
    number of GETs in all, ``backoff(n)`` the seconds before retry n (1-based); ``step``
    is called at "download-head", "download-chunk" and "download-done" (fault injection).

    BundleRefused when the head is refused (nothing written); DownloadError when the
    server refuses (a 3xx or 4xx before any byte is kept: not retried) or every attempt
    failed (the last failure named); UrlNotAllowed from the client's guard."""
    if attempts < 1 or stall_timeout <= 0:
        raise ValueError("attempts must be >= 1 and stall_timeout > 0")
    d = _Download(http, url, path, accept_head, progress, stall_timeout, step)
    try:
        return await d.run(attempts, backoff)
    except BaseException:
        await d.discard()
        raise


class _Download:
    """One bundle's download: the accepted head, the file and the running hash, kept
    across GETs."""

    def __init__(
        self,
        http: HttpClient,
        url: str,
        path: Path,
        accept_head: Callable[[BundleHead], Rejected | None],
        progress: Callable[[int, int], None],
        stall: float,
        step: Callable[[str], None] | None,
    ) -> None:
        self.http = http
        self.url = url
        self.where = redact_url(url)
        self.path = path
        self.accept_head = accept_head
        self.progress = progress
        self.stall = stall
        self.step = step or (lambda _name: None)
        self.head: BundleHead | None = None
        self.raw_head = b""
        self.total = 0  # the whole bundle's size, once the head is known
        self.file: BinaryIO | None = None
        self.created = False  # the file is ours to remove
        self.written = 0  # bytes of the bundle in the file
        self.hasher = PayloadHasher(0)
        self._reported = -1.0

    async def run(self, attempts: int, backoff: Callable[[int], float]) -> Fetched:
        last = ""
        for n in range(attempts):
            if n:
                await asyncio.sleep(max(0.0, backoff(n)))
            try:
                return await self._get()
            except _Cut as exc:
                last = str(exc)
                log.info("bundle download: GET %d of %d failed: %s", n + 1, attempts, last)
        raise DownloadError(f"bundle download failed after {attempts} GETs: {last}")

    # --- one GET ---------------------------------------------------------------------

    async def _get(self) -> Fetched:
        headers = {"Accept-Encoding": "identity"}
        ranged = self.written > 0
        if ranged:
            headers["Range"] = f"bytes={self.written}-"
        try:
            async with asyncio.timeout(self.stall):
                req = self.http.build_request("GET", self.url, headers=headers)
                resp = await self.http.send(req, stream=True)
        except TimeoutError:
            raise _Cut(f"no answer within {self.stall:g} s ({self.where})") from None
        except UrlNotAllowed:
            raise
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise DownloadError(self._reason(exc)) from None
        except Exception as exc:  # httpx and anyio raise more than HTTPError
            raise _Cut(self._reason(exc)) from None
        try:
            async with contextlib.aclosing(self._chunks(resp)) as chunks:
                return await self._answer(resp, chunks, ranged)
        finally:
            # Unread body: httpx drops the connection rather than drain it.
            with contextlib.suppress(Exception):
                await resp.aclose()

    async def _answer(
        self, resp: httpx.Response, chunks: AsyncIterator[bytes], ranged: bool
    ) -> Fetched:
        status = resp.status_code
        if status not in (200, 206):
            reason = f"HTTP {status} ({self.where})"
            if 300 <= status < 400:
                reason += ": redirects are not followed"
            if not self.created and 300 <= status < 500 and status not in _RETRY_4XX:
                raise DownloadError(reason)
            raise _Cut(reason)
        coding = resp.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise DownloadError(f"Content-Encoding {coding[:40]!r} refused ({self.where})")
        if status == 206:
            if not ranged:
                raise _Cut(f"HTTP 206 to a GET without Range ({self.where})")
            self._check_content_range(resp.headers.get("content-range", ""))
            first = b""
        else:
            first = await self._read_head(chunks)
        return await self._read_payload(chunks, first)

    def _check_content_range(self, value: str) -> None:
        m = _CONTENT_RANGE.fullmatch(value.strip())
        if m is not None:
            start, end, total = (int(g) for g in m.groups())
            if start == self.written and total == self.total and start <= end < total:
                return
        shown = "".join(c if c.isprintable() else " " for c in value[:80])
        raise _Cut(
            f"HTTP 206 with Content-Range {shown!r}, not bytes {self.written}-.../{self.total} "
            f"({self.where})"
        )

    async def _read_head(self, chunks: AsyncIterator[bytes]) -> bytes:
        """Read the head of a 200 (the first GET, or a server that ignores Range) and
        take it; returns the payload bytes that came with it."""
        buf = bytearray()
        need = PREFIX_LEN
        async for chunk in chunks:
            buf += chunk
            if buf[: len(MAGIC)] != MAGIC[: len(buf)]:
                raise BundleRefused(Rejected("format", "not an hss-pu bundle (bad magic)"))
            if need == PREFIX_LEN and len(buf) >= PREFIX_LEN:
                n = head_length(bytes(buf[:PREFIX_LEN]))
                if isinstance(n, Rejected):
                    raise BundleRefused(n)
                need = PREFIX_LEN + n
            if len(buf) >= need > PREFIX_LEN:
                break
        else:
            raise _Cut(f"body ended after {len(buf)} bytes, inside the head ({self.where})")
        raw, rest = bytes(buf[:need]), bytes(buf[need:])
        if self.head is None:
            head = parse_head(raw)
            if isinstance(head, Rejected):
                raise BundleRefused(head)
            verdict = self.accept_head(head)
            if verdict is not None:
                raise BundleRefused(verdict)
            self.head, self.raw_head = head, raw
            self.total = head.payload_offset + head.manifest.payload_length
            await self._io(self._create)
            await self._io(self._write, raw)
            self.step("download-head")
        else:
            if raw != self.raw_head:
                raise BundleRefused(Rejected("format", "bundle changed during download"))
            log.info("bundle download: the server ignored Range; starting over")
            await self._io(self._truncate, len(raw))
        self.written = len(raw)
        self.hasher = PayloadHasher(self.total - len(raw))
        self._report()
        return rest

    async def _read_payload(self, chunks: AsyncIterator[bytes], first: bytes) -> Fetched:
        if first and not await self._take(first):
            return await self._finish()
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except _Cut:
                if self.written == self.total:
                    break  # every byte is here; what the connection does next is moot
                raise
            if not await self._take(chunk):
                return await self._finish()
        if self.written < self.total:
            raise _Cut(f"body ended at byte {self.written} of {self.total} ({self.where})")
        return await self._finish()

    async def _take(self, chunk: bytes) -> bool:
        """Hash and write what fits in the manifest's length; False (nothing more
        written, the hasher marks the payload too long) when ``chunk`` runs past it."""
        room = self.total - self.written
        fits = chunk[:room]
        if fits:
            self.hasher.update(fits)
            await self._io(self._write, fits)
            self.written += len(fits)
            self.step("download-chunk")
            self._report()
        if len(chunk) > room:
            self.hasher.update(chunk[room:])
            log.warning(
                "bundle download: the server sent more than the manifest's %d payload "
                "bytes; connection dropped (%s)", self.total - len(self.raw_head), self.where,
            )  # fmt: skip
            return False
        return True

    async def _finish(self) -> Fetched:
        await self._io(self._sync)
        assert self.head is not None
        self._report(final=True)
        self.step("download-done")
        return Fetched(self.head, self.hasher.digest(), self.path)

    async def _chunks(self, resp: httpx.Response) -> AsyncGenerator[bytes, None]:
        """The raw body as the network hands it (httpcore reads 64 KiB at a time, well
        under the 1 MiB a chunk may be); a stall or a transport error is a _Cut."""
        it = resp.aiter_raw().__aiter__()
        while True:
            try:
                async with asyncio.timeout(self.stall):
                    chunk = await anext(it)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _Cut(f"no byte for {self.stall:g} s ({self.where})") from None
            except Exception as exc:  # httpx and anyio raise more than HTTPError
                raise _Cut(self._reason(exc)) from None
            if chunk:
                yield chunk

    def _reason(self, exc: BaseException) -> str:
        detail = scrub_url(str(exc), self.url)
        return (f"{type(exc).__name__} ({self.where})" + (f": {detail}" if detail else ""))[:500]

    def _report(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._reported >= PROGRESS_INTERVAL:
            self._reported = now
            self.progress(self.written, self.total)

    # --- the file, always off the event loop -------------------------------------------

    async def _io(self, fn: Callable[..., None], *args: object) -> None:
        try:
            await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise DownloadError(f"cannot store the bundle in {self.path}: {exc}") from None

    def _create(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a file left from before keeps its mode otherwise
            self.file = os.fdopen(fd, "wb")
            self.created = True
        except BaseException:
            os.close(fd)
            raise

    def _write(self, data: bytes) -> None:
        assert self.file is not None
        self.file.write(data)

    def _truncate(self, size: int) -> None:
        assert self.file is not None
        self.file.flush()
        self.file.seek(size)
        self.file.truncate()

    def _sync(self) -> None:
        assert self.file is not None
        f, self.file = self.file, None
        with f:
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the file's name, too
        finally:
            os.close(fd)

    async def discard(self) -> None:
        """Close and remove the file (on any failure, cancellation included)."""
        if not self.created:
            return
        f, self.file = self.file, None

        def remove() -> None:
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
            with contextlib.suppress(OSError):
                self.path.unlink()

        await asyncio.shield(asyncio.to_thread(remove))
