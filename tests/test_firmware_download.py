"""Bundle download (issue 12, item 2) against the reference platform's bundle store
(item 7) over real TLS: head first and judged before a byte is kept, hashed while
streaming, refused past the manifest's length, resumed with Range after a cut, started
over when the server ignores Range; the store's Range answers and its admin endpoints."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hss_pu.clients.firmware import PROGRESS_INTERVAL, BundleRefused, Fetched, fetch_bundle
from hss_pu.clients.http import (
    DownloadError,
    HttpClient,
    Trust,
    UrlGuard,
    UrlNotAllowed,
    platform_http,
)
from hss_pu.firmware.bundle import build
from hss_pu.reference_platform.firmware import Unsatisfiable, byte_range
from hss_pu.reference_platform.pki import Pki
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.reference_platform.web import AbortConnection, HttpServer, Request, Response
from hss_pu.wire.firmware import (
    BundleHead,
    Policy,
    Rejected,
    check_bundle,
    first_failure,
    keyid,
    parse_head,
)

from .support.fakewheel import build_fake_wheel
from .support.rig import MAC, MakePlatform, until

HW = "HSS-PU-EMU"
KEY = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
PAD = 256 * 1024  # a second "wheel" of random bytes: a payload worth cutting in the middle
FAST: dict[str, Any] = {"backoff": lambda n: 0.01, "stall_timeout": 5.0}


def size(path: Path) -> int:
    return path.stat().st_size


def contents(path: Path) -> bytes:
    return path.read_bytes()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def make_bundle(tmp: Path, version: int = 2, seed: int = 1, pad_size: int = PAD) -> Path:
    wheels = tmp / f"wheels{version}-{seed}"
    fake = build_fake_wheel(wheels, f"2.{version}")
    pad = wheels / "pad-1.0-py3-none-any.whl"
    pad.write_bytes(random.Random(seed).randbytes(pad_size))
    now = int(time.time())
    out = tmp / f"fw-{version}-{seed}.bundle"
    build(
        wheels=[fake, pad], keys=[KEY], firmware_model=f"HSS-PU-EMU-2.{version}",
        version_number=version, hardware_models=[HW], expires=now + 3600, created=now,
        out=out,
    )  # fmt: skip
    return out


def policy() -> Policy:
    return Policy(trusted={keyid(KEY.public_key()): KEY.public_key()}, threshold=1,
                  hardware_model=HW, high_water=1)  # fmt: skip


def accept(head: BundleHead) -> Rejected | None:
    return None


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, received: int, total: int) -> None:
        self.calls.append((received, total))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    d = tmp_path / "staging"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
async def guarded(platform: ReferencePlatform) -> AsyncIterator[HttpClient]:
    """As the daemon makes it: TLS verified, Mac-Identity, the URL-safety guard."""
    guard = UrlGuard(allow_insecure=False, platform_hosts=lambda: [platform.options.host])
    async with platform_http(
        MAC, str(platform.ca_file), trust=Trust.UPLOADS, timeout=5, guard=guard
    ) as client:
        yield client


def served(platform: ReferencePlatform, bundle: Path) -> tuple[str, str]:
    name = platform.firmware.add(bundle)
    return name, platform.firmware.url_for(name)


def assert_good(got: Fetched, bundle: Path, target: Path) -> None:
    """The file is the bundle byte for byte, and the digest passes every check."""
    data = bundle.read_bytes()
    assert target.read_bytes() == data
    head = parse_head(data)
    assert isinstance(head, BundleHead) and got.head == head and got.path == target
    assert got.payload.length == head.manifest.payload_length
    assert first_failure(check_bundle(got.head, got.payload, policy(), int(time.time()))) is None


# --- the client -------------------------------------------------------------------------


async def test_a_good_bundle_downloads_with_rising_progress(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path
) -> None:
    name, url = served(platform, bundle)
    target = staging / "bundle"
    heads: list[BundleHead] = []
    steps: list[str] = []
    progress = Progress()

    def judge(head: BundleHead) -> Rejected | None:
        assert not target.exists()  # judged before anything is written
        heads.append(head)
        return None

    got = await fetch_bundle(guarded, url, target, accept_head=judge, progress=progress,
                             step=steps.append, **FAST)  # fmt: skip
    assert_good(got, bundle, target)
    assert heads == [got.head]
    assert os.stat(target).st_mode & 0o777 == 0o600
    total = size(bundle)
    received = [r for r, _ in progress.calls]
    assert received == sorted(received) and progress.calls[-1] == (total, total)
    assert {t for _, t in progress.calls} == {total}
    assert steps[0] == "download-head" and steps[-1] == "download-done"
    assert steps.count("download-chunk") >= 1
    (req,) = platform.firmware.requests_for(name)
    assert (req.range, req.status, req.complete, req.mac) == (None, 200, True, MAC)


async def test_progress_is_reported_at_most_ten_times_a_second(
    platform: ReferencePlatform, guarded: HttpClient, tmp_path: Path, staging: Path
) -> None:
    big = make_bundle(tmp_path, pad_size=8 << 20)  # ~130 chunks of 64 KiB
    _, url = served(platform, big)
    progress = Progress()
    t0 = time.monotonic()
    await fetch_bundle(guarded, url, staging / "b", accept_head=accept, progress=progress, **FAST)
    elapsed = time.monotonic() - t0
    total = size(big)
    assert len(progress.calls) <= 2 + elapsed / PROGRESS_INTERVAL
    assert progress.calls[-1] == (total, total)


@pytest.mark.parametrize("where", ["head", "payload"])
async def test_a_cut_resumes_with_range_and_gives_the_same_bytes(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path, where: str
) -> None:
    name, url = served(platform, bundle)
    total = size(bundle)
    after = 40 if where == "head" else total // 2
    platform.firmware.cut_next(after)
    target = staging / "bundle"
    progress = Progress()
    got = await fetch_bundle(guarded, url, target, accept_head=accept, progress=progress, **FAST)
    assert_good(got, bundle, target)
    first, second = platform.firmware.requests_for(name)
    assert (first.status, first.sent, first.complete) == (200, after, False)
    if where == "head":  # nothing was kept: the whole bundle again, no Range
        assert (second.range, second.status) == (None, 200)
    else:
        assert (second.range, second.status, second.start) == (f"bytes={after}-", 206, after)
        assert second.sent == total - after  # only the rest went out again
    assert second.complete and progress.calls[-1] == (total, total)


async def test_a_server_ignoring_range_is_read_again_from_byte_0(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path
) -> None:
    name, url = served(platform, bundle)
    total = size(bundle)
    platform.firmware.cut_next(total // 3, count=2)
    platform.firmware.ignore_range = True
    target = staging / "bundle"
    got = await fetch_bundle(guarded, url, target, accept_head=accept, progress=Progress(), **FAST)
    assert_good(got, bundle, target)
    reqs = platform.firmware.requests_for(name)
    assert [(r.range, r.status, r.complete) for r in reqs] == [
        (None, 200, False),
        (f"bytes={total // 3}-", 200, False),
        (f"bytes={total // 3}-", 200, True),
    ]


async def test_a_bundle_that_changes_between_gets_is_refused_and_removed(
    platform: ReferencePlatform, guarded: HttpClient, tmp_path: Path, staging: Path
) -> None:
    old, new = make_bundle(tmp_path, version=2), make_bundle(tmp_path, version=3)
    name, url = served(platform, old)
    platform.firmware.cut_next(size(old) // 2)
    platform.firmware.ignore_range = True
    path = platform.firmware.path_for(name)
    assert path is not None
    target = staging / "bundle"

    def swap(step: str) -> None:  # the platform's file is replaced mid-download
        if step == "download-head":
            path.write_bytes(new.read_bytes())

    with pytest.raises(BundleRefused) as ei:
        await fetch_bundle(guarded, url, target, accept_head=accept, progress=Progress(),
                           step=swap, **FAST)  # fmt: skip
    assert ei.value.rejected == Rejected("format", "bundle changed during download")
    assert not target.exists()


@pytest.mark.parametrize("content_length", [True, False], ids=["length", "chunked"])
async def test_an_overlong_body_is_cut_at_the_manifests_length(
    platform: ReferencePlatform,
    guarded: HttpClient,
    bundle: Path,
    staging: Path,
    content_length: bool,
) -> None:
    name, url = served(platform, bundle)
    extra = 32 << 20  # more than loopback's socket buffers hold: the sender must block
    platform.firmware.overlong_next(extra, content_length=content_length)
    target = staging / "bundle"
    got = await fetch_bundle(guarded, url, target, accept_head=accept, progress=Progress(), **FAST)
    payload_length = got.head.manifest.payload_length
    assert got.payload.length == payload_length + 1
    assert contents(target) == contents(bundle)  # nothing past the length written
    failed = first_failure(check_bundle(got.head, got.payload, policy(), int(time.time())))
    assert failed is not None and failed.check == "length and hash"
    (req,) = platform.firmware.requests_for(name)
    assert not req.complete and req.sent < size(bundle) + extra  # dropped


async def test_a_head_the_caller_refuses_keeps_nothing(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path
) -> None:
    _, url = served(platform, bundle)
    no = Rejected("hardware model", "made for RPI4-HQ, not HSS-PU-EMU")
    target = staging / "bundle"
    with pytest.raises(BundleRefused) as ei:
        await fetch_bundle(guarded, url, target, accept_head=lambda h: no, progress=Progress())
    assert ei.value.rejected == no and str(ei.value) == str(no)
    assert listing(staging) == []  # not even an empty file


@pytest.mark.parametrize(
    "body", [b"<html><body>Login to the hotel Wi-Fi</body></html>\n" * 50, b"<h"]
)
async def test_garbage_instead_of_a_bundle_is_a_format_refusal(
    platform: ReferencePlatform, guarded: HttpClient, tmp_path: Path, staging: Path, body: bytes
) -> None:
    page = tmp_path / "portal.html"
    page.write_bytes(body)
    _, url = served(platform, page)
    target = staging / "bundle"
    with pytest.raises(BundleRefused) as ei:
        await fetch_bundle(guarded, url, target, accept_head=accept, progress=Progress(), **FAST)
    assert ei.value.rejected.check == "format" and "magic" in ei.value.rejected.reason
    assert not target.exists()


async def test_a_404_is_final_and_the_urls_secrets_stay_out(
    platform: ReferencePlatform, guarded: HttpClient, staging: Path
) -> None:
    url = platform.firmware.url_for("nothing.bundle") + "?token=TOPSECRET"
    target = staging / "bundle"
    with pytest.raises(DownloadError) as ei:
        await fetch_bundle(guarded, url, target, accept_head=accept, progress=Progress(), **FAST)
    assert "HTTP 404" in str(ei.value) and "TOPSECRET" not in str(ei.value)
    assert not isinstance(ei.value, BundleRefused)
    assert len(platform.firmware.requests_for("nothing.bundle")) == 1  # not retried
    assert not target.exists()


async def test_cuts_on_every_attempt_give_up_naming_the_last_and_remove_the_file(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path
) -> None:
    name, url = served(platform, bundle)
    platform.firmware.cut_next(50_000, count=3)
    target = staging / "bundle"
    with pytest.raises(DownloadError, match="after 3 GETs") as ei:
        await fetch_bundle(guarded, url + "?sig=TOPSECRET", target, accept_head=accept,
                           progress=Progress(), attempts=3, **FAST)  # fmt: skip
    assert "TOPSECRET" not in str(ei.value)
    reqs = platform.firmware.requests_for(name)
    assert [r.range for r in reqs] == [None, "bytes=50000-", "bytes=100000-"]
    assert not target.exists()


async def test_a_url_the_guard_refuses_is_not_fetched(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path
) -> None:
    name, url = served(platform, bundle)
    insecure = url.replace("https://", "http://", 1)
    with pytest.raises(UrlNotAllowed, match="plain http"):
        await fetch_bundle(
            guarded, insecure, staging / "b", accept_head=accept, progress=Progress()
        )
    assert platform.firmware.requests_for(name) == []


async def test_a_stall_is_a_cut_and_resumes_with_range(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path
) -> None:
    name, url = served(platform, bundle)
    half = size(bundle) // 2
    platform.firmware.stall_next(half, seconds=1.0)
    target = staging / "bundle"
    t0 = time.monotonic()
    got = await fetch_bundle(guarded, url, target, accept_head=accept, progress=Progress(),
                             backoff=lambda n: 0.01, stall_timeout=0.3)  # fmt: skip
    assert 0.3 <= time.monotonic() - t0 < 1.0  # the stall's end was not waited for
    assert_good(got, bundle, target)
    first, second = platform.firmware.requests_for(name)
    assert (first.sent, second.range, second.status) == (half, f"bytes={half}-", 206)


async def test_cancelled_midway_leaves_no_file(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path
) -> None:
    name, url = served(platform, bundle)
    platform.firmware.stall_next(size(bundle) // 2, seconds=1.0)
    target = staging / "bundle"
    progress = Progress()
    task = asyncio.create_task(
        fetch_bundle(guarded, url, target, accept_head=accept, progress=progress, **FAST)
    )
    half = size(bundle) // 2

    def stalled() -> bool:
        return [r.sent for r in platform.firmware.requests_for(name)] == [half]

    assert await until(stalled, timeout=5)
    await asyncio.sleep(0.05)  # in the stall: the client holds half the bundle
    assert listing(staging) == ["bundle"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert listing(staging) == []


@pytest.mark.parametrize("status", [503, 429, 408])
async def test_a_transient_status_is_retried(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path, status: int
) -> None:
    name, url = served(platform, bundle)
    platform.firmware.fail_next(status)
    target = staging / "bundle"
    got = await fetch_bundle(guarded, url, target, accept_head=accept, progress=Progress(), **FAST)
    assert_good(got, bundle, target)
    assert [r.status for r in platform.firmware.requests_for(name)] == [status, 200]


async def test_an_error_status_after_bytes_are_kept_is_one_failed_attempt(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path, staging: Path
) -> None:
    name, url = served(platform, bundle)
    platform.firmware.cut_next(70_000)
    platform.firmware.fail_next(416)
    platform.firmware.fail_next(404)
    target = staging / "bundle"
    got = await fetch_bundle(guarded, url, target, accept_head=accept, progress=Progress(), **FAST)
    assert_good(got, bundle, target)
    reqs = platform.firmware.requests_for(name)
    assert [(r.range, r.status) for r in reqs] == [
        (None, 200), ("bytes=70000-", 416), ("bytes=70000-", 404), ("bytes=70000-", 206),
    ]  # fmt: skip


async def test_a_206_that_does_not_continue_where_the_file_ends_is_not_taken(
    pki: Pki, bundle: Path, staging: Path
) -> None:
    """A server (not ours) that answers a Range with another range, or for another size."""
    data = contents(bundle)
    k = 50_000
    asked: list[str | None] = []
    answers = [
        (f"bytes 0-{len(data) - 1}/{len(data)}", 0),  # from the start again
        (f"bytes {k}-{len(data)}/{len(data) + 1}", k),  # another size
        (f"bytes {k}-{len(data) - 1}/{len(data)}", k),  # right
    ]

    async def cut_body() -> AsyncIterator[bytes]:
        yield data[:k]
        raise AbortConnection("cut")

    async def handler(req: Request) -> Response:
        asked.append(req.headers.get("range"))
        if len(asked) == 1:
            return Response(200, b"", {"content-length": str(len(data))}, stream=cut_body())
        content_range, start = answers[len(asked) - 2]
        return Response(206, data[start:], {"content-range": content_range})

    srv = HttpServer(handler, pki.server_context())
    port = await srv.start("127.0.0.1", 0)
    guard = UrlGuard(allow_insecure=False, platform_hosts=lambda: ["127.0.0.1"])
    try:
        async with platform_http(MAC, str(pki.ca_file), trust=Trust.UPLOADS, timeout=5,
                                 guard=guard) as http:  # fmt: skip
            url = f"https://127.0.0.1:{port}/b"
            target = staging / "bundle"
            got = await fetch_bundle(http, url, target, accept_head=accept,
                                     progress=Progress(), **FAST)  # fmt: skip
    finally:
        await srv.close()
    assert_good(got, bundle, target)
    assert asked == [None, f"bytes={k}-", f"bytes={k}-", f"bytes={k}-"]


# --- the platform's store ---------------------------------------------------------------


def test_byte_ranges() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=10-", 100) == (10, 100)
    assert byte_range("bytes=10-19", 100) == (10, 20)
    assert byte_range("bytes=90-200", 100) == (90, 100)
    assert byte_range("bytes=-30", 100) == (70, 100)
    assert byte_range("bytes=-300", 100) == (0, 100)
    for ignored in ("bytes=1-2,5-6", "items=1-", "bytes=9-3", "bytes=-", "bytes=a-"):
        assert byte_range(ignored, 100) is None
    for bad in ("bytes=100-", "bytes=-0"):
        with pytest.raises(Unsatisfiable):
            byte_range(bad, 100)


async def test_the_store_answers_ranges(
    platform: ReferencePlatform, guarded: HttpClient, bundle: Path
) -> None:
    _, url = served(platform, bundle)
    data = contents(bundle)
    n = len(data)
    r = await guarded.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{n}"
    assert r.headers["content-length"] == "100" and r.headers["accept-ranges"] == "bytes"
    r = await guarded.get(url, headers={"Range": f"bytes={n - 5}-"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = await guarded.get(url, headers={"Range": f"bytes={n}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{n}"
    r = await guarded.get(url)
    assert r.status_code == 200 and r.content == data and r.headers["accept-ranges"] == "bytes"


async def test_admin_adds_a_bundle_and_lists_its_downloads(
    make_platform: MakePlatform, bundle: Path, tmp_path: Path
) -> None:
    p = await make_platform(admin_port=0)
    auth = {"Authorization": f"Bearer {p.admin_token}"}
    async with httpx.AsyncClient(base_url=str(p.admin_url), headers=auth) as admin:
        r = await admin.post("/admin/firmware", json={"path": str(bundle)})
        assert r.status_code == 200, r.text
        name, url = r.json()["name"], r.json()["url"]
        assert url == p.firmware.url_for(name) and url.startswith("https://")
        stored = p.firmware.path_for(name)
        assert stored is not None and contents(stored) == contents(bundle)
        for bad in ("relative.bundle", str(tmp_path / "missing")):
            r = await admin.post("/admin/firmware", json={"path": bad})
            assert r.status_code == 400 and r.json()["info"]
        async with platform_http(MAC, str(p.ca_file), trust=Trust.UPLOADS, timeout=5) as http:
            r = await http.get(url, headers={"Range": "bytes=10-"})
            assert r.status_code == 206
        r = await admin.get("/admin/firmware/requests", params={"name": name})
        (req,) = r.json()["requests"]
        assert (req["range"], req["status"], req["start"], req["complete"]) == (
            "bytes=10-", 206, 10, True,
        )  # fmt: skip
