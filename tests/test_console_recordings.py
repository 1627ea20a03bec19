"""The console's recordings (issue 14, item 4): a real device records to the reference
platform; the timeline, the HLS playlist, the segment files and a range's download are
served by aiohttp on loopback and read by httpx (not aiohttp's client, so the two ends do
not share one library's reading of HTTP), ffmpeg and ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiohttp import web

from hss_pu.media.tscheck import check_ts
from hss_pu.reference_platform.console import recordings
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.reference_platform.vr import VrSegment
from hss_pu.wire.vr import (
    CONTENT_TYPE_FORM,
    CONTENT_TYPE_TS,
    encode_create,
    encode_save,
    parse_create_reply,
)

from .support.console import assert_refused, serve_console
from .support.probe import decode_errors, ffprobe
from .support.rig import DEVICE, MAC, Rig, until

W, H, FPS = 320, 180, 15
SEG = 2  # s: short segments keep the test short
A_SECONDS, GAP_SECONDS, B_SECONDS = 12, 3, 8  # 20 s recorded, stopped 3 s in between

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.platform(hb_interval=1),
    pytest.mark.rig(size=(W, H), fps=FPS, bitrate=300_000, backoff_scale=0.05),
]

API = f"/console/api/recordings/{DEVICE}/0"
PARTS = (recordings.add_routes,)


def console_client(base: str) -> httpx.AsyncClient:
    """An HTTP client for the console at ``base`` (relative URLs are under it)."""
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=30)


def mime(r: httpx.Response) -> str:
    """The response's media type, without its parameters."""
    return str(r.headers.get("content-type", "")).split(";")[0].strip().lower()


