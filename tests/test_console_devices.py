"""The console's devices part (issue 14, items 2 and 6): the device list, its live
events, the controls and the emulated sensors, over HTTP on loopback against a real
reference platform and a real daemon (the rig)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from hss_pu.reference_platform.console import devices
from hss_pu.reference_platform.console.alarms import alarm_json
from hss_pu.reference_platform.server import ReferencePlatform

from .support.console import read_events, serve_console
from .support.rig import DEVICE, MakeRig, Rig

pytestmark = pytest.mark.rig(keepalive=2.0)


async def _console_rig(platform: ReferencePlatform, make_rig: MakeRig, **kw: Any) -> Rig:
    """The rig's daemon, its control socket made known to the console (as the embedded
    default does)."""
    rig = await make_rig(**kw)
    platform.options.device_sockets[DEVICE] = rig.storage
    return rig


async def _call(
    client: httpx.AsyncClient, base: str, method: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    return await client.post(
        f"{base}/console/api/devices/{DEVICE}/call",
        json={"method": method, "params": params or {}},
        timeout=30,
    )


async def test_the_device_list_shows_the_rig_online_with_its_models_and_sensors(
    platform: ReferencePlatform, make_rig: MakeRig
) -> None:
    await _console_rig(platform, make_rig)
    # A Keepalive with the camera up (under load, the first may come before it is).
    await platform.wait_record(
        lambda r: (
            r.name == "Keepalive"
            and r.device_id == DEVICE
            and r.params["channels"][0]["state"] == 1
        )
    )
    async with serve_console(platform) as base, httpx.AsyncClient() as client:
        r = await client.get(f"{base}/console/api/devices")
    assert r.status_code == 200
    [d] = r.json()["devices"]
    assert d["id"] == DEVICE
    assert d["online"] is True
    assert d["hardware_model"] == "HSS-PU-EMU"
    assert d["firmware_model"].startswith("hss-pu-emulated")
    assert d["since"] is not None and d["last_seen"] >= d["since"]
    assert d["battery"] is None  # the emulated profile has none
    assert d["channels"] == [
        {"channel": 0, "state": 1, "alarm": 0, "stream_id": None, "record_session": None}
    ]
    assert d["alarms_active"] is False
    # The daemon's own list (hss-pu sensor NAME): its mock GPIO inputs and the scene.
    assert d["sensors"] == ["bell", "external", "lock", "motion", "pir"]


async def test_a_device_whose_socket_is_unknown_has_no_sensor_buttons(
    platform: ReferencePlatform, make_rig: MakeRig
) -> None:
    await make_rig()
    async with serve_console(platform) as base, httpx.AsyncClient() as client:
        [d] = (await client.get(f"{base}/console/api/devices")).json()["devices"]
        assert d["online"] is True and d["sensors"] == []
        r = await client.post(
            f"{base}/console/api/devices/{DEVICE}/sensor", json={"name": "bell", "action": "press"}
        )
    assert r.status_code == 404
    assert "no emulated sensors" in r.json()["info"]


async def test_events_carry_device_changes_and_an_alarm_with_its_picture(
    platform: ReferencePlatform, make_rig: MakeRig
) -> None:
    rig = await _console_rig(platform, make_rig)
    async with (
        serve_console(platform) as base,
        httpx.AsyncClient(timeout=30) as client,
        read_events(client, base) as events,
    ):
        first = await events.wait("device", timeout=5)
        assert first["id"] == DEVICE and first["online"] is True
        # The console's bell button: hss-pu sensor bell press through the control socket.
        r = await client.post(
            f"{base}/console/api/devices/{DEVICE}/sensor", json={"name": "bell", "action": "press"}
        )
        assert r.status_code == 200, r.text
        # Its picture within 2 s (the first event may carry it already: changes in one
        # 50 ms window go out together).
        alarm = await events.wait(
            "alarm", lambda a: a["type"] == 10 and a["picture"] is not None, timeout=2
        )
        assert alarm["device"] == DEVICE and alarm["channel"] == 0
        assert alarm["state"] == "pulse" and alarm["desc"] == "door bell"
        assert alarm["recording"] is None  # the rig's platform records on no alarm
        kept = platform.alarms(DEVICE)[-1]
        assert kept.picture is not None and kept.pic_name is not None
        assert alarm["id"] == kept.index
        assert alarm["picture"] == f"/console/api/pictures/{kept.pic_name}.jpg"
        # One Alarm format: the event's is the alarm list's (console/alarms.py).
        assert alarm == alarm_json(platform, kept) and alarm["kind"] is not None
        # Gone and back: both show, as they happen.
        await rig.stop()
        gone = await events.wait("device", lambda d: not d["online"], timeout=5)
        assert gone["since"] is None and gone["hardware_model"] == "HSS-PU-EMU"
        await make_rig()
        back = await events.wait("device", lambda d: d["online"], timeout=10)
        assert back["since"] > first["since"]


async def test_a_slow_event_client_is_cut_off_not_buffered_without_limit() -> None:
    client = devices._Client()
    event = b"event: device\ndata: " + b"x" * 1000 + b"\n\n"
    for _ in range(devices.MAX_CLIENT_EVENTS - 1):
        client.put(event)
    assert not client.cut and client.size == len(event) * (devices.MAX_CLIENT_EVENTS - 1)
    client.put(event)
    client.put(event)  # one too many
    assert client.cut and client.size == 0 and not client.queue
    client.put(event)  # nothing more is kept for it
    assert not client.queue
    big = devices._Client()
    big.put(b"x" * (devices.MAX_CLIENT_BYTES + 1))  # the byte bound alone
    assert big.cut


async def test_controls_reach_the_device_and_bring_back_its_own_errors(
    platform: ReferencePlatform, make_rig: MakeRig
) -> None:
    rig = await _console_rig(platform, make_rig)
    async with serve_console(platform) as base, httpx.AsyncClient(timeout=30) as client:
        r = await _call(client, base, "DevStatus")
        assert r.status_code == 200 and r.json()["resp"]["dev_id"] == DEVICE

        doc = (await _call(client, base, "GetConfig")).json()["resp"]
        assert doc["channels"]["0"]["alarms"]["motion"]["sensitivity"] == 50
        # A bad value: the device's own code and message come back as they are.
        bad = {"channels": {"0": {"alarms": {"motion": {"sensitivity": 500}}}}}
        r = await _call(client, base, "SetConfig", bad)
        assert r.status_code == 200
        err = r.json()["err"]
        assert err["code"] == 12 and "sensitivity" in err["msg"]
        good = {"channels": {"0": {"alarms": {"motion": {"sensitivity": 70}}}}}
        r = await _call(client, base, "SetConfig", good)
        assert r.json()["resp"]["channels"]["0"]["alarms"]["motion"]["sensitivity"] == 70

        # Snapshot: the console hands out the upload URL and serves what arrived.
        r = await _call(client, base, "Snapshot", {"channel": 0})
        assert r.status_code == 200, r.text
        pic = await client.get(base + r.json()["picture"])
        assert pic.status_code == 200 and pic.headers["content-type"] == "image/jpeg"
        assert pic.content.startswith(b"\xff\xd8") and pic.content.endswith(b"\xff\xd9")
        assert (await client.get(f"{base}/console/api/snapshots/..%2Fplatform.json")).is_error

        # Recording: the console fills in the session and the Vr callback ...
        r = await _call(client, base, "StartRecord", {"channel": 0})
        session = r.json()["session_id"]
        assert r.json()["resp"] == {} and session.startswith("console-")
        await rig.keepalive(lambda c: c.get("record_session") == session)
        # ... and StopRecord finds the session in the Keepalive.
        r = await _call(client, base, "StopRecord", {"channel": 0})
        assert r.json() == {"resp": {}}
        await rig.keepalive(lambda c: not c.get("record_session"))
        r = await _call(client, base, "StopRecord", {"channel": 0})
        assert r.status_code == 400 and "not recording" in r.json()["info"]

        # PTZ (an event: no answer to wait for) and its presets.
        r = await _call(client, base, "CtrlPTZ", {"channel": 0, "op": "set_preset", "value": 3})
        assert r.json() == {"resp": {}, "event": True}
        r = await _call(client, base, "GetPTZPresetList", {"channel": 0})
        assert {"ptzId": 3} in r.json()["resp"]["presetList"]

        # Refused before anything reaches the device.
        r = await _call(client, base, "FormatDisk")
        assert r.status_code == 400 and "is not one of" in r.json()["info"]
        r = await _call(client, base, "CtrlPTZ", {"channel": 0, "op": "spin"})
        assert r.status_code == 400 and "CtrlPTZ" in r.json()["info"]
        r = await _call(client, base, "UpgradeFirmware", {"bundle": "nothing.bundle"})
        assert r.status_code == 400 and "no bundle" in r.json()["info"]
        r = await client.post(f"{base}/console/api/devices/PU-0404/call", json={"method": "GetCap"})
        assert r.status_code == 404
        # A refusal of the daemon's own: this one has no battery to set.
        r = await client.post(
            f"{base}/console/api/devices/{DEVICE}/sensor",
            json={"name": "battery", "percent": 5},
        )
        assert r.status_code == 400 and "no battery" in r.json()["info"]


@pytest.mark.rig(keepalive=2.0, profile="emulated-battery")
async def test_the_battery_button_sets_the_emulated_battery(
    platform: ReferencePlatform, make_rig: MakeRig
) -> None:
    await _console_rig(platform, make_rig)
    async with (
        serve_console(platform) as base,
        httpx.AsyncClient(timeout=30) as client,
        read_events(client, base) as events,
    ):
        first = await events.wait("device", timeout=5)
        assert "battery" in first["sensors"] and "bell" in first["sensors"]
        r = await client.post(
            f"{base}/console/api/devices/{DEVICE}/sensor", json={"name": "battery", "percent": 9}
        )
        assert r.status_code == 200, r.text
        d = await events.wait(
            "device", lambda d: (d["battery"] or {}).get("battery") == 9, timeout=10
        )
        assert d["battery"]["time"] is not None
    # The low-battery alarm came too (type 8), as from the real model.
    await platform.wait_alarm(DEVICE, type=8, timeout=10)


async def test_the_event_stream_ends_when_the_console_stops(platform: ReferencePlatform) -> None:
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=10) as client:
        console = serve_console(platform)
        base = await console.__aenter__()
        async with client.stream("GET", f"{base}/console/api/events") as response:
            lines = response.aiter_lines()
            assert "event: device" in [await anext(lines) for _ in range(3)]
            t0 = loop.time()
            await console.__aexit__(None, None, None)
            # Ended by the console at once, not by the server's 2 s shutdown timeout.
            assert loop.time() - t0 < 1.5
            async with asyncio.timeout(1):  # and the stream is over
                rest = [line async for line in lines]
            assert "event: device" not in rest


def test_platform_serve_is_told_where_a_device_s_control_socket_is(tmp_path: Path) -> None:
    from hss_pu.reference_platform.cli import _parser

    args = _parser().parse_args(["serve", "--device-socket", f"{DEVICE}={tmp_path}"])
    assert dict(args.device_socket) == {DEVICE: tmp_path}
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--device-socket", str(tmp_path)])
