"""Power: when a battery device sleeps, and what wakes it (wire-notes "Power";
docs/protocol.md "Hibernation").

A battery device (profile ``battery.present``) with nothing to do for
``power.idle_sleep_seconds`` hibernates: Vd closes (the link holds its loop), capture
and encoding stop (and the pre-record rings are emptied), and one TCP connection to the
hibernation server carries a heartbeat every 60 s. ``TOWAKEUP`` on that connection, or
an alarm from a local sensor (PIR, bell...), wakes it: the cameras start again and the
link logs in with ``reconnect=1``; the alarm, queued meanwhile by the alarm service, goes
after that login.

"Nothing to do" is decided by :func:`awake_reasons` from :class:`PowerFacts` (pure, so
the rules are tested on their own); :class:`IdleTimer` counts the quiet time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from hss_pu.clients.hibernation import HibernationClient
from hss_pu.config import Config
from hss_pu.errors import NoSuchChannel
from hss_pu.services.channels import ChannelRegistry
from hss_pu.services.interfaces import AlarmSink
from hss_pu.wire.alarms import ALARM_KINDS, flag
from hss_pu.wire.hibernation import field_problem
from hss_pu.wire.vd import GetServerInfoResp

__all__ = [
    "HibernationService",
    "IdleTimer",
    "PowerFacts",
    "Verdict",
    "WakingSink",
    "awake_reasons",
    "keep_awake_left",
]

log = logging.getLogger("hss_pu.power")

POLL = 0.25  # s: how often an awake battery device looks whether it is idle
# A sleeping device whose heartbeats have not gone out for this many intervals (135 s at
# the 60 s of wire-notes: when the server counts it offline) wakes and returns to Vd:
# asleep without the connection, nobody could reach it.
UNREACHABLE_INTERVALS = 2.25
WAKE_REASONS_KEPT = 16  # distinct wake reasons counted in status

State = Literal["awake", "asleep", "waking"]


@dataclass(frozen=True, slots=True)
class PowerFacts:
    """What the sleep decision reads, gathered at one moment."""

    battery: bool  # profile battery.present
    device_id: str
    online: bool  # logged in to Vd
    server_info: GetServerInfoResp | None  # this session's reply; None: not answered yet
    hibernation: tuple[str, int] | str | None  # the address, or why it is unusable
    busy: tuple[str, ...] = ()  # live pushes, recordings, KeepAwaken, alarms


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why the device stays awake (empty: it may sleep); ``blocked``: a reason that will
    not pass by itself (no battery, no hibernation address...), logged once."""

    reasons: tuple[str, ...]
    blocked: str | None = None


def awake_reasons(f: PowerFacts) -> Verdict:
    """The idle rules of wire-notes "Power": what stops the device from sleeping at all
    (first, in the order a person would check them), then the work it is doing."""
    blocked = _blocked(f)
    waiting = None
    if blocked is None:
        if not f.online:
            waiting = "not logged in to Vd"
        elif f.server_info is None:
            waiting = "GetServerInfo not answered yet"
    first = blocked or waiting
    return Verdict(((first,) if first else ()) + f.busy, blocked)


def _blocked(f: PowerFacts) -> str | None:
    if not f.battery:
        return "not a battery device (profile battery.present = false)"
    problem = field_problem(f.device_id, "device id")
    if problem is not None:
        return f"cannot hibernate: {problem}"
    if not f.online or f.server_info is None:
        return None  # not known until the next GetServerInfo
    if f.hibernation is None:
        return "GetServerInfo has no hibernation address"
    if isinstance(f.hibernation, str):
        return f"GetServerInfo hibernation address unusable: {f.hibernation}"
    problem = field_problem(f.server_info.hb_token or "", "hb_token")
    if problem is not None:
        return f"cannot hibernate: {problem}"
    return None


