"""What the channel does to each picture before encoding: flips and the OSD text.

Raw yuv420p frames only (the libx264 / h264_v4l2m2m paths); a passthrough source never
decodes, so it cannot be changed (the configuration refuses it with error 13). Both are
cheap numpy work on the planes: a flip is one copy, the OSD a box written into a corner
(white glyphs on black, grey chroma, so it reads on any picture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from av.video.frame import VideoFrame

from hss_pu.media import font

__all__ = ["OSD_POSITIONS", "PLAIN", "Painter", "Picture", "osd_scale", "planes"]

OsdPos = Literal["topleft", "topright", "bottomleft", "bottomright"]
OSD_POSITIONS: tuple[OsdPos, ...] = ("topleft", "topright", "bottomleft", "bottomright")
OSD_FG, OSD_BG = 235, 16  # limited-range white on black


@dataclass(frozen=True, slots=True)
class Picture:
    """The configured image settings (GetConfig ``image`` and ``osd``)."""

    horflip: bool = False
    verflip: bool = False
    osd_text: str = ""
    osd_font: int = 16  # character cell height in pixels at the encoded size
    osd_pos: OsdPos = "topleft"

    @property
    def identity(self) -> bool:
        """Nothing to do: the frames go to the encoder as captured."""
        return not (self.horflip or self.verflip or self.osd_text)


PLAIN = Picture()  # as captured


def osd_scale(font_px: int, height: int) -> int:
    """Pixels per font pixel: the cell ``font_px`` high, at most a third of the frame."""
    return max(1, min(round(font_px / font.CELL_H), height // (3 * font.CELL_H)))


def planes(frame: VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable (Y, U, V) views of a yuv420p frame, without the line padding."""
    w, h = frame.width, frame.height
    sizes = ((w, h), (w // 2, h // 2), (w // 2, h // 2))
    out = []
    for plane, (pw, ph) in zip(frame.planes, sizes, strict=True):
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        out.append(rows[:ph, :pw])
    return out[0], out[1], out[2]


class Painter:
    """A :class:`Picture` for frames of one size. ``flip=False`` when the camera flips
    (picamera2's transform): then only the OSD is drawn here."""

    def __init__(self, picture: Picture, width: int, height: int, *, flip: bool = True) -> None:
        self.picture = picture
        self.width, self.height = width, height
        p = picture
        self._rows = slice(None, None, -1) if flip and p.verflip else slice(None)
        self._cols = slice(None, None, -1) if flip and p.horflip else slice(None)
        self._flips = flip and (p.horflip or p.verflip)
        self._box: tuple[int, int, np.ndarray] | None = self._layout()

    @property
    def active(self) -> bool:
        return self._flips or self._box is not None

    def _layout(self) -> tuple[int, int, np.ndarray] | None:
        """(x, y, luma) of the OSD box, on even coordinates (chroma is half size)."""
        p, w, h = self.picture, self.width, self.height
        if not p.osd_text:
            return None
        scale = osd_scale(p.osd_font, h)
        margin = max(2, (h // 40) & ~1)
        pad = scale
        fits = (w - 2 * margin - 2 * pad + scale) // (font.CELL_W * scale)
        text = font.fold(p.osd_text)[: max(0, fits)]
        if not text:
            return None
        glyphs = font.render(text, scale, OSD_FG, OSD_BG)[: font.GLYPH_H * scale, :-scale]
        bh = (glyphs.shape[0] + 2 * pad + 1) & ~1
        bw = (glyphs.shape[1] + 2 * pad + 1) & ~1
        box = np.full((bh, bw), OSD_BG, dtype=np.uint8)
        box[pad : pad + glyphs.shape[0], pad : pad + glyphs.shape[1]] = glyphs
        x = margin if p.osd_pos.endswith("left") else (w - margin - bw) & ~1
        y = margin if p.osd_pos.startswith("top") else (h - margin - bh) & ~1
        return max(0, x), max(0, y), box

    def apply(self, frame: VideoFrame, writable: bool) -> VideoFrame:
        """The frame as configured. Flipped into a new frame (one copy: flipping in place
        costs numpy a temporary as well, twice the time at 720p); the OSD alone is drawn
        in place when ``writable`` (the source made the frame for us), else into a copy
        (a decoder may still read the frame it returned)."""
        if not self.active:
            return frame
        out = frame
        if self._flips or not writable:
            out = VideoFrame(frame.width, frame.height, "yuv420p")
            for d, a in zip(planes(out), planes(frame), strict=True):
                d[:] = a[self._rows, self._cols]
        self.draw_osd(*planes(out))
        return out

    def draw_osd(self, y: np.ndarray, u: np.ndarray | None, v: np.ndarray | None) -> None:
        """The OSD box into a luma plane (and grey into the chroma planes, if given)."""
        if self._box is None:
            return
        x0, y0, box = self._box
        bh, bw = box.shape
        y[y0 : y0 + bh, x0 : x0 + bw] = box[: y.shape[0] - y0, : y.shape[1] - x0]
        for c in (u, v):
            if c is not None:
                c[y0 // 2 : (y0 + bh) // 2, x0 // 2 : (x0 + bw) // 2] = 128