def media_duration(path: Path) -> float:
    """ffprobe's duration of the whole file (the container's, every stream)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return float(json.loads(out.stdout)["format"]["duration"])


async def ffmpeg_copy(url: str, out: Path) -> str:
    """``ffmpeg -i URL -c copy OUT``: what ffmpeg said (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-nostdin", "-i", url, "-c", "copy", "-f", "mpegts", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return err.decode()


async def record_twice(rig: Rig) -> tuple[list[VrSegment], list[VrSegment]]:
    """Session "a" for A_SECONDS, stopped GAP_SECONDS, session "b" for B_SECONDS: the
    saved segments of each, in time order, once all are on the platform."""
    p = rig.platform
    assert (await rig.start_record("a", seg_duration=SEG)).err is None
    await asyncio.sleep(A_SECONDS)
    assert (await rig.stop_record("a")).err is None
    await asyncio.sleep(GAP_SECONDS)
    assert (await rig.start_record("b", seg_duration=SEG)).err is None
    await asyncio.sleep(B_SECONDS)
    assert (await rig.stop_record("b")).err is None
    rec = rig.daemon.record
    assert rec is not None
    assert await until(
        lambda: rec.status()["queued_memory"] == rec.status()["queued_disk"] == 0, 15
    )
    segs = sorted(p.vr_segments[0], key=lambda s: s.start)
    assert all(s.check is not None and s.check.ok for s in segs)
    firsts = [i for i, s in enumerate(segs) if s.discontinue]
    assert firsts == [0, firsts[1]], [(s.start, s.discontinue) for s in segs]
    return segs[: firsts[1]], segs[firsts[1] :]


async def test_timeline_playlist_segments_and_download_of_a_recording_with_a_stop(
    rig: Rig, tmp_path: Path
) -> None:
    a, b = await record_twice(rig)
    recorded = sum(s.duration for s in a + b)
    assert abs(recorded - (A_SECONDS + B_SECONDS)) <= 1.5, recorded
    async with serve_console(rig.platform, PARTS) as base, console_client(base) as client:
        # The timeline: every saved segment, and one gap where the device was stopped.
        r = await client.get(API)
        assert r.status_code == 200, r.text
        tl: dict[str, Any] = r.json()
        assert [s["name"] for s in tl["segments"]] == [s.name for s in a + b]
        assert [(s["start"], s["duration"], s["size"], s["discontinue"]) for s in tl["segments"]] \
            == [(s.start, s.duration, s.size, s.discontinue) for s in a + b]  # fmt: skip
        assert tl["gaps"] == [{"start": a[-1].end, "end": b[0].start}]
        assert GAP_SECONDS - 0.5 <= b[0].start - a[-1].end <= GAP_SECONDS + 2
        # A range: the segments that hold some of it, no gap inside session b.
        r = await client.get(API, params={"from": b[0].start + 0.5, "to": b[-1].end})
        assert [s["name"] for s in r.json()["segments"]] == [s.name for s in b]

        # The playlist: one discontinuity, before session b's first segment.
        r = await client.get(f"{API}/index.m3u8")
        assert r.status_code == 200
        assert mime(r) == "application/vnd.apple.mpegurl"
        text = r.text
        lines = text.splitlines()
        uris = [ln for ln in lines if not ln.startswith("#")]
        assert uris == [f"{API}/seg/{s.name}.ts" for s in a + b]
        assert text.count("#EXT-X-DISCONTINUITY") == 1
        assert lines[lines.index("#EXT-X-DISCONTINUITY") + 3] == uris[len(a)]
        assert "#EXT-X-TARGETDURATION:2" in lines and lines[-1] == "#EXT-X-ENDLIST"

        # ffmpeg plays session a's playlist: a file of its duration, decoding cleanly.
        a_url = f"{base}{API}/index.m3u8?from={a[0].start}&to={a[-1].end}"
        out = tmp_path / "a.ts"
        await ffmpeg_copy(a_url, out)
        a_seconds = sum(s.duration for s in a)
        assert abs(await asyncio.to_thread(media_duration, out) - a_seconds) <= 1.0
        assert await asyncio.to_thread(decode_errors, out) == ""
        # ... and the whole one, every frame of both sessions.
        out = tmp_path / "all.ts"
        await ffmpeg_copy(f"{base}{API}/index.m3u8", out)
        frames = int((await asyncio.to_thread(ffprobe, out))["nb_read_frames"])
        assert abs(frames - recorded * FPS) <= 3, (frames, recorded)

        # A segment file, byte for byte.
        r = await client.get(f"{API}/seg/{a[1].name}.ts")
        assert r.status_code == 200 and mime(r) == "video/mp2t"
        assert r.content == a[1].path.read_bytes()

        # A download across the stop: one file, the gap left out, cut at key frames.
        lo, hi = a[2].start + 0.3, b[1].start + 1.4
        r = await client.get(f"{API}/download", params={"from": lo, "to": hi})
        assert r.status_code == 200, r.text
        assert mime(r) == "video/mp2t"
        disposition = r.headers["Content-Disposition"]
        assert disposition.startswith("attachment;") and ".ts" in disposition
        data = r.content
        got = tmp_path / "range.ts"
        got.write_bytes(data)
        wanted = (a[-1].end - lo) + (hi - b[0].start)
        dur = await asyncio.to_thread(media_duration, got)
        # Starts at the key frame at or before ``from`` (a GOP is 1 s), ends at ``to``.
        assert wanted - 0.3 <= dur <= wanted + 1.2, (dur, wanted)
        assert await asyncio.to_thread(decode_errors, got) == ""
        ts = check_ts(data)
        assert ts.ok, ts  # one muxer: no continuity breaks where segments were joined
        frames = int((await asyncio.to_thread(ffprobe, got))["nb_read_frames"])
        assert abs(frames - dur * FPS) <= 3, (frames, dur)
        # The whole recording in one file: 20 s, the 3 s stop left out.
        r = await client.get(f"{API}/download")
        assert r.status_code == 200, r.text
        whole = r.content
        got.write_bytes(whole)
        assert abs(await asyncio.to_thread(media_duration, got) - recorded) <= 1.0

        # What is refused: nothing outside the platform's own saved segments is served.
        other = a[0].name.replace("ch0-", "ch1-")
        refused = {
            "/console/api/recordings/PU-9999/0": 404,  # no such device
            "/console/api/recordings/PU-9999/0/index.m3u8": 404,
            f"/console/api/recordings/{DEVICE}/x": 400,
            f"/console/api/recordings/{DEVICE}/256": 400,
            f"{API}?from=abc": 400,
            f"{API}?from=nan": 400,
            f"{API}?from=inf": 400,
            f"{API}?from=20&to=10": 400,
            f"{API}/index.m3u8?from=1&to=2": 404,  # nothing recorded then
            f"{API}/download?from=1&to=2": 404,
            f"{API}/download?from=2&to=1": 400,
            f"{API}/seg/x.ts": 400,
            f"{API}/seg/{a[0].name}": 400,  # the URI has .ts
            f"{API}/seg/..%2F..%2Fplatform.json": 400,
            f"{API}/seg/%2e%2e%2f{a[0].name}.ts": 400,
            f"{API}/seg/ch0-999-0123abcd.ts": 404,  # well-formed, never saved
            f"/console/api/recordings/{DEVICE}/1/seg/{a[0].name}.ts": 404,  # not channel 1's
            f"{API}/seg/{other}.ts": 404,
        }
        await assert_refused(client, refused)


async def test_a_device_sees_only_its_own_segments(rig: Rig) -> None:
    """Vr keeps segments per channel for every device: the console tells them apart by the
    MAC each segment came with (the one the device's Keepalive carries)."""
    p = rig.platform
    p.options.devices["PU-0002"] = "another-password"  # known, never recorded
    assert (await rig.start_record("a", seg_duration=1)).err is None
    segs = await p.vr.wait_segments(0, 2, timeout=10)
    async with serve_console(p, PARTS) as base, console_client(base) as client:
        r = await client.get(API)
        names = [s["name"] for s in r.json()["segments"]]
        assert names[:2] == [s.name for s in segs[:2]]
        r = await client.get("/console/api/recordings/PU-0002/0")
        assert r.status_code == 200 and r.json() == {"segments": [], "gaps": []}
        r = await client.get(f"/console/api/recordings/PU-0002/0/seg/{segs[0].name}.ts")
        assert r.status_code == 404
        quoted = quote("PU 0003/x", safe="")
        r = await client.get(f"/console/api/recordings/{quoted}/0")
        assert r.url.raw_path == f"/console/api/recordings/{quoted}/0".encode()
        assert r.status_code == 404 and "info" in r.json()


@pytest.fixture(scope="module")
def two_seconds(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """2 s of 320x180 H.264 at 15 fps with AAC, a key frame every second, as MPEG-TS."""
    path = tmp_path_factory.mktemp("console") / "seg.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "2",
         "-c:v", "libx264", "-g", "15", "-b:v", "1M", "-c:a", "aac", "-f", "mpegts", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path.read_bytes()


async def upload(p: ReferencePlatform, channel: int, data: bytes, starts: list[float]) -> None:
    """Segments on the platform's Vr as a PU saves them (create, PUT, save over HTTPS),
    with the rig's MAC: the rig's device's segments, one each at ``starts``."""
    ctx = ssl.create_default_context(cafile=str(p.ca_file))
    headers = {"Mac-Identity": MAC}
    form = {**headers, "Content-Type": CONTENT_TYPE_FORM}
    async with httpx.AsyncClient(verify=ctx, headers=headers, trust_env=False) as http:
        for i, start in enumerate(starts):
            body = encode_create(len(data), start, 2.0, i == 0, True)
            r = await http.post(p.vr_cbk_url(channel), content=body, headers=form)
            reply = parse_create_reply(r.content)
            r = await http.put(reply.url, content=data, headers={"Content-Type": CONTENT_TYPE_TS})
            assert r.status_code == 200, r.text
            r = await http.post(
                p.vr_cbk_url(channel), content=encode_save(reply.name), headers=form
            )
            assert r.status_code == 200, r.text


LONG = 300  # segments of 2 s: 10 minutes


@pytest.mark.platform(hb_interval=1, vr_decode_check=False)
@pytest.mark.rig(start_media=False)
async def test_a_long_download_is_streamed_bounded_and_stops_when_the_client_goes(
    rig: Rig, two_seconds: bytes, tmp_path: Path
) -> None:
    p = rig.platform
    t0 = p.now() - LONG * 2 - 60
    await upload(p, 1, two_seconds, [t0 + 2 * i for i in range(LONG)])
    total = LONG * len(two_seconds)
    url = f"/console/api/recordings/{DEVICE}/1/download"
    apps: list[web.Application] = []

    def part(app: web.Application, platform: ReferencePlatform) -> None:
        """The recordings' routes, keeping the app to look at its running downloads."""
        recordings.add_routes(app, platform)
        apps.append(app)

    async with serve_console(p, (part,)) as base, console_client(base) as client:
        running = apps[0][recordings.RECORDINGS].running
        async with contextlib.AsyncExitStack() as open_downloads:
            # A client that reads 64 KiB and stops: the remux waits for it, a bounded way
            # ahead (the queue, and what the sockets hold), not through the 10 minutes.
            r = await open_downloads.enter_async_context(client.stream("GET", url))
            assert r.status_code == 200
            chunks, read = r.aiter_bytes(), 0
            while read < 1 << 16:
                read += len(await anext(chunks))
            await asyncio.sleep(1.0)
            (pipe,) = running
            ahead = pipe.produced
            await asyncio.sleep(0.5)
            assert pipe.produced == ahead  # blocked, not spinning
            assert ahead < total / 4, (ahead, total)
            # Two downloads at once at most; a third is told to come back later.
            r2 = await open_downloads.enter_async_context(client.stream("GET", url))
            assert r2.status_code == 200 and len(running) == 2
            r3 = await client.get(url)
            assert r3.status_code == 503 and "info" in r3.json()
        # The client goes away (both responses closed half read: httpx drops their
        # connections): the remux threads stop, and a download can start again.
        assert await until(lambda: not running, 3), running
        # Read to the end, the file holds the whole 10 minutes.
        t = time.monotonic()
        r = await client.get(url)
        assert r.status_code == 200, r.text
        data = r.content
        took = time.monotonic() - t
        assert not running
        got = tmp_path / "long.ts"
        got.write_bytes(data)
        assert abs(await asyncio.to_thread(media_duration, got) - LONG * 2) <= 1
        assert check_ts(data).ok
        print(f"10 min download: {len(data)} bytes in {took:.2f} s; held back at {ahead} bytes")
