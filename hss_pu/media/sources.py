"""Where pictures come from: one small interface over every ``camera.source`` form.

A source either hands raw frames to the channel's encoder (:class:`RawVideo`, and
:class:`RawAudio` for the emulated tone) or already-encoded H.264 (passthrough:
:class:`~hss_pu.media.packets.EncodedPacket`, Annex B with SPS/PPS on key frames). Its
timestamps are in TIME_BASE from its own origin; the channel maps them onto one
monotonic timeline across restarts. Every source runs on the channel's worker thread
and must return from :meth:`Source.read` within about a second so stop stays prompt.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame

from hss_pu.media.encoder import EncodeSettings, MediaError, SourceUnavailable
from hss_pu.media.h264 import ParameterSetCache, has_picture, is_annexb
from hss_pu.media.packets import TIME_BASE, EncodedPacket, StreamInfo, to_90k

__all__ = [
    "PICAMERA2_MISSING",
    "DemuxSource",
    "EmulatedSource",
    "PiCameraSource",
    "RawAudio",
    "RawVideo",
    "Source",
    "SourceItem",
    "iter_items",
    "make_source",
    "read_timecode",
    "redact_url",
    "timecode_bits",
]

log = logging.getLogger("hss_pu.media.source")

Clock = Callable[[], float]
HZ = TIME_BASE.denominator
PICAMERA2_MISSING = (
    "picamera2 is not installed (on Raspberry Pi OS: apt install python3-picamera2, "
    "and a venv with --system-site-packages)"
)
STALL_SECONDS = 5.0  # a live source silent this long is treated as gone
# The tone is a function of time, so it can be produced ahead of the picture. Keeping
# the AAC encoder (1024 priming + up to 1023 buffered samples) a little ahead means the
# TS interleaver always holds audio past the newest video frame and never video waiting
# for audio: audio on costs no picture latency.
TONE_LEAD_SAMPLES = 4096
# The tone is made (and AAC-encoded) in chunks of this many samples rather than a bit per
# video frame: each encode call has a fixed cost (PyAV's re-framing filter graph, Python,
# caches gone cold during the frame wait) several times that of the samples themselves.
# The lead then varies between TONE_LEAD_SAMPLES and that plus a chunk.
TONE_CHUNK_SAMPLES = 4800


@dataclass(slots=True)
class RawVideo:
    frame: VideoFrame  # yuv420p at the channel's size; never written to after capture
    pts: int  # TIME_BASE, from the source's origin
    capture_time: float  # daemon clock, epoch seconds


@dataclass(slots=True)
class RawAudio:
    samples: np.ndarray  # float32 (channels, n)
    pts: int
    capture_time: float


SourceItem = RawVideo | RawAudio | EncodedPacket


class Source(abc.ABC):
    """Opened, read and closed on the channel's worker thread only."""

    name: str = "source"
    passthrough = False  # read() yields EncodedPacket rather than raw frames
    video_info: StreamInfo | None = None  # passthrough: known once SPS/PPS were seen
    dropped = 0  # frames the source itself had to skip

    @abc.abstractmethod
    def open(self) -> None:
        """Raise MediaError (SourceUnavailable when worth retrying) if it cannot run."""

    @abc.abstractmethod
    def read(self) -> SourceItem | None:
        """The next item, paced in real time; None when nothing came (check for stop)."""

    def has_ready(self) -> bool:
        """True when the next :meth:`read` returns at once, with no pacing wait."""
        return False

    def close(self) -> None:  # noqa: B027 - most sources have nothing to release
        pass


STOP_POLL = 0.1  # a pacing wait notices stop within this many seconds
FILE_BURST = 0.1  # a file source sends what falls due within this many seconds at once


