"""MPEG-TS muxing of published packets, one muxer per consumer (live, recording).

PyAV writes into a file-like sink whose ``write()`` never raises: per the field notes,
an exception out of the sink kills the container for good. With ``buffer_size`` equal to
the message size and custom IO flushing after every packet, each write is already whole
188-byte TS packets and at most one SRT message; the sink still checks and re-chunks, so
the callback contract (``len % 188 == 0`` and ``<= message_size``) holds whatever PyAV does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import av
import av.error
from av.container import OutputContainer
from av.stream import Stream

from hss_pu.media.packets import TIME_BASE, EncodedPacket, StreamInfo

__all__ = ["TS_PACKET", "TsMuxer", "mux_to_file"]

log = logging.getLogger("hss_pu.media.tsmux")

TS_PACKET = 188
AVIO_BUFFER = 256 * 1024


class _Sink:
    """File-like object for PyAV: forwards whole TS packets, swallows callback errors."""

    def __init__(self, write: Callable[[bytes], object], message_size: int | None) -> None:
        self._write = write
        self._size = message_size
        self._pending = b""
        self.bytes_out = 0
        self.messages = 0
        self.errors = 0

    def write(self, data: bytes) -> int:
        n = len(data)
        try:
            buf = self._pending + bytes(data) if self._pending else bytes(data)
            whole = len(buf) - len(buf) % TS_PACKET
            self._pending = buf[whole:]
            if self._size is None:
                if whole:
                    self._emit(buf[:whole] if whole < len(buf) else buf)
            else:
                for i in range(0, whole, self._size):
                    self._emit(buf[i : min(i + self._size, whole)])
        except Exception:  # never let anything reach PyAV
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.exception("TS sink failed (%d times)", self.errors)
        return n

    def _emit(self, chunk: bytes) -> None:
        self.messages += 1
        self.bytes_out += len(chunk)
        try:
            self._write(chunk)
        except Exception:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.exception("TS consumer failed (%d times)", self.errors)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self._pending:
            # Cannot happen with PyAV's mpegts muxer; a partial TS packet is useless anyway.
            log.warning("dropping %d bytes of a partial TS packet", len(self._pending))
            self._pending = b""


class TsMuxer:
    """Packets in, MPEG-TS messages out through ``write`` (never called with a partial
    TS packet, nor with more than ``message_size`` bytes unless that is None: then one
    call per packet muxed). Packets must start at a video key frame (a
    :class:`~hss_pu.media.packets.KeyframeGate` in front of it does that).

    FFmpeg re-sends PAT/PMT in front of every video key frame (and every 100 ms), so the
    byte stream cut where a key frame's packet begins plays alone. (``pat_pmt_at_frames``
    would do it at *every* frame: ~90 kbit/s at 30 fps, for nothing.)
    """

    def __init__(
        self,
        video: StreamInfo,
        audio: StreamInfo | None,
        write: Callable[[bytes], object],
        *,
        message_size: int | None = 1316,
        max_delay_us: int = 0,
    ) -> None:
        if message_size is not None and (message_size < TS_PACKET or message_size % TS_PACKET):
            raise ValueError(f"message_size must be a multiple of {TS_PACKET}")
        if video.codec != "h264":
            raise ValueError(f"TS muxer: unsupported video codec {video.codec!r}")
        self._sink = _Sink(write, message_size)
        options = {
            "max_delay": str(max_delay_us),
            # With audio, the interleaver would otherwise hold video for up to 10 s.
            "max_interleave_delta": "100000",
        }
        # A buffer larger than a frame: with custom IO the muxer flushes after every packet
        # anyway, so this is one write() per packet instead of one per message.
        self._container: OutputContainer | None = av.open(
            self._sink, "w", format="mpegts", buffer_size=AVIO_BUFFER, options=options
        )
        c = self._container
        self._video = c.add_mux_stream(
            "h264", rate=video.fps or None, width=video.width, height=video.height
        )
        self._video.time_base = TIME_BASE
        self._audio: Stream | None = None
        if audio is not None:
            if audio.codec != "aac" or audio.extradata:
                raise ValueError("TS muxer: audio must be AAC in ADTS (StreamInfo.extradata None)")
            self._audio = c.add_mux_stream("aac", rate=audio.sample_rate)
            self._audio.time_base = TIME_BASE
        self.packets = 0
        self.errors = 0

    @property
    def bytes_out(self) -> int:
        return self._sink.bytes_out

    @property
    def messages(self) -> int:
        return self._sink.messages

    @property
    def sink_errors(self) -> int:
        return self._sink.errors

    def mux(self, pkt: EncodedPacket) -> None:
        """Mux one packet; a packet the muxer refuses is counted and dropped."""
        c = self._container
        if c is None:
            return
        stream = self._video if pkt.kind == "video" else self._audio
        if stream is None:
            return
        p = av.Packet(pkt.data)
        p.pts = pkt.pts
        p.dts = pkt.dts
        p.duration = pkt.duration
        p.time_base = TIME_BASE
        p.is_keyframe = pkt.keyframe
        p.stream = stream
        try:
            c.mux_one(p)
            self.packets += 1
        except (av.error.FFmpegError, ValueError) as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("TS muxer dropped a %s packet: %s (%d)", pkt.kind, exc, self.errors)

    def close(self) -> None:
        """Write what the muxer still holds; the callback gets the last messages."""
        c, self._container = self._container, None
        if c is None:
            return
        try:
            c.close()
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            log.warning("TS muxer close: %s", exc)
        self._sink.finish()

    def __enter__(self) -> TsMuxer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mux_to_file(
    path: str | Path,
    packets: Iterable[EncodedPacket],
    video: StreamInfo,
    audio: StreamInfo | None = None,
) -> int:
    """Write packets to a .ts file (tests, tools); returns the bytes written."""
    with open(path, "wb") as f, TsMuxer(video, audio, f.write) as mux:
        for p in packets:
            mux.mux(p)
    return mux.bytes_out
