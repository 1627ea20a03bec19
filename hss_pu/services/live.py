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
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hss_pu.media.channel import MediaChannel
from hss_pu.media.packets import EncodedPacket, Subscription
from hss_pu.media.tsmux import TsMuxer
from hss_pu.retry import retry_delay
from hss_pu.services.channels import ChannelRegistry
from hss_pu.srt import (
    LIVE_PAYLOAD_SIZE,
    SrtError,
    SrtSender,
    SrtUrl,
    maxbw_for_bitrate,
    parse_srt_url,
)
from hss_pu.wire.vd import Code, PushLiveParams, RpcError, StopLiveParams

__all__ = ["LivePush", "LiveService", "PushStats"]

log = logging.getLogger("hss_pu.live")

FIRST_CONNECT_TIMEOUT = 8.0  # inside the dispatcher's 15 s handler budget
MAXBW_FACTOR = 3  # absolute SRT MAXBW = 3 x the stream's bytes/s (field notes: 2-4x)
SEND_STALL_LIMIT = 200
MESSAGE = LIVE_PAYLOAD_SIZE  # what the TS muxer's writes fit in (whole TS packets)
# Null TS packets (PID 0x1FFF, ignored by every demuxer) sent after the last real data:
# SRT learns of a lost packet only from the ones after it, so without a tail the last
# packets of a stream could not be recovered.
NULL_MESSAGE = (b"\x47\x1f\xff\x10" + b"\xff" * 184) * 7
TAIL_MESSAGES = 3
# Before the stream, ~0.3 s of null packets. libsrt 1.5.1's receiver repeats its first loss
# report only ~300 ms after the first loss of a connection: a loss in that first episode
# whose retransmission is lost too misses a 200 ms latency. A loss among these null
# packets spends that episode on padding instead of video. Costs 0.3 s of start-up.
WARMUP_MESSAGES, WARMUP_SPACING = (
    10,
    0.03,
)  # consecutive full-buffer messages before the link counts as dead


class _LinkStalled(Exception):
    """The receiver stopped taking data although SRT has not noticed yet."""


@dataclass
class PushStats:
    connects: int = 0
    messages: int = 0
    bytes: int = 0
    dropped_messages: int = 0  # send buffer full
    last_error: str = ""


class LivePush:
    """One wanted push: a subscription to the channel's hub, muxed to TS, sent over SRT."""

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
        self._sub: Subscription | None = None
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
        self._sub = self.media.hub.subscribe(
            f"live:{self.stream_id}", max_packets=600, max_bytes=16 << 20
        )
        self._task = asyncio.create_task(self._run(), name=f"live-{self.stream_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._sub is not None:
            self._sub.close()
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
                    delay = retry_delay(failures, self.backoff_scale, self.rng)
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
            await asyncio.sleep(retry_delay(failures, self.backoff_scale, self.rng))

    async def _pump(self, sender: SrtSender) -> None:
        """Mux packets into 1316-byte messages and send them until the connection breaks."""
        assert self._sub is not None
        sub = self._sub
        for _ in range(WARMUP_MESSAGES):
            sender.send_nowait(NULL_MESSAGE)
            await asyncio.sleep(WARMUP_SPACING)
        # Every connection starts a fresh TS (PAT/PMT first) at a fresh key frame.
        sub.restart_at_keyframe()
        self.media.request_keyframe()
        out: list[bytes] = []
        mux: TsMuxer | None = None
        self.connected.set()
        stalled = 0
        try:
            while True:
                pkt: EncodedPacket | None = await sub.get()
                if mux is None:
                    # The hub knows its streams by the time it hands out a packet.
                    video = self.media.hub.video
                    assert video is not None
                    mux = TsMuxer(video, self.media.hub.audio, out.append)
                # Mux everything that is queued (a frame and its audio arrive together),
                # then send it in full messages: the muxer ends each packet's output with
                # a short message, and every SRT packet costs the same to send and pace.
                while pkt is not None:
                    mux.mux(pkt)
                    pkt = sub.get_nowait()
                if len(out) > 1:
                    data = b"".join(out)
                    out[:] = [data[i : i + MESSAGE] for i in range(0, len(data), MESSAGE)]
                for msg in out:
                    if sender.send_nowait(msg):
                        stalled = 0
                        self.stats.messages += 1
                        self.stats.bytes += len(msg)
                    else:
                        # A full send buffer: the peer is gone or far too slow. Drop, and
                        # start again at a key frame so the receiver gets whole GOPs.
                        self.stats.dropped_messages += 1
                        stalled += 1
                        if stalled >= SEND_STALL_LIMIT:
                            raise _LinkStalled(f"send buffer full for {stalled} messages")
                        sub.restart_at_keyframe()
                        break
                out.clear()
        finally:
            if mux is not None:
                with contextlib.suppress(Exception):
                    mux.close()
                with contextlib.suppress(SrtError):
                    for msg in out:  # the last partial message, flushed by close()
                        sender.send_nowait(msg)
                    for _ in range(TAIL_MESSAGES):
                        sender.send_nowait(NULL_MESSAGE)


class LiveService:
    def __init__(
        self,
        media: Mapping[int, MediaChannel],
        channels: ChannelRegistry,
        *,
        backoff_scale: float = 1.0,
        rng: random.Random | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.media = media
        self.channels = channels
        self.backoff_scale = backoff_scale
        self.rng = rng
        self.pushes: dict[int, LivePush] = {}
        self._lock = asyncio.Lock()
        self._on_change = on_change

    async def push_live(self, p: PushLiveParams) -> None:
        state = self.channels.get(p.channel)
        media = self.media.get(p.channel)
        if media is None or not await media.wait_running():
            raise RpcError(Code.CHANNEL_OFFLINE, f"channel {p.channel} has no running camera")
        if p.max_bitrate and media.settings.bitrate > p.max_bitrate:
            raise RpcError(
                Code.STREAM_TOO_LARGE,
                f"channel {p.channel} streams at {media.settings.bitrate} bit/s, "
                f"above max_bitrate {p.max_bitrate}",
            )
        try:
            url = parse_srt_url(p.url, default_streamid=p.stream_id)
        except ValueError as exc:
            raise RpcError(Code.PARAM, f"params.url: {exc}") from None
        async with self._lock:
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
                raise RpcError(Code.INTERNAL, f"cannot push to {url.redacted()}: {exc}") from None
            self.pushes[p.channel] = push
            state.stream_id = p.stream_id
            log.info("live ch%d: pushing %s to %s", p.channel, p.stream_id, url.redacted())
        self._on_change()

    async def stop_live(self, p: StopLiveParams) -> None:
        async with self._lock:
            for ch, push in list(self.pushes.items()):
                if push.stream_id == p.stream_id and (p.channel is None or p.channel == ch):
                    await self._drop(ch)
                    log.info("live ch%d: %s stopped", ch, p.stream_id)
        self._on_change()

    async def _drop(self, channel: int) -> None:
        push = self.pushes.pop(channel, None)
        self.channels.get(channel).stream_id = None
        if push is not None:
            await push.stop()

    async def close(self) -> None:
        async with self._lock:
            for ch in list(self.pushes):
                await self._drop(ch)
