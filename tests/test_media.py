"""Capture, encode once, mux: emulated/file/v4l2/rtsp/picamera2 sources, x264, TS.

One emulated channel runs for ~2.5 s in real time (module fixture) and most checks read
what it produced; the rest drive sources and encoders without pacing to stay fast.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest

from hss_pu.config import CameraSection
from hss_pu.media.channel import ChannelStats, MediaChannel, encode_jpeg, jpeg_size
from hss_pu.media.encoder import EncodeSettings, MediaError, VideoEncoder
from hss_pu.media.h264 import (
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    ParameterSetCache,
    nal_types,
    parameter_sets,
    split_nals,
)
from hss_pu.media.packets import EncodedPacket, StreamInfo
from hss_pu.media.sources import (
    PICAMERA2_MISSING,
    DemuxSource,
    EmulatedSource,
    RawVideo,
    iter_items,
    read_timecode,
)
from hss_pu.media.tsmux import TsMuxer, mux_to_file
from hss_pu.profiles import load_profile

from .support.collector import PacketCollector
from .support.fake_picamera2 import FakeCamera

FPS = 30
RUN_SECONDS = 2.5
KEY_REQUEST_AT = 1.4  # s into the run


def _ffprobe(path: Path, *args: str) -> str:
    return subprocess.run(
        ["ffprobe", "-v", "error", *args, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def _decode_errors(path: Path) -> str:
    r = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.stderr.strip() + ("" if r.returncode == 0 else f" (rc {r.returncode})")


def _video(pkts: list[EncodedPacket]) -> list[EncodedPacket]:
    return [p for p in pkts if p.kind == "video"]


def _encode_emulated(
    settings: EncodeSettings, frames: int, *, t0: float = 1.7e9
) -> tuple[list[EncodedPacket], StreamInfo, list[float]]:
    """Emulated frames through x264 as fast as possible, on a fake clock at exactly fps."""
    ticks = iter(range(10**9))

    def clock() -> float:
        return t0 + next(ticks) / settings.fps

    src = EmulatedSource(settings, clock, threading.Event(), label="CH0", realtime=False)
    src.open()
    enc = VideoEncoder(settings)
    pkts: list[EncodedPacket] = []
    times = []
    for item in iter_items(src, frames):
        assert isinstance(item, RawVideo)
        times.append(item.capture_time)
        pkts += enc.encode(item.frame, item.pts, item.capture_time)
    pkts += enc.flush()
    assert enc.info is not None
    return pkts, enc.info, times


class FailingSink:
    """A sink with a bug: raises on every call."""

    def __init__(self) -> None:
        self.packets = 0
        self.flushes = 0

    def on_packet(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        self.packets += 1
        raise RuntimeError("sink bug")

    def on_flush(self) -> None:
        self.flushes += 1
        raise RuntimeError("sink bug")


async def _until(pred: Callable[[], bool], timeout: float) -> bool:
    for _ in range(round(timeout / 0.02)):
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


# --- one real-time emulated channel -----------------------------------------------------


@dataclass
class Run:
    packets: list[EncodedPacket]
    chunks: list[bytes]
    live_ts: Path
    rec_ts: Path
    stats: ChannelStats
    elapsed: float
    stop_seconds: float
    published: int
    fast: PacketCollector
    failing: FailingSink
    sink_errors: int
    jpeg: bytes
    key_requested_at_frame: int
    video: StreamInfo
    audio: StreamInfo | None
    muxer_errors: list[int] = field(default_factory=list)


async def _run_channel(tmp: Path) -> Run:
    settings = EncodeSettings(640, 360, FPS, 500_000, FPS, "libx264", audio=True)
    ch = MediaChannel(0, "emulated", settings, time.time)
    # Attached before the start, so both see every packet.
    fast = PacketCollector(ch.hub, max_packets=10_000, max_bytes=64 << 20)
    failing = FailingSink()
    ch.hub.attach(failing)
    await ch.start()
    packets: list[EncodedPacket] = []
    chunks: list[bytes] = []
    rec = (tmp / "rec.ts").open("wb")
    muxers: list[TsMuxer] = []
    requested = -1
    t0 = time.monotonic()
    jpeg = b""
    while time.monotonic() - t0 < RUN_SECONDS:
        try:
            pkt = await asyncio.wait_for(fast.get(), 1.0)
        except TimeoutError:
            break
        if not muxers:  # one encoder, two muxers: live-like chunks and a recording
            assert ch.hub.video is not None
            muxers = [
                TsMuxer(ch.hub.video, ch.hub.audio, chunks.append),
                TsMuxer(ch.hub.video, ch.hub.audio, rec.write),
            ]
        for m in muxers:
            m.mux(pkt)
        packets.append(pkt)
        if requested < 0 and time.monotonic() - t0 > KEY_REQUEST_AT:
            requested = len(_video(packets))
            ch.request_keyframe()
            jpeg = await ch.snapshot_jpeg()
    elapsed = time.monotonic() - t0
    t1 = time.monotonic()
    await ch.stop()
    stop_seconds = time.monotonic() - t1
    while (p := fast.get_nowait()) is not None:
        packets.append(p)
        for m in muxers:
            m.mux(p)
    for m in muxers:
        m.close()
    rec.close()
    (tmp / "live.ts").write_bytes(b"".join(chunks))
    assert ch.hub.video is not None
    return Run(
        packets=packets,
        chunks=chunks,
        live_ts=tmp / "live.ts",
        rec_ts=tmp / "rec.ts",
        stats=ch.stats,
        elapsed=elapsed,
        stop_seconds=stop_seconds,
        published=ch.stats.packets_published,
        fast=fast,
        failing=failing,
        sink_errors=ch.hub.sink_errors,
        jpeg=jpeg,
        key_requested_at_frame=requested,
        video=ch.hub.video,
        audio=ch.hub.audio,
        muxer_errors=[m.errors + m.sink_errors for m in muxers],
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return asyncio.run(_run_channel(tmp_path_factory.mktemp("emulated")))


def test_ts_is_h264_at_the_requested_size_with_aac(run: Run) -> None:
    out = _ffprobe(run.live_ts, "-show_entries", "stream=codec_name,width,height,sample_rate")
    assert "codec_name=h264" in out and "width=640" in out and "height=360" in out
    assert "codec_name=aac" in out and "sample_rate=48000" in out
    frames = int(
        _ffprobe(
            run.rec_ts,
            "-select_streams", "v", "-count_frames",
            "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
        ).split()[0]  # the stream, then again under its program
    )  # fmt: skip
    assert frames == len(_video(run.packets))
    assert abs(frames - FPS * run.elapsed) <= 0.1 * FPS * run.elapsed
    assert run.muxer_errors == [0, 0]


def test_ts_decodes_without_errors(run: Run) -> None:
    assert _decode_errors(run.live_ts) == ""
    assert _decode_errors(run.rec_ts) == ""
    assert run.live_ts.read_bytes() == run.rec_ts.read_bytes()  # same packets, same bytes


def test_every_chunk_is_whole_ts_packets_within_the_message_size(run: Run) -> None:
    assert run.chunks
    assert all(0 < len(c) <= 1316 and len(c) % 188 == 0 for c in run.chunks)
    assert all(c[0] == 0x47 for c in run.chunks)


def test_key_frames_every_gop_and_on_request(run: Run) -> None:
    video = _video(run.packets)
    keys = [i for i, p in enumerate(video) if p.keyframe]
    forced = next(k for k in keys if k % FPS)  # the first one off the GOP grid
    assert 0 <= forced - run.key_requested_at_frame <= 3
    before = [k for k in keys if k < forced]
    after = [k for k in keys if k >= forced]
    assert before == list(range(0, forced, FPS))  # fixed GOP, no scene cuts
    assert after == list(range(forced, len(video), FPS))  # the cadence restarts at the IDR


def test_timestamps_and_capture_times_are_monotonic(run: Run) -> None:
    for kind in ("video", "audio"):
        pk = [p for p in run.packets if p.kind == kind]
        assert pk, kind
        assert all(b.dts > a.dts for a, b in itertools.pairwise(pk))
        assert all(p.pts >= 0 for p in pk)
    video = _video(run.packets)
    assert all(p.duration == 3000 for p in video)
    steps = np.diff([p.pts for p in video])
    # Frame k is stamped k/fps: no drift, no jitter; a frame skipped under load shows
    # as a double step, and is counted.
    assert all(int(d) % 3000 == 0 and d > 0 for d in steps)
    assert int(sum(d // 3000 - 1 for d in steps)) <= run.stats.frames_dropped
    ct = np.diff([p.capture_time for p in video])
    assert abs(float(np.median(ct)) - 1 / FPS) < 0.002


def test_timecode_survives_500kbit_360p_and_matches_capture_times(run: Run) -> None:
    video = _video(run.packets)
    with av.open(str(run.rec_ts)) as c:
        codes = [read_timecode(f) for f in c.decode(video=0)]
    assert len(codes) == len(video)
    assert all(code is not None for code in codes)
    for code, p in zip(codes, video, strict=True):
        assert code is not None and abs(code - p.capture_time) <= 0.0006
    steps = np.diff(np.array(codes, dtype=float))
    assert np.all(steps > 0)
    assert abs(float(np.median(steps)) - 1 / FPS) < 0.002


def test_segments_cut_at_any_key_frame_decode_alone(run: Run) -> None:
    video = _video(run.packets)
    keys = [i for i, p in enumerate(video) if p.keyframe]
    assert len(keys) >= 3
    for a, b in zip(keys, [*keys[1:], len(video)], strict=True):
        t = nal_types(video[a].data)
        assert NAL_SPS in t and NAL_PPS in t and NAL_IDR in t
        ctx = av.CodecContext.create("h264", "r")  # a decoder that has seen nothing
        frames = []
        for p in video[a:b]:
            frames += ctx.decode(av.Packet(p.data))
        frames += ctx.decode(None)
        assert len(frames) == b - a
        assert (frames[0].width, frames[0].height) == (640, 360)


def test_a_failing_sink_costs_the_camera_and_the_other_sinks_nothing(run: Run) -> None:
    assert run.failing.packets == run.published > 0
    assert run.sink_errors == run.failing.packets + run.failing.flushes  # each one contained
    assert run.fast.dropped_gops == 0 and run.fast.dropped_packets == 0
    assert run.fast.received == run.published == run.fast.delivered
    # Capture kept its rate while one consumer failed on every call.
    assert abs(run.stats.frames_captured - FPS * run.elapsed) <= 0.1 * FPS * run.elapsed
    assert run.stats.frames_encoded == run.stats.frames_captured
    assert run.stats.encode_ms_avg > 0
    assert run.stats.last_error is None


def test_stream_info_is_set_before_packets(run: Run) -> None:
    assert run.video.codec == "h264" and (run.video.width, run.video.height) == (640, 360)
    assert run.video.fps == FPS and run.video.extradata is not None
    assert set(nal_types(run.video.extradata)) == {NAL_SPS, NAL_PPS}
    assert run.audio is not None and run.audio.codec == "aac" and run.audio.sample_rate == 48000


def test_snapshot_is_a_jpeg_of_the_configured_size(run: Run) -> None:
    assert run.jpeg.startswith(b"\xff\xd8") and run.jpeg.endswith(b"\xff\xd9")
    assert jpeg_size(run.jpeg) == (640, 360)


def test_stop_is_prompt(run: Run) -> None:
    assert run.stop_seconds < 1.0
    assert run.stats.state == "stopped"


# --- timecode at 720p, without pacing ----------------------------------------------------


def test_timecode_survives_2mbit_720p(tmp_path: Path) -> None:
    s = EncodeSettings(1280, 720, FPS, 2_000_000, FPS, "libx264")
    pkts, info, times = _encode_emulated(s, 45)
    path = tmp_path / "hd.ts"
    mux_to_file(path, pkts, info)
    with av.open(str(path)) as c:
        codes = [read_timecode(f) for f in c.decode(video=0)]
    assert len(codes) == 45
    assert all(c is not None and abs(c - t) <= 0.0006 for c, t in zip(codes, times, strict=True))
    assert np.allclose(np.diff(np.array(codes, dtype=float)), 1 / FPS, atol=0.0011)


def test_timecode_reader_rejects_other_pictures() -> None:
    s = EncodeSettings(320, 180, 10, 300_000, 10, "libx264")
    src = EmulatedSource(s, lambda: 1_767_225_600.123, threading.Event(), realtime=False)
    src.open()
    frame = src.draw(0, 1_767_225_600.123)
    assert read_timecode(frame) == 1_767_225_600.123
    luma = frame.to_ndarray(format="gray").copy()
    assert read_timecode(luma) == 1_767_225_600.123
    luma[4:8, 6:8] = 255 - luma[4:8, 6:8]  # flip one code block: the CRC catches it
    assert read_timecode(luma) is None
    rng = np.random.default_rng(1)
    assert read_timecode(rng.integers(0, 255, (180, 320), dtype=np.uint8)) is None
    assert read_timecode(np.full((180, 320), 16, dtype=np.uint8)) is None


# --- files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """0.5 s of H.264 (320x180@30, GOP 15) in MPEG-TS."""
    s = EncodeSettings(320, 180, FPS, 300_000, 15, "libx264")
    pkts, info, _ = _encode_emulated(s, 15)
    path = tmp_path_factory.mktemp("clip") / "clip.ts"
    mux_to_file(path, pkts, info)
    return path


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s of H.264 with B-frames in MP4: avcC extradata, negative first dts."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = 320, 180, "yuv420p"
        st.codec_context.gop_size = 15
        st.codec_context.options = {"preset": "ultrafast", "bf": "2"}
        for k in range(30):
            f = av.VideoFrame.from_ndarray(
                np.full((270, 320), (k * 8) % 255, np.uint8), format="yuv420p"
            )
            f.pts = k
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    return path


async def test_file_passthrough_loops_byte_identical_with_monotonic_time(clip_ts: Path) -> None:
    with av.open(str(clip_ts)) as c:
        original = [bytes(p) for p in c.demux(video=0) if p.size]
    assert len(original) == 15
    s = EncodeSettings(320, 180, FPS, 300_000, 15, "libx264")  # same size and rate
    ch = MediaChannel(0, f"file:{clip_ts}", s, time.time)
    sub = PacketCollector(ch.hub)  # before start: not to miss the first IDR
    await ch.start()
    got: list[EncodedPacket] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.15:
        got.append(await asyncio.wait_for(sub.get(), 1.0))
    elapsed = time.monotonic() - t0
    jpeg = await ch.snapshot_jpeg()
    await ch.stop()
    assert ch.stats.passthrough and ch.stats.frames_encoded == 0
    assert len(got) > 2 * len(original)  # looped at least twice
    assert all(p.data == original[i % len(original)] for i, p in enumerate(got))
    assert all(b.dts - a.dts == 3000 for a, b in itertools.pairwise(got))
    assert abs(len(got) - FPS * elapsed) <= 4  # paced in real time
    assert jpeg_size(jpeg) == (320, 180)  # decoded from the last key frame
    assert ch.hub.video is not None and ch.hub.video.extradata


def test_file_mp4_passes_through_as_annexb_with_parameter_sets(clip_mp4: Path) -> None:
    s = EncodeSettings(320, 180, FPS, 300_000, 15, "passthrough")
    src = DemuxSource("file", str(clip_mp4), s, time.time, threading.Event(), realtime=False)
    src.open()
    try:
        items = list(iter_items(src, 75))  # 2.5 loops
    finally:
        src.close()
    assert src.passthrough
    pkts = [p for p in items if isinstance(p, EncodedPacket)]
    assert len(pkts) == 75
    assert all(p.data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")) for p in pkts)
    keys = [p for p in pkts if p.keyframe]
    assert len(keys) == 5
    assert all({NAL_SPS, NAL_PPS, NAL_IDR} <= set(nal_types(p.data)) for p in keys)
    assert all(b.dts > a.dts for a, b in itertools.pairwise(pkts))
    assert all(p.pts >= p.dts >= 0 for p in pkts)
    assert src.video_info is not None and src.video_info.width == 320


def test_file_with_other_settings_is_decoded_for_reencoding(clip_mp4: Path) -> None:
    s = EncodeSettings(160, 90, 15, 200_000, 15, "libx264")
    src = DemuxSource("file", str(clip_mp4), s, time.time, threading.Event(), realtime=False)
    src.open()
    try:
        items = list(iter_items(src, 20))
    finally:
        src.close()
    assert not src.passthrough
    assert all(isinstance(i, RawVideo) for i in items)
    frames = [i for i in items if isinstance(i, RawVideo)]
    assert {(f.frame.width, f.frame.height, f.frame.format.name) for f in frames} == {
        (160, 90, "yuv420p")
    }
    assert [f.pts for f in frames[:16]] == [k * 6000 for k in range(16)]  # 30 -> 15 fps
    enc = VideoEncoder(s)
    out = [p for f in frames for p in enc.encode(f.frame, f.pts, 0.0)]
    assert out and out[0].keyframe


@pytest.fixture(scope="module")
def clip_av_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s of H.264 (320x180@30, GOP 15) and AAC (44.1 kHz stereo: resampled for us)."""
    path = tmp_path_factory.mktemp("clip") / "clip-av.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 320, 180, "yuv420p"
        vs.codec_context.gop_size = 15
        vs.codec_context.options = {"preset": "ultrafast"}
        aud = out.add_stream("aac", rate=44_100, layout="stereo")
        for k in range(30):
            f = av.VideoFrame.from_ndarray(np.full((270, 320), k * 8, np.uint8), "yuv420p")
            f.pts = k
            out.mux(vs.encode(f))
        t = np.arange(44_100) / 44_100
        tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
        for i in range(0, 44_100, 1024):
            chunk = np.stack([tone[i : i + 1024]] * 2)
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            af.sample_rate, af.pts = 44_100, i
            out.mux(aud.encode(af))
        out.mux(vs.encode(None))
        out.mux(aud.encode(None))
    return path


