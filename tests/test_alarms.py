"""Alarms through the real daemon and the reference platform (issue 10, Deliver 3, 4, 7).

The detectors (hardware inputs, motion) are not in this build: each test reports to the
daemon's alarm service the way they will, through its AlarmSink methods, on the loop.
What arrives on the platform (AlarmNotify, Keepalive flags, picture uploads) is real.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from hss_pu.media.channel import EncodeSettings, MediaChannel, jpeg_size
from hss_pu.media.people import people_available
from hss_pu.media.sources import read_timecode
from hss_pu.reference_platform.vd import Record
from hss_pu.services.alarms import QUEUE_ITEMS, AlarmService
from hss_pu.wire.vd import Code

from .support.rig import DEVICE, PASSWORD, MakeRig, Rig, until

pytestmark = pytest.mark.platform(hb_interval=1)

PIR, BELL = 1 << 12, 1 << 10


def sink(rig: Rig) -> AlarmService:
    alarms = rig.daemon.alarms
    assert alarms is not None
    return alarms


def notices(rig: Rig, since: float = 0.0) -> list[dict[str, Any]]:
    """The AlarmNotify params the platform received (from ``since``, host time)."""
    return [r.params for r in rig.platform.records if r.name == "AlarmNotify" and r.time >= since]


async def notice(rig: Rig, state: str, type_: int, timeout: float = 5.0) -> Record:
    return await rig.platform.wait_record(
        lambda r: (
            r.name == "AlarmNotify" and r.params["state"] == state and r.params["type"] == type_
        ),
        timeout=timeout,
    )


async def set_alarm(rig: Rig, kind: str, **settings: Any) -> None:
    r = await rig.set_config({"channels": {"0": {"alarms": {kind: settings}}}})
    assert r.err is None, r


def keepalive_alarm(rig: Rig) -> int:
    return int(rig.keepalive_channels()[0].get("alarm") or 0)


async def next_keepalive(rig: Rig, since: float | None = None) -> int:
    """The ``alarm`` flags of the first Keepalive the platform receives from ``since``
    (host time; default now) on."""
    t = time.time() if since is None else since
    rec = await rig.platform.wait_record(lambda r: r.name == "Keepalive" and r.time >= t, timeout=5)
    return int(rec.params["channels"][0].get("alarm") or 0)


def jpeg_luma(data: bytes) -> np.ndarray:
    ctx = av.CodecContext.create("mjpeg", "r")
    luma: np.ndarray = ctx.decode(av.Packet(data))[0].to_ndarray(format="gray")
    return luma


# --- state alarms, pulses, Keepalive ----------------------------------------------------------


async def test_a_state_alarm_starts_then_ends_once_after_its_hold(rig: Rig) -> None:
    alarms = sink(rig)
    await set_alarm(rig, "pir", hold=1)
    t0 = time.time()
    at = rig.daemon.clock.now()
    alarms.state(0, "pir", True, at)
    start = await notice(rig, "start", 12)
    assert start.params == {
        "channel": 0, "timestamp": int(at), "type": 12, "state": "start", "desc": "PIR motion"
    }  # fmt: skip
    assert await next_keepalive(rig) & PIR  # while active
    # Quiet, then a re-trigger within the hold: one alarm, longer.
    alarms.state(0, "pir", False, rig.daemon.clock.now())
    await asyncio.sleep(0.5)
    alarms.state(0, "pir", True, rig.daemon.clock.now())
    await asyncio.sleep(1.0)
    assert [n["state"] for n in notices(rig, t0)] == ["start"]
    assert keepalive_alarm(rig) & PIR
    quiet = rig.daemon.clock.now()
    alarms.state(0, "pir", False, quiet)
    end = await notice(rig, "end", 12)
    assert quiet + 0.9 <= end.time + rig.daemon.clock.offset <= quiet + 2.0
    assert abs(end.params["timestamp"] - (quiet + 1)) <= 1
    assert not await next_keepalive(rig) & PIR  # not after
    await asyncio.sleep(1.5)
    assert [n["state"] for n in notices(rig, t0)] == ["start", "end"]


async def test_a_pulse_is_sent_once_and_flagged_in_the_next_keepalive_only(rig: Rig) -> None:
    t0 = time.time()
    at = rig.daemon.clock.now()
    sink(rig).pulse(0, "bell", at)
    p = await notice(rig, "pulse", 10)
    assert p.params["timestamp"] == int(at) and p.params["desc"] == "door bell"
    first = await rig.platform.wait_record(lambda r: r.name == "Keepalive" and r.time >= t0)
    assert int(first.params["channels"][0]["alarm"]) & BELL
    assert not await next_keepalive(rig, first.time + 0.001) & BELL
    assert [n["state"] for n in notices(rig) if n["type"] == 10] == ["pulse"]


async def test_a_thousand_bounces_in_a_second_give_at_most_the_configured_number(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(alarms_per_minute=6)
    alarms = sink(rig)
    await set_alarm(rig, "pir", hold=0)  # every bounce could be an alarm of its own
    t0 = time.time()
    clock = rig.daemon.clock
    deadline = time.monotonic() + 1.0
    bounces = 0
    while bounces < 1000:
        alarms.pulse(0, "bell", clock.now())
        alarms.state(0, "pir", bounces % 2 == 0, clock.now())
        bounces += 1
        await asyncio.sleep(max(0.0, (deadline - time.monotonic()) / (1000 - bounces + 1)))
    alarms.state(0, "pir", False, clock.now())
    await asyncio.sleep(1.5)
    got = notices(rig, t0)
    bells = [n for n in got if n["type"] == 10]
    pirs = [n["state"] for n in got if n["type"] == 12]
    assert len(bells) == 6, bells
    assert 2 <= len(pirs) <= 6 and pirs == ["start", "end"] * (len(pirs) // 2), pirs
    assert alarms.stats.suppressed > 900
    assert not keepalive_alarm(rig) & PIR


async def test_an_alarm_raised_offline_arrives_after_login_with_its_timestamp(
    rig: Rig,
) -> None:
    p = rig.platform
    p.options.devices = {}  # the platform turns the device away...
    await p.kick(DEVICE)
    await p.wait_offline(DEVICE)
    alarms = sink(rig)
    clock = rig.daemon.clock
    t_bell = clock.now()
    alarms.pulse(0, "bell", t_bell)
    await asyncio.sleep(0.2)
    t_pir = clock.now()
    alarms.state(0, "pir", True, t_pir)
    assert sink(rig).status()["queued"] == 2
    await asyncio.sleep(1.5)
    p.options.devices = {DEVICE: PASSWORD}  # ... and is back
    bell = await notice(rig, "pulse", 10, timeout=15)
    start = await notice(rig, "start", 12)
    assert bell.index < start.index  # in order
    assert bell.params["timestamp"] == int(t_bell) and start.params["timestamp"] == int(t_pir)
    assert bell.time + clock.offset - t_bell >= 1.5  # sent late, stamped when raised
    assert alarms.status()["queued"] == 0


async def test_the_offline_queue_is_bounded_and_drops_the_oldest(make_rig: MakeRig) -> None:
    rig = await make_rig(alarms_per_minute=600)
    p = rig.platform
    p.options.devices = {}
    await p.kick(DEVICE)
    await p.wait_offline(DEVICE)
    alarms = sink(rig)
    base = int(rig.daemon.clock.now()) - 100
    raised = QUEUE_ITEMS + 6
    for i in range(raised):  # one second apart, so each is known by its timestamp
        alarms.pulse(0, "bell", base + i + 0.5)
    assert alarms.status()["queued"] == QUEUE_ITEMS and alarms.stats.dropped == 6
    t0 = time.time()
    p.options.devices = {DEVICE: PASSWORD}
    assert await until(lambda: len(notices(rig, t0)) == QUEUE_ITEMS, 15)
    assert [x["timestamp"] for x in notices(rig, t0)] == list(range(base + 6, base + raised))


async def test_a_kind_switched_off_raises_nothing(rig: Rig) -> None:
    alarms = sink(rig)
    clock = rig.daemon.clock
    alarms.state(0, "pir", True, clock.now())
    await notice(rig, "start", 12)
    await set_alarm(rig, "pir", on=False)  # ends the running alarm at once
    await notice(rig, "end", 12, timeout=2)
    await set_alarm(rig, "bell", sensitivity=0)  # 0: never
    t0 = time.time()
    alarms.state(0, "pir", True, clock.now())
    alarms.state(0, "pir", False, clock.now())
    alarms.pulse(0, "bell", clock.now())
    await next_keepalive(rig)
    assert not await next_keepalive(rig) & (PIR | BELL)
    assert notices(rig, t0) == []
    conf = (await rig.call("GetConfig")).resp["channels"]["0"]["alarms"]
    assert conf["pir"]["on"] is False and conf["bell"]["sensitivity"] == 0
    # Persisted, and applied again on start-up.
    stored = (rig.storage / "devconfig.json").read_text()
    assert '"sensitivity": 0' in stored or '"sensitivity":0' in stored


async def test_alarm_settings_in_setconfig(rig: Rig) -> None:
    conf = (await rig.call("GetConfig")).resp["channels"]["0"]["alarms"]
    body = {"body"} if people_available() else set()  # person detection, where it runs
    assert set(conf) == {"io", "motion", "lock", "bell", "pir"} | body  # the emulated profile's
    assert conf["pir"] == {"on": True, "sensitivity": 50, "hold": 10}
    assert conf["motion"] == {"on": False, "sensitivity": 50, "hold": 10, "regions": []}
    assert conf["bell"] == {"on": True, "sensitivity": 50}
    regions = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 0.5, 0.75]]
    await set_alarm(rig, "motion", on=True, sensitivity=80, hold=5, regions=regions)
    s = sink(rig).settings(0, "motion")
    assert s is not None and s.armed and s.hold == 5 and s.sensitivity == 80
    assert s.regions == ((0.0, 0.0, 0.5, 0.5), (0.5, 0.25, 0.5, 0.75))
    for patch, code in [
        ({"nose": {"on": True}}, Code.PARAM),  # unknown
        ({"face": {"on": True}}, Code.UNSUPPORTED_CONFIG),  # known, not on this device
        ({"pir": {"sensitivity": 101}}, Code.PARAM),
        ({"pir": {"hold": -1}}, Code.PARAM),
        ({"bell": {"hold": 3}}, Code.PARAM),  # a pulse has no hold
        ({"motion": {"regions": [[0.5, 0, 0.6, 1]]}}, Code.PARAM),  # outside the picture
        ({"motion": {"regions": [[0, 0, 1, 1]] * 9}}, Code.PARAM),
    ]:
        r = await rig.set_config({"channels": {"0": {"alarms": patch}}})
        assert r.err is not None and r.err.code == code, (patch, r)


# --- pictures --------------------------------------------------------------------------------


@pytest.mark.rig(size=(320, 180))
async def test_the_picture_is_the_frame_of_the_alarms_start(rig: Rig) -> None:
    """Raised offline and sent 1.5 s later, the alarm still uploads the frame of its
    start: a JPEG of the configured size whose drawn clock reads the alarm's time."""
    p = rig.platform
    p.options.devices = {}
    await p.kick(DEVICE)
    await p.wait_offline(DEVICE)
    at = rig.daemon.clock.now()
    sink(rig).pulse(0, "bell", at)
    await asyncio.sleep(1.5)
    p.options.devices = {DEVICE: PASSWORD}
    await notice(rig, "pulse", 10, timeout=15)
    alarm = await p.wait_alarm(DEVICE, type=10, state="pulse", picture=True, timeout=10)
    up = alarm.picture
    assert up is not None
    data = up.path.read_bytes()
    assert up.content_type == "image/jpeg" and jpeg_size(data) == (320, 180)
    drawn = read_timecode(jpeg_luma(data))
    assert drawn is not None and at - 0.5 <= drawn <= at + 0.01, (drawn, at)
    assert await until(lambda: sink(rig).stats.pictures == 1, 5)  # counted once the PUT answers


