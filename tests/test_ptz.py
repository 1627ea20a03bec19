"""PTZ (CtrlPTZ, GetPTZPresetList): the motion plan by construction, the servos on
gpiozero's MockFactory PWM pins, presets across a restart, digital zoom in the picture,
and motion detection that does not mistake the camera turning for an intruder."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, get_args

import av
import numpy as np
import pytest
from av.video.frame import VideoFrame

from hss_pu.hw import Board
from hss_pu.media import channel as channel_module
from hss_pu.media.channel import MediaChannel
from hss_pu.media.encoder import EncodeSettings
from hss_pu.media.sources import EmulatedSource, RawVideo, Scene, Source, SourceItem, read_timecode
from hss_pu.media.sources.base import pause
from hss_pu.media.zoom import ZoomCropper, crop_rect
from hss_pu.profiles import PtzSpec, load_profile
from hss_pu.services.ptz import PRESETS_FILE, PtzService
from hss_pu.wire import ptz
from hss_pu.wire.ptz import DIRECTIONS, Limits, Position, advance, plan
from hss_pu.wire.vd import CtrlPTZParams, PtzOp

from .support.fake_picamera2 import FakeCamera
from .support.recording_sink import RecordingSink
from .support.rig import DEVICE, MakeRig, Rig, until

LIMITS = Limits(pan=(-90, 90), tilt=(-45, 45), zoom=(1.0, 4.0))


def run(pos: Position, m: ptz.Motion, seconds: float, dt: float = 0.02) -> list[Position]:
    """The positions of ``m`` from ``pos`` every ``dt`` for ``seconds`` (or until over)."""
    out, now = [pos], 0.0
    while now < seconds - 1e-9:
        now += dt
        pos, done = advance(pos, m, dt, now)
        out.append(pos)
        if done:
            break
    return out


# --- the plan, by construction ----------------------------------------------------------------


def test_every_op_of_the_table_is_a_move_a_preset_op_or_stop() -> None:
    ops = set(get_args(PtzOp))
    assert len(ops) == 24
    moves = set(ptz.DIRECTIONS) | {f"{d}_step" for d in ptz.DIRECTIONS}
    assert ops == moves | set(ptz.PRESET_OPS) | {"stop"}


@pytest.mark.parametrize(
    ("op", "sign"),
    [("right", (1, 0, 0)), ("left", (-1, 0, 0)), ("up", (0, 1, 0)), ("down", (0, -1, 0)),
     ("upright", (1, 1, 0)), ("downleft", (-1, -1, 0)), ("zoomin", (0, 0, 1))],
)  # fmt: skip
def test_a_continuous_move_runs_at_the_asked_speed_to_the_limit(
    op: str, sign: tuple[int, int, int]
) -> None:
    start = Position(0, 0, 1.0)
    m = plan(op, 100, start, LIMITS, 0.0)
    after = run(start, m, 0.5)[-1]
    assert after.pan == pytest.approx(sign[0] * 45.0)  # 90 degrees/s at 100
    assert after.tilt == pytest.approx(sign[1] * 45.0)
    assert after.zoom == pytest.approx(1.0 + sign[2] * 1.0)  # 2x/s at 100
    end = run(start, m, 10)[-1]
    assert end == LIMITS.clamp(Position(sign[0] * 999, sign[1] * 999, 1 + sign[2] * 999))
    # Speeds by value: 0 the slowest, the default 50.
    assert ptz.speed_dps(0) == ptz.MIN_SPEED_DPS and ptz.speed_dps(None) == 47.5


def test_a_move_never_passes_the_limits_and_stops_there() -> None:
    pos = Position(80, 40, 3.9)
    for op in ("right", "up", "zoomin", "upright"):
        path = run(pos, plan(op, 100, pos, LIMITS, 0.0), 5)
        assert all(LIMITS.clamp(p) == p for p in path)
        assert path[-1] != path[0] and len(path) < 20  # over within the first ticks


def test_a_move_without_stop_ends_at_the_safety_timeout() -> None:
    wide = Limits(pan=(-180, 180), tilt=(0, 0), zoom=(1, 1))
    m = plan("right", 0, Position(), wide, 0.0)  # 5 degrees/s: 72 s to the limit
    path = run(Position(), m, 60, dt=0.1)
    assert path[-1].pan == pytest.approx(5 * ptz.SAFETY_TIMEOUT)
    assert len(path) == round(ptz.SAFETY_TIMEOUT / 0.1) + 1


def test_steps_move_by_the_value_and_values_outside_0_100_are_refused() -> None:
    assert run(Position(), plan("right_step", None, Position(), LIMITS, 0), 5)[-1].pan == 1.0
    assert run(Position(), plan("down_step", 100, Position(), LIMITS, 0), 5)[-1].tilt == -30.0
    z = run(Position(), plan("zoomin_step", 100, Position(), LIMITS, 0), 5)[-1].zoom
    assert z == pytest.approx(2.0)
    with pytest.raises(ValueError, match="outside 0-100"):
        plan("up", 101, Position(), LIMITS, 0)
    with pytest.raises(ValueError, match="not a move"):
        plan("stop", None, Position(), LIMITS, 0)


# --- the servos on MockFactory PWM pins ---------------------------------------------------


def angle_of(board: Board, axis: str) -> float:
    """The angle the servo is driven to, read from its mock pin's duty cycle."""
    assert board.pan_tilt is not None
    pin = board.pan_tilt.servos[axis].pwm_device.pin
    spec = board.profile.doc.ptz
    pulse_us = float(pin.state) * 20_000
    half = 90.0
    return (
        -half + (pulse_us - spec.min_pulse_us) / (spec.max_pulse_us - spec.min_pulse_us) * 2 * half
    )


