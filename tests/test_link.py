"""The platform link under a misbehaving platform (issue 9): bad Vs replies, a Vd that
accepts and drops, odd GetServerInfo replies, slow and flooding requests; the typed
PU -> platform path; task failures that must end the daemon with exit 1."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hss_pu.clients import vd as vd_client
from hss_pu.clients.http import Trust, platform_http, tls_context
from hss_pu.clients.vs import VsError, fetch_server_addr
from hss_pu.errors import LinkError, LoginRefused
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.retry import retry_delay
from hss_pu.services import link as link_module
from hss_pu.services.link import PlatformLink
from hss_pu.wire import vd
from hss_pu.wire.vd import Code, login_url

from .support.rig import DEVICE, MAC, PASSWORD, MakeRig, Rig, until

# The control plane alone, Keepalive every second and each RPC answered within 1 s: a
# link that notices quickly. Tests of one misbehaviour of the platform set their own.
pytestmark = [
    pytest.mark.platform(hb_interval=1),
    pytest.mark.rig(start_media=False, rpc_timeout=1.0),
]
# The platform's defaults (Keepalive every 10 s from the config, 20 s per RPC).
PLAIN_PLATFORM = pytest.mark.platform(hb_interval=None)
PLAIN_RIG = pytest.mark.rig(rpc_timeout=20.0)


def _link(r: Rig) -> PlatformLink:
    assert r.daemon.link is not None
    return r.daemon.link


def _slow(r: Rig, name: str, seconds: float) -> None:
    """Make one of the dispatcher's handlers take ``seconds`` (a slow Snapshot, say)."""
    d = r.daemon.dispatcher
    assert d is not None
    real = getattr(d, f"rpc_{name}")

    async def slow(p: Any) -> Any:
        await asyncio.sleep(seconds)
        return await real(p)

    setattr(d, f"rpc_{name}", slow)


# --- item 1 and 2: everything Vs sends is validated where it enters ---------------------


