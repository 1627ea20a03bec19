"""Flips and OSD (SetConfig image/osd) applied to the picture before it is encoded."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import types
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from hss_pu.media import font
from hss_pu.media.channel import MediaChannel
from hss_pu.media.encoder import EncodeSettings, VideoEncoder
from hss_pu.media.packets import EncodedPacket
from hss_pu.media.picture import OSD_BG, OSD_FG, Painter, Picture, osd_scale, planes
from hss_pu.media.sources import EmulatedSource, RawVideo, iter_items, read_timecode
from hss_pu.media.tsmux import mux_to_file

from .support.collector import PacketCollector
from .support.fake_picamera2 import FakeCamera

W, H, FPS = 320, 180, 30


def _settings(**kw: Any) -> EncodeSettings:
    return EncodeSettings(W, H, FPS, 600_000, FPS, "libx264", **kw)


def _decode(pkts: list[EncodedPacket]) -> list[av.VideoFrame]:
    ctx = av.CodecContext.create("h264", "r")
    return [f for p in pkts for f in ctx.decode(av.Packet(p.data))] + ctx.decode(None)


def _luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="gray")


async def _packets(ch: MediaChannel, n: int) -> list[EncodedPacket]:
    sub = PacketCollector(ch.hub)
    try:
        out: list[EncodedPacket] = []
        while len(out) < n:
            p = await asyncio.wait_for(sub.get(), 2.0)
            if p.kind == "video":
                out.append(p)
        return out
    finally:
        sub.close()


def _osd_box(p: Picture, luma: np.ndarray) -> np.ndarray:
    """Where the painter put the OSD box, as found in a (decoded) luma plane."""
    painter = Painter(p, luma.shape[1], luma.shape[0])
    assert painter._box is not None
    x, y, box = painter._box
    return luma[y : y + box.shape[0], x : x + box.shape[1]]


def _expected_box(p: Picture) -> np.ndarray:
    painter = Painter(p, W, H)
    assert painter._box is not None
    return painter._box[2]


def test_font_draws_ascii_and_folds_the_rest() -> None:
    assert font.undrawable("Front door 12:30 ~{|}") == ""
    assert font.fold("Küche ﬁ \uff21") == "Kuche fi A"
    assert font.undrawable("前门 door 前") == "前门"
    line = font.render("Hi", 2, 235, 16)
    assert line.shape == (16, 24)
    assert set(np.unique(line)) == {16, 235}
    # "H": two full columns, the bar in the middle row.
    assert (line[:14:2, 0] == 235).all() and (line[6, :10] == 235).all()


def test_painter_flips_the_planes_and_leaves_a_decoder_frame_alone() -> None:
    ramp = np.tile(np.arange(W, dtype=np.uint8), (H * 3 // 2, 1))
    ramp[:H] += np.arange(H, dtype=np.uint8)[:, None] // 4
    frame = av.VideoFrame.from_ndarray(ramp, "yuv420p")
    y, u, v = (a.copy() for a in planes(frame))
    both = Painter(Picture(horflip=True, verflip=True), W, H)
    out = both.apply(frame, writable=False)
    assert out is not frame and (planes(frame)[0] == y).all()  # the source's frame untouched
    oy, ou, ov = planes(out)
    assert (
        (oy == y[::-1, ::-1]).all() and (ou == u[::-1, ::-1]).all() and (ov == v[::-1, ::-1]).all()
    )
    mirrored = Painter(Picture(horflip=True), W, H).apply(frame, writable=True)
    assert (planes(mirrored)[0] == y[:, ::-1]).all()
    osd = Painter(Picture(osd_text="x"), W, H)
    assert osd.apply(frame, writable=True) is frame  # drawn in place: the source's own frame
    assert osd.apply(frame, writable=False) is not frame
    assert not Painter(Picture(), W, H).active


@pytest.mark.parametrize("pos", ["topleft", "topright", "bottomleft", "bottomright"])
def test_osd_is_burned_in_at_its_corner_and_survives_encoding(pos: str) -> None:
    p = Picture(osd_text="Front door 1", osd_font=16, osd_pos=pos)  # type: ignore[arg-type]
    src = EmulatedSource(_settings(), lambda: 1.8e9, threading.Event(), realtime=False)
    src.open()
    enc = VideoEncoder(_settings())
    painter = Painter(p, W, H)
    pkts = []
    for item in iter_items(src, 3):
        assert isinstance(item, RawVideo)
        pkts += enc.encode(painter.apply(item.frame, writable=True), item.pts, 0.0)
    luma = _luma(_decode(pkts + enc.flush())[-1])
    want = _expected_box(p)
    got = _osd_box(p, luma)
    assert got.shape == want.shape
    # Every pixel of the box within the encoder's error of what was drawn: text and all.
    assert np.mean(np.abs(got.astype(int) - want) < 40) > 0.97
    assert (want == OSD_FG).sum() > 100  # there was text
    x_left = pos.endswith("left")
    y_top = pos.startswith("top")
    scale = osd_scale(16, H)
    assert scale == 2
    x, y = Painter(p, W, H)._box[:2]  # type: ignore[index]
    assert (x < W // 2) == x_left and (y < H // 2) == y_top


def test_osd_too_long_for_the_frame_is_cut_not_wrapped() -> None:
    p = Picture(osd_text="x" * 64, osd_font=32)
    box = _expected_box(p)
    assert box.shape[1] <= W and box.shape[0] < H // 2
    assert (box[:, -2:] == OSD_BG).all()


async def test_flips_and_osd_change_on_a_running_channel_without_a_restart() -> None:
    ch = MediaChannel(0, "emulated", _settings(), time.time)
    await ch.start()
    try:
        before = await _packets(ch, 3)
        thread = ch._thread
        flipped = _settings(picture=Picture(horflip=True, verflip=True))
        await ch.reconfigure(flipped)
        after = await _packets(ch, FPS + 3)
        assert ch._thread is thread and ch.settings == flipped  # the same run carried on
        ch.request_keyframe()
        osd = _settings(picture=Picture(verflip=True, osd_text="CAM 1", osd_pos="topright"))
        await ch.reconfigure(osd)
        last = await _packets(ch, FPS + 3)
        jpeg_frame = ch._latest
    finally:
        await ch.stop()
    assert read_timecode(_luma(_decode(before)[0])) is not None
    frames = _decode(after)
    # Upside down and mirrored: the clock reads back once the picture is turned round.
    turned = [read_timecode(_luma(f)[::-1, ::-1]) for f in frames[-5:]]
    assert all(t is not None for t in turned), turned
    assert read_timecode(_luma(frames[-1])) is None
    lum = _luma(_decode(last)[-1])
    assert read_timecode(lum[::-1]) is not None  # only upside down now
    assert (
        np.mean(np.abs(_osd_box(osd.picture, lum).astype(int) - _expected_box(osd.picture)) < 40)
        > 0.97
    )
    assert jpeg_frame is not None  # snapshots see the painted frame
    assert read_timecode(_luma(jpeg_frame)[::-1]) is not None


async def test_a_file_passed_through_is_decoded_once_it_must_be_flipped(tmp_path: Path) -> None:
    s = _settings()
    src = EmulatedSource(s, lambda: 1.8e9, threading.Event(), realtime=False)
    src.open()
    enc = VideoEncoder(s)
    pkts = []
    for k, item in enumerate(iter_items(src, 30)):
        assert isinstance(item, RawVideo)
        pkts += enc.encode(item.frame, item.pts, 1.8e9 + k / FPS)
    pkts += enc.flush()
    assert enc.info is not None
    clip = tmp_path / "clip.ts"
    mux_to_file(clip, pkts, enc.info)
    ch = MediaChannel(0, f"file:{clip}", s, time.time)
    await ch.start()
    try:
        await _packets(ch, 3)
        assert ch.stats.passthrough  # same size and rate: passed through as it is
        await ch.reconfigure(dataclasses.replace(s, picture=Picture(horflip=True)))
        await asyncio.sleep(0.1)
        got = await _packets(ch, FPS + 3)
        assert not ch.stats.passthrough and ch.stats.frames_encoded > 0
    finally:
        await ch.stop()
    luma = _luma(_decode(got)[-1])
    assert read_timecode(luma) is None and read_timecode(luma[:, ::-1]) is not None


# --- picamera2: flips by libcamera's transform, the OSD by pre_callback -----------------


def test_picamera2_flips_in_the_camera_and_draws_the_osd_before_its_encoder(
    fake_picamera2: type[FakeCamera],
) -> None:
    from hss_pu.media.sources import PiCameraSource

    p = Picture(horflip=True, osd_text="Porch", osd_pos="topright")
    s = EncodeSettings(W, H, FPS, 600_000, FPS, "picamera2-h264", picture=p)
    src = PiCameraSource(s, time.time, threading.Event())
    src.open()
    cam = fake_picamera2.instances[0]
    t = cam.config["transform"]
    assert (t.hflip, t.vflip) == (1, 0)
    assert src.camera_flips and cam.pre_callback is not None
    stride = 384  # libcamera pads rows
    buf = np.full((H * 3 // 2, stride), 100, np.uint8)
    cam.pre_callback(types.SimpleNamespace(array=buf))
    src.close()
    want = _expected_box(p)
    x, y, _ = Painter(p, W, H)._box  # type: ignore[misc]
    assert (buf[y : y + want.shape[0], x : x + want.shape[1]] == want).all()
    assert (buf[:H, :x] == 100).all()  # nothing flipped here: the camera did it
    assert (buf[H : H + 20, (x // 2) : (x + want.shape[1]) // 2] == 128).any()  # grey chroma
