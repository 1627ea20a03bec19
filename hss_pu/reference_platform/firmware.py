"""Firmware bundles the reference platform serves at ``/firmware/<name>``, with Range.

Bundles live in ``<state_dir>/firmware``; :meth:`FirmwareStore.add` copies one in
(atomically, under a name the URL can carry: the file's name made safe plus the start of
its sha256, so two different bundles never share a name). ``hss-pu platform upgrade``
reaches it through ``POST /admin/firmware``.

Range (RFC 9110, one range): ``bytes=N-``, ``bytes=N-M`` and ``bytes=-S`` get a 206 with
Content-Range and the range's Content-Length; a range past the end gets 416 with
``Content-Range: bytes */<size>``; no Range, or one this server does not take (several
ranges, bad syntax), gets the whole file (200). Every answer says ``Accept-Ranges:
bytes``. The body goes out in 64 KiB chunks as the connection takes them (never whole in
memory).

Faults, for the device's tests (Python, on ``platform.firmware``; each ``*_next`` applies
to that many of the next requests, in order):

- :meth:`FirmwareStore.cut_next` ``(after, count=1)``: send ``after`` body bytes, then
  abort the connection (no clean end: what a dropped Wi-Fi looks like to the device);
- :meth:`FirmwareStore.overlong_next` ``(extra, content_length=True, count=1)``: the
  file (or range) followed by ``extra`` garbage bytes, with a Content-Length that counts
  them, or with none (chunked);
- :meth:`FirmwareStore.stall_next` ``(after, seconds, count=1)``: send ``after`` body
  bytes, then nothing for ``seconds``, then the rest;
- :meth:`FirmwareStore.fail_next` ``(status, count=1)``: answer ``status`` (a 503, a 416
  to a good Range...) with a short JSON body instead of the bundle;
- :attr:`FirmwareStore.ignore_range` ``= True``: every request gets the whole file (200).

Every request is recorded (:class:`FirmwareRequest`: the Range asked, the status, the
bytes sent and whether the body went out to its end), the last ``MAX_KEPT``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hss_pu.fsutil import fsync_dir
from hss_pu.reference_platform.web import AbortConnection, Request, Response, json_response

__all__ = ["FIRMWARE_PREFIX", "FirmwareRequest", "FirmwareStore", "byte_range"]

log = logging.getLogger("hss_pu.platform.firmware")

FIRMWARE_PREFIX = "/firmware/"
CHUNK = 64 * 1024
MAX_KEPT = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")
_GARBAGE = b"<html>not a bundle</html>\n" * (CHUNK // 26 + 1)


@dataclass
class FirmwareRequest:
    name: str
    time: float
    mac: str
    range: str | None  # the Range header as asked, or None
    status: int
    size: int = 0  # the file's size (0 when not served)
    start: int = 0  # the first byte served
    end: int = 0  # one past the last byte of the file served (garbage not counted)
    sent: int = 0  # body bytes handed to the connection (garbage counted)
    complete: bool = False  # the whole body went out
    fault: str = ""  # "cut after K", "overlong +N", "ignore range", or ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Fault:
    cut_after: int | None = None
    extra: int = 0
    extra_length: bool = True
    stall_after: int | None = None
    stall_seconds: float = 0.0
    status: int | None = None


class Unsatisfiable(Exception):
    """The Range starts past the end of the file (416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) that a Range header asks of a ``size``-byte file,
    None to serve the whole file, Unsatisfiable for a 416."""
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None or m[1] == m[2] == "":
        return None  # several ranges, another unit, bad syntax: ignored (RFC 9110 14.2)
    if m[1] == "":  # bytes=-S: the last S bytes
        suffix = int(m[2])
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size
    start = int(m[1])
    if m[2] != "" and int(m[2]) < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable
    end = size if m[2] == "" else min(size, int(m[2]) + 1)
    return start, end


class FirmwareStore:
    """Serves ``/firmware/<name>`` from ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, base_url: Callable[[], str]) -> None:
        self.directory = directory
        self._base_url = base_url
        self.requests: list[FirmwareRequest] = []
        self.ignore_range = False
        self._faults: collections.deque[_Fault] = collections.deque()

    # --- the bundles ------------------------------------------------------------------

    def add(self, path: Path) -> str:
        """Copy the bundle file ``path`` in (temp file, fsync, rename); its name here.
        Blocking file work: call it off the event loop. OSError, ValueError (not a
        regular file)."""
        src = Path(path)
        if not src.is_file():
            raise ValueError(f"{src} is not a regular file")
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        sha = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=".add.", suffix=".tmp", dir=self.directory)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            stem = _UNSAFE.sub("_", src.stem).strip("._-")[:80] or "bundle"
            suffix = _UNSAFE.sub("_", src.suffix)[:16]
            name = f"{stem}-{sha.hexdigest()[:16]}{suffix}"
            os.replace(tmp, self.directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(self.directory)
        log.info("firmware: %s added as %s", src, name)
        return name

    def url_for(self, name: str) -> str:
        return f"{self._base_url()}{FIRMWARE_PREFIX}{name}"

    def path_for(self, name: str) -> Path | None:
        if not _NAME.match(name):
            return None
        path = self.directory / name
        return path if path.is_file() else None

    # --- faults -----------------------------------------------------------------------

    def cut_next(self, after: int, count: int = 1) -> None:
        """The next ``count`` requests: ``after`` body bytes, then the connection aborted."""
        if after < 0 or count < 1:
            raise ValueError("after must be >= 0 and count >= 1")
        self._faults.extend([_Fault(cut_after=after)] * count)

    def overlong_next(self, extra: int, *, content_length: bool = True, count: int = 1) -> None:
        """The next ``count`` requests: the body, then ``extra`` garbage bytes, with a
        Content-Length that counts them (or none: chunked)."""
        if extra < 1 or count < 1:
            raise ValueError("extra and count must be >= 1")
        self._faults.extend([_Fault(extra=extra, extra_length=content_length)] * count)

    def stall_next(self, after: int, seconds: float, count: int = 1) -> None:
        """The next ``count`` requests: ``after`` body bytes, a silence of ``seconds``,
        then the rest (if the peer is still there)."""
        if after < 0 or seconds <= 0 or count < 1:
            raise ValueError("after must be >= 0, seconds > 0 and count >= 1")
        self._faults.extend([_Fault(stall_after=after, stall_seconds=seconds)] * count)

    def fail_next(self, status: int, count: int = 1) -> None:
        """The next ``count`` requests are answered ``status`` (no bundle byte)."""
        if not 300 <= status <= 599 or count < 1:
            raise ValueError("status must be in 300..599 and count >= 1")
        self._faults.extend([_Fault(status=status)] * count)

    def requests_for(self, name: str) -> list[FirmwareRequest]:
        return [r for r in self.requests if r.name == name]

    # --- serving ----------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        name = req.path.removeprefix(FIRMWARE_PREFIX)
        mac = req.headers.get("mac-identity", "")
        rec = FirmwareRequest(name, time.time(), mac, req.headers.get("range"), 404)
        self.requests.append(rec)
        del self.requests[:-MAX_KEPT]
        if req.method != "GET":
            rec.status = 405
            return json_response(405, b'{"info": "GET only"}')
        path = self.path_for(name)
        if path is None:
            return json_response(404, b'{"info": "no such bundle"}')
        fault = self._faults.popleft() if self._faults else _Fault()
        if fault.status is not None:
            rec.status, rec.fault = fault.status, f"status {fault.status}"
            return json_response(fault.status, b'{"info": "told to fail"}')
        size = path.stat().st_size
        headers = {"content-type": "application/octet-stream", "accept-ranges": "bytes"}
        try:
            rng = None if self.ignore_range else byte_range(rec.range, size)
        except Unsatisfiable:
            rec.status, rec.size = 416, size
            r = json_response(416, b'{"info": "range not satisfiable"}')
            r.headers.update({"content-range": f"bytes */{size}", "accept-ranges": "bytes"})
            return r
        start, end = rng or (0, size)
        rec.status, rec.size, rec.start, rec.end = (206 if rng else 200), size, start, end
        if rng:
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
        if fault.extra == 0 or fault.extra_length:
            headers["content-length"] = str(end - start + fault.extra)
        notes = [
            *([f"cut after {fault.cut_after}"] if fault.cut_after is not None else []),
            *([f"overlong +{fault.extra}"] if fault.extra else []),
            *(
                [f"stall {fault.stall_seconds:g} s after {fault.stall_after}"]
                if fault.stall_after is not None
                else []
            ),
            *(["ignore range"] if self.ignore_range and rec.range else []),
        ]
        rec.fault = ", ".join(notes)
        log.info(
            "firmware: %s bytes %d-%d of %d to %s (%d)%s", name, start, end, size,
            mac or req.peer, rec.status, f" [{rec.fault}]" if rec.fault else "",
        )  # fmt: skip
        return Response(rec.status, b"", headers, stream=self._body(path, fault, rec))

    async def _body(self, path: Path, fault: _Fault, rec: FirmwareRequest) -> AsyncIterator[bytes]:
        async with contextlib.aclosing(self._chunks(path, fault, rec)) as chunks:
            async for chunk in chunks:
                if fault.cut_after is not None and rec.sent + len(chunk) >= fault.cut_after:
                    head = chunk[: fault.cut_after - rec.sent]
                    if head:
                        rec.sent += len(head)
                        yield head
                    raise AbortConnection(f"fault: cut after {fault.cut_after} bytes")
                stall = fault.stall_after
                if stall is not None and rec.sent <= stall < rec.sent + len(chunk):
                    head = chunk[: stall - rec.sent]
                    if head:
                        rec.sent += len(head)
                        yield head
                    await asyncio.sleep(fault.stall_seconds)
                    chunk = chunk[len(head) :]
                rec.sent += len(chunk)
                yield chunk
        if fault.cut_after is not None:
            raise AbortConnection(f"fault: cut after {fault.cut_after} bytes (all sent)")
        rec.complete = True

    @staticmethod
    async def _chunks(
        path: Path, fault: _Fault, rec: FirmwareRequest
    ) -> AsyncGenerator[bytes, None]:
        """The range of the file, then the fault's garbage, in CHUNK pieces."""
        with path.open("rb") as f:
            await asyncio.to_thread(f.seek, rec.start)
            left = rec.end - rec.start
            while left > 0:
                chunk = await asyncio.to_thread(f.read, min(CHUNK, left))
                if not chunk:
                    return  # the file shrank: the peer sees a short body
                left -= len(chunk)
                yield chunk
        extra = fault.extra
        while extra > 0:
            chunk = _GARBAGE[: min(CHUNK, extra)]
            extra -= len(chunk)
            yield chunk
