from __future__ import annotations

import io
import logging
import os

import pytest

from hss_pu.logsetup import REDACTED, add_secret, redact, setup_logging


def test_redacts_vd_url_password() -> None:
    url = "wss://vd:443/Vd?login_code=PU-1&login_passwd=hunter2%21x&hardware_model=M"
    out = redact(f"connecting to {url}")
    assert "hunter2" not in out
    assert f"login_passwd={REDACTED}&hardware_model=M" in out


def test_redacts_srt_passphrase_and_json_password() -> None:
    assert "abcdefghij" not in redact("srt://h:9000?streamid=x&passphrase=abcdefghij")
    assert "topsecret" not in redact('{"password": "topsecret"}')


def test_registered_secret_redacted_everywhere_even_quoted() -> None:
    add_secret("p@ss w0rd/x")
    for form in ("p@ss w0rd/x", "p%40ss%20w0rd%2Fx", "p%40ss+w0rd%2Fx"):
        assert form not in redact(f"value {form} here")


def _capture(level: str = "info") -> io.StringIO:
    buf = io.StringIO()
    setup_logging(level, buf)
    return buf


def test_one_line_per_event_with_traceback_folded() -> None:
    add_secret("Tr4ceback-Secret")
    buf = _capture()
    log = logging.getLogger("hss_pu.test")
    try:
        raise RuntimeError("boom with Tr4ceback-Secret inside")
    except RuntimeError:
        log.exception("failed")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    assert "RuntimeError" in lines[0] and "Tr4ceback-Secret" not in lines[0]


def test_journald_prefix(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(str(tmp_path), "stream")
    with open(path, "w+") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("info", f)
        logging.getLogger("hss_pu.j").warning("careful")
        f.flush()
        f.seek(0)
        assert f.read() == "<4>hss_pu.j: careful\n"


def test_library_loggers_quiet_at_info() -> None:
    _capture("info")
    assert logging.getLogger("websockets").getEffectiveLevel() >= logging.WARNING


def test_vd_frames_at_debug_lose_every_url_query_value(caplog: pytest.LogCaptureFixture) -> None:
    """websockets logs each Vd frame at debug level, cut short in the middle: the
    platform's signed URLs (uploads, snapshots, playback) must not reach any handler,
    even when the cut took the scheme away."""
    from hss_pu.logsetup import redacted_logger

    log = redacted_logger("hss_pu.vd.ws.test", queries=True)
    caplog.set_level(logging.DEBUG, logger="hss_pu.vd.ws.test")
    log.debug("< TEXT %r [111 bytes]", '{"params":{"url...m4a?sig=SIG-42&x=1"}}')
    log.debug("< TEXT %r", '{"url":"https://h/s.jpg?X-Amz-Signature=abc123&X-Amz-Date=2026"}')
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "SIG-42" not in text and "abc123" not in text
    assert f"sig={REDACTED}&x={REDACTED}" in text and "https://h/s.jpg?X-Amz-Signature=" in text
