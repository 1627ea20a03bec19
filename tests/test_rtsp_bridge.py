"""The rtsp-bridge profile: each channel its own IP camera (camera.sources), passed through.

The config rules run in-process; the bridge itself runs two channels from a real RTSP
server (gst-rtsp-server, tests/support/rtsp_server.py) with Basic authentication, live
and recorded on the reference platform, each checked with ffprobe.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hss_pu.config import load_config
from hss_pu.logsetup import redact
from hss_pu.schema import SchemaError

from .conftest import WriteConfig
from .support.probe import ffprobe
from .support.rig import DEVICE, MakeRig
from .support.rtsp import RtspServer, make_clip, rtsp_unavailable

CAM_PASSWORD = "cam-Secret-77"


def _bridge(write_config: WriteConfig, camera: str) -> Path:
    path = write_config(profile="rtsp-bridge")
    text = path.read_text().replace('source = "emulated"\n', camera + "\n")
    path.write_text(text)
    return path


def test_each_channel_has_its_own_camera(write_config: WriteConfig) -> None:
    urls = [f"rtsp://admin:{CAM_PASSWORD}@192.0.2.{10 + i}:554/s" for i in range(3)]
    cfg = load_config(_bridge(write_config, f"sources = {urls!r}".replace("'", '"')))
    assert cfg.channel_sources == tuple(urls)
    assert cfg.camera_source == urls[0]
    # Three cameras: a three-channel device, and GetCap says so.
    assert [c["channel"] for c in cfg.profile.capabilities()["channels"]] == [0, 1, 2]
    assert all(c["encoder"] == "passthrough" for c in cfg.profile.capabilities()["channels"])


@pytest.mark.parametrize(
    ("camera", "key", "words"),
    [
        # One URL for a 16-camera bridge would show one camera on every channel.
        ('source = "rtsp://192.0.2.10/s"', "camera.sources", ["channel 1", "RTSP"]),
        ('sources = ["rtsp://192.0.2.10/s", "rtsp://cam:99999/s"]', "camera.sources[1]",
         ["port"]),
        ('sources = ["rtsp://192.0.2.10/s", "http://192.0.2.11/s"]', "camera.sources[1]",
         ["expected"]),
        ('source = "rtsp://192.0.2.10/s"\nsources = ["rtsp://192.0.2.11/s"]', "camera.sources",
         ["not both"]),
        ("sources = [" + ", ".join(['"rtsp://192.0.2.10/s"'] * 17) + "]", "camera.sources",
         ["16"]),
    ],
)  # fmt: skip
def test_bad_sources_are_one_line_naming_the_key(
    write_config: WriteConfig, camera: str, key: str, words: list[str]
) -> None:
    path = _bridge(write_config, camera)
    with pytest.raises(SchemaError) as e:
        load_config(path)
    line = str(e.value)
    assert "\n" not in line and str(path) in line and f": {key}: " in line, line
    for w in words:
        assert w in line, line


@pytest.fixture(scope="module")
def rtsp_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = rtsp_unavailable()
    if why:
        pytest.skip(why)
    return make_clip(tmp_path_factory.mktemp("rtsp") / "clip.mkv", (640, 360), 30, fps=15)


@pytest.mark.platform(hb_interval=1)
async def test_two_ip_cameras_live_and_recorded(make_rig: MakeRig, rtsp_clip: Path) -> None:
    server = RtspServer(rtsp_clip, mounts=2, user="admin", password=CAM_PASSWORD)
    try:
        await server.start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        rig = await make_rig(
            profile="rtsp-bridge",
            sources=[server.url(0), server.url(1)],
            size=(640, 360),
            fps=15,
        )
        # The cameras' password is a secret from here on: no log line can carry it.
        assert CAM_PASSWORD not in redact(f"opening {server.url(1)}")
        platform = rig.platform

        async def one(ch: int) -> None:
            rx, reply = await platform.push_live(DEVICE, ch, f"bridge-{ch}")
            assert reply.err is None, reply
            await rig.start_record(
                f"bridge-rec-{ch}", channel=ch, seg_duration=1, cbk_url=platform.vr_cbk_url(ch)
            )
            seg = (await platform.vr.wait_segments(ch, 1, timeout=12))[0]
            await rx.wait_bytes(100_000, timeout=10)
            await rig.call("StopLive", {"stream_id": f"bridge-{ch}"})
            await rx.close()
            await rig.stop_record(f"bridge-rec-{ch}", channel=ch)
            for f in (seg.path, rx.files[0]):
                s = ffprobe(f)
                assert (s["codec_name"], s["width"], s["height"]) == ("h264", 640, 360), (f, s)
                assert int(s["nb_read_frames"]) >= 5, (f, s)

        await asyncio.gather(one(0), one(1))
        status = await rig.status()
        assert CAM_PASSWORD not in str(status)
    finally:
        await server.stop()