async def servo_head(tmp_path: Path) -> tuple[Board, PtzService]:
    profile = load_profile("emulated")
    board = Board.open(profile, RecordingSink(), time.time)
    head = board.pan_tilt
    assert head is not None
    svc = PtzService(
        profile.doc.ptz, tmp_path, zoom=False, outputs=[lambda p: head.set(p.pan, p.tilt)]
    )
    svc.apply_position()
    return board, svc


async def ctrl(svc: PtzService, op: str, value: int | None = None) -> None:
    await svc.control(CtrlPTZParams(channel=0, op=op, value=value))  # type: ignore[arg-type]


async def test_servos_move_the_right_way_at_the_asked_speed_and_stop(tmp_path: Path) -> None:
    board, svc = await servo_head(tmp_path)
    try:
        assert angle_of(board, "pan") == pytest.approx(0, abs=0.1)
        assert board.pan_tilt is not None and board.pan_tilt.pulse_us("pan") == pytest.approx(1500)
        await ctrl(svc, "right", 50)  # 47.5 degrees/s
        await asyncio.sleep(0.2)
        a0, t0 = angle_of(board, "pan"), time.monotonic()
        await asyncio.sleep(0.6)
        a1, t1 = angle_of(board, "pan"), time.monotonic()
        speed = (a1 - a0) / (t1 - t0)
        assert 47.5 * 0.8 < speed < 47.5 * 1.2, speed
        await ctrl(svc, "stop")
        stopped = angle_of(board, "pan")
        await asyncio.sleep(0.3)
        assert angle_of(board, "pan") == pytest.approx(stopped, abs=0.01)
        assert svc.stops["stop"] == 1 and svc.position.pan == pytest.approx(stopped, abs=0.01)
        # Left goes the other way; up tilts up (a longer pulse).
        await ctrl(svc, "downleft", 100)
        await asyncio.sleep(0.3)
        assert angle_of(board, "pan") < stopped and angle_of(board, "tilt") < 0
        await ctrl(svc, "up", 100)  # replaces the move: pan holds, tilt rises to 45
        held = angle_of(board, "pan")
        assert await until(lambda: svc.motion is None, 3)
        assert angle_of(board, "tilt") == pytest.approx(45, abs=0.1)
        assert angle_of(board, "pan") == pytest.approx(held, abs=0.01)
        assert svc.stops["limit"] == 1
        assert board.pan_tilt.pulse_us("tilt") == pytest.approx(2000, abs=1)  # 45 of ±90
    finally:
        await svc.close()
        board.close()


async def test_the_servos_never_pass_the_profile_limits(tmp_path: Path) -> None:
    board, svc = await servo_head(tmp_path)
    seen: list[float] = []
    assert board.pan_tilt is not None
    head = board.pan_tilt
    svc.outputs.append(lambda p: seen.append(angle_of(board, "pan")))
    try:
        await ctrl(svc, "left", 100)
        assert await until(lambda: svc.motion is None, 4)
        assert min(seen) == pytest.approx(-90, abs=0.1) and seen[-1] == min(seen)
        head.set(-500, 500)  # even asked directly, the hardware layer clamps
        assert angle_of(board, "pan") == pytest.approx(-90, abs=0.1)
        assert angle_of(board, "tilt") == pytest.approx(45, abs=0.1)
    finally:
        await svc.close()
        board.close()


# --- presets ---------------------------------------------------------------------------------


