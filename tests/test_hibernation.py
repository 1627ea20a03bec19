"""Hibernation in parts: the heartbeat and TOWAKEUP on the wire, the idle rules, the TCP
client against a plain asyncio server, and the reference platform's hibernation server
judging frames (the whole device: tests/test_hibernation_e2e.py)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator

import pytest

from hss_pu.clients.hibernation import HibernationClient
from hss_pu.profiles import load_profile
from hss_pu.reference_platform.hibernation import HibernationServer
from hss_pu.services.channels import ChannelRegistry
from hss_pu.services.hibernate import IdleTimer, PowerFacts, WakingSink, awake_reasons
from hss_pu.wire.alarms import ALARM_KINDS, flag
from hss_pu.wire.hibernation import (
    WAKE,
    BadHeartbeat,
    Heartbeat,
    WakeScanner,
    encode_heartbeat,
    parse_address,
    parse_heartbeat,
)
from hss_pu.wire.vd import GetServerInfoResp

from .support.rig import until

# --- the wire ----------------------------------------------------------------------------


def test_the_heartbeat_is_40_bytes_laid_out_as_wire_notes_say() -> None:
    hb = encode_heartbeat("PU-0001", "tok3n")
    assert hb == (
        b"\xcc\x00\x00\x28" + b"PU-0001" + b"\0" * 9 + b"\x4a\0\0\0" + b"tok3n" + b"\0" * 11
    )
    assert encode_heartbeat("A" * 16, "B" * 16)[4:20] == b"A" * 16
    assert encode_heartbeat("PU-1", "")[24:] == b"\0" * 16  # no token: 16 NULs


@pytest.mark.parametrize(
    ("device", "token", "why"),
    [
        ("A" * 17, "", "longer than"),
        ("PU-1", "T" * 17, "longer than"),
        ("", "", "empty"),
        ("PU-é", "", "ASCII"),
        ("PU\x001", "", "ASCII"),
        ("PU-1", "to\nken", "ASCII"),
    ],
)
def test_an_id_or_token_that_does_not_fit_is_refused(device: str, token: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        encode_heartbeat(device, token)


def test_parse_reads_back_what_encode_wrote() -> None:
    assert parse_heartbeat(encode_heartbeat("PU-0001", "t" * 16)) == Heartbeat("PU-0001", "t" * 16)
    assert parse_heartbeat(encode_heartbeat("PU-0001", "")) == Heartbeat("PU-0001", "")


def _with(frame: bytes, at: int, data: bytes) -> bytes:
    return frame[:at] + data + frame[at + len(data) :]


GOOD = encode_heartbeat("PU-0001", "tok")


@pytest.mark.parametrize(
    ("frame", "why", "resync"),
    [
        (_with(GOOD, 0, b"\xcd"), "magic", True),
        (_with(GOOD, 2, b"\x00\x29"), "length", True),
        (GOOD[:39], "39 bytes", False),
        (_with(GOOD, 20, b"\x4b"), "command", False),
        (_with(GOOD, 22, b"\x01"), "reserved", False),
        (_with(GOOD, 4, b"P\0U"), "NUL inside", False),
        (_with(GOOD, 4, b"\xff"), "ASCII", False),
        (_with(GOOD, 4, b"\0" * 16), "empty", False),
        (_with(GOOD, 24, b"\x07"), "printable", False),
        (b"", "magic", True),
    ],
)
def test_a_bad_frame_is_a_reason_not_an_exception(frame: bytes, why: str, resync: bool) -> None:
    got = parse_heartbeat(frame)
    assert isinstance(got, BadHeartbeat) and why in got.reason and got.resync is resync


def test_parse_never_raises_on_junk() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.choice([0, 1, 4, 39, 40, 41, rng.randrange(100)])
        frame = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.5 and n >= 4:
            frame = b"\xcc\x00\x00\x28" + frame[4:]
        assert isinstance(parse_heartbeat(frame), Heartbeat | BadHeartbeat)


def test_towakeup_is_found_split_anywhere_and_junk_is_not_kept() -> None:
    stream = b"junk" + WAKE + b"more"
    for cut in range(len(stream) + 1):
        for cut2 in range(cut, len(stream) + 1):
            s = WakeScanner()
            hits = [s.feed(stream[:cut]), s.feed(stream[cut:cut2]), s.feed(stream[cut2:])]
            assert hits.count(True) == 1
    s = WakeScanner()
    assert not s.feed(b"TOWAKE" * 1000) and len(s._tail) == 7
    assert not s.feed(b"towakeup")  # case matters
    assert s.feed(b"TOW") is False and s.feed(b"AKEUP") is True


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.5:9000", ("10.0.0.5", 9000)),
        ("hib.example.com:1", ("hib.example.com", 1)),
        ("[::1]:7000", ("::1", 7000)),
        ("10.0.0.5", "not host:port"),
        (":9000", "not host:port"),
        ("10.0.0.5:0", "port"),
        ("10.0.0.5:65536", "port"),
        ("10.0.0.5:+80", "port"),
        ("10.0.0.5:٩٠", "port"),
        ("bad host:80", "host"),
        ("::1:80", "host"),
        ("1.2.3.999:80", "host"),
    ],
)
def test_the_hibernation_address_is_host_and_port(text: str, want: object) -> None:
    got = parse_address(text)
    if isinstance(want, tuple):
        assert got == want
    else:
        assert isinstance(got, str) and str(want) in got


# --- the idle rules (pure) --------------------------------------------------------------

INFO = GetServerInfoResp(hibernation="10.0.0.5:9000", hb_token="tok")


def facts(**kw: object) -> PowerFacts:
    base: dict[str, object] = {
        "battery": True,
        "device_id": "PU-0001",
        "online": True,
        "server_info": INFO,
        "hibernation": ("10.0.0.5", 9000),
        "busy": (),
    }
    return PowerFacts(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "reason", "blocked"),
    [
        ({}, None, False),
        ({"battery": False}, "not a battery device", True),
        ({"device_id": "X" * 17}, "longer than", True),
        ({"online": False}, "not logged in", False),
        ({"server_info": None}, "GetServerInfo not answered", False),
        ({"hibernation": None}, "no hibernation address", True),
        ({"hibernation": "port is not 1-65535"}, "unusable: port", True),
        ({"server_info": GetServerInfoResp(hb_token="t" * 17)}, "hb_token is 17", True),
        ({"busy": ("live push on ch0",)}, "live push", False),
    ],
)
def test_what_keeps_a_device_awake(
    kw: dict[str, object], reason: str | None, blocked: bool
) -> None:
    v = awake_reasons(facts(**kw))
    if reason is None:
        assert v.reasons == () and v.blocked is None
    else:
        assert reason in v.reasons[0]
        assert (v.blocked is not None) is blocked


def test_busy_reasons_are_listed_after_what_blocks() -> None:
    v = awake_reasons(facts(online=False, busy=("recording on ch0", "KeepAwaken for 3 s more")))
    assert v.reasons == ("not logged in to Vd", "recording on ch0", "KeepAwaken for 3 s more")


def test_the_idle_timer_counts_quiet_time_only() -> None:
    t = IdleTimer(60)
    quiet, busy = awake_reasons(facts()), awake_reasons(facts(busy=("x",)))
    assert not t.step(0, quiet)
    assert not t.step(59.9, quiet)
    assert not t.step(60.0, busy)  # work resets it
    assert not t.step(61, quiet)
    assert not t.step(120.9, quiet)
    assert t.step(121, quiet)
    t.reset()
    assert not t.step(500, quiet) and t.idle_for(510) == 10


# --- the client against a plain server -------------------------------------------------


class Server:
    """A bare TCP server: what each connection sent, and its writers to answer on."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.times: list[list[float]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        buf = bytearray()
        times: list[float] = []
        self.received.append(buf)
        self.times.append(times)
        self.writers.append(w)
        while data := await r.read(100):
            buf += data
            times.append(time.monotonic())


