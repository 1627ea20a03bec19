"""The hibernation protocol (wire-notes "Power"): the 40-byte heartbeat and ``TOWAKEUP``.
Pure, no I/O.

A hibernating device keeps one TCP connection to the server GetServerInfo names in
``hibernation`` ("host:port") and sends, every 60 s, big-endian::

    0xCC 0x00 | uint16 length = 40 | 16 bytes device id | 0x4A | 3 zero bytes | 16 bytes hb_token

(id and token ASCII, NUL-padded on the right). The server wakes it with the 8 bytes
``TOWAKEUP``, which may arrive split across reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hss_pu.wire.vs import valid_host

__all__ = [
    "CMD_HEARTBEAT",
    "FIELD_BYTES",
    "HEADER",
    "HEARTBEAT_BYTES",
    "MAGIC",
    "WAKE",
    "BadHeartbeat",
    "Heartbeat",
    "WakeScanner",
    "encode_heartbeat",
    "field_problem",
    "parse_address",
    "parse_heartbeat",
]

MAGIC = b"\xcc\x00"
HEARTBEAT_BYTES = 40
HEADER = 4  # magic + length: enough to know whether a frame is ours
CMD_HEARTBEAT = 0x4A
FIELD_BYTES = 16  # the id and the token fields
WAKE = b"TOWAKEUP"

_FRAME = struct.Struct(">2sH16sB3s16s")
assert _FRAME.size == HEARTBEAT_BYTES


def field_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot go into a 16-byte field, or None: printable ASCII, at most
    16 bytes (an id may not be empty; a token may, sent as 16 NUL bytes)."""
    if not value.isascii() or not value.isprintable():
        return f"{what} is not printable ASCII"
    if len(value) > FIELD_BYTES:
        return f"{what} is {len(value)} bytes, longer than the heartbeat's {FIELD_BYTES}"
    if what == "device id" and not value:
        return "device id is empty"
    return None


def encode_heartbeat(device_id: str, token: str) -> bytes:
    """The 40-byte heartbeat; ValueError when the id or the token does not fit."""
    for value, what in ((device_id, "device id"), (token, "hb_token")):
        problem = field_problem(value, what)
        if problem is not None:
            raise ValueError(problem)
    return _FRAME.pack(
        MAGIC,
        HEARTBEAT_BYTES,
        device_id.encode("ascii"),  # struct pads 16s with NUL on the right
        CMD_HEARTBEAT,
        b"\0\0\0",
        token.encode("ascii"),
    )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    device_id: str
    token: str


@dataclass(frozen=True, slots=True)
class BadHeartbeat:
    """A frame that is not a heartbeat; ``resync`` when the stream lost its framing (bad
    magic or length: the reader cannot know where the next frame starts)."""

    reason: str
    resync: bool = False


def _text(raw: bytes, what: str) -> str | BadHeartbeat:
    body = raw.rstrip(b"\0")
    if b"\0" in body:
        return BadHeartbeat(f"{what}: NUL inside the field (not padding on the right)")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return BadHeartbeat(f"{what}: not ASCII")
    if not text.isprintable():
        return BadHeartbeat(f"{what}: not printable")
    return text


def parse_heartbeat(frame: bytes) -> Heartbeat | BadHeartbeat:
    """The server side: one 40-byte frame read. Never raises."""
    if len(frame) < HEADER or frame[:2] != MAGIC:
        return BadHeartbeat(f"bad magic {frame[:2].hex() or '(none)'}", resync=True)
    (length,) = struct.unpack_from(">H", frame, 2)
    if length != HEARTBEAT_BYTES:
        return BadHeartbeat(f"length field {length}, not {HEARTBEAT_BYTES}", resync=True)
    if len(frame) != HEARTBEAT_BYTES:
        return BadHeartbeat(f"{len(frame)} bytes, not {HEARTBEAT_BYTES}")
    _, _, raw_id, cmd, reserved, raw_token = _FRAME.unpack(frame)
    if cmd != CMD_HEARTBEAT:
        return BadHeartbeat(f"command 0x{cmd:02X}, not 0x{CMD_HEARTBEAT:02X}")
    if reserved != b"\0\0\0":
        return BadHeartbeat(f"reserved bytes {reserved.hex()}, not zero")
    device_id = _text(raw_id, "device id")
    if isinstance(device_id, BadHeartbeat):
        return device_id
    if not device_id:
        return BadHeartbeat("device id: empty")
    token = _text(raw_token, "hb_token")
    if isinstance(token, BadHeartbeat):
        return token
    return Heartbeat(device_id, token)


class WakeScanner:
    """Finds ``TOWAKEUP`` in a byte stream fed in pieces (split anywhere); keeps only the
    last 7 bytes between feeds, so a server that sends junk cannot grow it."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> bool:
        buf = self._tail + data
        if WAKE in buf:
            self._tail = b""
            return True
        self._tail = buf[-(len(WAKE) - 1) :]
        return False


def parse_address(value: str) -> tuple[str, int] | str:
    """GetServerInfo's ``hibernation``: (host, port), or why it is not "host:port"
    (an IPv6 address in brackets; a port 1-65535)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        return "not host:port"
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535):
        return "port is not 1-65535"
    name = valid_host(host)
    if name is None or (":" in name and not host.startswith("[")):
        return "host is not an IP address or a host name"
    return name, int(port)
