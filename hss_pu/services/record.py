"""Vr sessions: StartRecord / StopRecord, the segments they produce, pre-record.

A record session is a packet sink on the channel's capture thread (like the live push):
a :class:`~hss_pu.media.segmenter.Segmenter` muxes packets into segments there, seeded
from the pre-record ring, and hands each closed segment to the event loop, one callback
per segment, where the :class:`~hss_pu.services.uploader.Uploader` takes it (delivery,
memory and disk queues, op=stat). A segment is never larger than the uploader's
``max_segment_bytes``, whatever ``seg_max_size`` the platform asks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from hss_pu.bridge import LoopBridge
from hss_pu.clients.http import UrlGuard
from hss_pu.errors import DeviceError, InvalidParam
from hss_pu.fsutil import atomic_write
from hss_pu.media.channel import MediaChannel
from hss_pu.media.packets import EncodedPacket, StreamInfo
from hss_pu.media.segmenter import PrerecordRing, Segment, Segmenter
from hss_pu.services.channels import ChannelRegistry, stream_for
from hss_pu.services.uploader import Uploader
from hss_pu.services.urlcheck import check_rpc_url
from hss_pu.tasks import TaskSet
from hss_pu.wire.urls import redact_url
from hss_pu.wire.vd import StartRecordParams, StopRecordParams

__all__ = ["RecordService"]

log = logging.getLogger("hss_pu.record")

RING_BYTES_PER_SECOND_FACTOR = 2  # ring byte bound: seconds x bitrate/8 x this


def _ring_bytes(media: MediaChannel, ring: PrerecordRing) -> int:
    """The ring's byte bound, from the bitrate the encoder runs now (a SetConfig quality
    change can raise it: a bound fixed at creation would then hold less than N s)."""
    return int((ring.seconds + 2) * media.settings.bitrate / 8 * RING_BYTES_PER_SECOND_FACTOR)


class _RecordSink:
    """One session's segmenter on the capture thread."""

    def __init__(
        self,
        segmenter: Segmenter,
        ring: PrerecordRing | None,
        seed_from: float | None,
        emit: Callable[[Segment], None],
        request_keyframe: Callable[[], None],
    ) -> None:
        self.seg = segmenter
        self._ring = ring
        self._seed_from = seed_from
        self._emit = emit
        self._request_keyframe = request_keyframe
        self._lock = threading.Lock()
        self._closed = False
        self._seeded = False
        self._last_dts: dict[str, int] = {}
        self._asked = False

    def on_packet(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        with self._lock:
            if self._closed:
                return
            if not self._seeded:
                self._seeded = True
                if self._ring is not None and self._seed_from is not None:
                    for p in self._ring.since_epoch(self._seed_from):
                        self._push(p, video, audio)
            if pkt.dts <= self._last_dts.get(pkt.kind, -(1 << 62)):
                return  # already fed from the ring
            self._push(pkt, video, audio)

    def _push(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        self._last_dts[pkt.kind] = pkt.dts
        for seg in self.seg.push(pkt, video, audio):
            self._emit(seg)
        if self.seg.wants_keyframe and not self._asked:
            self._asked = True
            self._request_keyframe()
        elif not self.seg.wants_keyframe:
            self._asked = False

    def on_flush(self) -> None:
        pass

    def close(self) -> Segment | None:
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            return self.seg.flush()


@dataclass
class _Session:
    params: StartRecordParams
    sink: _RecordSink
    https: bool


class _PrerecordState(msgspec.Struct):
    seconds: dict[str, int] = {}


class RecordService:
    """StartRecord / StopRecord per wire-notes; Keepalive's record_session."""

    def __init__(
        self,
        media: Mapping[int, MediaChannel],
        channels: ChannelRegistry,
        uploader: Uploader,
        *,
        clock: Callable[[], float],
        state_dir: Path,
        prerecord_cap: int,
        prerecord_default: int = 0,
        allow_insecure: bool = False,
        guard: UrlGuard | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.media = media
        self.channels = channels
        self.uploader = uploader
        self.clock = clock
        self.state_file = state_dir / "prerecord.json"
        self.sessions_file = state_dir / "record-sessions.json"
        self.prerecord_cap = prerecord_cap
        self.allow_insecure = allow_insecure
        self.guard = guard  # URL safety for cbk_url (the uploader's client enforces it too)
        self.sessions: dict[int, _Session] = {}
        self.rings: dict[int, PrerecordRing] = {}
        self._lock = asyncio.Lock()
        self._on_change = on_change
        self._tasks = TaskSet(log)
        self._prerecord = self._load_prerecord()
        self._prerecord_dirty = False  # written by start(), off the event loop
        for ch in media:
            n = max(prerecord_default, self._prerecord.get(str(ch), 0))
            if n > 0:
                self._prerecord_dirty |= self._ensure_ring(ch, n)

    # -- pre-record ----------------------------------------------------------------------

    def _load_prerecord(self) -> dict[str, int]:
        try:
            return msgspec.json.decode(self.state_file.read_bytes(), type=_PrerecordState).seconds
        except FileNotFoundError:
            return {}
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("record: ignoring %s (%s)", self.state_file, exc)
            return {}

    def _ensure_ring(self, channel: int, seconds: int) -> bool:
        """N = the largest prerecord_seconds asked for (kept across restarts), capped.
        True when the state to keep changed (the caller writes it: :meth:`_save_prerecord`)."""
        n = min(seconds, self.prerecord_cap)
        media = self.media.get(channel)
        if n <= 0 or media is None:
            return False
        ring = self.rings.get(channel)
        if ring is not None and ring.seconds >= n:
            return False
        if ring is None:
            ring = PrerecordRing(n, 0)
            ring.max_bytes = functools.partial(_ring_bytes, media, ring)
            self.rings[channel] = ring
            media.hub.attach(ring)
        else:
            ring.seconds = n
        log.info("record ch%d: pre-record ring of %d s", channel, n)
        if self._prerecord.get(str(channel), 0) < n:
            self._prerecord[str(channel)] = n
            return True
        return False

    async def _save_prerecord(self) -> None:
        data = msgspec.json.encode(_PrerecordState(self._prerecord))
        try:
            await asyncio.to_thread(atomic_write, self.state_file, data)
        except OSError as exc:
            log.warning("record: cannot save %s (%s)", self.state_file, exc)

    # -- RPCs ----------------------------------------------------------------------------

    async def start_record(self, p: StartRecordParams) -> None:
        media = await stream_for(self.media, p.channel, p.max_bitrate, "records")
        https = self._check_cbk_url(p.cbk_url)
        if self.guard is not None:
            await check_rpc_url(self.guard, p.cbk_url, "params.cbk_url")
        state = self.channels.get(p.channel)
        await self.uploader.wait_ready()  # the spool's segments come first
        async with self._lock:
            current = self.sessions.get(p.channel)
            if current is not None and current.params.session_id == p.session_id:
                return  # idempotent
            if current is not None:
                log.info(
                    "record ch%d: %s replaced by %s",
                    p.channel,
                    current.params.session_id,
                    p.session_id,
                )
                self._end(p.channel)
            if p.prerecord_seconds > 0 and self._ensure_ring(p.channel, p.prerecord_seconds):
                await self._save_prerecord()
            start = p.start_ts if p.start_ts > 0 else self.clock()
            pre = min(p.prerecord_seconds, self.prerecord_cap)
            ring = self.rings.get(p.channel)
            bridge = LoopBridge()
            session_id, cbk = p.session_id, p.cbk_url
            max_count = p.seg_max_count

            def emit(seg: Segment) -> None:  # capture thread
                bridge.call(self.uploader.submit, seg, session_id, cbk, https, max_count)

            max_size = min(p.seg_max_size, self.uploader.max_segment_bytes)
            if max_size < p.seg_max_size:
                log.info(
                    "record ch%d: seg_max_size %d capped to %d bytes (a quarter of "
                    "storage.memory_queue_mb)",
                    p.channel, p.seg_max_size, max_size,
                )  # fmt: skip
            segmenter = Segmenter(p.channel, p.seg_duration, max_size)
            sink = _RecordSink(
                segmenter,
                ring,
                start - pre if ring is not None else None,
                emit,
                media.request_keyframe,
            )
            media.hub.attach(sink)
            if ring is None:
                media.request_keyframe()  # start at once, not at the next GOP
            self.sessions[p.channel] = _Session(p, sink, https)
            await self._save_sessions()
            state.record_session = p.session_id
            log.info(
                "record ch%d: session %s, %d s segments to %s",
                p.channel,
                p.session_id,
                p.seg_duration,
                redact_url(p.cbk_url),
            )
            self._tasks.spawn(self.uploader.check_clock(p.cbk_url, https), "vr-clock")
        self._on_change()

    async def stop_record(self, p: StopRecordParams) -> None:
        async with self._lock:
            current = self.sessions.get(p.channel)
            if current is not None and current.params.session_id == p.session_id:
                self._end(p.channel)
                await self._save_sessions()
                log.info("record ch%d: %s stopped", p.channel, p.session_id)
        self._on_change()

    def _end(self, channel: int) -> None:
        """Detach the session and hand its partial segment to the uploader."""
        s = self.sessions.pop(channel)
        self.channels.get(channel).record_session = None
        media = self.media[channel]
        media.hub.detach(s.sink)
        seg = s.sink.close()
        if seg is not None:
            self.uploader.submit(
                seg, s.params.session_id, s.params.cbk_url, s.https, s.params.seg_max_count
            )

    def _check_cbk_url(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise InvalidParam("params.cbk_url: not an http(s) URL")
        if parts.scheme == "http" and not self.allow_insecure:
            raise InvalidParam(
                "params.cbk_url: plain http is refused (platform.allow_insecure is off)"
            )
        return parts.scheme == "https"

    async def _save_sessions(self) -> None:
        """The running sessions, so that a restart (crash, upgrade, reboot) resumes them.
        Called under the lock: writes happen in the order of the changes."""
        doc = {str(ch): s.params for ch, s in self.sessions.items()}
        try:
            await asyncio.to_thread(atomic_write, self.sessions_file, msgspec.json.encode(doc))
        except OSError as exc:
            log.warning("record: cannot save the running sessions (%s)", exc)

    async def start(self) -> None:
        """At start-up: the spool's segments from the previous run, then its sessions."""
        if self._prerecord_dirty:
            self._prerecord_dirty = False
            await self._save_prerecord()
        await self.uploader.resume()
        await self.resume()

    async def resume(self) -> None:
        """Start again the sessions that ran when the daemon last stopped: the platform
        still counts on them (and can always StopRecord, seeing them in Keepalive)."""
        try:
            raw = self.sessions_file.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("record: cannot read %s (%s)", self.sessions_file, exc)
            return
        try:
            saved = msgspec.json.decode(raw, type=dict[str, StartRecordParams])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("record: ignoring %s (%s)", self.sessions_file, exc)
            return
        for p in saved.values():
            resumed = msgspec.structs.replace(p, start_ts=0.0, prerecord_seconds=0)
            try:
                await self.start_record(resumed)
                log.info("record ch%d: session %s resumed", p.channel, p.session_id)
            except DeviceError as exc:
                log.warning("record ch%d: cannot resume %s: %s", p.channel, p.session_id, exc)
            except Exception:  # a bug here must not stop the daemon
                log.exception("record ch%d: cannot resume %s", p.channel, p.session_id)

    async def close(self) -> None:
        """Stop recording; the sessions stay saved, to be resumed at the next start."""
        async with self._lock:
            for ch in list(self.sessions):
                self._end(ch)
        await self._tasks.cancel_all(5.0)
        await self.uploader.close()

    def drop_prerecord(self) -> None:
        """The cameras stopped (hibernation): their rings start again from nothing."""
        for ring in self.rings.values():
            ring.clear()

    def status(self) -> dict[str, object]:
        st = self.uploader.stats
        up = self.uploader
        memory, disk = up.queued()
        memory_bytes, disk_bytes = up.queued_bytes()
        lat = sorted(st.close_to_save_ms)
        return {
            "sessions": {str(ch): s.params.session_id for ch, s in self.sessions.items()},
            "prerecord_seconds": {str(ch): r.seconds for ch, r in self.rings.items()},
            "segments_closed": st.segments_closed,
            "segments_saved": st.segments_saved,
            "segments_dropped": st.segments_dropped,
            "segments_evicted": st.segments_evicted,
            "segments_skipped": st.segments_skipped,
            "segments_resumed": st.segments_resumed,
            "bytes_saved": st.bytes_saved,
            "queued_memory": memory,
            "queued_disk": disk,
            "queued_memory_bytes": memory_bytes,
            "queued_disk_bytes": disk_bytes,
            "memory_queue_bytes": up.memory_bytes,
            "spool_bytes": up.spool.used if up.spool is not None else 0,
            "spool_error": up.spool.last_error if up.spool is not None else None,
            "platform_reachable": st.reachable,
            "close_to_save_ms_p50": lat[len(lat) // 2] if lat else None,
            "close_to_save_ms_p99": lat[min(len(lat) - 1, len(lat) * 99 // 100)] if lat else None,
            "last_error": st.last_error,
        }
