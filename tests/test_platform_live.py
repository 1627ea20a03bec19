"""The reference platform's live receiver is listening once ``open_live`` returns, so a
PushLive sent at once connects at the first try (it used to race the listener's start
and lose about one time in five, costing the PU a one-second retry)."""

from __future__ import annotations

from pathlib import Path

from hss_pu.reference_platform.live import bound_udp_ports
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