@pytest.mark.platform(clock_offset=3600, hb_interval=None)
@PLAIN_RIG
async def test_bad_vs_replies_are_failed_attempts_not_a_crash(
    platform: ReferencePlatform, make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    platform.vs_overrides += [
        {"PassDomain": "a" * 64 + ".example"},  # IDNA: UnicodeError deep in the resolver
        {"Secure_PassPort": 99999},
        {"PassDomain": "bad_host"},
        # Table I.1's own trailing space; a time of 1e300 is ignored, not adopted.
        {"PassDomain": "127.0.0.1 ", "SyncTime": 1e300},
    ]
    with caplog.at_level(logging.INFO, logger="hss_pu"):
        rig = await make_rig()
        assert not rig.task.done()
        assert len(platform.vs_requests) == 4
        assert rig.daemon.clock.offset == 0.0  # 1e300 ignored (the platform is 1 h ahead)
        assert (await rig.call("QueryTime", timeout=5)).err is None
        rc = await rig.stop()
    assert rc == 0
    text = caplog.text
    assert "attempt 3 failed" in text and "attempt 4" not in text
    assert "PassDomain" in text and "SyncTime" in text and "ignored" in text


async def test_vs_client_keeps_httpx_errors_inside(platform: ReferencePlatform) -> None:
    async with platform_http(MAC, None, trust=Trust.PLATFORM, timeout=10.0) as http:
        # httpx.InvalidURL is no httpx.HTTPError: the boundary must catch it as well.
        for url in ("https://127.0.0.1:99999", f"https://{'a' * 64}.example:443", "https://[::1"):
            with pytest.raises(VsError):
                await fetch_server_addr(http, url, MAC)
    # A reply far larger than any getServerAddr is refused, not read whole.
    platform.vs_overrides.append({"Pad": "x" * (1 << 20)})
    async with platform_http(
        MAC, str(platform.ca_file), trust=Trust.PLATFORM, timeout=10.0
    ) as http:
        with pytest.raises(VsError, match="too large"):
            await fetch_server_addr(http, platform.schedule_url, MAC)
        addr, _ = await fetch_server_addr(http, platform.schedule_url, MAC)
    assert addr.secure_pass_port == platform.vd_port


# --- section 4: websockets' exceptions stay inside clients/vd.py ----------------------


async def test_vd_connect_errors_are_link_errors(platform: ReferencePlatform) -> None:
    ssl_ctx = tls_context(str(platform.ca_file), Trust.PLATFORM)
    handler = _NullHandler()

    def url(base: str, password: str = PASSWORD) -> str:
        return login_url(
            base, login_code=DEVICE, login_passwd=password, hardware_model="H",
            firmware_model="F", sdk=None, reconnect=False,
        )  # fmt: skip

    with pytest.raises(LoginRefused) as refused:
        await vd_client.connect_vd(url(platform.vd_url, "wrong-pass"), ssl_ctx, handler)
    assert refused.value.status == 401 and "wrong-pass" not in str(refused.value)
    for base in (f"wss://{'a' * 64}.example:1/Vd", "wss://127.0.0.1:1/Vd", "wss://[::1/Vd"):
        with pytest.raises(LinkError) as info:
            await vd_client.connect_vd(url(base), ssl_ctx, handler)
        assert not isinstance(info.value, LoginRefused)
        assert PASSWORD not in str(info.value)
    session = await vd_client.connect_vd(url(platform.vd_url), ssl_ctx, handler)
    await session.close()
    source = await asyncio.to_thread(Path(link_module.__file__).read_text)
    assert "websockets" not in source and "httpx" not in source


class _NullHandler:
    async def request(self, name: str, params: dict[str, Any] | None) -> Any:
        return None

    async def event(self, name: str, params: dict[str, Any] | None) -> None:
        return None


# --- item 4: GetServerInfo, a tolerant reader --------------------------------------------


def _server_info(info: dict[str, Any]) -> pytest.MarkDecorator:
    return pytest.mark.platform(server_info=info, hb_interval=None)


@pytest.mark.parametrize(
    "interval",
    [pytest.param(1.0, marks=_server_info({"hb_interval": 1.0, "hb_token": "tok-1"})),
     pytest.param(30.0, marks=_server_info({"hb_interval": "1", "hb_token": "tok-1"}))],
)  # fmt: skip
@pytest.mark.rig(keepalive=30, rpc_timeout=20.0)
async def test_server_info_fields_read_one_by_one(
    platform: ReferencePlatform,
    make_rig: MakeRig,
    caplog: pytest.LogCaptureFixture,
    interval: float,
) -> None:
    with caplog.at_level(logging.INFO, logger="hss_pu"):
        rig = await make_rig()
        await platform.wait_record(lambda r: r.name == "GetServerInfo")
        link = _link(rig)
        assert await until(lambda: link.hb_token is not None, 2)
        assert link.hb_token == "tok-1"  # used even when hb_interval is not
        assert link.hb_interval == interval
        if interval == 1.0:
            first = await platform.wait_record(lambda r: r.name == "Keepalive")
            await platform.wait_record(
                lambda r: r.name == "Keepalive" and r.index > first.index, timeout=3
            )
        await rig.stop()
    if interval == 30.0:
        assert "GetServerInfo reply: hb_interval" in caplog.text
    assert "tok-1" not in caplog.text


# --- item 5: a platform that accepts and drops sends the PU back to Vs ------------------


@pytest.mark.platform(drop_after_login=True, hb_interval=None)
@pytest.mark.rig(backoff_scale=0.001, rpc_timeout=20.0, online=False)
async def test_accept_then_drop_counts_as_failures_and_reschedules(rig: Rig) -> None:
    platform = rig.platform
    await platform.wait_login(lambda r: len(platform.vs_requests) >= 2, timeout=15)
    second_vs = platform.vs_requests[1].time
    before = [r for r in platform.logins if r.accepted and r.time <= second_vs]
    await rig.stop()
    assert len(before) == 16  # more than 15 in a row, then Vs (9.3.1.2)


# --- items 6 and 7: replies in arrival order; our replies never behind the inbox ---------


async def test_replies_in_arrival_order_the_400_included(rig: Rig) -> None:
    _slow(rig, "QueryTime", 0.4)
    call = asyncio.create_task(rig.call("QueryTime"))
    await asyncio.sleep(0.1)  # QueryTime is in the handler now
    await rig.platform.send_raw(DEVICE, '{"req": 5, "seq": 777}')  # malformed: 400 owed
    assert (await call).err is None
    await rig.platform.wait_reply(lambda r: r.seq == 777)
    order = [(r.seq, r.err) for r in rig.platform.replies if r.device_id == DEVICE]
    assert order[-1] == (777, Code.INPUT)
    assert order[-2][1] is None  # the QueryTime reply came first


async def test_slow_requests_do_not_hold_the_replies_to_our_rpcs(rig: Rig) -> None:
    """40 slow requests: the Keepalive replies are still read, the session stays up, every
    request is answered in order, those beyond the inbox with a quick 'busy' error 1."""
    _slow(rig, "QueryTime", 0.1)
    logins = len(rig.platform.logins)
    start_ka = await rig.platform.wait_record(lambda r: r.name == "Keepalive")
    calls = [
        asyncio.create_task(rig.platform.call(DEVICE, "QueryTime", timeout=15)) for _ in range(40)
    ]
    replies = await asyncio.gather(*calls)
    ok = [r for r in replies if r.err is None]
    busy = [r for r in replies if r.err is not None]
    assert len(ok) >= 32 and busy, [r.err for r in replies]
    assert all(r.err.code == Code.INTERNAL and "busy" in r.err.msg for r in busy if r.err)
    seqs = [r.seq for r in replies]
    got = [r.seq for r in rig.platform.replies if r.seq in set(seqs)]
    assert got == sorted(seqs)  # arrival order, busy ones included
    # Keepalives went on (every 1 s, each answered within rpc_timeout=1 s) on one session.
    kas = [r for r in rig.platform.records if r.name == "Keepalive" and r.index > start_ka.index]
    assert len(kas) >= 2
    assert len(rig.platform.logins) == logins and rig.platform.online(DEVICE)
    link = _link(rig)
    assert link.session is not None and link.session.stats.busy == len(busy)


async def test_request_flood_beyond_the_hard_cap_closes_the_session(rig: Rig) -> None:
    _slow(rig, "QueryTime", 2.0)
    first = rig.platform.logins[-1]
    call = asyncio.create_task(rig.call("QueryTime"))
    await asyncio.sleep(0.1)
    n = vd_client.INBOX_SIZE + vd_client.MAX_REFUSALS + 10
    for i in range(n):
        await rig.platform.send_raw(DEVICE, f'{{"req": "QueryTime", "seq": {10_000 + i}}}')
    await rig.platform.wait_offline(DEVICE, timeout=5)
    with pytest.raises(ConnectionError):
        await call
    again = await rig.platform.wait_login(lambda r: r.accepted and r is not first, timeout=10)
    assert again.params["reconnect"] == "1"


# --- item 11: no loop in the link spins without a delay ------------------------------------


@PLAIN_PLATFORM
@pytest.mark.rig(backoff_scale=100.0, seed=1, rpc_timeout=20.0)
async def test_reschedule_waits_its_retry_delay_before_vs(rig: Rig) -> None:
    assert retry_delay(1, 100.0, random.Random(1)) > 10
    platform = rig.platform
    vs = len(platform.vs_requests)
    await platform.send_event(DEVICE, "Reschedule")
    await platform.wait_offline(DEVICE)
    await asyncio.sleep(0.5)
    assert len(platform.vs_requests) == vs  # waiting, not hammering Vs


# --- item 13 and section 4: tasks, the typed path --------------------------------------------


async def test_on_login_callback_failure_is_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(_: Any) -> None:
        raise RuntimeError("callback bug")

    _link(rig).on_login(broken)
    first = rig.platform.logins[-1]
    with caplog.at_level(logging.ERROR, logger="hss_pu"):
        await rig.platform.kick(DEVICE)
        await rig.platform.wait_login(lambda r: r.accepted and r is not first, timeout=10)
        await until(lambda: "callback bug" in caplog.text, 2)
    assert "callback bug" in caplog.text and "failed" in caplog.text
    assert not rig.task.done()


async def test_typed_call_and_event(rig: Rig) -> None:
    link = _link(rig)
    info = await link.call(vd.GetServerInfoParams(mac_id=MAC, state=1))
    assert isinstance(info, vd.GetServerInfoResp) and info.hb_interval == 1
    ka = await link.call(vd.KeepaliveParams(mac_id=MAC, state=1))
    assert isinstance(ka, vd.KeepaliveResp)
    assert await link.send_event(vd.BindParams(mac_id=MAC, bind_id="B-typed"))
    ev = await rig.platform.wait_record(lambda r: r.name == "Bind")
    assert ev.params == {"mac_id": MAC, "bind_id": "B-typed"}
    with pytest.raises(ValueError, match="bind_id"):
        await link.send_event(vd.BindParams(mac_id=MAC, bind_id=""))
    # The messages of the next issues go the same way, nothing to add but their callers.
    alarm = vd.AlarmNotifyParams(channel=0, timestamp=1_800_000_000, type=10, state="pulse",
                                 desc="door bell")  # fmt: skip
    resp = await link.call(alarm)
    assert isinstance(resp, vd.AlarmNotifyResp) and resp.pic_upload_url is not None
    assert resp.pic_upload_url.startswith(rig.platform.schedule_url + "/")
    assert await link.send_event(vd.BatteryChangeParams(battery=42))
    rec = await rig.platform.wait_record(lambda r: r.name == "AlarmNotify")
    assert rec.err is None and rec.params["type"] == 10, rec
    rec = await rig.platform.wait_record(lambda r: r.name == "BatteryChange")
    assert rec.err is None and rec.params == {"battery": 42}, rec


async def _failing_daemon_rc(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch, replace: Callable[..., Any]
) -> int:
    monkeypatch.setattr(PlatformLink, "run", replace)
    rig = await make_rig(online=False)
    return await asyncio.wait_for(asyncio.shield(rig.task), 10)  # it ends by itself


@PLAIN_PLATFORM
@PLAIN_RIG
async def test_a_long_lived_task_that_dies_exits_1(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def dies(self: PlatformLink) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("injected")

    with caplog.at_level(logging.ERROR, logger="hss_pu"):
        assert await _failing_daemon_rc(make_rig, monkeypatch, dies) == 1
    assert "platform-link" in caplog.text and "injected" in caplog.text


@PLAIN_PLATFORM
@PLAIN_RIG
async def test_a_long_lived_task_that_just_ends_exits_1(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def ends(self: PlatformLink) -> None:
        await asyncio.sleep(0.05)

    assert await _failing_daemon_rc(make_rig, monkeypatch, ends) == 1