class IdleTimer:
    """How long the device has had nothing to do; due after ``idle_seconds`` of it."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.since: float | None = None

    def step(self, now: float, verdict: Verdict) -> bool:
        """Feed the verdict at ``now`` (monotonic); True when it is time to sleep."""
        if verdict.reasons:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.idle_seconds

    def idle_for(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since

    def reset(self) -> None:
        self.since = None


def keep_awake_left(channels: ChannelRegistry) -> float:
    """Seconds left of the latest KeepAwaken window on any channel (0 when none)."""
    return max(channels.awake_until() - time.monotonic(), 0.0)


def busy_reasons(
    channels: ChannelRegistry, alarms_queued: int, others: Iterable[str] = ()
) -> tuple[str, ...]:
    """The work that keeps a device awake: live pushes, recordings, a KeepAwaken window,
    an active alarm (or a pulse not yet reported), alarms waiting to be sent."""
    out: list[str] = []
    for c in channels:
        if c.stream_id:
            out.append(f"live push on ch{c.channel}")
        if c.record_session:
            out.append(f"recording on ch{c.channel}")
        if c.alarms or c.pulses:
            out.append(f"alarm active on ch{c.channel}")
    left = keep_awake_left(channels)
    if left > 0:
        out.append(f"KeepAwaken for {left:.0f} s more")
    if alarms_queued:
        out.append(f"{alarms_queued} alarm notification(s) to send")
    out.extend(others)
    return tuple(out)


class Link(Protocol):
    """What the service needs of the platform link (services.link.PlatformLink)."""

    @property
    def session(self) -> object | None: ...
    @property
    def server_info(self) -> GetServerInfoResp | None: ...
    @property
    def hibernation(self) -> tuple[str, int] | str | None: ...

    async def hibernate(self) -> None: ...
    def wake(self) -> None: ...


class HibernationService:
    def __init__(
        self,
        config: Config,
        link: Link,
        channels: ChannelRegistry,
        *,
        suspend: Callable[[], Awaitable[None]],
        resume: Callable[[], Awaitable[None]],
        alarms_queued: Callable[[], int] = lambda: 0,
        # The daemon's other work under way (a playback, a log upload, a format, a PTZ
        # move): each a reason to stay awake, as the daemon names it.
        activities: Callable[[], list[str]] = list,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.link = link
        self.channels = channels
        self.suspend = suspend
        self.resume = resume
        self.alarms_queued = alarms_queued
        self.activities = activities
        self.rng = rng
        self.battery = config.profile.doc.battery.present
        self.timer = IdleTimer(config.doc.power.idle_sleep_seconds)
        self.state: State = "awake"
        self.sleeps = 0
        self.wakes: collections.Counter[str] = collections.Counter()
        self.last_wake: dict[str, Any] | None = None
        self.client: HibernationClient | None = None
        self._wake = asyncio.Event()
        self._wake_reason = ""
        self._told: str | None = None  # the blocked reason last logged

    # --- the rules, on live state --------------------------------------------------------

    def facts(self) -> PowerFacts:
        link = self.link
        return PowerFacts(
            battery=self.battery,
            device_id=self.config.device.id,
            online=link.session is not None,
            server_info=link.server_info,
            hibernation=link.hibernation,
            busy=busy_reasons(self.channels, self.alarms_queued(), self.activities()),
        )

    def verdict(self) -> Verdict:
        v = awake_reasons(self.facts())
        if v.blocked is not None and v.blocked != self._told:
            self._told = v.blocked
            log.info("power: staying awake: %s", v.blocked)
        return v

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        if not self.battery:
            self.verdict()  # logs why, once
            await asyncio.Event().wait()  # mains powered: nothing to decide, ever
        while True:
            if self.timer.step(time.monotonic(), self.verdict()):
                await self._sleep()
            await asyncio.sleep(POLL)

    def trigger(self, why: str) -> None:
        """Wake now (a local sensor's alarm, TOWAKEUP); nothing when awake."""
        if self.state == "asleep" and not self._wake.is_set():
            self._wake_reason = why
            self._wake.set()

    async def _sleep(self) -> None:
        link = self.link
        address = link.hibernation
        assert isinstance(address, tuple), "the verdict checked it"
        host, port = address
        token = (link.server_info.hb_token if link.server_info else None) or ""
        p = self.config.doc.power
        client = HibernationClient(
            host, port, self.config.device.id, token,
            interval=p.heartbeat_seconds, backoff_scale=self.config.platform.backoff_scale,
            rng=self.rng,
        )  # fmt: skip
        self._wake.clear()
        self._wake_reason = ""
        self.state = "asleep"
        self.sleeps += 1
        self.client = client
        log.info(
            "power: idle for %g s: hibernating (Vd closed, cameras stopped, heartbeats to %s:%d)",
            self.timer.idle_seconds, host, port,
        )  # fmt: skip
        t0 = time.monotonic()
        await link.hibernate()
        await self.suspend()
        beats = asyncio.create_task(client.run(), name="hibernation")
        try:
            busy = busy_reasons(self.channels, self.alarms_queued(), self.activities())
            if busy:  # a request that came in as the session closed
                self.trigger(busy[0])
            waiter = asyncio.ensure_future(self._wake.wait())
            bound = UNREACHABLE_INTERVALS * p.heartbeat_seconds
            try:
                while not (beats.done() or self._wake.is_set()):
                    left = client.last_heartbeat + bound - time.monotonic()
                    if left <= 0:
                        log.warning(
                            "power: no heartbeat out for %.0f s (%s)",
                            bound,
                            client.stats.last_error,
                        )
                        self.trigger("hibernation server unreachable")
                        break
                    await asyncio.wait(
                        {beats, waiter}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
            finally:
                waiter.cancel()
            if beats.done() and not self._wake.is_set():
                beats.result()  # a bug in the client: the daemon's task handler sees it
                self._wake_reason = "TOWAKEUP"
        finally:  # on cancel (the daemon stops) too: the connection goes
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
        why = self._wake_reason
        self.state = "waking"
        log.info("power: waking (%s) after %.1f s asleep", why, time.monotonic() - t0)
        link.wake()  # the login first: it is what the platform waits for
        try:
            await self.resume()
        finally:
            self.state = "awake"
            self.timer.reset()
            if why in self.wakes or len(self.wakes) < WAKE_REASONS_KEPT:
                self.wakes[why] += 1
            self.last_wake = {"reason": why, "at": time.time()}

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For ``hss-pu status``: awake or asleep, and why it stays awake."""
        c = self.client
        out: dict[str, Any] = {
            "state": self.state,
            "battery": self.battery,
            "idle_sleep_seconds": self.timer.idle_seconds,
            "sleeps": self.sleeps,
            "wakes": dict(self.wakes),
            "last_wake": self.last_wake,
        }
        if self.state == "awake":
            out["why_awake"] = list(awake_reasons(self.facts()).reasons)
            out["idle_for"] = round(self.timer.idle_for(time.monotonic()), 1)
        if c is not None:
            out["hibernation"] = {
                "server": f"{c.host}:{c.port}",
                "connected": c.connected,
                **vars(c.stats),
            }
        return out


class WakingSink:
    """The sensors' AlarmSink while the device may sleep: reports go to the alarm
    service as ever, and one that raised an alarm (armed, not rate-limited: its Keepalive
    bit is set) wakes the device; the alarm service queues it until the login."""

    def __init__(self, sink: AlarmSink, channels: ChannelRegistry, wake: Callable[[str], None]):
        self.sink = sink
        self.channels = channels
        self.wake = wake

    def state(self, channel: int, kind: str, active: bool, at: float) -> None:
        self.sink.state(channel, kind, active, at)
        if active:
            self._raised(channel, kind)

    def pulse(self, channel: int, kind: str, at: float) -> None:
        self.sink.pulse(channel, kind, at)
        self._raised(channel, kind)

    def _raised(self, channel: int, kind: str) -> None:
        spec = ALARM_KINDS.get(kind)
        if spec is None:
            return
        try:
            ch = self.channels.get(channel)
        except NoSuchChannel:
            return
        if (ch.alarms | ch.pulses) & flag(spec.type):
            self.wake(f"{kind} alarm")
