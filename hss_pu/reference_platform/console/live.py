"""The console's live view: ``WS /console/api/live/{device}/{channel}`` relays the MPEG-TS
the platform receives over SRT to the browser in binary messages, unmodified (no
re-encoding: a player such as mpegts.js demuxes it in the page).

One push per (device, channel), shared by every viewer: the first viewer opens a receiver
and sends PushLive (stream id ``console-<device>-<channel>``); once the last one is gone,
StopLive follows after a grace period, so that a page reload does not restart the push.
A push this platform already receives on that channel (the embedded default's demo stream)
is shown as it is: neither replaced nor stopped.

Each viewer starts at the last key frame, PAT and PMT first (hss_pu.media.tsjoin), so its
player decodes at once, and has a queue bounded in bytes: one that falls behind is
dropped. The WebSocket closes with one of these codes, and a reason a person can read:

- 4400: bad request (the channel is not a number, the device id is malformed);
- 4404: the device is offline (and not asleep on the hibernation server, which would
  wake it), or went offline while watched;
- 4502: the device refused PushLive (its code and message follow) or did not answer;
- 4429: the viewer fell too far behind the live stream;
- 4410: the stream ended (no video for a long while, the receiver closed);
- 1011: the platform could not receive (srt-live-transmit would not start);
- 1001: the platform is shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from hss_pu.reference_platform.live import SUBSCRIBER_BACKLOG, LiveReceiver, LiveSubscriber

if TYPE_CHECKING:
    from hss_pu.reference_platform.server import ReferencePlatform

__all__ = [
    "CLOSE_BAD_REQUEST",
    "CLOSE_ENDED",
    "CLOSE_GOING_AWAY",
    "CLOSE_OFFLINE",
    "CLOSE_REFUSED",
    "CLOSE_SERVER_ERROR",
    "CLOSE_TOO_SLOW",
    "LIVE_HUB",
    "LiveHub",
    "LiveRefused",
    "Viewer",
    "add_routes",
]

log = logging.getLogger("hss_pu.platform.console.live")

CLOSE_GOING_AWAY = 1001
CLOSE_SERVER_ERROR = 1011
CLOSE_BAD_REQUEST = 4400
CLOSE_OFFLINE = 4404
CLOSE_ENDED = 4410
CLOSE_TOO_SLOW = 4429
CLOSE_REFUSED = 4502

GRACE = 5.0  # s a push outlives its last viewer (a page reload does not restart it)
STALL = 3.0  # s without video after which an offline device ends the view
DEAD = 20.0  # s without video after which the view ends even if the device is online
PUSH_TIMEOUT = 20.0  # s for the device's answer to PushLive (it connects first: up to 8 s)
STOP_TIMEOUT = 5.0  # s for its answer to StopLive
FRESH = 3.0  # s: a receiver that got bytes this recently is a live push, to share
HEARTBEAT = 20.0  # s between WebSocket pings: a browser that vanished is noticed
CLOSE_WAIT = 2.0  # s for the close handshake before the connection is cut
# The kernel's send buffer for a viewer: autotuned, it grows to 4 MB (16 s of a 2 Mbit/s
# stream) before a viewer that falls behind shows in our queue. 512 KiB still carries
# 20 Mbit/s at 200 ms of round trip.
SEND_BUFFER = 512 << 10
MAX_REASON = 123  # bytes of a WebSocket close reason (RFC 6455 5.5: 125 minus the code)
MAX_DEVICE_ID = 128


class LiveRefused(Exception):
    """No live view: the WebSocket close code and reason that say why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(eq=False)
class _Push:
    """One (device, channel) being shown, and its viewers."""

    device: str
    channel: int
    stream_id: str
    owned: bool = True  # ours to stop (False: someone else's push, shared)
    rx: LiveReceiver | None = None
    ready: asyncio.Task[None] | None = None  # opening: receiver + PushLive
    viewers: set[LiveSubscriber] = field(default_factory=set)
    joining: int = 0  # viewers waiting for ``ready``
    linger: asyncio.TimerHandle | None = None  # the grace after the last viewer
    ending: asyncio.Task[None] | None = None
    end_code: int = CLOSE_ENDED
    end_reason: str = ""
    watchdog: asyncio.Task[None] | None = None
    since: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, eq=False)
class Viewer:
    """One WebSocket's share of a push: read TS bytes from ``sub``."""

    sub: LiveSubscriber
    push: _Push

    def close_reason(self) -> tuple[int, str]:
        """Why its bytes stopped (once ``sub`` is closed)."""
        if self.sub.dropped:
            return CLOSE_TOO_SLOW, f"viewer too slow: {self.sub.reason}"
        if self.push.ending is not None:
            return self.push.end_code, self.push.end_reason
        return CLOSE_ENDED, f"the live stream ended ({self.sub.reason})"


