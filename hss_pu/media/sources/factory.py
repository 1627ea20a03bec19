"""The source for a ``camera.source`` value."""

from __future__ import annotations

import threading

from hss_pu.media.encoder import EncodeSettings, MediaError
from hss_pu.media.sources.base import Clock, Source
from hss_pu.media.sources.demux import DemuxSource
from hss_pu.media.sources.emulated import EmulatedSource, Scene
from hss_pu.media.sources.picam import PiCameraSource
from hss_pu.wire.urls import redact_url

__all__ = ["make_source"]


def make_source(
    spec: str,
    settings: EncodeSettings,
    clock: Clock,
    stop: threading.Event,
    *,
    label: str = "",
    realtime: bool = True,
    scene: Scene | None = None,
) -> Source:
    """The source for a ``camera.source`` value (validated by config); ``scene`` is what
    an emulated camera looks at."""
    if spec == "emulated":
        return EmulatedSource(settings, clock, stop, label=label, realtime=realtime, scene=scene)
    if spec == "picamera2":
        return PiCameraSource(settings, clock, stop)
    if spec.startswith("file:"):
        return DemuxSource("file", spec[5:], settings, clock, stop, realtime=realtime)
    if spec.startswith("v4l2:"):
        return DemuxSource("v4l2", spec[5:], settings, clock, stop)
    if spec.startswith(("rtsp://", "rtsps://")):
        return DemuxSource("rtsp", spec, settings, clock, stop)
    raise MediaError(f"unknown camera source {redact_url(spec)!r}")
