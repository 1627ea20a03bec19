"""The reference platform's Vr side (clause 9.3.4) over real TLS, driven by bare httpx.

The client is deliberately not hss_pu.clients.vr: the platform is the yardstick the PU is
measured against, so it is checked with hand-built requests (bodies from hss_pu.wire.vr).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hss_pu.cli import main
from hss_pu.reference_platform import vr as platform_vr
from hss_pu.reference_platform.faults import VrCutUpload
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.reference_platform.vr import decode_check
from hss_pu.reference_platform.web import HttpServer, Request, Response
from hss_pu.wire.vr import (
    CONTENT_TYPE_FORM,
    CONTENT_TYPE_TS,
    encode_create,
    encode_fail,
    encode_getcurrenttime,
    encode_save,
    encode_stat,
    parse_create_reply,
    parse_currenttime,
    parse_error_info,
)

from .support.rig import MAC, MakePlatform

START = 1_700_000_000.0

pytestmark = pytest.mark.platform(clock_offset=3600)  # Vr answers in the platform's time


@pytest.fixture(scope="session")
def segment_ts(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """2 s of 320x180 H.264 at 15 fps, a key frame every second: 30 frames, as a PU cuts."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg CLI")
    path = tmp_path_factory.mktemp("vr") / "seg.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15",
         "-t", "2", "-c:v", "libx264", "-g", "15", "-f", "mpegts", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path.read_bytes()


class Pu:
    """A hand-rolled PU: one keep-alive HTTPS client that sends Mac-Identity."""

    def __init__(self, platform: ReferencePlatform, http: httpx.AsyncClient) -> None:
        self.platform = platform
        self.http = http

    def cbk(self, channel: int) -> str:
        return self.platform.vr_cbk_url(channel)

    async def post(
        self, channel: int, body: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        hdrs = {"Content-Type": CONTENT_TYPE_FORM, **(headers or {})}
        return await self.http.post(self.cbk(channel), content=body, headers=hdrs)

    async def create(
        self,
        channel: int,
        size: int,
        start: float = START,
        duration: float = 2.0,
        discontinue: bool = False,
    ) -> tuple[str, str]:
        r = await self.post(channel, encode_create(size, start, duration, discontinue, True))
        assert r.status_code == 200, r.text
        reply = parse_create_reply(r.content)
        return reply.name, reply.url

    async def put(self, url: str, data: bytes) -> httpx.Response:
        return await self.http.put(url, content=data, headers={"Content-Type": CONTENT_TYPE_TS})

    async def save(self, channel: int, name: str) -> httpx.Response:
        return await self.post(channel, encode_save(name))

    async def upload(
        self, channel: int, data: bytes, start: float = START, discontinue: bool = False
    ) -> str:
        """create, PUT, save: one segment, all answered 200."""
        name, url = await self.create(channel, len(data), start, 2.0, discontinue)
        assert (await self.put(url, data)).status_code == 200
        r = await self.save(channel, name)
        assert (r.status_code, r.json()) == (200, {}), r.text
        return name


def _client(platform: ReferencePlatform, **kw: Any) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(platform.ca_file))
    return httpx.AsyncClient(verify=ctx, headers={"Mac-Identity": MAC}, trust_env=False, **kw)


@pytest.fixture
async def fake_pu(platform: ReferencePlatform) -> AsyncIterator[Pu]:
    """A hand-rolled PU's HTTPS client for ``platform``."""
    async with _client(platform) as http:
        yield Pu(platform, http)


# --- the happy path --------------------------------------------------------------------


