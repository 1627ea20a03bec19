"""The platform's alarm recording policy: what a surveillance platform does on an alarm.

On a ``start`` (or a ``pulse``: the door bell) on a channel that is not recording for an
alarm yet, it sends ``StartRecord`` with ``prerecord_seconds`` (so the recording begins
before the alarm) to its own Vr; the channel records until every state alarm on it has
ended and the post-roll after the last end (or pulse) has passed, then ``StopRecord``.
Alarms that overlap on a channel extend that one recording instead of starting another;
each alarm remembers the recording's ``session_id``. The recording's ``cbk_url`` carries
``?session=<id>``, which Vr keeps with each segment, so a recording's segments are known
exactly (:meth:`ReferencePlatform.recording_segments`).

The requests to the device run in tasks, in order per channel (a StopRecord never
overtakes its StartRecord), never in the Vd session's own frame handler (which must go
on reading the replies). Safety nets: a recording whose alarm never ends (the ``end``
lost) is stopped after ``alarm_record_max_seconds``; a StopRecord that finds the device
offline is sent again when it is back (within the same bound), since a PU resumes its
sessions after a restart; an alarm queued by the device for longer than
``alarm_stale_seconds`` starts nothing (its video is gone). A low battery (type 8) is
not something to film: it records nothing (and on a battery camera recording would
only drain it further).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

if TYPE_CHECKING:
    from hss_pu.reference_platform.alarms import Alarm
    from hss_pu.reference_platform.options import PlatformOptions
    from hss_pu.reference_platform.ticker import Ticker
    from hss_pu.wire.vd import Reply

__all__ = ["NOT_RECORDED", "AlarmPolicy", "AlarmRecording", "RecordingState"]

NOT_RECORDED = frozenset({8})  # alarm types that start no recording: low battery

log = logging.getLogger("hss_pu.platform.policy")

RecordingState = Literal["starting", "recording", "stopping", "stopped", "failed"]

SEG_MAX_SIZE = 8 << 20
SEG_MAX_COUNT = 5
RETRY_PAUSE = 1.0  # seconds between StopRecord attempts that got no answer

Call = Callable[[str, str, Mapping[str, Any] | None, float | None], Awaitable["Reply"]]


@dataclass
class AlarmRecording:
    """One recording the policy started, and what became of it."""

    session_id: str
    device_id: str
    channel: int
    start_ts: float  # StartRecord's start_ts: platform clock when the first alarm came
    prerecord_seconds: int
    seg_duration: int
    alarms: list[int] = field(default_factory=list)  # Alarm.index of each alarm it covers
    state: RecordingState = "starting"
    error: str | None = None
    started_at: float | None = None  # StartRecord answered (platform clock)
    stop_at: float | None = None  # the planned stop; None while a state alarm is on
    stopped_at: float | None = None  # StopRecord answered (platform clock)

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "device": self.device_id,
            "channel": self.channel,
            "start_ts": self.start_ts,
            "prerecord_seconds": self.prerecord_seconds,
            "seg_duration": self.seg_duration,
            "alarms": list(self.alarms),
            "state": self.state,
            "error": self.error,
            "started_at": self.started_at,
            "stop_at": self.stop_at,
            "stopped_at": self.stopped_at,
        }


@dataclass(eq=False)
class _Channel:
    device_id: str
    channel: int
    active: set[int] = field(default_factory=set)  # state alarm types started, not ended
    rec: AlarmRecording | None = None  # the recording alarms on this channel extend
    deadline: float | None = None  # monotonic time of rec.stop_at
    max_deadline: float = 0.0  # monotonic: rec's start plus alarm_record_max_seconds
    timer: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the device requests, in order


class AlarmPolicy:
    """Alarms in, StartRecord / StopRecord out (see the module's docstring)."""

    def __init__(
        self,
        options: PlatformOptions,
        *,
        call: Call,
        wait_online: Callable[[str, float], Awaitable[None]],
        now: Callable[[], float],
        cbk_url: Callable[[int], str],
        ticker: Ticker,
    ) -> None:
        self.options = options
        self._call = call
        self._wait_online = wait_online
        self.now = now
        self._cbk_url = cbk_url
        self.ticker = ticker
        self._channels: dict[tuple[str, int], _Channel] = {}
        self._recordings: dict[str, collections.deque[AlarmRecording]] = {}
        self._by_session: dict[str, AlarmRecording] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._counter = itertools.count(1)
        self._closed = False

    # --- for tests and the admin API ------------------------------------------------------

    def recordings(self, device_id: str | None = None) -> list[AlarmRecording]:
        """Oldest first; the last ``alarm_keep`` per device."""
        if device_id is not None:
            return list(self._recordings.get(device_id, ()))
        every = [r for q in self._recordings.values() for r in q]
        return sorted(every, key=lambda r: r.start_ts)

    def recording(self, session_id: str) -> AlarmRecording | None:
        return self._by_session.get(session_id)

    async def wait_recording(
        self,
        device_id: str,
        *,
        channel: int | None = None,
        state: RecordingState | None = None,
        timeout: float = 10.0,
    ) -> AlarmRecording:
        def check() -> AlarmRecording | None:
            return next(
                (
                    r
                    for r in self._recordings.get(device_id, ())
                    if (channel is None or r.channel == channel)
                    and (state is None or r.state == state)
                ),
                None,
            )

        what = f"no alarm recording of {device_id} (channel {channel}, state {state})"
        found: AlarmRecording = await self.ticker.wait_for(check, timeout, what)
        return found

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # --- alarms in ------------------------------------------------------------------------

    def on_alarm(self, alarm: Alarm) -> None:
        """Decide at once (so the alarm knows its recording); the requests follow in tasks."""
        if self._closed:
            return
        key = (alarm.device_id, alarm.channel)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = _Channel(alarm.device_id, alarm.channel)
        o = self.options
        if alarm.type in NOT_RECORDED:
            return
        if alarm.state in ("start", "pulse"):
            age = self.now() - alarm.timestamp
            if age > o.alarm_stale_seconds:
                alarm.stale = True
                log.info(
                    "alarm %d (%s ch%d): %.0f s old when it came: no recording",
                    alarm.index,
                    alarm.device_id,
                    alarm.channel,
                    age,
                )
                return
            if alarm.state == "start":
                ch.active.add(alarm.type)
            if ch.rec is None:
                self._begin(ch)
            assert ch.rec is not None
            if ch.active:
                ch.deadline = None
            else:  # a pulse with no state alarm on: a post-roll from now, or later
                ch.deadline = max(ch.deadline or 0.0, time.monotonic() + o.alarm_post_roll)
        else:
            ch.active.discard(alarm.type)
            if ch.rec is not None and not ch.active:
                ch.deadline = max(ch.deadline or 0.0, time.monotonic() + o.alarm_post_roll)
        if ch.rec is None:
            return
        ch.rec.alarms.append(alarm.index)
        alarm.session_id = ch.rec.session_id
        ch.rec.stop_at = (
            None if ch.deadline is None else self.now() + (ch.deadline - time.monotonic())
        )
        self._arm(ch)
        self.ticker.notify()

    def _begin(self, ch: _Channel) -> None:
        o = self.options
        rec = AlarmRecording(
            session_id=f"alarm-{next(self._counter)}-{secrets.token_hex(3)}",
            device_id=ch.device_id,
            channel=ch.channel,
            start_ts=self.now(),
            prerecord_seconds=o.alarm_prerecord_seconds,
            seg_duration=o.alarm_seg_duration,
        )
        ch.rec = rec
        ch.max_deadline = time.monotonic() + o.alarm_record_max_seconds
        q = self._recordings.setdefault(ch.device_id, collections.deque())
        q.append(rec)
        self._by_session[rec.session_id] = rec
        while len(q) > o.alarm_keep:
            self._by_session.pop(q.popleft().session_id, None)
        self._spawn(self._start(ch, rec), f"alarm-start-{rec.session_id}")

    def _arm(self, ch: _Channel) -> None:
        """(Re)arm the channel's stop timer: the planned stop or the maximum length."""
        if ch.timer is not None:
            ch.timer.cancel()
            ch.timer = None
        if ch.rec is None:
            return
        at = ch.max_deadline if ch.deadline is None else min(ch.deadline, ch.max_deadline)
        ch.timer = self._spawn(self._timer(ch, ch.rec, at), f"alarm-timer-{ch.rec.session_id}")

    async def _timer(self, ch: _Channel, rec: AlarmRecording, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        if ch.rec is not rec:
            return
        if ch.deadline is None or ch.deadline > at:
            log.warning(
                "alarm recording %s (%s ch%d): alarms %s never ended; stopped after %g s",
                rec.session_id,
                ch.device_id,
                ch.channel,
                sorted(ch.active),
                self.options.alarm_record_max_seconds,
            )
        ch.rec, ch.deadline, ch.timer = None, None, None
        ch.active.clear()  # an end that never came must not hold the next recording open
        if rec.state in ("starting", "recording"):
            rec.state = "stopping"
        self.ticker.notify()
        self._spawn(self._stop(ch, rec), f"alarm-stop-{rec.session_id}")

    # --- requests out -----------------------------------------------------------------------

    async def _start(self, ch: _Channel, rec: AlarmRecording) -> None:
        params = {
            "session_id": rec.session_id,
            "channel": rec.channel,
            "max_bitrate": 0,
            "seg_duration": rec.seg_duration,
            "seg_max_size": SEG_MAX_SIZE,
            "seg_max_count": SEG_MAX_COUNT,
            "prerecord_seconds": rec.prerecord_seconds,
            "start_ts": rec.start_ts,
            "cbk_url": f"{self._cbk_url(rec.channel)}?{urlencode({'session': rec.session_id})}",
        }
        async with ch.lock:
            log.info(
                "alarm recording %s: StartRecord to %s ch%d (pre-record %d s)",
                rec.session_id,
                rec.device_id,
                rec.channel,
                rec.prerecord_seconds,
            )
            try:
                reply = await self._call(rec.device_id, "StartRecord", params, None)
            except (LookupError, TimeoutError, ConnectionError, RuntimeError) as exc:
                self._failed(ch, rec, f"StartRecord: {exc}")
                return
            if reply.err is not None:
                self._failed(ch, rec, f"StartRecord answered {reply.err.code}: {reply.err.msg}")
                return
            rec.started_at = self.now()
            if rec.state == "starting":
                rec.state = "recording"
            self.ticker.notify()

    def _failed(self, ch: _Channel, rec: AlarmRecording, why: str) -> None:
        log.warning(
            "alarm recording %s (%s ch%d): %s", rec.session_id, rec.device_id, rec.channel, why
        )
        rec.state, rec.error = "failed", why
        if ch.rec is rec:  # the next alarm tries again
            ch.rec, ch.deadline = None, None
            self._arm(ch)
        self.ticker.notify()

    async def _stop(self, ch: _Channel, rec: AlarmRecording) -> None:
        params = {"session_id": rec.session_id, "channel": rec.channel}
        give_up = time.monotonic() + self.options.alarm_record_max_seconds
        async with ch.lock:
            if rec.state == "failed":  # never started
                return
            while True:
                log.info(
                    "alarm recording %s: StopRecord to %s ch%d",
                    rec.session_id,
                    rec.device_id,
                    rec.channel,
                )
                try:
                    reply = await self._call(rec.device_id, "StopRecord", params, None)
                    break
                except (LookupError, TimeoutError, ConnectionError, RuntimeError) as exc:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        self._failed(ch, rec, f"StopRecord: {exc}")
                        return
                    log.info(
                        "alarm recording %s: StopRecord not answered (%s): again when "
                        "the device is back",
                        rec.session_id,
                        exc,
                    )
                    try:
                        await self._wait_online(rec.device_id, left)
                    except TimeoutError:
                        self._failed(ch, rec, f"StopRecord: {exc}")
                        return
                    await asyncio.sleep(RETRY_PAUSE if isinstance(exc, TimeoutError) else 0)
            if reply.err is not None:
                self._failed(ch, rec, f"StopRecord answered {reply.err.code}: {reply.err.msg}")
                return
            rec.state, rec.stopped_at = "stopped", self.now()
            self.ticker.notify()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("alarm policy task %s failed", task.get_name(), exc_info=task.exception())
