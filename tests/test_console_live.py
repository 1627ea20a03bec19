"""The console's live view, server side (hss_pu/reference_platform/console/live.py): the TS
a real device pushes over SRT, relayed unmodified over a WebSocket served by aiohttp on
loopback, read by another library's client (websockets; httpx for plain HTTP) so the two
ends do not share one reading of the protocols; judged by FFmpeg and by the device's own
state."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hss_pu.config import PowerSection
from hss_pu.media.tscheck import PACKET_SIZE, check_ts
from hss_pu.reference_platform.console import live
from hss_pu.reference_platform.console.live import LiveHub
from hss_pu.reference_platform.server import ReferencePlatform

from .support.probe import decode_errors, ffprobe, key_frames
from .support.rig import DEVICE, MakeRig, Rig, until
from .test_hibernation_e2e import asleep, battery_profile

W, H, FPS = 320, 180, 15

pytestmark = [
    pytest.mark.slow,
    pytest.mark.platform(hb_interval=1),
    pytest.mark.rig(size=(W, H), fps=FPS, bitrate=300_000, backoff_scale=0.02, seed=5),
]

Serve = Callable[..., Awaitable[tuple[str, LiveHub]]]


async def start_app(platform: ReferencePlatform, hub: LiveHub) -> tuple[web.AppRunner, str]:
    """The live routes on an aiohttp server on loopback: its runner and base URL."""
    app = web.Application()
    live.add_routes(app, platform, hub)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def serve(platform: ReferencePlatform) -> AsyncIterator[Serve]:
    """The live routes on an aiohttp server on loopback, with a hub of the given options;
    returns the server's base URL and the hub."""
    runners: list[web.AppRunner] = []

    async def start(**hub_options: Any) -> tuple[str, LiveHub]:
        hub = LiveHub(platform, **hub_options)
        runner, base = await start_app(platform, hub)
        runners.append(runner)
        return base, hub

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
def calls(platform: ReferencePlatform, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times the platform called each RPC on a device (the real call, counted)."""
    counted: Counter[str] = Counter()
    real = platform.call

    async def call(device_id: str, method: str, *args: Any, **kw: Any) -> Any:
        counted[method] += 1
        return await real(device_id, method, *args, **kw)

    monkeypatch.setattr(platform, "call", call)
    return counted


def live_url(base: str, device: str = DEVICE, channel: int | str = 0) -> str:
    return f"{base}/console/api/live/{device}/{channel}"


def viewer(base: str, device: str = DEVICE, channel: int | str = 0, **kw: Any) -> connect:
    """A WebSocket viewer of the live route, with the websockets library's client (not
    aiohttp's: the server's own library would share its reading of the protocol)."""
    url = live_url(base.replace("http://", "ws://", 1), device, channel)
    return connect(url, max_size=None, **kw)


async def slow_viewer(base: str) -> ClientConnection:
    """A viewer that holds little of what it does not read: a queue of one frame in the
    client (which then stops reading its socket) and a small kernel receive buffer, set
    before connecting so the TCP window is small from the start."""
    url = urlsplit(base)
    assert url.hostname is not None and url.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
    except BaseException:
        sock.close()
        raise
    return await viewer(base, sock=sock, max_queue=1)


async def receive_for(
    ws: ClientConnection, seconds: float, first_within: float = 15.0
) -> list[bytes]:
    """The binary messages that arrive within ``seconds`` of the first one (which may take
    up to ``first_within``: PushLive, the SRT connection, a key frame)."""
    out: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + first_within
    with contextlib.suppress(TimeoutError):
        while (left := deadline - loop.time()) > 0:
            async with asyncio.timeout(left):
                msg = await ws.recv()
            assert isinstance(msg, bytes), msg
            if not out:
                deadline = loop.time() + seconds
            out.append(msg)
    return out


async def closed_by_server(
    ws: ClientConnection, timeout: float, *, skip_binary: bool = False
) -> ConnectionClosed:
    """How the server closed ``ws`` within ``timeout``: the first thing to arrive must be
    the close (binary messages before it are read and dropped only if ``skip_binary``)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                msg = await ws.recv()
            except ConnectionClosed as exc:
                return exc
            assert skip_binary and isinstance(msg, bytes), msg


def close_frame(closed: ConnectionClosed) -> tuple[int, str]:
    """The code and reason of the close frame the server sent (none: the test fails)."""
    assert closed.rcvd is not None, f"no close frame from the server: {closed!r}"
    return closed.rcvd.code, closed.rcvd.reason


def pid(pkt: bytes) -> int:
    return ((pkt[1] & 0x1F) << 8) | pkt[2]


def whole_pes(data: bytes) -> bytes:
    """``data`` up to its last packet that starts a PES or a section: a capture cut
    anywhere else ends in a truncated frame that FFmpeg rightly complains of (the PU's
    muxer writes each PES in one run, so everything before that packet is whole)."""
    last = max(i for i in range(0, len(data), PACKET_SIZE) if data[i + 1] & 0x40)
    return data[:last]


