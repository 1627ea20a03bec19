"""One video encoder per channel (and AAC for the emulated tone): encode once, mux many.

Settings follow the field notes: libx264 ``tune=zerolatency`` with SLICE threads (FRAME
threads add frames of delay), a fixed GOP with no scene cuts so segments line up, VBV
``maxrate = bitrate`` with a buffer of a few frames so a key frame cannot burst past what
SRT can pace out, and SPS/PPS in front of every key frame so each GOP decodes alone.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, cast

import av
import av.error
import numpy as np
from av.audio.frame import AudioFrame
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame

from hss_pu.errors import HssError
from hss_pu.media.h264 import ParameterSetCache
from hss_pu.media.packets import TIME_BASE, EncodedPacket, StreamInfo, to_90k
from hss_pu.media.picture import PLAIN, Picture

if TYPE_CHECKING:
    from hss_pu.config import CameraSection
    from hss_pu.profiles import ChannelSpec

__all__ = [
    "MAX_KEYFRAME_SECONDS",
    "VBV_FRAMES",
    "AudioEncoder",
    "EncodeSettings",
    "MediaError",
    "SourceUnavailable",
    "VideoEncoder",
    "adts_header",
]

log = logging.getLogger("hss_pu.media.encoder")

MAX_KEYFRAME_SECONDS = 2.0  # live joiners and segment cuts wait at most this long
# VBV buffer in frames at the target rate: an I-frame can be at most this many average
# frames, so SRT (MAXBW 2-4x the bitrate) sends it within ~2 frame times.
VBV_FRAMES = 5
AUDIO_BITRATE = 64_000
_CAPTURE_TIMES = 64  # pts -> capture time entries kept for encoders that hold frames


class MediaError(HssError):
    """A source or encoder cannot run; the message says what and how to fix it."""


class SourceUnavailable(MediaError):
    """A failure that may go away by itself (network camera down): retried, not fatal."""


@dataclass(frozen=True, slots=True)
class EncodeSettings:
    width: int
    height: int
    fps: int
    bitrate: int
    gop_frames: int
    encoder: str  # ChannelSpec.encoder: libx264 | h264_v4l2m2m | picamera2-h264 | passthrough
    preset: str = "ultrafast"
    audio: bool = False  # the profile takes audio input (if the source has sound)
    audio_rate: int = 48_000
    picture: Picture = PLAIN  # flips and OSD, applied to raw frames before encoding

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"bad size {self.width}x{self.height} (even, >= 16)")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"bad fps {self.fps}")
        if self.gop_frames < 1:
            raise ValueError(f"bad gop_frames {self.gop_frames}")

    @property
    def passthrough(self) -> bool:
        return self.encoder == "passthrough"

    @property
    def frame_duration(self) -> int:
        return round(TIME_BASE.denominator / self.fps)

    @classmethod
    def from_config(
        cls,
        profile_channel: ChannelSpec,
        camera_section: CameraSection,
        bitrate: int | None = None,
        *,
        preset: str = "ultrafast",
    ) -> EncodeSettings:
        """Camera settings clamped to what the channel's profile allows."""
        ch, cam = profile_channel, camera_section
        size = (cam.width, cam.height)
        if size not in {tuple(r) for r in ch.resolutions}:
            size = ch.max_resolution
        fps = min(cam.fps, ch.max_fps)
        rate = min(bitrate or cam.bitrate or ch.default_bitrate, ch.max_bitrate)
        gop = max(1, min(round(fps * ch.gop_seconds), math.floor(fps * MAX_KEYFRAME_SECONDS)))
        return cls(
            width=size[0],
            height=size[1],
            fps=fps,
            bitrate=rate,
            gop_frames=gop,
            encoder=ch.encoder,
            preset=preset,
            audio=ch.audio.input,
            audio_rate=ch.audio.sample_rate,
        )


