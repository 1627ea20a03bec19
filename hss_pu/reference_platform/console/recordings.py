"""The console's recordings: a channel's timeline, an HLS playlist over the saved segment
files, the files themselves, and a time range downloaded as one file.

- ``GET /console/api/recordings/{device}/{channel}?from=&to=`` -> ``{"segments": [{"name",
  "start", "duration", "size", "discontinue", "position"}], "gaps": [{"start", "end"}]}``
  (``position``: where the segment begins in the playlist of the same range, in s).
- ``GET .../index.m3u8?from=&to=``: HLS VOD playlist (console.timeline.playlist).
- ``GET .../seg/{name}.ts``: a saved segment file.
- ``GET .../download?from=&to=``: the range as one MPEG-TS (console.remux), streamed.

Vr keeps segments per channel for every device, each with the MAC it came with
(``Mac-Identity``); a device's are those with the MAC its Keepalive carries. Only files
the platform saved are served: a name is looked up among the device's saved segments and
its path taken from the record, never built from the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import queue
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import quote

from aiohttp import web

from hss_pu.bridge import LoopBridge
from hss_pu.reference_platform.console.remux import Piece, RemuxReport, remux
from hss_pu.reference_platform.console.timeline import (
    Segment,
    gaps,
    playlist,
    positions,
    select,
)

if TYPE_CHECKING:
    from hss_pu.reference_platform.server import ReferencePlatform
    from hss_pu.reference_platform.vr import VrSegment

__all__ = [
    "PREFIX",
    "RECORDINGS",
    "Recordings",
    "add_routes",
    "device_macs",
    "device_segments",
    "segment_url",
]

log = logging.getLogger("hss_pu.platform.console")

PREFIX = "/console/api/recordings"
MAX_CHANNEL = 255
# VrServer's names (ch<channel>-<counter>-<8 hex>) and the URI's .ts.
_SEG_NAME = re.compile(r"(ch[0-9]{1,9}-[0-9]{1,19}-[0-9a-f]{8})\.ts")
_CHANNEL = re.compile(r"[0-9]{1,3}")
MAX_DOWNLOADS = 2  # at once: each holds a worker thread of the default executor
CHUNK = 64 * 1024  # bytes per write to the response
QUEUE_CHUNKS = 8  # chunks between the remux thread and the response: 512 KiB at most
POLL = 0.2  # s: how often a remux thread blocked on a full queue checks for a hang-up


def _refuse(cls: type[web.HTTPException], info: str) -> NoReturn:
    """Answer ``{"info": ...}`` with the status of ``cls`` (the platform's error body)."""
    raise cls(text=json.dumps({"info": info}), content_type="application/json")


# --- which segments are a device's ------------------------------------------------------


def device_macs(platform: ReferencePlatform, device: str) -> frozenset[str] | None:
    """The MACs (lower case) a device's segments carry; None when the device is unknown
    (neither configured, nor online, nor ever heard from)."""
    ka = platform.last_keepalive(device)
    if ka is None and device not in platform.options.devices and not platform.online(device):
        return None
    mac = ka.get("mac_id") if ka else None
    return frozenset({mac.lower()}) if isinstance(mac, str) and mac else frozenset()


def device_segments(platform: ReferencePlatform, device: str, channel: int) -> list[VrSegment]:
    """The device's saved segments of a channel (save order); LookupError: no such
    device."""
    macs = device_macs(platform, device)
    if macs is None:
        raise LookupError(f"no device {device[:64]!r}")
    if not macs:
        return []
    return [s for s in platform.vr_segments.get(channel, ()) if s.mac.lower() in macs]


def segment_url(device: str, channel: int, name: str) -> str:
    return f"{PREFIX}/{quote(device, safe='')}/{channel}/seg/{name}.ts"


def _timeline(s: VrSegment) -> Segment:
    return Segment(s.name, s.start, s.duration, s.size, s.discontinue)


# --- request parts ----------------------------------------------------------------------


def _channel(request: web.Request) -> int:
    text = request.match_info["channel"]
    if not _CHANNEL.fullmatch(text) or int(text) > MAX_CHANNEL:
        _refuse(web.HTTPBadRequest, f"channel must be an integer in [0, {MAX_CHANNEL}]")
    return int(text)


def _time(request: web.Request, key: str, default: float) -> float:
    text = request.query.get(key)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        _refuse(web.HTTPBadRequest, f"{key} must be a time in epoch seconds, not {text[:40]!r}")
    if not math.isfinite(value):
        _refuse(web.HTTPBadRequest, f"{key} must be a finite number of epoch seconds")
    return value


def _range(request: web.Request) -> tuple[float, float]:
    lo = _time(request, "from", -math.inf)
    hi = _time(request, "to", math.inf)
    if lo > hi:
        _refuse(web.HTTPBadRequest, "from must not be after to")
    return lo, hi


class Recordings:
    """The routes' handlers, over one platform."""

    def __init__(self, platform: ReferencePlatform) -> None:
        self.platform = platform
        self._downloads = asyncio.Semaphore(MAX_DOWNLOADS)
        self.running: set[_Pipe] = set()  # downloads whose remux thread has not ended

    def _saved(self, request: web.Request) -> tuple[str, int, list[VrSegment]]:
        device = request.match_info["device"]
        channel = _channel(request)
        try:
            return device, channel, device_segments(self.platform, device, channel)
        except LookupError as exc:
            _refuse(web.HTTPNotFound, str(exc))

    def _selected(self, request: web.Request) -> tuple[str, int, list[VrSegment], float, float]:
        device, channel, saved = self._saved(request)
        lo, hi = _range(request)
        by_name = {s.name: s for s in saved}
        chosen = [by_name[t.name] for t in select(map(_timeline, saved), lo, hi)]
        return device, channel, chosen, lo, hi

    async def timeline(self, request: web.Request) -> web.Response:
        _, _, segs, _, _ = self._selected(request)
        pieces = [_timeline(s) for s in segs]
        out = [
            {**t.to_json(), "position": pos}
            for t, pos in zip(pieces, positions(pieces), strict=True)
        ]
        return web.json_response(
            {"segments": out, "gaps": [g.to_json() for g in gaps(pieces)]},
            headers={"Cache-Control": "no-store"},
        )

    async def playlist(self, request: web.Request) -> web.Response:
        device, channel, segs, _, _ = self._selected(request)
        if not segs:
            _refuse(web.HTTPNotFound, "nothing recorded in that range")
        text = playlist(
            [_timeline(s) for s in segs], lambda t: segment_url(device, channel, t.name)
        )
        return web.Response(
            text=text,
            content_type="application/vnd.apple.mpegurl",
            headers={"Cache-Control": "no-store"},
        )

    async def segment(self, request: web.Request) -> web.FileResponse:
        m = _SEG_NAME.fullmatch(request.match_info["name"])
        if m is None:
            _refuse(web.HTTPBadRequest, "not a segment name (ch<N>-<N>-<8 hex digits>.ts)")
        _, _, saved = self._saved(request)
        seg = next((s for s in saved if s.name == m.group(1)), None)
        if seg is None or not seg.path.is_file():
            _refuse(web.HTTPNotFound, "no such segment of this device's channel (or deleted)")
        return web.FileResponse(
            seg.path,
            headers={"Content-Type": "video/mp2t", "Cache-Control": "private, max-age=86400"},
        )

    async def download(self, request: web.Request) -> web.StreamResponse:
        device, channel, segs, lo, hi = self._selected(request)
        if not segs:
            _refuse(web.HTTPNotFound, "nothing recorded in that range")
        if self._downloads.locked():
            _refuse(web.HTTPServiceUnavailable, f"{MAX_DOWNLOADS} downloads already running")
        async with self._downloads:
            return await self._download(request, device, channel, segs, lo, hi)

    async def _download(
        self,
        request: web.Request,
        device: str,
        channel: int,
        segs: Sequence[VrSegment],
        lo: float,
        hi: float,
    ) -> web.StreamResponse:
        pieces = [Piece(s.path, s.start) for s in segs]
        pipe = _Pipe()
        t0 = time.monotonic()
        worker = asyncio.create_task(asyncio.to_thread(_run, pieces, pipe, lo, hi))
        self.running.add(pipe)
        worker.add_done_callback(lambda t: self._ended(pipe, t))
        name = _filename(device, channel, max(lo, segs[0].start))
        sent = 0
        try:
            first = await pipe.get()
            if first is None:  # nothing came: say why while a status can still be sent
                try:
                    await worker
                except ValueError as exc:
                    _refuse(web.HTTPNotFound, f"no segment in that range could be read: {exc}")
                _refuse(web.HTTPInternalServerError, "the download produced nothing")
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "video/mp2t",
                    "Content-Disposition": f'attachment; filename="{name}"',
                    "Cache-Control": "no-store",
                }
            )
            await resp.prepare(request)
            chunk: bytes | None = first
            while chunk is not None:
                await resp.write(chunk)
                sent += len(chunk)
                chunk = await pipe.get()
            report = await worker
            await resp.write_eof()
        finally:
            pipe.stopped.set()  # a thread blocked on the queue stops within POLL s
            if not worker.done():
                await asyncio.wait([worker])
        log.info(
            "console: download of %s ch%d: %d segments, %d bytes, %.1f s of video in %.2f s%s",
            device, channel, report.pieces, sent, report.duration, time.monotonic() - t0,
            f" ({report.skipped} unreadable skipped)" if report.skipped else "",
        )  # fmt: skip
        return resp

    def _ended(self, pipe: _Pipe, worker: asyncio.Task[RemuxReport]) -> None:
        self.running.discard(pipe)
        if not worker.cancelled() and isinstance(worker.exception(), _HungUp):
            log.info("console: download stopped: the client went away")