@pytest.mark.rig(size=(320, 180))
async def test_an_alarm_raised_before_the_cameras_first_frame_gets_that_frame(rig: Rig) -> None:
    """A PIR that wakes the camera fires before there is any frame: the picture is the
    first frame the camera captures (within FIRST_FRAME_WAIT), not nothing."""
    media = rig.daemon.media[0]
    await media.stop()
    assert media.latest_frame() is None and media.enabled
    at = rig.daemon.clock.now()
    sink(rig).pulse(0, "bell", at)
    await notice(rig, "pulse", 10)
    await asyncio.sleep(1.0)  # the platform has answered with its URL; still no frame
    await media.start()
    alarm = await rig.platform.wait_alarm(DEVICE, type=10, state="pulse", picture=True)
    assert alarm.picture is not None
    data = alarm.picture.path.read_bytes()
    assert jpeg_size(data) == (320, 180)
    drawn = read_timecode(jpeg_luma(data))
    assert drawn is not None and drawn >= at + 1.0, (drawn, at)  # captured after the start
    assert sink(rig).stats.pictures_failed == 0


async def test_a_kept_frame_is_the_picture_of_its_moment() -> None:
    """MediaChannel.latest_frame is a reference taken now; frame_jpeg encodes it later,
    unchanged by the frames captured since. None while the camera is not running."""
    s = EncodeSettings(320, 180, 15, 300_000, 15, "libx264")
    ch = MediaChannel(0, "emulated", s, time.time)
    assert ch.latest_frame() is None
    await ch.start()
    try:
        assert await ch.wait_running()
        assert await until(lambda: ch.latest_frame() is not None, 5)
        ref = ch.latest_frame()
        assert ref is not None and ref.frame is not None and ref.nbytes == 320 * 180 * 3 // 2
        await asyncio.sleep(0.5)  # later frames do not touch it
        jpeg = await ch.frame_jpeg(ref)
    finally:
        await ch.stop()
    assert jpeg_size(jpeg) == (320, 180)
    drawn = read_timecode(jpeg_luma(jpeg))
    assert drawn is not None and abs(drawn - ref.capture_time) < 0.002
    assert ch.latest_frame() is None  # stopped


