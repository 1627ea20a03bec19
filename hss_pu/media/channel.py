"""One camera channel: capture and encode on a worker thread, publish into a PacketHub.

Capture and encode share ONE thread per channel (PyAV releases the GIL while encoding),
so a frame is never queued between them and the capture→packet latency is one encode.
Every consumer is a capture-thread sink on the hub (live push, recording, pre-record
ring) and gets each packet right there; no packet crosses to the event loop. The loop
only starts, stops and reconfigures the worker and reads what it leaves behind (the
latest picture and key frame for snapshots, the stream info, the stats).
A failing source puts the channel in the ``error`` state and is retried with a capped
backoff: a camera coming and going never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

import av
import av.error
import numpy as np
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter

from hss_pu.media.encoder import (
    AudioEncoder,
    EncodeSettings,
    MediaError,
    SourceUnavailable,
    VideoEncoder,
)
from hss_pu.media.packets import TIME_BASE, EncodedPacket, PacketHub, StreamInfo
from hss_pu.media.picture import Painter
from hss_pu.media.sources import RawAudio, RawVideo, Scene, Source, make_source
from hss_pu.media.zoom import ZoomCropper
from hss_pu.threadname import set_native_name
from hss_pu.wire.ptz import Position
from hss_pu.wire.urls import redact_url

__all__ = [
    "ChannelStats",
    "EncodeSettings",
    "FrameRef",
    "FrameTap",
    "MediaChannel",
    "MediaError",
    "SourceUnavailable",
    "encode_jpeg",
    "jpeg_size",
]

log = logging.getLogger("hss_pu.media.channel")

State = Literal["stopped", "starting", "running", "error"]
HZ = TIME_BASE.denominator
START_PTS = HZ  # the first packet is stamped 1 s: AAC priming never goes negative
STOP_TIMEOUT = 3.0
MIN_RETRY_DELAY = 0.05  # s between two tries to open a source, whatever retry_backoff says
AUDIO_GAP = HZ // 20  # a jump in the sound's timestamps beyond this restarts its encoder


@dataclass
class ChannelStats:
    state: State = "stopped"
    source: str = ""
    passthrough: bool = False
    frames_captured: int = 0
    frames_encoded: int = 0
    frames_dropped: int = 0  # skipped by the source
    packets_published: int = 0
    encode_ms_avg: float = 0.0  # moving average (alpha 0.05) per video frame
    retries: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class FrameRef:
    """A picture kept for later (an alarm's start): a raw frame, which is never written to
    after capture, or, on a passthrough channel, the last key frame's H.264."""

    frame: VideoFrame | None
    keyframe: bytes | None
    capture_time: float  # daemon clock (epoch s)

    @property
    def nbytes(self) -> int:
        """Roughly what holding it costs (a YUV 4:2:0 frame, or the key frame)."""
        if self.frame is not None:
            return self.frame.width * self.frame.height * 3 // 2
        return len(self.keyframe or b"")


class FrameTap(Protocol):
    """Sees the channel's pictures for analysis (motion.analysis.MotionAnalyser), on the
    capture thread (or the source's own): each call must return at once."""

    def frame(self, frame: VideoFrame, capture_time: float) -> None:
        """A raw frame about to be encoded, as viewers will see it (flipped, OSD drawn),
        so that motion regions drawn on the picture match."""

    def luma(self, plane: np.ndarray, capture_time: float) -> None:
        """A low-resolution luma plane the source makes itself (picamera2's lores)."""

    def keyframe(self, pkt: EncodedPacket) -> None:
        """A passthrough video key frame."""


class _Timeline:
    """Maps each source run's own timestamps onto one monotonic TIME_BASE line.

    A (re)opened source starts where the wall clock says it should (so timestamps keep
    tracking real time across an outage), and never before what was already published.
    """

    def __init__(self) -> None:
        self.mono0 = time.monotonic()
        self.offset: int | None = None
        self.last_dts: dict[str, int] = {}

    def new_run(self) -> None:
        self.offset = None

    def map(self, ts: int) -> int:
        if self.offset is None:
            wall = START_PTS + round((time.monotonic() - self.mono0) * HZ)
            floor = max(self.last_dts.values(), default=-1) + HZ // 10
            self.offset = max(wall, floor) - ts
        return ts + self.offset


class MediaChannel:
    def __init__(
        self,
        channel_id: int,
        source: str,
        settings: EncodeSettings,
        clock: Callable[[], float],
        *,
        retry_backoff: tuple[float, float] = (1.0, 30.0),
        scene: Scene | None = None,
    ) -> None:
        self.channel_id = channel_id
        # What an emulated camera looks at (controls: scene.set_motion, set_lights...).
        self.scene = scene if scene is not None or source != "emulated" else Scene()
        self.analysis: FrameTap | None = None  # read by the capture path per frame
        self._own_luma = False  # the current source feeds analysis itself (lores)
        self.source_spec = source
        self.settings = settings
        self.clock = clock
        self.retry_backoff = retry_backoff
        self.hub = PacketHub(f"ch{channel_id}")
        self.stats = ChannelStats(source=redact_url(source))
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._life = asyncio.Lock()
        self.enabled = True
        self._venc: VideoEncoder | None = None
        self._aenc: AudioEncoder | None = None
        self._timeline = _Timeline()
        self._latest: VideoFrame | None = None
        self._latest_ref: FrameRef | None = None  # the same frame, with its capture time
        self._keyframe_wanted = False
        self._delivered = False
        self._dropped_base = 0
        self._run_audio: StreamInfo | None = None  # the current run's sound, if any
        self.lux: float | None = None  # the light on the scene, when the source tells
        self._runs = 0  # source/encoder runs so far: StreamInfo.run
        self._video_in: StreamInfo | None = None  # the encoder's info, and ours stamped
        self._video_out: StreamInfo | None = None
        self._audio_next: int | None = None
        self._video_flowing = False
        # Set by the worker for its current source: can it take a new picture live
        # (raw frames), and does the camera itself flip them (picamera2's transform)?
        self._live_picture = False
        self._camera_flips = False
        self._painter: Painter | None = None
        self._frames_writable = False
        # Where the PTZ head looks (pan/tilt degrees, zoom): written by the PTZ service on
        # the loop, read per frame. Zoom is a crop here unless the source does it itself.
        self.view = Position()
        self._own_zoom = False
        self._cropper: ZoomCropper | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._halt.is_set()

    async def wait_running(self, timeout: float = 5.0) -> bool:
        """True once frames flow; a request that arrives while the camera is still
        starting (right after boot, or a restart) waits for it instead of failing. A
        channel switched off answers at once."""
        steps = max(1, int(timeout / 0.05))
        for _ in range(steps):
            if not self.enabled:
                return False
            if self.running and self.stats.state == "running":
                return True
            await asyncio.sleep(0.05)
        return False

    # -- life cycle ----------------------------------------------------------------------
    # start/stop/restart/reconfigure/set_enabled take one lock: a RebootChannel and a
    # SetConfig arriving together run one after the other, never interleaved.

    async def start(self) -> None:
        """Open the source and start the worker. Raises MediaError when the source cannot
        be used at all (no such device, picamera2 missing, unsupported codec); a source
        that is only unreachable for now (RTSP camera down) starts in the error state and
        is retried."""
        async with self._life:
            await self._start()

    async def stop(self) -> None:
        async with self._life:
            await self._stop_worker()
            # A stopped camera has no picture now (hibernation): an alarm raised before
            # the next start takes that start's first frame, never one from before.
            self._latest = None
            self._latest_ref = None

    async def restart(self, settings: EncodeSettings | None = None) -> None:
        """Reopen source and encoder (with new ``settings``); sinks stay attached. A
        channel switched off stays off (and takes the settings for when it is switched
        on). Raises MediaError as :meth:`start`."""
        async with self._life:
            await self._stop_worker()
            if settings is not None:
                self.settings = settings
            if self.enabled:
                await self._start()

    async def reconfigure(self, settings: EncodeSettings) -> None:
        """Run with new settings: a change of the picture alone (flips, OSD) is taken up
        by the running worker at its next frame; anything else restarts the encoder."""
        async with self._life:
            if settings == self.settings:
                return
            if self._picture_only(settings) and self.running and self._live_picture:
                self.settings = settings  # the worker re-reads it every frame
                log.info("channel %d: picture settings changed", self.channel_id)
                return
            await self._stop_worker()
            self.settings = settings
            if self.enabled:
                await self._start()

    async def set_enabled(self, on: bool) -> None:
        """Switch the camera on or off (SetConfig ``on``): off, the worker ends and no
        CPU is spent on capture or encoding. Raises MediaError as :meth:`start`."""
        async with self._life:
            if on == self.enabled:
                return
            self.enabled = on
            if on:
                log.info("channel %d: switched on", self.channel_id)
                await self._start()
            else:
                log.info("channel %d: switched off", self.channel_id)
                await self._stop_worker()

    def _picture_only(self, settings: EncodeSettings) -> bool:
        """Only the picture differs, in a way the running worker can apply itself."""
        old = self.settings
        if dataclasses.replace(old, picture=settings.picture) != settings:
            return False
        a, b = old.picture, settings.picture
        return not self._camera_flips or (a.horflip, a.verflip) == (b.horflip, b.verflip)

    async def _start(self) -> None:
        if self.running or not self.enabled:
            return
        await self._join_old()
        halt = self._halt = threading.Event()
        self.stats.state = "starting"
        self.stats.last_error = None
        source: Source | None = None
        try:
            source = self._make_source(halt)
            await _open_in_thread(source)
        except SourceUnavailable as exc:
            self._failed(exc)
            source = None
        except MediaError as exc:
            self.stats.state = "error"
            self.stats.last_error = str(exc)
            raise
        self._thread = threading.Thread(
            target=self._run,
            args=(source, halt),
            name=f"media-ch{self.channel_id}",
            daemon=True,
        )
        self._thread.start()

    async def _stop_worker(self) -> None:
        self._halt.set()
        await self._join_old()
        self.stats.state = "stopped"

    async def _join_old(self) -> None:
        t = self._thread
        if t is None:
            return
        self._halt.set()
        if t.is_alive():
            await asyncio.to_thread(t.join, STOP_TIMEOUT)
        if t.is_alive():
            log.warning(
                "channel %d: worker did not stop within %.0f s", self.channel_id, STOP_TIMEOUT
            )
        else:
            self._thread = None

    def request_keyframe(self) -> None:
        """An IDR as soon as possible (a viewer reconnected). Passthrough sources cannot
        be asked; their next key frame comes on their own GOP."""
        self._keyframe_wanted = True
        venc = self._venc
        if venc is not None:
            venc.request_keyframe()

    # -- the worker ----------------------------------------------------------------------

    def attach_analysis(self, tap: FrameTap | None) -> None:
        """Let ``tap`` see the pictures from now on (None: no one). A source that makes
        its own low-resolution stream (picamera2's lores) sets it up at its next
        (re)start, so attach before :meth:`start`."""
        self.analysis = tap

    def set_view(self, pos: Position) -> None:
        """The PTZ head moved: the emulated camera looks elsewhere, zoom crops from the
        next frame (a plain attribute write, from any thread)."""
        self.view = pos
        if self.scene is not None:
            self.scene.set_view(pos.pan, pos.tilt, pos.zoom)

    def _zoom_of(self) -> float:
        return self.view.zoom

    def _luma(self, plane: np.ndarray, capture_time: float) -> None:
        tap = self.analysis
        if tap is not None:
            tap.luma(plane, capture_time)

    def _make_source(self, stop: threading.Event) -> Source:
        label = f"CH{self.channel_id}"
        src = make_source(
            self.source_spec, self.settings, self.clock, stop, label=label, scene=self.scene
        )
        if self.analysis is not None:
            src.luma_tap = self._luma
        src.zoom_of = self._zoom_of
        return src

    def _failed(self, exc: BaseException) -> None:
        msg = str(exc) or type(exc).__name__
        if self.stats.last_error != msg or self.stats.state != "error":
            log.warning("channel %d: %s", self.channel_id, msg)
        self.stats.state = "error"
        self.stats.last_error = msg

    def _run(self, source: Source | None, stop: threading.Event) -> None:
        set_native_name(f"media-ch{self.channel_id}")
        delay = self.retry_backoff[0]
        try:
            while not stop.is_set():
                if source is None:
                    if stop.wait(max(delay, MIN_RETRY_DELAY)):
                        break
                    delay = min(delay * 2, self.retry_backoff[1])
                    self.stats.retries += 1
                    source = self._make_source(stop)
                    try:
                        source.open()
                    except MediaError as exc:
                        self._failed(exc)
                        source = None
                        continue
                    log.info("channel %d: %s is back", self.channel_id, source.name)
                self._delivered = False
                try:
                    self._pump(source, stop)
                except MediaError as exc:
                    self._failed(exc)
                except (av.error.FFmpegError, OSError, ValueError) as exc:
                    self._failed(MediaError(f"{source.name}: {exc}"))
                finally:
                    self._dropped_base += source.dropped
                    source.close()
                    source = None
                if self._delivered:
                    delay = self.retry_backoff[0]
        except Exception:  # a bug: keep the daemon, report the channel broken
            log.exception("channel %d: worker crashed", self.channel_id)
            self.stats.state = "error"
            self.stats.last_error = "internal error (see log)"
        finally:
            if source is not None:
                source.close()
            self._close_encoders()

    def _close_encoders(self) -> None:
        if self._venc is not None:
            self._venc.close()
        self._venc = None
        self._aenc = None

    def _pump(self, source: Source, stop: threading.Event) -> None:
        """Run one opened source until stop or failure."""
        # Fresh encoders per run: the source's clock restarted, and the AAC encoder's
        # sample count must not carry the gap.
        self._close_encoders()
        self._timeline.new_run()
        self.stats.passthrough = source.passthrough
        # An audio track is declared only when this source really has sound.
        if source.audio and self.settings.audio:
            self._aenc = AudioEncoder(self.settings.audio_rate)
        self._runs += 1
        self._video_in = self._video_out = None
        self._run_audio = (
            dataclasses.replace(self._aenc.info, run=self._runs) if self._aenc is not None else None
        )
        self._audio_next = None
        self._video_flowing = False
        self._live_picture = not source.passthrough
        self._camera_flips = source.camera_flips
        self._frames_writable = source.frames_writable
        self._own_luma = source.own_luma
        self._own_zoom = source.own_zoom
        self._painter = None
        self._keyframe_wanted = True  # a new run starts with a key frame for everyone
        st = self.stats
        try:
            while not stop.is_set():
                item = source.read()
                st.frames_dropped = self._dropped_base + source.dropped
                self.lux = source.lux  # the IR LEDs read it (a plain attribute write)
                if item is not None:
                    if not self._delivered:
                        self._delivered = True
                        st.state = "running"
                        st.last_error = None
                    if isinstance(item, RawVideo):
                        self._encode_video(item)
                    elif isinstance(item, RawAudio):
                        venc = self._venc
                        self._encode_audio(item, venc.info if venc else source.video_info)
                    else:
                        st.frames_captured += 1
                        tap = self.analysis
                        if tap is not None and item.keyframe and not self._own_luma:
                            tap.keyframe(item)
                        tl = self._timeline  # (not dataclasses.replace: per packet, slow)
                        pkt = EncodedPacket(
                            item.kind,
                            item.data,
                            tl.map(item.pts),
                            tl.map(item.dts),
                            item.duration,
                            item.keyframe,
                            item.capture_time,
                        )
                        self._publish(pkt, source.video_info)
                # Sinks send on flush: what the source has ready at once (a frame and
                # the audio made with it) goes out together, in full SRT messages.
                if not source.has_ready():
                    self.hub.flush()
        finally:
            self.hub.flush()

    def _encode_video(self, item: RawVideo) -> None:
        s = self.settings
        st = self.stats
        st.frames_captured += 1
        if self._venc is None:
            self._venc = VideoEncoder(s)
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            self._venc.request_keyframe()
        t = time.perf_counter()
        frame = item.frame
        writable = self._frames_writable
        zoom = self.view.zoom
        if zoom > 1.0 and not self._own_zoom:
            if self._cropper is None:
                self._cropper = ZoomCropper()
            frame = self._cropper.apply(frame, zoom, s.width, s.height)
            writable = writable or frame is not item.frame
        frame = self._paint(frame, writable)
        self._latest = frame
        self._latest_ref = FrameRef(frame, None, item.capture_time)
        tap = self.analysis
        if tap is not None and not self._own_luma:
            tap.frame(frame, item.capture_time)  # as viewers see it: regions match
        pkts = self._venc.encode(frame, self._timeline.map(item.pts), item.capture_time)
        ms = (time.perf_counter() - t) * 1000
        st.encode_ms_avg = ms if st.frames_encoded == 0 else st.encode_ms_avg * 0.95 + ms * 0.05
        st.frames_encoded += 1
        for p in pkts:
            self._publish(p, self._venc.info)

    def _paint(self, frame: VideoFrame, writable: bool) -> VideoFrame:
        """Flips and OSD as configured now (SetConfig may change them between frames)."""
        picture = self.settings.picture
        painter = self._painter
        if painter is None or painter.picture is not picture:
            if picture.identity:
                self._painter = None
                return frame
            w, h = self.settings.width, self.settings.height
            painter = self._painter = Painter(picture, w, h, flip=not self._camera_flips)
        return painter.apply(frame, writable)

    def _encode_audio(self, item: RawAudio, video: StreamInfo | None) -> None:
        expected, rate = self._audio_next, self.settings.audio_rate
        self._audio_next = item.pts + item.samples.shape[1] * HZ // rate
        if self._aenc is None or not self._video_flowing:
            return  # audio starts with the first video key frame
        if expected is not None and abs(item.pts - expected) > AUDIO_GAP:
            # A hole or an overlap in the sound (a file looped): the encoder stamps by
            # counting samples, so it must not carry on across it.
            self._aenc = AudioEncoder(rate)
        for p in self._aenc.encode(item.samples, self._timeline.map(item.pts), item.capture_time):
            self._publish(p, video)

    def _publish(self, pkt: EncodedPacket, video: StreamInfo | None) -> None:
        last = self._timeline.last_dts.get(pkt.kind)
        if last is not None and pkt.dts <= last:
            log.debug("channel %d: dropping non-monotonic %s packet", self.channel_id, pkt.kind)
            return
        self._timeline.last_dts[pkt.kind] = pkt.dts
        hub = self.hub
        audio = self._run_audio
        if video is not None and video is not self._video_in:  # once per new info, not per packet
            self._video_in = video
            self._video_out = dataclasses.replace(video, run=self._runs)
        video = self._video_out
        # Stream info is a plain attribute write: the loop reads it (muxer set-up).
        if video is not None and hub.video != video:
            hub.video = video
        if hub.audio != audio:
            hub.audio = audio
        if hub.video is None:
            return
        if pkt.kind == "video":
            self._video_flowing = True
        self.stats.packets_published += 1
        hub.publish(pkt)

    # -- snapshots -----------------------------------------------------------------------

    async def snapshot_jpeg(self, quality: int = 85, *, wait: float = 2.0) -> bytes:
        """A JPEG of the latest frame at the configured size. For passthrough sources the
        last key frame is decoded (a frame up to one GOP old)."""
        deadline = time.monotonic() + wait
        while True:
            frame = self._latest
            key = self.hub.last_keyframe
            if not self.stats.passthrough and frame is not None:
                return await asyncio.to_thread(self._jpeg, frame, None, quality)
            if self.stats.passthrough and key is not None:
                return await asyncio.to_thread(self._jpeg, None, key.data, quality)
            if time.monotonic() >= deadline:
                raise MediaError(f"channel {self.channel_id}: no frame captured yet")
            await asyncio.sleep(0.05)

    def latest_frame(self) -> FrameRef | None:
        """The picture now, to encode later with :meth:`frame_jpeg` (an alarm keeps the
        frame of its start): the latest raw frame, or on a passthrough channel the last
        key frame (up to one GOP old). None while the camera is not running. Cheap: a
        reference, no copy, no encoding."""
        if not (self.running and self.stats.state == "running"):
            return None
        if self.stats.passthrough:
            key = self.hub.last_keyframe
            return FrameRef(None, key.data, key.capture_time) if key is not None else None
        return self._latest_ref

    async def first_frame(self, wait: float) -> FrameRef | None:
        """:meth:`latest_frame` once the camera has one, waiting up to ``wait`` seconds
        (a camera started or restarted a moment ago); None if it has none by then."""
        deadline = time.monotonic() + wait
        while True:  # polled like snapshot_jpeg: the capture thread sets no loop event
            ref = self.latest_frame()
            if ref is not None or time.monotonic() >= deadline:
                return ref
            await asyncio.sleep(0.05)

    async def frame_jpeg(self, ref: FrameRef, quality: int = 85) -> bytes:
        """A JPEG of ``ref`` at the configured size, encoded off the event loop."""
        return await asyncio.to_thread(self._jpeg, ref.frame, ref.keyframe, quality)

    def _jpeg(self, frame: VideoFrame | None, h264: bytes | None, quality: int) -> bytes:
        if frame is None:
            assert h264 is not None
            frame = _decode_keyframe(h264)
        return encode_jpeg(frame, self.settings.width, self.settings.height, quality)


async def _open_in_thread(source: Source) -> None:
    """Open off the loop; if we are cancelled meanwhile, close it once the open is done
    (a picamera2 camera left open stays busy until the process exits)."""
    task = asyncio.ensure_future(asyncio.to_thread(source.open))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:

        def close_if_opened(t: asyncio.Future[None]) -> None:
            if not t.cancelled() and t.exception() is None:
                source.close()

        task.add_done_callback(close_if_opened)
        raise


def _decode_keyframe(data: bytes) -> VideoFrame:
    ctx = av.CodecContext.create("h264", "r")
    try:
        frames = ctx.decode(av.Packet(data)) + ctx.decode(None)
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot decode the last key frame: {exc}") from exc
    if not frames:
        raise MediaError("the last key frame did not decode")
    return frames[0]


def _jpeg_qscale(quality: int) -> int:
    """libjpeg-style quality (1-100) to FFmpeg's MJPEG qscale (2 best .. 31 worst)."""
    q = max(1, min(100, quality))
    scale = (200 - 2 * q) / 100 if q >= 50 else 50 / q
    return max(2, min(31, round(scale * 8)))


def encode_jpeg(frame: VideoFrame, width: int, height: int, quality: int = 85) -> bytes:
    """Baseline JPEG (yuvj420p) through PyAV's mjpeg encoder; no PIL needed."""
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    q = _jpeg_qscale(quality)
    ctx.options = {"qmin": str(q), "qmax": str(q)}
    # A reformatter of its own: frame.reformat() caches one on the frame, and the same
    # frame may be encoded by several threads at once (a Snapshot and alarm pictures
    # share the latest frame); swscale contexts are not thread-safe (seen: a hang).
    f = VideoReformatter().reformat(frame, width=width, height=height, format="yuvj420p")
    f.pts = 0
    f.time_base = ctx.time_base
    data = b"".join(bytes(p) for p in ctx.encode(f) + ctx.encode(None))
    if not data.startswith(b"\xff\xd8"):
        raise MediaError("mjpeg encoder produced no JPEG")
    return data


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF header, or None when there is none."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2) and i + 9 <= len(data):
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        i += 2 + length
    return None