def _x264_options(s: EncodeSettings) -> dict[str, str]:
    bufsize = max(s.bitrate * VBV_FRAMES // s.fps, 8_000)
    return {
        "preset": s.preset,
        "tune": "zerolatency",
        "keyint_min": str(s.gop_frames),
        "sc_threshold": "0",
        # request_keyframe() sets pict_type I: make that an IDR, not a mere I-frame.
        "forced-idr": "1",
        "maxrate": str(s.bitrate),
        "bufsize": str(bufsize),
        "x264-params": "repeat-headers=1",
    }


class VideoEncoder:
    """Raw frames in, Annex B packets stamped in TIME_BASE out. Not thread-safe except
    :meth:`request_keyframe`, which any thread may call."""

    def __init__(self, settings: EncodeSettings) -> None:
        self.settings = settings
        self.codec_name = "libx264" if settings.encoder != "h264_v4l2m2m" else "h264_v4l2m2m"
        self._keyframe_wanted = False
        self._params = ParameterSetCache()
        self._times: collections.OrderedDict[int, float] = collections.OrderedDict()
        self.info: StreamInfo | None = None
        try:
            self._ctx = self._open(self.codec_name)
        except (av.error.FFmpegError, ValueError) as exc:
            if self.codec_name == "libx264":
                raise MediaError(f"libx264: cannot open the encoder: {exc}") from exc
            log.warning("h264_v4l2m2m unavailable (%s); falling back to libx264", exc)
            self.codec_name = "libx264"
            self._ctx = self._open("libx264")

    def _open(self, name: str) -> VideoCodecContext:
        s = self.settings
        ctx = cast(VideoCodecContext, av.CodecContext.create(name, "w"))
        ctx.width, ctx.height, ctx.pix_fmt = s.width, s.height, "yuv420p"
        ctx.time_base = TIME_BASE
        ctx.framerate = Fraction(s.fps)
        ctx.bit_rate = s.bitrate
        ctx.gop_size = s.gop_frames
        if name == "libx264":
            ctx.thread_type = "SLICE"
            ctx.options = _x264_options(s)
        ctx.open()
        return ctx

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True

    def encode(self, frame: VideoFrame, pts: int, capture_time: float) -> list[EncodedPacket]:
        frame.pts = pts
        frame.time_base = TIME_BASE
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            frame.pict_type = PictureType.I
        else:
            frame.pict_type = PictureType.NONE
        self._times[pts] = capture_time
        while len(self._times) > _CAPTURE_TIMES:
            self._times.popitem(last=False)
        return self._packets(self._ctx.encode(frame), capture_time)

    def flush(self) -> list[EncodedPacket]:
        try:
            return self._packets(self._ctx.encode(None), None)
        except av.error.FFmpegError:
            return []

    def _packets(self, pkts: list[av.Packet[Any]], fallback: float | None) -> list[EncodedPacket]:
        out = []
        dur = self.settings.frame_duration
        for p in pkts:
            if p.pts is None:
                continue
            pts = to_90k(p.pts, p.time_base)
            dts = pts if p.dts is None else to_90k(p.dts, p.time_base)
            key = bool(p.is_keyframe)
            data = self._params.process(bytes(p), key)
            ct = self._times.pop(pts, fallback)
            out.append(
                EncodedPacket(
                    kind="video",
                    data=data,
                    pts=pts,
                    dts=dts,
                    duration=dur,
                    keyframe=key,
                    capture_time=ct if ct is not None else 0.0,
                )
            )
            if key and self._params.extradata is not None:
                self._update_info(self._params.extradata)
        return out

    def _update_info(self, extradata: bytes) -> None:
        if self.info is None or self.info.extradata != extradata:
            s = self.settings
            self.info = StreamInfo(
                kind="video",
                codec="h264",
                width=s.width,
                height=s.height,
                fps=s.fps,
                extradata=extradata,
            )

    def close(self) -> None:
        self._times.clear()


_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def adts_header(payload_size: int, sample_rate: int, channels: int) -> bytes:
    """The 7-byte ADTS header (AAC-LC) that lets MPEG-TS carry raw AAC frames."""
    idx = _AAC_RATES.index(sample_rate)
    n = payload_size + 7
    return bytes(
        (
            0xFF,
            0xF1,  # MPEG-4, no CRC
            (1 << 6) | (idx << 2) | (channels >> 2),  # profile LC (object type 2, minus 1)
            ((channels & 3) << 6) | (n >> 11),
            (n >> 3) & 0xFF,
            ((n & 7) << 5) | 0x1F,
            0xFC,
        )
    )


class AudioEncoder:
    """AAC-LC, published as ADTS so TS muxers need no extradata."""

    def __init__(self, sample_rate: int = 48_000, channels: int = 1) -> None:
        if sample_rate not in _AAC_RATES:
            raise MediaError(f"aac: unsupported sample rate {sample_rate}")
        self.sample_rate = sample_rate
        self.channels = channels
        ctx = av.CodecContext.create("aac", "w")
        ctx.sample_rate = sample_rate
        ctx.layout = "mono" if channels == 1 else "stereo"
        ctx.format = "fltp"
        ctx.bit_rate = AUDIO_BITRATE
        ctx.time_base = Fraction(1, sample_rate)
        ctx.open()
        self._ctx = ctx
        self._times: collections.deque[tuple[int, float]] = collections.deque(maxlen=64)
        self.info = StreamInfo(
            kind="audio", codec="aac", sample_rate=sample_rate, channels=channels, extradata=None
        )

    def encode(self, samples: np.ndarray, pts: int, capture_time: float) -> list[EncodedPacket]:
        """``samples``: float32 (channels, n) at ``sample_rate``; ``pts`` in TIME_BASE."""
        frame = AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32),
            format="fltp",
            layout=self._ctx.layout,
        )
        frame.sample_rate = self.sample_rate
        frame.time_base = Fraction(1, self.sample_rate)
        frame.pts = round(pts * self.sample_rate / TIME_BASE.denominator)
        self._times.append((pts, capture_time))
        out = []
        for p in self._ctx.encode(frame):
            if p.pts is None:
                continue
            raw = bytes(p)
            ts = to_90k(p.pts, p.time_base)
            ct = capture_time
            for t, c in reversed(self._times):  # the chunk these samples came from
                if t <= ts:
                    ct = c
                    break
            out.append(
                EncodedPacket(
                    kind="audio",
                    data=adts_header(len(raw), self.sample_rate, self.channels) + raw,
                    pts=ts,
                    dts=ts if p.dts is None else to_90k(p.dts, p.time_base),
                    duration=to_90k(p.duration or 1024, p.time_base),
                    keyframe=True,
                    capture_time=ct,
                )
            )
        return out
