"""The reference platform's Vd side, driven by a bare websockets client acting as a device.

The client is deliberately not hss_pu.clients.vd: the platform is the yardstick the PU
is measured against, so it is checked against hand-written frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.wire.vd import login_url

from .support.rig import MakePlatform

PASSWORD = "dev1-Pa55word"
DEVICES = {f"PU-{i}": f"dev{i}-Pa55word" for i in range(1, 7)}
KEEPALIVE = {"mac_id": "02:00:00:00:00:01", "state": 1, "channels": [{"channel": 0, "state": 1}]}

Answer = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class Device:
    """A hand-rolled Vd device: numbers its own requests, queues what the platform sends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seq = 0
        self.inbox: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue(maxsize=100)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self.answer: Answer | None = None  # set: platform requests are answered with it

    @classmethod
    async def login(
        cls,
        base: str,
        device: str = "PU-1",
        password: str = PASSWORD,
        *,
        ca: ReferencePlatform | Path | None = None,
        reconnect: bool = False,
    ) -> Device:
        return cls(await connect(_url(base, device, password, reconnect), **_tls(ca)))

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                try:
                    msg = json.loads(data)
                except ValueError:
                    await self.inbox.put(str(data))
                    continue
                if "req" not in msg and "event" not in msg and msg.get("seq") in self._replies:
                    self._replies.pop(msg["seq"]).set_result(msg)
                elif "req" in msg and self.answer is not None:
                    resp = await self.answer(msg)
                    if resp is not None:
                        await self.ws.send(json.dumps({"seq": msg["seq"], **resp}))
                else:
                    await self.inbox.put(msg)
        except ConnectionClosed:
            pass

    async def rpc(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.seq += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self.seq] = fut
        body: dict[str, Any] = {"req": name, "seq": self.seq}
        if params is not None:
            body["params"] = params
        await self.ws.send(json.dumps(body))
        async with asyncio.timeout(3):
            return await fut

    async def event(self, name: str, params: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"event": name}
        if params is not None:
            body["params"] = params
        await self.ws.send(json.dumps(body))

    async def next(self, timeout: float = 3.0) -> dict[str, Any] | str:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def next_msg(self, timeout: float = 3.0) -> dict[str, Any]:
        msg = await self.next(timeout)
        assert isinstance(msg, dict), msg
        return msg

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


def _url(base: str, device: str, password: str, reconnect: bool = False) -> str:
    return login_url(
        base,
        login_code=device,
        login_passwd=password,
        hardware_model="HW-1",
        firmware_model="FW-1.0",
        sdk="sdk-9",
        reconnect=reconnect,
    )


def _tls(ca: ReferencePlatform | Path | None) -> dict[str, Any]:
    import ssl

    if isinstance(ca, ReferencePlatform):
        return {"ssl": ca.pki.client_context()} if ca.pki else {}
    if isinstance(ca, Path):
        return {"ssl": ssl.create_default_context(cafile=str(ca))}
    return {}


async def login_status(p: ReferencePlatform, url: str) -> int:
    """The HTTP status of a refused login (101 if it was accepted)."""
    try:
        ws = await connect(url, **_tls(p))
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


pytestmark = pytest.mark.platform(devices=DEVICES)


@pytest.fixture
async def fake_device(platform: ReferencePlatform) -> AsyncIterator[Device]:
    """A hand-rolled device logged in to ``platform`` as PU-1."""
    d = await Device.login(platform.vd_url, ca=platform)
    await platform.wait_online("PU-1")
    yield d
    await d.close()


# --- login ---------------------------------------------------------------------------


async def test_login_keepalive_answered_and_recorded(platform: ReferencePlatform) -> None:
    assert platform.vd_url.startswith("wss://127.0.0.1:")
    d = await Device.login(platform.vd_url, ca=platform, reconnect=True)
    await platform.wait_online("PU-1")
    assert platform.online("PU-1") and not platform.online("PU-2")
    login = platform.logins[-1]
    assert login.accepted and login.device_id == "PU-1" and login.status == 101
    assert "login_passwd" not in login.params
    assert login.params["reconnect"] == "1" and login.params["hardware_model"] == "HW-1"
    assert PASSWORD not in repr(platform.logins)

    assert await d.rpc("Keepalive", KEEPALIVE) == {"seq": 1, "resp": {}}
    assert platform.last_keepalive("PU-1") == KEEPALIVE
    rec = await platform.wait_record(lambda r: r.name == "Keepalive")
    assert (rec.kind, rec.device_id, rec.seq, rec.params, rec.err) == (
        "rpc",
        "PU-1",
        1,
        KEEPALIVE,
        None,
    )
    await d.close()
    await platform.wait_offline("PU-1")
    assert platform.last_keepalive("PU-1") == KEEPALIVE  # kept for after-the-fact checks


