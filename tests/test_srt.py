"""hss_pu.srt against real peers: srt-live-transmit as the listener, on loopback only.

The TS under test is made once per session by the ffmpeg CLI (x264 with VBV, like the
live encoder) and sent in 1316-byte messages paced by its PCRs, as a live muxer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import json
import logging
import math
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from hss_pu import srt
from hss_pu.media.tscheck import PCR_HZ, check_ts, pcr_positions
from hss_pu.srt import (
    DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_LATENCY_MS,
    LIVE_PAYLOAD_SIZE,
    SrtError,
    SrtSender,
    SrtUnavailable,
    parse_srt_url,
)
from tests.support.udp_relay import UdpRelay

BITRATE = 3_000_000
HEADER_BYTES = 44  # SRT 16 + UDP 8 + IPv4 20, counted by libsrt's byte stats
PASSPHRASE = "correct-horse-battery"


def _have_libsrt() -> bool:
    try:
        srt.load()
    except SrtUnavailable:
        return False
    return True


needs_peers = pytest.mark.skipif(
    not (_have_libsrt() and shutil.which("srt-live-transmit") and shutil.which("ffmpeg")),
    reason="needs libsrt 1.5, srt-live-transmit and ffmpeg",
)


# --------------------------------------------------------------------------- (a) URLs


def test_url_defaults() -> None:
    u = parse_srt_url("srt://platform.example:9000")
    assert (u.host, u.port, u.streamid, u.passphrase, u.pbkeylen, u.maxbw) == (
        "platform.example",
        9000,
        None,
        None,
        None,
        None,
    )
    assert u.latency_ms == DEFAULT_LATENCY_MS == 200
    assert u.connect_timeout_ms == DEFAULT_CONNECT_TIMEOUT_MS


def test_url_all_parameters() -> None:
    u = parse_srt_url(
        "srt://[::1]:9001?streamid=%23!::r=cam/1,m=publish&latency=350&passphrase=0123456789ab"
        "&pbkeylen=32&connect_timeout=1500&maxbw=2000000&mode=caller&rcvbuf=1000000"
    )
    assert (u.host, u.port, u.streamid) == ("::1", 9001, "#!::r=cam/1,m=publish")
    assert (u.latency_ms, u.pbkeylen, u.connect_timeout_ms, u.maxbw) == (350, 32, 1500, 2_000_000)
    assert u.passphrase is not None and u.passphrase.reveal() == "0123456789ab"
    assert u.ignored == ("rcvbuf",)
    # A raw '#' (access-control streamid) is not a fragment; '+' stays literal.
    assert parse_srt_url("srt://h:1?streamid=#!::u=a+b").streamid == "#!::u=a+b"
    assert parse_srt_url("srt://h:1?conntimeo=700").connect_timeout_ms == 700
    # maxbw=0 is SRT's relative mode: ignored, the caller's absolute cap applies.
    assert parse_srt_url("srt://h:1?maxbw=0").maxbw is None
    assert parse_srt_url("srt://h:1?maxbw=-1").maxbw == -1


def test_url_default_streamid() -> None:
    assert parse_srt_url("srt://h:1", default_streamid="PU-1/0").streamid == "PU-1/0"
    assert parse_srt_url("srt://h:1?streamid=", default_streamid="PU-1/0").streamid == "PU-1/0"
    assert parse_srt_url("srt://h:1?streamid=x", default_streamid="PU-1/0").streamid == "x"
    with pytest.raises(ValueError, match="'streamid'"):
        parse_srt_url("srt://h:1", default_streamid="s" * 513)


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("http://h:1", "scheme"),
        ("srt://:9000?mode=listener", "host"),
        ("srt://user:pw@h:1", "host"),
        ("srt://h", "port"),
        ("srt://h:70000", "port"),
        ("srt://h:1?mode=listener", "mode"),
        ("srt://h:1?mode=rendezvous", "mode"),
        ("srt://h:1?latency=abc", "latency"),
        ("srt://h:1?latency=-5", "latency"),
        ("srt://h:1?latency=1&latency=2", "latency"),
        ("srt://h:1?pbkeylen=20", "pbkeylen"),
        ("srt://h:1?connect_timeout=10", "connect_timeout"),
        ("srt://h:1?connect_timeout=1000&conntimeo=1000", "connect_timeout"),
        ("srt://h:1?maxbw=-2", "maxbw"),
        ("srt://h:1?streamid=" + "x" * 513, "streamid"),
        ("srt://h:1?passphrase=short", "passphrase"),
        ("srt://h:1?passphrase=" + "p" * 80, "passphrase"),
    ],
)
def test_url_errors_name_the_parameter(url: str, param: str) -> None:
    with pytest.raises(ValueError, match=f"'{param}'"):
        parse_srt_url(url)


def test_url_passphrase_never_shown() -> None:
    u = parse_srt_url(f"srt://h:1?streamid=s&passphrase={PASSPHRASE}&pbkeylen=16")
    for text in (repr(u), str(u), u.redacted(), f"{u}", f"{u!r}"):
        assert PASSPHRASE not in text
    assert "passphrase=***" in u.redacted()
    # Parameter names are case-insensitive: 'Passphrase=' must not silently mean "no crypto".
    assert parse_srt_url(f"srt://h:1?Passphrase={PASSPHRASE}").passphrase is not None
    for bad in ("tiny-pass", "x" * 90):
        with pytest.raises(ValueError) as ei:
            parse_srt_url(f"srt://h:1?passphrase={bad}")
        assert bad not in str(ei.value) and bad[:5] not in str(ei.value)
    with pytest.raises(ValueError, match="'passphrase': given twice") as ei:
        parse_srt_url(f"srt://h:1?passphrase={PASSPHRASE}&passphrase={PASSPHRASE}")
    assert PASSPHRASE not in str(ei.value)
    # An unescaped '&' in a passphrase: its tail must not surface as an "ignored" name.
    u = parse_srt_url("srt://h:1?passphrase=first-half&Second%20Half!&latency=100")
    assert u.ignored == () and u.latency_ms == 100


def test_srt_error_readable() -> None:
    e = SrtError(
        1002,
        "Connection setup failure: connection rejected",
        op="connect to h:1",
        reject_reason=10,
        reject_text="Incorrect passphrase",
    )
    assert str(e) == (
        "SRT connect to h:1 failed: Connection setup failure: connection rejected [1002]; "
        "rejected: Incorrect passphrase (BADSECRET, 10)"
    )
    assert isinstance(e, OSError) and e.errno == 1002
    assert e.is_reconnectable and e.is_auth_failure
    assert SrtError(2001, "Connection was broken").is_reconnectable
    assert not SrtError(5003, "Invalid parameter").is_reconnectable
    assert SrtError(1002, "x", reject_reason=1403).reject_name == "SERVER"


def test_import_does_not_load_libsrt() -> None:
    code = (
        "import sys, hss_pu.srt.url; assert 'ctypes' not in sys.modules;"  # parsing is pure
        "import hss_pu.srt as s; assert s.lib._lib is None; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_missing_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(srt.lib, "_lib", None)
    monkeypatch.setattr(srt.lib, "SONAME", "libsrt-does-not-exist.so.9")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(SrtUnavailable, match=r"install libsrt1\.5-openssl"):
        srt.load()


# --------------------------------------------------------------------------- helpers


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _udp_bound(port: int) -> bool:
    """Whether some process has bound UDP ``port`` (the listener is ready)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            if any(line.split()[1].endswith(suffix) for line in list(f)[1:]):
                return True
    return False


