"""Per-channel live state: what Keepalive reports and what services update."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from hss_pu.errors import ChannelOffline, NoSuchChannel, StreamTooLarge
from hss_pu.media.channel import MediaChannel
from hss_pu.profiles import Profile
from hss_pu.wire.vd import KeepaliveChannel

__all__ = ["ChannelRegistry", "ChannelState", "camera_state", "stream_for"]

log = logging.getLogger("hss_pu.channels")

OFFLINE, ONLINE, ERROR, DISABLED = 0, 1, 3, 4


@dataclass
class ChannelState:
    channel: int
    enabled: bool = True  # SetConfig channels.N.on
    restarting: bool = False  # RebootChannel in progress
    stream_id: str | None = None
    record_session: str | None = None
    alarms: int = 0  # bit T set while alarm type T is active (wire-notes)
    pulses: int = 0  # bit T of a pulse alarm raised since the last Keepalive was built
    awake_until: float = 0.0  # monotonic deadline set by KeepAwaken
    reboots: int = 0
    restart_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The camera's own state, asked at every Keepalive (None: a channel without a camera
    # in this process, e.g. the daemon started without media).
    camera: Callable[[], int] | None = None

    @property
    def state(self) -> int:
        """Keepalive's state: 4 off, 0 restarting (or the camera not up yet), 3 the camera
        failed (until it recovers), else 1."""
        if not self.enabled:
            return DISABLED
        if self.restarting:
            return OFFLINE
        return self.camera() if self.camera is not None else ONLINE

    def keepalive(self) -> KeepaliveChannel:
        return KeepaliveChannel(
            channel=self.channel,
            state=self.state,  # type: ignore[arg-type]
            stream_id=self.stream_id,
            record_session=self.record_session,
            alarm=self.alarms | self.pulses,
        )


def camera_state(media: MediaChannel) -> int:
    """A media channel's state in Keepalive's terms."""
    st = media.stats.state
    if st == "error":
        return ERROR
    if st == "running" and media.running:
        return ONLINE
    return OFFLINE  # starting, or stopped


class ChannelRegistry:
    def __init__(self, profile: Profile) -> None:
        self._channels = {c.id: ChannelState(c.id) for c in profile.channels}

    def __iter__(self) -> Iterator[ChannelState]:
        return iter(self._channels.values())

    def get(self, channel: int) -> ChannelState:
        """The channel, or NoSuchChannel (Vd 102)."""
        ch = self._channels.get(channel)
        if ch is None:
            raise NoSuchChannel(f"channel {channel} does not exist")
        return ch

    def keepalive(self) -> list[KeepaliveChannel]:
        """What the next Keepalive will say (a view: status and tests may ask any time)."""
        return [c.keepalive() for c in self._channels.values()]

    def next_keepalive(self) -> list[KeepaliveChannel]:
        """The channels of a Keepalive about to be sent: a pulse's bit goes out in this
        one only (wire-notes), so it is consumed here."""
        out = self.keepalive()
        for c in self._channels.values():
            c.pulses = 0
        return out

    def set_alarm(self, channel: int, bit: int, active: bool) -> None:
        """A state alarm's bit, set from its start to its end."""
        ch = self.get(channel)
        ch.alarms = ch.alarms | bit if active else ch.alarms & ~bit

    def add_pulse(self, channel: int, bit: int) -> None:
        """A pulse alarm's bit, for the next Keepalive only."""
        self.get(channel).pulses |= bit

    def set_enabled(self, channel: int, on: bool) -> None:
        self.get(channel).enabled = on

    # --- KeepAwaken: what hibernation asks before the device sleeps ----------------------

    def keep_awake(self, channel: int, seconds: int) -> None:
        """KeepAwaken: awake for at least ``seconds`` from now. The latest deadline wins:
        a shorter window asked later does not cut a longer one short."""
        ch = self.get(channel)
        deadline = time.monotonic() + seconds
        if deadline > ch.awake_until:
            ch.awake_until = deadline
        log.info(
            "KeepAwaken ch%d: awake for %d s (%.0f s left)",
            channel, seconds, self.awake_until() - time.monotonic(),
        )  # fmt: skip

    def awake(self, channel: int) -> bool:
        """Whether a KeepAwaken window of the channel is open now."""
        return self.get(channel).awake_until > time.monotonic()

    def awake_until(self) -> float:
        """The ``time.monotonic()`` deadline of the device's KeepAwaken window (the
        latest of its channels'); 0.0 when none was ever asked."""
        return max((c.awake_until for c in self._channels.values()), default=0.0)

    def keep_awake_open(self) -> bool:
        """Whether any KeepAwaken window is open now: a device must not sleep while one
        is (wire-notes "Power")."""
        return self.awake_until() > time.monotonic()

    async def reboot(self, channel: int) -> None:
        """RebootChannel: state 0 while what runs on the channel restarts (its camera's
        capture and encoder, through the hooks); then the state is what the camera says
        (1, or 3 if it did not come back)."""
        ch = self.get(channel)
        ch.reboots += 1
        ch.restarting = True
        log.info("channel %d: rebooting", channel)
        try:
            for hook in ch.restart_hooks:
                try:
                    await hook()
                except Exception:  # the next hook still runs; the camera's state shows it
                    log.exception("channel %d: restart failed", channel)
        finally:
            ch.restarting = False
        log.info("channel %d: rebooted (state %d)", channel, ch.state)


async def stream_for(
    media: Mapping[int, MediaChannel], channel: int, max_bitrate: int, what: str
) -> MediaChannel:
    """The checks PushLive and StartRecord share: a running camera (error 103; a request
    right after boot waits for it), and a bitrate within ``max_bitrate`` (bit/s, 0 = no
    limit; else error 11: we do not silently lower the encoder of a stream that other
    consumers use too)."""
    m = media.get(channel)
    if m is not None and not m.enabled:
        raise ChannelOffline(f"channel {channel} is switched off (SetConfig on = false)")
    if m is None or not await m.wait_running():
        raise ChannelOffline(f"channel {channel} has no running camera")
    if max_bitrate and m.settings.bitrate > max_bitrate:
        raise StreamTooLarge(
            f"channel {channel} {what} at {m.settings.bitrate} bit/s, "
            f"above max_bitrate {max_bitrate}",
        )
    return m
