"""The Raspberry Pi camera through picamera2, which exists only on Raspberry Pi OS: it is
imported when a channel opens the camera, never at import time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from av.video.frame import VideoFrame

from hss_pu.media.encoder import EncodeSettings, MediaError, SourceUnavailable
from hss_pu.media.h264 import ParameterSetCache, has_picture
from hss_pu.media.packets import EncodedPacket, StreamInfo
from hss_pu.media.picture import Painter
from hss_pu.media.sources.base import (
    HZ,
    STALL_SECONDS,
    Clock,
    RawVideo,
    Source,
    SourceItem,
)

__all__ = ["PICAMERA2_MISSING", "PiCameraSource", "lores_size"]

log = logging.getLogger("hss_pu.media.source")

LORES_RATE = 10  # lores pictures a second handed to the analysis tap, at most about
PICAMERA2_MISSING = (
    "picamera2 is not installed (on Raspberry Pi OS: apt install python3-picamera2, "
    "and a venv with --system-site-packages)"
)


def _import_picamera2() -> tuple[Any, Any, Any]:
    try:
        from picamera2 import Picamera2
        from picamera2.encoders import H264Encoder
        from picamera2.outputs import Output
    except ImportError as exc:
        raise MediaError(PICAMERA2_MISSING) from exc
    return Picamera2, H264Encoder, Output


def _transform(horflip: bool, verflip: bool) -> Any:
    """libcamera's Transform (installed with picamera2): the sensor pipeline flips."""
    try:
        from libcamera import Transform
    except ImportError as exc:
        raise MediaError(PICAMERA2_MISSING) from exc
    return Transform(hflip=int(horflip), vflip=int(verflip))


def _mapped_array() -> Any:
    try:
        from picamera2 import MappedArray
    except ImportError as exc:
        raise MediaError(PICAMERA2_MISSING) from exc
    return MappedArray