@pytest.fixture
async def tcp_server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    assert s.server is not None
    s.server.close()
    for w in s.writers:
        w.close()


async def test_the_client_sends_at_once_then_every_interval_and_returns_on_towakeup(
    tcp_server: Server,
) -> None:
    server = tcp_server
    c = HibernationClient("127.0.0.1", server.port, "PU-0001", "tok", interval=0.2)
    t0 = time.monotonic()
    task = asyncio.create_task(c.run())
    assert await until(lambda: server.received and len(server.received[0]) >= 40 * 4, 3)
    assert server.times[0][0] - t0 < 0.5  # the first one as soon as the connection is up
    assert bytes(server.received[0][:40]) == encode_heartbeat("PU-0001", "tok")
    assert bytes(server.received[0]) == encode_heartbeat("PU-0001", "tok") * (
        len(server.received[0]) // 40
    )
    w = server.writers[0]
    w.write(b"TOWA")  # split across two writes
    await w.drain()
    await asyncio.sleep(0.05)
    assert not task.done()
    w.write(b"KEUP")
    await asyncio.wait_for(task, 2)
    assert c.stats.connects == 1 and c.stats.heartbeats >= 4


async def test_the_client_reconnects_after_a_lost_connection(tcp_server: Server) -> None:
    server = tcp_server
    c = HibernationClient(
        "127.0.0.1", server.port, "PU-0001", "", interval=10, backoff_scale=0.01,
        rng=random.Random(3),
    )  # fmt: skip
    task = asyncio.create_task(c.run())
    assert await until(lambda: server.received and len(server.received[0]) >= 40, 3)
    server.writers[0].close()  # the server drops it
    assert await until(lambda: len(server.received) >= 2 and len(server.received[1]) >= 40, 3)
    assert c.stats.failures == 1 and c.stats.connects == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not c.connected


