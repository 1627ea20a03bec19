"""Where a viewer may join a live MPEG-TS byte stream, so that its player decodes at once.

A player handed the stream mid-GOP shows nothing (or grey smears) until the next key
frame, and nothing at all until it has seen PAT and PMT. :class:`TsJoin` follows the
stream a receiver relays and keeps the latest PAT and PMT packets and every packet since
the last video key frame: a new viewer gets those first (``snapshot``), then the live
bytes. It passes the stream on unmodified, in whole 188-byte packets.

A key frame is the start of a video PES (payload_unit_start) that carries the
random_access_indicator (FFmpeg sets it on key frames), or, for H.264 from a muxer that
does not set it, whose first packet holds an SPS or an IDR slice. PSI sections are read
only when they fit in one packet (PAT and a one-program PMT always do here).
"""

from __future__ import annotations

__all__ = ["MAX_GOP_BYTES", "TsJoin"]

PACKET = 188
SYNC = 0x47
MAX_GOP_BYTES = 4 << 20  # a 2 s GOP at 16 Mbit/s; a bigger one leaves no join point
# PMT stream_type of the video codecs a player might get (ISO/IEC 13818-1 table 2-34).
VIDEO_TYPES = frozenset({0x01, 0x02, 0x10, 0x1B, 0x24})
H264 = 0x1B
NAL_IDR, NAL_SPS = 5, 7