async def test_create_put_save_and_decode_check(fake_pu: Pu, segment_ts: bytes) -> None:
    p = fake_pu.platform
    assert p.vr_cbk_url(3) == f"{p.schedule_url}/live/cseg/3"
    r = await fake_pu.post(3, encode_create(len(segment_ts), START, 2.0, False, True))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.headers["access-control-allow-origin"] == "*"
    reply = parse_create_reply(r.content)
    assert reply.name.startswith("ch3-") and not reply.drop
    assert reply.url == f"{p.schedule_url}/vr/seg/{reply.name}"
    assert reply.url.startswith("https://")
    assert p.vr.pending_names() == [reply.name]

    assert (await fake_pu.put(reply.url, segment_ts)).status_code == 200
    path = p.options.state_dir / "vr" / "3" / f"{reply.name}.ts"
    assert path.read_bytes() == segment_ts
    t0 = p.now()
    r = await fake_pu.save(3, reply.name)
    assert (r.status_code, r.json()) == (200, {})
    # save answered after the check: it is there at once
    (seg,) = p.vr_segments[3]
    assert (seg.name, seg.channel, seg.path, seg.mac) == (reply.name, 3, path, MAC)
    assert (seg.start, seg.duration, seg.size) == (START, 2.0, len(segment_ts))
    assert not seg.discontinue and seg.https and seg.gap is None
    assert (seg.content_type, seg.put_content_type) == (CONTENT_TYPE_TS, CONTENT_TYPE_TS)
    assert seg.put_mac == MAC
    assert seg.saved_at == pytest.approx(t0, abs=5) and seg.created_at <= seg.saved_at
    assert seg.saved_at - time.time() == pytest.approx(3600, abs=5)  # the platform clock
    check = seg.check
    assert check is not None and check.ok, check
    assert (check.frames, check.packets, check.corrupt_frames) == (30, 30, 0)
    assert check.key_first and (check.width, check.height, check.codec) == (320, 180, "h264")
    assert check.media_duration == pytest.approx(2.0, abs=0.01)
    assert check.ts_errors == 0
    assert p.vr.pending_names() == []

    # A PU that never heard its save answered (kill -9) uploads again under the same name
    # and saves again: both 200, the segment recorded once. Another size is refused.
    r = await fake_pu.put(reply.url, segment_ts)
    assert r.status_code == 200 and p.vr.reputs == 1
    assert (await fake_pu.save(3, reply.name)).status_code == 200
    assert len(p.vr_segments[3]) == 1
    r = await fake_pu.put(reply.url, segment_ts[:-188])
    assert r.status_code == 400 and "is saved with" in parse_error_info(r.content)

    # The next segment follows on: gap 0; a discontinuity has no gap.
    await fake_pu.upload(3, segment_ts, START + 2.0)
    await fake_pu.upload(3, segment_ts, START + 10.0, discontinue=True)
    await fake_pu.upload(3, segment_ts, START + 12.5)
    segs = await p.vr.wait_segments(3, 4, timeout=1)
    assert [s.gap for s in segs] == [None, 0.0, None, 0.5]
    assert [s.saved_at for s in segs] == sorted(s.saved_at for s in segs)

    n = len(segment_ts)
    assert p.vr_requests == {"create": 4, "put": 6, "save": 5}
    forms = sum(len(b) for b in (encode_save(s.name) for s in segs)) + len(encode_save(seg.name))
    creates = sum(len(encode_create(n, s.start, 2.0, s.discontinue, True)) for s in segs)
    assert p.vr_body_bytes == 6 * n - 188 + forms + creates
    assert 6 * n - 188 < p.vr_body_bytes < 6 * n + 1000
    assert 15 * 100 < p.vr_header_bytes < 15 * 400


async def test_wait_segments_waits_and_times_out(fake_pu: Pu, segment_ts: bytes) -> None:
    with pytest.raises(TimeoutError, match=r"channel 0: 0 of 1 segments saved within 0\.1 s"):
        await fake_pu.platform.vr.wait_segments(0, 1, timeout=0.1)
    waiter = asyncio.create_task(fake_pu.platform.vr.wait_segments(0, 2, timeout=10))
    await fake_pu.upload(0, segment_ts)
    assert not waiter.done()
    await fake_pu.upload(0, segment_ts, START + 2)
    assert [s.start for s in await waiter] == [START, START + 2]


async def test_concurrent_duplicate_save_records_once(
    platform: ReferencePlatform, segment_ts: bytes
) -> None:
    async with _client(platform) as a, _client(platform) as b:
        pa, pb = Pu(platform, a), Pu(platform, b)
        name, url = await pa.create(0, len(segment_ts))
        await pa.put(url, segment_ts)
        ra, rb = await asyncio.gather(pa.save(0, name), pb.save(0, name))
    assert (ra.status_code, rb.status_code) == (200, 200)
    assert [s.name for s in platform.vr_segments[0]] == [name]


