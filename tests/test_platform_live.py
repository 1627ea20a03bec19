"""The reference platform's live receiver is listening once ``open_live`` returns, so a
PushLive sent at once connects at the first try (it used to race the listener's start
and lose about one time in five, costing the PU a one-second retry)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hss_pu.reference_platform.live import LiveReceiver, LiveSubscriber, bound_udp_ports
from hss_pu.reference_platform.server import ReferencePlatform


async def test_open_live_returns_once_listening(platform: ReferencePlatform) -> None:
    for n in range(10):
        rx = await platform.open_live(f"s{n}")
        assert rx.port in bound_udp_ports(), n
        await rx.close()


def test_bound_udp_ports_reads_proc_net_udp(tmp_path: Path) -> None:
    table = tmp_path / "udp"
    table.write_text(
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"
        "  101: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000\n"
        "  102: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000\n"
    )
    assert bound_udp_ports((table, tmp_path / "missing")) == {8080, 68}


async def test_a_subscriber_queue_is_bounded_in_bytes() -> None:
    """Beyond its start snapshot, a subscriber holds at most ``backlog`` bytes; one more
    chunk drops it (its queue freed at once); read() hands over what is queued in one
    piece, then b"" once closed."""
    closed: list[LiveSubscriber] = []
    sub = LiveSubscriber(1000, closed.append)
    sub.offer(b"x" * 10)
    assert sub.queued == 0 and not sub.started  # nothing before its key frame
    sub.start(b"s" * 300)
    assert sub.limit == 1300
    sub.offer(b"a" * 600)
    sub.offer(b"b" * 400)
    assert sub.queued == 1300 and sub.peak == 1300 and not sub.closed
    assert await sub.read() == b"s" * 300 + b"a" * 600 + b"b" * 400
    sub.offer(b"c" * 1300)
    assert sub.queued == 1300
    sub.offer(b"d")
    assert sub.dropped and sub.closed and sub.queued == 0 and closed == [sub]
    assert "behind" in sub.reason and sub.ended.is_set()
    assert await sub.read() == b""
    # Closed normally, it hands out what was queued first.
    other = LiveSubscriber(1000, closed.append)
    other.start(b"k")
    other.close("done")
    assert await other.read() == b"k" and await other.read() == b""
    assert not other.dropped and other.reason == "done"


def test_a_subscriber_starts_at_once_from_the_last_key_frame(tmp_path: Path) -> None:
    """A subscriber that comes mid-GOP gets PAT, PMT and the GOP so far at once (its
    player decodes without waiting for the next key frame); one that comes before any key
    frame gets nothing until the first, then starts there. Later bytes follow as they are."""
    clip = tmp_path / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=160x90:rate=10", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
         "-g", "10", "-sc_threshold", "0", "-f", "mpegts", str(clip)],
        check=True, timeout=60,
    )  # fmt: skip
    data = clip.read_bytes()
    rx = LiveReceiver(tmp_path / "live", stream_id="join")
    early = rx.subscribe()
    rx._to_subscribers(data[: 188 * 3])  # PAT, PMT, SDT: no picture yet
    assert not early.started and early.queued == 0
    # The second key frame (GOP 10 at 10 fps) is 1 s in; the last 20 packets are late in
    # its GOP.
    cut = len(data) - 20 * 188
    rx._to_subscribers(data[188 * 3 : cut])
    assert early.started and early.queued > 0
    late = rx.subscribe()
    assert late.started
    first = late._chunks[0]
    assert first[0] == 0x47 and ((first[1] & 0x1F) << 8 | first[2]) == 0  # PAT first
    video_pid = (first[2 * 188 + 1] & 0x1F) << 8 | first[2 * 188 + 2]
    frames = sum(
        1
        for i in range(0, len(first), 188)
        if first[i + 1] & 0x40 and (first[i + 1] & 0x1F) << 8 | first[i + 2] == video_pid
    )
    assert frames > 3  # the GOP so far, not just its key frame
    rx._to_subscribers(data[cut:])
    assert late._chunks[-1] == data[cut:]  # and then the stream as it comes
    assert rx.subscribers == 2