def _sink(path: Path) -> BinaryIO:
    return open(path, "wb")  # the caller closes it (a with-block)


class Receiver:
    """``srt-live-transmit`` as listener writing what it receives to a file.

    ``-a no``: it exits when the caller disconnects, which flushes its (buffered) stdout;
    a SIGTERM'd one loses the tail. ``-f``: stats are running totals.
    """

    def __init__(self, proc: asyncio.subprocess.Process, port: int, out: Path, stats: Path):
        self.proc, self.port, self.out, self.stats_path = proc, port, out, stats

    @classmethod
    async def start(
        cls, tmp: Path, *, latency: int = 200, passphrase: str | None = None, name: str = "rx"
    ) -> Receiver:
        port = _free_udp_port()
        out, stats = tmp / f"{name}.ts", tmp / f"{name}.json"
        query = f"mode=listener&latency={latency}"
        if passphrase:
            query += f"&passphrase={passphrase}"
        with _sink(out) as sink:
            proc = await asyncio.create_subprocess_exec(
                "srt-live-transmit", "-q", "-a", "no", "-f", "-s", "100", "-pf", "json",
                "-statsout", str(stats), f"srt://:{port}?{query}", "file://con",
                stdout=sink, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 5
        while not _udp_bound(port):
            assert proc.returncode is None, "srt-live-transmit exited"
            assert time.monotonic() < deadline, "srt-live-transmit did not bind"
            await asyncio.sleep(0.02)
        return cls(proc, port, out, stats)

    async def finish(self, timeout: float = 5.0) -> bytes:
        """Wait for the exit that follows the caller's disconnect; return what it wrote."""
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
        return self.out.read_bytes()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    def stats(self) -> dict[str, Any]:
        """The last (cumulative, -f) stats line's "recv" section."""
        lines = [ln for ln in self.stats_path.read_text().splitlines() if ln.strip()]
        assert lines, "srt-live-transmit wrote no stats"
        recv: dict[str, Any] = json.loads(lines[-1])["recv"]
        return recv


@pytest.fixture
async def receivers(tmp_path: Path) -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for r in started:
        r.kill()
        with contextlib.suppress(ProcessLookupError):
            await r.proc.wait()


def _make_ts(path: Path, seconds: int) -> bytes:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
         "-g", "30", "-b:v", "3M", "-maxrate", "3M", "-bufsize", "1M", "-f", "mpegts", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path.read_bytes()


@pytest.fixture(scope="session")
def ts_6s(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _make_ts(tmp_path_factory.mktemp("ts") / "6s.ts", 6)


@pytest.fixture(scope="session")
def ts_8s(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _make_ts(tmp_path_factory.mktemp("ts") / "8s.ts", 8)


def _schedule(data: bytes) -> list[float]:
    """Send time (s from start) of each 1316-byte message: the PCR clock interpolated by
    byte offset, i.e. how a live muxer releases the bytes."""
    pcrs = pcr_positions(data)
    assert len(pcrs) >= 2, "no PCRs to pace by"
    (o0, p0), (o1, p1) = pcrs[0], pcrs[-1]
    tail_rate = (o1 - o0) / ((p1 - p0) / PCR_HZ)
    out: list[float] = []
    k = 0
    for off in range(0, len(data), LIVE_PAYLOAD_SIZE):
        while k + 1 < len(pcrs) and pcrs[k + 1][0] <= off:
            k += 1
        if off <= o0:
            t = 0.0
        elif k + 1 < len(pcrs):
            (oa, pa), (ob, pb) = pcrs[k], pcrs[k + 1]
            t = ((pa - p0) + (pb - pa) * (off - oa) / (ob - oa)) / PCR_HZ
        else:
            t = (p1 - p0) / PCR_HZ + (off - o1) / tail_rate
        out.append(t)
    return out


async def _stream(sender: SrtSender, data: bytes, *, seconds: float | None = None) -> int:
    """Send ``data`` in real time; returns how often send_nowait found the buffer full."""
    sched = _schedule(data)
    full = 0
    t0 = time.monotonic()
    for i, at in enumerate(sched):
        if seconds is not None and at > seconds:
            break
        delay = t0 + at - time.monotonic()
        if delay > 0.002:
            await asyncio.sleep(delay)
        msg = data[i * LIVE_PAYLOAD_SIZE : (i + 1) * LIVE_PAYLOAD_SIZE]
        if not sender.send_nowait(msg):
            full += 1
            assert await sender.send(msg, timeout=1.0), "send buffer stayed full"
    return full


async def _ffprobe_frames(path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
        "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return int(out.split()[0]), err.decode()  # stream line, then the program's


# --------------------------------------------------------------------------- (b) stream


@needs_peers
@pytest.mark.slow
async def test_stream_is_byte_exact_and_decodes(
    ts_6s: bytes, tmp_path: Path, receivers: list[Receiver]
) -> None:
    rx = await Receiver.start(tmp_path)
    receivers.append(rx)
    url = parse_srt_url(f"srt://127.0.0.1:{rx.port}?latency=200", default_streamid="PU-1/0")
    sender = await SrtSender.connect(url, maxbw=srt.maxbw_for_bitrate(BITRATE))
    assert sender.maxbw == 3 * BITRATE // 8
    for bad in (b"", bytes(187), bytes(1317), bytes(1316 + 188)):
        with pytest.raises(ValueError):
            sender.send_nowait(bad)

    full = await _stream(sender, ts_6s)
    assert sender.stats().packets_sent > 0
    await sender.close()
    st = sender.final_stats
    assert st is not None
    got = await rx.finish()

    packets = math.ceil(len(ts_6s) / LIVE_PAYLOAD_SIZE)
    assert full == 0
    assert st.packets_sent == packets
    assert st.bytes_sent == len(ts_6s) + HEADER_BYTES * packets
    assert st.packets_dropped == 0 and 0 < st.max_bw_mbps < 10
    assert got == ts_6s
    assert check_ts(got).ok
    frames, errors = await _ffprobe_frames(rx.out)
    assert (frames, errors) == (180, "")
    assert rx.stats()["packetsDropped"] == 0
    # Closed: sends fail the way a lost connection does.
    with pytest.raises(SrtError) as ei:
        sender.send_nowait(ts_6s[:1316])
    assert ei.value.is_reconnectable
    await sender.close()  # idempotent


# --------------------------------------------------------------------------- (c) no listener


@needs_peers
async def test_connect_without_listener_fails_fast_and_loop_keeps_running() -> None:
    port = _free_udp_port()
    url = parse_srt_url(f"srt://127.0.0.1:{port}?connect_timeout=1000")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    t0 = time.monotonic()
    with pytest.raises(SrtError) as ei:
        await SrtSender.connect(url, maxbw=500_000)
    elapsed = time.monotonic() - t0
    tick_task.cancel()
    err = ei.value
    assert err.code in (srt.SRT_ENOSERVER, srt.SRT_ECONNREJ)
    assert err.is_reconnectable and not err.is_auth_failure
    assert f"127.0.0.1:{port}" in str(err) and "timed out" in str(err)
    assert 0.9 < elapsed < 1.6
    assert ticks >= 50  # ~100 in a second when the loop is free


@needs_peers
async def test_cancelled_connect_returns_at_once() -> None:
    url = parse_srt_url(f"srt://127.0.0.1:{_free_udp_port()}?connect_timeout=3000")
    task = asyncio.create_task(SrtSender.connect(url, maxbw=500_000))
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 0.1  # srt_close would have blocked until the timeout


def test_connect_needs_an_absolute_maxbw() -> None:
    with pytest.raises(ValueError, match="maxbw"):
        asyncio.run(SrtSender.connect(parse_srt_url("srt://127.0.0.1:9"), maxbw=None))


# --------------------------------------------------------------------------- (d) listener killed


@needs_peers
@pytest.mark.slow
async def test_killed_listener_is_a_reconnectable_error(
    ts_6s: bytes, tmp_path: Path, receivers: list[Receiver]
) -> None:
    rx = await Receiver.start(tmp_path)
    receivers.append(rx)
    url = parse_srt_url(f"srt://127.0.0.1:{rx.port}")
    # libsrt 1.5.1 breaks only after 16 EXP expirations (>= 17 x 300 ms) *and* the peer
    # idle timeout, so ~5 s is the floor whatever PEERIDLETIMEO below that says.
    sender = await SrtSender.connect(
        url, maxbw=srt.maxbw_for_bitrate(BITRATE), peer_idle_timeout=1.0
    )
    await _stream(sender, ts_6s, seconds=0.5)
    rx.kill()
    t0 = time.monotonic()
    msg = ts_6s[:1316]
    with pytest.raises(SrtError) as ei:
        while time.monotonic() - t0 < 10:
            sender.send_nowait(msg)  # True or False (buffer full) until the break is noticed
            await asyncio.sleep(0.004)
    noticed = time.monotonic() - t0
    await sender.close(linger=0.2)
    assert ei.value.is_reconnectable
    assert ei.value.code in (srt.SRT_ECONNLOST, srt.SRT_ENOCONN, srt.SRT_EINVSOCK)
    assert noticed < 7.0


# --------------------------------------------------------------------------- (e) encryption


@needs_peers
async def test_encrypted_stream_and_wrong_passphrase(
    ts_6s: bytes, tmp_path: Path, receivers: list[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rx = await Receiver.start(tmp_path, passphrase=PASSPHRASE)
    receivers.append(rx)
    base = f"srt://127.0.0.1:{rx.port}?connect_timeout=1500"
    wrong = "wrong-horse-battery"

    for query, reason in ((f"&passphrase={wrong}", "BADSECRET"), ("", "UNSECURE")):
        with pytest.raises(SrtError) as ei:
            await SrtSender.connect(parse_srt_url(base + query), maxbw=500_000)
        err = ei.value
        assert err.code == srt.SRT_ECONNREJ and err.reject_name == reason
        assert err.is_auth_failure
        for text in (str(err), repr(err), repr(err.args)):
            assert wrong not in text and PASSPHRASE not in text

    url = parse_srt_url(base + f"&passphrase={PASSPHRASE}&pbkeylen=32")
    sender = await SrtSender.connect(url, maxbw=srt.maxbw_for_bitrate(BITRATE))
    part = ts_6s[: LIVE_PAYLOAD_SIZE * 300]  # ~1 s
    await _stream(sender, part)
    await sender.close()
    assert await rx.finish() == part
    assert PASSPHRASE not in caplog.text and wrong not in caplog.text
    assert "passphrase=***" in caplog.text  # the connect line names the URL, redacted


# --------------------------------------------------------------------------- (f) loss

# Seven TS null packets: sent after the data so that a lost final data packet shows up
# as a gap (SRT only NAKs a loss once a later packet arrives); demuxers discard them.
NULL_MESSAGE = (b"\x47\x1f\xff\x10" + bytes(184)) * 7


async def _lossy_run(
    data: bytes, tmp: Path, receivers: list[Receiver], *, latency: int, arm_nak_timer: bool
) -> tuple[bytes, srt.SrtStats, dict[str, Any], UdpRelay, float]:
    rx = await Receiver.start(tmp, latency=latency)
    receivers.append(rx)
    # Lossless while connecting: libsrt 1.5.1's caller can miss a lost handshake response
    # and time out (the live service reconnects; a test should not depend on it).
    async with UdpRelay(("127.0.0.1", rx.port), seed=4) as relay:
        url = parse_srt_url(f"srt://127.0.0.1:{relay.port}?latency={latency}")
        t0 = time.monotonic()
        sender = await SrtSender.connect(url, maxbw=srt.maxbw_for_bitrate(BITRATE, 3.0))

        async def start_loss() -> None:
            if arm_nak_timer:
                await asyncio.sleep(0.05)
                relay.drop_next_data(1)
                await asyncio.sleep(0.35)
            relay.drop, relay.drop_back = 0.05, 0.02

        loss = asyncio.create_task(start_loss())
        full = await _stream(sender, data)
        await loss
        for _ in range(3):
            assert sender.send_nowait(NULL_MESSAGE)
            await asyncio.sleep(0.02)
        await sender.close(linger=2.0)
        got = await rx.finish()
        elapsed = time.monotonic() - t0
    assert full == 0
    assert sender.final_stats is not None
    tail = got[len(data) :]
    assert check_ts(tail).pids <= {0x1FFF}, "only padding may follow the data"
    return got[: len(data)], sender.final_stats, rx.stats(), relay, elapsed


@needs_peers
@pytest.mark.slow
async def test_lossy_link_recovers_everything(
    ts_8s: bytes, tmp_path: Path, receivers: list[Receiver]
) -> None:
    """5% loss caller->listener and 2% back, latency 200 ms, absolute MAXBW 3 x the bitrate:
    every packet is recovered in time and the TS arrives byte-exact (the notes: with the
    relative MAXBW, 42 packets were lost).

    libsrt 1.5.1's receiver sends its first periodic NAK ~300 ms after the first loss on a
    connection (then every ~20 ms), so with 200 ms latency a packet whose NAK or
    retransmission is lost *in that first episode* cannot be recovered (measured: ~1 run in
    4). One controlled loss 50 ms in arms that timer before the random loss starts at 0.4 s;
    the next test shows the other cure, a latency above 300 ms + RTT.
    """
    got, st, recv, relay, elapsed = await _lossy_run(
        ts_8s, tmp_path, receivers, latency=200, arm_nak_timer=True
    )
    report = check_ts(got)
    print(
        f"\nloss test (200 ms): {elapsed:.1f} s, relay {relay.counts}; sender: sent "
        f"{st.packets_sent} retransmitted {st.packets_retransmitted} loss-reports "
        f"{st.packets_lost} dropped {st.packets_dropped}; receiver: lost {recv['packetsLost']} "
        f"dropped {recv['packetsDropped']}; TS continuity errors {report.cc_errors}"
    )
    assert relay.counts.dropped > 0 and relay.counts.dropped_back > 0
    assert st.packets_retransmitted > 0  # loss really happened and was repaired
    assert recv["packetsDropped"] == 0 and st.packets_dropped == 0
    assert report.cc_errors == 0 and report.ok
    assert got == ts_8s


@needs_peers
@pytest.mark.slow
async def test_lossy_link_from_first_packet_with_400ms_latency(
    ts_6s: bytes, tmp_path: Path, receivers: list[Receiver]
) -> None:
    """Random loss from the very first data packet is fully recovered once the latency
    covers libsrt's 300 ms first periodic NAK (docs/protocol.md, Vm)."""
    data = ts_6s[: LIVE_PAYLOAD_SIZE * 700]  # ~3 s
    got, st, recv, relay, elapsed = await _lossy_run(
        data, tmp_path, receivers, latency=400, arm_nak_timer=False
    )
    print(
        f"\nloss test (400 ms): {elapsed:.1f} s, relay {relay.counts}; retransmitted "
        f"{st.packets_retransmitted}; receiver dropped {recv['packetsDropped']}"
    )
    assert st.packets_retransmitted > 0
    assert recv["packetsDropped"] == 0 and st.packets_dropped == 0
    assert got == data and check_ts(got).ok