def _pause(stop: threading.Event, seconds: float) -> bool:
    """Wait ``seconds`` for the next item's time; True if ``stop`` was set meanwhile.

    ``time.sleep`` rather than ``stop.wait(seconds)``: a timed Event.wait (a Condition, a
    fresh lock, a timed semaphore wait) cost ~1.8x the CPU of a sleep per wake-up here,
    and sources wait once per frame.
    """
    end = time.monotonic() + seconds
    while not stop.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, STOP_POLL))
    return True


# --- the emulated camera ----------------------------------------------------------------

CODE_BITS = 48
_DATA_BITS = 42  # epoch milliseconds up to year 2109
_MARK = (1, 0)
_BLACK, _WHITE = 16, 235  # luma extremes: survive low bitrates, and limited range
_BAND_Y = 64  # the overlay band behind the code and the text

_FONT = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
    "-": ("00000", "00000", "00000", "11111", "00000", "00000", "00000"),
    ":": ("00000", "01100", "01100", "00000", "01100", "01100", "00000"),
    ".": ("00000", "00000", "00000", "00000", "00000", "01100", "01100"),
    " ": ("00000",) * 7,
    "#": ("01010", "01010", "11111", "01010", "11111", "01010", "01010"),
    "C": ("01110", "10001", "10000", "10000", "10000", "10001", "01110"),
    "H": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "Z": ("11111", "00001", "00010", "00100", "01000", "10000", "11111"),
}


