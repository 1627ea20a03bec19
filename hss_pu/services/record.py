"""Vr: StartRecord / StopRecord, the segments they produce, and their delivery.

A record session is a packet sink on the channel's capture thread (like the live push):
a :class:`~hss_pu.media.segmenter.Segmenter` muxes packets into segments there, seeded
from the pre-record ring, and hands each closed segment to the event loop, one callback
per segment. The :class:`Uploader` delivers segments per channel, in order:
``op=create`` → PUT → ``op=save``.

Nothing recorded is lost to a network outage: up to ``seg_max_count`` segments wait in
memory; beyond that, and as soon as the platform stops answering, they go to the disk
spool (and those in memory follow them there), which survives kill -9 and power cuts and
is bounded (the oldest are evicted, counted and reported with ``op=stat``). A segment is
deleted only once ``save`` succeeded, or once the platform, reachable, refused it for
good (then ``op=fail`` and it counts as dropped).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec

from hss_pu.clients.vr import SegmentBody, VrClient, VrError, retrying
from hss_pu.errors import DeviceError, InvalidParam
from hss_pu.fsutil import atomic_write
from hss_pu.media.channel import MediaChannel
from hss_pu.media.packets import EncodedPacket, StreamInfo
from hss_pu.media.segmenter import PrerecordRing, Segment, Segmenter
from hss_pu.services.channels import ChannelRegistry, stream_for
from hss_pu.services.spool import SegmentMeta, Spool, SpoolEntry, SpoolError
from hss_pu.wire.vd import StartRecordParams, StopRecordParams

__all__ = ["RecordService", "RecordStats", "Uploader"]

log = logging.getLogger("hss_pu.record")

PUT_ATTEMPTS = 5  # transient PUT failures before the segment is given up (op=fail)
SAVE_ATTEMPTS = 5
FAIL_ATTEMPTS = 3
OUTAGE_BACKOFF = (1.0, 30.0)  # base, cap (s) between tries while the platform is away
CLOCK_TOLERANCE = 10.0  # s; as Vs time sync (9.3.1.2 step 3)
RING_BYTES_PER_SECOND_FACTOR = 2  # ring byte bound: seconds x bitrate/8 x this


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


@dataclass
class RecordStats:
    segments_closed: int = 0
    segments_saved: int = 0
    segments_dropped: int = 0  # failed for good, or evicted from the spool
    segments_evicted: int = 0
    segments_skipped: int = 0  # the platform answered create with an empty name/url
    bytes_saved: int = 0
    spooled: int = 0  # segments written to disk
    reachable: bool = True
    last_error: str = ""
    close_to_save_ms: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )


@dataclass(eq=False)  # identity: a queue holds each segment once
class _Item:
    meta: SegmentMeta
    data: bytes | None  # in memory, or None when on disk
    entry: SpoolEntry | None
    closed_at: float  # monotonic


@dataclass
class _Dropped:
    nb: int = 0
    time: float = 0.0


class Uploader:
    """Ordered delivery of closed segments, one worker per channel."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        spool: Spool | None,
        *,
        backoff_scale: float = 1.0,
        rng: random.Random | None = None,
        on_platform_time: Callable[[float], None] | None = None,
    ) -> None:
        self.http = http
        self.spool = spool
        self.backoff_scale = backoff_scale
        self.rng = rng or random.Random()
        self.on_platform_time = on_platform_time
        self.stats = RecordStats()
        self._queues: dict[int, collections.deque[_Item]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._lost_before: dict[int, bool] = {}  # the channel's previous segment was lost
        self._dropped: dict[str, _Dropped] = {}  # per cbk_url, not yet reported by op=stat
        self._mem_limit: dict[int, int] = {}
        self._inflight: dict[int, _Item] = {}  # per channel, the segment being delivered
        self._seq = 1
        self._closing = False

    # -- intake --------------------------------------------------------------------------

    def resume(self) -> int:
        """Queue what the spool kept from a previous run; returns how many."""
        if self.spool is None:
            return 0
        try:
            entries = self.spool.load()
        except SpoolError as exc:
            self.stats.last_error = str(exc)
            return 0
        self._seq = max(self._seq, self.spool.next_seq)
        for e in entries:
            self._queue(e.meta.channel).append(_Item(e.meta, None, e, time.monotonic()))
            self._kick(e.meta.channel)
        if entries:
            log.info("record: %d spooled segment(s) from before the restart", len(entries))
        return len(entries)

    def submit(
        self, seg: Segment, session_id: str, cbk_url: str, https: bool, mem_limit: int
    ) -> None:
        """A closed segment (on the loop)."""
        meta = SegmentMeta(
            seq=self._seq,
            channel=seg.channel,
            session_id=session_id,
            cbk_url=cbk_url,
            https=https,
            start=seg.start,
            duration=seg.duration,
            size=seg.size,
            discontinue=seg.discontinue,
        )
        self._seq += 1
        self.stats.segments_closed += 1
        self._mem_limit[seg.channel] = mem_limit
        item = _Item(meta, seg.data, None, time.monotonic())
        q = self._queue(seg.channel)
        q.append(item)
        in_memory = sum(1 for i in q if i.data is not None)
        if self._closing or not self.stats.reachable or in_memory > mem_limit:
            self._to_disk(item)
        self._kick(seg.channel)

    def _queue(self, channel: int) -> collections.deque[_Item]:
        if channel not in self._queues:
            self._queues[channel] = collections.deque()
            self._wake[channel] = asyncio.Event()
            self._workers[channel] = asyncio.create_task(
                self._worker(channel), name=f"vr-upload-ch{channel}"
            )
        return self._queues[channel]

    def _kick(self, channel: int) -> None:
        self._wake[channel].set()

    def queued(self) -> tuple[int, int]:
        """Segments waiting: (in memory, on disk)."""
        items = [i for q in self._queues.values() for i in q]
        memory = sum(1 for i in items if i.data is not None)
        return memory, len(items) - memory

    def _to_disk(self, item: _Item) -> None:
        """Move an in-memory segment to the spool; without one (or when it fails) the
        segment stays in memory unless the channel's memory queue is over its bound, then
        the oldest are dropped."""
        if item.data is None:
            return
        if self.spool is None:
            self._enforce_memory_bound(item.meta.channel)
            return
        try:
            entry, evicted = self.spool.put(item.meta, item.data)
        except SpoolError as exc:
            self.stats.last_error = str(exc)
            self._enforce_memory_bound(item.meta.channel)
            return
        item.entry, item.data = entry, None
        self.stats.spooled += 1
        for old in evicted:
            self._evicted(old)

    def _enforce_memory_bound(self, channel: int) -> None:
        q = self._queues.get(channel)
        if q is None:
            return
        limit = self._mem_limit.get(channel, 1)
        # The segment being delivered is not counted, nor dropped: it may be saved yet.
        busy = self._inflight.get(channel)
        mem = [i for i in q if i.data is not None and i is not busy]
        for item in mem[: max(0, len(mem) - limit)]:
            q.remove(item)
            self._drop(item.meta, "no room: the spool cannot take it and memory is full")

    def _evicted(self, entry: SpoolEntry) -> None:
        q = self._queues.get(entry.meta.channel)
        if q is not None:
            for item in q:
                if item.entry is entry:
                    q.remove(item)
                    break
        self.stats.segments_evicted += 1
        self._drop(entry.meta, "evicted: the spool is full")

    def _drop(self, meta: SegmentMeta, why: str) -> None:
        self.stats.segments_dropped += 1
        d = self._dropped.setdefault(meta.cbk_url, _Dropped())
        d.nb += 1
        d.time += meta.duration
        self._lost_before[meta.channel] = True
        log.warning(
            "record ch%d: segment at %.3f (%.1f s) dropped: %s",
            meta.channel,
            meta.start,
            meta.duration,
            why,
        )

    def _spill(self) -> None:
        """The platform went away: everything in memory goes to disk."""
        for q in self._queues.values():
            for item in list(q):
                if item.data is not None:
                    self._to_disk(item)

    # -- delivery ------------------------------------------------------------------------

    async def _worker(self, channel: int) -> None:
        q = self._queues[channel]
        wake = self._wake[channel]
        while True:
            if not q:
                wake.clear()
                await wake.wait()
                continue
            item = self._inflight[channel] = q[0]
            try:
                done = await self._deliver(item)
            except Exception:  # a bug: keep the segment, slow down, keep the daemon
                log.exception("record ch%d: upload failed unexpectedly", channel)
                done = False
                await asyncio.sleep(5 * self.backoff_scale)
            finally:
                del self._inflight[channel]
            if done and q and q[0] is item:
                q.popleft()
                self._release(item)

    def _release(self, item: _Item) -> None:
        if item.entry is not None and self.spool is not None:
            self.spool.remove(item.entry)
        item.data = None

    def _body(self, item: _Item) -> SegmentBody:
        if item.data is not None:
            return SegmentBody.from_bytes(item.data)
        assert item.entry is not None
        return SegmentBody.from_file(item.entry.path)

    def _outage(self, exc: Exception, failures: int) -> float:
        if self.stats.reachable:
            log.warning("record: platform unreachable (%s); spooling segments", exc)
        self.stats.reachable = False
        self.stats.last_error = str(exc)
        self._spill()
        base, cap = OUTAGE_BACKOFF
        delay = min(cap, base * 2.0 ** min(failures, 10)) * self.backoff_scale
        return self.rng.uniform(0.5, 1.0) * delay

    def _back(self) -> None:
        if not self.stats.reachable:
            log.info("record: platform reachable again")
        self.stats.reachable = True

    async def _deliver(self, item: _Item) -> bool:
        """True once the segment is dealt with (saved, skipped or dropped); False to try
        the same segment again (after an outage back-off)."""
        meta = item.meta
        vr = VrClient(meta.cbk_url, self.http, https=meta.https)
        failures = 0
        discontinue = meta.discontinue or self._lost_before.get(meta.channel, False)
        while True:
            if item not in self._queues[meta.channel]:
                return True  # evicted meanwhile
            try:
                reply = await vr.create(meta.size, meta.start, meta.duration, discontinue)
                break
            except VrError as exc:
                if not exc.transient:
                    self._back()
                    self._drop(meta, f"create refused: {exc}")
                    await self._report(vr)
                    return True
                failures += 1
                await asyncio.sleep(self._outage(exc, failures))
        self._back()
        if reply.drop:
            self.stats.segments_skipped += 1
            self._lost_before[meta.channel] = True
            log.info(
                "record ch%d: the platform declined the segment at %.3f", meta.channel, meta.start
            )
            return True
        try:
            await self._retrying(lambda: vr.put(reply.url, self._body(item)), PUT_ATTEMPTS, 30)
            await self._retrying(lambda: vr.save(reply.name), SAVE_ATTEMPTS, 30)
        except (VrError, OSError) as exc:
            return await self._give_up(vr, item, reply.name, exc)
        self.stats.segments_saved += 1
        self.stats.bytes_saved += meta.size
        self.stats.close_to_save_ms.append((time.monotonic() - item.closed_at) * 1000)
        self._lost_before[meta.channel] = False
        await self._report(vr)
        return True

    async def _retrying(self, op: Callable[[], Awaitable[None]], attempts: int, cap: float) -> None:
        """``retrying`` with our back-off scale (1 s base, ``cap`` s, both scaled)."""
        s = self.backoff_scale
        await retrying(op, attempts=attempts, base=s, cap=cap * s, rng=self.rng)

    async def _give_up(self, vr: VrClient, item: _Item, name: str, exc: Exception) -> bool:
        if item not in self._queues[item.meta.channel]:
            return True  # evicted from the spool meanwhile: already counted
        try:
            await self._retrying(lambda: vr.fail(name), FAIL_ATTEMPTS, 10)
        except VrError as fexc:
            if fexc.transient:
                # The platform is gone, not refusing: keep the segment for later.
                await asyncio.sleep(self._outage(fexc, 1))
                return False
        self._drop(item.meta, f"upload failed: {exc}")
        await self._report(vr)
        return True

    async def _report(self, vr: VrClient) -> None:
        d = self._dropped.get(vr.cbk_url)
        if d is None or d.nb == 0:
            return
        nb, t = d.nb, d.time
        try:
            await vr.stat(nb, round(t, 3))
        except VrError as exc:
            log.warning("record: op=stat failed (%s); will report again", exc)
            return
        d.nb -= nb
        d.time -= t
        if d.nb == 0:
            self._dropped.pop(vr.cbk_url, None)

    async def check_clock(self, cbk_url: str, https: bool) -> None:
        """op=getcurrenttime: the platform's view of the time, against ours."""
        vr = VrClient(cbk_url, self.http, https=https)
        try:
            t = await vr.current_time()
        except VrError as exc:
            log.info("record: getcurrenttime failed (%s)", exc)
            return
        if self.on_platform_time is not None:
            self.on_platform_time(t)

    async def close(self) -> None:
        """Stop uploading; what is still in memory goes to the spool for the next run."""
        self._closing = True
        for t in self._workers.values():
            t.cancel()
        for t in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._spill()
        await self.http.aclose()


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
        self.sessions: dict[int, _Session] = {}
        self.rings: dict[int, PrerecordRing] = {}
        self._lock = asyncio.Lock()
        self._on_change = on_change
        self._tasks: set[asyncio.Task[None]] = set()
        self._prerecord = self._load_prerecord()
        for ch in media:
            n = max(prerecord_default, self._prerecord.get(str(ch), 0))
            if n > 0:
                self._ensure_ring(ch, n)

    # -- pre-record ----------------------------------------------------------------------

    def _load_prerecord(self) -> dict[str, int]:
        try:
            return msgspec.json.decode(self.state_file.read_bytes(), type=_PrerecordState).seconds
        except FileNotFoundError:
            return {}
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("record: ignoring %s (%s)", self.state_file, exc)
            return {}

    def _ensure_ring(self, channel: int, seconds: int) -> None:
        """N = the largest prerecord_seconds asked for (kept across restarts), capped."""
        n = min(seconds, self.prerecord_cap)
        media = self.media.get(channel)
        if n <= 0 or media is None:
            return
        ring = self.rings.get(channel)
        if ring is not None and ring.seconds >= n:
            return
        max_bytes = int((n + 2) * media.settings.bitrate / 8 * RING_BYTES_PER_SECOND_FACTOR)
        if ring is None:
            ring = PrerecordRing(n, max_bytes)
            self.rings[channel] = ring
            media.hub.attach(ring)
        else:
            ring.seconds, ring.max_bytes = n, max_bytes
        if self._prerecord.get(str(channel), 0) < n:
            self._prerecord[str(channel)] = n
            with contextlib.suppress(OSError):
                atomic_write(self.state_file, msgspec.json.encode(_PrerecordState(self._prerecord)))
        log.info("record ch%d: pre-record ring of %d s", channel, n)

    # -- RPCs ----------------------------------------------------------------------------

    async def start_record(self, p: StartRecordParams) -> None:
        media = await stream_for(self.media, p.channel, p.max_bitrate, "records")
        https = self._check_cbk_url(p.cbk_url)
        state = self.channels.get(p.channel)
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
            if p.prerecord_seconds > 0:
                self._ensure_ring(p.channel, p.prerecord_seconds)
            start = p.start_ts if p.start_ts > 0 else self.clock()
            pre = min(p.prerecord_seconds, self.prerecord_cap)
            ring = self.rings.get(p.channel)
            loop = asyncio.get_running_loop()
            session_id, cbk = p.session_id, p.cbk_url
            mem_limit = p.seg_max_count

            def emit(seg: Segment) -> None:  # capture thread
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(
                        self.uploader.submit, seg, session_id, cbk, https, mem_limit
                    )

            segmenter = Segmenter(p.channel, p.seg_duration, p.seg_max_size)
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
            self._save_sessions()
            state.record_session = p.session_id
            log.info(
                "record ch%d: session %s, %d s segments to %s",
                p.channel,
                p.session_id,
                p.seg_duration,
                _redact_url(p.cbk_url),
            )
            task = asyncio.create_task(self.uploader.check_clock(p.cbk_url, https))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._on_change()

    async def stop_record(self, p: StopRecordParams) -> None:
        async with self._lock:
            current = self.sessions.get(p.channel)
            if current is not None and current.params.session_id == p.session_id:
                self._end(p.channel)
                self._save_sessions()
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

    def _save_sessions(self) -> None:
        """The running sessions, so that a restart (crash, upgrade, reboot) resumes them."""
        doc = {str(ch): s.params for ch, s in self.sessions.items()}
        try:
            atomic_write(self.sessions_file, msgspec.json.encode(doc))
        except OSError as exc:
            log.warning("record: cannot save the running sessions (%s)", exc)

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
        for t in list(self._tasks):
            t.cancel()
        await self.uploader.close()

    def status(self) -> dict[str, object]:
        st = self.uploader.stats
        memory, disk = self.uploader.queued()
        lat = sorted(st.close_to_save_ms)
        return {
            "sessions": {str(ch): s.params.session_id for ch, s in self.sessions.items()},
            "prerecord_seconds": {str(ch): r.seconds for ch, r in self.rings.items()},
            "segments_closed": st.segments_closed,
            "segments_saved": st.segments_saved,
            "segments_dropped": st.segments_dropped,
            "segments_evicted": st.segments_evicted,
            "segments_skipped": st.segments_skipped,
            "bytes_saved": st.bytes_saved,
            "queued_memory": memory,
            "queued_disk": disk,
            "spool_bytes": self.uploader.spool.used if self.uploader.spool else 0,
            "platform_reachable": st.reachable,
            "close_to_save_ms_p50": lat[len(lat) // 2] if lat else None,
            "close_to_save_ms_p99": lat[min(len(lat) - 1, len(lat) * 99 // 100)] if lat else None,
            "last_error": st.last_error,
        }