def _filename(device: str, channel: int, start: float) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", device)[:64] or "device"
    when = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{safe}-ch{channel}-{when}.ts"


# --- the remux thread and the response ---------------------------------------------------


class _HungUp(Exception):
    """The response is gone: the remux thread stops (not an OSError: remux would take
    that for an unreadable segment)."""


class _Pipe:
    """Bytes from the remux thread to the response, in CHUNK pieces through a queue of
    QUEUE_CHUNKS: the thread waits while the client reads slowly; ``None`` ends it. The
    thread wakes the loop through a LoopBridge (made on the loop)."""

    def __init__(self) -> None:
        self._bridge = LoopBridge()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(QUEUE_CHUNKS)
        self._ready = asyncio.Event()
        self.stopped = threading.Event()  # set by the response side when it is done
        self.produced = 0  # bytes handed to the queue so far
        self._buf = bytearray()

    async def get(self) -> bytes | None:  # the loop
        """The next chunk; None at the end."""
        while True:
            self._ready.clear()
            try:
                return self._chunks.get_nowait()
            except queue.Empty:
                await self._ready.wait()

    def write(self, data: bytes) -> None:  # the remux thread
        self._buf += data
        if len(self._buf) >= CHUNK:
            self._put(bytes(self._buf))
            self._buf.clear()

    def close(self) -> None:  # the remux thread, once done
        if self._buf:
            self._put(bytes(self._buf))
            self._buf.clear()
        self._put(None)

    def _put(self, item: bytes | None) -> None:
        while True:
            if self.stopped.is_set():
                raise _HungUp
            try:
                self._chunks.put(item, timeout=POLL)
                break
            except queue.Full:
                continue
        self.produced += len(item or b"")
        if not self._bridge.call(self._ready.set):
            raise _HungUp  # the loop is gone


def _run(pieces: list[Piece], pipe: _Pipe, lo: float, hi: float) -> RemuxReport:
    """The remux thread: the file into ``pipe``, then its end (also after a failure, so
    the response side never waits for bytes that will not come)."""
    try:
        return remux(pieces, pipe.write, start=lo, end=hi)
    finally:
        with contextlib.suppress(_HungUp):
            pipe.close()


# --- routes -------------------------------------------------------------------------------

RECORDINGS = web.AppKey("console_recordings", Recordings)


def add_routes(app: web.Application, platform: ReferencePlatform) -> None:
    r = Recordings(platform)
    app[RECORDINGS] = r
    base = f"{PREFIX}/{{device}}/{{channel}}"
    app.router.add_get(base, r.timeline)
    app.router.add_get(f"{base}/index.m3u8", r.playlist)
    app.router.add_get(f"{base}/seg/{{name:.*}}", r.segment)
    app.router.add_get(f"{base}/download", r.download, allow_head=False)
