"""The recording uploader and its spool under pressure, against the reference platform.

No camera here: segments are synthetic bytes (the platform's decode check is off), so each
test drives the Uploader and the Spool directly, in a second or two of real time.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hss_pu import fsutil
from hss_pu.clients.http import HttpClient, Trust, platform_http
from hss_pu.clients.vr import SegmentBody, VrClient
from hss_pu.media.segmenter import Segment
from hss_pu.reference_platform.server import ReferencePlatform
from hss_pu.services import spool as spool_mod
from hss_pu.services.spool import SegmentMeta, Spool, SpoolError
from hss_pu.services.uploader import PUT_ATTEMPTS, Uploader

from .support.rig import MAC, until

MiB = 1024 * 1024
T0 = 1_700_000_000.0
SCALE = 0.01  # back-off scale: outage retries every 10-300 ms


# Synthetic segments: the platform does not decode what it is sent.
pytestmark = pytest.mark.platform(vr_decode_check=False)


def http_client(platform: ReferencePlatform, timeout: float = 30.0) -> HttpClient:
    """As the daemon makes it (TLS verified, Mac-Identity on every request)."""
    return platform_http(
        MAC,
        str(platform.ca_file),
        trust=Trust.UPLOADS,
        timeout=timeout,
        connect_timeout=min(timeout, 10.0),
    )


MakeUploader = Callable[..., Awaitable[Uploader]]


@pytest.fixture
async def make_uploader(platform: ReferencePlatform) -> AsyncIterator[MakeUploader]:
    made: list[Uploader] = []

    async def make(
        spool: Spool | None, memory_mb: int = 8, timeout: float = 30.0, **kw: Any
    ) -> Uploader:
        up = Uploader(
            http_client(platform, timeout), spool, memory_bytes=memory_mb * MiB,
            backoff_scale=SCALE, **kw,
        )  # fmt: skip
        await up.resume()
        made.append(up)
        return up

    try:
        yield make
    finally:
        for up in made:
            await up.close()


class Feed:
    """Consecutive segments of one channel (``size`` bytes of filler each)."""

    def __init__(self, size: int, channel: int = 0, duration: float = 1.0) -> None:
        self.size, self.channel, self.duration = size, channel, duration
        self.n = 0

    def next(self) -> Segment:
        start = T0 + self.n * self.duration
        data = self.n.to_bytes(4, "big") * (self.size // 4)
        self.n += 1
        return Segment(self.channel, start, self.duration, data, self.n == 1, 0, 0)


def submit(
    up: Uploader, platform: ReferencePlatform, seg: Segment, max_count: int = 10_000
) -> None:
    up.submit(seg, "s1", platform.vr_cbk_url(seg.channel), True, max_count)


def saved_starts(platform: ReferencePlatform, channel: int = 0) -> list[float]:
    return [s.start for s in platform.vr_segments[channel]]


# --- section 4: no loop spins without a delay --------------------------------------------


async def test_backoff_scale_must_be_positive(platform: ReferencePlatform) -> None:
    async with http_client(platform) as http:
        for bad in (0.0, -1.0):
            with pytest.raises(ValueError, match="backoff_scale must be > 0"):
                Uploader(http, None, memory_bytes=8 * MiB, backoff_scale=bad)


# --- item 12: op=stat and last_error ------------------------------------------------------


async def test_drops_at_the_end_of_a_session_are_reported(
    platform: ReferencePlatform, make_uploader: MakeUploader
) -> None:
    """The session's last segment fails for good and the first op=stat is lost: no other
    upload to that cbk_url follows, and the report must still arrive."""
    up = await make_uploader(None)
    platform.vr.fail("put", PUT_ATTEMPTS, status=500)
    platform.vr.fail("stat", 1, status=503)
    submit(up, platform, Feed(1000).next())
    assert await until(lambda: platform.vr_stats, 10), platform.vr_requests
    (stat,) = platform.vr_stats
    assert (stat.dropped_nb, stat.dropped_time) == (1, 1.0)
    assert platform.vr_requests["stat"] == 2 and up.stats.segments_dropped == 1


async def test_last_error_clears_once_uploads_succeed(
    platform: ReferencePlatform, make_uploader: MakeUploader
) -> None:
    up = await make_uploader(None)
    feed = Feed(1000)
    platform.vr_down = True
    submit(up, platform, feed.next())
    assert await until(lambda: up.stats.last_error, 5)
    assert not up.stats.reachable
    platform.vr_down = False
    assert await until(lambda: up.stats.segments_saved, 10)
    assert up.stats.last_error == "" and up.stats.reachable


# --- item 10: a created name survives a crash ---------------------------------------------


def spooled_meta(platform: ReferencePlatform, seq: int, size: int, **kw: Any) -> SegmentMeta:
    return SegmentMeta(
        seq=seq, channel=0, session_id="s1", cbk_url=platform.vr_cbk_url(0), https=True,
        start=T0 + seq, duration=1.0, size=size, discontinue=False, **kw,
    )  # fmt: skip


async def test_a_spooled_name_is_uploaded_again_not_created_again(
    platform: ReferencePlatform, make_uploader: MakeUploader, tmp_path: Path
) -> None:
    """What a kill -9 during the save reply leaves: a spooled segment with its name. The
    platform saved it already (a), or never saw the PUT (b), or forgot the name (c)."""
    data = b"\x47" * 1880
    async with http_client(platform) as http:
        vr = VrClient(platform.vr_cbk_url(0), http, https=True)
        a = await vr.create(len(data), T0 + 1, 1.0, False)
        await vr.put(a.url, SegmentBody.from_bytes(data))
        await vr.save(a.name)
        b = await vr.create(len(data), T0 + 2, 1.0, False)
    sp = Spool(tmp_path / "spool", 64 * MiB)
    sp.load()
    sp.put(spooled_meta(platform, 1, len(data), name=a.name, url=a.url), data)
    sp.put(spooled_meta(platform, 2, len(data), name=b.name, url=b.url), data)
    gone = f"{platform.schedule_url}/vr/seg/ch0-999-forgotten"
    sp.put(spooled_meta(platform, 3, len(data), name="ch0-999-forgotten", url=gone), data)
    creates = platform.vr_requests["create"]
    up = await make_uploader(Spool(tmp_path / "spool", 64 * MiB))
    assert await until(lambda: len(platform.vr_segments[0]) == 3, 10)
    await up.settle()
    segs = platform.vr_segments[0]
    assert [s.start for s in segs] == [T0 + 1, T0 + 2, T0 + 3]  # each once, in order
    assert [s.name for s in segs[:2]] == [a.name, b.name]
    assert platform.vr_requests["create"] == creates + 1  # only for the forgotten name
    assert platform.vr.reputs == 1 and up.stats.segments_resumed == 2
    assert not list((tmp_path / "spool").iterdir())


async def test_the_name_is_on_disk_before_the_put(
    platform: ReferencePlatform, make_uploader: MakeUploader, tmp_path: Path
) -> None:
    up = await make_uploader(Spool(tmp_path / "spool", 64 * MiB))
    platform.vr_down = True
    submit(up, platform, Feed(1000).next())
    assert await until(lambda: up.queued() == (0, 1), 5)  # spooled by the outage
    platform.vr.fail("put", 1, mode="timeout", hold=60)  # the PUT hangs
    platform.vr_down = False
    assert await until(lambda: platform.vr_requests["put"], 10)
    (meta_file,) = (tmp_path / "spool").glob("*.json")
    meta = msgspec.json.decode(meta_file.read_bytes(), type=SegmentMeta)
    assert meta.name == platform.vr.pending_names()[0] and meta.url.endswith(meta.name)


# --- section 3: memory bounded in bytes ---------------------------------------------------


@pytest.mark.parametrize("mode", ["late", "timeout"])
async def test_memory_is_bounded_in_bytes_whatever_the_platform_does(
    platform: ReferencePlatform, make_uploader: MakeUploader, tmp_path: Path, mode: str
) -> None:
    """Slow answers ("late": each create answered 2 s late, a scaled-down 25 s) or a hang
    (held until the client's timeout), while the platform asks for 10 000 segments in
    memory: the uploader holds at most its byte bound, the rest waits on disk, and
    nothing is lost once the platform answers again."""
    up = await make_uploader(
        Spool(tmp_path / "spool", 64 * MiB), memory_mb=2, timeout=1.0 if mode == "timeout" else 30
    )
    platform.vr.fail("create", 1000, mode=mode, hold=2.0 if mode == "late" else 60)  # type: ignore[arg-type]
    feed = Feed(128 * 1024)
    peak = 0
    for _ in range(40):  # 5 MiB in 2 s
        submit(up, platform, feed.next())
        await asyncio.sleep(0.05)
        peak = max(peak, up.queued_bytes()[0])
    assert peak <= 2 * MiB, peak
    assert up.stats.spooled > 0 and up.stats.segments_dropped == 0
    platform.vr.clear_faults()
    assert await until(lambda: up.queued() == (0, 0), 30), up.queued()
    assert saved_starts(platform) == [T0 + i for i in range(40)]


async def test_without_a_spool_the_oldest_is_dropped_and_reported(
    platform: ReferencePlatform, make_uploader: MakeUploader
) -> None:
    up = await make_uploader(None, memory_mb=1, timeout=0.5)
    platform.vr.fail("create", 1000, mode="timeout", hold=60)  # a hang
    feed = Feed(128 * 1024)
    peak = 0
    for _ in range(20):  # 2.5 MiB for 1 MiB of memory
        submit(up, platform, feed.next())
        await asyncio.sleep(0.01)
        peak = max(peak, up.queued_bytes()[0])
    assert peak <= MiB, peak
    dropped = up.stats.segments_dropped
    assert dropped >= 12, dropped
    platform.vr.clear_faults()
    assert await until(lambda: platform.vr_stats and up.queued() == (0, 0), 20)
    assert sum(s.dropped_nb for s in platform.vr_stats) == dropped
    segs = platform.vr_segments[0]
    assert [s.start for s in segs] == [T0 + i for i in range(dropped, 20)]  # the newest
    assert segs[0].discontinue and not any(s.discontinue for s in segs[1:])


# --- section 3: the spool on a full disk --------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 20 MB filesystem (tmpfs); skipped where mounting is not permitted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


async def test_a_20mb_disk_evicts_the_oldest_and_memory_stays_bounded(
    platform: ReferencePlatform,
    make_uploader: MakeUploader,
    tmpfs: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    spool = Spool(tmpfs / "spool", 512 * MiB)  # configured far beyond the disk
    up = await make_uploader(spool, memory_mb=8)
    platform.vr_down = True
    feed = Feed(MiB)
    for _ in range(40):  # 40 MiB on a 20 MB disk
        submit(up, platform, feed.next())
        await asyncio.sleep(0.01)
        assert up.queued_bytes()[0] <= 8 * MiB
    await up.settle()
    st = up.stats
    assert spool.used <= 20 * MiB - spool.reserve_bytes  # type: ignore[operator]
    assert st.segments_evicted >= 40 - 20, st
    assert st.segments_dropped == st.segments_evicted
    files = {p.name for p in (tmpfs / "spool").iterdir()}
    assert all(f"{i.meta.seq:016d}.ts" in files for i in up._items.values() if i.data is None)

    # Nothing can be written any more (and nothing removed): memory still holds its bound,
    # the oldest waiting segment is dropped, and no eviction is counted that did not happen.
    remount(tmpfs, "ro")
    evicted = st.segments_evicted
    for _ in range(20):
        submit(up, platform, feed.next())
        await asyncio.sleep(0.01)
        assert up.queued_bytes()[0] <= 8 * MiB
    await up.settle()
    assert st.segments_evicted == evicted and st.segments_dropped > evicted
    assert "read-only" in st.last_error and "read-only" in str(spool.last_error)
    remount(tmpfs, "rw")

    platform.vr_down = False
    assert await until(lambda: up.queued() == (0, 0) and platform.vr_stats, 30)
    assert await until(
        lambda: sum(s.dropped_nb for s in platform.vr_stats) == st.segments_dropped, 10
    )
    starts = saved_starts(platform)
    assert starts == sorted(starts) and len(starts) + st.segments_dropped == 60
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) <= 12, [r.getMessage() for r in errors]  # episodes, not segments


# --- eviction accounting, with an injected free-space probe -------------------------------


def meta(seq: int, size: int = 1000) -> SegmentMeta:
    return SegmentMeta(
        seq=seq, channel=0, session_id="s", cbk_url="https://p/live/cseg/0", https=True,
        start=T0 + seq, duration=1.0, size=size, discontinue=False,
    )  # fmt: skip


def test_spool_keeps_a_reserve_of_real_free_space(tmp_path: Path) -> None:
    """A 10 MB disk (as the probe tells it) under a spool configured for 1 GiB."""
    others = {"used": 0}  # what the rest of the device writes on that disk

    def probe(_: Path) -> tuple[int, int]:
        return 10_000_000 - sp.used - others["used"], 10_000_000

    sp = Spool(tmp_path / "spool", 1 << 30, reserve_bytes=1_000_000, free_space=probe)
    sp.load()
    for seq in range(1, 5):  # 8 MB: the 4th still fits beside the 1 MB reserve
        assert sp.put(meta(seq, 2_000_000), b"x" * 2_000_000)[1] == []
    _, evicted = sp.put(meta(5, 2_000_000), b"x" * 2_000_000)
    assert [e.meta.seq for e in evicted] == [1]
    assert not (tmp_path / "spool" / f"{1:016d}.json").exists()
    # Pinned (being uploaded) is never evicted: with the rest of the device's writes
    # taking 2.9 MB, room for the next one means evicting 3 and 4, not the pinned 2.
    assert sp.pin(2, on_disk=True)
    others["used"] = 2_900_000
    _, evicted = sp.put(meta(6, 2_000_000), b"x" * 2_000_000)
    assert [e.meta.seq for e in evicted] == [3, 4]
    # Something else fills the disk: evicting every unpinned segment would not make
    # room, so none is evicted (they are recordings; the new one is refused).
    others["used"] = 10_000_000
    with pytest.raises(SpoolError, match="no space left") as ei:
        sp.put(meta(7, 2_000_000), b"x" * 2_000_000)
    assert ei.value.evicted == []
    assert [e.meta.seq for e in sp.entries()] == [2, 5, 6]


def test_a_failed_write_reports_what_it_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp = Spool(tmp_path / "spool", max_bytes=3000)
    sp.load()
    for seq in (1, 2, 3):
        sp.put(meta(seq), b"x" * 1000)
    real = fsutil.atomic_write

    def failing(path: Path | str, data: bytes, mode: int = 0o600) -> None:
        if Path(path).name.startswith(f"{4:016d}"):
            raise OSError(errno.EIO, "Input/output error")
        real(path, data, mode)

    monkeypatch.setattr(spool_mod, "atomic_write", failing)
    with pytest.raises(SpoolError) as ei:
        sp.put(meta(4), b"x" * 1000)
    assert [e.meta.seq for e in ei.value.evicted] == [1]  # removed: the caller must know
    assert [e.meta.seq for e in sp.entries()] == [2, 3]


def test_an_eviction_that_fails_is_not_an_eviction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp = Spool(tmp_path / "spool", max_bytes=3000)
    sp.load()
    for seq in (1, 2, 3):
        sp.put(meta(seq), b"x" * 1000)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == f"{1:016d}.json":
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(SpoolError, match="cannot evict") as ei:
        sp.put(meta(4), b"x" * 1000)
    assert ei.value.evicted == []
    assert [e.meta.seq for e in sp.entries()] == [1, 2, 3] and sp.used == 3000


async def test_a_failed_write_leaves_no_queue_entry_on_a_deleted_file(
    platform: ReferencePlatform,
    make_uploader: MakeUploader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up = await make_uploader(Spool(tmp_path / "spool", max_bytes=3 * 1000), memory_mb=4)
    platform.vr_down = True
    feed = Feed(1000)
    for _ in range(3):
        submit(up, platform, feed.next())
    assert await until(lambda: up.queued() == (0, 3), 5)
    real = fsutil.atomic_write

    def failing(path: Path | str, data: bytes, mode: int = 0o600) -> None:
        if Path(path).suffix == ".ts":
            raise OSError(errno.EIO, "Input/output error")
        real(path, data, mode)

    monkeypatch.setattr(spool_mod, "atomic_write", failing)
    submit(up, platform, feed.next())
    await until(lambda: up.stats.last_error.startswith("cannot spool"), 5)
    await up.settle()
    evicted = up.stats.segments_evicted
    on_disk = [i for i in up._items.values() if i.data is None]
    assert evicted == 1 and len(on_disk) == 2, (evicted, on_disk)  # the head is pinned
    assert all(i.entry is not None and i.entry.path.exists() for i in on_disk)


# --- section 3: no disk I/O on the event loop ---------------------------------------------


async def test_spool_io_never_runs_on_the_event_loop(
    platform: ReferencePlatform,
    make_uploader: MakeUploader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()
    for name in ("load", "put", "update_meta", "remove"):
        real = getattr(Spool, name)

        def spy(self: Spool, *a: Any, _real: Any = real, _name: str = name) -> Any:
            seen.append((_name, threading.get_ident() == loop_thread))
            return _real(self, *a)

        monkeypatch.setattr(Spool, name, spy)
    up = await make_uploader(Spool(tmp_path / "spool", 64 * MiB))
    platform.vr_down = True
    feed = Feed(4096)
    for _ in range(3):
        submit(up, platform, feed.next())
    assert await until(lambda: up.queued() == (0, 3), 5)
    platform.vr_down = False
    assert await until(lambda: up.queued() == (0, 0), 10)
    await up.settle()
    assert {n for n, _ in seen} == {"load", "put", "update_meta", "remove"}, seen
    assert not [n for n, on_loop in seen if on_loop], seen
    assert os.listdir(tmp_path / "spool") == []


def test_a_card_spool_writes_nothing_while_no_card_is_mounted(tmp_path: Path) -> None:
    """store = "mount" with the card out: the empty mount point is on the system's own
    disk, so the spool neither opens nor writes there (recording keeps to memory)."""
    point = tmp_path / "card"
    point.mkdir()
    sp = Spool(point / "spool", 64 * MiB, mount=point)
    with pytest.raises(SpoolError, match="nothing is mounted"):
        sp.load()
    with pytest.raises(SpoolError, match="nothing is mounted"):
        sp.put(meta(1), b"x" * 1000)
    assert list(point.iterdir()) == []
    on_root = Spool(tmp_path / "spool", 64 * MiB, mount=Path("/"))  # "/" is a mount point
    on_root.load()
    on_root.put(meta(1), b"x" * 1000)
    assert len(on_root) == 1


# --- issue 13 (found by the soak): drop reports survive a restart ---------------------------


async def test_drops_not_yet_reported_are_reported_after_a_restart(
    platform: ReferencePlatform, make_uploader: MakeUploader, tmp_path: Path
) -> None:
    """Segments evicted from a full spool while the platform is away, then the daemon
    restarts (a SIGKILL, an upgrade) before the platform is back: the next run still
    reports them with op=stat, once."""
    up = await make_uploader(Spool(tmp_path / "spool", max_bytes=3 * 1000), memory_mb=4)
    platform.vr_down = True
    feed = Feed(1000)
    for _ in range(8):
        submit(up, platform, feed.next())
        await asyncio.sleep(0.01)
    await up.settle()
    evicted = up.stats.segments_evicted
    assert evicted >= 4, up.stats
    await up.close()  # gone before it could report them
    assert not platform.vr_stats

    platform.vr_down = False
    again = await make_uploader(Spool(tmp_path / "spool", max_bytes=3 * 1000), memory_mb=4)
    assert await until(lambda: platform.vr_stats and again.queued() == (0, 0), 20)
    await asyncio.sleep(0.3)  # a second report would come within this
    assert sum(s.dropped_nb for s in platform.vr_stats) == evicted
    assert len(saved_starts(platform)) + evicted == 8
