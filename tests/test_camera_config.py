"""SetConfig applies what it accepts, RebootChannel restarts the camera, Keepalive's state
follows the camera: end to end, the daemon against the reference platform (TLS), real
srt-live-transmit receivers and ffprobe on what arrived."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from hss_pu.media.picture import Painter, Picture
from hss_pu.media.sources import read_timecode
from hss_pu.srt import maxbw_for_bitrate
from hss_pu.wire.vd import Code

from .support.probe import decode_errors, frame_sizes, stream_types
from .support.rig import DEVICE, MakeRig, Rig

FPS = 15

pytestmark = [
    pytest.mark.slow,
    pytest.mark.platform(hb_interval=1),
    pytest.mark.rig(size=(640, 360), fps=FPS, bitrate=600_000, backoff_scale=0.02, seed=7),
]


async def start_record(rig: Rig, session: str) -> Any:
    """1 s segments, from whenever the camera is (start_ts 0)."""
    return await rig.start_record(session, seg_duration=1, start_ts=0)


def jpeg_luma(data: bytes) -> np.ndarray:
    ctx = av.CodecContext.create("mjpeg", "r")
    frames = ctx.decode(av.Packet(data))
    luma: np.ndarray = frames[0].to_ndarray(format="gray")
    return luma


async def snapshot(rig: Rig, name: str) -> np.ndarray:
    r = await rig.call("Snapshot", {"channel": 0, "url": rig.platform.upload_url(name)})
    assert r.err is None, r
    return jpeg_luma(rig.platform.uploads[-1].path.read_bytes())


# --- video_encoding.quality ---------------------------------------------------------------


async def test_quality_restarts_the_encoder_and_live_and_recording_carry_on(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    rx, reply = await rig.platform.push_live(DEVICE, 0, "q-live")
    assert reply.err is None, reply
    assert (await start_record(rig, "q-rec")).err is None
    await rx.wait_bytes(40_000)
    await rig.platform.vr.wait_segments(0, 1, timeout=10)
    r = await rig.set_config({"channels": {"0": {"video_encoding": {"quality": "ld"}}}})
    assert r.err is None, r
    enc = r.resp["channels"]["0"]["video_encoding"]
    assert (enc["quality"], enc["width"], enc["height"], enc["fps"]) == ("ld", 320, 180, FPS)
    media = rig.daemon.media[0]
    assert (media.settings.width, media.settings.height) == (320, 180)
    assert enc["bitrate"] == media.settings.bitrate // 1000 < 600
    assert enc["gop"] == media.settings.gop_frames
    # GetConfig says what the encoder runs, and the live push is paced for its bitrate.
    got = (await rig.call("GetConfig")).resp["channels"]["0"]["video_encoding"]
    assert got == enc
    assert rig.daemon.live is not None
    sender = rig.daemon.live.pushes[0].sender
    assert sender is not None and sender.maxbw == maxbw_for_bitrate(media.settings.bitrate, 3)
    assert sender.stats().max_bw_mbps == pytest.approx(sender.maxbw * 8 / 1e6, rel=0.01)
    before = rx.bytes_received
    await rx.wait_bytes(before + 20_000, timeout=10)
    n = len(rig.platform.vr_segments[0])
    segs = await rig.platform.vr.wait_segments(0, n + 2, timeout=15)
    ka = await rig.keepalive(lambda c: c["state"] == 1)
    assert ka.params["channels"][0]["stream_id"] == "q-live"
    assert ka.params["channels"][0]["record_session"] == "q-rec"
    assert (await rig.call("StopLive", {"stream_id": "q-live"})).err is None
    await asyncio.sleep(1.0)
    await rx.close()
    # The receiver got one stream that changed size at a key frame, and it all decodes.
    sizes = frame_sizes(rx.files[0])
    assert sizes[0] == (640, 360) and sizes[-1] == (320, 180), sizes[:: len(sizes) // 8 or 1]
    switch = sizes.index((320, 180))
    assert set(sizes[:switch]) == {(640, 360)} and set(sizes[switch:]) == {(320, 180)}
    assert decode_errors(rx.files[0]) == ""
    # The recording went on; the first segment at the new size says it does not follow on.
    assert all(s.check is None or s.check.ok for s in segs), [s.check for s in segs]
    small = [s for s in segs if s.check is not None and s.check.width == 320]
    assert small and small[0].discontinue
    assert all(not s.discontinue for s in small[1:])


async def test_a_refused_setconfig_applies_none_of_it(make_rig: MakeRig) -> None:
    rig = await make_rig(size=(320, 180), profile="emulated-dual")
    before = (await rig.call("GetConfig")).resp
    settings = rig.daemon.media[0].settings
    r = await rig.set_config(
        {"channels": {"0": {"osd": {"text": "ok"}, "video_encoding": {"quality": "fhd"}}}}
    )
    assert r.err is not None and r.err.code == Code.UNSUPPORTED_CONFIG  # no 1080p here
    assert (await rig.call("GetConfig")).resp == before
    assert rig.daemon.media[0].settings == settings


# --- image and osd --------------------------------------------------------------------


async def test_flips_and_osd_are_in_the_picture(make_rig: MakeRig) -> None:
    rig = await make_rig(size=(640, 360))
    plain = await snapshot(rig, "plain.jpg")
    assert read_timecode(plain) is not None
    osd = {"text": "Front door", "font": 24, "pos": "topleft"}
    r = await rig.set_config(
        {"channels": {"0": {"image": {"horflip": True, "verflip": True}, "osd": osd}}}
    )
    assert r.err is None, r
    assert r.resp["channels"]["0"]["image"] == {"horflip": True, "verflip": True}
    await asyncio.sleep(0.3)
    luma = await snapshot(rig, "flipped.jpg")
    # The clock the emulated camera draws top left reads back once the picture is turned
    # round; the OSD is where it was asked for, the right way up.
    assert read_timecode(luma) is None and read_timecode(luma[::-1, ::-1]) is not None
    p = Picture(True, True, "Front door", 24, "topleft")
    painter = Painter(p, 640, 360)
    assert painter._box is not None
    x, y, box = painter._box
    assert y < 180 and x < 320
    assert (
        np.mean(np.abs(luma[y : y + box.shape[0], x : x + box.shape[1]] - box.astype(int)) < 40)
        > 0.97
    )
    # Off again: the picture as captured, no restart needed.
    r = await rig.set_config(
        {"channels": {"0": {"image": {"horflip": False, "verflip": False}, "osd": {"text": ""}}}}
    )
    assert r.err is None
    await asyncio.sleep(0.3)
    assert read_timecode(await snapshot(rig, "again.jpg")) is not None


BAD_OSD = [
    ("two\nlines", Code.PARAM),
    ("nul\x00", Code.PARAM),
    ("bidi \u202e override", Code.PARAM),  # Cf
    ("zero\u200bwidth", Code.PARAM),  # Cf
    ("line\u2028sep", Code.PARAM),  # Zl
    ("para\u2029sep", Code.PARAM),  # Zp
    ("next\x85line", Code.PARAM),  # Cc (NEL)
    ("x" * 65, Code.PARAM),
    ("前门", Code.UNSUPPORTED_CONFIG),  # printable, but the font has no such glyph
]


async def test_osd_text_is_one_printable_line_the_camera_can_draw(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(size=(320, 180))
    before = (await rig.call("GetConfig")).resp
    for text, code in BAD_OSD:
        r = await rig.set_config(
            {"channels": {"0": {"osd": {"text": text}, "image": {"horflip": True}}}}
        )
        assert r.err is not None and r.err.code == code, (text, r)
        assert (await rig.call("GetConfig")).resp == before  # nothing half-applied
    assert not rig.daemon.media[0].settings.picture.horflip
    r = await rig.set_config({"channels": {"0": {"osd": {"text": "Küche 7"}}}})
    assert r.err is None and r.resp["channels"]["0"]["osd"]["text"] == "Küche 7"
    assert rig.daemon.media[0].settings.picture.osd_text == "Küche 7"


PASSTHROUGH_PROFILE = """\
hardware_model = "TEST-RTSP"
firmware_model = "hss-pu-test"
description = "an H.264 camera passed through"
reboot = "daemon"

