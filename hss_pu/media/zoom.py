"""Digital zoom: a centred crop of the picture scaled back to the output size.

For sources whose frames the channel encodes itself (libx264 from V4L2, files, RTSP);
picamera2 crops on the sensor instead (``ScalerCrop``), and the emulated camera draws
its view itself.
"""

from __future__ import annotations

import numpy as np
from av.video.frame import VideoFrame
from av.video.reformatter import Interpolation, VideoReformatter

__all__ = ["ZoomCropper", "crop_rect"]


def crop_rect(width: int, height: int, zoom: float, align: int = 4) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the centred 1/zoom part of a ``width`` x ``height`` picture,
    sizes a multiple of ``align`` (4: whole chroma rows for yuv420p)."""
    z = max(1.0, zoom)
    cw = max(align, int(width / z) // align * align)
    ch = max(align, int(height / z) // align * align)
    x = (width - cw) // 2 // 2 * 2
    y = (height - ch) // 2 // 2 * 2
    return x, y, cw, ch


def _plane(frame: VideoFrame, i: int, w: int, h: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)[:h, :w]


class ZoomCropper:
    """Zooms yuv420p frames on the capture thread (its own swscale context: one per
    channel, never shared between threads)."""

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def apply(self, frame: VideoFrame, zoom: float, width: int, height: int) -> VideoFrame:
        """``frame`` zoomed by ``zoom`` at ``width`` x ``height`` (the frame itself when
        there is nothing to do or it is not yuv420p)."""
        if zoom <= 1.0 or frame.format.name not in ("yuv420p", "yuvj420p"):
            return frame
        fw, fh = frame.width, frame.height
        x, y, cw, ch = crop_rect(fw, fh, zoom)
        yp = _plane(frame, 0, fw, fh)[y : y + ch, x : x + cw]
        up = _plane(frame, 1, fw // 2, fh // 2)[y // 2 : (y + ch) // 2, x // 2 : (x + cw) // 2]
        vp = _plane(frame, 2, fw // 2, fh // 2)[y // 2 : (y + ch) // 2, x // 2 : (x + cw) // 2]
        packed = np.concatenate([yp.reshape(-1), up.reshape(-1), vp.reshape(-1)]).reshape(
            ch * 3 // 2, cw
        )
        crop = VideoFrame.from_ndarray(packed, format="yuv420p")
        out = self._reformatter.reformat(
            crop, width=width, height=height, format="yuv420p", interpolation=Interpolation.BILINEAR
        )
        out.pts = frame.pts
        return out
