"""Logging: one line per event on stderr, journald-aware, with secrets redacted.

Redaction happens in the formatter, on the final text, so it also covers exception
tracebacks and third-party libraries (websockets logs the URLs it connects to, and the
Vd URL carries the password in ``login_passwd``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import TextIO

from hss_pu.wire.urls import REDACTED

__all__ = [
    "REDACTED",
    "OneLineFormatter",
    "RedactingFilter",
    "add_secret",
    "redact",
    "redacted_logger",
    "setup_logging",
]

# Query parameters and key/values that carry secrets wherever they appear (a struct's
# repr quotes its value: ``hb_token='...'``).
_SECRET_PARAMS = re.compile(
    r"(?P<key>\b(?:login_passwd|passphrase|password|passwd|hb_token|token)"
    r"(?:=['\"]?|\"?\s*:\s*\"?|'\s*:\s*'))(?P<val>[^&\s\"',}]+)",
    re.IGNORECASE,
)

_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def add_secret(value: str) -> None:
    """Register a literal secret (the device password) to blank out of every log line."""
    global _secrets_re
    if len(value) < 3:  # too short to redact without mangling ordinary text
        return
    with _lock:
        from urllib.parse import quote, quote_plus

        _secrets.update({value, quote(value, safe=""), quote_plus(value)})
        alts = sorted(_secrets, key=len, reverse=True)
        _secrets_re = re.compile("|".join(re.escape(s) for s in alts))


def redact(text: str) -> str:
    text = _SECRET_PARAMS.sub(lambda m: m.group("key") + REDACTED, text)
    pat = _secrets_re
    return pat.sub(REDACTED, text) if pat is not None else text


# A query parameter's value, URL scheme or not: a logged frame is cut short in the middle
# ("url...m4a?sig=..."), so what is left of a signed URL may have lost its scheme.
_QUERY_VALUES = re.compile(r"([?&][^=&\s\"'?]+=)[^&\s\"'\\]+")


class RedactingFilter(logging.Filter):
    """Redacts a record at its source, for loggers known to print secrets (a library
    logging the request line of the Vd URL): then no handler, ours or not, sees them.
    ``queries``: also every URL query value (the Vd frames at debug level carry the
    platform's signed upload, snapshot and playback URLs, which are credentials)."""

    def __init__(self, queries: bool = False) -> None:
        super().__init__()
        self.queries = queries

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if self.queries:
            clean = _QUERY_VALUES.sub(lambda m: m.group(1) + REDACTED, clean)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def redacted_logger(name: str, *, queries: bool = False) -> logging.Logger:
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter(queries))
    return logger


# syslog priorities, understood by journald as a "<N>" prefix (sd-daemon(3)).
_SYSLOG_LEVEL = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class OneLineFormatter(logging.Formatter):
    """Folds tracebacks into the line and redacts secrets from the finished text."""

    def __init__(self, journald: bool) -> None:
        fmt = (
            "%(name)s: %(message)s"
            if journald
            else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        )
        super().__init__(fmt, datefmt="%Y-%m-%dT%H:%M:%S")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record)).replace("\r", "").replace("\n", " | ")
        if self.journald:
            return f"<{_SYSLOG_LEVEL.get(record.levelno, 6)}>{text}"
        return text


def _stderr_is_journal(stream: TextIO) -> bool:
    """True when systemd connected this stream to the journal (JOURNAL_STREAM=dev:ino)."""
    js = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(journald=_stderr_is_journal(stream)))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries stay at warning unless we debug.
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("websockets", "httpx", "httpcore", "asyncio"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger().level))