class TsJoin:
    """Follows one TS byte stream (:meth:`feed`) and answers what a new viewer should get
    first (:meth:`snapshot`). Memory: one partial packet, PAT and PMT, and at most
    ``max_gop_bytes`` of the current GOP."""

    def __init__(self, max_gop_bytes: int = MAX_GOP_BYTES) -> None:
        self.max_gop_bytes = max_gop_bytes
        self.skipped = 0  # bytes that were not part of a TS packet (lost sync)
        self.keyframes = 0
        self.reset()

    def reset(self) -> None:
        """A new stream begins (a new SRT connection: a new muxer, new tables)."""
        self._pending = b""
        self._suspect = False  # _pending starts where a resync guessed a packet begins
        self._pat: bytes | None = None
        self._pmt: bytes | None = None
        self._pmt_pid: int | None = None
        self._video_pid: int | None = None
        self._video_type = 0
        self._head = b""  # PAT and PMT as they were at the last key frame
        self._gop: list[bytes] = []
        self._gop_bytes = 0
        self._gop_ok = False  # _gop starts at a key frame and is complete

    def snapshot(self) -> bytes | None:
        """PAT and PMT, then every packet since the last key frame; None when there is no
        such point yet (no key frame since the tables, or its GOP was too big)."""
        if not self._gop_ok:
            return None
        return b"".join([self._head, *self._gop])

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Take the next bytes of the stream; return the whole packets they complete (the
        same bytes, less any that were out of sync) and whether a key frame began in them."""
        buf = self._pending + data if self._pending else data
        n = len(buf)
        out: list[bytes] = []
        emitted = 0  # bytes in ``out``
        key_at = -1  # offset in the returned bytes of the last key frame's first packet
        head = b""
        start = i = 0  # start: the first byte of the current run of good packets
        # After a resync, the next packet's sync byte is checked as well (a stray 0x47 in
        # the garbage must not pass for a packet); otherwise one sync byte is enough.
        check = self._suspect
        while i + PACKET <= n:
            if buf[i] != SYNC or (check and i + PACKET < n and buf[i + PACKET] != SYNC):
                if i > start:
                    out.append(buf[start:i])
                    emitted += i - start
                j = _resync(buf, i)
                self.skipped += j - i
                start = i = j
                check = True
                continue
            check = False
            if self._packet(buf, i):
                key_at = emitted + i - start
                # The tables as they were at the key frame: later ones (FFmpeg repeats
                # them every 100 ms) would put their continuity counters out of order.
                head = (self._pat or b"") + (self._pmt or b"")
            i += PACKET
        if i > start:
            out.append(buf[start:i])
        self._pending = buf[i:]
        self._suspect = check
        if self._pending and self._pending[0] != SYNC:
            j = _resync(self._pending, 0)
            self.skipped += j
            self._pending = self._pending[j:]
            self._suspect = True
        whole = out[0] if len(out) == 1 else b"".join(out)
        if key_at >= 0:
            self.keyframes += 1
            self._gop, self._gop_bytes, self._gop_ok = [], 0, True
            self._head = head
            self._keep(whole[key_at:])
        elif whole:
            self._keep(whole)
        return whole, key_at >= 0

    def _keep(self, data: bytes) -> None:
        """Append to the current GOP, or give it up once it is too big to keep."""
        if not self._gop_ok:
            return
        if self._gop_bytes + len(data) > self.max_gop_bytes:
            self._gop, self._gop_bytes, self._gop_ok = [], 0, False
            return
        self._gop.append(data)
        self._gop_bytes += len(data)

    def _packet(self, buf: bytes, i: int) -> bool:
        """Read one packet's PSI; whether it starts a key frame."""
        pid = ((buf[i + 1] & 0x1F) << 8) | buf[i + 2]
        if pid == 0:
            self._read_pat(buf, i)
            return False
        if pid == self._pmt_pid:
            self._read_pmt(buf, i)
            return False
        return self._is_key(buf, i)

    def _is_key(self, buf: bytes, i: int) -> bool:
        b1 = buf[i + 1]
        if not b1 & 0x40 or self._video_pid is None:
            return False
        if ((b1 & 0x1F) << 8) | buf[i + 2] != self._video_pid:
            return False
        if self._pat is None or self._pmt is None:
            return False
        afc = (buf[i + 3] >> 4) & 3
        p = i + 4
        if afc & 2:
            af_len = buf[p]
            if af_len and buf[p + 1] & 0x40:
                return True  # random_access_indicator
            p += 1 + af_len
        if not afc & 1 or self._video_type != H264:
            return False
        end = i + PACKET
        # PES header: 00 00 01, stream_id, length (2), flags (2), header_data_length.
        if p + 9 > end or buf[p : p + 3] != b"\x00\x00\x01":
            return False
        return _h264_key(buf, p + 9 + buf[p + 8], end)

    def _section(self, buf: bytes, i: int) -> tuple[int, int] | None:
        """(start, end) of the PSI section that begins in this packet, if it fits."""
        if not buf[i + 1] & 0x40:
            return None
        afc = (buf[i + 3] >> 4) & 3
        if not afc & 1:
            return None
        p = i + 4
        if afc & 2:
            p += 1 + buf[p]
        if p >= i + PACKET:
            return None
        s = p + 1 + buf[p]  # pointer_field
        if s + 3 > i + PACKET:
            return None
        end = s + 3 + (((buf[s + 1] & 0x0F) << 8) | buf[s + 2])
        if end > i + PACKET:
            return None
        return s, end

    def _read_pat(self, buf: bytes, i: int) -> None:
        sec = self._section(buf, i)
        if sec is None or buf[sec[0]] != 0x00:
            return
        s, end = sec
        for q in range(s + 8, end - 4 - 3, 4):
            if (buf[q] << 8) | buf[q + 1]:  # program 0 is the network PID
                pmt_pid = ((buf[q + 2] & 0x1F) << 8) | buf[q + 3]
                if pmt_pid != self._pmt_pid:
                    self._pmt_pid, self._pmt, self._video_pid = pmt_pid, None, None
                self._pat = bytes(buf[i : i + PACKET])
                return

    def _read_pmt(self, buf: bytes, i: int) -> None:
        sec = self._section(buf, i)
        if sec is None or buf[sec[0]] != 0x02:
            return
        s, end = sec
        q = s + 12 + (((buf[s + 10] & 0x0F) << 8) | buf[s + 11])
        while q + 5 <= end - 4:
            stream_type = buf[q]
            if stream_type in VIDEO_TYPES:
                self._video_pid = ((buf[q + 1] & 0x1F) << 8) | buf[q + 2]
                self._video_type = stream_type
                self._pmt = bytes(buf[i : i + PACKET])
                return
            q += 5 + (((buf[q + 3] & 0x0F) << 8) | buf[q + 4])


def _resync(buf: bytes, i: int) -> int:
    """The next offset after ``i`` that looks like a packet start (0x47 twice, 188 apart, or
    0x47 with too little left to tell)."""
    n = len(buf)
    j = i + 1
    while j < n:
        j = buf.find(b"\x47", j)
        if j < 0:
            return n
        if j + PACKET >= n or buf[j + PACKET] == SYNC:
            return j
        j += 1
    return n


def _h264_key(buf: bytes, p: int, end: int) -> bool:
    """Whether the Annex B bytes buf[p:end] hold an SPS or an IDR slice before any other
    slice (the start of a key access unit)."""
    while True:
        q = buf.find(b"\x00\x00\x01", p, end)
        if q < 0 or q + 3 >= end:
            return False
        nal = buf[q + 3] & 0x1F
        if nal in (NAL_IDR, NAL_SPS):
            return True
        if nal == 1:
            return False
        p = q + 3
