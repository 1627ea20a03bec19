"""Where pictures come from: one module per backend behind one small interface.

``base`` (the items and the :class:`Source` interface), ``emulated`` (the synthetic
camera), ``demux`` (files, V4L2 and RTSP through FFmpeg), ``picam`` (picamera2, Pi only)
and ``factory`` (:func:`make_source`, from a ``camera.source`` value).
"""

from hss_pu.media.sources.base import (
    RawAudio,
    RawVideo,
    Source,
    SourceItem,
    iter_items,
)
from hss_pu.media.sources.demux import DemuxSource
from hss_pu.media.sources.emulated import (
    SCENES,
    EmulatedSource,
    Scene,
    read_timecode,
    timecode_bits,
)
from hss_pu.media.sources.factory import make_source
from hss_pu.media.sources.picam import PICAMERA2_MISSING, PiCameraSource

__all__ = [
    "PICAMERA2_MISSING",
    "SCENES",
    "DemuxSource",
    "EmulatedSource",
    "PiCameraSource",
    "RawAudio",
    "RawVideo",
    "Scene",
    "Source",
    "SourceItem",
    "iter_items",
    "make_source",
    "read_timecode",
    "timecode_bits",
]