def test_decode_check_finds_bad_segments(tmp_path: Path, segment_ts: bytes) -> None:
    cut = tmp_path / "cut.ts"  # starts mid-GOP: the first packet is not a key frame
    cut.write_bytes(segment_ts[188 * 60 :])
    c = decode_check(cut)
    assert not c.ok and c.error == "the first video packet is not a key frame"
    assert not c.key_first and c.frames > 0

    damaged = bytearray(segment_ts)
    for i in range(20_000, 20_400):
        damaged[i] ^= 0x5A
    bad = tmp_path / "bad.ts"
    bad.write_bytes(damaged)
    c = decode_check(bad)
    assert not c.ok and c.key_first and c.error is not None
    assert c.corrupt_frames > 0 or c.ts_errors > 0

    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not a transport stream" * 100)
    c = decode_check(junk)
    assert not c.ok and c.frames == 0 and c.error is not None
    assert not decode_check(tmp_path / "missing.ts").ok


async def test_undecodable_segment_is_saved_with_a_failed_check(fake_pu: Pu) -> None:
    await fake_pu.upload(1, b"\x47" + b"\x00" * 187 * 3)
    (seg,) = fake_pu.platform.vr_segments[1]
    assert seg.check is not None and not seg.check.ok and seg.check.frames == 0


async def test_decode_check_off(make_platform: MakePlatform, segment_ts: bytes) -> None:
    p = await make_platform(vr_decode_check=False, vr_keep_segments=2)
    async with _client(p) as http:
        pu = Pu(p, http)
        for i in range(3):
            await pu.upload(0, segment_ts, START + 2 * i)
    segs = p.vr_segments[0]
    assert [s.start for s in segs] == [START + 2, START + 4]  # the oldest was let go
    assert all(s.check is None for s in segs)
    files = sorted((p.options.state_dir / "vr" / "0").glob("*.ts"))
    assert files == sorted(s.path for s in segs)  # and its file deleted


# --- refusals ----------------------------------------------------------------------------


async def test_save_refusals(fake_pu: Pu, segment_ts: bytes) -> None:
    n = len(segment_ts)
    name, url = await fake_pu.create(0, n)
    r = await fake_pu.save(0, name)
    assert r.status_code == 400
    assert parse_error_info(r.content) == f"segment {name} was never uploaded (no PUT)"

    await fake_pu.put(url, segment_ts[:-188])
    r = await fake_pu.save(0, name)
    assert r.status_code == 400
    assert parse_error_info(r.content) == (
        f"segment {name}: the PUT carried {n - 188} bytes, create declared size {n}"
    )
    r = await fake_pu.save(1, name)
    assert r.status_code == 400 and "created on channel 0, not 1" in r.json()["info"]
    r = await fake_pu.post(0, encode_save(name), {"Mac-Identity": "02:00:00:00:00:02"})
    assert r.status_code == 400 and "created by 02:00:00:00:00:01" in r.json()["info"]

    await fake_pu.put(url, segment_ts)  # a retried PUT replaces the first
    assert (await fake_pu.save(0, name)).status_code == 200

    for r in (await fake_pu.save(0, "nope"), await fake_pu.post(0, encode_fail("nope"))):
        assert r.status_code == 404
        assert parse_error_info(r.content).startswith("no segment nope")
    r = await fake_pu.put(f"{fake_pu.platform.schedule_url}/vr/seg/nope", segment_ts)
    assert r.status_code == 404
    r = await fake_pu.http.get(url)
    assert r.status_code == 405 and r.headers["allow"] == "PUT"
    assert fake_pu.platform.vr_segments[0][0].size == n