async def test_presets_set_list_recall_clear_and_persist(tmp_path: Path) -> None:
    spec = PtzSpec(type="servos", pan_pin=12, tilt_pin=13, max_zoom=4.0, presets=2)
    svc = PtzService(spec, tmp_path, zoom=True, tick=0.01)
    await ctrl(svc, "right_step", 100)
    assert await until(lambda: svc.motion is None, 2)
    await ctrl(svc, "set_preset", 7)
    await ctrl(svc, "zoomin_step", 100)
    await ctrl(svc, "set_preset", 3)  # the step still under way: where it ends is stored
    assert svc.motion is not None and svc.store.presets[3] == Position(30, 0, 2.0)
    assert await until(lambda: svc.motion is None, 2)
    assert svc.presets(0) == [3, 7]
    with pytest.raises(Exception, match="all 2 presets are in use"):
        await ctrl(svc, "set_preset", 9)
    with pytest.raises(Exception, match="no preset 5"):
        await ctrl(svc, "goto_preset", 5)
    with pytest.raises(Exception, match="preset id 300"):
        await ctrl(svc, "set_preset", 300)
    await svc.close()
    # A new service (a restart) finds them in the file.
    again = PtzService(spec, tmp_path, zoom=True, tick=0.01)
    assert again.presets(0) == [3, 7] and again.position == Position()
    await ctrl(again, "goto_preset", 7)
    assert await until(lambda: again.motion is None, 2)
    assert again.position == Position(30, 0, 1.0)
    await ctrl(again, "goto_preset", 3)
    assert await until(lambda: again.motion is None, 2)
    assert again.position == Position(30, 0, 2.0)
    await ctrl(again, "clear_preset", 7)
    await ctrl(again, "clear_preset", 7)  # nothing there: logged, nothing else
    assert again.presets(0) == [3]
    await again.close()
    assert PtzService(spec, tmp_path, zoom=True).presets(0) == [3]
    # A damaged file costs the presets, not the daemon.
    (tmp_path / PRESETS_FILE).write_text("{not json")
    assert PtzService(spec, tmp_path, zoom=True).presets(0) == []


# --- digital zoom in the frame path --------------------------------------------------------


