"""The daemon's own log files: bounded rotation, redaction as on the console, records
(tracebacks included) selected by time, the upload cap."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hss_pu.config import parse_config_doc
from hss_pu.logfiles import LOG_NAME, LogFiles, records, select
from hss_pu.logsetup import REDACTED, add_secret
from hss_pu.schema import SchemaError


@pytest.fixture
def files(tmp_path: Path) -> Iterator[LogFiles]:
    lf = LogFiles(tmp_path / "logs", files=3, file_bytes=8192)
    lf.open()
    logger = logging.getLogger("hss_pu.test.logfiles")
    logger.addHandler(lf)
    logger.setLevel(logging.DEBUG)
    yield lf
    logger.removeHandler(lf)
    lf.close()


def _all(lf: LogFiles) -> bytes:
    assert lf.flush_pending()
    return b"".join(p.read_bytes() for p in lf.paths() if p.exists())


def test_rotation_keeps_the_bound_and_whole_records(files: LogFiles) -> None:
    log = logging.getLogger("hss_pu.test.logfiles")
    for i in range(2000):
        log.info("record %05d %s", i, "x" * 40)
    data = _all(files)
    sizes = [p.stat().st_size for p in files.paths() if p.exists()]
    assert len(sizes) == 3 and all(s <= 8192 for s in sizes), sizes
    assert not (files.directory / f"{LOG_NAME}.3").exists()
    recs = list(records(data.splitlines(keepends=True)))
    numbers = [int(text.split(b"record ")[1][:5]) for _, text in recs]
    assert numbers == list(range(numbers[0], 2000)), "a record lost or cut inside the kept ones"
    assert numbers[0] > 1500  # the oldest went
    for p in files.paths():  # every file starts with a record: rotation is between records
        assert p.read_bytes()[:2] == b"20"


def test_secrets_redacted_as_on_the_console(files: LogFiles) -> None:
    add_secret("F1le-Secret-pw")
    log = logging.getLogger("hss_pu.test.logfiles")
    log.info("wss://vd/Vd?login_code=X&login_passwd=F1le-Secret-pw&x=1")
    try:
        raise RuntimeError("boom F1le-Secret-pw")
    except RuntimeError:
        log.exception("failed with %s", "F1le-Secret-pw")
    data = _all(files)
    assert b"F1le-Secret-pw" not in data
    assert data.count(REDACTED.encode()) >= 3


def test_a_traceback_is_one_record_of_several_lines(files: LogFiles) -> None:
    log = logging.getLogger("hss_pu.test.logfiles")
    log.info("before")
    try:
        raise ValueError("inner\n2026-01-01T00:00:00.000Z INFO forged: record")
    except ValueError:
        log.exception("it failed")
    log.info("after")
    recs = list(records(_all(files).splitlines(keepends=True)))
    assert [r[1].split(b": ", 1)[1].split(b"\n")[0] for r in recs] == [
        b"before",
        b"it failed",
        b"after",
    ]
    tb = recs[1][1]
    assert b"Traceback" in tb and b"ValueError" in tb and tb.count(b"\n") > 3
    assert all(line.startswith(b" ") for line in tb.splitlines()[1:])  # no forged start
    assert recs[0][0] <= recs[1][0] <= recs[2][0]


def _rec(at: str, text: str) -> tuple[float, bytes]:
    t = dt.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()
    return t, f"{at[:-3]}Z INFO x: {text}\n".encode()


def test_select_is_inclusive_to_the_second_and_capped_keeping_the_newest() -> None:
    recs = [
        _rec("2026-01-01T10:00:00.999000", "a"),
        _rec("2026-01-01T10:00:01.000000", "b"),
        _rec("2026-01-01T10:00:02.999000", "c"),
        _rec("2026-01-01T10:00:03.000000", "d"),
    ]
    start = dt.datetime(2026, 1, 1, 10, 0, 1, tzinfo=dt.UTC).timestamp()
    end = dt.datetime(2026, 1, 1, 10, 0, 2, tzinfo=dt.UTC).timestamp()
    sel = select(recs, start, end, 10_000)
    assert sel.body == recs[1][1] + recs[2][1] and sel.omitted_records == 0
    assert select(recs, end + 10, end + 20, 10_000).body == b""
    many = [_rec(f"2026-01-01T10:00:01.{i:03d}000", f"n{i:03d} " + "y" * 50) for i in range(100)]
    capped = select(many, start, end, 2000)
    assert len(capped.body) <= 2000 and capped.omitted_records > 0
    first, *rest = capped.body.splitlines(keepends=True)
    assert first.startswith(b"[hss-pu: ") and b"capped at 2000 bytes" in first
    assert b"".join(rest) == b"".join(t for _, t in many[-len(rest) :])  # the newest, whole


def test_log_files_config_is_validated() -> None:
    base = {"device": {"id": "d", "password": "pw", "mac": "02:00:00:00:00:01"},
            "platform": {"schedule_url": "https://h"}}  # fmt: skip
    doc = parse_config_doc({**base, "log": {"files": 2, "file_kb": 256}})
    assert (doc.log.files, doc.log.file_kb) == (2, 256)
    for bad in ({"files": 0}, {"files": 17}, {"file_kb": 8}, {"file_kb": "1M"}):
        with pytest.raises(SchemaError, match=r"log\.(files|file_kb)"):
            parse_config_doc({**base, "log": bad})


def test_the_embedded_platforms_lines_are_not_the_cameras(tmp_path: Path) -> None:
    """`make run` runs the reference platform in the daemon's process: its lines stay out
    of the camera's log (and so out of what the camera uploads)."""
    lf = LogFiles(tmp_path / "logs", files=2, file_bytes=8192)
    lf.open()
    root = logging.getLogger("hss_pu")
    root.addHandler(lf)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        logging.getLogger("hss_pu.platform.vd").info("Vd: -> PU-0001 LogUploadAsync")
        logging.getLogger("hss_pu.logs").info("the camera's own line")
        data = _all(lf)
    finally:
        root.removeHandler(lf)
        root.setLevel(level)
        lf.close()
    assert b"the camera's own line" in data and b"LogUploadAsync" not in data