class LiveHub:
    """The pushes the console shows and their viewers (one per application)."""

    def __init__(
        self,
        platform: ReferencePlatform,
        *,
        grace: float = GRACE,
        backlog: int = SUBSCRIBER_BACKLOG,
        stall: float = STALL,
        dead: float = DEAD,
        push_timeout: float = PUSH_TIMEOUT,
        send_buffer: int = SEND_BUFFER,
    ) -> None:
        self.platform = platform
        self.send_buffer = send_buffer
        self.grace = grace
        self.backlog = backlog
        self.stall = stall
        self.dead = max(dead, stall)
        self.push_timeout = push_timeout
        self.dropped = 0  # viewers dropped for falling behind
        self.last_dropped: LiveSubscriber | None = None
        self._pushes: dict[tuple[str, int], _Push] = {}
        self._closed = False

    @staticmethod
    def stream_id(device: str, channel: int) -> str:
        return f"console-{device}-{channel}"

    def active(self) -> list[dict[str, Any]]:
        """The pushes being shown (or starting, or lingering)."""
        return [
            {"device": p.device, "channel": p.channel, "stream_id": p.stream_id,
             "viewers": len(p.viewers), "owned": p.owned}
            for p in self._pushes.values()
        ]  # fmt: skip

    async def join(self, device: str, channel: int) -> Viewer:
        """A new viewer of the device's channel: the push is started if it is not there
        yet (a concurrent first viewer waits for the same one). LiveRefused: no view."""
        key = (device, channel)
        while True:
            if self._closed:
                raise LiveRefused(CLOSE_GOING_AWAY, "the platform is shutting down")
            push = self._pushes.get(key)
            if push is None:
                if not self._reachable(device):
                    raise LiveRefused(CLOSE_OFFLINE, f"device {device} is offline")
                push = _Push(device, channel, self.stream_id(device, channel))
                self._pushes[key] = push
                push.ready = asyncio.create_task(self._open(push), name=f"live-{push.stream_id}")
                push.ready.add_done_callback(_retrieve)
                break
            if push.ending is None:
                break
            # Ending (its StopLive under way): a new push only once it is gone, or the
            # old StopLive could reach the device after the new PushLive.
            await asyncio.shield(push.ending)
        if push.linger is not None:
            push.linger.cancel()
            push.linger = None
        push.joining += 1
        try:
            assert push.ready is not None
            try:
                await asyncio.shield(push.ready)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if push.ready.cancelled() and not (task and task.cancelling()):
                    # Opening was abandoned (the hub is closing): a refusal, not our cancel.
                    raise LiveRefused(push.end_code, push.end_reason) from None
                raise
            if push.ending is not None:
                raise LiveRefused(push.end_code, push.end_reason)
            assert push.rx is not None
            try:
                sub = push.rx.subscribe(self.backlog)
            except RuntimeError:
                raise LiveRefused(CLOSE_ENDED, "the live stream ended") from None
            push.viewers.add(sub)
        finally:
            push.joining -= 1
            self._idle(push)
        log.info("live %s: %d viewer(s)", push.stream_id, len(push.viewers))
        return Viewer(sub, push)

    def leave(self, viewer: Viewer) -> None:
        push, sub = viewer.push, viewer.sub
        if sub.dropped and sub is not self.last_dropped:
            self.dropped += 1
            self.last_dropped = sub
        sub.close("viewer left")
        push.viewers.discard(sub)
        log.info("live %s: %d viewer(s)", push.stream_id, len(push.viewers))
        self._idle(push)

    async def close(self) -> None:
        """End every push (StopLive for ours) and refuse new viewers."""
        self._closed = True
        for push in list(self._pushes.values()):
            self._end(push, CLOSE_GOING_AWAY, "the platform is shutting down")
        endings = [p.ending for p in self._pushes.values() if p.ending is not None]
        if endings:
            await asyncio.wait(endings)

    # --- a push's life ----------------------------------------------------------------

    def _reachable(self, device: str) -> bool:
        """Online, or asleep where PushLive wakes it (ReferencePlatform.call)."""
        hib = self.platform.hibernation
        return self.platform.online(device) or (hib is not None and hib.is_sleeping(device))

    def _current(self, push: _Push) -> bool:
        return self._pushes.get((push.device, push.channel)) is push

    def _idle(self, push: _Push) -> None:
        """No viewer left: stop after the grace (unless one comes back)."""
        if (
            not self._current(push)
            or push.ending is not None
            or push.viewers
            or push.joining
            or push.linger is not None
        ):
            return
        push.linger = asyncio.get_running_loop().call_later(self.grace, self._expire, push)

    def _expire(self, push: _Push) -> None:
        push.linger = None
        if not push.viewers and not push.joining:
            self._end(push, CLOSE_ENDED, "no viewers left")

    def _end(self, push: _Push, code: int, reason: str) -> None:
        if push.ending is not None:
            return
        push.end_code, push.end_reason = code, reason
        if push.linger is not None:
            push.linger.cancel()
            push.linger = None
        push.ending = asyncio.create_task(self._stop(push), name=f"live-stop-{push.stream_id}")
        push.ending.add_done_callback(_retrieve)

    async def _open(self, push: _Push) -> None:
        shared = self._shared_receiver(push.device, push.channel)
        if shared is not None:
            push.owned, push.rx, push.stream_id = False, shared, shared.stream_id
            log.info("live %s/%d: showing %s", push.device, push.channel, shared.stream_id)
        else:
            try:
                await self._push_live(push)
            except BaseException as exc:
                if isinstance(exc, LiveRefused):
                    push.end_code, push.end_reason = exc.code, exc.reason
                log.info("live %s: no view (%s)", push.stream_id, exc)
                if self._current(push):
                    del self._pushes[(push.device, push.channel)]
                raise
        push.watchdog = asyncio.create_task(self._watch(push), name=f"live-watch-{push.stream_id}")
        push.watchdog.add_done_callback(_retrieve)

    async def _push_live(self, push: _Push) -> None:
        """open_live + PushLive; on any failure, nothing is left listening."""
        try:
            push.rx = await self.platform.open_live(push.stream_id)
        except (RuntimeError, OSError) as exc:
            if self._closed or self.platform.closing:
                raise LiveRefused(CLOSE_GOING_AWAY, "the platform is shutting down") from None
            log.warning("live %s: cannot receive: %s", push.stream_id, exc)
            raise LiveRefused(CLOSE_SERVER_ERROR, f"the platform cannot receive: {exc}") from None
        params = {"channel": push.channel, "url": push.rx.url, "stream_id": push.stream_id,
                  "max_bitrate": 0}  # fmt: skip
        try:
            try:
                reply = await self.platform.call(
                    push.device, "PushLive", params, timeout=self.push_timeout
                )
            except (LookupError, ConnectionError):
                raise LiveRefused(CLOSE_OFFLINE, f"device {push.device} is offline") from None
            except TimeoutError:
                await self._stop_live(push)  # it may have started all the same
                raise LiveRefused(
                    CLOSE_REFUSED, f"device {push.device} did not answer PushLive"
                ) from None
            if reply.err is not None:
                raise LiveRefused(
                    CLOSE_REFUSED, f"PushLive refused: {reply.err.code} {reply.err.msg}"
                )
        except BaseException:
            await self.platform.close_live(push.stream_id, push.rx)
            raise
        log.info("live %s: pushing to %s", push.stream_id, push.rx.url)

    def _shared_receiver(self, device: str, channel: int) -> LiveReceiver | None:
        """A receiver of this platform the device is pushing that channel to now (its
        Keepalive names the stream, and bytes arrive), if any."""
        ka = self.platform.last_keepalive(device) or {}
        channels = ka.get("channels")
        for ch in channels if isinstance(channels, list) else []:
            if not isinstance(ch, dict) or ch.get("channel") != channel:
                continue
            sid = ch.get("stream_id")
            if not isinstance(sid, str) or sid == self.stream_id(device, channel):
                return None
            rx = self.platform.receivers.get(sid)
            if (
                rx is not None
                and not rx.closed
                and rx.last_data is not None
                and time.monotonic() - rx.last_data < FRESH
            ):
                return rx
        return None

    async def _watch(self, push: _Push) -> None:
        """End the view when the receiver closes, or video stops (soon if the device is
        offline: it will not come back by itself)."""
        rx = push.rx
        assert rx is not None
        period = min(1.0, self.stall / 2)
        while True:
            await asyncio.sleep(period)
            if rx.closed:
                self._end(push, CLOSE_ENDED, f"the live receiver {rx.stream_id} closed")
                return
            quiet = time.monotonic() - max(rx.last_data or 0.0, push.since)
            if quiet >= self.stall and not self.platform.online(push.device):
                self._end(push, CLOSE_OFFLINE, f"device {push.device} went offline")
                return
            if quiet >= self.dead:
                self._end(push, CLOSE_ENDED, f"no video from {push.device} for {quiet:.0f} s")
                return

    async def _stop(self, push: _Push) -> None:
        try:
            for sub in list(push.viewers):
                sub.close(push.end_reason)
            if push.watchdog is not None and push.watchdog is not asyncio.current_task():
                push.watchdog.cancel()
            if push.ready is not None and not push.ready.done():
                push.ready.cancel()
                await asyncio.wait([push.ready])
            opened = push.ready is not None and (
                push.ready.cancelled() or push.ready.exception() is None
            )
            if push.owned and push.rx is not None and opened:
                await self._stop_live(push)
                await self.platform.close_live(push.stream_id, push.rx)
            log.info("live %s: ended (%s)", push.stream_id, push.end_reason)
        finally:
            if self._current(push):
                del self._pushes[(push.device, push.channel)]

    async def _stop_live(self, push: _Push) -> None:
        params = {"stream_id": push.stream_id, "channel": push.channel}
        try:
            reply = await self.platform.call(push.device, "StopLive", params, timeout=STOP_TIMEOUT)
        except (LookupError, ConnectionError, TimeoutError) as exc:
            log.info("live %s: StopLive not sent (%s)", push.stream_id, exc or type(exc).__name__)
            return
        if reply.err is not None:
            log.warning("live %s: StopLive refused: %s", push.stream_id, reply.err.msg)