class PiCameraSource(Source):
    """The Pi camera through picamera2: its hardware H.264 encoder (``picamera2-h264``), or
    YUV420 frames for libx264 (a Pi 5 has no encoder block).

    picamera2's encoder thread calls our Output; packets cross to the channel's worker
    through a bounded queue. When the worker falls behind, packets are dropped up to the
    next key frame (so what is delivered still decodes).

    The picture settings: flips through libcamera's transform (the ISP does them, for
    free); with the hardware encoder the OSD is drawn by picamera2's ``pre_callback`` into
    each frame before it is encoded (with libx264 the channel draws it).

    Analysis (when the channel sets ``luma_tap``): the ISP also makes a ``lores`` YUV420
    stream about 240 rows high, for free, and its Y plane goes to the tap: from
    ``post_callback`` with the hardware encoder, with each captured frame with libx264.
    The main stream is never touched for it.
    """

    camera_flips = True
    own_zoom = True  # digital zoom on the sensor: libcamera's ScalerCrop

    def __init__(self, settings: EncodeSettings, clock: Clock, stop: threading.Event) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop
        self.name = "picamera2"
        self.hardware = settings.encoder != "libx264"
        self.passthrough = self.hardware
        self.dropped = 0
        self._cam: Any = None
        self._queue: queue.Queue[EncodedPacket] = queue.Queue(maxsize=max(8, 2 * settings.fps))
        self._skip_to_key = False
        self._params = ParameterSetCache()
        self._anchor: float | None = None  # daemon clock at sensor timestamp 0
        self._first_ts: int | None = None
        self._size = (settings.width, settings.height)
        self._held = b""
        self._last = self._mono0 = time.monotonic()
        self.frames_writable = True  # made for us from picamera2's buffer
        self._painter: Painter | None = None
        self._mapped: Any = None
        self._osd_failed = False
        self._lores: tuple[int, int] | None = None
        self._lores_failed = False
        # The tap wants ~5 pictures a second (and a few for people): reading every
        # frame's lores buffer would map and sync it for nothing.
        self._lores_every = max(1, round(settings.fps / LORES_RATE))
        self._lores_n = 0
        self._crop_max: tuple[int, int, int, int] | None = None  # the sensor's full crop
        self._zoom = 1.0  # the zoom ScalerCrop was last set to

    def open(self) -> None:
        picamera2_cls, encoder_cls, output_cls = _import_picamera2()
        s = self.settings
        try:
            cam = picamera2_cls()
        except (IndexError, RuntimeError, OSError) as exc:
            raise MediaError(f"picamera2: no camera found ({exc})") from exc
        self._cam = cam
        try:
            frame_us = round(1_000_000 / s.fps)
            extra: dict[str, Any] = {}
            p = s.picture
            if p.horflip or p.verflip:
                extra["transform"] = _transform(p.horflip, p.verflip)
            if self.luma_tap is not None:
                extra["lores"] = {"size": lores_size(*self._size), "format": "YUV420"}
            main = {"size": (s.width, s.height), "format": "YUV420"}
            controls = {"FrameDurationLimits": (frame_us, frame_us)}
            try:
                cam.configure(cam.create_video_configuration(main=main, controls=controls, **extra))
            except Exception as exc:
                if "lores" not in extra:
                    raise
                # Analysis must never cost the camera: without lores, the channel taps
                # the frames (libx264) or the key frames (hardware encoder) instead.
                log.warning("picamera2: no lores stream (%s); motion uses the main one", exc)
                del extra["lores"]
                cam.configure(cam.create_video_configuration(main=main, controls=controls, **extra))
            # libcamera may align the size it was asked for; believe what it configured.
            actual = (getattr(cam, "camera_config", None) or {}).get("main", {}).get("size")
            if actual and tuple(actual) != (s.width, s.height):
                log.warning("picamera2: %dx%d configured as %dx%d", s.width, s.height, *actual)
                self._size = (int(actual[0]), int(actual[1]))
            if "lores" in extra:
                lores = (getattr(cam, "camera_config", None) or {}).get("lores") or {}
                size = lores.get("size") or extra["lores"]["size"]
                self._lores = (int(size[0]), int(size[1]))
                self.own_luma = True
                if self._mapped is None:
                    self._mapped = _mapped_array()
                if self.hardware:
                    cam.post_callback = self._on_lores
            if self.hardware and p.osd_text:
                self._painter = Painter(p, *self._size, flip=False)
                self._mapped = _mapped_array()
                cam.pre_callback = self._draw_osd
            if self.hardware:
                encoder = encoder_cls(bitrate=s.bitrate, repeat=True, iperiod=s.gop_frames)
                cam.start_recording(encoder, _hub_output(output_cls, self._on_frame))
            else:
                cam.start()
        except MediaError:
            self.close()
            raise
        except Exception as exc:  # libcamera raises bare RuntimeError/OSError variants
            self.close()
            raise MediaError(f"picamera2: cannot start the camera: {exc}") from exc
        props = getattr(cam, "camera_properties", None) or {}
        full = props.get("ScalerCropMaximum")
        if full is None and props.get("PixelArraySize"):
            full = (0, 0, *props["PixelArraySize"])
        self._crop_max = tuple(int(v) for v in full) if full else None  # type: ignore[assignment]
        self._zoom = 1.0
        self._apply_zoom()
        self._last = time.monotonic()

    def _apply_zoom(self) -> None:
        """Digital zoom: ScalerCrop to the centred 1/zoom of the sensor when it changed
        (the ISP scales it to the output size, at no cost to us)."""
        zoom = self.zoom_of() if self.zoom_of is not None else 1.0
        if zoom == self._zoom or self._crop_max is None or self._cam is None:
            return
        self._zoom = zoom
        x0, y0, fw, fh = self._crop_max
        cw, ch = max(2, int(fw / zoom)) & ~1, max(2, int(fh / zoom)) & ~1
        rect = (x0 + (fw - cw) // 2, y0 + (fh - ch) // 2, cw, ch)
        try:
            self._cam.set_controls({"ScalerCrop": rect})
        except Exception as exc:  # libcamera's errors are bare RuntimeErrors
            log.warning("picamera2: ScalerCrop %s refused: %s", rect, exc)

    def _draw_osd(self, request: Any) -> None:
        """Runs on picamera2's thread for each frame before the hardware encoder takes it."""
        painter = self._painter
        if painter is None:
            return
        try:
            with self._mapped(request, "main") as m:
                y, u, v = _yuv420_planes(m.array, *self._size)
                painter.draw_osd(y, u, v)
        except Exception as exc:  # never break picamera2's thread over the OSD
            if not self._osd_failed:
                log.warning("picamera2: cannot draw the OSD: %s", exc)
            self._osd_failed = True

    def _on_lores(self, request: Any) -> None:
        """picamera2's thread, each frame (hardware encoder): the lores Y plane to the
        tap, which copies what it keeps and returns at once."""
        tap, size = self.luma_tap, self._lores
        if tap is None or size is None or not self._lores_due():
            return
        try:
            meta = request.get_metadata()
            ts = int(meta.get("SensorTimestamp", 0))
            self._note_lux(meta)
            with self._mapped(request, "lores") as m:
                tap(m.array[: size[1], : size[0]], self._sensor_time(ts))
        except Exception as exc:  # never break picamera2's thread over analysis
            if not self._lores_failed:
                log.warning("picamera2: cannot read the lores stream: %s", exc)
            self._lores_failed = True

    def _note_lux(self, meta: Any) -> None:
        """libcamera's light estimate (``Lux``), for the IR LEDs."""
        lux = meta.get("Lux")
        if isinstance(lux, int | float):
            self.lux = float(lux)

    def _lores_due(self) -> bool:
        self._lores_n += 1
        return self._lores_n % self._lores_every == 0

    def _sensor_time(self, ts_ns: int) -> float:
        """A sensor timestamp (CLOCK_MONOTONIC ns) on the daemon clock; now if it is not
        a recent monotonic time."""
        age = (time.monotonic_ns() - ts_ns) / 1e9
        now = self.clock()
        return now - age if 0 <= age < 1.0 else now

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in ("stop_recording" if self.hardware else "stop", "close"):
            try:
                getattr(cam, step)()
            except Exception as exc:
                log.debug("picamera2 %s: %s", step, exc)

    def _capture_time(self, ts_us: int) -> float:
        """Sensor time mapped onto the daemon clock; re-anchored if the clock jumps."""
        now = self.clock()
        if self._anchor is None or abs(self._anchor + ts_us / 1e6 - now) > 1.0:
            self._anchor = now - ts_us / 1e6
        return self._anchor + ts_us / 1e6

    def _on_frame(self, data: bytes, keyframe: bool, timestamp_us: int | None) -> None:
        """Runs on picamera2's encoder thread: never block it."""
        if not has_picture(data):  # headers on their own: they belong to the next frame
            self._held = (self._held + data)[-4096:]
            return
        if self._held:
            data, self._held = self._held + data, b""
        if self._skip_to_key and not keyframe:
            self.dropped += 1
            return
        if timestamp_us is None:  # picamera2 before 0.3.17 passes no timestamp
            timestamp_us = round((time.monotonic() - self._mono0) * 1e6)
        ts = int(timestamp_us)
        pts = round(ts * HZ / 1_000_000)
        pkt = EncodedPacket(
            kind="video",
            data=self._params.process(data, keyframe),
            pts=pts,
            dts=pts,
            duration=self.settings.frame_duration,
            keyframe=keyframe,
            capture_time=self._capture_time(ts),
        )
        try:
            self._queue.put_nowait(pkt)
            self._skip_to_key = False
        except queue.Full:
            self.dropped += 1
            self._skip_to_key = True

    def read(self) -> SourceItem | None:
        if self._cam is None:
            raise SourceUnavailable("picamera2: not open")
        self._apply_zoom()
        if self.hardware:
            try:
                pkt = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._check_stall()
                return None
            self._last = time.monotonic()
            if pkt.keyframe and self._params.extradata is not None and self.video_info is None:
                s = self.settings
                self.video_info = StreamInfo(
                    kind="video",
                    codec="h264",
                    width=self._size[0],
                    height=self._size[1],
                    fps=s.fps,
                    extradata=self._params.extradata,
                )
            return pkt
        return self._capture()

    def _check_stall(self) -> None:
        if time.monotonic() - self._last > STALL_SECONDS:
            raise SourceUnavailable(f"picamera2: no frames for {STALL_SECONDS:.0f} s")

    def _capture(self) -> RawVideo:
        s = self.settings
        request = self._cam.capture_request()
        lores = None
        try:
            array = request.make_array("main")
            meta = request.get_metadata()
            ts_ns = int(meta.get("SensorTimestamp", 0))
            self._note_lux(meta)
            if self._lores is not None and self.luma_tap is not None and self._lores_due():
                lw, lh = self._lores
                lores = request.make_array("lores")[:lh, :lw]
        finally:
            request.release()
        self._last = time.monotonic()
        ts_us = ts_ns // 1000
        if self._first_ts is None:
            self._first_ts = ts_us
        rel = ts_us - self._first_ts
        w, h = self._size
        frame = VideoFrame.from_ndarray(_yuv420_packed(array, w, h), "yuv420p")
        if (w, h) != (s.width, s.height):
            frame = frame.reformat(width=s.width, height=s.height)
        capture_time = self._capture_time(rel)
        if lores is not None and self.luma_tap is not None:
            self.luma_tap(lores, capture_time)
        return RawVideo(frame, round(rel * HZ / 1_000_000), capture_time)


def lores_size(width: int, height: int, rows: int = 240) -> tuple[int, int]:
    """The lores stream for analysis: ``rows`` high (or the main size if smaller), the
    main stream's shape, the width a multiple of 32 (what the ISP's scaler likes)."""
    if height <= rows:
        return width, height
    w = max(32, round(width * rows / height / 32) * 32)
    return min(w, width), rows


def _yuv420_planes(array: np.ndarray, w: int, h: int) -> tuple[np.ndarray, ...]:
    """Writable (Y, U, V) views into picamera2's YUV420 buffer ((h * 3 / 2, stride))."""
    stride = array.shape[1]
    flat = array.reshape(-1)
    cs, n = stride // 2, (h // 2) * (stride // 2)
    y = array[:h, :w]
    u = flat[h * stride : h * stride + n].reshape(h // 2, cs)[:, : w // 2]
    v = flat[h * stride + n : h * stride + 2 * n].reshape(h // 2, cs)[:, : w // 2]
    return y, u, v


def _yuv420_packed(array: np.ndarray, w: int, h: int) -> np.ndarray:
    """picamera2's YUV420 array ((h * 3 / 2) rows of ``stride`` bytes) without padding."""
    if array.shape[1] == w:
        return array
    y, u, v = _yuv420_planes(array, w, h)
    return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(h * 3 // 2, w)


def _hub_output(base: Any, sink: Callable[[bytes, bool, int | None], None]) -> Any:
    """An instance of a picamera2 Output subclass (the encoder checks isinstance)."""

    class HubOutput(base):  # type: ignore[misc]
        def outputframe(
            self,
            frame: Any,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            if not audio:
                sink(bytes(frame), bool(keyframe), timestamp)

    return HubOutput()