async def test_a_refused_connection_is_retried_never_spinning_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = s.sockets[0].getsockname()[1]
    s.close()
    await s.wait_closed()
    caplog.set_level(logging.DEBUG, "hss_pu.hibernation")
    c = HibernationClient("127.0.0.1", port, "PU-1", "", backoff_scale=1e-9)
    task = asyncio.create_task(c.run())
    await asyncio.sleep(0.5)
    assert not task.done() and 2 <= c.stats.failures <= 12, c.stats  # one try per 50 ms at most
    assert c.stats.last_error is not None and "cannot connect" in c.stats.last_error
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # the first failure; the others at debug
    task.cancel()  # and it stops when told, whatever moment the cancel meets
    async with asyncio.timeout(2):
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


# --- the reference platform's server judging frames -------------------------------------


async def test_the_server_drops_bad_frames_and_keeps_good_ones() -> None:
    hs = HibernationServer(lambda: {"PU-0001": "pw"})
    port = await hs.start("127.0.0.1", 0)
    token = hs.token_for("PU-0001")
    assert hs.token_for("PU-9999") == ""  # no token for a device it does not know
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(encode_heartbeat("PU-0001", "wrong"))
        w.write(encode_heartbeat("PU-9999", token))
        w.write(_with(encode_heartbeat("PU-0001", token), 20, b"\x4b"))
        await hs.wait_heartbeat(lambda rec: "command" in rec.reason)
        assert not hs.is_sleeping("PU-0001")
        w.write(encode_heartbeat("PU-0001", token))
        await hs.wait_sleeping("PU-0001", 2)
        reasons = [rec.reason for rec in hs.heartbeats]
        assert reasons == ["wrong hb_token", "unknown device id", "command 0x4B, not 0x4A", "ok"]
        await hs.wake("PU-0001")
        assert await asyncio.wait_for(r.readexactly(8), 2) == b"TOWAKEUP"
        # A frame that breaks the framing closes the connection.
        w.write(b"\xde\xad" + b"\0" * 38)
        assert await asyncio.wait_for(r.read(), 2) == b""
        assert "magic" in hs.heartbeats[-1].reason
        await asyncio.sleep(0.05)
        assert not hs.is_sleeping("PU-0001")
        with pytest.raises(LookupError):
            await hs.wake("PU-0001")
        w.close()
    finally:
        await hs.close()


class _Sink:
    """An alarm service stand-in: raises the Keepalive bit only for kinds it has on."""

    def __init__(self, channels: ChannelRegistry, on: set[str]) -> None:
        self.channels, self.on = channels, on

    def state(self, channel: int, kind: str, active: bool, at: float) -> None:
        if kind in self.on and channel == 0:
            self.channels.set_alarm(channel, flag(ALARM_KINDS[kind].type), active)

    def pulse(self, channel: int, kind: str, at: float) -> None:
        if kind in self.on and channel == 0:
            self.channels.add_pulse(channel, flag(ALARM_KINDS[kind].type))


def test_only_an_alarm_the_service_raised_wakes_the_device() -> None:
    channels = ChannelRegistry(load_profile("emulated"))
    woken: list[str] = []
    sink = WakingSink(_Sink(channels, {"pir"}), channels, woken.append)
    sink.state(0, "lock", True, 0.0)  # switched off: no bit, no wake
    sink.pulse(0, "bell", 0.0)
    sink.state(0, "pir", False, 0.0)  # an inactive edge never wakes
    sink.state(9, "pir", True, 0.0)  # no such channel
    sink.state(0, "nonsense", True, 0.0)
    assert woken == []
    sink.state(0, "pir", True, 0.0)
    assert woken == ["pir alarm"]