def pushing(rig: Rig) -> str | None:
    """The stream id the device pushes on channel 0 (None: no push)."""
    assert rig.daemon.live is not None
    push = rig.daemon.live.pushes.get(0)
    return None if push is None else push.stream_id


async def test_a_viewer_gets_the_ts_unmodified_from_a_key_frame(
    rig: Rig, serve: Serve, tmp_path: Path
) -> None:
    """The first message starts at a sync byte with PAT and PMT before the key frame;
    the bytes are the receiver's, unmodified, and decode as H.264 without an error from
    the first frame on (a key frame)."""
    base, hub = await serve(grace=0.2)
    async with viewer(base) as ws:
        msgs = await receive_for(ws, 4.0)
    assert msgs, "no bytes arrived"
    rx = rig.platform.receivers[hub.stream_id(DEVICE, 0)]
    assert await until(lambda: rx.closed and hub.active() == [], timeout=10)
    first = msgs[0]
    assert first[0] == 0x47 and all(len(m) % PACKET_SIZE == 0 for m in msgs)
    pkts = [first[i : i + PACKET_SIZE] for i in range(0, len(first), PACKET_SIZE)]
    assert pid(pkts[0]) == 0, "PAT first"
    assert pkts[1][5 + pkts[1][4]] == 0x02, "then the PMT"
    assert pkts[2][1] & 0x40 and pkts[2][3] & 0x20 and pkts[2][5] & 0x40, "then a key frame"
    data = b"".join(msgs)
    assert check_ts(data).ok
    path = tmp_path / "viewer.ts"
    path.write_bytes(whole_pes(data))
    info = ffprobe(path)
    assert info["codec_name"] == "h264" and (info["width"], info["height"]) == (W, H)
    assert int(info["nb_read_frames"]) >= 2 * FPS, info  # ~4 s of 15 fps, a margin
    assert decode_errors(path) == ""
    keys = key_frames(path)
    assert keys[0]
    # Unmodified: past PAT and PMT, the viewer's bytes are a run of the receiver's file.
    assert data[2 * PACKET_SIZE :] in rx.files[-1].read_bytes()


async def test_two_viewers_share_one_push_and_the_last_one_gone_stops_it_after_grace(
    rig: Rig, serve: Serve, calls: Counter[str]
) -> None:
    base, hub = await serve(grace=1.5)
    stream = hub.stream_id(DEVICE, 0)
    a = await viewer(base)
    b = await viewer(base)
    assert await receive_for(a, 1.0) and await receive_for(b, 1.0)
    assert calls["PushLive"] == 1 and pushing(rig) == stream
    await a.close()
    await asyncio.sleep(0.5)
    assert pushing(rig) == stream  # one viewer left
    await b.close()
    # A reload: gone and back within the grace, the push goes on (no second PushLive).
    await asyncio.sleep(0.5)
    c = await viewer(base)
    assert await receive_for(c, 1.0)
    await c.close()
    assert calls["PushLive"] == 1 and calls["StopLive"] == 0 and pushing(rig) == stream
    # The last viewer gone for longer than the grace: StopLive, and the device stops.
    assert await until(lambda: pushing(rig) is None and hub.active() == [], timeout=5)
    assert calls["StopLive"] == 1
    assert stream not in rig.platform.receivers  # the listener is gone too
    # The next viewer starts a new push.
    async with viewer(base) as d:
        assert await receive_for(d, 1.0)
    assert calls["PushLive"] == 2


async def test_an_offline_device_or_a_refused_push_closes_with_a_reason(
    rig: Rig, serve: Serve, calls: Counter[str]
) -> None:
    base, _ = await serve()
    async with viewer(base, "PU-9999") as ws:
        code, reason = close_frame(await closed_by_server(ws, 5))
    assert code == live.CLOSE_OFFLINE and "offline" in reason
    # No such channel: the device's own refusal (102) in the reason.
    async with viewer(base, DEVICE, 7) as ws:
        code, reason = close_frame(await closed_by_server(ws, 25))
    assert code == live.CLOSE_REFUSED and "102" in reason, reason
    assert rig.daemon.live is not None and 7 not in rig.daemon.live.pushes
    async with viewer(base, DEVICE, "x") as ws:
        code, reason = close_frame(await closed_by_server(ws, 5))
    assert code == live.CLOSE_BAD_REQUEST and "bad channel" in reason, reason
    # Nothing was left listening for the refused push.
    assert not [s for s in rig.platform.receivers if s.endswith("-7")]
    # Plain HTTP on a WebSocket route: a JSON error, not a crash.
    async with httpx.AsyncClient() as http:
        r = await http.get(live_url(base), timeout=5)
    assert r.status_code == 400 and "info" in r.json()


