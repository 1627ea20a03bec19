"""Just enough H.264 Annex B parsing to keep every key frame self-contained.

A segment cut at a key frame (recording) and a viewer joining mid-stream (live) both need
SPS/PPS in front of the IDR. libx264 with ``repeat-headers`` and picamera2 with
``repeat=True`` already do that; ``h264_v4l2m2m`` and many RTSP cameras (SPS/PPS only
in the SDP) do not, so :class:`ParameterSetCache` puts them back.
"""

from __future__ import annotations

__all__ = [
    "NAL_IDR",
    "NAL_PPS",
    "NAL_SPS",
    "ParameterSetCache",
    "has_picture",
    "is_annexb",
    "nal_types",
    "parameter_sets",
    "split_nals",
]

NAL_SLICE, NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 1, 5, 6, 7, 8, 9
_START = b"\x00\x00\x01"
_START4 = b"\x00\x00\x00\x01"


def is_annexb(data: bytes) -> bool:
    return data.startswith(_START) or data.startswith(_START4)


def split_nals(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B buffer, without start codes."""
    out: list[bytes] = []
    pos = data.find(_START)
    while pos >= 0:
        start = pos + 3
        nxt = data.find(_START, start)
        end = len(data) if nxt < 0 else nxt
        # A 4-byte start code leaves its leading zero on the previous NAL.
        nal = data[start:end]
        if nxt >= 0 and nal.endswith(b"\x00"):
            nal = nal.rstrip(b"\x00")
        if nal:
            out.append(nal)
        pos = nxt
    return out


def nal_types(data: bytes) -> list[int]:
    return [n[0] & 0x1F for n in split_nals(data)]


def has_picture(data: bytes) -> bool:
    """Whether the buffer holds a coded slice, not just headers (some encoders hand over
    SPS/PPS in a buffer of their own)."""
    pos = data.find(_START)
    while 0 <= pos < len(data) - 3:
        if data[pos + 3] & 0x1F in (NAL_SLICE, NAL_IDR):
            return True
        pos = data.find(_START, pos + 3)
    return False


def parameter_sets(data: bytes) -> bytes | None:
    """SPS and PPS of an access unit (or of avcC-free extradata) as Annex B, else None."""
    nals = split_nals(data)
    sps = [n for n in nals if n[0] & 0x1F == NAL_SPS]
    pps = [n for n in nals if n[0] & 0x1F == NAL_PPS]
    if not sps or not pps:
        return None
    return b"".join(_START4 + n for n in sps + pps)


def _header_nals(data: bytes) -> list[bytes]:
    """The NAL units before the first slice: where SPS/PPS belong (cheap on big I-frames)."""
    out: list[bytes] = []
    pos = data.find(_START)
    while pos >= 0 and pos + 3 < len(data):
        start = pos + 3
        if data[start] & 0x1F in (NAL_SLICE, NAL_IDR):
            break
        nxt = data.find(_START, start)
        nal = data[start:] if nxt < 0 else data[start:nxt]
        if nxt >= 0:
            nal = nal.rstrip(b"\x00")
        out.append(nal)
        pos = nxt
    return out


class ParameterSetCache:
    """Remembers the latest SPS/PPS and puts them in front of key frames that lack them."""

    def __init__(self, extradata: bytes | None = None) -> None:
        self.extradata: bytes | None = None
        self.inserted = 0
        if extradata and is_annexb(extradata):
            self.extradata = parameter_sets(extradata)

    def process(self, data: bytes, keyframe: bool) -> bytes:
        if not keyframe:
            return data
        head = _header_nals(data)
        sps = [n for n in head if n[0] & 0x1F == NAL_SPS]
        pps = [n for n in head if n[0] & 0x1F == NAL_PPS]
        if sps and pps:
            self.extradata = b"".join(_START4 + n for n in sps + pps)
            return data
        if self.extradata is None:
            return data
        self.inserted += 1
        return self.extradata + data