async def test_fail_forgets_the_segment(fake_pu: Pu, segment_ts: bytes) -> None:
    name, url = await fake_pu.create(2, len(segment_ts))
    await fake_pu.put(url, segment_ts)
    path = fake_pu.platform.options.state_dir / "vr" / "2" / f"{name}.ts"
    assert path.exists()
    r = await fake_pu.post(2, encode_fail(name))
    assert (r.status_code, r.json()) == (200, {})
    (failed,) = fake_pu.platform.vr_failed
    assert (failed.name, failed.channel, failed.mac, failed.uploaded) == (name, 2, MAC, True)
    assert failed.reason == "fail"
    assert not path.exists()
    assert (await fake_pu.save(2, name)).status_code == 404
    assert (await fake_pu.put(url, segment_ts)).status_code == 404
    assert not fake_pu.platform.vr_segments[2]

    saved = await fake_pu.upload(2, segment_ts)
    r = await fake_pu.post(2, encode_fail(saved))
    assert r.status_code == 409 and "already saved" in r.json()["info"]


async def test_mac_identity_content_type_and_paths(fake_pu: Pu) -> None:
    body = encode_getcurrenttime()
    url = fake_pu.cbk(0)
    async with _client(fake_pu.platform) as http:
        del http.headers["Mac-Identity"]
        r = await http.post(url, content=body, headers={"Content-Type": CONTENT_TYPE_FORM})
        assert r.status_code == 400
        assert r.json() == {"info": "Mac-Identity header missing or malformed"}
    r = await fake_pu.post(0, body, {"Mac-Identity": "not-a-mac"})
    assert r.status_code == 400 and "Mac-Identity" in r.json()["info"]
    r = await fake_pu.http.post(url, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and CONTENT_TYPE_FORM in r.json()["info"]
    r = await fake_pu.post(0, body, {"Content-Type": f"{CONTENT_TYPE_FORM}; charset=utf-8"})
    assert r.status_code == 200
    r = await fake_pu.http.post(f"{fake_pu.platform.schedule_url}/live/cseg/x", content=body)
    assert r.status_code == 404
    r = await fake_pu.http.get(url)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("body", "info"),
    [
        (b"", "missing field op"),
        (b"op=bogus", "field op: unknown operation 'bogus'"),
        (
            b"op=create&content_type=video%2Fmp2t&size=abc&start=1&duration=2"
            b"&discontinue=0&https=1",
            "field size: expected an integer >= 0, got 'abc'",
        ),
        (b"op=create&content_type=video%2Fmp2t&size=10&start=1&duration=2", "missing field"),
        (b"op=save", "missing field name"),
        (b"op=save&name=", "field name is empty"),
        (b"op=stat&dropped_nb=-1", "field dropped_nb"),
        (b"op=save&name=a&name=b", "field name given twice"),
    ],
)
async def test_bad_form_is_400_naming_the_field(fake_pu: Pu, body: bytes, info: str) -> None:
    r = await fake_pu.post(0, body)
    assert r.status_code == 400
    assert info in parse_error_info(r.content)
    assert fake_pu.platform.vr_requests == {"invalid": 1}


@pytest.mark.parametrize(
    ("size", "duration", "info"),
    [(0, 2.0, "field size: a segment cannot be empty"), (10, 0.0, "field duration: must be > 0")],
)
async def test_create_refuses_empty_segments(
    fake_pu: Pu, size: int, duration: float, info: str
) -> None:
    r = await fake_pu.post(0, encode_create(size, START, duration, False, True))
    assert (r.status_code, r.json()) == (400, {"info": info})


# --- time, stats, drop ---------------------------------------------------------------------


async def test_getcurrenttime_is_the_platform_clock(fake_pu: Pu) -> None:
    r = await fake_pu.post(0, encode_getcurrenttime())
    assert r.status_code == 200
    assert parse_currenttime(r.content) - time.time() == pytest.approx(3600, abs=5)


async def test_stat_is_recorded(fake_pu: Pu) -> None:
    assert (await fake_pu.post(4, encode_stat(3, 30.0))).json() == {}
    assert (await fake_pu.post(5, b"op=stat&Dropped_nb=1&Dropped_time=2.5")).status_code == 200
    assert (await fake_pu.post(5, b"op=stat")).status_code == 200
    stats = fake_pu.platform.vr_stats
    assert [(s.channel, s.dropped_nb, s.dropped_time, s.mac) for s in stats] == [
        (4, 3, 30.0, MAC),
        (5, 1, 2.5, MAC),
        (5, 0, 0.0, MAC),
    ]
    assert stats[0].time - time.time() == pytest.approx(3600, abs=5)