async def test_login_refusals(platform: ReferencePlatform) -> None:
    base = platform.vd_url
    assert await login_status(platform, _url(base, "PU-1", "wrong")) == 401
    assert await login_status(platform, _url(base, "PU-99", PASSWORD)) == 401
    assert await login_status(platform, base + "?login_code=PU-1&login_passwd=x") == 400
    no_fw = _url(base, "PU-1", PASSWORD).replace("firmware_model=FW-1.0", "firmware_model=")
    assert await login_status(platform, no_fw) == 400
    assert await login_status(platform, _url(base, "PU-1", PASSWORD) + "&reconnect=7") == 400
    assert await login_status(platform, _url(base[: -len("/Vd")] + "/Vx", "PU-1", PASSWORD)) == 404
    reasons = [(r.status, r.reason) for r in platform.logins]
    assert reasons[:3] == [
        (401, "wrong password (1/5)"),
        (401, "unknown device id"),
        (400, "missing hardware_model, firmware_model"),
    ]
    assert not any(r.accepted for r in platform.logins)
    assert not platform.online("PU-1")


async def test_lockout_then_unlock(
    make_platform: MakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hss_pu.platform.vd")
    p = await make_platform(lockout_after=5, lockout_seconds=0.5)
    good, bad = _url(p.vd_url, "PU-1", PASSWORD), _url(p.vd_url, "PU-1", "nope")
    # A success resets the count: 4 failures, success, 4 failures never lock.
    assert [await login_status(p, bad) for _ in range(4)] == [401] * 4
    assert await login_status(p, good) == 101
    assert [await login_status(p, bad) for _ in range(4)] == [401] * 4
    assert await login_status(p, bad) == 401  # the fifth in a row
    assert await login_status(p, good) == 403  # locked, even with the right password
    assert (p.logins[-1].status, p.logins[-1].reason) == (403, "locked out")
    assert await login_status(p, bad) == 403
    assert await login_status(p, _url(p.vd_url, "PU-2", DEVICES["PU-2"])) == 101  # per id
    await asyncio.sleep(0.6)
    assert await login_status(p, good) == 101
    # The test's own websockets client logs the URL at debug; the platform's lines never do.
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client")]
    locked = [m for m in ours if "locked out" in m]
    assert len(locked) == 1 and "PU-1" in locked[0]
    assert any("still locked" in m for m in ours)
    assert not any(PASSWORD in m or "nope" in m for m in ours)


async def test_second_login_replaces_first(
    platform: ReferencePlatform, fake_device: Device
) -> None:
    await fake_device.rpc("Keepalive", KEEPALIVE)
    second = await Device.login(platform.vd_url, ca=platform, reconnect=True)
    await fake_device._reader  # the platform closed the first session
    assert fake_device.ws.close_code == 1008
    assert platform.online("PU-1")
    second.answer = _echo
    reply = await platform.call("PU-1", "QueryTime")
    assert reply.resp == {"method": "QueryTime", "seq": 1}  # a new session numbers from 1
    await second.close()


# --- device -> platform ----------------------------------------------------------------


async def test_get_server_info(make_platform: MakePlatform) -> None:
    p = await make_platform(hb_interval=7, hb_token="tok-1")
    d = await Device.login(p.vd_url, ca=p)
    params = {"mac_id": "02:00:00:00:00:01", "state": 1}
    assert await d.rpc("GetServerInfo", params) == {
        "seq": 1,
        "resp": {"hb_interval": 7, "hb_token": "tok-1"},
    }
    p.options.hb_interval = p.options.hb_token = None
    assert (await d.rpc("GetServerInfo", params))["resp"] == {}
    await d.close()


async def test_device_request_errors(platform: ReferencePlatform, fake_device: Device) -> None:
    r = await fake_device.rpc("Frobnicate")
    assert r["err"]["code"] == 101
    assert (await fake_device.rpc("GetCap"))["err"]["code"] == 101  # a platform->PU method
    bad = await fake_device.rpc("Keepalive", {"mac_id": "x", "state": "online"})
    assert bad["err"]["code"] == 12 and "state" in bad["err"]["msg"]
    missing = await fake_device.rpc("AlarmNotify", {"channel": 0})
    assert missing["err"]["code"] == 12
    alarm = {"channel": 0, "timestamp": 1, "type": 2, "state": "start", "desc": "io"}
    r = await fake_device.rpc("AlarmNotify", alarm)
    assert r["seq"] == 5 and r["resp"]["pic_upload_url"].startswith(platform.schedule_url)
    errs = [(r.name, r.err) for r in platform.records]
    assert errs == [
        ("Frobnicate", 101),
        ("GetCap", 101),
        ("Keepalive", 12),
        ("AlarmNotify", 12),
        ("AlarmNotify", None),
    ]
    assert platform.last_keepalive("PU-1") is None  # the ill-typed one does not count


async def test_events_recorded(platform: ReferencePlatform, fake_device: Device) -> None:
    await fake_device.event("Bind", {"mac_id": "02:00:00:00:00:01", "bind_id": "b-1"})
    await fake_device.event("BatteryChange", {"battery": 80})
    await fake_device.event("BatteryChange", {"battery": 180})
    await fake_device.event("Teleport")
    last = await platform.wait_record(lambda r: r.name == "Teleport")
    assert last.err == 101 and last.kind == "event" and last.seq is None
    assert [(r.name, r.params, r.err) for r in platform.records] == [
        ("Bind", {"mac_id": "02:00:00:00:00:01", "bind_id": "b-1"}, None),
        ("BatteryChange", {"battery": 80}, None),
        ("BatteryChange", {"battery": 180}, 12),
        ("Teleport", {}, 101),
    ]
    assert fake_device.inbox.empty()  # events are never answered


async def test_malformed_frames_counted_session_survives(
    platform: ReferencePlatform, fake_device: Device
) -> None:
    for frame in ["{not json", "[1, 2]", '{"foo": 1}', '{"req": "Keepalive"}']:
        await fake_device.ws.send(frame)
    await fake_device.ws.send(b"\x00\x01binary")
    await fake_device.ws.send('{"req": 5, "seq": 77}')  # malformed but answerable: 400
    assert await fake_device.next() == {"seq": 77, "err": {"code": 400, "msg": ANY_STR}}
    assert await fake_device.rpc("Keepalive", KEEPALIVE) == {"seq": 1, "resp": {}}
    assert platform.malformed == {"PU-1": 6}
    assert platform.online("PU-1")


class _AnyStr(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    __hash__ = str.__hash__


ANY_STR = _AnyStr()


async def test_keepalive_unanswered_when_told(
    platform: ReferencePlatform, fake_device: Device
) -> None:
    platform.options.answer_keepalive = False
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await fake_device.rpc("Keepalive", KEEPALIVE)
    assert (await platform.wait_record(lambda r: r.name == "Keepalive")).seq == 1
    assert platform.last_keepalive("PU-1") == KEEPALIVE


async def test_wait_record_sees_future_records(
    platform: ReferencePlatform, fake_device: Device
) -> None:
    waiter = asyncio.create_task(platform.wait_record(lambda r: r.params.get("battery") == 5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await fake_device.event("BatteryChange", {"battery": 4})
    await fake_device.event("BatteryChange", {"battery": 5})
    assert (await waiter).params == {"battery": 5}
    with pytest.raises(TimeoutError, match="no matching record"):
        await platform.wait_record(lambda r: r.name == "Never", timeout=0.1)


# --- platform -> device ----------------------------------------------------------------


async def _echo(req: dict[str, Any]) -> dict[str, Any] | None:
    if req["req"] == "Unknown":
        return {"err": {"code": 101, "msg": "unsupported"}}
    return {"resp": {"method": req["req"], "seq": req["seq"], **req.get("params", {})}}


async def test_call_round_trip_numbers_from_one(
    platform: ReferencePlatform, fake_device: Device
) -> None:
    fake_device.answer = _echo
    for seq in (1, 2, 3):
        reply = await platform.call("PU-1", "GetPTZPresetList", {"channel": 0})
        assert reply.seq == seq and reply.err is None
        assert reply.resp == {"method": "GetPTZPresetList", "seq": seq, "channel": 0}
    err = await platform.call("PU-1", "Unknown")
    assert err.resp is None and err.err is not None
    assert (err.err.code, err.err.msg) == (101, "unsupported")


async def test_request_frame_exact(platform: ReferencePlatform, fake_device: Device) -> None:
    task = asyncio.create_task(platform.call("PU-1", "GetCap"))
    assert await fake_device.next() == {"req": "GetCap", "seq": 1}  # no params key when empty
    await fake_device.ws.send('{"seq": 1, "resp": {"ptz": true}}')
    assert (await task).resp == {"ptz": True}
    await platform.send_event("PU-1", "RebootChannel", {"channel": 0})
    assert await fake_device.next() == {"event": "RebootChannel", "params": {"channel": 0}}
    await platform.send_event("PU-1", "Reschedule")
    assert await fake_device.next() == {"event": "Reschedule"}
    await platform.send_raw("PU-1", "not json at all")
    assert await fake_device.next() == "not json at all"


async def test_offline_timeout_and_disconnect(
    platform: ReferencePlatform, fake_device: Device
) -> None:
    with pytest.raises(LookupError, match="device PU-2 is not online"):
        await platform.call("PU-2", "GetCap")
    with pytest.raises(LookupError):
        await platform.send_event("PU-2", "RebootDevice")
    with pytest.raises(TimeoutError, match="did not answer GetCap"):
        await platform.call("PU-1", "GetCap", timeout=0.2)
    assert platform.online("PU-1")
    late = asyncio.create_task(platform.call("PU-1", "GetDiskInfo"))
    assert (await fake_device.next_msg())["seq"] == 1  # the timed-out call
    assert (await fake_device.next_msg())["seq"] == 2
    await platform.kick("PU-1")
    assert not platform.online("PU-1")
    with pytest.raises(ConnectionError, match="PU-1"):
        await late
    await platform.kick("PU-1")  # offline: nothing to do


async def test_many_devices_at_once(platform: ReferencePlatform) -> None:
    devs = await asyncio.gather(
        *(Device.login(platform.vd_url, i, pw, ca=platform) for i, pw in DEVICES.items())
    )
    for d in devs:
        d.answer = _echo
    await asyncio.gather(*(platform.wait_online(i) for i in DEVICES))
    assert platform.online_ids() == sorted(DEVICES)
    replies = await asyncio.gather(*(platform.call(i, "QueryTime") for i in DEVICES for _ in "ab"))
    assert sorted(r.seq for r in replies) == [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    await asyncio.gather(*(d.rpc("Keepalive", KEEPALIVE) for d in devs))
    assert {r.device_id for r in platform.records} == set(DEVICES)
    await asyncio.gather(*(d.close() for d in devs))


async def test_plain_transport(make_platform: MakePlatform) -> None:
    p = await make_platform(tls=False)
    assert p.vd_url.startswith("ws://") and p.ca_file is None
    mac = "02:00:00:00:00:01"
    async with httpx.AsyncClient(headers={"Mac-Identity": mac}, trust_env=False) as http:
        addr = (await http.get(f"{p.schedule_url}/Vs/getServerAddr?macid={mac}")).json()
    assert (addr["PassPort"], addr["Secure_PassPort"]) == (p.vd_port, 0)
    d = await Device.login(p.vd_url)
    assert (await d.rpc("Keepalive", KEEPALIVE))["resp"] == {}
    await d.close()


# --- admin API -------------------------------------------------------------------------


async def test_admin_api(make_platform: MakePlatform, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hss_pu")
    p = await make_platform(admin_port=0)
    state = json.loads(p.state_file.read_text())
    assert stat.S_IMODE(os.stat(p.state_file).st_mode) == 0o600
    assert state == {
        "schedule_url": p.schedule_url,
        "vd_port": p.vd_port,
        "admin_url": p.admin_url,
        "token": p.admin_token,
        "ca_file": str(p.ca_file),
    }
    auth = {"Authorization": f"Bearer {p.admin_token}"}
    async with httpx.AsyncClient(base_url=str(p.admin_url), trust_env=False) as http:
        for bad in ({}, {"Authorization": "Bearer nope"}, {"Authorization": p.admin_token}):
            r = await http.get("/admin/devices", headers=bad)
            assert r.status_code == 401 and "info" in r.json()
        r = await http.post("/admin/call", json={"device": "PU-1", "method": "GetCap"})
        assert r.status_code == 401

        r = await http.post("/admin/call", headers=auth, json={"device": "PU-1", "method": "X"})
        assert (r.status_code, r.json()) == (404, {"info": "device PU-1 is not online"})
        d = await Device.login(p.vd_url, ca=p)
        d.answer = _echo
        await p.wait_online("PU-1")
        await d.rpc("Keepalive", KEEPALIVE)
        devices = (await http.get("/admin/devices", headers=auth)).json()["devices"]
        pu1 = next(x for x in devices if x["id"] == "PU-1")
        assert pu1["online"] and pu1["last_keepalive"] == KEEPALIVE
        assert pu1["login"]["firmware_model"] == "FW-1.0" and "login_passwd" not in pu1["login"]
        assert not next(x for x in devices if x["id"] == "PU-2")["online"]

        body = {"device": "PU-1", "method": "Settime", "params": {"offset": 3}}
        r = await http.post("/admin/call", headers=auth, json=body)
        assert r.json() == {"resp": {"method": "Settime", "seq": 1, "offset": 3}}
        unknown = {"device": "PU-1", "method": "Unknown"}
        r = await http.post("/admin/call", headers=auth, json=unknown)
        assert r.json() == {"err": {"code": 101, "msg": "unsupported"}}
        d.answer = None
        slow = {"device": "PU-1", "method": "GetCap", "timeout": 0.2}
        r = await http.post("/admin/call", headers=auth, json=slow)
        assert r.status_code == 504 and "did not answer GetCap" in r.json()["info"]
        await d.next()  # the unanswered GetCap

        ev = {"device": "PU-1", "event": "CtrlPTZ", "params": {"channel": 0, "op": "up"}}
        r = await http.post("/admin/event", headers=auth, json=ev)
        assert (r.status_code, r.json()) == (200, {})
        assert await d.next() == {"event": "CtrlPTZ", "params": {"channel": 0, "op": "up"}}

        bad_bodies = [
            b"[]",
            b"{",
            b'{"device": "PU-1"}',
            b'{"device": "PU-1", "method": "X", "params": 3}',
            b'{"device": "PU-1", "method": "X", "timeout": -1}',
        ]
        for bad_body in bad_bodies:
            r = await http.post("/admin/call", headers=auth, content=bad_body)
            assert r.status_code == 400, bad_body
        assert (await http.get("/admin/call", headers=auth)).status_code == 405
        assert (await http.get("/admin/nothing", headers=auth)).status_code == 404

        await d.event("BatteryChange", {"battery": 9})
        await p.wait_record(lambda r: r.name == "BatteryChange")
        recs = (await http.get("/admin/records", headers=auth, params={"device": "PU-1"})).json()
        assert [r["name"] for r in recs["records"]] == ["Keepalive", "BatteryChange"]
        assert recs["next"] == 2
        rest = await http.get("/admin/records", headers=auth, params={"since": 1})
        assert [r["params"] for r in rest.json()["records"]] == [{"battery": 9}]
        assert rest.json()["records"][0]["device_id"] == "PU-1"
        # The devices list shows the last valid BatteryChange (nonsense is not one).
        await d.event("BatteryChange", {"battery": 180})
        await p.wait_record(lambda r: r.name == "BatteryChange" and r.err is not None)
        devices = (await http.get("/admin/devices", headers=auth)).json()["devices"]
        pu1 = next(x for x in devices if x["id"] == "PU-1")
        assert pu1["battery"] == 9 and pu1["battery_time"] is not None
        assert next(x for x in devices if x["id"] == "PU-2")["battery"] is None
        assert p.battery("PU-1") == 9 and p.battery_changes("PU-1") == [9]

        r = await http.post("/admin/kick", headers=auth, json={"device": "PU-1"})
        assert r.status_code == 200 and not p.online("PU-1")
        await d.close()
    assert not any(p.admin_token in r.getMessage() for r in caplog.records)
    await p.close()
    assert not p.state_file.exists()  # the CLI must not find a dead platform