async def test_a_passthrough_channel_keeps_its_last_key_frame(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    with av.open(str(clip), "w", format="mpegts") as out:
        st = out.add_stream("libx264", rate=15)
        st.width, st.height, st.pix_fmt = 320, 180, "yuv420p"
        st.codec_context.gop_size = 15
        st.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        for k in range(30):
            f = av.VideoFrame.from_ndarray(
                np.full((270, 320), (k * 8) % 255, np.uint8), format="yuv420p"
            )
            f.pts = k
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    s = EncodeSettings(320, 180, 15, 300_000, 15, "passthrough")
    ch = MediaChannel(0, f"file:{clip}", s, time.time)
    await ch.start()
    try:
        assert await until(lambda: ch.latest_frame() is not None, 5)
        ref = ch.latest_frame()
        assert ref is not None and ref.frame is None and ref.keyframe
        assert ch.stats.passthrough
        jpeg = await ch.frame_jpeg(ref)
    finally:
        await ch.stop()
    assert jpeg_size(jpeg) == (320, 180)


# --- URL safety --------------------------------------------------------------------------------


async def test_urls_to_other_local_hosts_are_refused(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The platform (on 127.0.0.1, the host the device reached it on) may name itself;
    another name for the same machine (localhost), a private or a link-local address may
    not: Snapshot and StartRecord answer 12 and send nothing, an alarm picture is a log
    line."""
    caplog.set_level(logging.WARNING, logger="hss_pu.alarms")
    p = rig.platform
    port = p.schedule_url.rsplit(":", 1)[1]
    for url in (
        f"https://localhost:{port}/upload/x.jpg",
        "https://10.0.0.1/upload/x.jpg",
        "https://169.254.169.254/latest/meta-data",
        f"https://[::ffff:127.0.0.1]:{port}/upload/x.jpg",
    ):
        r = await rig.call("Snapshot", {"channel": 0, "url": url})
        assert r.err is not None and r.err.code == Code.PARAM, (url, r)
    bad = await rig.start_record("r", cbk_url=f"https://localhost:{port}/live/cseg/0")
    assert bad.err is not None and bad.err.code == Code.PARAM and "loopback" in bad.err.msg
    p.options.alarm_pic_base = f"https://localhost:{port}"
    sink(rig).pulse(0, "bell", rig.daemon.clock.now())
    await notice(rig, "pulse", 10)
    assert await until(lambda: sink(rig).stats.pictures_failed == 1, 5)
    assert p.uploads == [] and all(a.picture is None for a in p.alarms(DEVICE))
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused and "localhost is loopback" in refused[0]
    r = await rig.call("Snapshot", {"channel": 0, "url": p.upload_url("ok.jpg")})
    assert r.err is None, r  # the platform's own host


async def test_allowed_hosts_let_a_lan_host_in(make_rig: MakeRig) -> None:
    rig = await make_rig(allowed_hosts=["localhost"])
    port = rig.platform.schedule_url.rsplit(":", 1)[1]
    r = await rig.call("Snapshot", {"channel": 0, "url": f"https://localhost:{port}/upload/l.jpg"})
    assert r.err is None, r
    assert [u.name for u in rig.platform.uploads] == ["l.jpg"]


# --- pre-record -------------------------------------------------------------------------------


@pytest.mark.rig(prerecord_seconds=3)
async def test_a_recording_started_after_an_alarm_begins_before_it(rig: Rig) -> None:
    """camera.prerecord_seconds keeps the ring from start-up: the platform's StartRecord,
    a second after the alarm, still gets video from before the alarm."""
    rec = rig.daemon.record
    assert rec is not None and rec.rings[0].seconds == 3
    assert await until(lambda: rec.rings[0].span >= 2.5, 10)
    at = rig.daemon.clock.now()
    sink(rig).pulse(0, "bell", at)
    await notice(rig, "pulse", 10)
    await asyncio.sleep(1.0)
    r = await rig.start_record("after-alarm", prerecord_seconds=3, seg_duration=1)
    assert r.err is None, r
    segs = await rig.platform.vr.wait_segments(0, 1, timeout=15)
    assert segs[0].start < at - 1, (segs[0].start, at)