async def test_a_device_that_goes_offline_ends_the_view_with_a_reason(
    rig: Rig, serve: Serve
) -> None:
    base, _ = await serve(stall=1.0)
    async with viewer(base) as ws:
        assert await receive_for(ws, 1.0)
        await rig.stop()
        code, reason = close_frame(await closed_by_server(ws, 15, skip_binary=True))
    assert code == live.CLOSE_OFFLINE and "offline" in reason, reason


@pytest.mark.rig(size=(640, 360), bitrate=1_500_000, fps=30)
async def test_a_slow_viewer_is_dropped_and_its_memory_stays_bounded(
    rig: Rig, serve: Serve
) -> None:
    """A viewer that stops reading is dropped once it is ``backlog`` bytes behind; what
    was queued for it never exceeds that (plus its start); the others go on."""
    # A small kernel send buffer (the default is 512 KiB) fills sooner.
    base, hub = await serve(backlog=128 << 10, send_buffer=64 << 10)
    fast = await viewer(base)
    slow = await slow_viewer(base)
    fast_bytes = 0

    async def watch() -> None:
        nonlocal fast_bytes
        while True:
            msg = await fast.recv()
            assert isinstance(msg, bytes), msg
            fast_bytes += len(msg)

    watching = asyncio.create_task(watch())
    # ``slow`` never calls recv(): its client's queue (one frame), then the socket
    # buffers fill, then the relay's queue for it.
    assert await until(lambda: hub.dropped == 1, timeout=30)
    dropped = hub.last_dropped
    assert dropped is not None and dropped.dropped
    assert dropped.peak <= dropped.limit <= (128 << 10) + 4 * (1 << 20)
    assert dropped.queued == 0  # freed at once
    # The fast viewer is unaffected.
    before = fast_bytes
    await asyncio.sleep(1.0)
    assert fast_bytes - before > 50_000 and not watching.done()
    watching.cancel()
    # The slow one, once it reads, finds its WebSocket closed (with the reason, if the
    # close frame got through the full buffers; else the connection was cut).
    closed = await closed_by_server(slow, 20, skip_binary=True)
    if closed.rcvd is not None:
        assert closed.rcvd.code == live.CLOSE_TOO_SLOW and "too slow" in closed.rcvd.reason
    await fast.close()
    await slow.close()


async def test_a_push_already_there_is_shared_not_replaced(
    rig: Rig, serve: Serve, calls: Counter[str]
) -> None:
    """A push someone else started on this platform (the embedded default's demo stream)
    is what the console shows: no PushLive that would replace it, and no StopLive when
    the last console viewer leaves."""
    rx, reply = await rig.platform.push_live(DEVICE, 0, "demo-live")
    assert reply.err is None
    await rx.wait_bytes(20_000)
    await rig.keepalive(lambda ch: ch.get("stream_id") == "demo-live")
    base, hub = await serve(grace=0.3)
    async with viewer(base) as ws:
        msgs = await receive_for(ws, 1.5)
    assert msgs and msgs[0][0] == 0x47
    assert calls["PushLive"] == 1  # the demo's own
    await asyncio.sleep(1.0)
    assert calls["StopLive"] == 0 and pushing(rig) == "demo-live"
    assert hub.active() == [] and "demo-live" in rig.platform.receivers


@pytest.mark.platform(hibernation_port=0, hb_interval=1)
async def test_a_sleeping_device_is_woken_for_its_first_viewer(
    platform: ReferencePlatform,
    make_rig: MakeRig,
    serve: Serve,
    tmp_path: Path,
) -> None:
    """A battery device asleep on the hibernation server is not "offline" to the console:
    the first viewer's PushLive wakes it, and it sleeps again once the view has ended."""
    power = PowerSection(idle_sleep_seconds=1.0, heartbeat_seconds=0.3)
    rig = await make_rig(profile=str(battery_profile(tmp_path)), power=power)
    await asleep(rig)
    base, _ = await serve(grace=0.3)
    async with viewer(base) as ws:
        msgs = await receive_for(ws, 1.0, first_within=30)
    assert msgs and msgs[0][0] == 0x47
    await asleep(rig)  # StopLive after the grace, then the idle time


async def test_shutting_down_ends_every_view_and_our_push(rig: Rig, calls: Counter[str]) -> None:
    hub = LiveHub(rig.platform)
    runner, base = await start_app(rig.platform, hub)
    try:
        ws = await viewer(base)
        assert await receive_for(ws, 0.5)
    finally:
        await runner.cleanup()
    code, reason = close_frame(await closed_by_server(ws, 10, skip_binary=True))
    assert code == live.CLOSE_GOING_AWAY and "shutting down" in reason, reason
    assert calls["StopLive"] == 1 and pushing(rig) is None
    assert hub.stream_id(DEVICE, 0) not in rig.platform.receivers
    await ws.close()
