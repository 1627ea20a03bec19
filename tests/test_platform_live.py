"""The reference platform's live receiver is listening once ``open_live`` returns, so a
PushLive sent at once connects at the first try (it used to race the listener's start
and lose about one time in five, costing the PU a one-second retry)."""

from __future__ import annotations

from pathlib import Path

from hss_pu.reference_platform.live import LiveSubscriber, bound_udp_ports
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
