"""The Vr client against a real TLS HTTP server (our aiohttp server, the reference PKI)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from hss_pu.clients.http import Trust, platform_http
from hss_pu.clients.vr import (
    CHUNK_SIZE,
    SegmentBody,
    VrClient,
    VrError,
    parse_retry_after,
    retrying,
)
from hss_pu.reference_platform.pki import Pki
from hss_pu.reference_platform.web import HttpServer, Request, Response, json_response
from hss_pu.wire.urls import redact_url

from .support.rig import MAC

NOW = 1_700_000_000.0


class FakeVr:
    """A fake Vr server: records every request; answers from ``replies`` first, else like
    a good platform. (Not the reference platform: this one says exactly what a test
    tells it to, byte for byte.)"""

    def __init__(self) -> None:
        self.base = ""
        self.upload_base = ""
        self.requests: list[Request] = []
        self.replies: list[Response] = []
        self.create_reply: dict[str, object] = {}
        self.delay = 0.0

    async def __call__(self, req: Request) -> Response:
        self.requests.append(req)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.replies:
            return self.replies.pop(0)
        if req.method == "PUT":
            return Response(201)
        op = req.form().get("op")
        if op == "create":
            reply = self.create_reply or {
                "name": "seg-1",
                "url": f"{self.upload_base}/store/seg-1.ts?sig=TOPSECRET",
            }
            return json_response(200, json.dumps(reply).encode())
        if op == "getcurrenttime":
            return json_response(200, b'{"currenttime": 1700000000.5, "extra": 1}')
        return json_response(200, b"{}")


async def _close(srv: HttpServer) -> None:
    """Close, then let the server's connection tasks finish their TLS shutdown: close()
    does not wait for those already past their last request, and the test's loop would
    cancel them mid-close (asyncio then logs a CancelledError traceback)."""
    await srv.close()
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=2)


async def _serve(pki: Pki, handler: FakeVr, host: str) -> tuple[HttpServer, str]:
    srv = HttpServer(handler, pki.server_context())
    port = await srv.start("127.0.0.1", 0)
    return srv, f"https://{host}:{port}"


@pytest.fixture
async def fake_vr(pki: Pki) -> AsyncIterator[FakeVr]:
    p = FakeVr()
    srv, p.base = await _serve(pki, p, "127.0.0.1")
    p.upload_base = p.base
    try:
        yield p
    finally:
        await _close(srv)


@pytest.fixture
async def http(pki: Pki) -> AsyncIterator[httpx.AsyncClient]:
    async with platform_http(MAC, str(pki.ca_file), trust=Trust.UPLOADS, timeout=10.0) as client:
        yield client


@pytest.fixture
def vr(fake_vr: FakeVr, http: httpx.AsyncClient) -> VrClient:
    return VrClient(f"{fake_vr.base}/Vr?session=s1", http, https=True)


def _head_size(r: Request) -> int:
    line = len(f"{r.method} {r.target} HTTP/1.1\r\n")
    return line + sum(len(k) + len(v) + 4 for k, v in r.headers.items()) + 2


def _payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# --- happy path -----------------------------------------------------------------------


async def test_happy_path_forms_headers_and_bodies(
    vr: VrClient, fake_vr: FakeVr, tmp_path: Path
) -> None:
    data = _payload(3 * CHUNK_SIZE + 123)
    seg = tmp_path / "seg.ts"
    seg.write_bytes(data)
    mem = _payload(100_000, seed=2)

    reply = await vr.create(len(data), 1_574_322_174.04, 10.0, False)
    assert (reply.name, reply.drop) == ("seg-1", False)
    assert reply.url.endswith("/store/seg-1.ts?sig=TOPSECRET")
    await vr.put(reply.url, SegmentBody.from_file(seg))
    await vr.save(reply.name)
    await vr.put(reply.url, SegmentBody.from_bytes(mem))
    await vr.fail("seg-2")
    await vr.stat(3, 12.5)
    assert await vr.current_time() == 1_700_000_000.5

    reqs = fake_vr.requests
    assert [(r.method, r.target) for r in reqs] == [
        ("POST", "/Vr?session=s1"),
        ("PUT", "/store/seg-1.ts?sig=TOPSECRET"),
        ("POST", "/Vr?session=s1"),
        ("PUT", "/store/seg-1.ts?sig=TOPSECRET"),
        ("POST", "/Vr?session=s1"),
        ("POST", "/Vr?session=s1"),
        ("POST", "/Vr?session=s1"),
    ]
    posts = [r for r in reqs if r.method == "POST"]
    assert [r.body for r in posts] == [
        f"op=create&content_type=video%2Fmp2t&size={len(data)}&start=1574322174.04"
        "&duration=10&discontinue=0&https=1".encode(),
        b"op=save&name=seg-1",
        b"op=fail&name=seg-2",
        b"op=stat&dropped_nb=3&dropped_time=12.5",
        b"op=getcurrenttime",
    ]
    for r in posts:
        assert r.headers["content-type"] == "application/x-www-form-urlencoded"
        assert r.headers["content-length"] == str(len(r.body))
    puts = [r for r in reqs if r.method == "PUT"]
    assert [r.body for r in puts] == [data, mem]
    for r in puts:
        assert r.headers["content-type"] == "video/mp2t"
        assert r.headers["content-length"] == str(len(r.body))
        assert "transfer-encoding" not in r.headers
    assert all(r.headers["mac-identity"] == MAC for r in reqs)
    assert len({r.peer for r in reqs}) == 1  # one keep-alive connection throughout

    c = vr.counters
    assert c["put"].requests == 2 and c["put"].body_bytes == len(data) + len(mem)
    assert c["create"].requests == 1 and c["create"].body_bytes == len(posts[0].body)
    assert c["put"].header_bytes == sum(_head_size(r) for r in puts)
    assert c.total().requests == 7 and c.total().failures == 0
    assert c.total().header_bytes == sum(_head_size(r) for r in reqs)
    assert c.total().body_bytes == sum(len(r.body) for r in reqs)


@pytest.fixture
async def fake_storage(pki: Pki) -> AsyncIterator[FakeVr]:
    """A second server under another name and port, as cloud storage would be. Request it
    before ``vr`` so that the client is closed first and the teardown does not wait."""
    p = FakeVr()
    srv, p.base = await _serve(pki, p, "localhost")
    try:
        yield p
    finally:
        await _close(srv)


async def test_put_to_another_host_keeps_mac_identity(
    fake_storage: FakeVr, fake_vr: FakeVr, vr: VrClient
) -> None:
    fake_vr.upload_base = fake_storage.base
    reply = await vr.create(5, NOW, 2.0, True)
    await vr.put(reply.url, SegmentBody.from_bytes(b"12345"))
    (put,) = fake_storage.requests
    assert put.headers["mac-identity"] == MAC
    assert put.headers["host"].startswith("localhost:")
    assert put.body == b"12345"
    assert fake_vr.requests[0].body.endswith(b"&discontinue=1&https=1")


async def test_empty_segment_sends_content_length_zero(vr: VrClient, fake_vr: FakeVr) -> None:
    await vr.put(f"{fake_vr.base}/store/empty.ts", SegmentBody.from_bytes(b""))
    (put,) = fake_vr.requests
    assert put.headers["content-length"] == "0" and put.body == b""
    assert "transfer-encoding" not in put.headers


async def test_create_reply_uri_alias_and_drop(vr: VrClient, fake_vr: FakeVr) -> None:
    fake_vr.create_reply = {"name": "a", "uri": "https://storage.example/a.ts"}
    reply = await vr.create(1, NOW, 1.0, False)
    assert reply.url == "https://storage.example/a.ts" and not reply.drop
    fake_vr.create_reply = {"name": "", "url": ""}
    assert (await vr.create(1, NOW, 1.0, False)).drop


async def test_https_flag_off(fake_vr: FakeVr, http: httpx.AsyncClient) -> None:
    vr = VrClient(f"{fake_vr.base}/Vr", http, https=False)
    await vr.create(1, NOW, 1.0, False)
    assert fake_vr.requests[0].body.endswith(b"&https=0")


# --- errors ---------------------------------------------------------------------------


def _err(status: int, info: str | None = None, **headers: str) -> Response:
    body = json.dumps({"info": info}).encode() if info is not None else b"<html>oops</html>"
    return Response(status, body, {"content-type": "application/json", **headers})


@pytest.mark.parametrize(
    ("reply", "transient", "retry_after"),
    [
        (_err(503, "busy"), True, None),
        (_err(500), True, None),
        (_err(404, "no such session"), False, None),
        (_err(400, "bad size"), False, None),
        (_err(408, "too slow"), True, None),
        (_err(429, "slow down", **{"retry-after": "2"}), True, 2.0),
        (_err(503, "maintenance", **{"retry-after": "86400"}), True, 300.0),
        (Response(302, b"", {"location": "/elsewhere"}), False, None),  # never followed
    ],
)
async def test_status_errors(
    vr: VrClient, fake_vr: FakeVr, reply: Response, transient: bool, retry_after: float | None
) -> None:
    fake_vr.replies = [reply]
    with pytest.raises(VrError) as ei:
        await vr.save("seg-1")
    e = ei.value
    assert (e.op, e.status, e.transient, e.retry_after) == (
        "save",
        reply.status,
        transient,
        retry_after,
    )
    msg = str(e)
    assert msg.startswith("Vr save failed: HTTP ") and str(reply.status) in msg
    info = json.loads(reply.body)["info"] if reply.body.startswith(b"{") else None
    if info is not None:
        assert msg.endswith(f": {info}")
    assert "session=s1" not in msg and "session=***" in msg  # query values never quoted
    assert vr.counters["save"].failures == 1


async def test_connection_refused_is_transient(http: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on leaving the block: nothing listens there
    vr = VrClient(f"https://127.0.0.1:{port}/Vr?token=abc", http, https=True)
    with pytest.raises(VrError) as ei:
        await vr.create(1, NOW, 1.0, False)
    assert ei.value.transient and ei.value.status is None
    assert "ConnectError" in str(ei.value) and "abc" not in str(ei.value)


async def test_untrusted_certificate_is_not_transient(fake_vr: FakeVr) -> None:
    async with platform_http(
        MAC, None, trust=Trust.UPLOADS, timeout=10.0
    ) as http:  # the system store lacks our CA
        vr = VrClient(f"{fake_vr.base}/Vr", http, https=True)
        with pytest.raises(VrError, match="does not verify") as ei:
            await vr.stat(0, 0)
    assert not ei.value.transient and fake_vr.requests == []


@pytest.mark.parametrize("body", [b"not json", b'{"name": "x"}', b"[]", b""])
async def test_bad_create_reply_is_not_transient(
    vr: VrClient, fake_vr: FakeVr, body: bytes
) -> None:
    fake_vr.replies = [json_response(200, body)]
    with pytest.raises(VrError, match="bad create reply") as ei:
        await vr.create(1, NOW, 1.0, False)
    assert not ei.value.transient and ei.value.status is None


async def test_bad_currenttime_reply_is_not_transient(vr: VrClient, fake_vr: FakeVr) -> None:
    fake_vr.replies = [json_response(200, b'{"currenttime": "soon"}')]
    with pytest.raises(VrError, match="bad getcurrenttime reply") as ei:
        await vr.current_time()
    assert not ei.value.transient


async def test_put_error_hides_the_signed_query(vr: VrClient, fake_vr: FakeVr) -> None:
    fake_vr.replies = [_err(403, "signature TOPSECRET expired")]
    url = f"{fake_vr.base}/store/x.ts?sig=TOPSECRET&token=T0K3N"
    with pytest.raises(VrError) as ei:
        await vr.put(url, SegmentBody.from_bytes(b"x" * 10))
    msg = str(ei.value)
    assert "TOPSECRET" not in msg and "T0K3N" not in msg
    assert f"({fake_vr.base}/store/x.ts?sig=***&token=***)" in msg and not ei.value.transient


async def test_plain_http_upload_refused_when_https_asked(vr: VrClient, fake_vr: FakeVr) -> None:
    with pytest.raises(VrError, match="plain http") as ei:
        await vr.put("http://127.0.0.1:1/x.ts?sig=s", SegmentBody.from_bytes(b"x"))
    assert not ei.value.transient and fake_vr.requests == []
    with pytest.raises(VrError, match="bad upload URL"):
        await vr.put("ftp://127.0.0.1/x.ts", SegmentBody.from_bytes(b"x"))


async def test_segment_file_changed_is_not_transient(
    vr: VrClient, fake_vr: FakeVr, tmp_path: Path
) -> None:
    seg = tmp_path / "seg.ts"
    seg.write_bytes(b"x" * 1000)
    body = SegmentBody.from_file(seg)
    seg.write_bytes(b"x" * 10)  # truncated behind our back
    with pytest.raises(VrError, match="1000 were declared") as ei:
        await vr.put(f"{fake_vr.base}/store/s.ts", body)
    assert not ei.value.transient
    seg.unlink()
    with pytest.raises(VrError, match="cannot open segment") as ei:
        await vr.put(f"{fake_vr.base}/store/s.ts", body)
    assert not ei.value.transient
    # The client is still usable afterwards.
    await vr.save("seg-1")
    assert fake_vr.requests[-1].body == b"op=save&name=seg-1"


async def test_timeout_is_transient(pki: Pki, fake_vr: FakeVr) -> None:
    fake_vr.delay = 0.5
    async with platform_http(MAC, str(pki.ca_file), timeout=0.1, trust=Trust.UPLOADS) as http:
        vr = VrClient(f"{fake_vr.base}/Vr", http, https=True)
        with pytest.raises(VrError, match="ReadTimeout") as ei:
            await vr.current_time()
    assert ei.value.transient and ei.value.status is None
    await asyncio.sleep(0.5)  # let the handler finish before the server closes


async def test_client_requires_mac_identity_and_a_url() -> None:
    async with httpx.AsyncClient() as bare:
        with pytest.raises(ValueError, match="Mac-Identity"):
            VrClient("https://p.example/Vr", bare, https=True)
    async with platform_http(MAC, None, trust=Trust.UPLOADS, timeout=10.0) as http:
        with pytest.raises(ValueError, match="cbk_url"):
            VrClient("ftp://p.example/Vr", http, https=True)


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("100000") == 300.0
    assert parse_retry_after("-3") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(formatdate(NOW + 42, usegmt=True), now=NOW) == 42.0
    assert parse_retry_after(formatdate(NOW - 42, usegmt=True), now=NOW) == 0.0
    assert parse_retry_after(formatdate(NOW + 9999, usegmt=True), now=NOW) == 300.0


def test_vr_errors_show_urls_by_the_one_rule() -> None:
    """clients/vr.py names URLs through wire.urls.redact_url, secrets out."""
    assert redact_url("https://u:pw@h.example:8443/a/b?sig=x#f") == (
        "https://***@h.example:8443/a/b?sig=***"
    )


# --- bodies ---------------------------------------------------------------------------


async def test_file_body_is_read_in_chunks(tmp_path: Path) -> None:
    data = _payload(5 * CHUNK_SIZE + 7)
    seg = tmp_path / "seg.ts"
    seg.write_bytes(data)
    body = SegmentBody.from_file(seg)
    assert body.size == len(data)
    for _ in range(2):  # a fresh iterator each time: a retried PUT starts over
        pieces = [bytes(p) async for p in body.chunks()]
        assert all(0 < len(p) <= CHUNK_SIZE for p in pieces) and len(pieces) == 6
        assert b"".join(pieces) == data


async def test_memory_body_is_sliced_without_copy() -> None:
    data = _payload(2 * CHUNK_SIZE + 1)
    body = SegmentBody.from_bytes(data)
    pieces = [p async for p in body.chunks()]
    assert [len(p) for p in pieces] == [CHUNK_SIZE, CHUNK_SIZE, 1]
    assert all(isinstance(p, memoryview) and p.obj is data for p in pieces)
    assert b"".join(pieces) == data
    words = memoryview(bytearray(8)).cast("I")  # items of 4 bytes: size counts bytes
    assert SegmentBody.from_bytes(words).size == 8


# --- retrying -------------------------------------------------------------------------


def _flaky(
    failures: list[VrError], result: str = "ok"
) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    calls: list[int] = []

    async def op() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return op, calls


def _transient(retry_after: float | None = None) -> VrError:
    return VrError("save", "HTTP 503", transient=True, status=503, retry_after=retry_after)


async def test_retrying_backs_off_with_full_jitter() -> None:
    sleeps: list[float] = []
    seen: list[tuple[VrError, float]] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    op, calls = _flaky([_transient(), _transient(), _transient()])
    got = await retrying(
        op,
        attempts=4,
        base=1.0,
        cap=3.0,
        rng=random.Random(7),
        sleep=sleep,
        on_retry=lambda e, d: seen.append((e, d)),
    )
    assert got == "ok" and len(calls) == 4
    assert len(sleeps) == 3 and [d for _, d in seen] == sleeps
    for n, s in enumerate(sleeps):
        assert 0.0 <= s <= min(3.0, 1.0 * 2**n)
    ref = random.Random(7)  # deterministic under the injected rng
    assert sleeps == [ref.uniform(0, 1), ref.uniform(0, 2), ref.uniform(0, 3)]


async def test_retrying_obeys_retry_after() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    op, _ = _flaky([_transient(retry_after=5.0), _transient(retry_after=0.0)])
    await retrying(op, attempts=3, base=0.5, cap=1.0, rng=random.Random(1), sleep=sleep)
    assert sleeps[0] == 5.0  # longer than any backoff: the server's wish wins
    assert 0.0 <= sleeps[1] <= 1.0  # shorter: the backoff wins


async def test_retrying_gives_up_after_attempts() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    errors = [_transient() for _ in range(5)]
    last = errors[3]
    op, calls = _flaky(errors)
    with pytest.raises(VrError) as ei:
        await retrying(op, attempts=4, rng=random.Random(3), sleep=sleep)
    assert ei.value is last and len(calls) == 4 and len(sleeps) == 3


async def test_retrying_raises_non_transient_at_once() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    permanent = VrError("create", "HTTP 404", transient=False, status=404)
    op, calls = _flaky([permanent])
    with pytest.raises(VrError) as ei:
        await retrying(op, attempts=5, sleep=sleep)
    assert ei.value is permanent and len(calls) == 1 and sleeps == []

    async def boom() -> None:
        raise RuntimeError("not a Vr error")

    with pytest.raises(RuntimeError):
        await retrying(boom, attempts=5, sleep=sleep)
    with pytest.raises(ValueError, match="attempts"):
        await retrying(boom, attempts=0)


async def test_retrying_over_the_wire(vr: VrClient, fake_vr: FakeVr) -> None:
    fake_vr.replies = [_err(503, "busy"), _err(429, "later", **{"retry-after": "1"})]
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    await retrying(
        lambda: vr.save("seg-1"), attempts=3, base=0.01, rng=random.Random(0), sleep=sleep
    )
    assert len(fake_vr.requests) == 3 and sleeps[1] == 1.0
    assert vr.counters["save"].requests == 3 and vr.counters["save"].failures == 2
