"""Vm: PushLive / StopLive — the channel's encoded stream as MPEG-TS over SRT.

Rules (wire-notes): PushLive with the stream_id already pushed on that channel succeeds
and leaves it alone; another stream_id replaces the push; max_bitrate 0 means no limit,
and a channel that cannot stay under it answers 11; StopLive succeeds either way. A push
is "wanted" from a successful PushLive until StopLive: while wanted it survives receiver
restarts and network loss, reconnecting per the 9.3.1.3 schedule, and Keepalive shows
its stream_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hss_pu.bridge import LoopBridge
from hss_pu.clients.http import UploadError, UrlGuard, UrlNotAllowed
from hss_pu.errors import ChannelOffline, DeviceFailure, InvalidParam
from hss_pu.media.channel import MediaChannel
from hss_pu.media.packets import EncodedPacket, KeyframeGate, StreamInfo
from hss_pu.media.tsmux import TsMuxer
from hss_pu.retry import retry_delay
from hss_pu.services.channels import ChannelRegistry, stream_for
from hss_pu.srt import (
    LIVE_PAYLOAD_SIZE,
    SrtError,
    SrtSender,
    SrtUrl,
    maxbw_for_bitrate,
    parse_srt_url,
)
from hss_pu.tasks import TaskSet
from hss_pu.wire.vd import PushLiveParams, StopLiveParams

__all__ = ["LivePush", "LiveService", "PushStats"]

log = logging.getLogger("hss_pu.live")

FIRST_CONNECT_TIMEOUT = 8.0  # inside the dispatcher's 15 s handler budget
# The shortest wait between two connection attempts, whatever the schedule and the scale
# say (9.3.1.3's first delays are uniform from 0): a refused connect never spins.
MIN_RETRY_DELAY = 0.05
MAXBW_FACTOR = 3  # absolute SRT MAXBW = 3 x the stream's bytes/s (field notes: 2-4x)
SEND_STALL_LIMIT = 200  # consecutive full-buffer messages before the link counts as dead
MESSAGE = LIVE_PAYLOAD_SIZE  # one SRT live message: 7 whole TS packets
# Null TS packets (PID 0x1FFF, ignored by every demuxer) sent after the last real data:
# SRT learns of a lost packet only from the ones after it, so without a tail the last
# packets of a stream could not be recovered.
NULL_MESSAGE = (b"\x47\x1f\xff\x10" + b"\xff" * 184) * 7
TAIL_MESSAGES = 3
# Before the stream, ~0.3 s of null packets. libsrt 1.5.1's receiver repeats its first loss
# report only ~300 ms after the first loss of a connection: a loss in that first episode
# whose retransmission is lost too misses a 200 ms latency. A loss among these null
# packets spends that episode on padding instead of video. Costs 0.3 s of start-up.
WARMUP_MESSAGES, WARMUP_SPACING = 10, 0.03


class _LinkStalled(Exception):
    """The receiver stopped taking data although SRT has not noticed yet."""


@dataclass
class PushStats:
    connects: int = 0
    messages: int = 0
    bytes: int = 0
    dropped_messages: int = 0  # send buffer full
    dropped_gops: int = 0  # skipped to the next key frame after a full send buffer
    last_error: str = ""


class _LiveSink:
    """One connection's muxer and sends, run on the channel's capture thread.

    Sends never block (libsrt's send buffer is this consumer's bounded queue): when it is
    full the message is dropped and the sink waits for the next key frame, so the receiver
    only ever gets whole GOPs. A broken connection is reported once through ``on_broken``
    (thread-safe); the event loop then detaches the sink and reconnects.
    """

    def __init__(
        self,
        sender: SrtSender,
        stats: PushStats,
        on_broken: Callable[[BaseException], object],
    ) -> None:
        self._sender = sender
        self._stats = stats
        self._on_broken = on_broken
        self._lock = threading.Lock()  # close() on the loop vs a call on the capture thread
        self._mux: TsMuxer | None = None
        self._mux_audio = False
        self._out: list[bytes] = []
        self._gate = KeyframeGate()  # every connection starts a fresh TS at a key frame
        self._stalled = 0
        self._dead = False

    def on_packet(self, pkt: EncodedPacket, video: StreamInfo, audio: StreamInfo | None) -> None:
        with self._lock:
            if self._dead:
                return
            if self._mux is not None and (audio is not None) != self._mux_audio:
                # The camera restarted with (or without) sound: a new TS from its first
                # key frame, since a TS cannot add or drop a track. (A new size or bitrate
                # needs nothing: SPS/PPS travel with every key frame.)
                self._mux.close()
                self._mux = None
                self._gate.reset()
            if not self._gate.admit(pkt):
                return
            if self._mux is None:
                self._mux = TsMuxer(video, audio, self._out.append, message_size=None)
                self._mux_audio = audio is not None
            self._mux.mux(pkt)

    def on_flush(self) -> None:
        # A frame and its audio are muxed: send them in full messages (the muxer ends each
        # packet's output with a short one, and every SRT packet costs the same to pace).
        with self._lock:
            if not self._dead and self._out:
                self._send_out()

    def _send_out(self) -> None:
        out = self._out
        data = b"".join(out)  # (one item: returned as is, and so is a slice of all of it)
        out[:] = [data[i : i + MESSAGE] for i in range(0, len(data), MESSAGE)]
        st = self._stats
        try:
            for msg in out:
                if self._sender.send_nowait(msg):
                    self._stalled = 0
                    st.messages += 1
                    st.bytes += len(msg)
                    continue
                # A full send buffer: the peer is gone or far too slow.
                st.dropped_messages += 1
                self._stalled += 1
                if self._stalled >= SEND_STALL_LIMIT:
                    raise _LinkStalled(f"send buffer full for {self._stalled} messages")
                if self._gate.reset():
                    st.dropped_gops += 1
                break
        except (SrtError, _LinkStalled) as exc:
            self._dead = True
            self._on_broken(exc)
        finally:
            out.clear()

    def close(self) -> None:
        """Flush what the muxer holds and the null tail (call after detaching)."""
        with self._lock:
            mux, self._mux = self._mux, None
            if mux is not None:
                with contextlib.suppress(Exception):
                    mux.close()
            if not self._dead and self._out:
                self._send_out()  # the muxer's last bytes
            self._out.clear()
            if not self._dead:
                with contextlib.suppress(SrtError):
                    for _ in range(TAIL_MESSAGES):
                        self._sender.send_nowait(NULL_MESSAGE)
            self._dead = True


class LivePush:
    """One wanted push: the channel's packets, muxed to TS, sent over SRT; reconnects."""

    def __init__(
        self,
        media: MediaChannel,
        url: SrtUrl,
        stream_id: str,
        *,
        backoff_scale: float,
        rng: random.Random | None,
    ) -> None:
        self.media = media
        self.url = url
        self.stream_id = stream_id
        self.backoff_scale = backoff_scale
        self.rng = rng
        self.stats = PushStats()
        self.sender: SrtSender | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks = TaskSet(log)
        self.connected = asyncio.Event()

    @property
    def maxbw(self) -> int:
        return maxbw_for_bitrate(self.media.settings.bitrate, MAXBW_FACTOR)

    async def _connect(self) -> SrtSender:
        sender = await SrtSender.connect(self.url, maxbw=self.maxbw)
        self.stats.connects += 1
        return sender

    async def start(self) -> None:
        """Connect once (so PushLive can answer truthfully), then keep pushing."""
        self.sender = await asyncio.wait_for(self._connect(), FIRST_CONNECT_TIMEOUT)
        # Through a TaskSet: kept referenced, and a failure is logged when it happens.
        self._task = self._tasks.spawn(self._run(), f"live-{self.stream_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close_sender()

    async def _close_sender(self) -> None:
        s, self.sender = self.sender, None
        self.connected.clear()
        if s is not None:
            with contextlib.suppress(Exception):
                await s.close()

    async def _run(self) -> None:
        failures = 0
        while True:
            if self.sender is None:
                try:
                    self.sender = await self._connect()
                except (SrtError, TimeoutError, OSError) as exc:
                    failures += 1
                    self.stats.last_error = str(exc)
                    delay = self._delay(failures)
                    log.warning(
                        "live %s: reconnect failed (%s); retry in %.1f s",
                        self.stream_id,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                log.info("live %s: reconnected to %s", self.stream_id, self.url.redacted())
            failures = 0
            try:
                await self._pump(self.sender)
            except (SrtError, _LinkStalled) as exc:
                self.stats.last_error = str(exc)
                log.warning("live %s: connection lost (%s)", self.stream_id, exc)
            await self._close_sender()
            failures = 1
            await asyncio.sleep(self._delay(failures))

    def _delay(self, failures: int) -> float:
        return max(MIN_RETRY_DELAY, retry_delay(failures, self.backoff_scale, self.rng))

    def retune(self) -> None:
        """The channel's bitrate changed: pace the connection for the new one."""
        sender = self.sender
        if sender is None:
            return
        try:
            sender.set_maxbw(self.maxbw)
        except SrtError as exc:  # a broken connection: the push loop reconnects anyway
            log.info("live %s: cannot change MAXBW (%s)", self.stream_id, exc)

    async def _pump(self, sender: SrtSender) -> None:
        """Hand the connection to a capture-thread sink until it breaks (or we stop)."""
        for _ in range(WARMUP_MESSAGES):
            sender.send_nowait(NULL_MESSAGE)
            await asyncio.sleep(WARMUP_SPACING)
        bridge = LoopBridge()
        broken: asyncio.Future[BaseException] = bridge.loop.create_future()
        # The sink reports from the capture thread; once, but a repeat would be harmless.
        sink = _LiveSink(sender, self.stats, functools.partial(bridge.set_result, broken))
        hub = self.media.hub
        hub.attach(sink)
        try:
            self.media.request_keyframe()
            self.connected.set()
            raise await broken
        finally:
            hub.detach(sink)
            sink.close()


class LiveService:
    def __init__(
        self,
        media: Mapping[int, MediaChannel],
        channels: ChannelRegistry,
        *,
        backoff_scale: float = 1.0,
        rng: random.Random | None = None,
        on_change: Callable[[], None] = lambda: None,
        guard: UrlGuard | None = None,
    ) -> None:
        self.media = media
        self.guard = guard
        self.channels = channels
        self.backoff_scale = backoff_scale
        self.rng = rng
        self.pushes: dict[int, LivePush] = {}
        self._lock = asyncio.Lock()
        self._on_change = on_change

    async def push_live(self, p: PushLiveParams) -> None:
        state = self.channels.get(p.channel)
        media = await stream_for(self.media, p.channel, p.max_bitrate, "streams")
        try:
            url = parse_srt_url(p.url, default_streamid=p.stream_id)
        except ValueError as exc:
            raise InvalidParam(f"params.url: {exc}") from None
        url = await self._checked(url)
        async with self._lock:
            if not media.enabled:  # switched off while we waited for the lock
                raise ChannelOffline(f"channel {p.channel} is switched off")
            current = self.pushes.get(p.channel)
            if current is not None and current.stream_id == p.stream_id:
                return  # idempotent: the stream already exists
            if current is not None:
                log.info("live ch%d: %s replaced by %s", p.channel, current.stream_id, p.stream_id)
                await self._drop(p.channel)
            push = LivePush(media, url, p.stream_id, backoff_scale=self.backoff_scale, rng=self.rng)
            try:
                await push.start()
            except (SrtError, TimeoutError, OSError) as exc:
                await push.stop()
                raise DeviceFailure(f"cannot push to {url.redacted()}: {exc}") from None
            self.pushes[p.channel] = push
            state.stream_id = p.stream_id
            log.info("live ch%d: pushing %s to %s", p.channel, p.stream_id, url.redacted())
        self._on_change()

    async def _checked(self, url: SrtUrl) -> SrtUrl:
        """URL safety for the SRT target (reading 26): a host that is not the platform's
        must have public addresses only; libsrt then connects to the address checked, not
        to a name that could answer differently a moment later."""
        if self.guard is None:
            return url
        try:
            found = await self.guard.addresses(url.host, url.port, url.redacted())
        except UrlNotAllowed as exc:
            raise InvalidParam(f"params.url: {exc}") from None
        except UploadError as exc:
            raise DeviceFailure(f"cannot push to {url.redacted()}: {exc}") from None
        return url if not found else dataclasses.replace(url, host=found[0])

    async def stop_live(self, p: StopLiveParams) -> None:
        async with self._lock:
            for ch, push in list(self.pushes.items()):
                if push.stream_id == p.stream_id and (p.channel is None or p.channel == ch):
                    await self._drop(ch)
                    log.info("live ch%d: %s stopped", ch, p.stream_id)
        self._on_change()

    async def end_channel(self, channel: int) -> None:
        """End whatever is pushed from the channel (it is being switched off)."""
        async with self._lock:
            push = self.pushes.get(channel)
            if push is not None:
                await self._drop(channel)
                log.info("live ch%d: %s ended (channel off)", channel, push.stream_id)
        self._on_change()

    def retune(self, channel: int) -> None:
        """The channel's encoder changed its bitrate."""
        push = self.pushes.get(channel)
        if push is not None:
            push.retune()

    async def _drop(self, channel: int) -> None:
        push = self.pushes.pop(channel, None)
        self.channels.get(channel).stream_id = None
        if push is not None:
            await push.stop()

    async def close(self) -> None:
        async with self._lock:
            for ch in list(self.pushes):
                await self._drop(ch)