def _block(width: int) -> int:
    """Code block size: 16 px at 1280 wide, 8 at 640, 4 at 320; 2 below (fragile)."""
    b = (width // 80) & ~1
    return b if b >= 4 else max(2, (width // 50) & ~1)


def _crc4(bits: list[int]) -> int:
    """CRC-4/ITU (x^4 + x + 1): every single and double bit error in the code is caught."""
    reg = 0
    for b in bits:
        fb = ((reg >> 3) & 1) ^ b
        reg = (reg << 1) & 0xF
        if fb:
            reg ^= 0x3
    return reg


def timecode_bits(epoch: float) -> list[int]:
    """The 48 code bits for a wall-clock time: marker 10, 42-bit epoch ms, CRC-4."""
    ms = round(epoch * 1000) & ((1 << _DATA_BITS) - 1)
    head = [*_MARK, *((ms >> (_DATA_BITS - 1 - i)) & 1 for i in range(_DATA_BITS))]
    crc = _crc4(head)
    return head + [(crc >> (3 - i)) & 1 for i in range(4)]


def _luma(image: VideoFrame | np.ndarray) -> np.ndarray:
    if isinstance(image, VideoFrame):
        if image.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "nv12", "gray"):
            plane = image.planes[0]
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            return rows[:, : image.width]
        return image.to_ndarray(format="gray")
    if image.ndim == 3:  # RGB
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        rgb: np.ndarray = image[..., :3].astype(np.float32)
        return (rgb @ weights).astype(np.uint8)
    return image


def read_timecode(image: VideoFrame | np.ndarray) -> float | None:
    """The capture time the emulated source drew into ``image`` (epoch s), or None.

    ``image``: a decoded frame, or a 2-D luma (or H x W x 3 RGB) array at the encoded size.
    """
    luma = _luma(image)
    h, w = luma.shape[:2]
    b = _block(w)
    q = max(1, b // 4)
    x0 = y0 = b
    if y0 + b > h or x0 + CODE_BITS * b > w:
        return None
    region = luma[y0 + q : y0 + b - q, x0 : x0 + CODE_BITS * b]
    cells = region.reshape(region.shape[0], CODE_BITS, b)[:, :, q : b - q]
    levels = cells.mean(axis=(0, 2))
    mid = (_BLACK + _WHITE) / 2
    if np.min(np.abs(levels - mid)) < (_WHITE - _BLACK) / 6:
        return None  # a cell that is neither black nor white: not our code
    bits = [int(v > mid) for v in levels]
    if tuple(bits[:2]) != _MARK or _crc4(bits[:44]) != int("".join(map(str, bits[44:])), 2):
        return None
    ms = int("".join(map(str, bits[2:44])), 2)
    return ms / 1000


def _glyph_cells(scale: int) -> np.ndarray:
    """(256, 7 * scale, 6 * scale): each byte's glyph and the gap after it, on the band's
    grey; bytes without a glyph are blank cells."""
    cells = np.full((256, 7 * scale, 6 * scale), _BAND_Y, dtype=np.uint8)
    for ch, rows in _FONT.items():
        g = np.array([[int(c) for c in r] for r in rows], dtype=np.uint8)
        g = np.kron(g, np.ones((scale, scale), dtype=np.uint8))
        cells[ord(ch), :, : 5 * scale] = np.where(g > 0, _WHITE, _BAND_Y)
    return cells


class EmulatedSource(Source):
    """A synthetic camera: scrolling pattern, a bouncing box, a machine-readable clock.

    Frame k is due at t0 + k/fps on the monotonic clock, so the rate never drifts; when
    the encoder falls behind by whole frames, those frames are skipped (and counted)
    rather than queued.
    """

    def __init__(
        self,
        settings: EncodeSettings,
        clock: Clock,
        stop: threading.Event,
        *,
        label: str = "",
        realtime: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop
        self.label = label
        self.realtime = realtime
        self.name = "emulated"
        self.dropped = 0
        self._pending: collections.deque[RawAudio] = collections.deque(maxlen=4)
        self.draw_seconds = 0.0  # total time spent drawing (bench)

    def open(self) -> None:
        s = self.settings
        w, h = s.width, s.height
        self._b = b = _block(w)
        self._period = 128
        p = self._period
        # Backgrounds one period wider than the frame: scrolling is a slice, not a redraw.
        x = np.arange(w + p)
        y = np.arange(h)[:, None]
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x[None, :] + y // 2) / p)
        self._bg_y = (40 + 150 * wave).astype(np.uint8)
        cx = np.arange((w + p) // 2)
        bars = (cx * 8 // max(1, w // 2)) % 8
        u_row = np.array([128, 90, 170, 60, 200, 110, 150, 128], dtype=np.uint8)[bars]
        v_row = np.array([128, 200, 80, 150, 60, 170, 100, 128], dtype=np.uint8)[bars]
        self._bg_u = np.repeat(u_row[None, :], h // 2, axis=0)
        self._bg_v = np.repeat(v_row[None, :], h // 2, axis=0)
        self._scale = max(1, b // 4)
        self._cells = _glyph_cells(self._scale)
        self._text_y = 3 * b
        self._band = min(h, (self._text_y + 7 * self._scale + b + 1) & ~1)
        self._bg_y[: self._band] = _BAND_Y
        self._bg_u[: self._band // 2] = 128
        self._bg_v[: self._band // 2] = 128
        self._box = max(8, (h // 6) & ~1)
        self._graph = self._testsrc(w, h, s.fps)
        self._k = 0
        self._t0 = time.monotonic()
        self._samples = 0
        rate = s.audio_rate
        period = rate // math.gcd(rate, 1000)
        self._tone = (0.25 * np.sin(2 * np.pi * 1000 * np.arange(period) / rate)).astype(np.float32)

    @staticmethod
    def _testsrc(w: int, h: int, fps: int) -> tuple[Any, Any] | None:
        """FFmpeg's testsrc2 as the moving picture: the same content ``ffmpeg -f lavfi -i
        testsrc2`` encodes, so benchmarks against ffmpeg compare like with like (x264's
        cost depends on the picture). None where the filter is missing: numpy fallback."""
        try:
            import av.filter

            g = av.filter.Graph()
            src = g.add("testsrc2", f"size={w}x{h}:rate={fps}")
            fmt = g.add("format", "pix_fmts=yuv420p")
            sink = g.add("buffersink")
            src.link_to(fmt)
            fmt.link_to(sink)
            g.configure()
            return g, sink  # the sink does not keep its graph alive: hold both
        except Exception as exc:  # any FFmpeg build without lavfi/testsrc2
            log.debug("testsrc2 unavailable (%s): drawing the picture with numpy", exc)
            return None

    def has_ready(self) -> bool:
        return bool(self._pending)  # the audio made with the frame just read

    def read(self) -> SourceItem | None:
        if self._pending:
            return self._pending.popleft()
        fps = self.settings.fps
        if self.realtime:
            due = self._t0 + self._k / fps
            now = time.monotonic()
            if now < due:
                if _pause(self.stop, due - now):
                    return None
            else:
                behind = int((now - due) * fps)
                if behind:
                    self._k += behind
                    self.dropped += behind
        k = self._k
        self._k += 1
        t = time.perf_counter()
        capture_time = self.clock()
        frame = self.draw(k, capture_time)
        self.draw_seconds += time.perf_counter() - t
        pts = round(k * HZ / fps)
        if self.settings.audio:
            lead = round((k + 1) * self.settings.audio_rate / fps) + TONE_LEAD_SAMPLES
            if self._samples < lead:
                self._pending.append(self._audio(lead + TONE_CHUNK_SAMPLES, capture_time))
        return RawVideo(frame, pts, capture_time)

    def _audio(self, end: int, capture_time: float) -> RawAudio:
        """The tone from where the last chunk ended up to sample ``end``."""
        rate = self.settings.audio_rate
        start = self._samples
        idx = np.arange(start, max(end, start + 1)) % len(self._tone)
        self._samples = start + len(idx)
        return RawAudio(self._tone[idx][None, :], round(start * HZ / rate), capture_time)

    def draw(self, k: int, capture_time: float) -> VideoFrame:
        s = self.settings
        w, h = s.width, s.height
        frame = self._graph[1].pull() if self._graph is not None else VideoFrame(w, h, "yuv420p")
        frame.pts = None
        yp, up, vp = frame.planes
        y = np.frombuffer(memoryview(yp), np.uint8).reshape(h, yp.line_size)[:, :w]
        u = np.frombuffer(memoryview(up), np.uint8).reshape(h // 2, up.line_size)[:, : w // 2]
        v = np.frombuffer(memoryview(vp), np.uint8).reshape(h // 2, vp.line_size)[:, : w // 2]
        if self._graph is not None:
            # testsrc2 moves by itself; clear the band that carries the codes.
            y[: self._band] = _BAND_Y
            u[: self._band // 2] = 128
            v[: self._band // 2] = 128
        else:
            self._draw_pattern(k, y, u, v)
        self._draw_codes(k, capture_time, y)
        return frame

    def _draw_pattern(self, k: int, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        w, h = self.settings.width, self.settings.height
        off = (4 * k) % self._period
        y[:] = self._bg_y[:, off : off + w]
        u[:] = self._bg_u[:, off // 2 : off // 2 + w // 2]
        v[:] = self._bg_v[:, off // 2 : off // 2 + w // 2]
        # A box bouncing across the lower part, for motion the encoder has to follow.
        box = self._box
        span_x, span_y = max(1, w - box), max(1, h - self._band - box)
        bx = _bounce(6 * k, span_x) & ~1
        by = (self._band + _bounce(3 * k, span_y)) & ~1
        y[by : by + box, bx : bx + box] = _WHITE
        u[by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 90
        v[by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 200

    def _draw_codes(self, k: int, capture_time: float, y: np.ndarray) -> None:
        w, h, b = self.settings.width, self.settings.height, self._b
        # The machine-readable capture time.
        if (CODE_BITS + 2) * b <= w and 2 * b <= h:
            levels = np.where(np.array(timecode_bits(capture_time)) > 0, _WHITE, _BLACK)
            y[b : 2 * b, b : b + CODE_BITS * b] = np.repeat(levels.astype(np.uint8), b)[None, :]
        # And the same for people.
        ms = round(capture_time * 1000)
        tm = time.gmtime(ms // 1000)
        text = (
            f"{tm.tm_year:04}-{tm.tm_mon:02}-{tm.tm_mday:02} {tm.tm_hour:02}:{tm.tm_min:02}:"
            f"{tm.tm_sec:02}.{ms % 1000:03}Z {self.label} #{k}"
        )
        sc = self._scale
        ty, cell = self._text_y, 6 * sc
        if ty + 7 * sc > h or b + 5 * sc > w:
            return
        # One gather of glyph cells instead of a copy per character: this runs per frame.
        n = min(len(text), (w - b - 5 * sc) // cell + 1)  # characters that fit whole
        codes = np.frombuffer(text[:n].encode("ascii", "replace"), np.uint8)
        row = self._cells[codes].transpose(1, 0, 2).reshape(7 * sc, n * cell)
        x1 = min(w, b + n * cell)
        y[ty : ty + 7 * sc, b:x1] = row[:, : x1 - b]


def _bounce(pos: int, span: int) -> int:
    p = pos % (2 * span)
    return p if p < span else 2 * span - p


# --- files, V4L2 cameras, RTSP cameras: anything FFmpeg demuxes ------------------------


def redact_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, ""))


class DemuxSource(Source):
    """``file:PATH`` (looped, paced by its timestamps), ``v4l2:/dev/videoN``, ``rtsp://``.

    H.264 passes through untouched when the settings allow it (avcC converted to Annex B
    with ``h264_mp4toannexb``); anything else is decoded and scaled to the channel's size
    for the encoder.
    """

    def __init__(
        self,
        kind: Literal["file", "v4l2", "rtsp"],
        target: str,
        settings: EncodeSettings,
        clock: Clock,
        stop: threading.Event,
        *,
        realtime: bool = True,
        open_timeout: float = 4.0,
        read_timeout: float = 2.5,  # below the channel's stop timeout
    ) -> None:
        self.kind = kind
        self.target = target
        self.settings = settings
        self.clock = clock
        self.stop = stop
        self.realtime = realtime and kind == "file"  # cameras pace themselves
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.name = f"{kind}:{redact_url(target)}" if kind != "rtsp" else redact_url(target)
        self.dropped = 0
        self._container: InputContainer | None = None
        self._pending: collections.deque[SourceItem] = collections.deque(maxlen=64)
        self._bsf: av.BitStreamFilterContext | None = None
        self._params = ParameterSetCache()
        self._loop_base = 0  # TIME_BASE offset of the current loop of a file
        self._first: int | None = None  # first dts of the current loop
        self._last_end = 0  # end (dts + duration) of the last packet, TIME_BASE
        self._t0: float | None = None
        self._burst_until = 0.0  # monotonic time: items due before it need no wait
        self._next_slot = 0
        self._fallback_ts = 0
        self._prev: int | None = None

    # -- opening -------------------------------------------------------------------------

    def _open_container(self) -> InputContainer:
        s = self.settings
        timeout = (self.open_timeout, self.read_timeout)
        try:
            if self.kind == "file":
                if not os.path.isfile(self.target):
                    raise MediaError(f"{self.name}: no such file")
                return av.open(self.target, "r", timeout=timeout)
            if self.kind == "rtsp":
                opts = {"rtsp_transport": "tcp", "timeout": str(int(self.read_timeout * 1e6))}
                return av.open(self.target, "r", options=opts, timeout=timeout)
            if not os.path.exists(self.target):
                raise MediaError(
                    f"{self.name}: no such device (is the camera plugged in? see ls /dev/video*)"
                )
            opts = {"video_size": f"{s.width}x{s.height}", "framerate": str(s.fps)}
            formats = ["h264"] if s.passthrough else ["mjpeg", ""]
            err: Exception | None = None
            for fmt in formats:
                try:
                    o = {**opts, "input_format": fmt} if fmt else opts
                    return av.open(self.target, "r", format="v4l2", options=o, timeout=timeout)
                except av.error.FFmpegError as exc:
                    if isinstance(exc, (FileNotFoundError, PermissionError)):
                        raise
                    err = exc
            assert err is not None
            raise err
        except MediaError:
            raise
        except PermissionError as exc:
            hint = " (add the user to the 'video' group)" if self.kind == "v4l2" else ""
            raise MediaError(f"{self.name}: permission denied{hint}") from exc
        except FileNotFoundError as exc:
            what = "no such device" if self.kind == "v4l2" else "no such file or stream"
            raise MediaError(f"{self.name}: {what}") from exc
        except (
            av.error.ExitError,
            ConnectionError,
            TimeoutError,
            av.error.EOFError,
            av.error.HTTPServerError,
            av.error.InvalidDataError,
        ) as exc:
            if self.kind == "rtsp" or (self.kind == "v4l2" and isinstance(exc, OSError)):
                raise SourceUnavailable(f"{self.name}: {_why(exc)}") from exc
            raise MediaError(f"{self.name}: cannot open: {_why(exc)}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            if self.kind == "rtsp" and not isinstance(exc, av.error.HTTPClientError):
                raise SourceUnavailable(f"{self.name}: {_why(exc)}") from exc
            raise MediaError(f"{self.name}: cannot open: {_why(exc)}") from exc

    def open(self) -> None:
        c = self._open_container()
        try:
            self._setup(c)
        except BaseException:
            c.close()
            raise
        self._container = c

    def _setup(self, c: InputContainer) -> None:
        s = self.settings
        if not c.streams.video:
            raise MediaError(f"{self.name}: no video stream")
        vs = c.streams.video[0]
        self._stream = vs
        codec = vs.codec_context.name
        rate = vs.average_rate or vs.guessed_rate
        self._src_fps = float(rate) if rate else float(s.fps)
        size_ok = (vs.codec_context.width, vs.codec_context.height) == (s.width, s.height)
        fps_ok = abs(self._src_fps - s.fps) < 0.5
        if self.kind == "file":
            passthrough = codec == "h264" and (s.passthrough or (size_ok and fps_ok))
        else:
            passthrough = s.passthrough
        if passthrough and codec != "h264":
            raise MediaError(
                f"{self.name}: the video is {codec}, and only H.264 can be passed through "
                f"(use encoder = 'libx264' in the profile to re-encode)"
            )
        self.passthrough = passthrough
        if passthrough:
            extradata = vs.codec_context.extradata
            if extradata and not is_annexb(extradata):
                self._bsf = av.BitStreamFilterContext("h264_mp4toannexb", in_stream=vs)
            else:
                self._bsf = None
                if extradata and self._params.extradata is None:
                    self._params = ParameterSetCache(extradata)
        else:
            vs.thread_type = "AUTO" if self.kind == "file" else "SLICE"
        self._demux = c.demux(vs)
        log.info(
            "%s: %s %dx%d @ %.3g fps, %s",
            self.name,
            codec,
            vs.codec_context.width,
            vs.codec_context.height,
            self._src_fps,
            "passed through" if passthrough else f"re-encoded to {s.width}x{s.height}@{s.fps}",
        )

    def close(self) -> None:
        if self._container is not None:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                self._container.close()
            self._container = None

    # -- reading -------------------------------------------------------------------------

    def read(self) -> SourceItem | None:
        if self._pending:
            return self._paced(self._pending.popleft())
        if self._container is None:
            raise SourceUnavailable(f"{self.name}: not open")
        try:
            pkt = next(self._demux)
        except StopIteration:
            self._end_of_input()
            return None
        except av.error.EOFError:
            self._end_of_input()
            return None
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceUnavailable(f"{self.name}: {_why(exc)}") from exc
        if pkt.size == 0:
            return None  # the demuxer's flush packet
        if self.passthrough:
            for p in self._bsf.filter(pkt) if self._bsf is not None else [pkt]:
                self._pending.append(self._encoded(p))
        else:
            try:
                frames = self._stream.codec_context.decode(pkt)
            except av.error.InvalidDataError:
                return None  # a damaged packet: skip it, the decoder resyncs
            for f in frames:
                item = self._raw(f)
                if item is not None:
                    self._pending.append(item)
        if not self._pending:
            return None
        return self._paced(self._pending.popleft())

    def _end_of_input(self) -> None:
        if self.kind != "file":
            raise SourceUnavailable(f"{self.name}: end of stream")
        if not self.passthrough:
            try:
                for f in self._stream.codec_context.decode(None):
                    item = self._raw(f)
                    if item is not None:
                        self._pending.append(item)
            except av.error.FFmpegError:
                pass
        # Next loop starts where this one ended; reopening resets demuxer and decoder.
        self._loop_base = self._last_end
        self._first = None
        self.close()
        c = self._open_container()
        try:
            self._setup(c)
        except BaseException:
            c.close()
            raise
        self._container = c

    def _ts(self, ts: int | None, tb: Fraction | None) -> int:
        """A source timestamp mapped onto this source's monotonic TIME_BASE line."""
        if ts is None:
            return self._fallback_ts
        t = to_90k(ts, tb)
        if self._first is None:
            self._first = t
        out = self._loop_base + t - self._first
        prev = self._prev
        if self.kind != "file" and prev is not None and not prev - HZ < out < prev + 10 * HZ:
            # A camera that restarted its clock (or wrapped it): carry on from here.
            log.info("%s: timestamp jump of %.1f s; re-anchoring", self.name, (out - prev) / HZ)
            self._loop_base = max(self._last_end, prev + 1)
            self._first = t
            out = self._loop_base
        self._prev = out
        return out

    def _encoded(self, p: av.Packet[Any]) -> EncodedPacket:
        tb = p.time_base
        dur90 = round(HZ / self._src_fps)
        dts = self._ts(p.dts if p.dts is not None else p.pts, tb)
        pts = self._ts(p.pts, tb) if p.pts is not None else dts
        dur = to_90k(p.duration, tb) if p.duration else dur90
        self._last_end = max(self._last_end, dts + dur)
        self._fallback_ts = dts + dur
        key = bool(p.is_keyframe)
        data = self._params.process(bytes(p), key)
        if key and self._params.extradata is not None and self.video_info is None:
            self.video_info = StreamInfo(
                kind="video",
                codec="h264",
                width=self._stream.codec_context.width,
                height=self._stream.codec_context.height,
                fps=round(self._src_fps),
                extradata=self._params.extradata,
            )
        return EncodedPacket(
            kind="video",
            data=data,
            pts=max(pts, dts),
            dts=dts,
            duration=dur,
            keyframe=key,
            capture_time=0.0,  # stamped when it is due
        )

    def _raw(self, f: VideoFrame) -> RawVideo | None:
        s = self.settings
        pts = self._ts(f.pts, f.time_base)
        dur = round(HZ / s.fps)
        self._last_end = max(self._last_end, pts + round(HZ / self._src_fps))
        self._fallback_ts = pts + dur
        # Frame-rate conversion by dropping: keep one frame per 1/fps slot.
        tol = dur // 4
        if pts < self._next_slot - tol:
            return None
        self._next_slot = max(self._next_slot + dur, pts + dur - tol)
        if f.width != s.width or f.height != s.height or f.format.name != "yuv420p":
            f = f.reformat(width=s.width, height=s.height, format="yuv420p")
        return RawVideo(f, pts, 0.0)

    def _paced(self, item: SourceItem) -> SourceItem | None:
        ts = item.dts if isinstance(item, EncodedPacket) else item.pts
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now - ts / HZ
        if self.realtime:
            due = self._t0 + ts / HZ
            if due > now and due > self._burst_until:
                if _pause(self.stop, due - now):
                    self._pending.appendleft(item)
                    return None
                if self.kind == "file":
                    # A file is not live: what falls due in the next FILE_BURST s goes out
                    # now, one wake-up for several frames instead of one per frame.
                    self._burst_until = due + FILE_BURST
            elif now - due > 1.0:  # we were stalled: do not race to catch up
                self._t0 = now - ts / HZ
        ct = self.clock()
        if isinstance(item, EncodedPacket):
            return _stamped(item, ct)
        item.capture_time = ct
        return item


def _stamped(p: EncodedPacket, capture_time: float) -> EncodedPacket:
    return EncodedPacket(p.kind, p.data, p.pts, p.dts, p.duration, p.keyframe, capture_time)


def _why(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --- the Raspberry Pi camera ------------------------------------------------------------


def _import_picamera2() -> tuple[Any, Any, Any]:
    try:
        from picamera2 import Picamera2
        from picamera2.encoders import H264Encoder
        from picamera2.outputs import Output
    except ImportError as exc:
        raise MediaError(PICAMERA2_MISSING) from exc
    return Picamera2, H264Encoder, Output


class PiCameraSource(Source):
    """The Pi camera through picamera2: its hardware H.264 encoder (``picamera2-h264``), or
    YUV420 frames for libx264 (a Pi 5 has no encoder block).

    picamera2's encoder thread calls our Output; packets cross to the channel's worker
    through a bounded queue. When the worker falls behind, packets are dropped up to the
    next key frame (so what is delivered still decodes).
    """

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
            config = cam.create_video_configuration(
                main={"size": (s.width, s.height), "format": "YUV420"},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
            )
            cam.configure(config)
            # libcamera may align the size it was asked for; believe what it configured.
            actual = (getattr(cam, "camera_config", None) or {}).get("main", {}).get("size")
            if actual and tuple(actual) != (s.width, s.height):
                log.warning("picamera2: %dx%d configured as %dx%d", s.width, s.height, *actual)
                self._size = (int(actual[0]), int(actual[1]))
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
        self._last = time.monotonic()

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
        try:
            array = request.make_array("main")
            ts_ns = int(request.get_metadata().get("SensorTimestamp", 0))
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
        return RawVideo(frame, round(rel * HZ / 1_000_000), self._capture_time(rel))


def _yuv420_packed(array: np.ndarray, w: int, h: int) -> np.ndarray:
    """picamera2's YUV420 array ((h * 3 / 2) rows of ``stride`` bytes) without padding."""
    stride = array.shape[1]
    if stride == w:
        return array
    flat = array.reshape(-1)
    cs, n = stride // 2, (h // 2) * (stride // 2)
    y = array[:h, :w]
    u = flat[h * stride : h * stride + n].reshape(h // 2, cs)[:, : w // 2]
    v = flat[h * stride + n : h * stride + 2 * n].reshape(h // 2, cs)[:, : w // 2]
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


# --- choosing ---------------------------------------------------------------------------


def make_source(
    spec: str,
    settings: EncodeSettings,
    clock: Clock,
    stop: threading.Event,
    *,
    label: str = "",
    realtime: bool = True,
) -> Source:
    """The source for a ``camera.source`` value (validated by config)."""
    if spec == "emulated":
        return EmulatedSource(settings, clock, stop, label=label, realtime=realtime)
    if spec == "picamera2":
        return PiCameraSource(settings, clock, stop)
    if spec.startswith("file:"):
        return DemuxSource("file", spec[5:], settings, clock, stop, realtime=realtime)
    if spec.startswith("v4l2:"):
        return DemuxSource("v4l2", spec[5:], settings, clock, stop)
    if spec.startswith(("rtsp://", "rtsps://")):
        return DemuxSource("rtsp", spec, settings, clock, stop)
    raise MediaError(f"unknown camera source {redact_url(spec)!r}")


def iter_items(source: Source, limit: int) -> Iterator[SourceItem]:
    """Up to ``limit`` items from an opened source (tests and the benchmark)."""
    n = 0
    while n < limit:
        item = source.read()
        if item is not None:
            n += 1
            yield item
