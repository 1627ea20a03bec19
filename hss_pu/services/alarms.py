"""The alarm service: detectors' reports become AlarmNotify, Keepalive flags and pictures.

Detectors (the hardware inputs, motion, person detection) call :class:`AlarmService` as
their :class:`~hss_pu.services.interfaces.AlarmSink`, on the event loop. What it does with
a report (wire-notes "Device services"; the readings in docs/protocol.md "Alarms"):

- **Config.** ``channels.N.alarms.<kind>`` of the configuration document, read at every
  report (so SetConfig applies at once): a kind that is off, or at sensitivity 0, raises
  nothing; switching it off ends its running alarm at once. A kind the channel does not
  run, or a report that does not fit its kind (a pulse for a state kind), is a detector
  bug: logged once, ignored.
- **State kinds** (start ... end). ``active=True`` starts an alarm or, while one runs,
  re-triggers it (its end is called off). ``active=False`` is the detector's inactive
  edge: the alarm ends ``hold`` seconds after it (``hold`` read at that edge, counted
  from the edge's ``at``), unless it is re-triggered meanwhile. A detector that only
  knows triggers reports each as active then inactive.
- **Pulse kinds**: one ``pulse`` per report.
- **Rate limit**, per channel and alarm type: at most ``alarms.max_per_minute``
  notifications in any 60 s. A start needs room for itself *and* its end, which is never
  held back, so the platform never sees a start without an end or an end without a
  start; a start refused for room suppresses that whole alarm (no notification, no
  Keepalive bit, no end), and its re-triggers only prolong it, silently.
- **Keepalive**: bit ``1 << type`` from an announced start to its end; a pulse's bit in
  the next Keepalive built (ChannelRegistry.next_keepalive).
- **Delivery**: one ordered queue of notifications, sent one at a time through the
  link's typed call (AlarmNotify), while the device is logged in. Offline, they wait
  (at most :data:`QUEUE_ITEMS`; the oldest is dropped and counted, a dropped start takes
  its end with it) and go after the next login, in order, with their own timestamps. A
  send that dies with the link is sent again after the login (at least once); an error
  reply is logged and the notification dropped.
- **Pictures** (of the kinds a frame says something about: not low battery): a start or
  pulse keeps a reference to its channel's latest frame at the moment the report
  arrives (media.channel.MediaChannel.latest_frame); one raised while the camera is
  starting (a PIR woke it) takes the camera's first frame instead, waited for up to
  :data:`FIRST_FRAME_WAIT` at upload time. When the reply carries ``pic_upload_url``,
  that frame is encoded (off the loop) and PUT as ``image/jpeg`` through the guarded
  upload client, so the URL-safety rules apply and a refused URL is a log line. Held
  frames are bounded in bytes (:data:`PICTURE_BYTES`, the oldest released first) and so
  are uploads (:data:`MAX_UPLOADS` waiting or running).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hss_pu.clients.http import HttpClient, UploadError, UrlNotAllowed, upload
from hss_pu.errors import BadReply, DeadLinkError, NoSuchChannel, RpcRefused
from hss_pu.media.channel import FrameRef, MediaChannel, MediaError
from hss_pu.services.channels import ChannelRegistry
from hss_pu.tasks import TaskSet
from hss_pu.wire.alarms import ALARM_KINDS, AlarmKind, flag
from hss_pu.wire.urls import redact_url
from hss_pu.wire.vd import AlarmNotifyParams, AlarmNotifyResp

__all__ = [
    "DEFAULT_HOLD",
    "MAX_UPLOADS",
    "PICTURE_BYTES",
    "QUEUE_ITEMS",
    "AlarmService",
    "AlarmSettings",
    "AlarmStats",
]

log = logging.getLogger("hss_pu.alarms")

DEFAULT_HOLD = 10  # s: a state alarm ends this long after its detector went quiet
QUEUE_ITEMS = 64  # notifications waiting for the platform
PICTURE_BYTES = 32 * 1024 * 1024  # frames held for pictures not yet asked for or sent
MAX_UPLOADS = 4  # picture uploads waiting or running
FIRST_FRAME_WAIT = 5.0  # s: a camera woken by the alarm has this long to give its first frame
UPLOADS_AT_ONCE = 2
WINDOW = 60.0  # s: the rate limit's window
MAX_SKEW = 3600.0  # s: a report's ``at`` further than this from the clock is replaced


class Link(Protocol):
    """What the service needs of the platform link (services.link.PlatformLink)."""

    async def call(self, params: AlarmNotifyParams) -> AlarmNotifyResp: ...


@dataclass(frozen=True, slots=True)
class AlarmSettings:
    """One kind's entry of ``channels.N.alarms`` (motion detection reads ``sensitivity``
    and ``regions`` from here too)."""

    on: bool
    sensitivity: int  # 0 never .. 100 most sensitive
    hold: float  # s, state kinds
    regions: tuple[tuple[float, float, float, float], ...] = ()  # motion: x, y, w, h in 0-1

    @property
    def armed(self) -> bool:
        return self.on and self.sensitivity > 0


@dataclass
class AlarmStats:
    reports: int = 0  # calls from detectors
    notifications: int = 0  # AlarmNotify answered by the platform
    suppressed: int = 0  # starts and pulses held back by the rate limit
    dropped: int = 0  # notifications dropped: queue full, or an error reply
    pictures: int = 0  # uploaded
    pictures_failed: int = 0  # refused URL, upload error, frame released for room
    ignored: int = 0  # reports of a kind that is off, unknown or misused


@dataclass(eq=False)
class _Alarm:
    """One state alarm from start to end."""

    channel: int
    kind: AlarmKind
    announced: bool  # its start went into the queue (not rate-limited)
    active: bool = True  # the detector says active now
    end: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Notice:
    params: AlarmNotifyParams
    alarm: _Alarm | None = None  # a state alarm's start or end
    picture: FrameRef | None = None  # a start's or a pulse's frame
    first_frame: bool = False  # raised while the camera was starting: take its first frame
    queued_at: float = field(default_factory=time.monotonic)


class AlarmService:
    """The :class:`~hss_pu.services.interfaces.AlarmSink` of the daemon."""

    def __init__(
        self,
        channels: ChannelRegistry,
        document: Callable[[], Mapping[str, Any]],
        link: Link,
        clock: Callable[[], float],
        *,
        max_per_minute: int,
        media: Mapping[int, MediaChannel] | None = None,
        http: HttpClient | None = None,
        queue_items: int = QUEUE_ITEMS,
        picture_bytes: int = PICTURE_BYTES,
    ) -> None:
        if max_per_minute < 2:
            raise ValueError("max_per_minute must be at least 2 (a start and its end)")
        self.channels = channels
        self.document = document
        self.link = link
        self.clock = clock
        self.max_per_minute = max_per_minute
        self.media = media or {}
        self.http = http
        self.queue_items = queue_items
        self.picture_bytes = picture_bytes
        self.stats = AlarmStats()
        self._alarms: dict[tuple[int, str], _Alarm] = {}
        self._sent: dict[tuple[int, int], collections.deque[float]] = {}  # monotonic times
        self._queue: collections.deque[_Notice] = collections.deque()
        self._held = 0  # bytes of the frames the queue holds
        self._wake = asyncio.Event()
        self._online = asyncio.Event()
        self._uploads = 0
        self._upload_slots = asyncio.Semaphore(UPLOADS_AT_ONCE)
        self._tasks = TaskSet(log)
        self._sender: asyncio.Task[None] | None = None
        self._told: set[tuple[int, str, str]] = set()  # problems logged once
        self._suppressing: set[tuple[int, int]] = set()  # rate-limited now (logged once)

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start delivering (call on the event loop, once)."""
        if self._sender is None:
            self._sender = self._tasks.spawn(self._send_loop(), "alarm-notify")

    def logged_in(self, _session: object = None) -> None:
        """The link's on_login hook: what waits goes now."""
        self._online.set()
        self._wake.set()

    async def close(self) -> None:
        for alarm in self._alarms.values():
            if alarm.end is not None:
                alarm.end.cancel()
        await self._tasks.cancel_all(2.0)
        if self.http is not None:
            await self.http.aclose()

    # --- settings -------------------------------------------------------------------------

    def settings(self, channel: int, kind: str) -> AlarmSettings | None:
        """The kind's settings on the channel now; None where the channel does not run it."""
        try:
            entry = self.document()["channels"][str(channel)]["alarms"][kind]
        except (KeyError, TypeError):
            return None
        regions = tuple(
            (float(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in entry.get("regions", ())
        )
        return AlarmSettings(
            on=bool(entry.get("on", False)),
            sensitivity=int(entry.get("sensitivity", 50)),
            hold=float(entry.get("hold", DEFAULT_HOLD)),
            regions=regions,
        )

    def config_changed(self) -> None:
        """The configuration document changed: an alarm whose kind is now off ends now."""
        for (channel, kind), alarm in list(self._alarms.items()):
            s = self.settings(channel, kind)
            if s is None or not s.armed:
                log.info("alarm %s ch%d: switched off, ending it", kind, channel)
                self._finish(alarm)

    # --- AlarmSink --------------------------------------------------------------------------

    def state(self, channel: int, kind: str, active: bool, at: float) -> None:
        self.stats.reports += 1
        spec = self._check(channel, kind, "state")
        if spec is None:
            return
        at = self._time(at)
        alarm = self._alarms.get((channel, kind))
        if active:
            settings = self.settings(channel, kind)
            if settings is None or not settings.armed:
                self.stats.ignored += 1
                return
            if alarm is not None:  # a re-trigger: the end is called off
                alarm.active = True
                if alarm.end is not None:
                    alarm.end.cancel()
                    alarm.end = None
                return
            announced = self._room(channel, spec, 2)
            alarm = self._alarms[(channel, kind)] = _Alarm(channel, spec, announced)
            if announced:
                self.channels.set_alarm(channel, flag(spec.type), True)
                notice = self._notice(channel, spec, "start", at, alarm)
                self._take_picture(notice)
                self._enqueue(notice)
                log.info("alarm %s ch%d: start", kind, channel)
            return
        if alarm is None or not alarm.active:
            return  # inactive without a running alarm: nothing to end
        alarm.active = False
        settings = self.settings(channel, kind)
        hold = settings.hold if settings is not None else DEFAULT_HOLD
        delay = max(0.0, at + hold - self.clock())
        alarm.end = asyncio.get_running_loop().call_later(delay, self._finish, alarm)

    def pulse(self, channel: int, kind: str, at: float) -> None:
        self.stats.reports += 1
        spec = self._check(channel, kind, "pulse")
        if spec is None:
            return
        settings = self.settings(channel, kind)
        if settings is None or not settings.armed:
            self.stats.ignored += 1
            return
        if not self._room(channel, spec, 1):
            return
        self.channels.add_pulse(channel, flag(spec.type))
        notice = self._notice(channel, spec, "pulse", self._time(at), None)
        self._take_picture(notice)
        self._enqueue(notice)
        log.info("alarm %s ch%d: pulse", kind, channel)

    # --- what a report becomes ------------------------------------------------------------

    def _check(self, channel: int, kind: str, how: str) -> AlarmKind | None:
        """The kind, if this report makes sense; else logged (once) and None."""
        spec = ALARM_KINDS.get(kind)
        problem = None
        if spec is None:
            problem = f"unknown alarm kind {kind!r}"[:80]
        elif spec.state != how:
            problem = f"{kind} is a {spec.state} alarm, reported as {how}"
        else:
            try:
                self.channels.get(channel)
            except NoSuchChannel:
                problem = f"no channel {channel}"
            else:
                if self.settings(channel, kind) is None:
                    problem = f"channel {channel} does not run {kind} detection"
        if problem is None:
            return spec
        self.stats.ignored += 1
        key = (channel, kind, problem)
        if key not in self._told and len(self._told) < 64:
            self._told.add(key)
            log.warning("alarm: report ignored: %s (a detector bug)", problem)
        return None

    def _time(self, at: float) -> float:
        now = self.clock()
        if not math.isfinite(at) or abs(at - now) > MAX_SKEW:
            return now
        return at

    def _room(self, channel: int, spec: AlarmKind, need: int) -> bool:
        """Whether ``need`` more notifications fit the type's rate limit on the channel
        (a start needs 2: itself and its end); counted when they do."""
        key = (channel, spec.type)
        sent = self._sent.setdefault(key, collections.deque())
        now = time.monotonic()
        while sent and now - sent[0] >= WINDOW:
            sent.popleft()
        if len(sent) + need > self.max_per_minute:
            self.stats.suppressed += 1
            if key not in self._suppressing:
                self._suppressing.add(key)
                log.warning(
                    "alarm %s ch%d: more than %d notifications a minute; holding back",
                    spec.kind, channel, self.max_per_minute,
                )  # fmt: skip
            return False
        self._suppressing.discard(key)
        sent.append(now)
        return True

    def _count_end(self, channel: int, spec: AlarmKind) -> None:
        self._sent.setdefault((channel, spec.type), collections.deque()).append(time.monotonic())

    def _finish(self, alarm: _Alarm) -> None:
        """The end of a state alarm (its hold ran out, or its kind was switched off)."""
        if alarm.end is not None:
            alarm.end.cancel()
            alarm.end = None
        if self._alarms.get((alarm.channel, alarm.kind.kind)) is not alarm:
            return
        del self._alarms[(alarm.channel, alarm.kind.kind)]
        if not alarm.announced:
            return
        self.channels.set_alarm(alarm.channel, flag(alarm.kind.type), False)
        self._count_end(alarm.channel, alarm.kind)
        self._enqueue(self._notice(alarm.channel, alarm.kind, "end", self.clock(), alarm))
        log.info("alarm %s ch%d: end", alarm.kind.kind, alarm.channel)

    def _notice(
        self, channel: int, spec: AlarmKind, state: str, at: float, alarm: _Alarm | None
    ) -> _Notice:
        params = AlarmNotifyParams(
            channel=channel,
            timestamp=math.floor(at),
            type=spec.type,
            state=state,  # type: ignore[arg-type]  # start, end or pulse
            desc=spec.desc,
        )
        return _Notice(params, alarm)

    def _take_picture(self, notice: _Notice) -> None:
        """The frame of this moment; if the camera is on but has not captured yet (a PIR
        woke it, or it is restarting), the upload takes its first frame instead."""
        media = self.media.get(notice.params.channel)
        if media is None or not media.enabled or not _pictured(notice.params.type):
            return
        notice.picture = media.latest_frame()
        notice.first_frame = notice.picture is None

    # --- the queue --------------------------------------------------------------------------

    def _enqueue(self, notice: _Notice) -> None:
        self._queue.append(notice)
        if notice.picture is not None:
            self._held += notice.picture.nbytes
        while len(self._queue) > self.queue_items:
            self._drop(self._queue[0], "the queue is full")
        self._release_pictures()
        self._wake.set()

    def _drop(self, notice: _Notice, why: str) -> None:
        """Drop a queued notification; a start takes its alarm's end along (and the alarm
        goes on unannounced: no bit, no end)."""
        self._forget(notice)
        self.stats.dropped += 1
        p = notice.params
        log.warning(
            "alarm: %s (type %d ch%d, %s) dropped: %s", p.state, p.type, p.channel,
            _when(p.timestamp), why,
        )  # fmt: skip
        alarm = notice.alarm
        if p.state == "start" and alarm is not None:
            alarm.announced = False
            self.channels.set_alarm(alarm.channel, flag(alarm.kind.type), False)
            for other in list(self._queue):
                if other.alarm is alarm:
                    self._forget(other)
                    self.stats.dropped += 1

    def _forget(self, notice: _Notice) -> None:
        try:
            self._queue.remove(notice)
        except ValueError:
            return
        self._let_go(notice)

    def _let_go(self, notice: _Notice) -> None:
        if notice.picture is not None:
            self._held -= notice.picture.nbytes
            notice.picture = None

    def _release_pictures(self) -> None:
        """Keep the held frames within their byte bound: the oldest go first."""
        for notice in self._queue:
            if self._held <= self.picture_bytes:
                return
            if notice.picture is not None:
                self._let_go(notice)
                self.stats.pictures_failed += 1

    async def _send_loop(self) -> None:
        """Send the queue, in order, one at a time, whenever the device is logged in."""
        while True:
            while not (self._queue and self._online.is_set()):
                self._wake.clear()
                await self._wake.wait()
            notice = self._queue.popleft()  # in flight: the queue's bound is the others'
            try:
                resp = await self.link.call(notice.params)
            except DeadLinkError:
                self._online.clear()  # back at the head, for the next login
                self._queue.appendleft(notice)
                while len(self._queue) > self.queue_items:
                    self._drop(self._queue[0], "the queue is full")
                continue
            except (RpcRefused, BadReply) as exc:
                self._queue.appendleft(notice)
                self._drop(notice, f"the platform answered {exc}")
                continue
            except Exception:  # a bug: this notification goes, the others still do
                log.exception("alarm: AlarmNotify failed")
                self._queue.appendleft(notice)
                self._drop(notice, "internal error")
                continue
            picture, notice.picture = notice.picture, None
            if picture is not None:
                self._held -= picture.nbytes
            self.stats.notifications += 1
            p = notice.params
            log.info(
                "AlarmNotify %s type %d ch%d at %s sent (%.0f ms after it was raised)",
                p.state, p.type, p.channel, _when(p.timestamp),
                (time.monotonic() - notice.queued_at) * 1000,
            )  # fmt: skip
            if resp.pic_upload_url:
                self._upload(notice, picture, resp.pic_upload_url)

    # --- pictures ---------------------------------------------------------------------------

    def _upload(self, notice: _Notice, picture: FrameRef | None, url: str) -> None:
        p = notice.params
        what = f"alarm picture (type {p.type} ch{p.channel} {p.state})"
        if p.state == "end" or not _pictured(p.type):
            log.info("%s: no picture goes with it; this URL is not used", what)
            return
        media = self.media.get(p.channel)
        if (picture is None and not notice.first_frame) or media is None or self.http is None:
            self.stats.pictures_failed += 1
            log.warning("%s: none to upload (no frame was kept at the alarm's start)", what)
            return
        if self._uploads >= MAX_UPLOADS:
            self.stats.pictures_failed += 1
            log.warning("%s: not uploaded, %d uploads already waiting", what, self._uploads)
            return
        self._uploads += 1
        self._tasks.spawn(self._put(what, media, picture, url), "alarm-picture")

    async def _put(
        self, what: str, media: MediaChannel, picture: FrameRef | None, url: str
    ) -> None:
        assert self.http is not None
        try:
            async with self._upload_slots:
                if picture is None:
                    picture = await media.first_frame(FIRST_FRAME_WAIT)
                if picture is None:
                    raise MediaError(f"no frame within {FIRST_FRAME_WAIT:g} s of the alarm")
                jpeg = await media.frame_jpeg(picture)
                await upload(self.http, url, jpeg, "image/jpeg")
        except UrlNotAllowed as exc:
            self.stats.pictures_failed += 1
            log.warning("%s refused, nothing sent: %s", what, exc)
        except UploadError as exc:
            self.stats.pictures_failed += 1
            log.warning("%s: upload failed: %s", what, exc)
        except MediaError as exc:
            self.stats.pictures_failed += 1
            log.warning("%s: none to upload: %s", what, exc)
        except Exception as exc:  # the encoder (a frame it cannot read)
            self.stats.pictures_failed += 1
            log.warning("%s: no JPEG: %s", what, exc)
        else:
            self.stats.pictures += 1
            log.info("%s: %d bytes uploaded to %s", what, len(jpeg), redact_url(url))
        finally:
            self._uploads -= 1

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For ``hss-pu status``."""
        return {
            "active": sorted(
                f"{kind}@ch{ch}" for (ch, kind), a in self._alarms.items() if a.announced
            ),
            "queued": len(self._queue),
            "online": self._online.is_set(),
            **{k: v for k, v in vars(self.stats).items()},
        }


_PICTURED = frozenset(k.type for k in ALARM_KINDS.values() if k.picture)


def _pictured(alarm_type: int) -> bool:
    """Whether a frame says something about the alarm (not about low battery)."""
    return alarm_type in _PICTURED


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
