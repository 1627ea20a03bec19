"""The emulated camera: a moving test picture with a machine-readable capture time, and a
1 kHz tone. Laptops and CI run every path of the daemon with it; benchmarks and tests
read the drawn timecode back out of what was encoded to measure latency exactly.

With ``camera.scene = "static"`` it looks at a still room instead (sensor-like noise, no
codes), which a :class:`Scene` lets a person or a test change: someone walks across,
the lights go on or off, night falls, the IR LEDs light it. The moving pattern would
keep a motion detector busy for ever; the room is for trying the alarms.

The camera sits on an emulated pan/tilt/zoom head (:meth:`Scene.set_view`): the room is
part of a larger one (a shelf to the right, a lamp to the left, the ceiling above) and
the picture is the window the head looks through, :data:`HFOV` degrees wide at zoom 1;
the test pattern is an endless tiling of itself. Straight ahead and unzoomed, the
picture is exactly the one without a head.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Any

import numpy as np
from av.video.frame import VideoFrame

from hss_pu.media import font
from hss_pu.media.encoder import EncodeSettings
from hss_pu.media.sources.base import HZ, Clock, RawAudio, RawVideo, Source, SourceItem, pause

__all__ = ["CODE_BITS", "SCENES", "EmulatedSource", "Scene", "read_timecode", "timecode_bits"]

log = logging.getLogger("hss_pu.media.source")

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


CODE_BITS = 48
_DATA_BITS = 42  # epoch milliseconds up to year 2109
_MARK = (1, 0)
_BLACK, _WHITE = 16, 235  # luma extremes: survive low bitrates, and limited range
_BAND_Y = 64  # the overlay band behind the code and the text


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


SCENES = ("pattern", "static")
_DAYLIGHT_LUX, _LAMP_LUX, _NIGHT_LUX = 250.0, 150.0, 0.5
_FULL_LUX = _DAYLIGHT_LUX + _LAMP_LUX  # the room as drawn, gain 1
_NOISE_BANK = 6  # noisy versions of the still picture, picked at random per frame
_WALK_SECONDS = 4.0  # one crossing of the picture
HFOV = 60.0  # degrees the emulated camera sees across at zoom 1


class Scene:
    """What the emulated camera looks at, and the controls to change it from any thread
    (the control socket's ``hss-pu sensor motion on``, the LED service, tests). Each
    control is a plain attribute write the capture thread reads once per frame.

    ``kind`` ``"pattern"`` is the moving test picture (only :meth:`set_motion` shows on
    it); ``"static"`` the room, where every control shows.
    """

    def __init__(self, kind: str = "pattern") -> None:
        if kind not in SCENES:
            raise ValueError(f"scene {kind!r}: expected one of {', '.join(SCENES)}")
        self.kind = kind
        self.motion = False  # someone walks to and fro across the picture
        self.lights = False  # the room's lamp
        self.dark = False  # night: no daylight
        self.ir = False  # IR LEDs lit (the picture turns monochrome)
        self.changes = 0  # bumped by every change of light (the source redraws)
        self.view = (0.0, 0.0, 1.0)  # pan, tilt (degrees), zoom of the PTZ head

    def set_view(self, pan: float, tilt: float, zoom: float) -> None:
        """Where the PTZ head looks (one tuple write: the capture thread sees all three)."""
        self.view = (float(pan), float(tilt), max(1.0, float(zoom)))

    def set_motion(self, on: bool) -> None:
        self.motion = bool(on)

    def set_lights(self, on: bool) -> None:
        """The lamp: a sudden global brightness step (about 1.3x by day, 100x by night)."""
        self._light("lights", on)

    def set_dark(self, on: bool) -> None:
        """Night falls (or the day comes back) at once."""
        self._light("dark", on)

    def set_ir(self, on: bool) -> None:
        """IR illumination: what the LED service switches on when :attr:`lux` is low."""
        self._light("ir", on)

    def _light(self, name: str, on: bool) -> None:
        if getattr(self, name) != bool(on):
            setattr(self, name, bool(on))
            self.changes += 1

    @property
    def lux(self) -> float:
        """The visible light on the scene, as a light sensor (or picamera2's ``Lux``)
        would read it: ~250 by day, ~400 with the lamp, 0.5 at night; IR is not counted."""
        return (
            (0.0 if self.dark else _DAYLIGHT_LUX) + (_LAMP_LUX if self.lights else 0) + (_NIGHT_LUX)
        )

    @property
    def gain(self) -> float:
        """The picture's brightness relative to the room as drawn (sqrt: video gamma)."""
        visible = math.sqrt(self.lux / _FULL_LUX)
        return max(visible, 0.7) if self.ir else max(0.06, min(1.0, visible))

    @property
    def noise(self) -> float:
        """Sensor noise (sd, luma levels): a dark picture is an amplified, noisy one."""
        return 3.5 if self.ir else 1.5 + 4.0 * (1.0 - self.gain)


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
        scene: Scene | None = None,
    ) -> None:
        self.scene = scene if scene is not None else Scene()
        self.settings = settings
        self.clock = clock
        self.stop = stop
        self.label = label
        self.realtime = realtime
        self.name = "emulated"
        self.audio = settings.audio  # the tone
        self.frames_writable = True  # drawn afresh for every frame
        self.own_zoom = True  # the scene's view (PTZ) is drawn zoomed
        self.dropped = 0
        self._pending: collections.deque[RawAudio] = collections.deque(maxlen=4)
        self.draw_seconds = 0.0  # total time spent drawing (bench)

    @property  # read-only here: the scene decides
    def lux(self) -> float:  # type: ignore[override]
        """The scene's visible light, as a light sensor would read it."""
        return self.scene.lux

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
        # Each byte's glyph and the gap after it, on the band's grey.
        self._cells = font.cells(self._scale, _WHITE, _BAND_Y)[:, : font.GLYPH_H * self._scale]
        self._text_y = 3 * b
        self._band = min(h, (self._text_y + 7 * self._scale + b + 1) & ~1)
        self._bg_y[: self._band] = _BAND_Y
        self._bg_u[: self._band // 2] = 128
        self._bg_v[: self._band // 2] = 128
        self._box = max(8, (h // 6) & ~1)
        self._room: _Room | None = None
        self._walker = _Walker(w, h, s.fps)
        self._graph = None if self.scene.kind == "static" else self._testsrc(w, h, s.fps)
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
                if pause(self.stop, due - now):
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
        scene = self.scene
        if scene.kind == "static":
            room = self._room
            if room is None or room.changes != scene.changes or room.view != scene.view:
                room = self._room = _Room(w, h, scene, self._room)
            room.draw(y, u, v)
            if scene.motion:
                self._walker.draw(y, u, v, room.gain, room.saturation)
            else:
                self._walker.reset()
            return frame  # no codes: a still picture stays still
        if scene.view != (0.0, 0.0, 1.0):
            _look(scene.view, y, u, v)
        if self._graph is not None:
            # testsrc2 moves by itself; clear the band that carries the codes.
            y[: self._band] = _BAND_Y
            u[: self._band // 2] = 128
            v[: self._band // 2] = 128
        else:
            self._draw_pattern(k, y, u, v)
            if scene.view != (0.0, 0.0, 1.0):
                _look(scene.view, y[self._band :], u[self._band // 2 :], v[self._band // 2 :])
        if scene.motion:
            self._walker.draw(y, u, v, 1.0, 1.0)
        else:
            self._walker.reset()
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


def _window(view: tuple[float, float, float], w: int, h: int) -> tuple[float, float, float]:
    """The view's centre in picture pixels of the home view, and its zoom."""
    pan, tilt, zoom = view
    vfov = HFOV * h / w
    return w * (0.5 + pan / HFOV), h * (0.5 - tilt / vfov), zoom


def _look(view: tuple[float, float, float], y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """The test pattern as seen by the head: ``y``/``u``/``v`` (the picture straight
    ahead) replaced in place by the window ``view`` looks through, on the pattern tiled
    without end."""
    h, w = y.shape
    cx, cy, z = _window(view, w, h)
    xs = np.floor(cx + (np.arange(w) - w / 2) / z).astype(np.intp) % w
    ys = np.floor(cy + (np.arange(h) - h / 2) / z).astype(np.intp) % h
    y[:] = y[ys[:, None], xs[None, :]]
    hh, hw = u.shape
    xc, yc = (xs[::2] // 2)[:hw], (ys[::2] // 2)[:hh]
    u[:] = u[yc[:, None], xc[None, :]]
    v[:] = v[yc[:, None], xc[None, :]]


def _bounce(pos: int, span: int) -> int:
    p = pos % (2 * span)
    return p if p < span else 2 * span - p


def _room_picture(
    w: int, h: int, view: tuple[float, float, float] = (0.0, 0.0, 1.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A still room at full light: (Y float32, U, V uint8 at half size). Walls, a
    floor of planks, a door, a window, a picture frame: edges and texture, as a real
    picture has, so that noise and the detector's fit meet real structure.

    ``view``: where the PTZ head looks (:func:`_window`); the room goes on beyond the
    home picture. Drawn on the home picture's pixel grid, so straight ahead and unzoomed
    it is pixel for pixel the picture without a head."""
    cx, cy, z = _window(view, w, h)
    px = (cx + (np.arange(w, dtype=np.float32) - w / 2) / z)[None, :]  # home-view pixels
    py = (cy + (np.arange(h, dtype=np.float32) - h / 2) / z)[:, None]
    yy, xx = py / h, px / w
    y = np.broadcast_to(170 - 30 * yy + 10 * np.sin(xx * 37) * np.cos(yy * 23), (h, w)).copy()
    y[py[:, 0] < -0.35 * h] = 205  # the ceiling
    floor = int(h * 0.62)
    cols = np.floor(px).astype(np.int64)
    planks = 95 + 12 * np.sin(xx * w / 9.0) + 8 * ((cols // max(2, w // 12)) % 2)
    on_floor = py[:, 0] >= floor
    y[on_floor] = np.broadcast_to(planks, (int(on_floor.sum()), w))

    def span(p: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
        return np.asarray((p >= int(lo * n)) & (p < int(hi * n)))

    def box(x0: float, y0: float, x1: float, y1: float, value: float) -> None:
        y[np.ix_(span(py[:, 0], y0, y1, h), span(px[0], x0, x1, w))] = value

    box(-0.42, 0.22, -0.36, 0.62, 90)  # a standard lamp, left of the door
    box(-0.5, 0.12, -0.28, 0.24, 230)
    box(1.08, 0.1, 1.4, 0.62, 80)  # a bookshelf right of the window
    for shelf in (0.2, 0.3, 0.4, 0.5):
        box(1.1, shelf, 1.38, shelf + 0.07, 150 + 100 * shelf)
    box(0.06, 0.18, 0.24, 0.62, 120)  # door
    box(0.08, 0.21, 0.22, 0.6, 132)
    box(0.62, 0.12, 0.9, 0.4, 225)  # window
    box(0.755, 0.12, 0.765, 0.4, 150)
    box(0.62, 0.255, 0.9, 0.265, 150)
    box(0.36, 0.2, 0.5, 0.34, 70)  # a picture on the wall
    box(0.37, 0.22, 0.49, 0.32, 185)
    box(0.55, 0.5, 0.95, 0.78, 60)  # a sofa
    hh, hw = h // 2, w // 2
    qx = cx / 2 + (np.arange(hw, dtype=np.float32) - hw / 2) / z  # home-view chroma
    qy = cy / 2 + (np.arange(hh, dtype=np.float32) - hh / 2) / z
    u = np.full((hh, hw), 122, np.uint8)
    v = np.full((hh, hw), 136, np.uint8)
    below = qy >= int(floor / 2)
    u[below], v[below] = 108, 150
    sofa = np.ix_(span(qy, 0.5, 0.78, hh), span(qx, 0.55, 0.95, hw))
    u[sofa], v[sofa] = 150, 118  # a blue sofa
    return y, u, v


class _Room:
    """The room as drawn under one light: a few noisy versions of the picture, made once
    per change of light so a frame costs one copy."""

    base: np.ndarray
    u0: np.ndarray
    v0: np.ndarray
    noise: np.ndarray
    size: tuple[int, int]
    view: tuple[float, float, float]
    saturation: float

    def __init__(self, w: int, h: int, scene: Scene, old: _Room | None) -> None:
        view = scene.view
        if old is not None and old.size == (w, h):
            self.noise = old.noise
            if old.view == view:
                self.base, self.u0, self.v0 = old.base, old.u0, old.v0
            else:
                self.base, self.u0, self.v0 = _room_picture(w, h, view)
        else:
            self.base, self.u0, self.v0 = _room_picture(w, h, view)
            rng = np.random.default_rng(0)
            n = rng.standard_normal((_NOISE_BANK, h, w), dtype=np.float32) * 32
            self.noise = np.clip(n, -127, 127).astype(np.int8)  # sd 32: 1/4 the memory
        self.size = (w, h)
        self.view = view
        self.changes = scene.changes
        self.gain = g = scene.gain
        lit = 16 + (self.base - 16) * g
        if scene.ir:  # IR: materials reflect otherwise, and the colours go
            lit = 16 + (lit - 16) * 0.8 + 25 * np.sin(self.base / 23.0)
        self._lit = lit
        self._noise_scale = np.float32(scene.noise / 32)
        # Made when first drawn: while the head moves, each frame has a room of its own.
        self.bank: list[np.ndarray | None] = [None] * len(self.noise)
        # Colours fade with the light (the ISP's saturation drops with its gain); IR: grey.
        sat = 0.0 if scene.ir else g
        self.u = (128 + (self.u0.astype(np.float32) - 128) * sat).astype(np.uint8)
        self.v = (128 + (self.v0.astype(np.float32) - 128) * sat).astype(np.uint8)
        self.saturation = sat
        self._rng = np.random.default_rng()

    def draw(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        i = int(self._rng.integers(len(self.bank)))
        pic = self.bank[i]
        if pic is None:
            pic = np.clip(self._lit + self.noise[i] * self._noise_scale, 0, 255).astype(np.uint8)
            self.bank[i] = pic
        y[:] = pic
        u[:] = self.u
        v[:] = self.v


class _Walker:
    """A person walking to and fro across the picture: a silhouette (head, shoulders,
    arms, two leg poses) half the picture high, so that motion detection, and a people
    detector, have something like what they are for."""

    def __init__(self, w: int, h: int, fps: int) -> None:
        self.w, self.h = w, h
        ph = max(16, int(h * 0.55)) & ~1
        self.ph, self.pw = ph, max(6, int(ph * 0.42)) & ~1
        self.poses = [_person_mask(ph, self.pw, stride) for stride in (0.05, 0.16)]
        self.step = max(1, round((w - self.pw) / (_WALK_SECONDS * fps)))
        self.fps = fps
        self.reset()

    def reset(self) -> None:
        self.k = 0

    def draw(
        self, y: np.ndarray, u: np.ndarray, v: np.ndarray, gain: float, saturation: float
    ) -> None:
        span = max(1, self.w - self.pw)
        x = _bounce(self.step * self.k, span) & ~1
        top = max(0, int(self.h * 0.92) - self.ph) & ~1
        mask = self.poses[(self.k * 4 // max(1, self.fps)) % 2]
        self.k += 1
        region = y[top : top + self.ph, x : x + self.pw]
        m = mask[: region.shape[0], : region.shape[1]]
        region[m] = int(16 + 28 * gain)  # dark clothes
        cu = u[top // 2 : (top + self.ph) // 2, x // 2 : (x + self.pw) // 2]
        cv = v[top // 2 : (top + self.ph) // 2, x // 2 : (x + self.pw) // 2]
        mc = m[::2, ::2][: cu.shape[0], : cu.shape[1]]
        cu[mc] = round(128 + 12 * saturation)  # a blue coat
        cv[mc] = round(128 - 8 * saturation)


def _person_mask(ph: int, pw: int, stride: float) -> np.ndarray:
    """A standing person's silhouette in a ph x pw box (True inside); ``stride`` opens
    the legs (fraction of the height)."""
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    yy /= ph
    xx = (xx - pw / 2) / ph  # in heights, from the middle
    head = (xx / 0.06) ** 2 + ((yy - 0.075) / 0.07) ** 2 <= 1
    neck = (np.abs(xx) < 0.025) & (yy >= 0.13) & (yy < 0.17)
    t = np.clip((yy - 0.16) / 0.34, 0, 1)  # shoulders to hips
    torso = (yy >= 0.16) & (yy < 0.52) & (np.abs(xx) < 0.12 - 0.03 * t)
    arms = (yy >= 0.18) & (yy < 0.5) & (np.abs(xx) >= 0.12) & (np.abs(xx) < 0.16 - 0.02 * t)
    leg_t = np.clip((yy - 0.5) / 0.5, 0, 1)
    spread = 0.035 + stride * leg_t
    legs = (yy >= 0.5) & (np.abs(np.abs(xx) - spread) < 0.045)
    return np.asarray(head | neck | torso | arms | legs)