async def test_drop_reply(fake_pu: Pu, segment_ts: bytes) -> None:
    fake_pu.platform.vr_drop_next = 1
    r = await fake_pu.post(0, encode_create(len(segment_ts), START, 2.0, False, True))
    assert r.json() == {"name": "", "url": ""}
    assert parse_create_reply(r.content).drop
    assert fake_pu.platform.vr_drop_next == 0 and fake_pu.platform.vr.pending_names() == []
    await fake_pu.upload(0, segment_ts)
    assert len(fake_pu.platform.vr_segments[0]) == 1


async def test_pending_segments_are_bounded(
    fake_pu: Pu, monkeypatch: pytest.MonkeyPatch, segment_ts: bytes
) -> None:
    monkeypatch.setattr(platform_vr, "MAX_PENDING", 3)
    names = [(await fake_pu.create(0, 100))[0] for _ in range(5)]
    assert fake_pu.platform.vr.pending_names() == names[2:]
    assert [(f.name, f.reason) for f in fake_pu.platform.vr_failed] == [
        (names[0], "evicted"),
        (names[1], "evicted"),
    ]
    monkeypatch.setattr(platform_vr, "PENDING_TTL", 0.0)
    name, _ = await fake_pu.create(0, 100)
    assert fake_pu.platform.vr.pending_names() == [name]
    assert [f.reason for f in fake_pu.platform.vr_failed[2:]] == ["expired"] * 3
    assert (await fake_pu.save(0, names[4])).status_code == 404


# --- fault injection -------------------------------------------------------------------


async def test_fault_status_with_retry_after(fake_pu: Pu, segment_ts: bytes) -> None:
    p = fake_pu.platform
    p.vr.fail("create", 2, status=503, retry_after=7)
    p.vr.fail("create", 1, status=500)
    for want, after in ((503, "7"), (503, "7"), (500, None)):
        r = await fake_pu.post(0, encode_create(len(segment_ts), START, 2.0, False, True))
        assert r.status_code == want
        assert r.headers.get("retry-after") == after
        assert parse_error_info(r.content) == "injected fault on create"
    p.vr.fail("put", 1, status=502)
    p.vr.fail("save", 1)
    name, url = await fake_pu.create(0, len(segment_ts))
    assert (await fake_pu.put(url, segment_ts)).status_code == 502
    assert (await fake_pu.put(url, segment_ts)).status_code == 200
    assert (await fake_pu.save(0, name)).status_code == 503
    assert (await fake_pu.save(0, name)).status_code == 200
    assert p.vr_requests == {"create": 4, "put": 2, "save": 2}
    with pytest.raises(ValueError, match="op must be one of"):
        p.vr.fail("bogus", 1)
    p.vr.fail("stat", 5)
    p.vr.clear_faults()
    assert (await fake_pu.post(0, encode_stat(0, 0))).status_code == 200


async def test_fault_abort_closes_without_a_response(fake_pu: Pu, segment_ts: bytes) -> None:
    p = fake_pu.platform
    name, url = await fake_pu.create(0, len(segment_ts))
    p.vr.fail("put", 1, mode="abort")
    p.vr.fail("save", 1, mode="abort")
    with pytest.raises(httpx.TransportError):
        await fake_pu.put(url, segment_ts)
    assert (await fake_pu.put(url, segment_ts)).status_code == 200
    with pytest.raises(httpx.TransportError):
        await fake_pu.save(0, name)
    assert (await fake_pu.save(0, name)).status_code == 200
    assert p.vr_requests == {"create": 1, "put": 2, "save": 2}


