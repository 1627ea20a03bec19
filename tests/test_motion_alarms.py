"""Motion (type 3) and person (type 11) detection on the emulated camera's scene, fed the
way the channel feeds it, reported to a recording alarm sink through the event loop.

Most runs feed the scene's frames faster than real time (60 s of a static room takes a
fraction of that; the waiting would add nothing); one runs the real daemon's camera in
real time, and the passthrough and picamera2 paths get theirs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pytest

from hss_pu import config as config_mod
from hss_pu.media import people as people_mod
from hss_pu.media.analysis import MotionAnalyser, parse_alarm_config
from hss_pu.media.channel import MediaChannel
from hss_pu.media.encoder import EncodeSettings, VideoEncoder
from hss_pu.media.people import people_available
from hss_pu.media.picture import Picture
from hss_pu.media.sources import EmulatedSource, Scene
from hss_pu.media.sources.picam import lores_size
from hss_pu.schema import SchemaError

from .support.fake_picamera2 import FakeCamera
from .support.rig import Rig, daemon_config, until

FPS = 15
T0 = 1_800_000_000.0
ON = {"motion": {"on": True, "sensitivity": 50}}


@dataclass
class Sink:
    """A recording AlarmSink (until the alarm service lands): (kind, active, at)."""

    calls: list[tuple[str, bool, float]] = field(default_factory=list)
    loop_thread: list[int] = field(default_factory=list)

    def state(self, channel: int, kind: str, active: bool, at: float) -> None:
        assert channel == 0
        self.loop_thread.append(threading.get_ident())
        self.calls.append((kind, active, at))

    def kinds(self, kind: str = "motion") -> list[bool]:
        return [a for k, a, _ in self.calls if k == kind]


class Feeder:
    """The static room at 320x180@15 fed to an analyser with synthetic capture times."""

    def __init__(self, analyser: MotionAnalyser, size: tuple[int, int] = (320, 180)) -> None:
        self.scene = Scene("static")
        s = EncodeSettings(size[0], size[1], FPS, 300_000, FPS, "libx264")
        self.src = EmulatedSource(s, time.time, threading.Event(), realtime=False, scene=self.scene)
        self.src.open()
        self.analyser = analyser
        self.k = 0

    @property
    def now(self) -> float:
        return T0 + self.k / FPS

    def run(self, seconds: float, every: Callable[[int], None] | None = None) -> None:
        """Feed ``seconds`` of frames, the analyser keeping up (no drops)."""
        for _ in range(round(seconds * FPS)):
            if every is not None:
                every(self.k)
            frame = self.src.draw(self.k, self.now)
            self.analyser.frame(frame, self.now)
            assert self.analyser.wait_idle()
            self.k += 1


async def _feed(f: Feeder, seconds: float, every: Callable[[int], None] | None = None) -> None:
    await asyncio.to_thread(f.run, seconds, every)
    await asyncio.sleep(0.01)  # the bridge's calls run on the loop


@pytest.fixture
async def sink_and_feeder() -> Any:
    sink = Sink()
    a = MotionAnalyser(0, sink, lambda: T0, config=parse_alarm_config(ON))
    try:
        yield sink, Feeder(a)
    finally:
        await a.close()


async def test_an_object_crossing_the_scene_gives_motion_start_then_end(
    sink_and_feeder: tuple[Sink, Feeder],
) -> None:
    sink, f = sink_and_feeder
    await _feed(f, 3)  # settle on the room
    f.scene.set_motion(True)
    on_at = f.now
    await _feed(f, 3)
    f.scene.set_motion(False)
    off_at = f.now
    await _feed(f, 3)
    assert sink.kinds() == [True, False]
    (_, _, start), (_, _, end) = sink.calls
    assert on_at <= start <= on_at + 0.5  # the frame where it started: its capture time
    assert off_at <= end <= off_at + 0.5
    assert set(sink.loop_thread) == {threading.get_ident()}  # called on the event loop
    assert f.analyser.stats.analysed == pytest.approx(9 * 5, abs=3)  # 5 a second, not 15


async def test_a_static_scene_for_60_s_gives_none(sink_and_feeder: tuple[Sink, Feeder]) -> None:
    sink, f = sink_and_feeder
    f.analyser.apply({"motion": {"on": True, "sensitivity": 100}})
    await _feed(f, 60)
    assert sink.calls == []
    assert f.analyser.stats.analysed >= 290 and f.analyser.stats.dropped == 0


async def test_sudden_global_brightness_changes_give_none(
    sink_and_feeder: tuple[Sink, Feeder],
) -> None:
    sink, f = sink_and_feeder
    f.analyser.apply({"motion": {"on": True, "sensitivity": 100}})
    await _feed(f, 2)
    lux = f.scene.lux
    steps: list[tuple[Callable[[bool], None], bool]] = [
        (f.scene.set_lights, True),  # the lamp on
        (f.scene.set_lights, False),
        (f.scene.set_dark, True),  # night falls
        (f.scene.set_ir, True),  # the IR LEDs and IR-cut switch
        (f.scene.set_ir, False),
        (f.scene.set_dark, False),
    ]
    for control, on in steps:
        control(on)
        await _feed(f, 2)
    assert sink.calls == []
    f.scene.set_dark(True)
    assert f.scene.lux < 1 < lux  # what the LED service reads
    # Not blind afterwards: someone walking in the dark (under IR) is seen at once.
    f.scene.set_ir(True)
    await _feed(f, 1)
    f.scene.set_motion(True)
    start = f.now
    await _feed(f, 2)
    assert sink.kinds() == [True] and sink.calls[0][2] - start < 0.6


async def test_a_region_excluding_the_moving_object_gives_none(
    sink_and_feeder: tuple[Sink, Feeder],
) -> None:
    sink, f = sink_and_feeder
    # The walker is in the lower two thirds; the region is the top quarter.
    f.analyser.apply({"motion": {"on": True, "sensitivity": 100, "regions": [[0, 0, 1, 0.25]]}})
    f.scene.set_motion(True)
    await _feed(f, 6)
    assert sink.calls == []
    # The same walk in a region that holds it.
    f.analyser.apply({"motion": {"on": True, "regions": [[0, 0.4, 1, 0.6]]}})
    await _feed(f, 2)
    assert sink.kinds() == [True]


async def test_switching_motion_off_ends_an_active_alarm_and_costs_nothing_after(
    sink_and_feeder: tuple[Sink, Feeder],
) -> None:
    sink, f = sink_and_feeder
    f.scene.set_motion(True)
    await _feed(f, 3)
    assert sink.kinds() == [True]
    f.analyser.apply({"motion": {"on": False}})
    await asyncio.to_thread(f.analyser.wait_idle)
    await asyncio.sleep(0.01)
    assert sink.kinds() == [True, False] and sink.calls[1][2] == T0  # at: the clock
    seen = f.analyser.stats.analysed
    await _feed(f, 2)
    assert f.analyser.stats.analysed == seen and sink.kinds() == [True, False]


async def test_a_clock_set_back_does_not_stop_the_analysis(
    sink_and_feeder: tuple[Sink, Feeder],
) -> None:
    sink, f = sink_and_feeder
    await _feed(f, 2)
    seen = f.analyser.stats.analysed
    f.k -= 3600 * FPS  # Settime: capture times an hour back
    await _feed(f, 2)
    assert f.analyser.stats.analysed >= seen + 9
    assert sink.calls == []


def test_alarm_config_is_validated() -> None:
    cfg = parse_alarm_config({"motion": {"on": True, "sensitivity": 70, "regions": [[0, 0, 1, 1]]}})
    assert cfg.motion and cfg.sensitivity == 70 and cfg.regions == ((0.0, 0.0, 1.0, 1.0),)
    assert not parse_alarm_config({}).motion
    for bad, key in (
        ({"motion": {"on": "yes"}}, "alarms.motion.on"),
        ({"motion": {"sensitivity": 101}}, "alarms.motion.sensitivity"),
        ({"motion": {"regions": [[0, 0, 2, 1]]}}, "alarms.motion.regions"),
        ({"body": {"sensitivity": True}}, "alarms.body.sensitivity"),
        ({"motion": []}, "alarms.motion"),
    ):
        with pytest.raises(ValueError, match=key):
            parse_alarm_config(bad)


# --- passthrough: key frames only ---------------------------------------------------------


async def test_passthrough_key_frames_are_decoded_and_analysed() -> None:
    sink = Sink()
    a = MotionAnalyser(0, sink, lambda: T0, config=parse_alarm_config(ON))
    f = Feeder(a)
    gop = FPS // 3  # 3 key frames a second
    enc = VideoEncoder(EncodeSettings(320, 180, FPS, 300_000, gop, "libx264"))

    def run(seconds: float) -> None:
        for _ in range(round(seconds * FPS)):
            frame = f.src.draw(f.k, f.now)
            for pkt in enc.encode(frame, f.k * 6000, f.now):
                a.keyframe(pkt)
                assert a.wait_idle()
            f.k += 1

    try:
        await asyncio.to_thread(run, 4)
        f.scene.set_motion(True)
        await asyncio.to_thread(run, 3)
        f.scene.set_motion(False)
        await asyncio.to_thread(run, 4)
        await asyncio.sleep(0.01)
    finally:
        await a.close()
    assert sink.kinds() == [True, False]
    assert a.stats.decode_errors == 0
    assert a.stats.analysed == pytest.approx(11 * 3, abs=3)  # key frames only


# --- the real daemon's camera in real time ----------------------------------------------


@pytest.mark.rig(scene="static")
async def test_the_daemons_emulated_camera_gives_motion_in_real_time(rig: Rig) -> None:
    media = rig.daemon.media[0]
    assert media.scene is not None and media.scene.kind == "static"
    sink = Sink()
    a = MotionAnalyser(0, sink, rig.daemon.clock.now, config=parse_alarm_config(ON))
    media.attach_analysis(a)
    try:
        assert await until(lambda: a.stats.analysed >= 8, 5)  # ~1.5 s of a quiet room
        media.scene.set_lights(True)  # and a sudden brightness step, in real time
        seen = a.stats.analysed
        assert await until(lambda: a.stats.analysed >= seen + 6, 5)
        assert sink.calls == []
        media.scene.set_motion(True)
        on_at = rig.daemon.clock.now()
        assert await until(lambda: sink.kinds() == [True], 3)
        media.scene.set_motion(False)
        assert await until(lambda: sink.kinds() == [True, False], 3)
    finally:
        media.attach_analysis(None)
        await a.close()
    start = sink.calls[0][2]
    assert on_at - 0.1 <= start <= on_at + 0.6
    assert a.stats.dropped <= 2 and a.stats.analysed > 15  # the worker keeps up


class Tap:
    """A FrameTap that keeps the luma planes it is shown."""

    def __init__(self) -> None:
        self.planes: list[np.ndarray] = []

    def frame(self, frame: Any, capture_time: float) -> None:
        self.planes.append(frame.to_ndarray(format="gray"))

    def luma(self, plane: np.ndarray, capture_time: float) -> None:
        raise AssertionError("no lores stream here")

    def keyframe(self, pkt: Any) -> None:
        raise AssertionError("this camera is encoded, not passed through")


async def test_analysis_sees_the_picture_as_viewers_do_flipped() -> None:
    """Regions are drawn on the picture the platform shows: the tap gets it flipped."""
    s = EncodeSettings(320, 180, FPS, 300_000, FPS, "libx264", picture=Picture(horflip=True))
    ch = MediaChannel(0, "emulated", s, time.time, scene=Scene("static"))
    tap = Tap()
    ch.attach_analysis(tap)
    await ch.start()
    try:
        assert await until(lambda: len(tap.planes) >= 3, 5)
    finally:
        await ch.stop()
    y = tap.planes[-1].astype(float)
    # The room's bright window is drawn at x 0.62-0.9, y 0.12-0.4: flipped, on the left.
    rows = slice(int(0.15 * 180), int(0.35 * 180))
    left = y[rows, int(0.12 * 320) : int(0.36 * 320)].mean()
    right = y[rows, int(0.64 * 320) : int(0.88 * 320)].mean()
    assert left > right + 30


# --- picamera2: the ISP's lores stream -----------------------------------------------------


def _yuv420(y: np.ndarray) -> np.ndarray:
    h, w = y.shape
    return np.concatenate([y.reshape(-1), np.full(h * w // 2, 128, np.uint8)]).reshape(-1, w)


@pytest.mark.parametrize("encoder", ["picamera2-h264", "libx264"])
async def test_picamera2_lores_feeds_the_analyser(
    fake_picamera2: type[FakeCamera], encoder: str
) -> None:
    rng = np.random.default_rng(1)
    room = rng.integers(60, 200, (240, 416), dtype=np.uint8)
    fake_picamera2.lores = [_yuv420(room)] * 2
    if encoder == "libx264":
        fake_picamera2.yuv = [np.zeros((1080, 1280), np.uint8)]
    else:
        fake_picamera2.h264 = [(b"\x00\x00\x00\x01\x65\x88", True)] * 200
    fake_picamera2.fps = 30
    sink = Sink()
    a = MotionAnalyser(0, sink, time.time, config=parse_alarm_config(ON))
    planes: list[tuple[int, ...]] = []
    real_luma = a.luma

    def luma(plane: np.ndarray, capture_time: float) -> None:
        planes.append(plane.shape)
        real_luma(plane, capture_time)

    a.luma = luma  # type: ignore[method-assign]
    s = EncodeSettings(1280, 720, 30, 1_000_000, 30, encoder)
    ch = MediaChannel(0, "picamera2", s, time.time)
    ch.attach_analysis(a)
    await ch.start()
    try:
        assert await until(lambda: a.stats.analysed >= 3, 5)
    finally:
        await ch.stop()
        await a.close()
    cam = fake_picamera2.instances[0]
    assert cam.config["lores"] == {"size": lores_size(1280, 720), "format": "YUV420"}
    assert lores_size(1280, 720) == (416, 240) and lores_size(640, 480) == (320, 240)
    assert set(planes) == {(240, 416)}  # the lores Y plane, never the main stream
    # Read at ~10 a second (every 3rd frame at 30 fps), not mapped for every frame.
    assert 3 <= len(planes) <= ch.stats.frames_captured // 3 + 2
    assert (cam.post_callback is not None) == (encoder == "picamera2-h264")
    assert sink.calls == [] and a.stats.errors == 0


async def test_picamera2_refusing_lores_still_runs_and_is_analysed_from_the_main_stream(
    fake_picamera2: type[FakeCamera],
) -> None:
    fake_picamera2.refuse_lores = True
    fake_picamera2.yuv = [np.zeros((270, 320), np.uint8)]
    s = EncodeSettings(320, 180, 30, 300_000, 30, "libx264")
    ch = MediaChannel(0, "picamera2", s, time.time)
    tap = Tap()
    ch.attach_analysis(tap)
    await ch.start()
    try:
        assert await until(lambda: len(tap.planes) >= 3, 5)  # frame(), not luma()
    finally:
        await ch.stop()
    assert "lores" not in fake_picamera2.instances[0].config
    assert tap.planes[0].shape == (180, 320)


async def test_picamera2_without_analysis_configures_no_lores(
    fake_picamera2: type[FakeCamera],
) -> None:
    fake_picamera2.yuv = [np.zeros((270, 320), np.uint8)]
    s = EncodeSettings(320, 180, 30, 300_000, 30, "libx264")
    ch = MediaChannel(0, "picamera2", s, time.time)
    await ch.start()
    await ch.stop()
    assert "lores" not in fake_picamera2.instances[0].config


# --- people (type 11) ---------------------------------------------------------------------


async def test_without_opencv_people_are_unavailable_and_motion_still_works(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    people_mod._cv2.cache_clear()
    try:
        assert not people_available()
        with pytest.raises(RuntimeError, match="OpenCV 4"):
            people_mod.PeopleDetector()
        sink = Sink()
        cfg = {**ON, "body": {"on": True}}
        a = MotionAnalyser(0, sink, lambda: T0, config=parse_alarm_config(cfg))
        f = Feeder(a)
        try:
            await _feed(f, 2)
            f.scene.set_motion(True)
            with caplog.at_level(logging.WARNING, "hss_pu.media.analysis"):
                await _feed(f, 3)
        finally:
            await a.close()
        assert sink.kinds() == [True] and sink.kinds("body") == []
        assert a.stats.people_calls == 0
        assert [r.message for r in caplog.records].count(
            "channel 0: person detection unavailable (no OpenCV 4)"
        ) == 1
    finally:
        people_mod._cv2.cache_clear()


needs_opencv = pytest.mark.skipif(
    not people_available(), reason="OpenCV 4 not installed (the optional extra 'people')"
)


@needs_opencv
async def test_a_person_walking_gives_body_after_motion_at_a_bounded_rate() -> None:
    sink = Sink()
    cfg = {**ON, "body": {"on": True, "sensitivity": 50}}
    a = MotionAnalyser(0, sink, lambda: T0, config=parse_alarm_config(cfg), people_rate=2.0)
    f = Feeder(a, size=(640, 360))
    try:
        await _feed(f, 10)  # a quiet room, 10 s: the person detector is never run
        assert a.stats.people_calls == 0
        f.scene.set_motion(True)
        await _feed(f, 4)
        calls = a.stats.people_calls
        f.scene.set_motion(False)
        await _feed(f, 3)
    finally:
        await a.close()
    kinds = [(k, on) for k, on, _ in sink.calls]
    assert kinds[0] == ("motion", True)
    assert ("body", True) in kinds and kinds.index(("body", True)) > 0
    assert sorted(kinds[-2:]) == [("body", False), ("motion", False)]
    assert 1 <= calls <= 4 * 2 + 1  # at most 2 a second while motion is on
    assert a.stats.people_calls <= calls + 2  # and none once it has ended


@needs_opencv
def test_the_person_detector_finds_the_walker_and_not_the_empty_room() -> None:
    scene = Scene("static")
    s = EncodeSettings(640, 360, FPS, 300_000, FPS, "libx264")
    src = EmulatedSource(s, time.time, threading.Event(), realtime=False, scene=scene)
    src.open()
    det = people_mod.PeopleDetector()
    scene.set_motion(True)
    hits = 0
    for k in range(10, 60, 5):
        frame = src.draw(k, T0)
        g = frame.reformat(width=426, height=240, format="gray").to_ndarray()
        hits += bool(det.detect(g, people_mod.score_threshold(50)))
    assert hits >= 8
    scene.set_motion(False)
    empty = src.draw(100, T0).reformat(width=426, height=240, format="gray").to_ndarray()
    assert det.detect(empty, people_mod.score_threshold(100)) == []


def test_person_score_thresholds() -> None:
    assert people_mod.score_threshold(0) == 1.5
    assert people_mod.score_threshold(50) == pytest.approx(0.5)
    assert people_mod.score_threshold(100) == pytest.approx(0.0)


# --- the scene and its config -------------------------------------------------------------


def test_scene_controls_and_light_level() -> None:
    s = Scene("static")
    day = s.lux
    s.set_lights(True)
    assert s.lux > day and s.gain == 1.0
    s.set_lights(False)
    s.set_dark(True)
    assert s.lux < 1 and s.gain < 0.1 and s.noise > 4
    changes = s.changes
    s.set_dark(True)  # no change, no redraw
    assert s.changes == changes
    with pytest.raises(ValueError, match="scene 'x'"):
        Scene("x")


def test_camera_scene_config(tmp_path: Any) -> None:
    doc = daemon_config("https://platform.example", tmp_path)
    assert doc.camera.scene == "pattern"  # the moving pattern stays the default
    data = msgspec.to_builtins(doc)
    data["camera"]["scene"] = "static"
    assert config_mod.parse_config_doc(data).camera.scene == "static"
    data["camera"]["scene"] = "dark"
    with pytest.raises(SchemaError, match=r"camera\.scene"):
        config_mod.parse_config_doc(data)
    clip = tmp_path / "clip.ts"
    clip.write_bytes(b"")
    data["camera"].update(scene="static", source=f"file:{clip}")
    data["device"]["password"] = "x"
    with pytest.raises(SchemaError, match=r"camera\.scene: applies to the emulated camera only"):
        config_mod.make_config(config_mod.parse_config_doc(data))


@needs_opencv
async def test_body_alone_looks_for_people_without_reporting_motion() -> None:
    sink = Sink()
    cfg = {"motion": {"on": False}, "body": {"on": True}}
    a = MotionAnalyser(0, sink, lambda: T0, config=parse_alarm_config(cfg))
    f = Feeder(a, size=(640, 360))
    try:
        await _feed(f, 2)
        f.scene.set_motion(True)
        await _feed(f, 3)
        assert a.active and sink.kinds() == [] and sink.kinds("body") == [True]
        a.apply({"body": {"on": False}})  # nothing on: body ends now, detection stops
        await asyncio.to_thread(a.wait_idle)
        await asyncio.sleep(0.01)
    finally:
        await a.close()
    assert sink.kinds("body") == [True, False] and sink.calls[-1][2] == T0
    assert not a.active


@pytest.mark.parametrize("gap_frames", [1, 2, 3, 4, 6])
async def test_night_then_the_ir_leds_a_moment_later_give_none(gap_frames: int) -> None:
    """In the daemon the IR LEDs switch on a refresh (~0.25 s) after night falls: the
    noisy frames between must not make the IR switch count as motion under way."""
    sink = Sink()
    a = MotionAnalyser(0, sink, lambda: T0, config=parse_alarm_config(ON))
    f = Feeder(a)
    try:
        await _feed(f, 3)
        f.scene.set_dark(True)
        await _feed(f, gap_frames / FPS)
        f.scene.set_ir(True)
        await _feed(f, 4)
    finally:
        await a.close()
    assert sink.calls == []


@pytest.mark.parametrize("encoder", ["picamera2-h264", "libx264"])
async def test_picamera2_lux_reaches_the_channel_for_the_ir_leds(
    fake_picamera2: type[FakeCamera], encoder: str
) -> None:
    """libcamera's ``Lux`` metadata is the light level the IR LEDs follow on a Pi."""
    fake_picamera2.lores = [_yuv420(np.full((240, 416), 90, np.uint8))] * 2
    if encoder == "libx264":
        fake_picamera2.yuv = [np.zeros((1080, 1280), np.uint8)]
    else:
        fake_picamera2.h264 = [(b"\x00\x00\x00\x01\x65\x88", True)] * 200
    fake_picamera2.fps = 30
    fake_picamera2.lux = 3.5
    a = MotionAnalyser(0, Sink(), time.time, config=parse_alarm_config(ON))
    ch = MediaChannel(
        0, "picamera2", EncodeSettings(1280, 720, 30, 1_000_000, 30, encoder), time.time
    )
    ch.attach_analysis(a)
    assert ch.lux is None
    await ch.start()
    try:
        assert await until(lambda: ch.lux == 3.5, 5)
    finally:
        await ch.stop()
        await a.close()