def _retrieve(task: asyncio.Task[None]) -> None:
    """A failure is reported to whoever awaits the task; none left means nobody cares."""
    if not task.cancelled():
        task.exception()


# --- the WebSocket ------------------------------------------------------------------------

LIVE_HUB = web.AppKey("live_hub", LiveHub)


def add_routes(
    app: web.Application, platform: ReferencePlatform, hub: LiveHub | None = None
) -> None:
    """``WS /console/api/live/{device}/{channel}``, and the hub that ends every push when
    the application shuts down."""
    app[LIVE_HUB] = hub or LiveHub(platform)
    app.router.add_get("/console/api/live/{device}/{channel}", _live)
    app.on_shutdown.append(_shutdown)


async def _shutdown(app: web.Application) -> None:
    await app[LIVE_HUB].close()


async def _live(request: web.Request) -> web.StreamResponse:
    hub = request.app[LIVE_HUB]
    ws = web.WebSocketResponse(
        compress=False, heartbeat=HEARTBEAT, timeout=CLOSE_WAIT, max_msg_size=1 << 16
    )
    if not ws.can_prepare(request).ok:
        return web.json_response({"info": "a WebSocket endpoint: live MPEG-TS"}, status=400)
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, hub.send_buffer)
    await ws.prepare(request)
    device = request.match_info["device"]
    text = request.match_info["channel"]
    if not text.isdigit() or len(text) > 3:
        await _close(ws, request, CLOSE_BAD_REQUEST, f"bad channel {text[:16]!r}")
        return ws
    if len(device) > MAX_DEVICE_ID or not device.isprintable():
        await _close(ws, request, CLOSE_BAD_REQUEST, "bad device id")
        return ws
    try:
        viewer = await hub.join(device, int(text))
    except LiveRefused as exc:
        await _close(ws, request, exc.code, exc.reason)
        return ws
    try:
        code, reason, slow = await _serve(ws, viewer)
    finally:
        hub.leave(viewer)
    await _close(ws, request, code, reason, abort=slow)
    return ws


