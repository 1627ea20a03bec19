"""Files, V4L2 cameras, RTSP cameras: anything FFmpeg demuxes.

H.264 passes through untouched when the settings allow it; anything else is decoded and
scaled to the channel's size for the encoder. Sound (a file's or an RTSP camera's first
audio track, when the profile takes audio input) is decoded and resampled to mono at the
channel's rate, for the channel's AAC encoder.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, Literal

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame

from hss_pu.media.encoder import EncodeSettings, MediaError, SourceUnavailable
from hss_pu.media.h264 import ParameterSetCache, is_annexb
from hss_pu.media.packets import EncodedPacket, StreamInfo, to_90k
from hss_pu.media.sources.base import (
    HZ,
    Clock,
    RawAudio,
    RawVideo,
    Source,
    SourceItem,
    pause,
)
from hss_pu.wire.urls import redact_url, scrub_url

__all__ = ["DemuxSource"]

log = logging.getLogger("hss_pu.media.source")

FILE_BURST = 0.1  # a file source sends what falls due within this many seconds at once
# Sound is stamped by counting samples from its first frame; when the source's own
# timestamps drift further than this from that count (a camera glitch), count afresh.
AUDIO_RESYNC = HZ // 10


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
        self._astream: av.audio.stream.AudioStream | None = None
        self._resampler: av.AudioResampler | None = None
        self._audio_origin: int | None = None  # TIME_BASE of the first sample counted
        self._loop_items = 0  # items produced since the file was (re)opened
        self._audio_samples = 0

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
                raise SourceUnavailable(f"{self.name}: {_why(exc, self.target)}") from exc
            raise MediaError(f"{self.name}: cannot open: {_why(exc, self.target)}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            if self.kind == "rtsp" and not isinstance(exc, av.error.HTTPClientError):
                raise SourceUnavailable(f"{self.name}: {_why(exc, self.target)}") from exc
            raise MediaError(f"{self.name}: cannot open: {_why(exc, self.target)}") from exc

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
            fits = size_ok and fps_ok and s.picture.identity  # nothing to change in it
            passthrough = codec == "h264" and (s.passthrough or fits)
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
        self._astream = None
        if s.audio and self.kind != "v4l2" and c.streams.audio:
            self._astream = c.streams.audio[0]
            self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=s.audio_rate)
        self.audio = self._astream is not None
        self._audio_origin = None
        streams: list[Any] = [vs] if self._astream is None else [vs, self._astream]
        self._demux: Iterator[av.Packet[Any]] = c.demux(*streams)
        log.info(
            "%s: %s %dx%d @ %.3g fps, %s",
            self.name,
            codec,
            vs.codec_context.width,
            vs.codec_context.height,
            self._src_fps,
            "passed through" if passthrough else f"re-encoded to {s.width}x{s.height}@{s.fps}",
        )
        if self._astream is not None:
            a = self._astream.codec_context
            log.info("%s: sound %s %d Hz, encoded to AAC", self.name, a.name, a.sample_rate)

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
            raise SourceUnavailable(f"{self.name}: {_why(exc, self.target)}") from exc
        if pkt.size == 0:
            return None  # the demuxer's flush packet
        if self._astream is not None and pkt.stream_index == self._astream.index:
            self._decode_audio(pkt)
        elif self.passthrough:
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
        self._loop_items += 1
        return self._paced(self._pending.popleft())

    def _end_of_input(self) -> None:
        if self.kind != "file":
            raise SourceUnavailable(f"{self.name}: end of stream")
        if not self._loop_items and not self._pending:
            # Nothing came out of a whole pass (a damaged file): looping it again at once
            # would spin, since only what is produced is paced.
            raise MediaError(f"{self.name}: no picture could be decoded from the file")
        self._loop_items = 0
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
        self.open()

    def _decode_audio(self, pkt: av.Packet[Any]) -> None:
        astream, resampler = self._astream, self._resampler
        assert astream is not None and resampler is not None
        try:
            frames = astream.codec_context.decode(pkt)
        except (av.error.InvalidDataError, ValueError):
            return  # a damaged packet: silence there rather than a failed camera
        for f in frames:
            # Mapped like the video, from the video's first timestamp: sound that comes
            # before the loop's first picture is not kept.
            if self._first is None:
                continue
            t = self._ts(f.pts, f.time_base) if f.pts is not None else None
            expected = self._audio_pts()
            if t is not None and (expected is None or abs(t - expected) > AUDIO_RESYNC):
                self._audio_origin, self._audio_samples = t, 0
            for out in resampler.resample(f):
                samples = out.to_ndarray().astype(np.float32, copy=False)
                pts = self._audio_pts()
                assert pts is not None
                self._audio_samples += samples.shape[1]
                end = self._audio_pts()
                assert end is not None
                self._last_end = max(self._last_end, end)
                self._pending.append(RawAudio(samples, pts, 0.0))

    def _audio_pts(self) -> int | None:
        """Where the next sample falls, counted from the first (None before it)."""
        if self._audio_origin is None:
            return None
        rate = self.settings.audio_rate
        return self._audio_origin + self._audio_samples * HZ // rate

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
                if pause(self.stop, due - now):
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


def _why(exc: BaseException, target: str) -> str:
    """FFmpeg's reason, without the URL's secrets should the text quote it."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return scrub_url(exc.strerror, target)
    return scrub_url(str(exc), target) or type(exc).__name__
