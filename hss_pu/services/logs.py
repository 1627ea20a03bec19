"""LogUploadAsync: the daemon's own log lines of a time range, PUT to a URL, then LogDone.

wire-notes: reply ``{}`` at once; PUT (``text/plain; charset=utf-8``) the lines whose time
lies in ``[start, end]`` (local time in the device ``tz``), a zero-length body when there
are none; then the ``LogDone`` event, ``trans_id`` echoed in the JSON type it came in.
The URL obeys the URL-safety rules: a refused one is error 12 and nothing is sent.

One upload runs at a time and a few more wait their turn, in order; beyond that the
request is refused at once (error 1, "busy") rather than accepted and never done. A body
is at most :data:`MAX_UPLOAD_BYTES` (the newest records of the range, after a line saying
what was left out: :func:`hss_pu.logfiles.select`). A LogDone that finds the link down
waits for the next login (a few are kept, the oldest dropped with a log line).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hss_pu.clients.http import HttpClient, UploadError, UrlGuard, UrlNotAllowed, upload
from hss_pu.errors import DeviceFailure, InvalidParam
from hss_pu.logfiles import LogFiles
from hss_pu.services.urlcheck import check_rpc_url
from hss_pu.tasks import TaskSet
from hss_pu.wire.urls import redact_url
from hss_pu.wire.vd import LogDoneParams, LogUploadAsyncParams

__all__ = ["CONTENT_TYPE", "MAX_UPLOAD_BYTES", "MAX_WAITING", "LogUploadService"]

log = logging.getLogger("hss_pu.logs")

CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_UPLOAD_BYTES = 4 * 1024 * 1024  # the default log files hold this much in all
MAX_WAITING = 3  # uploads accepted behind the one running
MAX_UNSENT_DONE = 8  # LogDone events kept while the link is down
ATTEMPTS = 3  # tries of a PUT that failed in transit or with a 5xx
RETRY_DELAY = 2.0  # s (times backoff_scale) before the second try, doubled after

_FMT = "%Y-%m-%dT%H:%M:%S"


def _epoch(text: str, tz: int, field: str) -> float:
    """A ``YYYY-MM-DDThh:mm:ss`` local time in zone ``tz`` (whole hours east of UTC)."""
    try:
        naive = dt.datetime.strptime(text, _FMT)
    except ValueError:
        raise InvalidParam(f"params.{field}: not a valid date/time: {text!r}") from None
    return naive.replace(tzinfo=dt.timezone(dt.timedelta(hours=tz))).timestamp()


@dataclass(frozen=True)
class _Job:
    p: LogUploadAsyncParams
    start: float
    end: float


class LogUploadService:
    """``send_done(params)``: the link's typed event path (False: no session now);
    ``tz()``: the device's zone now."""

    def __init__(
        self,
        files: LogFiles,
        *,
        http: HttpClient,
        guard: UrlGuard,
        mac: str,
        tz: Callable[[], int],
        send_done: Callable[[LogDoneParams], Awaitable[bool]],
        backoff_scale: float = 1.0,
        max_bytes: int = MAX_UPLOAD_BYTES,
    ) -> None:
        self.files = files
        self.http = http
        self.guard = guard
        self.mac = mac
        self.tz = tz
        self.send_done = send_done
        self.backoff_scale = backoff_scale
        self.max_bytes = max_bytes
        self._jobs: collections.deque[_Job] = collections.deque()
        self._running = False
        self._unsent: collections.deque[LogDoneParams] = collections.deque()
        self._tasks = TaskSet(log)
        self.uploads = 0  # finished (success or fail), for status
        self.failures = 0

    async def upload_async(self, p: LogUploadAsyncParams) -> None:
        tz = self.tz()
        start = _epoch(p.start, tz, "start")
        end = _epoch(p.end, tz, "end")
        if start > end:
            raise InvalidParam(f"params.start {p.start} is after params.end {p.end}")
        await check_rpc_url(self.guard, p.url, "params.url")
        if len(self._jobs) > MAX_WAITING:  # the one running (the first) and MAX_WAITING
            raise DeviceFailure(
                f"busy: a log upload is running and {len(self._jobs) - 1} wait; ask again later"
            )
        self._jobs.append(_Job(p, start, end))
        log.info(
            "logs: upload of %s .. %s (tz %+d) to %s accepted (trans_id %r)",
            p.start, p.end, tz, redact_url(p.url), p.trans_id,
        )  # fmt: skip
        if not self._running:
            self._running = True
            self._tasks.spawn(self._work(), "log-upload")

    async def _work(self) -> None:
        try:
            while self._jobs:
                job = self._jobs[0]
                try:
                    await self._one(job)
                finally:
                    self._jobs.popleft()
        finally:
            self._running = False

    async def _one(self, job: _Job) -> None:
        p = job.p
        size = 0
        reason: str | None = None
        try:
            sel = await asyncio.to_thread(self.files.select, job.start, job.end, self.max_bytes)
            if sel.omitted_records:
                log.warning(
                    "logs: %d record(s) of %s .. %s left out (uploads are capped at %d bytes)",
                    sel.omitted_records, p.start, p.end, self.max_bytes,
                )  # fmt: skip
            await self._put(p.url, sel.body)
            size = len(sel.body)
        except UploadError as exc:
            reason = str(exc)
        except OSError as exc:  # the log files could not be read
            reason = f"cannot read the log files: {exc.strerror or exc}"
        self.uploads += 1
        if reason is None:
            log.info("logs: %d bytes uploaded (trans_id %r)", size, p.trans_id)
        else:
            self.failures += 1
            log.warning("logs: upload failed (trans_id %r): %s", p.trans_id, reason)
        done = LogDoneParams(
            mac_id=self.mac,
            trans_id=p.trans_id,
            status="success" if reason is None else "fail",
            start=p.start,
            end=p.end,
            url=p.url,
            size=size,
            reason=None if reason is None else reason[:500],
        )
        await self._send(done)

    async def _put(self, url: str, body: bytes) -> None:
        delay = RETRY_DELAY * self.backoff_scale
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await upload(self.http, url, body, CONTENT_TYPE)
                return
            except UrlNotAllowed:
                raise  # its name answers differently now: no point in trying again
            except UploadError as exc:
                transient = exc.status is None or exc.status >= 500
                if not transient or attempt == ATTEMPTS:
                    raise
                log.info("logs: upload attempt %d failed (%s); trying again", attempt, exc)
            await asyncio.sleep(delay)
            delay *= 2

    async def _send(self, done: LogDoneParams) -> None:
        if await self.send_done(done):
            return
        if len(self._unsent) >= MAX_UNSENT_DONE:
            lost = self._unsent.popleft()
            log.warning("logs: LogDone for trans_id %r dropped (too many unsent)", lost.trans_id)
        self._unsent.append(done)
        log.info("logs: LogDone for trans_id %r waits for the next login", done.trans_id)

    async def logged_in(self, session: Any) -> None:
        """After each login: the LogDone events the link could not take."""
        while self._unsent:
            if not await self.send_done(self._unsent[0]):
                return
            self._unsent.popleft()

    def status(self) -> dict[str, object]:
        return {
            "files": [str(p) for p in self.files.paths() if p.exists()],
            "records_written": self.files.written,
            "records_dropped": self.files.dropped,
            "file_error": self.files.last_error,
            "uploads": self.uploads,
            "upload_failures": self.failures,
            "uploads_waiting": len(self._jobs),
        }

    async def close(self) -> None:
        await self._tasks.cancel_all(2.0)
        await self.http.aclose()