async def _serve(ws: web.WebSocketResponse, viewer: Viewer) -> tuple[int, str, bool]:
    """Send the viewer's bytes until it closes, falls behind or the stream ends: the close
    code and reason, and whether the connection is to be cut (its buffers are full)."""
    sub = viewer.sub
    pump = asyncio.create_task(_pump(ws, sub))
    client = asyncio.create_task(_ignore_input(ws))
    ended = asyncio.create_task(sub.ended.wait())
    tasks = {pump, client, ended}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
    if sub.closed:
        code, reason = viewer.close_reason()
        return code, reason, sub.dropped
    return 1000, "", False  # the client closed or went away


async def _pump(ws: web.WebSocketResponse, sub: LiveSubscriber) -> None:
    while data := await sub.read():
        await ws.send_bytes(data)


async def _ignore_input(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends, until it closes."""
    async for msg in ws:
        if msg.type == WSMsgType.ERROR:
            return


async def _close(
    ws: web.WebSocketResponse, request: web.Request, code: int, reason: str, *, abort: bool = False
) -> None:
    """Close with ``code`` and ``reason`` (cut to what a close frame holds); ``abort``: a
    viewer whose buffers are full gets a moment for the close frame, then the connection
    is cut (asyncio would otherwise keep it until the buffers drain, if ever)."""
    message = reason.encode()[:MAX_REASON].decode(errors="ignore").encode()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(CLOSE_WAIT):
            await ws.close(code=code, message=message, drain=not abort)
    if abort and request.transport is not None:
        request.transport.abort()