[[channels]]
id = 0
backend = "file"
encoder = "passthrough"
resolutions = [[640, 360], [320, 180]]
max_fps = 30
max_bitrate = 4_000_000
default_bitrate = 1_000_000
audio = { input = true }

[recording]
store = "dir"
max_mb = 64
"""


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s of H.264 640x360@15 in MPEG-TS, no sound (read only: copy it to change it)."""
    path = tmp_path_factory.mktemp("clip") / "cam.ts"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = 640, 360, "yuv420p"
        st.codec_context.gop_size = FPS
        st.codec_context.options = {"preset": "ultrafast"}
        for k in range(FPS):
            f = av.VideoFrame.from_ndarray(np.full((540, 640), k * 8, np.uint8), "yuv420p")
            f.pts = k
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    return path


async def test_a_passed_through_camera_refuses_what_it_cannot_change(
    make_rig: MakeRig, h264_clip: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "passthrough.toml"
    profile.write_text(PASSTHROUGH_PROFILE)
    rig = await make_rig(source=f"file:{h264_clip}", profile=str(profile))
    assert await rig.daemon.media[0].wait_running()
    before = (await rig.call("GetConfig")).resp
    for patch in (
        {"image": {"horflip": True}},
        {"image": {"verflip": True}},
        {"osd": {"text": "Porch"}},
        {"video_encoding": {"quality": "ld"}},
    ):
        r = await rig.set_config({"channels": {"0": patch}})
        assert r.err is not None and r.err.code == Code.UNSUPPORTED_CONFIG, (patch, r)
    assert (await rig.call("GetConfig")).resp == before
    # What the camera sends, and what is true anyway, is accepted.
    enc = before["channels"]["0"]["video_encoding"]
    assert (enc["width"], enc["height"], enc["quality"]) == (640, 360, "sd")
    r = await rig.set_config(
        {"channels": {"0": {"video_encoding": {"quality": "sd"}, "image": {"horflip": False}}}}
    )
    assert r.err is None, r
    # A file without sound: the live stream has no audio track, though the profile has
    # audio input.
    rx, reply = await rig.platform.push_live(DEVICE, 0, "pt")
    assert reply.err is None
    await rx.wait_bytes(20_000)
    await rx.close()
    assert stream_types(rx.files[0]) == ["video"]


# --- on ---------------------------------------------------------------------------------


async def test_off_stops_the_camera_and_ends_its_streams_on_brings_it_back(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(size=(320, 180))
    rx, reply = await rig.platform.push_live(DEVICE, 0, "off-live")
    assert reply.err is None
    assert (await start_record(rig, "off-rec")).err is None
    await rx.wait_bytes(20_000)
    media = rig.daemon.media[0]
    worker = media._thread
    assert worker is not None and worker.is_alive()
    t0 = time.monotonic()
    r = await rig.set_config({"channels": {"0": {"on": False}}})
    assert r.err is None and r.resp["channels"]["0"]["on"] is False
    assert time.monotonic() - t0 < 5
    # No capture, no encoding: the worker thread is gone.
    assert not worker.is_alive() and not media.running
    encoded = media.stats.frames_encoded
    ka = await rig.keepalive(lambda c: True)
    ch = ka.params["channels"][0]
    assert ch["state"] == 4 and "stream_id" not in ch and "record_session" not in ch
    # The push ended (its last bytes flushed), the recording's last segment was saved.
    size = rx.bytes_received
    await asyncio.sleep(1.0)
    assert rx.bytes_received == size
    assert rig.daemon.live is not None and not rig.daemon.live.pushes
    assert rig.daemon.record is not None and not rig.daemon.record.sessions
    await rig.platform.vr.wait_segments(0, 1, timeout=10)
    assert media.stats.frames_encoded == encoded
    # Everything that needs the camera says it is offline, at once.
    for method, params in (
        ("PushLive", {"channel": 0, "url": rx.url, "stream_id": "x", "max_bitrate": 0}),
        ("Snapshot", {"channel": 0, "url": rig.platform.upload_url("off.jpg")}),
    ):
        t0 = time.monotonic()
        r = await rig.call(method, params)
        assert r.err is not None and r.err.code == Code.CHANNEL_OFFLINE, (method, r)
        assert time.monotonic() - t0 < 1.0
    r = await start_record(rig, "off-rec-2")
    assert r.err is not None and r.err.code == Code.CHANNEL_OFFLINE
    # On again: capturing, state 1, and streams can start.
    r = await rig.set_config({"channels": {"0": {"on": True}}})
    assert r.err is None
    assert await media.wait_running(5)
    await rig.keepalive(lambda c: c["state"] == 1)
    rx2, reply = await rig.platform.push_live(DEVICE, 0, "on-live")
    assert reply.err is None
    await rx2.wait_bytes(10_000)


async def test_off_survives_a_restart(make_rig: MakeRig) -> None:
    rig = await make_rig(size=(320, 180))
    assert (await rig.set_config({"channels": {"0": {"on": False}}})).err is None
    assert await rig.stop() == 0
    again = await make_rig(size=(320, 180))
    ka = await again.keepalive(lambda c: True)
    assert ka.params["channels"][0]["state"] == 4
    assert not again.daemon.media[0].running and again.daemon.media[0]._thread is None


# --- channel state and RebootChannel ---------------------------------------------------


async def test_reboot_channel_restarts_the_camera_and_streams_carry_on(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(size=(320, 180))
    rx, reply = await rig.platform.push_live(DEVICE, 0, "rb-live")
    assert reply.err is None
    assert (await start_record(rig, "rb-rec")).err is None
    await rx.wait_bytes(20_000)
    await rig.platform.vr.wait_segments(0, 1, timeout=10)
    media = rig.daemon.media[0]
    worker = media._thread
    seen: list[int] = []
    hooks = rig.daemon.channels.get(0).restart_hooks
    hooks.insert(0, lambda: _note(seen, rig.channel_state()))
    hooks.append(lambda: _note(seen, rig.channel_state()))
    await rig.platform.send_event(DEVICE, "RebootChannel", {"channel": 0})
    ka = await rig.keepalive(lambda c: c["state"] == 1 and rig.daemon.channels.get(0).reboots == 1)
    assert seen == [0, 0]  # offline while it restarts
    assert media._thread is not worker and media.running  # a new capture and encoder
    assert ka.params["channels"][0]["stream_id"] == "rb-live"
    assert ka.params["channels"][0]["record_session"] == "rb-rec"
    n = len(rig.platform.vr_segments[0])
    before = rx.bytes_received
    await rx.wait_bytes(before + 20_000, timeout=10)
    segs = await rig.platform.vr.wait_segments(0, n + 2, timeout=15)
    assert all(s.check is None or s.check.ok for s in segs), [s.check for s in segs]
    await rx.close()
    assert decode_errors(rx.files[0]) == ""


async def _note(seen: list[int], state: int) -> None:
    seen.append(state)


@pytest.fixture
def live_clip(h264_clip: Path, tmp_path: Path) -> Path:
    """A copy of h264_clip this test may move away (the camera going away)."""
    clip = tmp_path / "live.ts"
    clip.write_bytes(h264_clip.read_bytes())
    return clip


async def test_a_failing_camera_is_state_3_until_it_recovers_or_is_rebooted(
    make_rig: MakeRig, live_clip: Path
) -> None:
    clip = live_clip
    rig = await make_rig(source=f"file:{clip}")
    media = rig.daemon.media[0]
    media.retry_backoff = (0.2, 0.5)
    assert await media.wait_running()
    await rig.keepalive(lambda c: c["state"] == 1)
    clip.rename(clip.with_suffix(".gone"))  # the camera goes away at the end of the clip
    await rig.keepalive(lambda c: c["state"] == 3, timeout=8)
    assert media.running  # still trying
    # It comes back by itself...
    clip.with_suffix(".gone").rename(clip)
    await rig.keepalive(lambda c: c["state"] == 1, timeout=10)
    # ... or, when it is stuck (its retries far apart), RebootChannel brings it back now.
    media.retry_backoff = (60.0, 60.0)
    clip.rename(clip.with_suffix(".gone"))
    await rig.keepalive(lambda c: c["state"] == 3, timeout=8)  # and waits 60 s to retry
    clip.with_suffix(".gone").rename(clip)
    t0 = time.monotonic()
    await rig.platform.send_event(DEVICE, "RebootChannel", {"channel": 0})
    await rig.keepalive(lambda c: c["state"] == 1, timeout=6)
    assert time.monotonic() - t0 < 6
