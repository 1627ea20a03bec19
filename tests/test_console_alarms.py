"""The console's alarms (issue 14, item 5): a real device's door bell raises alarms on the
reference platform; the list, the pictures and the link to the recording at the alarm's
moment are served by aiohttp on loopback and read by httpx (not aiohttp's client, so the
two ends do not share one library's reading of HTTP)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from hss_pu.reference_platform.alarms import jpeg_dimensions
from hss_pu.reference_platform.console import alarms, recordings
from hss_pu.reference_platform.server import ReferencePlatform

from .support.console import assert_refused, serve_console
from .support.rig import DEVICE, PASSWORD, MakeRig, Rig

W, H = 320, 180
BELL, PIR = 10, 12
API = "/console/api/alarms"


def pin(rig: Rig, name: str) -> Any:
    board = rig.daemon.board
    assert board is not None and board.emulated
    return board.find(name).device.pin


def press(rig: Rig) -> None:
    """The emulated board's door bell, pressed and let go (its input is active low)."""
    pin(rig, "bell").drive_low()
    pin(rig, "bell").drive_high()


def console_client(base: str) -> httpx.AsyncClient:
    """An HTTP client for the console at ``base`` (relative URLs are under it)."""
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=30)


def mime(r: httpx.Response) -> str:
    """The response's media type, without its parameters."""
    return str(r.headers.get("content-type", "")).split(";")[0].strip().lower()


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


@pytest.mark.slow
@pytest.mark.platform(
    devices={DEVICE: PASSWORD},
    hb_interval=1,
    alarm_record=True,  # as `make run`: the platform records on an alarm
    alarm_prerecord_seconds=2,
    alarm_seg_duration=1,
    alarm_post_roll=1.0,
)
async def test_a_bell_alarm_is_listed_with_its_picture_and_its_recording(
    platform: ReferencePlatform, make_rig: MakeRig
) -> None:
    rig = await make_rig(size=(W, H), prerecord_seconds=2, scene="static")
    await asyncio.sleep(2.5)  # the pre-record ring fills
    press(rig)
    alarm = await platform.wait_alarm(DEVICE, type=BELL, picture=True, timeout=10)
    rec = await platform.wait_alarm_recording(DEVICE, state="stopped", timeout=15)
    assert alarm.session_id == rec.session_id
    assert rec.stopped_at is not None
    segs = await platform.vr.wait_session(rec.session_id, rec.stopped_at)
    parts = (alarms.add_routes, recordings.add_routes)
    async with serve_console(platform, parts) as base, console_client(base) as client:
        listed = (await get_json(client, API, device=DEVICE))["alarms"]
        assert len(listed) == 1
        (a,) = listed
        assert {k: a[k] for k in ("id", "device", "time", "type", "channel", "state")} == {
            "id": alarm.index,
            "device": DEVICE,
            "time": alarm.timestamp,
            "type": BELL,
            "channel": 0,
            "state": "pulse",
        }
        assert a["kind"] == "bell" and a["desc"] == alarm.desc
        # The picture: the JPEG the device uploaded, at a URL under the console's API.
        assert re.fullmatch(r"/console/api/pictures/[0-9]+-[0-9a-f]{16}\.jpg", a["picture"])
        r = await client.get(a["picture"])
        assert r.status_code == 200 and mime(r) == "image/jpeg"
        data = r.content
        assert alarm.picture is not None and data == alarm.picture.path.read_bytes()
        assert jpeg_dimensions(data) == (W, H)
        # The recording at that moment: the timeline of that instant holds a segment of
        # the recording the alarm started (pre-recorded: it began before the alarm).
        assert a["recording"] == {"device": DEVICE, "channel": 0, "at": alarm.timestamp}
        link = a["recording"]
        tl = await get_json(
            client,
            f"/console/api/recordings/{link['device']}/{link['channel']}",
            **{"from": link["at"], "to": link["at"]},
        )
        assert len(tl["segments"]) == 1
        assert tl["segments"][0]["name"] in {s.name for s in segs}
        assert segs[0].start <= link["at"]
        # Every device's alarms without the filter; the device's last one with last=1.
        assert (await get_json(client, API))["alarms"] == listed
        assert (await get_json(client, API, last=1))["alarms"] == listed


@pytest.mark.platform(hb_interval=1)
@pytest.mark.rig(start_media=False)
async def test_an_alarm_without_picture_or_recording_and_what_is_refused(rig: Rig) -> None:
    p = rig.platform
    press(rig)
    first = await p.wait_alarm(DEVICE, type=BELL)
    pin(rig, "pir").drive_high()
    await p.wait_alarm(DEVICE, type=PIR, state="start")
    async with serve_console(p, (alarms.add_routes,)) as base, console_client(base) as client:
        listed = (await get_json(client, API, device=DEVICE))["alarms"]
        assert [a["id"] for a in listed] == [a.index for a in p.alarms(DEVICE)]
        assert listed[0]["id"] == first.index  # newest last
        # No camera: no picture came; the platform does not record: no recording.
        assert [(a["picture"], a["recording"]) for a in listed] == [(None, None)] * 2
        assert (await get_json(client, API, device=DEVICE, last=1))["alarms"] == listed[-1:]
        assert (await get_json(client, API, device="PU-9999"))["alarms"] == []
        # A slot handed out to the device, its picture never uploaded: nothing to serve.
        assert first.pic_name is not None
        refused = {
            f"{API}?last=0": 400,
            f"{API}?last=abc": 400,
            f"{API}?last=1000001": 400,
            "/console/api/pictures/x.jpg": 400,
            "/console/api/pictures/..%2F..%2Fplatform.json": 400,
            "/console/api/pictures/%2e%2e%2fpki%2fca.pem": 400,
            f"/console/api/pictures/{first.pic_name}": 400,  # no .jpg
            "/console/api/pictures/0-0123456789abcdef.jpg": 404,  # never handed out
            f"/console/api/pictures/{first.pic_name}.jpg": 404,
        }
        await assert_refused(client, refused)
