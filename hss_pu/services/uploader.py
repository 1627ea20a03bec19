"""Delivery of closed recording segments to the platform (Vr): queues, spool policy, stats.

Per channel, strictly in order: ``op=create`` → PUT → ``op=save``; a segment is deleted
only once ``save`` succeeded, or once the platform, reachable, refused it for good (then
``op=fail`` and it counts as dropped).

Memory is bounded in bytes by the device (``memory_bytes``), whatever the platform asks
or does: closed segments wait in memory up to half of it (and up to the session's
``seg_max_count``); beyond that, and all of them as soon as the platform stops answering,
they go to the disk spool. The other half is headroom for what is being written or
uploaded; past the whole bound the oldest waiting segment is dropped (and reported), which
happens only when the spool cannot take more (no spool, a full or broken disk). A segment
is at most a quarter of the bound (:attr:`Uploader.max_segment_bytes`).

Every disk operation (spool writes, metadata updates, deletions, the start-up scan) runs
on one worker thread, in submission order, never on the event loop. The name ``create``
gives is written into the spooled segment's metadata before the PUT, so an upload cut
short by kill -9 resumes after a restart with that name (PUT again, ``save`` again: a
repeated save is allowed) instead of creating the segment twice; only a name the
platform no longer knows (404/410) is created again.

Drops (failed, refused, evicted, no room) are reported with ``op=stat`` to the cbk_url
of the session they belong to, within a second or two, retried with back-off (at most
30 s apart) while the platform is away: a session that ended still gets its report. With
a spool, the drops not yet reported are kept in it (:data:`DROPS_FILE`, rewritten on the
spool's thread at each change), so a restart meanwhile (kill -9, an upgrade) reports them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from hss_pu.clients.http import HttpClient
from hss_pu.clients.vr import SegmentBody, VrClient, VrError, retrying
from hss_pu.fsutil import atomic_write
from hss_pu.media.segmenter import Segment
from hss_pu.services.spool import SegmentMeta, Spool, SpoolEntry, SpoolError
from hss_pu.tasks import TaskSet

__all__ = ["RecordStats", "Uploader"]

log = logging.getLogger("hss_pu.record")

T = TypeVar("T")

PUT_ATTEMPTS = 5  # transient PUT failures before the segment is given up (op=fail)
SAVE_ATTEMPTS = 5
FAIL_ATTEMPTS = 3
OUTAGE_BACKOFF = (1.0, 30.0)  # base, cap (s) between tries while the platform is away
STAT_DELAY = 1.0  # s (scaled): the drops of a burst go out in one op=stat
STAT_RETRY_CAP = 30.0  # s (scaled): a report waits at most this after the platform is back
MAX_STAT_URLS = 64  # cbk_urls with unreported drops kept (a platform chooses them)
SPOOL_RETRY = 5.0  # s after a failed spool write before the next is tried
PIN_WAIT = 0.05  # s: a segment being evicted right now is waited out
MIN_DELAY = 0.01  # s: no retry loop spins, whatever the scale
FORMAT_WAIT = 30.0  # s FormatDisk lets uploads from the disk under way end first
UNKNOWN_NAME = frozenset({404, 410})  # the platform does not know (any more) that name


@dataclass
class RecordStats:
    segments_closed: int = 0
    segments_saved: int = 0
    segments_dropped: int = 0  # failed for good, refused, evicted, or no room anywhere
    segments_evicted: int = 0  # removed from the spool to make room
    segments_skipped: int = 0  # the platform answered create with an empty name/url
    segments_resumed: int = 0  # uploaded with a name an earlier attempt or run got
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
    data: bytes | None  # in memory (also while being written), None once only on disk
    entry: SpoolEntry | None  # on disk
    closed_at: float  # monotonic
    write: asyncio.Future[Any] | None = None  # a spool write under way
    pinned: bool = False  # a worker is delivering it: never evicted, never dropped
    gone: bool = False  # delivered, given up, evicted or dropped

    @property
    def size(self) -> int:
        return self.meta.size


@dataclass(eq=False)
class _DiskJob:
    fn: Callable[..., object]
    args: tuple[object, ...]
    future: asyncio.Future[Any]


@dataclass
class _Dropped:
    https: bool
    nb: int = 0
    time: float = 0.0


# In the spool directory, neither .ts nor .json: the spool's start-up scan leaves it alone.
DROPS_FILE = "unreported-drops"


class _DropRecord(msgspec.Struct, frozen=True):
    url: str
    https: bool
    nb: int
    time: float


def _write_drops(path: Path, data: bytes | None) -> None:
    if data is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, data, 0o600)


def _read_drops(path: Path) -> list[_DropRecord]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return msgspec.json.decode(data, type=list[_DropRecord])


class Uploader:
    """Ordered delivery of closed segments, one worker per channel.

    Call :meth:`resume` (it reads the spool) before :meth:`submit`.
    """

    def __init__(
        self,
        http: HttpClient,
        spool: Spool | None,
        *,
        memory_bytes: int,
        backoff_scale: float = 1.0,
        rng: random.Random | None = None,
        on_platform_time: Callable[[float], None] | None = None,
    ) -> None:
        if not backoff_scale > 0:
            raise ValueError(f"backoff_scale must be > 0, not {backoff_scale!r}")
        if memory_bytes < 1024 * 1024:
            raise ValueError(f"memory_bytes must be at least 1 MiB, not {memory_bytes}")
        self.http = http
        self.spool = spool
        self.backoff_scale = backoff_scale
        self.rng = rng or random.Random()
        self.on_platform_time = on_platform_time
        self.stats = RecordStats()
        self.memory_bytes = memory_bytes
        self.max_segment_bytes = memory_bytes // 4
        self._soft = memory_bytes // 2  # beyond: to disk
        self._write_cap = memory_bytes // 2  # bytes handed to the disk thread at once
        self._mem = 0  # bytes of the queued segments held in memory
        self._writing = 0  # of which being written
        self._queues: dict[int, collections.deque[_Item]] = {}
        self._items: dict[int, _Item] = {}  # by seq, every queued segment
        self._wake: dict[int, asyncio.Event] = {}
        self._max_count: dict[int, int] = {}  # per channel, the session's seg_max_count
        self._lost_last: dict[int, bool] = {}  # the channel's newest segment was lost
        self._dropped: dict[str, _Dropped] = {}  # per cbk_url, not yet reported by op=stat
        self._episodes: dict[str, list[float]] = {}  # drop kind -> [count, seconds]
        self._failures = 0  # consecutive transient failures (outage back-off)
        self._drops_failing = False  # writing DROPS_FILE fails (logged once)
        self._seq = 1
        self._closing = False
        self._formatted = asyncio.Event()  # clear while FormatDisk wipes the spool
        self._formatted.set()
        self._spool_retry_at = 0.0
        self._ready = asyncio.Event()
        self._stat_wake = asyncio.Event()
        self._tasks = TaskSet(log)  # workers and the stat reporter
        # Disk work: one FIFO of jobs, one coroutine handing them to one thread in order.
        self._disk: collections.deque[_DiskJob] = collections.deque()
        self._disk_wake = asyncio.Event()
        self._disk_idle = asyncio.Event()
        self._disk_idle.set()
        self._disk_tasks = TaskSet(log)  # that coroutine: outlives the workers at close()
        self._disk_task: asyncio.Task[None] | None = None
        self._io = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="hss-spool")
            if spool is not None
            else None
        )

    # -- start-up --------------------------------------------------------------------------

    async def resume(self) -> int:
        """Open the spool and queue what a previous run left there; returns how many."""
        entries: list[SpoolEntry] = []
        if self.spool is not None:
            try:
                entries = await self._run_io(self.spool.load)
            except SpoolError as exc:
                self.stats.last_error = str(exc)
                log.error("record: spool unusable, recording keeps to memory (%s)", exc)
                self.spool = None
            else:
                self._seq = max(self._seq, self.spool.next_seq)
                await self._load_drops(self.spool.dir / DROPS_FILE)
        for e in entries:
            self._enqueue(_Item(e.meta, None, e, time.monotonic()))
            self._kick(e.meta.channel)
        if entries:
            log.info("record: %d spooled segment(s) from before the restart", len(entries))
        self._tasks.spawn(self._reporter(), "vr-stat")
        self._ready.set()
        return len(entries)

    async def _load_drops(self, path: Path) -> None:
        try:
            records = await self._run_io(_read_drops, path)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("record: cannot read %s (%s); its drops go unreported", path, exc)
            return
        n = 0
        for r in records:
            if r.nb > 0 and r.time >= 0:
                d = self._dropped.setdefault(r.url, _Dropped(r.https))
                d.nb += r.nb
                d.time += r.time
                n += r.nb
        if n:
            log.info("record: %d dropped segment(s) from before the restart to report", n)
            self._stat_wake.set()

    def _save_drops(self) -> None:
        """Keep the unreported drops in the spool (after the disk jobs before this one)."""
        if self.spool is None:
            return
        records = [
            _DropRecord(url, d.https, d.nb, d.time) for url, d in self._dropped.items() if d.nb > 0
        ]
        data = msgspec.json.encode(records) if records else None
        fut = self._on_disk(_write_drops, self.spool.dir / DROPS_FILE, data)
        fut.add_done_callback(self._drops_written)

    def _drops_written(self, fut: asyncio.Future[None]) -> None:
        """A full or read-only disk fails every write: one warning per episode."""
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self._drops_failing = False
        elif not self._drops_failing:
            self._drops_failing = True
            log.warning("record: cannot keep the unreported drops in the spool (%s)", exc)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # -- intake ----------------------------------------------------------------------------

    def submit(
        self, seg: Segment, session_id: str, cbk_url: str, https: bool, max_count: int
    ) -> None:
        """A closed segment (on the loop); ``max_count``: the session's seg_max_count."""
        if not self._ready.is_set():
            raise RuntimeError("Uploader.resume() must run before segments are submitted")
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
        # One line per segment and per drop (debug): what a soak counts against the platform.
        log.debug(
            "record ch%d: segment closed: start %.3f, %.3f s, %d bytes",
            seg.channel, seg.start, seg.duration, seg.size,
        )  # fmt: skip
        self._max_count[seg.channel] = max_count
        if self._lost_last.pop(seg.channel, False):
            meta = msgspec.structs.replace(meta, discontinue=True)
        item = _Item(meta, seg.data, None, time.monotonic())
        self._mem += item.size
        self._enqueue(item)
        self._balance()
        self._kick(seg.channel)

    def _enqueue(self, item: _Item) -> None:
        ch = item.meta.channel
        if ch not in self._queues:
            self._queues[ch] = collections.deque()
            self._wake[ch] = asyncio.Event()
            self._tasks.spawn(self._worker(ch), f"vr-upload-ch{ch}")
        self._queues[ch].append(item)
        self._items[item.meta.seq] = item

    def _kick(self, channel: int) -> None:
        self._wake[channel].set()

    def queued(self) -> tuple[int, int]:
        """Segments waiting: (in memory, only on disk)."""
        memory = sum(1 for i in self._items.values() if i.data is not None)
        return memory, len(self._items) - memory

    def queued_bytes(self) -> tuple[int, int]:
        """Bytes waiting: (in memory, only on disk). The first never exceeds memory_bytes
        (but for the segments being uploaded, one per channel: they may be saved yet)."""
        disk = sum(i.size for i in self._items.values() if i.data is None)
        return self._mem, disk

    # -- memory and disk -------------------------------------------------------------------

    def _balance(self) -> None:
        """Send to disk what memory should not keep; past the hard bound, drop the oldest."""
        if self._closing:
            return
        mem = sorted(
            (i for i in self._items.values() if i.data is not None), key=lambda i: i.meta.seq
        )
        formatting = not self._formatted.is_set()  # nothing new goes to the disk meanwhile
        if self.spool is not None and not formatting and time.monotonic() >= self._spool_retry_at:
            away = not self.stats.reachable
            used = 0
            per_channel: collections.Counter[int] = collections.Counter()
            for item in mem:
                ch = item.meta.channel
                used += item.size
                per_channel[ch] += 1
                if item.write is not None or (item.pinned and not away):
                    continue
                if away or used > self._soft or per_channel[ch] > self._max_count.get(ch, 1):
                    if self._writing + item.size > self._write_cap:
                        break  # the rest when these are written
                    self._start_write(item)
        total = self._mem
        for item in mem:
            if total <= self.memory_bytes:
                break
            if item.write is not None or item.pinned:
                continue
            total -= item.size
            self._discard(item)
            why = "no room: memory is full and the spool cannot take it"
            self._drop(item.meta, why, "memory")

    def _start_write(self, item: _Item) -> None:
        assert self.spool is not None and item.data is not None
        self._writing += item.size
        item.write = fut = self._on_disk(self.spool.put, item.meta, item.data)
        fut.add_done_callback(functools.partial(self._written, item))

    def _written(self, item: _Item, fut: asyncio.Future[Any]) -> None:
        self._writing -= item.size
        item.write = None
        try:
            entry, evicted = fut.result()
        except SpoolError as exc:
            self._account_evicted(exc.evicted)
            self.stats.last_error = str(exc)
            self._spool_retry_at = time.monotonic() + SPOOL_RETRY
            self._balance()  # the hard bound, now that this one stays in memory
            return
        except (Exception, asyncio.CancelledError) as exc:  # a bug: memory keeps it
            log.error("record: spool write failed unexpectedly", exc_info=exc)
            self._spool_retry_at = time.monotonic() + SPOOL_RETRY
            return
        self._spool_retry_at = 0.0
        self.stats.spooled += 1
        self._account_evicted(evicted)
        if item.gone:  # delivered (from memory) or given up while we wrote it
            assert self.spool is not None
            self._later(self.spool.remove, entry)
        else:
            item.entry = entry
            self._release_data(item)
        self._balance()  # the next ones, if memory still holds too much

    async def _persist(self, item: _Item) -> None:
        """Write the name create gave into the spooled metadata, before the PUT."""
        if self.spool is None:
            return
        write = item.write
        if write is not None:  # it may have taken the old metadata
            with contextlib.suppress(Exception):  # a failure is _written's business
                await asyncio.shield(write)
        if item.entry is None or item.entry.meta == item.meta:
            return
        try:
            if await self._run_io(self.spool.update_meta, item.meta):
                item.entry = SpoolEntry(item.meta, item.entry.path)
        except SpoolError as exc:  # go on: a kill -9 now would send this one twice
            self.stats.last_error = str(exc)

    def _account_evicted(self, entries: list[SpoolEntry]) -> None:
        for e in entries:
            self.stats.segments_evicted += 1
            item = self._items.get(e.meta.seq)
            if item is not None:
                self._discard(item)
            self._drop(e.meta, "evicted from the spool to make room", "evicted")

    def _discard(self, item: _Item) -> None:
        """Out of the queues, for good (the caller accounts for it)."""
        item.gone = True
        self._items.pop(item.meta.seq, None)
        q = self._queues.get(item.meta.channel)
        if q is not None and item in q:
            q.remove(item)
        self._release_data(item)

    def _release_data(self, item: _Item) -> None:
        if item.data is not None:
            item.data = None
            self._mem -= item.size

    def _finish(self, item: _Item) -> None:
        """Delivered (or given up): out of the queue, off the disk."""
        if item.gone:  # evicted or dropped meanwhile: accounted for there
            return
        self._discard(item)
        if self.spool is None:
            return
        if item.entry is not None:
            self._later(self.spool.remove, item.entry)
        elif item.write is None and item.pinned:
            self.spool.unpin(item.meta.seq)
        # else: the write under way finds it gone and removes what it wrote

    def _on_disk(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """``fn(*args)`` on the spool's thread, after every job submitted before it."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._disk.append(_DiskJob(fn, args, fut))
        self._disk_idle.clear()
        self._disk_wake.set()
        if self._disk_task is None:
            self._disk_task = self._disk_tasks.spawn(self._disk_worker(), "spool-io")
        return fut

    def _later(self, fn: Callable[..., object], *args: object) -> None:
        """A disk job nobody waits for; its failure is logged."""
        self._on_disk(fn, *args).add_done_callback(_log_failure)

    async def _run_io(self, fn: Callable[..., T], *args: object) -> T:
        return await self._on_disk(fn, *args)

    async def _disk_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._disk:
                self._disk_idle.set()
                self._disk_wake.clear()
                await self._disk_wake.wait()
                continue
            job = self._disk.popleft()
            try:
                result = await loop.run_in_executor(self._io, job.fn, *job.args)
            except Exception as exc:
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(result)

    # -- drops and their report ------------------------------------------------------------

    def _drop(self, meta: SegmentMeta, why: str, kind: str) -> None:
        self.stats.segments_dropped += 1
        log.debug("record ch%d: segment dropped: start %.3f (%s)", meta.channel, meta.start, kind)
        d = self._dropped.get(meta.cbk_url)
        if d is None:
            if len(self._dropped) >= MAX_STAT_URLS:
                old = next(iter(self._dropped))
                log.warning("record: too many sessions with unreported drops; forgetting one")
                del self._dropped[old]
            d = self._dropped[meta.cbk_url] = _Dropped(meta.https)
        d.nb += 1
        d.time += meta.duration
        self._after_loss(meta)
        episode = self._episodes.setdefault(kind, [0, 0.0])
        if not episode[0]:
            log.warning(
                "record ch%d: segment at %.3f (%.1f s) dropped: %s (further drops of this "
                "kind are counted, and logged once uploads succeed again)",
                meta.channel, meta.start, meta.duration, why,
            )  # fmt: skip
        episode[0] += 1
        episode[1] += meta.duration
        self._save_drops()
        self._stat_wake.set()

    def _after_loss(self, lost: SegmentMeta) -> None:
        """The segment that follows a lost one on its channel is ``discontinue=1`` (kept
        in its metadata: spooled, it survives a restart with the flag)."""
        for item in self._queues.get(lost.channel, ()):
            if item.meta.seq > lost.seq:
                if not item.meta.discontinue:
                    item.meta = msgspec.structs.replace(item.meta, discontinue=True)
                return
        self._lost_last[lost.channel] = True

    def _end_episodes(self) -> None:
        for kind, (n, seconds) in self._episodes.items():
            if n > 1:
                log.warning("record: %d segments (%.1f s) were dropped (%s)", n, seconds, kind)
        self._episodes.clear()

    async def _reporter(self) -> None:
        """op=stat for every cbk_url with drops not yet reported, until it gets through."""
        failures = 0
        while True:
            await self._stat_wake.wait()
            self._stat_wake.clear()
            await asyncio.sleep(max(STAT_DELAY * self.backoff_scale, MIN_DELAY))
            ok = True
            for url in list(self._dropped):
                ok = await self._report(url, quiet=failures > 0) and ok
            if ok:
                failures = 0
                continue
            failures += 1
            delay = min(STAT_RETRY_CAP, 2.0 ** min(failures, 10)) * self.backoff_scale
            await asyncio.sleep(max(self.rng.uniform(0.5, 1.0) * delay, MIN_DELAY))
            self._stat_wake.set()

    async def _report(self, url: str, *, quiet: bool) -> bool:
        """False: try again later (the platform did not answer)."""
        d = self._dropped.get(url)
        if d is None or d.nb == 0:
            self._dropped.pop(url, None)
            return True
        nb, t = d.nb, d.time
        try:
            await VrClient(url, self.http, https=d.https).stat(nb, round(t, 3))
        except ValueError:  # a cbk_url no VrClient takes (a corrupt spool file)
            self._dropped.pop(url, None)
            self._save_drops()
            return True
        except VrError as exc:
            if exc.transient:
                if not quiet:
                    log.info("record: op=stat failed (%s); will report again", exc)
                return False
            log.warning("record: op=stat refused (%s); %d drop(s) not reported", exc, nb)
            nb, t = d.nb, d.time  # the platform will not take it: forget all of it
        d.nb -= nb
        d.time -= t
        if d.nb <= 0:
            self._dropped.pop(url, None)
        self._save_drops()
        return True

    # -- delivery --------------------------------------------------------------------------

    async def _worker(self, channel: int) -> None:
        q = self._queues[channel]
        wake = self._wake[channel]
        while True:
            if not q:
                wake.clear()
                await wake.wait()
                continue
            item = q[0]
            try:
                done = await self._deliver(item)
            except Exception:  # a bug: keep the segment, slow down, keep the daemon
                log.exception("record ch%d: upload failed unexpectedly", channel)
                done = False
                await asyncio.sleep(max(5 * self.backoff_scale, MIN_DELAY))
            if done:
                self._finish(item)

    def _body(self, item: _Item) -> SegmentBody:
        if item.data is not None:
            return SegmentBody.from_bytes(item.data)
        assert item.entry is not None
        return SegmentBody(path=item.entry.path, size=item.size)

    def _outage(self, exc: Exception) -> float:
        """The platform did not answer: spool, and how long to wait before the next try."""
        if self.stats.reachable:  # once per outage: a disk error meanwhile stays shown
            log.warning("record: platform unreachable (%s); spooling segments", exc)
            self.stats.last_error = str(exc)
        self.stats.reachable = False
        self._failures += 1
        self._balance()
        base, cap = OUTAGE_BACKOFF
        delay = min(cap, base * 2.0 ** min(self._failures, 10)) * self.backoff_scale
        return max(self.rng.uniform(0.5, 1.0) * delay, MIN_DELAY)

    def _back(self) -> None:
        if not self.stats.reachable:
            log.info("record: platform reachable again")
        self.stats.reachable = True
        self._failures = 0

    async def _deliver(self, item: _Item) -> bool:
        """True once the segment is dealt with (saved, skipped, dropped, or evicted
        meanwhile); False to try again (after an outage back-off)."""
        meta = item.meta
        try:
            vr = VrClient(meta.cbk_url, self.http, https=meta.https)
        except ValueError as exc:
            self._drop(meta, str(exc), "refused")
            return True
        resumed = bool(meta.name)  # created by an attempt cut short, or a previous run
        if not resumed:
            done = await self._create(vr, item)
            if done is not None:
                return done
        if item.data is None and not self._formatted.is_set():
            await self._formatted.wait()  # FormatDisk may be destroying its file
            if item.gone:
                return True
        # From here the platform knows the name: the segment may end up saved, so it is
        # neither evicted nor dropped any more.
        if not self._pin(item):
            await asyncio.sleep(PIN_WAIT)  # being evicted right now: its report follows
            return False
        await self._persist(item)
        done = await self._upload(vr, item, resumed=resumed)
        if done is not None:
            return done
        log.info("record ch%d: the platform no longer knows %s; creating it again",
                 meta.channel, item.meta.name)  # fmt: skip
        item.meta = msgspec.structs.replace(item.meta, name="", url="")
        return await self._deliver(item)

    async def _create(self, vr: VrClient, item: _Item) -> bool | None:
        """op=create until the platform answers; None once ``item.meta`` has the name."""
        while True:
            if item.gone:  # evicted or dropped while the platform was away
                return True
            meta = item.meta  # discontinue may have been set meanwhile
            try:
                reply = await vr.create(meta.size, meta.start, meta.duration, meta.discontinue)
                break
            except VrError as exc:
                if not exc.transient:
                    self._back()
                    self._drop(meta, f"create refused: {exc}", "refused")
                    return True
                await asyncio.sleep(self._outage(exc))
        self._back()
        if item.gone:  # the name is left to expire on the platform
            return True
        if reply.drop:
            self.stats.segments_skipped += 1
            self._after_loss(meta)
            log.info(
                "record ch%d: the platform declined the segment at %.3f", meta.channel, meta.start
            )
            return True
        item.meta = msgspec.structs.replace(meta, name=reply.name, url=reply.url)
        return None

    def _pin(self, item: _Item) -> bool:
        if not item.pinned:
            if self.spool is not None and not self.spool.pin(
                item.meta.seq, on_disk=item.data is None
            ):
                return False
            item.pinned = True
        return True

    async def _upload(self, vr: VrClient, item: _Item, *, resumed: bool) -> bool | None:
        """PUT then save under the item's name. None: the platform does not know that
        name (only asked of a resumed one: it is created again)."""
        name, url = item.meta.name, item.meta.url
        try:
            try:
                await self._retrying(lambda: vr.put(url, self._body(item)), PUT_ATTEMPTS, 30)
            except VrError as exc:
                if resumed and exc.status in UNKNOWN_NAME:
                    return None
                if not (resumed and exc.status == 409):  # 409: saved already; save again
                    raise
            try:
                await self._retrying(lambda: vr.save(name), SAVE_ATTEMPTS, 30)
            except VrError as exc:
                if resumed and exc.status in UNKNOWN_NAME:
                    return None
                raise
        except (VrError, OSError) as exc:
            return await self._give_up(vr, item, name, exc)
        self._back()
        if resumed:
            self.stats.segments_resumed += 1
        self._saved(item)
        return True

    def _saved(self, item: _Item) -> None:
        st = self.stats
        st.segments_saved += 1
        st.bytes_saved += item.size
        st.close_to_save_ms.append((time.monotonic() - item.closed_at) * 1000)
        if st.last_error:
            log.info("record: uploads succeed again")
            st.last_error = ""
        self._end_episodes()

    async def _retrying(self, op: Callable[[], Awaitable[None]], attempts: int, cap: float) -> None:
        """``retrying`` with our back-off scale (1 s base, ``cap`` s, both scaled)."""
        s = self.backoff_scale
        await retrying(op, attempts=attempts, base=s, cap=cap * s, rng=self.rng)

    async def _give_up(self, vr: VrClient, item: _Item, name: str, exc: Exception) -> bool:
        try:
            await self._retrying(lambda: vr.fail(name), FAIL_ATTEMPTS, 10)
        except VrError as fexc:
            if fexc.transient:
                # The platform is gone, not refusing: keep the segment (and its name).
                await asyncio.sleep(self._outage(fexc))
                return False
            if fexc.status == 409:  # "already saved": an earlier save went through
                self._back()
                self._saved(item)
                return True
        self._back()
        self._drop(item.meta, f"upload failed: {exc}", "failed")
        return True

    async def format_spool(self, destroy: Callable[[], None]) -> int:
        """FormatDisk: ``destroy()`` the store on the disk thread, after the spool writes
        already under way, and report every spooled segment it took as dropped (op=stat).
        Meanwhile nothing new is spooled (memory keeps it, within its bound) and no upload
        from the disk starts; those under way get up to FORMAT_WAIT s to end (their file
        is open). Recording goes on throughout. Returns the segments lost."""
        if self.spool is None:  # no usable spool: nothing of ours on it to account for
            await asyncio.to_thread(destroy)
            return 0
        spool = self.spool
        self._formatted.clear()
        try:
            for _ in range(int(FORMAT_WAIT / 0.05)):  # a poll: at most one per channel
                if not any(i.pinned and i.data is None for i in self._items.values()):
                    break
                await asyncio.sleep(0.05)
            gone = await self._run_io(spool.wipe, destroy)
        finally:
            self._formatted.set()
        lost = 0
        for e in gone:
            item = self._items.get(e.meta.seq)
            if item is not None and item.pinned:
                continue  # being uploaded still: that upload decides (saved, or dropped)
            if item is not None:
                self._discard(item)
            self._drop(e.meta, "destroyed by FormatDisk", "formatted")
            lost += 1
        self._balance()
        for ch in self._wake:
            self._kick(ch)
        return lost

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

    async def settle(self) -> None:
        """Wait until no disk work is pending (what finishes may start more)."""
        while True:
            await asyncio.sleep(0)  # the callbacks of the last job run first
            if not self._disk and self._disk_idle.is_set():
                return
            await self._disk_idle.wait()

    async def close(self) -> None:
        """Stop uploading; what is still in memory goes to the spool for the next run."""
        self._closing = True
        stuck = await self._tasks.cancel_all(5.0)
        if stuck:
            log.warning("record: %s did not stop", ", ".join(stuck))
        if self.spool is not None:
            for item in sorted(self._items.values(), key=lambda i: i.meta.seq):
                if item.data is not None and item.write is None:
                    self._start_write(item)
        await self.settle()
        await self._disk_tasks.cancel_all(1.0)
        if self._io is not None:
            self._io.shutdown(wait=False)
        await self.http.aclose()


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("record: spool operation failed", exc_info=fut.exception())