def _streams(path: Path) -> list[str]:
    out = _ffprobe(path, "-show_entries", "stream=codec_type,codec_name", "-of", "json")
    return sorted(f"{st['codec_name']},{st['codec_type']}" for st in json.loads(out)["streams"])


async def _channel_to_ts(ch: MediaChannel, seconds: float, path: Path) -> list[EncodedPacket]:
    """What a recording of the channel would hold: its packets, muxed as the hub declares."""
    sub = PacketCollector(ch.hub, max_packets=10_000, max_bytes=64 << 20)
    await ch.start()
    pkts: list[EncodedPacket] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        pkts.append(await asyncio.wait_for(sub.get(), 1.0))
    await ch.stop()
    assert ch.hub.video is not None
    mux_to_file(path, pkts, ch.hub.video, ch.hub.audio)
    return pkts


@pytest.mark.parametrize(
    ("clip", "settings", "streams"),
    [
        # The profile allows audio, the file has none: no audio track is declared.
        ("clip_ts", (320, 180, "libx264", True), ["h264,video"]),
        ("clip_ts", (160, 90, "libx264", True), ["h264,video"]),
        # A file with audio: its sound is encoded to AAC, with the video passed through...
        ("clip_av_mp4", (320, 180, "libx264", True), ["aac,audio", "h264,video"]),
        # ... or re-encoded;
        ("clip_av_mp4", (160, 90, "libx264", True), ["aac,audio", "h264,video"]),
        # and a profile without audio input takes none from it.
        ("clip_av_mp4", (320, 180, "libx264", False), ["h264,video"]),
    ],
)
async def test_an_audio_track_only_when_the_source_has_sound(
    clip: str,
    settings: tuple[int, int, str, bool],
    streams: list[str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    w, h, encoder, audio = settings
    s = EncodeSettings(w, h, FPS, 300_000, 15, encoder, audio=audio)
    ch = MediaChannel(0, f"file:{request.getfixturevalue(clip)}", s, time.time)
    pkts = await _channel_to_ts(ch, 1.3, tmp_path / "out.ts")
    assert _streams(tmp_path / "out.ts") == streams
    assert _decode_errors(tmp_path / "out.ts") == ""
    sound = [p for p in pkts if p.kind == "audio"]
    if "aac,audio" not in streams:
        assert ch.hub.audio is None and not sound
        return
    assert ch.hub.audio is not None and ch.hub.audio.sample_rate == 48_000
    video = _video(pkts)
    # About as much sound as picture (one 1024-sample AAC frame is 21 ms), in order, and
    # starting with it.
    v_span = (video[-1].pts - video[0].pts) / 90_000
    a_span = (sound[-1].pts - sound[0].pts) / 90_000
    assert abs(a_span - v_span) < 0.2, (a_span, v_span)
    assert all(b.dts > a.dts for a, b in itertools.pairwise(sound))
    assert abs(sound[0].pts - video[0].pts) < 0.2 * 90_000
    with av.open(str(tmp_path / "out.ts")) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert 0.5 < float(np.sqrt(np.mean(pcm[4800:] ** 2))) < 0.8  # the file's sine, not silence


async def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    s = EncodeSettings(320, 180, FPS, 300_000, 15, "libx264")
    ch = MediaChannel(0, f"file:{tmp_path}/nope.mp4", s, time.time)
    with pytest.raises(MediaError, match="no such file"):
        await ch.start()
    assert ch.stats.state == "error" and not ch.running


@pytest.fixture
def clip_copy(clip_ts: Path, tmp_path: Path) -> Path:
    clip = tmp_path / "clip.ts"
    clip.write_bytes(clip_ts.read_bytes())
    return clip


async def test_source_failure_is_retried_and_time_stays_monotonic(clip_copy: Path) -> None:
    clip, tmp_path = clip_copy, clip_copy.parent
    s = EncodeSettings(320, 180, FPS, 300_000, 15, "passthrough")
    ch = MediaChannel(0, f"file:{clip}", s, time.time, retry_backoff=(0.05, 0.1))
    sub = PacketCollector(ch.hub)
    await ch.start()
    before = [await asyncio.wait_for(sub.get(), 1.0) for _ in range(5)]
    clip.rename(tmp_path / "gone.ts")  # the file vanishes: reopening at its end fails
    await _until(lambda: ch.stats.state == "error", 3.0)
    assert ch.stats.state == "error" and "no such file" in (ch.stats.last_error or "")
    outage = time.monotonic()
    await asyncio.sleep(0.3)
    while sub.get_nowait() is not None:  # what was sent before it failed
        pass
    (tmp_path / "gone.ts").rename(clip)
    after = [await asyncio.wait_for(sub.get(), 2.0) for _ in range(5)]
    outage = time.monotonic() - outage
    await ch.stop()
    assert ch.stats.retries >= 2 and ch.stats.last_error is None
    assert after[0].keyframe and after[0].dts > before[-1].dts
    # Timestamps kept tracking the wall clock through the outage.
    assert (after[0].dts - before[-1].dts) / 90_000 >= 0.3


async def test_a_stalled_event_loop_costs_no_frames() -> None:
    """Sinks run on the capture thread: a loop blocked for half a second (a slow disk
    write by mistake, a long GC) holds up nothing and piles nothing up for later."""
    s = EncodeSettings(320, 180, FPS, 300_000, FPS, "libx264")
    ch = MediaChannel(0, "emulated", s, time.time)
    sub = PacketCollector(ch.hub)
    await ch.start()
    first = [await asyncio.wait_for(sub.get(), 1.0) for _ in range(3)]
    stall = time.time()
    time.sleep(0.5)  # noqa: ASYNC251 - the point: block the loop while ~15 frames come
    stalled = time.time()
    rest = [await asyncio.wait_for(sub.get(), 1.0) for _ in range(20)]
    await ch.stop()
    pkts = first + rest
    during = [p for p in pkts if stall < p.capture_time < stalled]
    assert len(during) >= 0.5 * FPS * 0.7, len(during)  # captured while the loop slept
    steps = [b.dts - a.dts for a, b in itertools.pairwise(pkts)]
    assert all(d % 3000 == 0 and d > 0 for d in steps)
    assert sum(d // 3000 - 1 for d in steps) <= ch.stats.frames_dropped  # only the source's
    assert sub.dropped_packets == 0


async def test_restart_keeps_sinks_and_timestamps_monotonic() -> None:
    s = EncodeSettings(320, 180, FPS, 300_000, FPS, "libx264")
    ch = MediaChannel(0, "emulated", s, time.time)
    sub = PacketCollector(ch.hub)
    await ch.start()
    a = [await asyncio.wait_for(sub.get(), 1.0) for _ in range(5)]
    before = ch.hub.video
    await ch.restart()
    assert ch.running
    while (p := await asyncio.wait_for(sub.get(), 1.0)).dts <= a[-1].dts + 3000 and not p.keyframe:
        pass
    b = [p] + [await asyncio.wait_for(sub.get(), 1.0) for _ in range(4)]
    await ch.stop()
    assert b[0].keyframe
    assert all(y.dts > x.dts for x, y in itertools.pairwise(a + b))
    # Same settings, yet a new stream for the recorder (its next segment: discontinue).
    after = ch.hub.video
    assert before is not None and after is not None
    assert after.run == before.run + 1 and (after.width, after.height) == (320, 180)


# --- cameras that are not there ----------------------------------------------------------


async def test_v4l2_without_the_device_is_a_clear_error() -> None:
    s = EncodeSettings(640, 360, FPS, 500_000, FPS, "libx264")
    ch = MediaChannel(0, "v4l2:/dev/video99", s, time.time)
    with pytest.raises(MediaError, match=r"/dev/video99: no such device"):
        await ch.start()
    assert not ch.running


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_rtsp_down_is_an_error_state_retried_with_backoff() -> None:
    s = EncodeSettings(640, 360, FPS, 500_000, FPS, "passthrough")
    url = f"rtsp://admin:hunter2@127.0.0.1:{_closed_port()}/stream1"
    ch = MediaChannel(0, url, s, time.time, retry_backoff=(0.05, 0.2))
    await ch.start()  # unreachable for now is not fatal
    await _until(lambda: ch.stats.retries >= 3, 5.0)
    assert ch.running
    assert ch.stats.state == "error" and ch.stats.retries >= 3
    assert ch.stats.last_error is not None and "refused" in ch.stats.last_error
    assert "hunter2" not in ch.stats.last_error and "hunter2" not in ch.stats.source
    t = time.monotonic()
    await ch.stop()
    assert time.monotonic() - t < 1.0 and not ch.running


# --- picamera2 ---------------------------------------------------------------------------


async def test_picamera2_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    s = EncodeSettings(640, 360, FPS, 500_000, FPS, "picamera2-h264")
    ch = MediaChannel(0, "picamera2", s, time.time)
    with pytest.raises(MediaError) as e:
        await ch.start()
    assert str(e.value) == PICAMERA2_MISSING
    assert "apt install python3-picamera2" in str(e.value)


async def _collect(ch: MediaChannel, n: int) -> list[EncodedPacket]:
    sub = PacketCollector(ch.hub)
    await ch.start()
    got = [await asyncio.wait_for(sub.get(), 3.0) for _ in range(n)]
    await ch.stop()
    return got


async def test_picamera2_hardware_encoder_output_becomes_packets(
    fake_picamera2: type[FakeCamera],
) -> None:
    s = EncodeSettings(320, 180, FPS, 300_000, 10, "libx264")
    pkts, _, _ = _encode_emulated(s, 30)
    # The hardware encoder repeats SPS/PPS; drop them from one key frame to check that
    # the source puts them back from its cache.
    stripped = b"".join(
        b"\x00\x00\x00\x01" + n for n in split_nals(pkts[20].data) if n[0] & 0x1F not in (7, 8)
    )
    # And like the Pi's encoder at start, hand over the first SPS/PPS as a buffer alone.
    ps = parameter_sets(pkts[0].data)
    assert ps is not None
    first = b"".join(
        b"\x00\x00\x00\x01" + n for n in split_nals(pkts[0].data) if n[0] & 0x1F not in (7, 8)
    )
    fake_picamera2.h264 = [(ps, True), (first, True)]
    fake_picamera2.h264 += [(p.data, p.keyframe) for p in pkts[1:20]] + [(stripped, True)]
    fake_picamera2.h264 += [(p.data, p.keyframe) for p in pkts[21:]]
    settings = EncodeSettings(320, 180, FPS, 300_000, 10, "picamera2-h264")
    ch = MediaChannel(0, "picamera2", settings, time.time)
    got = await _collect(ch, 30)
    cam = fake_picamera2.instances[0]
    assert cam.encoder.bitrate == 300_000 and cam.encoder.repeat and cam.encoder.iperiod == 10
    assert cam.config["main"] == {"size": (320, 180), "format": "YUV420"}
    assert cam.calls == ["start_recording", "stop_recording", "close"]
    assert [p.keyframe for p in got] == [p.keyframe for p in pkts]
    assert got[0].data == ps + first  # the lone headers went with the next frame
    assert [p.data for p in got[1:20]] == [p.data for p in pkts[1:20]]
    assert got[20].data.endswith(stripped) and nal_types(got[20].data)[:2] == [7, 8]
    assert all(b.dts - a.dts == 3000 for a, b in itertools.pairwise(got))
    assert ch.hub.video is not None and ch.hub.video.width == 320
    assert ch.stats.passthrough and ch.stats.frames_encoded == 0


async def test_picamera2_yuv_frames_are_encoded_with_libx264(
    fake_picamera2: type[FakeCamera],
) -> None:
    s = EncodeSettings(320, 180, FPS, 300_000, 10, "libx264")
    src = EmulatedSource(s, lambda: 1.8e9, threading.Event(), realtime=False)
    src.open()
    stride = 384  # libcamera pads rows; picamera2 hands over (h * 3 / 2, stride)
    frames = []
    for k in range(3):
        planes = src.draw(k, 1.8e9 + k).to_ndarray(format="yuv420p")
        y, u, v = planes[:180], planes[180:225].reshape(90, 160), planes[225:].reshape(90, 160)
        padded = np.zeros((270, stride), np.uint8)
        padded[:180, :320] = y
        flat = padded.reshape(-1)
        for i, plane in enumerate((u, v)):
            chroma = np.zeros((90, stride // 2), np.uint8)
            chroma[:, :160] = plane
            start = 180 * stride + i * 90 * (stride // 2)
            flat[start : start + chroma.size] = chroma.reshape(-1)
        frames.append(padded)
    fake_picamera2.yuv = frames
    ch = MediaChannel(0, "picamera2", s, time.time)
    got = await _collect(ch, 12)
    assert fake_picamera2.instances[0].calls == ["start", "stop", "close"]
    assert got[0].keyframe and ch.stats.frames_encoded >= 12 and not ch.stats.passthrough
    assert [p.pts - got[0].pts for p in got] == [k * 3000 for k in range(12)]
    ctx = av.CodecContext.create("h264", "r")
    decoded = [f for p in got for f in ctx.decode(av.Packet(p.data))] + ctx.decode(None)
    # The stride padding was removed correctly: the drawn timecodes read back.
    assert [read_timecode(f) for f in decoded[:3]] == [1.8e9, 1.8e9 + 1, 1.8e9 + 2]


# --- pieces -------------------------------------------------------------------------------


def test_parameter_set_cache_restores_sps_pps_on_key_frames() -> None:
    s = EncodeSettings(320, 180, FPS, 300_000, 5, "libx264")
    pkts, info, _ = _encode_emulated(s, 10)
    cache = ParameterSetCache()
    out = []
    for i, p in enumerate(pkts):
        data = p.data
        if i:  # like h264_v4l2m2m: parameter sets on the first frame only
            data = b"".join(
                b"\x00\x00\x00\x01" + n for n in split_nals(data) if n[0] & 0x1F not in (7, 8)
            )
        out.append(cache.process(data, p.keyframe))
    assert cache.inserted == 1 and cache.extradata == info.extradata
    ctx = av.CodecContext.create("h264", "r")
    frames = [f for d in out[5:] for f in ctx.decode(av.Packet(d))] + ctx.decode(None)
    assert len(frames) == 5


def test_ts_sink_survives_a_failing_consumer() -> None:
    s = EncodeSettings(320, 180, FPS, 300_000, 10, "libx264")
    pkts, info, _ = _encode_emulated(s, 20)
    calls = 0

    def write(chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise OSError("consumer gone")

    mux = TsMuxer(info, None, write)
    for p in pkts:
        mux.mux(p)
    mux.close()
    assert mux.packets == len(pkts) and mux.errors == 0
    assert mux.sink_errors == calls // 3 > 0


def test_ts_byte_stream_cut_at_a_key_frame_plays_alone() -> None:
    s = EncodeSettings(320, 180, FPS, 300_000, 10, "libx264")
    pkts, info, _ = _encode_emulated(s, 40)
    chunks: list[bytes] = []
    cuts = []
    with TsMuxer(info, None, chunks.append) as mux:
        for p in pkts:
            if p.keyframe:
                cuts.append(sum(map(len, chunks)))  # where this key frame's bytes begin
            mux.mux(p)
    data = b"".join(chunks)
    assert cuts[0] == 0 and len(cuts) == 4
    for a, b in itertools.pairwise([*cuts, len(data)]):
        with av.open(io.BytesIO(data[a:b]), "r", format="mpegts") as c:
            frames = list(c.decode(video=0))
        assert len(frames) == 10


def test_h264_v4l2m2m_falls_back_to_libx264_where_absent(caplog: pytest.LogCaptureFixture) -> None:
    enc = VideoEncoder(EncodeSettings(320, 180, FPS, 300_000, 10, "h264_v4l2m2m"))
    if enc.codec_name == "libx264":  # no /dev/video* encoder here (any non-Pi-4 machine)
        assert "falling back to libx264" in caplog.text
    frame = av.VideoFrame(320, 180, "yuv420p")
    pkts = enc.encode(frame, 0, 0.0) + enc.flush()
    assert pkts and pkts[0].keyframe and enc.info is not None


def test_snapshot_jpeg_of_any_frame_at_the_configured_size() -> None:
    frame = av.VideoFrame.from_ndarray(np.zeros((360, 640, 3), np.uint8), format="rgb24")
    data = encode_jpeg(frame, 320, 180, quality=50)
    assert data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")
    assert jpeg_size(data) == (320, 180)
    assert jpeg_size(b"not a jpeg") is None


def test_settings_from_config_follow_the_profile() -> None:
    ch = load_profile("emulated").channels[0]
    cam = CameraSection(width=640, height=360, fps=25)
    s = EncodeSettings.from_config(ch, cam, None)
    assert (s.width, s.height, s.fps, s.gop_frames) == (640, 360, 25, 25)
    assert s.bitrate == ch.default_bitrate and s.encoder == "libx264" and s.audio
    s = EncodeSettings.from_config(ch, CameraSection(width=800, height=600), 99_000_000)
    assert (s.width, s.height) == ch.max_resolution and s.bitrate == ch.max_bitrate
    with pytest.raises(ValueError):
        EncodeSettings(641, 360, 30, 500_000, 30, "libx264")


def test_one_frame_encoded_to_jpeg_by_many_threads_at_once() -> None:
    """A Snapshot and alarm pictures share the latest frame and encode it in worker
    threads together: PyAV's per-frame cached reformatter hung under that."""
    frame = av.VideoFrame.from_ndarray(
        np.random.default_rng(1).integers(0, 255, (540, 640), np.uint8), format="yuv420p"
    )
    sizes: list[tuple[int, int] | None] = []

    def work() -> None:
        for _ in range(15):
            sizes.append(jpeg_size(encode_jpeg(frame, 320, 180)))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "JPEG encoding hung"
    assert sizes == [(320, 180)] * 90
