"""The daemon's own log files under ``storage.dir``: what LogUploadAsync uploads.

journald keeps the console output on a Pi, but the platform can only ask the daemon for
its log, and a laptop or a container may keep no journal at all: so the daemon also
writes every record to a few rotating files of bounded size (``log.files`` files of
``log.file_kb`` KiB each). The text is redacted by :func:`hss_pu.logsetup.redact`, the
very function the console and journald output goes through, so a secret that stays out
of the journal stays out of these files and of every upload.

Each record starts a line with its time on the daemon's clock (the one it reports to
the platform, which may differ from the host's) in UTC, ``2026-11-30T14:20:06.123Z``;
the further lines of a record (a traceback) start with a space, so no message text can
pass for the start of a record. Rotation happens between records, never inside one.

Records are formatted on the thread that logs them (cheap) and written by one writer
thread, so the event loop never waits for the disk. The queue between them is bounded
in records and in bytes; what does not fit is counted, and the count written once the
writer catches up. Files are flushed after each batch and never fsync'ed: a power cut
may lose the last lines, a log is not worth wearing out an SD card for.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from hss_pu.logsetup import redact

__all__ = [
    "LOG_NAME",
    "MAX_RECORD_BYTES",
    "FileFormatter",
    "LogFiles",
    "Selection",
    "records",
    "select",
]

LOG_NAME = "hss-pu.log"
MAX_RECORD_BYTES = 16 * 1024  # a longer record is cut (and says so)
MAX_QUEUED = 4096  # records waiting for the writer
MAX_QUEUED_BYTES = 4 * 1024 * 1024
NOTE_RESERVE = 200  # bytes kept for the line saying what the cap left out

_START = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z ")


class FileFormatter(logging.Formatter):
    """``<UTC time on the daemon's clock> LEVEL name: message``, redacted; a record's
    further lines indented by one space."""

    def __init__(self, offset: Callable[[], float] = lambda: 0.0) -> None:
        super().__init__("%(levelname)-7s %(name)s: %(message)s")
        self._offset = offset

    def format(self, record: logging.LogRecord) -> str:
        at = dt.datetime.fromtimestamp(record.created + self._offset(), dt.UTC)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
        text = redact(super().format(record)).replace("\r", "")
        if len(text) > MAX_RECORD_BYTES:
            text = text[:MAX_RECORD_BYTES] + " [record cut: too long]"
        return f"{stamp} " + text.replace("\n", "\n ") + "\n"


PLATFORM_LOGGERS = "hss_pu.platform"  # the reference platform's loggers


class LogFiles(logging.Handler):
    """A logging handler writing to ``directory/hss-pu.log`` and its rotations
    ``hss-pu.log.1`` (the newer) .. ``hss-pu.log.<files-1>``.

    ``offset()``: seconds the daemon's clock is ahead of the host's.
    """

    def __init__(
        self,
        directory: Path,
        *,
        files: int = 4,
        file_bytes: int = 1024 * 1024,
        offset: Callable[[], float] = lambda: 0.0,
    ) -> None:
        if files < 1 or file_bytes < 4096:
            raise ValueError("log files: at least one file of at least 4 KiB")
        super().__init__()
        self.setFormatter(FileFormatter(offset))
        # The camera's log only: `make run` embeds the reference platform in this process,
        # and its lines (the platform's view of every request) are not the device's.
        self.addFilter(lambda r: not r.name.startswith(PLATFORM_LOGGERS))
        self.directory = directory
        self.files = files
        self.file_bytes = file_bytes
        self.written = 0  # records written
        self.dropped = 0  # records lost: the queue was full or the disk refused
        self.last_error: str | None = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._unreported = 0  # drops not yet written into the log
        self._cond = threading.Condition()
        self._busy = False  # the writer holds a batch
        self._file_lock = threading.Lock()  # the files: the writer vs a reader
        self._fh: BinaryIO | None = None
        self._size = 0
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- set-up ------------------------------------------------------------------------

    def paths(self) -> list[Path]:
        """The files, oldest first."""
        return [self.directory / f"{LOG_NAME}.{i}" for i in range(self.files - 1, 0, -1)] + [
            self.directory / LOG_NAME
        ]

    def open(self) -> None:
        """Create the directory, drop rotations beyond ``files`` (the setting shrank) and
        start the writer. OSError when the directory cannot be made."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in self.directory.glob(f"{LOG_NAME}.*"):
            suffix = p.name.removeprefix(f"{LOG_NAME}.")
            if suffix.isdigit() and int(suffix) >= self.files:
                p.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._run, name="hss-logfiles", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, stop the writer, close the file."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._file_lock:
            self._close_file()
        super().close()

    # -- the logging side (any thread) ---------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.format(record).encode("utf-8", "backslashreplace")
        except Exception:  # a record that cannot be formatted must not break logging
            self.handleError(record)
            return
        with self._cond:
            if self._stop:
                return
            if len(self._pending) >= MAX_QUEUED or self._pending_bytes + len(data) > (
                MAX_QUEUED_BYTES
            ):
                self.dropped += 1
                self._unreported += 1
                return
            self._pending.append(data)
            self._pending_bytes += len(data)
            self._cond.notify()

    def flush_pending(self, timeout: float = 5.0) -> bool:
        """Wait until every record logged so far is in the files (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    # -- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if not self._pending and self._stop:
                    return
                batch = list(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                lost, self._unreported = self._unreported, 0
                self._busy = True
            if lost:
                msg = f"{lost} log record(s) lost: logged faster than the disk took them"
                rec = {"name": "hss_pu.logfiles", "levelname": "WARNING", "msg": msg}
                note = FileFormatter().format(logging.makeLogRecord(rec))
                batch.insert(0, note.encode())
            try:
                with self._file_lock:
                    self._write(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: Iterable[bytes]) -> None:
        n = 0
        for data in batch:
            try:
                if self._fh is None:
                    self._open_file()
                if self._size > 0 and self._size + len(data) > self.file_bytes:
                    self._rotate()
                assert self._fh is not None
                self._fh.write(data)
                self._size += len(data)
                self.written += 1
                n += 1
            except OSError as exc:  # disk full, read-only: the record is lost, not the daemon
                self.dropped += 1
                self.last_error = exc.strerror or str(exc)
                self._close_file()
        if n:
            try:
                if self._fh is not None:
                    self._fh.flush()
                self.last_error = None
            except OSError as exc:
                self.last_error = exc.strerror or str(exc)
                self._close_file()

    def _open_file(self) -> None:
        path = self.directory / LOG_NAME
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fh = os.fdopen(fd, "ab")
        self._size = os.fstat(fd).st_size

    def _close_file(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

    def _rotate(self) -> None:
        self._close_file()
        paths = self.paths()  # oldest first; the last is the current file
        for older, newer in itertools.pairwise(paths):
            if newer.exists():
                os.replace(newer, older)
        self._open_file()

    # -- reading (a worker thread) --------------------------------------------------------

    def select(self, start: float, end: float, cap: int) -> Selection:
        """The records whose time (to the second) lies in [start, end], from the files."""
        self.flush_pending()
        with self._file_lock:
            return select(records(_lines(self.paths())), start, end, cap)


def _lines(paths: Iterable[Path]) -> Iterator[bytes]:
    """The lines of the files in order (a missing file is skipped: never rotated yet)."""
    for p in paths:
        try:
            with open(p, "rb") as f:
                yield from f
        except FileNotFoundError:
            continue


def records(lines: Iterable[bytes]) -> Iterator[tuple[float, bytes]]:
    """(epoch, the record's lines) per record; lines before the first record start (a
    damaged file) belong to none and are skipped."""
    at: float | None = None
    buf: list[bytes] = []
    for line in lines:
        m = _START.match(line)
        if m is not None:
            try:
                t = dt.datetime.strptime(m.group(1).decode(), "%Y-%m-%dT%H:%M:%S")
            except ValueError:
                m = None
            else:
                if at is not None:
                    yield at, b"".join(buf)
                at = t.replace(tzinfo=dt.UTC).timestamp() + int(m.group(2)) / 1000
                buf = [line]
                continue
        if at is not None:
            buf.append(line if line.endswith(b"\n") else line + b"\n")
    if at is not None:
        yield at, b"".join(buf)


class Selection:
    """What an upload sends: ``body``, and how much of the range the cap left out."""

    def __init__(self, body: bytes, omitted_records: int, omitted_bytes: int) -> None:
        self.body = body
        self.omitted_records = omitted_records
        self.omitted_bytes = omitted_bytes


def select(recs: Iterable[tuple[float, bytes]], start: float, end: float, cap: int) -> Selection:
    """The records in [start, end + 1) (times given to the second include that whole
    second). Above ``cap`` bytes the newest are kept, after one line saying how much of
    the range was left out."""
    kept: collections.deque[bytes] = collections.deque()
    size = 0
    omitted = omitted_bytes = 0
    for at, text in recs:
        if not start <= at < end + 1:
            continue
        kept.append(text)
        size += len(text)
        while size > cap and kept:
            old = kept.popleft()
            size -= len(old)
            omitted += 1
            omitted_bytes += len(old)
    if not omitted:
        return Selection(b"".join(kept), 0, 0)
    while kept and size + NOTE_RESERVE > cap:  # room for the note
        old = kept.popleft()
        size -= len(old)
        omitted += 1
        omitted_bytes += len(old)
    note = (
        f"[hss-pu: {omitted} earlier record(s), {omitted_bytes} bytes, of this range left "
        f"out: a log upload is capped at {cap} bytes]\n"
    ).encode()
    return Selection(note + b"".join(kept), omitted, omitted_bytes)