def gradient_frame(w: int, h: int) -> VideoFrame:
    yy, xx = np.mgrid[0:h, 0:w]
    y = (16 + (xx * 200 // w) + (yy * 30 // h)).astype(np.uint8)
    u = np.full((h // 2, w // 2), 128, np.uint8)
    packed = np.concatenate([y.reshape(-1), u.reshape(-1), u.reshape(-1)]).reshape(-1, w)
    return VideoFrame.from_ndarray(packed, format="yuv420p")


def test_zoom_crop_is_the_centre_scaled_back_to_the_output_size() -> None:
    w, h = 320, 180
    frame = gradient_frame(w, h)
    x, y, cw, ch = crop_rect(w, h, 2.0)
    assert (x, y, cw, ch) == (80, 46, 160, 88)
    out = ZoomCropper().apply(frame, 2.0, w, h)
    assert (out.width, out.height) == (w, h)
    got = out.to_ndarray(format="gray").astype(np.float32)
    src = frame.to_ndarray(format="gray").astype(np.float32)
    # Column j of the output is column x + j/2 of the input (the horizontal gradient).
    assert np.abs(got[h // 2, ::2] - src[h // 2, x : x + cw]).mean() < 2.0
    assert ZoomCropper().apply(frame, 1.0, w, h) is frame


# --- end to end: the daemon, the reference platform ----------------------------------------


def decode_jpeg(data: bytes) -> np.ndarray:
    ctx = av.CodecContext.create("mjpeg", "r")
    frames = ctx.decode(av.Packet(data))
    return np.asarray(frames[0].to_ndarray(format="gray"), dtype=np.float32)


async def snapshot(rig: Rig, name: str) -> np.ndarray:
    reply = await rig.call("Snapshot", {"channel": 0, "url": rig.platform.upload_url(name)})
    assert reply.err is None, reply
    up = rig.platform.uploads[-1]
    return decode_jpeg(up.path.read_bytes())


def enlarge_centre(pic: np.ndarray, zoom: float) -> np.ndarray:
    h, w = pic.shape
    x, y, cw, ch = crop_rect(w, h, zoom)
    frame = VideoFrame.from_ndarray(pic[y : y + ch, x : x + cw].astype(np.uint8), format="gray")
    return np.asarray(frame.reformat(width=w, height=h).to_ndarray(), dtype=np.float32)


async def event(rig: Rig, op: str, value: int | None = None) -> None:
    params: dict[str, Any] = {"channel": 0, "op": op} | ({} if value is None else {"value": value})
    await rig.platform.send_event(DEVICE, "CtrlPTZ", params)


async def idle(rig: Rig) -> None:
    p = rig.daemon.ptz
    assert p is not None
    await asyncio.sleep(0.1)  # the event on its way
    assert await until(lambda: p.motion is None, 5)


async def test_zoom_step_enlarges_the_centre_of_the_picture(make_rig: MakeRig) -> None:
    rig = await make_rig(size=(320, 180), fps=10, scene="static")
    before = await snapshot(rig, "before.jpg")
    await event(rig, "zoomin_step", 100)
    await idle(rig)
    assert rig.daemon.ptz is not None and rig.daemon.ptz.position.zoom == 2.0
    await asyncio.sleep(0.3)  # a frame of the new view
    after = await snapshot(rig, "after.jpg")
    changed = float(np.abs(after - before).mean())
    centre = float(np.abs(after - enlarge_centre(before, 2.0)).mean())
    print(f"zoom: differs from before by {changed:.1f}, from the centre enlarged by {centre:.1f}")
    assert changed > 8 and centre < changed / 3
    # Pan shows another part of the room.
    await event(rig, "right_step", 100)
    await idle(rig)
    await asyncio.sleep(0.3)
    panned = await snapshot(rig, "panned.jpg")
    assert float(np.abs(panned - after).mean()) > 8
    status = (await rig.status())["ptz"]
    assert (status["pan"], status["tilt"], status["zoom"]) == (30.0, 0.0, 2.0)


async def test_ctrlptz_through_the_platform_and_presets_after_a_restart(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    rig = await make_rig(size=(320, 180), fps=10)
    daemon = rig.daemon
    assert daemon.board is not None and daemon.board.pan_tilt is not None
    for op in DIRECTIONS:
        before = daemon.ptz.position if daemon.ptz else None
        await event(rig, op, 100)
        await asyncio.sleep(0.15)
        assert daemon.ptz is not None and daemon.ptz.position != before, op
        await event(rig, "stop")
    for op in [f"{d}_step" for d in DIRECTIONS]:
        before = daemon.ptz.position if daemon.ptz else None
        await event(rig, op, 50)
        await idle(rig)
        assert daemon.ptz is not None and daemon.ptz.position != before, op
    await event(rig, "right", 100)
    await idle(rig)  # at the limit
    await event(rig, "set_preset", 4)
    await event(rig, "left_step", 100)
    await idle(rig)
    await event(rig, "set_preset", 0)
    await asyncio.sleep(0.2)
    reply = await rig.call("GetPTZPresetList", {"channel": 0})
    assert reply.resp == {"presetList": [{"ptzId": 0}, {"ptzId": 4}]}
    await event(rig, "clear_preset", 0)
    await event(rig, "goto_preset", 99)  # no such preset: logged, the session goes on
    await asyncio.sleep(0.2)
    assert (await rig.call("GetPTZPresetList", {"channel": 0})).resp == {
        "presetList": [{"ptzId": 4}]
    }
    assert (await rig.call("GetPTZPresetList", {"channel": 1})).err.code == 102  # no channel 1
    assert await rig.stop() == 0
    # The same storage, a new daemon: the preset is there and goes where it was set.
    again = await make_rig(size=(320, 180), fps=10, storage=rig.storage)
    assert (await again.call("GetPTZPresetList", {"channel": 0})).resp == {
        "presetList": [{"ptzId": 4}]
    }
    await event(again, "goto_preset", 4)
    await idle(again)
    assert again.daemon.ptz is not None
    pos = again.daemon.ptz.position
    assert (pos.pan, pos.tilt) == (90.0, pos.tilt) and pos.pan == 90.0
    board = again.daemon.board
    assert board is not None and angle_of(board, "pan") == pytest.approx(90, abs=0.1)


async def test_a_profile_without_ptz_answers_missing_service(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig(profile="emulated-dual", size=(320, 180), fps=5)
    assert (await rig.call("GetCap")).resp["ptz"] is False
    r = await rig.call("GetPTZPresetList", {"channel": 0})
    assert r.err is not None and r.err.code == 101 and "not available" in r.err.msg
    await event(rig, "up")  # logged and ignored; the session stays
    assert (await rig.call("QueryTime")).err is None
    assert "event CtrlPTZ rejected: 101 PTZ control (CtrlPTZ) is not available" in caplog.text
    assert (await rig.status())["ptz"] is None


async def test_turning_the_camera_raises_no_motion_alarm(make_rig: MakeRig) -> None:
    rig = await make_rig(size=(320, 180), fps=10, scene="static")
    assert (
        await rig.set_config({"channels": {"0": {"alarms": {"motion": {"on": True}}}}})
    ).err is None
    analyser = rig.daemon.analysers[0]
    await asyncio.sleep(2.0)  # the background learnt
    # Slow turns: the picture slides a few pixels a frame, which looks like something
    # moving (a fast one changes the whole picture: a change of light to the detector).
    for op, value in (("right", 0), ("zoomin", 0)):
        await event(rig, op, value)
        await asyncio.sleep(1.5)
    await event(rig, "stop")
    await asyncio.sleep(2.0)  # still again, and analysed again
    assert [a for a in rig.platform.alarms(DEVICE) if a.type == 3] == []
    assert analyser.stats.suspended > 10 and analyser.stats.relearnt >= 1
    assert analyser.stats.analysed > 0
    # Detection works at the new view: someone walks in.
    media = rig.daemon.media[0]
    assert media.scene is not None
    media.scene.set_motion(True)
    alarm = await rig.platform.wait_alarm(DEVICE, type=3, state="start", timeout=10)
    assert alarm.channel == 0
    media.scene.set_motion(False)


# --- the cameras: picamera2's ScalerCrop, the crop for other sources, the emulated view -------


async def wait_frames(ch: MediaChannel, n: int) -> None:
    start = ch.stats.frames_encoded
    assert await until(lambda: ch.stats.frames_encoded >= start + n, 10), ch.stats


async def test_picamera2_zooms_with_scaler_crop(fake_picamera2: type[FakeCamera]) -> None:
    fake_picamera2.yuv = [np.full((270, 320), 100, np.uint8)]
    s = EncodeSettings(320, 180, 30, 300_000, 10, "libx264")
    ch = MediaChannel(0, "picamera2", s, time.time)
    await ch.start()
    try:
        await wait_frames(ch, 3)
        cam = fake_picamera2.instances[0]
        assert cam.controls == []  # unzoomed: the sensor's full crop, untouched
        ch.set_view(Position(0, 0, 2.0))
        assert await until(lambda: cam.controls, 3)
        # The centred half of the 4608x2592 sensor; the channel does not crop again.
        assert cam.controls == [{"ScalerCrop": (1152, 648, 2304, 1296)}]
        assert ch._cropper is None
    finally:
        await ch.stop()


class GradientSource(Source):
    """A camera we decode (as V4L2, a file, RTSP): a fixed gradient picture."""

    name = "gradient"

    def __init__(self, settings: EncodeSettings, stop: threading.Event) -> None:
        self.settings, self.stop = settings, stop
        self.frame = gradient_frame(settings.width, settings.height)
        self.k = 0

    def open(self) -> None:
        pass

    def read(self) -> SourceItem | None:
        if pause(self.stop, 1 / self.settings.fps):
            return None
        self.k += 1
        return RawVideo(self.frame, self.k * 3000, time.time())


async def test_a_decoded_camera_is_zoomed_by_a_crop_in_the_frame_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = EncodeSettings(320, 180, 30, 300_000, 10, "libx264")
    monkeypatch.setattr(
        channel_module,
        "make_source",
        lambda spec, settings, clock, stop, **kw: GradientSource(settings, stop),
    )
    ch = MediaChannel(0, "v4l2:/dev/video9", s, time.time)
    await ch.start()
    try:
        await wait_frames(ch, 2)
        before = decode_jpeg(await ch.snapshot_jpeg())
        ch.set_view(Position(0, 0, 2.0))
        await wait_frames(ch, 2)
        after = decode_jpeg(await ch.snapshot_jpeg())
    finally:
        await ch.stop()
    changed = float(np.abs(after - before).mean())
    centre = float(np.abs(after - enlarge_centre(before, 2.0)).mean())
    assert changed > 10 and centre < 2.0, (changed, centre)


def test_the_emulated_pattern_moves_under_the_codes() -> None:
    s = EncodeSettings(320, 180, 30, 300_000, 10, "libx264")
    scene = Scene("pattern")
    src = EmulatedSource(s, time.time, threading.Event(), realtime=False, scene=scene)
    src.open()
    home = src.draw(0, 1.8e9).to_ndarray(format="gray").astype(np.float32)
    scene.set_view(20.0, -10.0, 1.5)
    src.open()  # the same frame of the pattern again
    turned = src.draw(0, 1.8e9).to_ndarray(format="gray").astype(np.float32)
    assert read_timecode(turned) == read_timecode(home) == 1.8e9  # the codes stay put
    band = 40
    assert float(np.abs(turned[band:] - home[band:]).mean()) > 10
