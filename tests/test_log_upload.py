"""LogUploadAsync against the reference platform: the lines of the range and nothing
else, no password anywhere, a zero-length upload for an empty range, LogDone with
trans_id in its JSON type, a refused upload reported as fail, a refused URL as 12."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hss_pu.logfiles import records
from hss_pu.logsetup import REDACTED
from hss_pu.reference_platform.vd import Record

from .support.rig import DEVICE, PASSWORD, MakeRig, Rig

pytestmark = pytest.mark.slow

TZ = 8  # the device's zone in these tests: the range is local time there


@pytest.fixture
async def tz_rig(make_rig: MakeRig, caplog: pytest.LogCaptureFixture) -> Rig:
    """The rig's daemon (control plane) at tz 8, logging at info."""
    caplog.set_level(logging.INFO, logger="hss_pu")  # what a daemon at log.level info logs
    r = await make_rig(start_media=False)
    local = dt.datetime.now(dt.timezone(dt.timedelta(hours=TZ))).strftime("%Y-%m-%dT%H:%M:%S")
    reply = await r.call("Settime", {"datetime": local, "tz": TZ, "offset": 3600})
    assert reply.err is None
    return r


def _local(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone(dt.timedelta(hours=TZ))).strftime(
        "%Y-%m-%dT%H:%M:%S"
    )


def _file_records(storage: Path) -> list[tuple[float, bytes]]:
    d = storage / "logs"
    paths = [*sorted(d.glob("hss-pu.log.*"), key=lambda p: -int(p.suffix[1:])), d / "hss-pu.log"]
    data = b"".join(p.read_bytes() for p in paths if p.exists())
    return list(records(data.splitlines(keepends=True)))


async def _next_second() -> None:
    await asyncio.sleep(1.0 - time.time() % 1.0 + 0.02)


async def _log_done(rig: Rig, trans_id: Any) -> Record:
    return await rig.platform.wait_record(
        lambda r: r.name == "LogDone" and r.params.get("trans_id") == trans_id
        and type(r.params["trans_id"]) is type(trans_id),
        timeout=10,
    )  # fmt: skip


async def test_uploads_exactly_the_lines_of_the_range_without_the_password(tz_rig: Rig) -> None:
    rig = tz_rig
    log = logging.getLogger("hss_pu.test.upload")
    await _next_second()
    log.info("marker A")
    await _next_second()
    log.info("marker B with the password %s and login_passwd=%s", PASSWORD, PASSWORD)
    try:
        raise RuntimeError(f"marker B traceback {PASSWORD}")
    except RuntimeError:
        log.exception("marker B failed")
    await _next_second()
    log.info("marker C")
    assert rig.daemon.logfiles is not None and rig.daemon.logfiles.flush_pending()
    recs = _file_records(rig.storage)
    b_at = next(at for at, text in recs if b"marker B with" in text)
    second = float(int(b_at))
    reply = await rig.call(
        "LogUploadAsync",
        {"trans_id": "t-range", "start": _local(second), "end": _local(second),
         "url": rig.platform.log_upload_url("range.log")},
    )  # fmt: skip
    assert reply.err is None and reply.resp == {}
    done = await _log_done(rig, "t-range")
    up = await rig.platform.wait_log_upload("range.log")
    assert up.content_type == "text/plain; charset=utf-8"
    want = b"".join(text for at, text in _file_records(rig.storage) if int(at) == second)
    assert up.body == want
    assert b"marker B with" in up.body and b"marker B failed" in up.body
    assert b"Traceback" in up.body and b"marker B traceback" in up.body  # its whole record
    assert b"marker A" not in up.body and b"marker C" not in up.body
    assert REDACTED.encode() in up.body
    assert done.err is None
    assert done.params == {
        "mac_id": rig.daemon.config.device.mac, "trans_id": "t-range", "status": "success",
        "start": _local(second), "end": _local(second),
        "url": rig.platform.log_upload_url("range.log"), "size": len(up.body),
    }  # fmt: skip
    # The password is nowhere: not in the upload, not in any log file.
    assert PASSWORD.encode() not in up.body
    for p in (rig.storage / "logs").iterdir():
        assert PASSWORD.encode() not in p.read_bytes(), p