async def test_fault_cut_drops_the_put_mid_body(fake_pu: Pu, segment_ts: bytes) -> None:
    """A "cut" reads part of the PUT body and drops the connection: nothing stored, the
    segment still pending, and the retried PUT completes it."""
    p = fake_pu.platform
    size = len(segment_ts)
    name, url = await fake_pu.create(0, size)
    p.vr.fail("put", 1, status=502)  # faults are taken in order, at head or body time
    p.vr.fail("put", 1, mode="cut", cut_at=0.25)
    assert (await fake_pu.put(url, segment_ts)).status_code == 502
    with pytest.raises(httpx.TransportError):
        await fake_pu.put(url, segment_ts)
    assert [(c.name, c.size, c.at) for c in p.vr.cuts] == [(name, size, size // 4)]
    assert p.vr.pending_names() == [name]
    assert not (p.options.state_dir / "vr" / "0" / f"{name}.ts").exists()
    r = await fake_pu.save(0, name)
    assert r.status_code == 400 and "never uploaded" in parse_error_info(r.content)
    assert (await fake_pu.put(url, segment_ts)).status_code == 200
    assert (await fake_pu.save(0, name)).status_code == 200
    (seg,) = p.vr_segments[0]
    assert seg.name == name and seg.size == size == seg.path.stat().st_size
    assert seg.check is not None and seg.check.ok
    assert p.vr_requests == {"create": 1, "put": 3, "save": 2}
    assert p.vr_failed == []


@pytest.mark.parametrize(
    ("op", "cut_at", "error"),
    [("put", 0.0, "cut_at"), ("put", 1.0, "cut_at"), ("put", -0.5, "cut_at"),
     ("save", 0.5, "only for put")],
)  # fmt: skip
def test_fault_cut_is_validated(
    platform: ReferencePlatform, op: str, cut_at: float, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        platform.vr.fail(op, 1, mode="cut", cut_at=cut_at)


async def test_cut_upload_fault_after_a_restart(
    platform: ReferencePlatform, segment_ts: bytes
) -> None:
    """VrCutUpload cuts the next segment PUT at a random fraction, and the HttpServer a
    restart builds still has the hook."""
    await platform.restart(0.1)
    fault = VrCutUpload(platform, random.Random(3))
    assert fault.name == "vr-cut-upload"
    said = await fault.fire()
    async with _client(platform) as http:
        pu = Pu(platform, http)
        name, url = await pu.create(0, len(segment_ts))
        with pytest.raises(httpx.TransportError):
            await pu.put(url, segment_ts)
        (cut,) = platform.vr.cuts
        assert cut.size is not None and 0 < cut.at < cut.size == len(segment_ts)
        assert said == f"next PUT cut after {round(100 * cut.at / cut.size)} % of its body"
        assert (await pu.put(url, segment_ts)).status_code == 200
        assert (await pu.save(0, name)).status_code == 200
    assert [s.size for s in platform.vr_segments[0]] == [len(segment_ts)]


async def test_http_server_body_cut_hook() -> None:
    """The hook sees each request head; a PUT it cuts is dropped once N body bytes have
    arrived, while the rest is still to come, and never reaches the handler."""
    seen: list[tuple[str, str, int | None]] = []
    handled: list[Request] = []

    def body_cut(method: str, target: str, length: int | None) -> int | None:
        seen.append((method, target, length))
        return 40 if target == "/cut" else None

    async def handler(req: Request) -> Response:
        handled.append(req)
        return Response(200, b"ok")

    server = HttpServer(handler, None, body_cut=body_cut)
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"PUT /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        writer.write(b"x" * 39)
        with pytest.raises(TimeoutError):  # 39 bytes: still reading
            await asyncio.wait_for(reader.read(1), 0.3)
        writer.write(b"x")
        with contextlib.suppress(ConnectionError):  # reset or EOF: either is a drop
            assert await asyncio.wait_for(reader.read(1), 5) == b""
        assert seen == [("GET", "/a", None), ("PUT", "/cut", 100)]
        assert [r.target for r in handled] == ["/a"]
        writer.close()
    finally:
        await server.close()


async def test_fault_timeout_holds_then_503(fake_pu: Pu) -> None:
    fake_pu.platform.vr.fail("getcurrenttime", 1, mode="timeout", hold=0.3, retry_after=1)
    t0 = time.monotonic()
    r = await fake_pu.post(0, encode_getcurrenttime())
    assert time.monotonic() - t0 >= 0.3
    assert (r.status_code, r.headers["retry-after"]) == (503, "1")
    assert (await fake_pu.post(0, encode_getcurrenttime())).status_code == 200


async def test_fault_late_takes_effect_then_answers(fake_pu: Pu, segment_ts: bytes) -> None:
    name, url = await fake_pu.create(0, len(segment_ts))
    assert (await fake_pu.put(url, segment_ts)).status_code == 200
    fake_pu.platform.vr.fail("save", 1, mode="late", hold=0.5)
    save = asyncio.create_task(fake_pu.save(0, name))
    segs = await fake_pu.platform.vr.wait_segments(0, 1, timeout=5)  # saved before the reply
    assert [s.name for s in segs] == [name] and not save.done()
    r = await save
    assert (r.status_code, r.json()) == (200, {})


async def test_held_request_does_not_delay_close(make_platform: MakePlatform) -> None:
    p = await make_platform()
    p.vr.fail("create", 1, mode="timeout", hold=60)
    async with _client(p, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await Pu(p, http).post(0, encode_create(10, START, 2.0, False, True))
    t0 = time.monotonic()
    await p.close()
    assert time.monotonic() - t0 < 1.5


async def test_down_aborts_every_vr_request_but_not_vs(fake_pu: Pu, segment_ts: bytes) -> None:
    p = fake_pu.platform
    name, url = await fake_pu.create(0, len(segment_ts))
    p.vr_down = True
    with pytest.raises(httpx.TransportError):
        await fake_pu.post(0, encode_getcurrenttime())
    with pytest.raises(httpx.TransportError):
        await fake_pu.put(url, segment_ts)
    r = await fake_pu.http.get(f"{p.schedule_url}/Vs/getServerAddr", params={"macid": MAC})
    assert r.status_code == 200
    p.vr_down = False
    assert (await fake_pu.put(url, segment_ts)).status_code == 200
    assert (await fake_pu.save(0, name)).status_code == 200
    assert p.vr_requests == {"create": 1, "down": 2, "put": 1, "save": 1}


# --- admin API and CLI -----------------------------------------------------------------


async def test_admin_and_cli_segments(
    make_platform: MakePlatform, segment_ts: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    p = await make_platform(admin_port=0)
    async with _client(p) as http:
        pu = Pu(p, http)
        first = await pu.upload(0, segment_ts)
        second = await pu.upload(0, segment_ts, START + 2)
        third = await pu.upload(7, b"\x47" + b"\x00" * 187, START, discontinue=True)
    auth = {"Authorization": f"Bearer {p.admin_token}"}
    async with httpx.AsyncClient(base_url=str(p.admin_url), trust_env=False) as admin:
        r = await admin.get("/admin/vr/segments", headers=auth)
        segs = r.json()["segments"]
        assert [s["name"] for s in segs] == [first, second, third]
        assert segs[0]["check"]["ok"] and segs[0]["check"]["frames"] == 30
        assert segs[0]["path"] == str(p.vr_segments[0][0].path)
        r = await admin.get("/admin/vr/segments", headers=auth, params={"channel": 0, "last": 1})
        assert [s["name"] for s in r.json()["segments"]] == [second]
        r = await admin.get("/admin/vr/segments", headers=auth, params={"channel": "x"})
        assert r.status_code == 400

    cli = ["platform", "segments", "--state-dir", str(p.options.state_dir)]
    capsys.readouterr()
    assert await asyncio.to_thread(main, cli) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CH", "NAME", "START", "(UTC)", "DURATION", "SIZE", "CHECK"]
    assert lines[1].split()[:5] == [
        "0",
        first,
        "2023-11-14T22:13:20.000Z",
        "2.000",
        str(len(segment_ts)),
    ]
    assert lines[1].endswith("ok: 30 frames 320x180 h264")
    assert "BAD: " in lines[3] and lines[3].endswith("(discontinue)")
    assert await asyncio.to_thread(main, [*cli, "--channel", "7", "--json"]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)["segments"]] == [third]
    assert await asyncio.to_thread(main, [*cli, "--channel", "5"]) == 0
    assert capsys.readouterr().out == "no saved segments\n"
