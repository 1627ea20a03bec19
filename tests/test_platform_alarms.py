"""The reference platform's side of alarms (issue 10, items 4 and 7): AlarmNotify answered
with a picture URL, the pictures checked and kept, the recording policy (StartRecord with
pre-record on a start or pulse, StopRecord after the post-roll), ``hss-pu platform alarms``.

Driven by the hand-rolled Vd device of test_platform_vd (it answers the platform's RPCs
as told, so the policy's requests are seen exactly) and, for the recording end to end, by
the real daemon's typed link (the daemon records; its segments land on the platform's Vr).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import av
import httpx
import numpy as np
import pytest
from av.video.frame import VideoFrame

from hss_pu.cli import main
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.services.link import PlatformLink
from hss_pu.wire import vd

from .support.rig import DEVICE, MAC, PASSWORD, MakePlatform, MakeRig
from .test_platform_cli import SECRET, Serve, hss_pu
from .test_platform_vd import DEVICES, Device

pytestmark = pytest.mark.platform(devices=DEVICES)

PU = "PU-1"
# Short enough to keep the tests fast, long enough to tell "after the post-roll" apart.
POST_ROLL = 0.4
POLICY = {
    "alarm_record": True,
    "alarm_post_roll": POST_ROLL,
    "alarm_prerecord_seconds": 3,
    "alarm_seg_duration": 2,
}


def jpeg(width: int = 64, height: int = 48) -> bytes:
    """A baseline JPEG made by FFmpeg's encoder (what the PU's own would make)."""
    cc = av.CodecContext.create("mjpeg", "w")
    cc.width, cc.height, cc.pix_fmt = width, height, "yuvj420p"
    cc.time_base = fractions.Fraction(1, 25)
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[:, : width // 2] = (200, 30, 30)
    frame = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
    (packet,) = cc.encode(frame) + cc.encode(None)
    return bytes(packet)


def alarm(type_: int, state: str, channel: int = 0, ts: int | None = None) -> dict[str, Any]:
    return {
        "channel": channel,
        "timestamp": int(time.time()) if ts is None else ts,
        "type": type_,
        "state": state,
        "desc": f"test {type_}",
    }


def _https(platform: ReferencePlatform | Path) -> httpx.AsyncClient:
    ca = platform if isinstance(platform, Path) else platform.ca_file
    ctx = ssl.create_default_context(cafile=str(ca))
    return httpx.AsyncClient(verify=ctx, headers={"Mac-Identity": MAC}, trust_env=False)


async def put(
    platform: ReferencePlatform | Path, url: str, body: bytes, ctype: str = "image/jpeg"
) -> int:
    async with _https(platform) as http:
        r = await http.put(url, content=body, headers={"Content-Type": ctype})
        return r.status_code


class Recorder:
    """The device side of StartRecord / StopRecord: answered at once, kept with the time."""

    def __init__(self, device: Device) -> None:
        self.calls: list[tuple[float, str, dict[str, Any]]] = []
        self.err: dict[str, Any] | None = None  # set: StartRecord answers this error
        self._tick = asyncio.Event()
        device.answer = self._answer

    async def _answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((time.monotonic(), msg["req"], msg.get("params", {})))
        self._tick.set()
        if msg["req"] == "StartRecord" and self.err is not None:
            return {"err": self.err}
        return {"resp": {}}

    def named(self, name: str) -> list[dict[str, Any]]:
        return [p for _, n, p in self.calls if n == name]

    async def wait(self, name: str, n: int = 1, timeout: float = 5.0) -> float:
        """The arrival time of the n-th request called ``name``."""
        async with asyncio.timeout(timeout):
            while True:
                times = [t for t, m, _ in self.calls if m == name]
                if len(times) >= n:
                    return times[n - 1]
                self._tick.clear()
                await self._tick.wait()


@pytest.fixture
async def device(platform: ReferencePlatform) -> AsyncIterator[Device]:
    """A hand-rolled device logged in to ``platform`` as PU-1."""
    d = await Device.login(platform.vd_url, ca=platform)
    await platform.wait_online(PU)
    yield d
    await d.close()


async def policy_device(
    make_platform: MakePlatform, **options: Any
) -> tuple[ReferencePlatform, Device, Recorder]:
    p = await make_platform(**{**POLICY, **options})
    d = await Device.login(p.vd_url, ca=p)
    await p.wait_online(PU)
    return p, d, Recorder(d)


# --- AlarmNotify and pictures ----------------------------------------------------------


async def test_start_gets_a_picture_url_and_the_jpeg_is_kept(
    platform: ReferencePlatform, device: Device
) -> None:
    r = await device.rpc("AlarmNotify", alarm(12, "start"))
    url = r["resp"]["pic_upload_url"]
    assert url.startswith(f"https://127.0.0.1:{platform.vs_port}/"), url
    a = await platform.wait_alarm(PU, type=12, state="start", timeout=1)
    assert (a.device_id, a.channel, a.type, a.state, a.desc) == (PU, 0, 12, "start", "test 12")
    assert a.picture is None and abs(a.received - platform.now()) < 2
    pic = jpeg(64, 48)
    assert await put(platform, url, pic) == 200
    a = await platform.wait_alarm(PU, type=12, picture=True, timeout=1)
    assert a.picture is not None
    assert (a.picture.size, a.picture.width, a.picture.height) == (len(pic), 64, 48)
    assert a.picture.path.read_bytes() == pic
    assert a.picture.content_type == "image/jpeg" and a.picture.mac == MAC
    # The end has no picture; a pulse has its own URL; each alarm a different one.
    assert await device.rpc("AlarmNotify", alarm(12, "end")) == {"seq": 2, "resp": {}}
    bell = (await device.rpc("AlarmNotify", alarm(10, "pulse")))["resp"]["pic_upload_url"]
    again = (await device.rpc("AlarmNotify", alarm(12, "start")))["resp"]["pic_upload_url"]
    assert len({url, bell, again}) == 3
    assert [(x.type, x.state) for x in platform.alarms(PU)] == [
        (12, "start"),
        (12, "end"),
        (10, "pulse"),
        (12, "start"),
    ]
    assert platform.alarms("PU-2") == []
    # A PUT again (the device never heard our answer) replaces it: still one picture.
    assert await put(platform, url, jpeg(32, 16)) == 200
    first = platform.alarms(PU)[0].picture
    assert first is not None and (first.width, first.height) == (32, 16)


async def test_pictures_that_are_not_jpegs_are_refused(
    platform: ReferencePlatform, device: Device
) -> None:
    url = (await device.rpc("AlarmNotify", alarm(2, "start")))["resp"]["pic_upload_url"]
    pic = jpeg()
    assert await put(platform, url, b"GIF89a" + b"\x00" * 100) == 400
    assert await put(platform, url, pic[: len(pic) // 2]) == 400  # truncated
    assert await put(platform, url, pic[:2] + b"\x00" * 50 + pic[-2:]) == 400  # no SOF
    assert await put(platform, url, b"") == 400
    assert await put(platform, url, pic, "image/png") == 415
    (a,) = platform.alarms(PU)
    assert (
        a.picture is None and a.picture_error == "Content-Type must be image/jpeg, not 'image/png'"
    )
    assert not list((platform.options.state_dir / "alarms").glob("*.jpg"))
    base = url.rsplit("/", 1)[0]
    assert await put(platform, base + "/1-0123456789abcdef.jpg", pic) == 404  # never handed out
    async with _https(platform) as http:
        assert (await http.get(url)).status_code == 405
    assert await put(platform, url, pic) == 200  # the slot still takes the right picture


@pytest.mark.platform(alarm_picture_max_bytes=1000)
async def test_a_picture_over_the_limit_is_refused(
    platform: ReferencePlatform, device: Device
) -> None:
    url = (await device.rpc("AlarmNotify", alarm(2, "start")))["resp"]["pic_upload_url"]
    assert await put(platform, url, jpeg(640, 480)) == 413
    assert platform.alarms(PU)[0].picture is None


@pytest.mark.platform(alarm_pictures=False)
async def test_no_picture_url_when_told(platform: ReferencePlatform, device: Device) -> None:
    assert await device.rpc("AlarmNotify", alarm(12, "start")) == {"seq": 1, "resp": {}}
    assert await device.rpc("AlarmNotify", alarm(10, "pulse")) == {"seq": 2, "resp": {}}
    assert [a.pic_name for a in platform.alarms(PU)] == [None, None]


async def test_alarms_that_break_the_table_are_refused(
    platform: ReferencePlatform, device: Device
) -> None:
    for bad in (
        alarm(10, "start"),
        alarm(12, "pulse"),
        alarm(1, "start"),
        alarm(13, "pulse"),
        {**alarm(12, "start"), "desc": ""},
    ):
        r = await device.rpc("AlarmNotify", bad)
        assert r["err"]["code"] == 12, (bad, r)
    assert platform.alarms(PU) == []
    assert [r.err for r in platform.records] == [12] * 5


@pytest.mark.platform(alarm_keep=2)
async def test_the_last_n_alarms_are_kept_and_older_pictures_deleted(
    platform: ReferencePlatform, device: Device
) -> None:
    pictures = platform.options.state_dir / "alarms"
    urls = []
    for n in range(3):
        r = await device.rpc("AlarmNotify", alarm(10, "pulse"))
        urls.append(r["resp"]["pic_upload_url"])
        assert await put(platform, urls[-1], jpeg()) == 200
        assert len(list(pictures.glob("*.jpg"))) == min(n + 1, 2)
    assert await put(platform, urls[0], jpeg()) == 404  # its alarm is gone
    await device.rpc("AlarmNotify", alarm(10, "pulse"))  # no picture (yet)
    kept = platform.alarms(PU)
    assert [a.index for a in kept] == [2, 3]
    assert [p.name for p in pictures.glob("*.jpg")] == [urls[2].rsplit("/", 1)[1]]
    assert kept[0].picture is not None and kept[0].picture.path.exists()


# --- the recording policy ----------------------------------------------------------------


async def test_start_records_with_prerecord_and_end_stops_after_the_post_roll(
    make_platform: MakePlatform,
) -> None:
    p, d, rec = await policy_device(make_platform)
    try:
        await d.rpc("AlarmNotify", alarm(12, "start"))
        await rec.wait("StartRecord")
        (start,) = rec.named("StartRecord")
        assert start["channel"] == 0 and start["prerecord_seconds"] == 3
        assert start["seg_duration"] == 2 and abs(start["start_ts"] - p.now()) < 2
        cbk = urlsplit(start["cbk_url"])
        assert f"{cbk.scheme}://{cbk.netloc}{cbk.path}" == p.vr_cbk_url(0)
        assert parse_qs(cbk.query) == {"session": [start["session_id"]]}
        await asyncio.sleep(POST_ROLL + 0.2)
        assert rec.named("StopRecord") == []  # the alarm is still on
        (r,) = p.alarm_recordings(PU)
        assert (r.session_id, r.channel, r.state) == (start["session_id"], 0, "recording")
        ended = time.monotonic()
        await d.rpc("AlarmNotify", alarm(12, "end"))
        stopped = await rec.wait("StopRecord")
        assert POST_ROLL <= stopped - ended < POST_ROLL + 2.0
        assert rec.named("StopRecord") == [{"session_id": start["session_id"], "channel": 0}]
        r = await p.wait_alarm_recording(PU, state="stopped", timeout=1)
        assert r.stopped_at is not None and r.alarms == [0, 1]
        assert [a.session_id for a in p.alarms(PU)] == [r.session_id] * 2
    finally:
        await d.close()


async def test_overlapping_alarms_make_one_recording(make_platform: MakePlatform) -> None:
    p, d, rec = await policy_device(make_platform)
    try:
        await d.rpc("AlarmNotify", alarm(12, "start"))  # PIR
        await d.rpc("AlarmNotify", alarm(3, "start"))  # motion
        await d.rpc("AlarmNotify", alarm(12, "end"))
        await d.rpc("AlarmNotify", alarm(10, "pulse"))  # the bell while motion is on
        await d.rpc("AlarmNotify", alarm(2, "start", channel=1))  # another channel: its own
        await rec.wait("StartRecord", 2)
        await asyncio.sleep(POST_ROLL + 0.3)
        assert [c["channel"] for c in rec.named("StartRecord")] == [0, 1]
        assert rec.named("StopRecord") == []  # motion goes on
        await d.rpc("AlarmNotify", alarm(3, "end"))
        await rec.wait("StopRecord")
        await asyncio.sleep(0.2)
        session = rec.named("StartRecord")[0]["session_id"]
        assert rec.named("StopRecord") == [{"session_id": session, "channel": 0}]
        ch0 = [a for a in p.alarms(PU) if a.channel == 0]
        assert {a.session_id for a in ch0} == {session}
        # A pulse after the stop starts a new recording, stopped a post-roll later.
        pulsed = time.monotonic()
        await d.rpc("AlarmNotify", alarm(10, "pulse"))
        await rec.wait("StartRecord", 3)
        stopped = await rec.wait("StopRecord", 2)
        assert POST_ROLL <= stopped - pulsed < POST_ROLL + 2.0
        sessions = [c["session_id"] for c in rec.named("StartRecord")]
        assert len(set(sessions)) == 3
        assert rec.named("StopRecord")[1] == {"session_id": sessions[2], "channel": 0}
    finally:
        await d.close()


async def test_a_pulse_during_the_post_roll_extends_the_recording(
    make_platform: MakePlatform,
) -> None:
    _, d, rec = await policy_device(make_platform, alarm_post_roll=1.0)
    try:
        await d.rpc("AlarmNotify", alarm(10, "pulse"))
        await asyncio.sleep(0.3)
        second = time.monotonic()
        await d.rpc("AlarmNotify", alarm(9, "pulse"))
        stopped = await rec.wait("StopRecord")
        assert stopped - second >= 1.0
        assert len(rec.named("StartRecord")) == 1 and len(rec.named("StopRecord")) == 1
    finally:
        await d.close()


async def test_no_recording_when_the_policy_is_off_or_the_alarm_stale(
    make_platform: MakePlatform,
) -> None:
    # The rig's default: off (tests drive recordings themselves).
    p = await make_platform(alarm_post_roll=0.1)
    assert p.options.alarm_record is False
    d = await Device.login(p.vd_url, ca=p)
    rec = Recorder(d)
    try:
        await p.wait_online(PU)
        await d.rpc("AlarmNotify", alarm(12, "start"))
        await d.rpc("AlarmNotify", alarm(12, "end"))
        await d.rpc("AlarmNotify", alarm(10, "pulse"))
        await asyncio.sleep(0.5)
        assert rec.calls == [] and p.alarm_recordings(PU) == []
        assert len(p.alarms(PU)) == 3
    finally:
        await d.close()
    # On, but the alarm was queued by the device for longer than alarm_stale_seconds.
    p, d, rec = await policy_device(make_platform, alarm_stale_seconds=30)
    try:
        old = int(p.now()) - 120
        r = await d.rpc("AlarmNotify", alarm(12, "start", ts=old))
        assert "pic_upload_url" in r["resp"]  # the device may still have that frame
        await d.rpc("AlarmNotify", alarm(12, "end", ts=old + 5))
        await asyncio.sleep(POST_ROLL + 0.3)
        assert rec.calls == [] and p.alarm_recordings(PU) == []
    finally:
        await d.close()


async def test_a_refused_start_record_is_kept_and_the_next_alarm_tries_again(
    make_platform: MakePlatform,
) -> None:
    p, d, rec = await policy_device(make_platform)
    try:
        rec.err = {"code": 103, "msg": "channel offline"}
        await d.rpc("AlarmNotify", alarm(12, "start"))
        r = await p.wait_alarm_recording(PU, state="failed", timeout=2)
        assert r.error is not None and "103" in r.error
        rec.err = None
        await d.rpc("AlarmNotify", alarm(3, "start"))
        await rec.wait("StartRecord", 2)
        await p.wait_alarm_recording(PU, state="recording", timeout=2)
        await d.rpc("AlarmNotify", alarm(3, "end"))
        await d.rpc("AlarmNotify", alarm(12, "end"))
        await rec.wait("StopRecord")
        assert len(rec.named("StartRecord")) == 2 and len(rec.named("StopRecord")) == 1
    finally:
        await d.close()


@pytest.mark.platform(alarm_record_max_seconds=0.5)
async def test_an_alarm_that_never_ends_stops_at_the_maximum(make_platform: MakePlatform) -> None:
    _, d, rec = await policy_device(make_platform)
    try:
        await d.rpc("AlarmNotify", alarm(12, "start"))
        started = await rec.wait("StartRecord")
        stopped = await rec.wait("StopRecord")
        assert 0.45 <= stopped - started < 3.0
        # The lost end does not keep the channel "active": a pulse is a post-roll long.
        await d.rpc("AlarmNotify", alarm(10, "pulse"))
        await rec.wait("StopRecord", 2)
    finally:
        await d.close()


async def test_a_stop_due_while_the_device_is_away_is_sent_when_it_is_back(
    make_platform: MakePlatform,
) -> None:
    # A PU resumes its recording sessions after a restart: without the StopRecord it
    # would record on and on.
    p, d, rec = await policy_device(make_platform)
    await d.rpc("AlarmNotify", alarm(10, "pulse"))
    await rec.wait("StartRecord")
    await d.close()
    await p.wait_offline(PU)
    await asyncio.sleep(POST_ROLL + 0.3)  # the stop fell due meanwhile
    (r,) = p.alarm_recordings(PU)
    assert r.state == "stopping"
    d = await Device.login(p.vd_url, ca=p, reconnect=True)
    back = Recorder(d)
    try:
        await back.wait("StopRecord")
        assert back.named("StopRecord") == [{"session_id": r.session_id, "channel": 0}]
        await p.wait_alarm_recording(PU, state="stopped", timeout=2)
    finally:
        await d.close()


# --- end to end with the real daemon ---------------------------------------------------


@pytest.mark.platform(
    devices={DEVICE: PASSWORD},
    alarm_record=True,
    alarm_prerecord_seconds=2,
    alarm_seg_duration=1,
    alarm_post_roll=1.0,
    admin_port=0,
)
async def test_the_daemon_records_the_alarm_with_prerecord(
    platform: ReferencePlatform, make_rig: MakeRig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = await make_rig(prerecord_seconds=2)
    await asyncio.sleep(2.5)  # the pre-record ring fills
    link = rig.daemon.link
    assert isinstance(link, PlatformLink)
    resp = await link.call(
        vd.AlarmNotifyParams(
            channel=0, timestamp=int(platform.now()), type=12, state="start", desc="PIR motion"
        )
    )
    assert isinstance(resp, vd.AlarmNotifyResp) and resp.pic_upload_url
    r = await platform.wait_alarm_recording(DEVICE, state="recording", timeout=10)
    await asyncio.sleep(1.0)
    await link.call(
        vd.AlarmNotifyParams(
            channel=0, timestamp=int(platform.now()), type=12, state="end", desc="PIR motion"
        )
    )
    r = await platform.wait_alarm_recording(DEVICE, state="stopped", timeout=10)
    assert r.stopped_at is not None
    segs = await platform.vr.wait_session(r.session_id, r.stopped_at)
    assert segs and all(s.check is not None and s.check.ok for s in segs)
    assert segs[0].start <= r.start_ts - 1.5  # pre-recorded: before the alarm
    assert segs[-1].end >= r.start_ts + 1.8  # the alarm's second and the post-roll
    # hss-pu platform alarms shows the recording's segments under each of its alarms.
    cli = ["platform", "alarms", "--state-dir", str(platform.options.state_dir)]
    capsys.readouterr()
    assert await asyncio.to_thread(main, cli) == 0
    out = capsys.readouterr().out
    assert out.count(f"recording: {r.session_id} (stopped; {len(segs)} segments") == 2
    for seg in segs:
        assert out.count(f" ok {seg.path}\n") == 2


# --- the admin API and the CLI ---------------------------------------------------------


async def test_admin_and_cli_alarms(
    make_platform: MakePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    p, d, rec = await policy_device(make_platform, admin_port=0, alarm_stale_seconds=1e10)
    try:
        url = (await d.rpc("AlarmNotify", alarm(10, "pulse", ts=1_700_000_000)))["resp"][
            "pic_upload_url"
        ]
        assert await put(p, url, jpeg(64, 48)) == 200
        await rec.wait("StopRecord")
        await p.wait_alarm_recording(PU, state="stopped", timeout=2)
    finally:
        await d.close()
    (a,) = p.alarms(PU)
    assert a.picture is not None
    auth = {"Authorization": f"Bearer {p.admin_token}"}
    async with httpx.AsyncClient(base_url=str(p.admin_url), trust_env=False) as admin:
        body = (await admin.get("/admin/alarms", headers=auth)).json()
        (j,) = body["alarms"]
        assert (j["device"], j["type"], j["state"], j["timestamp"]) == (
            PU,
            10,
            "pulse",
            1_700_000_000,
        )
        assert j["picture"]["path"] == str(a.picture.path)
        assert (j["picture"]["size"], j["picture"]["width"], j["picture"]["height"]) == (
            a.picture.size,
            64,
            48,
        )
        assert j["recording"]["session_id"] == a.session_id
        assert j["recording"]["state"] == "stopped" and j["recording"]["segments"] == []
        r = await admin.get("/admin/alarms", headers=auth, params={"device": "PU-2"})
        assert r.json() == {"alarms": []}
        r = await admin.get("/admin/alarms", headers=auth, params={"last": "x"})
        assert r.status_code == 400

    cli = ["platform", "alarms", "--state-dir", str(p.options.state_dir)]
    capsys.readouterr()
    assert await asyncio.to_thread(main, cli) == 0
    out = capsys.readouterr().out
    assert "2023-11-14T22:13:20Z" in out and "door bell" not in out  # desc as sent
    assert "test 10" in out and "pulse" in out and PU in out
    assert str(a.picture.path) in out and "64x48" in out and str(a.picture.size) in out
    assert str(a.session_id) in out and "stopped" in out
    assert await asyncio.to_thread(main, [*cli, PU, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alarms"][0]["index"] == a.index
    assert await asyncio.to_thread(main, [*cli, "PU-2"]) == 0
    assert capsys.readouterr().out == "no alarms\n"


async def test_serve_keeps_alarms_and_records_them_by_default(tmp_path: Path) -> None:
    state_dir = tmp_path / "platform"
    serve = await Serve.start(
        state_dir,
        "--device",
        f"PU-9:{SECRET}",
        "--alarm-prerecord",
        "2",
        "--alarm-post-roll",
        "0",
        "--alarm-seg-duration",
        "1",
    )
    try:
        line = "  alarms:       kept with pictures; recorded with 2 s pre-record and 0 s post-roll"
        assert line + " (hss-pu platform alarms)" in serve.banner
        state = serve.state
        ca = Path(state["ca_file"])
        d = await Device.login(f"wss://127.0.0.1:{state['vd_port']}/Vd", "PU-9", SECRET, ca=ca)
        rec = Recorder(d)
        try:
            url = (await d.rpc("AlarmNotify", alarm(10, "pulse")))["resp"]["pic_upload_url"]
            assert await put(ca, url, jpeg(80, 60)) == 200
            await rec.wait("StopRecord")
        finally:
            await d.close()
        (start,) = rec.named("StartRecord")
        assert (start["prerecord_seconds"], start["seg_duration"]) == (2, 1)
        rc, out, err = await hss_pu("platform", "alarms", "PU-9", "--state-dir", str(state_dir))
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("#0 PU-9 ch0 ") and "type 10 pulse 'test 10'" in lines[0]
        assert lines[1].startswith(f"    picture:   {state_dir / 'alarms'}/")
        assert lines[1].endswith("80x60 JPEG)")
        assert lines[2].startswith(f"    recording: {start['session_id']} (")
    finally:
        assert await serve.stop() == 0, serve.lines
