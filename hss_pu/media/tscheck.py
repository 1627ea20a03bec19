"""MPEG-TS integrity check: what a receiver can verify without decoding.

``ffprobe -count_frames`` counts frames even when TS packets went missing, so the tests
and the reference platform check the transport layer themselves: sync bytes, per-PID
continuity counters (ISO/IEC 13818-1 2.4.3.3) and the PCR range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PACKET_SIZE", "TsReport", "check_ts", "pcr_positions"]

PACKET_SIZE = 188
_SYNC = 0x47
_NULL_PID = 0x1FFF
PCR_HZ = 27_000_000


@dataclass
class TsReport:
    packets: int = 0
    sync_errors: int = 0  # places where a packet did not start with 0x47 (then resynced)
    cc_errors: int = 0
    cc_errors_by_pid: dict[int, int] = field(default_factory=dict)
    tei_packets: int = 0  # transport_error_indicator set
    trailing_bytes: int = 0  # an incomplete packet at the end
    pids: set[int] = field(default_factory=set)
    pcr_first: int | None = None  # 27 MHz units
    pcr_last: int | None = None
    pcr_count: int = 0

    @property
    def ok(self) -> bool:
        return not (self.sync_errors or self.cc_errors or self.tei_packets or self.trailing_bytes)

    @property
    def pcr_span_s(self) -> float | None:
        """Seconds from the first PCR to the last (no wrap handling: 26.5 h period)."""
        if self.pcr_first is None or self.pcr_last is None:
            return None
        return (self.pcr_last - self.pcr_first) / PCR_HZ


def _pcr(data: bytes | memoryview, i: int) -> int | None:
    """The PCR of the packet at ``i`` (27 MHz), if its adaptation field carries one."""
    if not data[i + 3] & 0x20 or data[i + 4] < 7 or not data[i + 5] & 0x10:
        return None
    b = data[i + 6 : i + 12]
    base = (b[0] << 25) | (b[1] << 17) | (b[2] << 9) | (b[3] << 1) | (b[4] >> 7)
    ext = ((b[4] & 1) << 8) | b[5]
    return base * 300 + ext


def _resync(data: bytes | memoryview, i: int) -> int:
    """The next offset after ``i`` that looks like a packet start (0x47 twice, 188 apart)."""
    n = len(data)
    j = i + 1
    while j < n:
        if data[j] == _SYNC and (j + PACKET_SIZE >= n or data[j + PACKET_SIZE] == _SYNC):
            return j
        j += 1
    return n


def check_ts(data: bytes | memoryview) -> TsReport:
    """Count packets and transport errors in a TS byte string.

    Continuity: the counter advances only on packets with payload; a packet without
    payload repeats the previous value; one duplicate of a payload packet is allowed;
    ``discontinuity_indicator`` (and the first packet of a PID) accepts any value; the
    null PID is not checked.
    """
    rep = TsReport()
    last_cc: dict[int, int] = {}
    dup_seen: dict[int, bool] = {}
    n = len(data)
    i = 0
    while i + PACKET_SIZE <= n:
        if data[i] != _SYNC:
            rep.sync_errors += 1
            i = _resync(data, i)
            continue
        rep.packets += 1
        b1, b3 = data[i + 1], data[i + 3]
        if b1 & 0x80:
            rep.tei_packets += 1
        pid = ((b1 & 0x1F) << 8) | data[i + 2]
        rep.pids.add(pid)
        afc = (b3 >> 4) & 0x3
        cc = b3 & 0xF
        has_payload = bool(afc & 1)
        has_af = bool(afc & 2)
        discontinuity = has_af and data[i + 4] > 0 and bool(data[i + 5] & 0x80)
        if has_af:
            pcr = _pcr(data, i)
            if pcr is not None:
                if rep.pcr_first is None:
                    rep.pcr_first = pcr
                rep.pcr_last = pcr
                rep.pcr_count += 1
        if pid != _NULL_PID:
            prev = last_cc.get(pid)
            good = True
            if prev is not None and not discontinuity:
                if not has_payload:
                    good = cc == prev
                elif cc == prev and not dup_seen.get(pid, False):
                    dup_seen[pid] = True  # one duplicate packet is allowed
                else:
                    good = cc == (prev + 1) & 0xF
                    dup_seen[pid] = False
            else:
                dup_seen[pid] = False
            if not good:
                rep.cc_errors += 1
                rep.cc_errors_by_pid[pid] = rep.cc_errors_by_pid.get(pid, 0) + 1
                dup_seen[pid] = False
            last_cc[pid] = cc
        i += PACKET_SIZE
    rep.trailing_bytes = n - i if i < n else 0
    return rep


def pcr_positions(data: bytes | memoryview) -> list[tuple[int, int]]:
    """(byte offset, PCR in 27 MHz) of every packet carrying a PCR, for pacing a file."""
    out: list[tuple[int, int]] = []
    for i in range(0, len(data) - PACKET_SIZE + 1, PACKET_SIZE):
        if data[i] == _SYNC and data[i + 3] & 0x20:
            pcr = _pcr(data, i)
            if pcr is not None:
                out.append((i, pcr))
    return out
