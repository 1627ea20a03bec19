"""The platform side of Vr (clause 9.3.4): segment create / PUT / save / fail, time, stats.

Served on the platform's HTTPS port (the one Vs and /upload use):

- ``POST /live/cseg/<channel>``: the form ops, parsed by :func:`hss_pu.wire.vr.parse_form`.
- ``PUT /vr/seg/<name>``: the segment bytes, at the URL a ``create`` reply gave out.

It is the yardstick the PU's recording is measured against, so it is strict where that
finds PU bugs (Mac-Identity, form content type, the PUT size against the declared one, a
segment saved on the channel that created it) and checks every saved segment by decoding
it: :class:`DecodeCheck`. The check runs in a worker thread *before* the save is answered,
so a PU whose ``save`` returned finds ``check`` filled in; for segments of a few seconds it
costs tens of milliseconds (``PlatformOptions.vr_decode_check = False`` turns it off).

Tests inject faults per op (:meth:`VrServer.fail`; a PUT "cut" mid-body needs the
HttpServer's ``body_cut`` hook to be :meth:`VrServer.body_cut`) or take the whole service down
(:attr:`VrServer.down`), and read per-op request counts and bytes to measure overhead.
Memory is bounded: record lists keep the last :data:`MAX_RECORDS`, pending segments expire
after :data:`PENDING_TTL` (or the oldest go beyond :data:`MAX_PENDING`), and a channel keeps
the files of its last ``PlatformOptions.vr_keep_segments`` saved segments only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from hss_pu.fsutil import atomic_write
from hss_pu.media.tscheck import check_ts
from hss_pu.reference_platform.ticker import Ticker
from hss_pu.reference_platform.web import MAX_BODY, AbortConnection, Request, Response
from hss_pu.wire.vr import (
    CONTENT_TYPE_FORM,
    CreateRequest,
    FailRequest,
    GetCurrentTimeRequest,
    SaveRequest,
    StatRequest,
    VrFormatError,
    VrRequest,
    encode_create_reply,
    encode_currenttime,
    encode_error_info,
    parse_form,
)
from hss_pu.wire.vs import MAC_PATTERN

if TYPE_CHECKING:
    from hss_pu.reference_platform.options import PlatformOptions

__all__ = [
    "CSEG_PREFIX",
    "MAX_PENDING",
    "MAX_RECORDS",
    "OPS",
    "PENDING_TTL",
    "SEG_PREFIX",
    "DecodeCheck",
    "FaultMode",
    "VrCut",
    "VrFailed",
    "VrFault",
    "VrSegment",
    "VrServer",
    "VrStat",
    "decode_check",
]

log = logging.getLogger("hss_pu.platform.vr")

CSEG_PREFIX = "/live/cseg/"
SEG_PREFIX = "/vr/seg/"
OPS = ("create", "put", "save", "fail", "stat", "getcurrenttime")
MAX_RECORDS = 10_000
MAX_PENDING = 1_000
# A PU retries an upload on the 9.3.1.3 schedule (at most 60 s apart); an hour is ample.
PENDING_TTL = 3600.0

FaultMode = Literal["status", "timeout", "abort", "late", "cut"]
_MODES = ("status", "timeout", "abort", "late", "cut")

_MAC = re.compile(MAC_PATTERN)
_CHANNEL = re.compile(r"[0-9]{1,9}")
_SESSION = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Table I.3-x reply headers.
_REPLY_HEADERS = {
    "content-type": "application/json; charset=utf-8",
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST",
}


# --- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeCheck:
    """What decoding a saved segment found: is it an independently decodable TS?"""

    frames: int  # video frames decoded
    packets: int  # video packets demuxed (a frame each, for the codecs a PU sends)
    corrupt_frames: int  # frames the decoder flagged as concealed / damaged
    key_first: bool  # the first video packet is a key frame
    error: str | None  # why the segment is not clean; None when it is
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    media_duration: float | None = None  # first to last frame pts plus one frame, seconds
    ts_errors: int = 0  # sync, continuity, transport-error and trailing-byte faults

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class VrSegment:
    """One saved segment, as the PU declared it in ``create`` and as it arrived."""

    name: str
    channel: int
    start: float  # epoch seconds, as declared
    duration: float  # seconds, as declared
    size: int  # bytes, declared and received (save refuses a mismatch)
    discontinue: bool
    path: Path
    mac: str
    saved_at: float  # platform clock (ReferencePlatform.now)
    check: DecodeCheck | None  # None: vr_decode_check is off
    created_at: float = 0.0  # platform clock
    content_type: str = ""  # declared in create
    put_content_type: str = ""  # the PUT's Content-Type header
    put_mac: str = ""  # the PUT's Mac-Identity header ("" when absent: not required)
    https: bool = True  # what create asked for
    # start minus the previous saved segment's end on this channel; None for the first,
    # or when discontinue=1. Segments must tile time, so this is about 0 (one frame).
    gap: float | None = None
    # The ``session`` query parameter of the cbk_url it was created on: the platform's own
    # tag for a recording (the alarm policy's StartRecord sets it); "" when absent.
    session: str = ""

    @property
    def end(self) -> float:
        return self.start + self.duration

    def to_json(self) -> dict[str, Any]:
        check = self.check
        return {
            "name": self.name,
            "channel": self.channel,
            "start": self.start,
            "duration": self.duration,
            "size": self.size,
            "discontinue": self.discontinue,
            "path": str(self.path),
            "mac": self.mac,
            "saved_at": self.saved_at,
            "created_at": self.created_at,
            "content_type": self.content_type,
            "put_content_type": self.put_content_type,
            "put_mac": self.put_mac,
            "https": self.https,
            "gap": self.gap,
            "session": self.session,
            "check": None if check is None else {**check.__dict__, "ok": check.ok},
        }


@dataclass(frozen=True)
class VrStat:
    channel: int
    dropped_nb: int
    dropped_time: float
    mac: str
    time: float  # platform clock


@dataclass(frozen=True)
class VrFailed:
    """A segment the platform forgot: ``op=fail`` from the PU, or never saved in time."""

    name: str
    channel: int
    mac: str
    time: float  # platform clock
    uploaded: bool  # a PUT had arrived
    reason: Literal["fail", "expired", "evicted"] = "fail"


@dataclass(frozen=True)
class VrCut:
    """A segment PUT cut by a "cut" fault: ``at`` of its ``size`` declared body bytes were
    read, then the connection was dropped with no answer (nothing stored)."""

    name: str
    size: int | None  # the PUT's Content-Length (else the size create declared)
    at: int  # body bytes the platform read before it dropped the connection
    time: float  # platform clock


@dataclass
class VrFault:
    """The next ``remaining`` requests of ``op`` answer ``status`` (or hang, or abort).
    Mode "late": the request takes effect, its reply is held ``hold`` s (a PU killed
    meanwhile never learns that its save went through). Mode "cut" (PUTs): the connection
    drops once ``cut_at`` of the body has arrived, the rest still on its way."""

    op: str
    remaining: int
    status: int = 503
    retry_after: int | str | None = None
    mode: FaultMode = "status"
    hold: float = 30.0  # modes "timeout" (seconds before the 503) and "late"
    cut_at: float = 0.5  # mode "cut": the fraction of the body read before the drop


@dataclass
class _Pending:
    name: str
    channel: int
    mac: str
    create: CreateRequest
    created_at: float  # platform clock
    created_mono: float
    path: Path
    put_size: int | None = None
    put_content_type: str = ""
    put_mac: str = ""
    saving: asyncio.Future[VrSegment] | None = None
    puts_in_flight: int = 0
    session: str = ""


# --- the decode check ----------------------------------------------------------------


def decode_check(path: Path) -> DecodeCheck:
    """Decode every video frame of ``path`` (blocking: run it in a thread)."""
    import av  # here: the CLI imports this module and need not pay for PyAV
    import av.error

    try:
        ts = check_ts(path.read_bytes())
    except OSError as exc:
        return DecodeCheck(0, 0, 0, False, f"cannot read the file: {exc}")
    ts_errors = ts.sync_errors + ts.cc_errors + ts.tei_packets + (1 if ts.trailing_bytes else 0)
    frames = packets = corrupt = 0
    key_first: bool | None = None
    width = height = None
    codec = None
    pts: list[int] = []
    error: str | None = None
    duration: float | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return DecodeCheck(0, 0, 0, False, "no video stream", ts_errors=ts_errors)
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                    if key_first is None:
                        key_first = bool(packet.is_keyframe)
                for frame in packet.decode():
                    frames += 1
                    corrupt += bool(frame.is_corrupt)
                    width, height = frame.width, frame.height
                    if frame.pts is not None:
                        pts.append(frame.pts)
            if pts and stream.time_base is not None:
                rate = stream.average_rate or stream.guessed_rate
                step = Fraction(1) / Fraction(rate) if rate else Fraction(0)
                span = Fraction(max(pts) - min(pts)) * Fraction(stream.time_base)
                duration = float(span + step)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        error = f"decoding failed after {frames} frames: {exc}"
    if error is None:
        if not packets:
            error = "no video packets"
        elif not key_first:
            error = "the first video packet is not a key frame"
        elif frames < packets:
            error = f"{packets - frames} of {packets} video packets decoded to nothing"
        elif corrupt:
            error = f"{corrupt} corrupt frames"
        elif ts_errors:
            error = f"{ts_errors} transport stream errors"
    return DecodeCheck(
        frames=frames,
        packets=packets,
        corrupt_frames=corrupt,
        key_first=bool(key_first),
        error=error,
        width=width,
        height=height,
        codec=codec,
        media_duration=duration,
        ts_errors=ts_errors,
    )


# --- the server ------------------------------------------------------------------------


def _reply(status: int, body: bytes) -> Response:
    return Response(status, body, dict(_REPLY_HEADERS))


def _info(status: int, text: str) -> Response:
    return _reply(status, encode_error_info(text))


class VrServer:
    """Vr state and handlers; ReferencePlatform routes the two URL prefixes here.

    ``now`` is the platform's clock (times in records and getcurrenttime), ``base_url``
    where segments are PUT (known once the platform listens).
    """

    def __init__(
        self, options: PlatformOptions, *, now: Callable[[], float], base_url: Callable[[], str]
    ) -> None:
        self.options = options
        self.now = now
        self.base_url = base_url
        self.segments: defaultdict[int, list[VrSegment]] = defaultdict(list)
        self.failed: list[VrFailed] = []
        self.stats: list[VrStat] = []
        self.requests: Counter[str] = Counter()  # per op (and "invalid"), faults included
        self.body_bytes = 0  # request bodies, every Vr request
        self.header_bytes = 0  # request line and headers, as the server hands them over (±CRLFs)
        self.down = False  # True: every Vr request is aborted without a response
        self.drop_next = 0  # the next N creates answer an empty name/url: "drop it"
        self.reputs = 0  # PUTs of a segment already saved (accepted, not stored again)
        self.cuts: list[VrCut] = []  # PUTs cut mid-body by a "cut" fault (the last ones)
        self._faults: dict[str, collections.deque[VrFault]] = {}
        self._pending: dict[str, _Pending] = {}  # insertion order = creation order
        self._saved: dict[str, VrSegment] = {}  # recent saves, for idempotent save retries
        self._counter = itertools.count(1)
        self._ticker = Ticker()
        self._closing = asyncio.Event()

    # --- for tests --------------------------------------------------------------------

    def fail(
        self,
        op: str,
        count: int = 1,
        *,
        status: int = 503,
        retry_after: int | str | None = None,
        mode: FaultMode = "status",
        hold: float = 30.0,
        cut_at: float = 0.5,
    ) -> None:
        """Queue a fault for the next ``count`` requests of ``op`` (after earlier ones)."""
        if op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, not {op!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
        if mode == "cut" and op != "put":
            raise ValueError(f"mode cut is only for put (a segment body), not {op!r}")
        if not 0.0 < cut_at < 1.0:
            raise ValueError(f"cut_at must be a fraction of the body, 0 < f < 1, not {cut_at}")
        if count < 0 or not 100 <= status <= 599 or hold < 0:
            raise ValueError("count and hold must be >= 0, status a HTTP status")
        if count:
            q = self._faults.setdefault(op, collections.deque())
            q.append(VrFault(op, count, status, retry_after, mode, hold, cut_at))

    def clear_faults(self) -> None:
        self._faults.clear()

    def pending_names(self) -> list[str]:
        """Segments created and not yet saved or failed, oldest first."""
        return list(self._pending)

    async def wait_segments(self, channel: int, n: int, timeout: float = 10.0) -> list[VrSegment]:
        """The channel's saved segments once there are at least ``n`` (n <= MAX_RECORDS)."""
        segs = self.segments[channel]
        try:
            found: list[VrSegment] = await self._ticker.wait_for(
                lambda: list(segs) if len(segs) >= n else None, timeout, "segments"
            )
        except TimeoutError:
            got = len(segs)
            raise TimeoutError(
                f"channel {channel}: {got} of {n} segments saved within {timeout:g} s"
            ) from None
        return found

    def session_segments(self, session: str) -> list[VrSegment]:
        """The saved segments created on a cbk_url tagged ``?session=<session>``, by start."""
        segs = [s for ch in self.segments.values() for s in ch if s.session == session]
        return sorted(segs, key=lambda s: s.start)

    async def wait_session(
        self, session: str, until: float, timeout: float = 15.0
    ) -> list[VrSegment]:
        """A tagged recording's segments once the one covering ``until`` (its stop, epoch
        s; half a second's slack for the segment boundary) is saved."""

        def check() -> list[VrSegment] | None:
            segs = self.session_segments(session)
            return segs if segs and segs[-1].end >= until - 0.5 else None

        found: list[VrSegment] = await self._ticker.wait_for(check, timeout, "segments")
        return found

    def close(self) -> None:
        """Release requests held by a "timeout" fault (they are aborted)."""
        self._closing.set()

    def reopen(self) -> None:
        """After :meth:`close`, for a platform that listens again: faults hold again."""
        self._closing = asyncio.Event()

    def _notify(self) -> None:
        self._ticker.notify()

    # --- dispatch ------------------------------------------------------------------------

    def body_cut(self, method: str, target: str, length: int | None) -> int | None:
        """The HttpServer's ``body_cut`` hook, at each request head: a segment PUT meeting
        a queued "cut" fault is counted and cut at that fraction of its body (it never
        reaches :meth:`handle`, so nothing is stored and the segment stays pending; the
        bytes read count in ``body_bytes``, its head not in ``header_bytes``)."""
        if method != "PUT" or self.down:  # down: handle() aborts it, as any other
            return None
        path = urlsplit(target).path
        if not path.startswith(SEG_PREFIX):
            return None
        q = self._faults.get("put")
        if not q or q[0].mode != "cut":
            return None
        fault = self._take_fault(q)
        self.requests["put"] += 1
        name = path.removeprefix(SEG_PREFIX)
        if length is None:  # chunked: cut the size create declared
            p = self._pending.get(name)
            length = p.create.size if p is not None else None
        at = int((length or 0) * fault.cut_at)
        self.body_bytes += at
        self.cuts.append(VrCut(name, length, at, self.now()))
        del self.cuts[:-MAX_RECORDS]
        log.info(
            "Vr: injected fault on put (cut %s after %d of %s body bytes)",
            name, at, "?" if length is None else length,
        )  # fmt: skip
        return at

    @staticmethod
    def _take_fault(q: collections.deque[VrFault]) -> VrFault:
        fault = q[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            q.popleft()
        return fault

    async def handle(self, req: Request) -> Response:
        """Raises AbortConnection where the connection must close without a response."""
        self.body_bytes += len(req.body)
        self.header_bytes += (
            len(req.method)
            + len(req.target)
            + 12
            + sum(len(k) + len(v) + 4 for k, v in req.headers.items())
            + 2
        )
        if self.down:
            self.requests["down"] += 1
            raise AbortConnection("Vr is down")
        if req.path.startswith(SEG_PREFIX):
            self.requests["put"] += 1
            if req.method != "PUT":
                r = _info(405, "PUT only")
                r.headers["allow"] = "PUT"
                return r
            return await self._with_faults("put", lambda: self._put(req))
        text = req.path.removeprefix(CSEG_PREFIX)
        if not _CHANNEL.fullmatch(text):
            self.requests["invalid"] += 1
            return _info(404, "no such endpoint: expected /live/cseg/<channel number>")
        channel = int(text)
        if req.method != "POST":
            self.requests["invalid"] += 1
            r = _info(405, "POST only")
            r.headers["allow"] = "POST"
            return r
        try:
            op = parse_form(req.body)
        except VrFormatError as exc:
            self.requests["invalid"] += 1
            log.warning("Vr: bad form from %s: %s", req.peer, exc)
            return _info(400, str(exc))
        self.requests[op.op] += 1
        return await self._with_faults(op.op, lambda: self._form_op(req, channel, op))

    async def _form_op(self, req: Request, channel: int, op: VrRequest) -> Response:
        ctype = req.headers.get("content-type", "").partition(";")[0].strip().lower()
        if ctype != CONTENT_TYPE_FORM:
            return _info(415, f"Content-Type must be {CONTENT_TYPE_FORM}, not {ctype!r}")
        mac = req.headers.get("mac-identity", "")
        if not _MAC.fullmatch(mac):
            return _info(400, "Mac-Identity header missing or malformed")
        if isinstance(op, CreateRequest):
            session = req.query.get("session", "")
            return self._create(channel, mac, op, session if _SESSION.fullmatch(session) else "")
        if isinstance(op, SaveRequest):
            return await self._save(channel, mac, op.name)
        if isinstance(op, FailRequest):
            return self._fail(channel, mac, op.name)
        if isinstance(op, GetCurrentTimeRequest):
            return _reply(200, encode_currenttime(self.now()))
        assert isinstance(op, StatRequest)
        return self._stat(channel, mac, op)

    async def _with_faults(self, op: str, handler: Callable[[], Awaitable[Response]]) -> Response:
        q = self._faults.get(op)
        if not q:
            return await handler()
        fault = self._take_fault(q)
        log.info("Vr: injected fault on %s (%s %d)", op, fault.mode, fault.status)
        if fault.mode == "cut":  # not taken by body_cut (no hook, or it was queued behind
            # another fault when this PUT's head came): the body is all in, so abort
            log.warning("Vr: cut fault on %s reached after the body: aborted instead", op)
            raise AbortConnection(f"injected cut on {op}, after the whole body")
        if fault.mode == "abort":
            raise AbortConnection(f"injected abort on {op}")
        if fault.mode == "late":
            reply = await handler()
            await self._hold(fault.hold)
            return reply
        if fault.mode == "timeout":
            await self._hold(fault.hold)
        r = _info(fault.status, f"injected fault on {op}")
        if fault.retry_after is not None:
            r.headers["retry-after"] = str(fault.retry_after)
        return r

    async def _hold(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        if self._closing.is_set():
            raise AbortConnection("platform closing")

    # --- ops -------------------------------------------------------------------------

    def _create(self, channel: int, mac: str, req: CreateRequest, session: str) -> Response:
        if req.size == 0:
            return _info(400, "field size: a segment cannot be empty")
        if req.size > MAX_BODY:
            return _info(400, f"field size: {req.size} bytes is over the limit of {MAX_BODY}")
        if req.duration <= 0:
            return _info(400, "field duration: must be > 0")
        if self.drop_next > 0:
            self.drop_next -= 1
            log.info("Vr: ch%d create of %d bytes: told to drop it", channel, req.size)
            return _reply(200, encode_create_reply("", ""))
        self._expire()
        name = f"ch{channel}-{next(self._counter)}-{secrets.token_hex(4)}"
        path = self.options.state_dir / "vr" / str(channel) / f"{name}.ts"
        self._pending[name] = _Pending(
            name, channel, mac, req, self.now(), time.monotonic(), path, session=session
        )
        url = f"{self.base_url()}{SEG_PREFIX}{name}"
        log.info(
            "Vr: ch%d create %s (%d bytes, start %.3f, %.3f s%s)",
            channel, name, req.size, req.start, req.duration,
            ", discontinue" if req.discontinue else "",
        )  # fmt: skip
        return _reply(200, encode_create_reply(name, url))

    def _expire(self) -> None:
        """Forget pending segments past PENDING_TTL, and the oldest beyond MAX_PENDING."""
        cutoff = time.monotonic() - PENDING_TTL
        for p in list(self._pending.values()):  # oldest first
            if p.saving is not None:
                continue
            if p.created_mono < cutoff:
                self._forget(p, "expired")
            elif len(self._pending) >= MAX_PENDING:
                self._forget(p, "evicted")
            else:
                break

    def _forget(self, p: _Pending, reason: Literal["fail", "expired", "evicted"]) -> None:
        del self._pending[p.name]
        if p.puts_in_flight == 0:
            p.path.unlink(missing_ok=True)
        self.failed.append(
            VrFailed(p.name, p.channel, p.mac, self.now(), p.put_size is not None, reason)
        )
        del self.failed[:-MAX_RECORDS]
        if reason != "fail":
            log.warning("Vr: forgot segment %s (%s)", p.name, reason)

    async def _put(self, req: Request) -> Response:
        name = req.path.removeprefix(SEG_PREFIX)
        p = self._pending.get(name)
        if p is None:
            saved = self._saved.get(name)
            if saved is not None:
                # A PU that never heard its save answered uploads again: like an object
                # store, take it (it is the same segment; the saved copy stays as it is).
                if len(req.body) != saved.size:
                    return _info(
                        400,
                        f"segment {name} is saved with {saved.size} bytes, not {len(req.body)}",
                    )
                self.reputs += 1
                return Response(200, b"")
            return _info(404, f"no segment {name} (never created, failed or expired)")
        if p.saving is not None:
            return _info(409, f"segment {name} is being saved")
        p.puts_in_flight += 1
        try:
            await asyncio.to_thread(_store, p.path, req.body)
        finally:
            p.puts_in_flight -= 1
        if self._pending.get(name) is not p:  # failed or expired while we wrote
            if p.puts_in_flight == 0:
                p.path.unlink(missing_ok=True)
            return _info(404, f"segment {name} was forgotten during the upload")
        p.put_size = len(req.body)
        p.put_content_type = req.headers.get("content-type", "")
        p.put_mac = req.headers.get("mac-identity", "")
        log.debug("Vr: PUT %s (%d bytes)", name, p.put_size)
        return Response(200, b"")

    async def _save(self, channel: int, mac: str, name: str) -> Response:
        if name in self._saved:
            return _reply(200, b"{}")  # a retried save whose first reply was lost
        p = self._pending.get(name)
        if p is None:
            return _info(404, f"no segment {name} (never created, failed or expired)")
        if p.saving is not None:
            await asyncio.shield(p.saving)
            return _reply(200, b"{}")
        problem = self._save_problem(p, channel, mac)
        if problem:
            log.warning("Vr: ch%d save %s refused: %s", channel, name, problem)
            return _info(400, problem)
        p.saving = asyncio.get_running_loop().create_future()
        try:
            check = await self._check(p.path)
        except BaseException:  # cancelled: the platform is closing
            p.saving.cancel()
            p.saving = None
            raise
        seg = self._record(p, check)
        p.saving.set_result(seg)
        return _reply(200, b"{}")

    async def _check(self, path: Path) -> DecodeCheck | None:
        if not self.options.vr_decode_check:
            return None
        try:
            return await asyncio.to_thread(decode_check, path)
        except Exception as exc:  # a bug in the check must not fail the PU's save
            log.exception("Vr: decode check of %s crashed", path)
            return DecodeCheck(0, 0, 0, False, f"the check crashed: {exc!r}")

    def _save_problem(self, p: _Pending, channel: int, mac: str) -> str | None:
        if p.channel != channel:
            return f"segment {p.name} was created on channel {p.channel}, not {channel}"
        if p.mac.lower() != mac.lower():
            return f"segment {p.name} was created by {p.mac}, not {mac}"
        if p.put_size is None:
            return f"segment {p.name} was never uploaded (no PUT)"
        if p.put_size != p.create.size:
            return (
                f"segment {p.name}: the PUT carried {p.put_size} bytes, "
                f"create declared size {p.create.size}"
            )
        return None

    def _record(self, p: _Pending, check: DecodeCheck | None) -> VrSegment:
        c = p.create
        segs = self.segments[p.channel]
        gap = None
        if segs and not c.discontinue:
            gap = round(c.start - segs[-1].end, 6)
        seg = VrSegment(
            name=p.name,
            channel=p.channel,
            start=c.start,
            duration=c.duration,
            size=c.size,
            discontinue=c.discontinue,
            path=p.path,
            mac=p.mac,
            saved_at=self.now(),
            check=check,
            created_at=p.created_at,
            content_type=c.content_type,
            put_content_type=p.put_content_type,
            put_mac=p.put_mac,
            https=c.https,
            gap=gap,
            session=p.session,
        )
        del self._pending[p.name]
        segs.append(seg)
        keep = max(1, self.options.vr_keep_segments)
        for old in segs[:-keep]:
            old.path.unlink(missing_ok=True)
        del segs[:-keep]
        self._saved[p.name] = seg
        while len(self._saved) > MAX_RECORDS:
            del self._saved[next(iter(self._saved))]
        what = "not checked" if check is None else ("ok" if check.ok else check.error)
        log.info(
            "Vr: ch%d saved %s (%d bytes, %.3f s, %s)", p.channel, p.name, c.size, c.duration, what
        )
        self._notify()
        return seg

    def _fail(self, channel: int, mac: str, name: str) -> Response:
        p = self._pending.get(name)
        if p is None:
            if name in self._saved:
                return _info(409, f"segment {name} is already saved")
            return _info(404, f"no segment {name} (never created, failed or expired)")
        if p.channel != channel:
            return _info(400, f"segment {name} was created on channel {p.channel}, not {channel}")
        if p.saving is not None:
            return _info(409, f"segment {name} is being saved")
        log.info("Vr: ch%d fail %s", channel, name)
        self._forget(p, "fail")
        self._notify()
        return _reply(200, b"{}")

    def _stat(self, channel: int, mac: str, req: StatRequest) -> Response:
        self.stats.append(VrStat(channel, req.dropped_nb, req.dropped_time, mac, self.now()))
        del self.stats[:-MAX_RECORDS]
        log.info("Vr: ch%d stat: %d dropped, %.3f s", channel, req.dropped_nb, req.dropped_time)
        self._notify()
        return _reply(200, b"{}")


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, 0o644)