async def test_empty_range_uploads_zero_bytes_and_trans_id_keeps_its_type(tz_rig: Rig) -> None:
    rig = tz_rig
    for trans_id, name in ((42, "empty-int.log"), ("42", "empty-str.log")):
        reply = await rig.call(
            "LogUploadAsync",
            {"trans_id": trans_id, "start": "2020-01-01T00:00:00", "end": "2020-01-01T01:00:00",
             "url": rig.platform.log_upload_url(name)},
        )  # fmt: skip
        assert reply.err is None
        done = await _log_done(rig, trans_id)
        assert done.params["status"] == "success" and done.params["size"] == 0
        assert (await rig.platform.wait_log_upload(name)).body == b""


async def test_a_refused_upload_gives_logdone_fail_with_the_reason(tz_rig: Rig) -> None:
    rig = tz_rig
    rig.platform.log_upload_status = 500
    reply = await rig.call(
        "LogUploadAsync",
        {"trans_id": 7, "start": "2020-01-01T00:00:00", "end": _local(time.time()),
         "url": rig.platform.log_upload_url("refused.log")},
    )  # fmt: skip
    assert reply.err is None
    done = await _log_done(rig, 7)
    assert done.err is None
    assert done.params["status"] == "fail" and done.params["size"] == 0
    assert "HTTP 500" in done.params["reason"] and "told to refuse" in done.params["reason"]
    assert not rig.platform.log_uploads


@pytest.mark.parametrize(
    "url",
    ["https://10.20.30.40/logs/x.log", "http://{host}/logs/x.log", "ftp://{host}/x.log"],
)
async def test_a_refused_url_answers_12_and_sends_nothing(tz_rig: Rig, url: str) -> None:
    rig = tz_rig
    host = rig.platform.schedule_url.split("//")[1]
    since = rig.platform.now()
    reply = await rig.call(
        "LogUploadAsync",
        {"trans_id": "bad", "start": "2020-01-01T00:00:00", "end": "2020-01-01T00:00:01",
         "url": url.format(host=host)},
    )  # fmt: skip
    assert reply.err is not None and reply.err.code == 12, reply
    await asyncio.sleep(0.3)
    assert not any(r.name == "LogDone" and r.time >= since for r in rig.platform.records)
    assert not rig.platform.log_uploads


async def test_start_after_end_is_12(tz_rig: Rig) -> None:
    rig = tz_rig
    reply = await rig.call(
        "LogUploadAsync",
        {"trans_id": 1, "start": "2020-01-02T00:00:00", "end": "2020-01-01T00:00:00",
         "url": rig.platform.log_upload_url("x.log")},
    )  # fmt: skip
    assert reply.err is not None and reply.err.code == 12


@pytest.mark.platform(admin_port=0)
async def test_platform_logs_command_shows_the_devices_log(tz_rig: Rig) -> None:
    """``hss-pu platform logs DEVICE``: LogUploadAsync of the last hour, the text shown."""
    rig = tz_rig
    logging.getLogger("hss_pu.test.upload").info("visible through the CLI")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hss_pu", "platform", "logs", DEVICE,
        "--state-dir", str(rig.platform.options.state_dir),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert b"visible through the CLI" in out and PASSWORD.encode() not in out
    assert b"LogDone success" in err
    assert rig.platform.log_uploads[-1].body == out


async def test_one_upload_at_a_time_three_wait_more_are_busy(tz_rig: Rig) -> None:
    rig = tz_rig
    rig.platform.log_upload_delay = 0.5
    base = {"start": "2020-01-01T00:00:00", "end": "2020-01-01T00:00:01"}
    codes = []
    for i in range(6):
        params = {**base, "trans_id": i, "url": rig.platform.log_upload_url(f"busy-{i}.log")}
        reply = await rig.call("LogUploadAsync", params)
        codes.append(None if reply.err is None else reply.err.code)
    assert codes == [None, None, None, None, 1, 1], codes  # 1 running + 3 waiting
    dones = [await _log_done(rig, i) for i in range(4)]
    assert [d.params["status"] for d in dones] == ["success"] * 4
    assert [d.index for d in dones] == sorted(d.index for d in dones)  # in order
    assert len(rig.platform.log_uploads) == 4
    again = {**base, "trans_id": 9, "url": rig.platform.log_upload_url("after.log")}
    assert (await rig.call("LogUploadAsync", again)).err is None  # free again
