"""The platform's alarm records: AlarmNotify checked, answered and kept, with its picture.

A ``start`` or ``pulse`` is answered with a ``pic_upload_url`` of its own (``PUT
/alarm/pic/<name>.jpg`` on the platform's HTTPS port; the name is unguessable, so a device
can fill only the slots handed to it). The picture is checked before it is kept: the
``image/jpeg`` content type of wire-notes, a JPEG's structure (SOI, a frame header, EOI)
and a full decode (in a worker thread), so a PU that uploads a wrong or broken picture is
caught here rather than on a person's screen. Strict where that finds PU bugs: an alarm
whose state does not fit its type in Table I.2-16 is refused with code 12.

Bounded: ``PlatformOptions.alarm_keep`` alarms per device; an alarm dropped takes its
picture file with it. Times are the platform's clock (``ReferencePlatform.now``), the one
the device synchronises to, so ``received - timestamp`` is the alarm's delay.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hss_pu.fsutil import atomic_write
from hss_pu.reference_platform.ticker import Ticker
from hss_pu.reference_platform.web import Request, Response, json_response
from hss_pu.wire.alarms import ALARM_KINDS
from hss_pu.wire.vd import AlarmNotifyParams, Code, RpcError

if TYPE_CHECKING:
    from hss_pu.reference_platform.options import PlatformOptions

__all__ = [
    "PIC_PREFIX",
    "Alarm",
    "AlarmPicture",
    "AlarmStore",
    "BadPicture",
    "check_jpeg",
    "jpeg_dimensions",
]

log = logging.getLogger("hss_pu.platform.alarms")

# Alarm types that come without a picture (wire.alarms: a low battery).
_NO_PICTURE = frozenset(k.type for k in ALARM_KINDS.values() if not k.picture)

PIC_PREFIX = "/alarm/pic/"
PICTURE_DIR = "alarms"

# Table I.2-16: type -> whether it is a state alarm (start ... end) or a single one (pulse).
STATE_TYPES = frozenset({2, 3, 5, 6, 7, 11, 12})
PULSE_TYPES = frozenset({4, 8, 9, 10})

_SLOT = re.compile(r"([0-9]{1,12}-[0-9a-f]{16})\.jpg")


# --- JPEG -----------------------------------------------------------------------------


class BadPicture(ValueError):
    """Why an upload is not a JPEG picture."""


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header; BadPicture when the structure is wrong
    (no SOI, a broken segment, no frame header before the scan, no EOI at the end)."""
    if len(data) < 4 or not data.startswith(b"\xff\xd8"):
        raise BadPicture("does not start with a JPEG SOI marker")
    if not data.endswith(b"\xff\xd9"):
        raise BadPicture("does not end with a JPEG EOI marker (truncated?)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise BadPicture(f"no JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > len(data):
            raise BadPicture(f"JPEG segment 0x{marker:02x} at byte {i} overruns the file")
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if length < 7:
                raise BadPicture("JPEG frame header too short")
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            if not width or not height:
                raise BadPicture(f"JPEG frame header says {width}x{height}")
            return width, height
        if marker == 0xDA:
            break
        i += 2 + length
    raise BadPicture("no JPEG frame header (SOF) before the image data")


def check_jpeg(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG that decodes; BadPicture otherwise. Blocking: a thread."""
    width, height = jpeg_dimensions(data)
    import av  # here: the CLI imports this module and need not pay for PyAV
    import av.error

    try:
        ctx = av.CodecContext.create("mjpeg", "r")
        frames = ctx.decode(av.Packet(data)) + ctx.decode(None)
    except (av.error.FFmpegError, ValueError) as exc:
        raise BadPicture(f"does not decode as a JPEG: {exc}") from None
    if len(frames) != 1:
        raise BadPicture(f"decodes to {len(frames)} pictures, not 1")
    got = (frames[0].width, frames[0].height)
    if got != (width, height):
        raise BadPicture(f"decodes to {got[0]}x{got[1]}, its header says {width}x{height}")
    return width, height


# --- records --------------------------------------------------------------------------


@dataclass(frozen=True)
class AlarmPicture:
    """An alarm's picture, as kept."""

    path: Path
    size: int  # bytes
    width: int
    height: int
    content_type: str
    mac: str  # the PUT's Mac-Identity ("" when absent)
    time: float  # platform clock
    puts: int = 1  # PUTs accepted for this alarm (a device retrying one it never heard of)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "content_type": self.content_type,
            "mac": self.mac,
            "time": self.time,
            "puts": self.puts,
        }


@dataclass
class Alarm:
    """One AlarmNotify as received; ``picture`` and ``session_id`` are filled in later."""

    index: int  # grows by one per alarm across the platform
    device_id: str
    channel: int
    type: int
    state: Literal["start", "end", "pulse"]
    desc: str
    timestamp: int  # the device's, epoch seconds
    received: float  # platform clock
    pic_name: str | None = None  # the upload slot handed out in the reply; None: no picture
    picture: AlarmPicture | None = None
    picture_error: str | None = None  # why the last PUT was refused
    session_id: str | None = None  # the policy's recording this alarm started or extended
    stale: bool = False  # too old when it arrived to start a recording

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "device": self.device_id,
            "channel": self.channel,
            "type": self.type,
            "state": self.state,
            "desc": self.desc,
            "timestamp": self.timestamp,
            "received": self.received,
            # A URL is offered for every start and pulse; a low battery has no picture.
            "picture_expected": self.pic_name is not None and self.type not in _NO_PICTURE,
            "picture": None if self.picture is None else self.picture.to_json(),
            "picture_error": self.picture_error,
            "session_id": self.session_id,
            "stale": self.stale,
        }


def _error(status: int, text: str) -> Response:
    return json_response(status, json.dumps({"info": text}).encode())


class AlarmStore:
    """Every device's recent alarms and their pictures."""

    def __init__(
        self,
        options: PlatformOptions,
        *,
        now: Callable[[], float],
        base_url: Callable[[], str],
        ticker: Ticker,
    ) -> None:
        self.options = options
        self.now = now
        self.base_url = base_url
        self.ticker = ticker
        self._alarms: dict[str, collections.deque[Alarm]] = {}
        self._slots: dict[str, Alarm] = {}  # picture slot name -> its alarm (kept ones only)
        self._next_index = 0
        self._listeners: list[Callable[[Alarm], None]] = []

    def subscribe(self, listener: Callable[[Alarm], None]) -> Callable[[], None]:
        """``listener(alarm)`` when an alarm arrives and when its picture does (the
        console's live list); returns the unsubscribe. It runs in the request: no blocking."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _changed(self, alarm: Alarm) -> None:
        self.ticker.notify()
        for listener in list(self._listeners):
            listener(alarm)

    @property
    def directory(self) -> Path:
        return self.options.state_dir / PICTURE_DIR

    def alarms(self, device_id: str | None = None) -> list[Alarm]:
        """Oldest first: one device's, or every device's in arrival order."""
        if device_id is not None:
            return list(self._alarms.get(device_id, ()))
        return sorted((a for q in self._alarms.values() for a in q), key=lambda a: a.index)

    def add(self, device_id: str, p: AlarmNotifyParams) -> Alarm:
        """Check and keep an AlarmNotify; RpcError(12) for one that breaks Table I.2-16."""
        if p.type in STATE_TYPES and p.state == "pulse":
            raise RpcError(
                Code.PARAM, f"params.state: type {p.type} is a state alarm: start or end, not pulse"
            )
        if p.type in PULSE_TYPES and p.state != "pulse":
            raise RpcError(
                Code.PARAM, f"params.state: type {p.type} is a single alarm: pulse, not {p.state}"
            )
        if p.type not in STATE_TYPES | PULSE_TYPES:
            raise RpcError(
                Code.PARAM, f"params.type: {p.type} is not an alarm type of Table I.2-16 (2 to 12)"
            )
        if not p.desc.strip():
            raise RpcError(Code.PARAM, "params.desc: must not be empty")
        alarm = Alarm(
            self._next_index, device_id, p.channel, p.type, p.state, p.desc, p.timestamp, self.now()
        )
        self._next_index += 1
        if self.options.alarm_pictures and p.state in ("start", "pulse"):
            alarm.pic_name = f"{alarm.index}-{secrets.token_hex(8)}"
            self._slots[alarm.pic_name] = alarm
        q = self._alarms.setdefault(device_id, collections.deque())
        q.append(alarm)
        while len(q) > self.options.alarm_keep:
            self._drop(q.popleft())
        self._changed(alarm)
        return alarm

    def _drop(self, alarm: Alarm) -> None:
        if alarm.pic_name is not None:
            self._slots.pop(alarm.pic_name, None)
            # The file name is ours (slot name), never the device's input.
            (self.directory / f"{alarm.pic_name}.jpg").unlink(missing_ok=True)

    def reply(self, alarm: Alarm) -> dict[str, Any]:
        """The AlarmNotify reply body."""
        if alarm.pic_name is None:
            return {}
        return {"pic_upload_url": f"{self.base_url()}{PIC_PREFIX}{alarm.pic_name}.jpg"}

    async def handle_put(self, req: Request) -> Response:
        """``PUT /alarm/pic/<name>.jpg``: an alarm's picture."""
        m = _SLOT.fullmatch(req.path.removeprefix(PIC_PREFIX))
        alarm = self._slots.get(m.group(1)) if m else None
        if alarm is None or alarm.pic_name is None:
            return _error(404, "no such picture slot (never handed out, or its alarm is gone)")
        if req.method != "PUT":
            r = _error(405, "PUT only")
            r.headers["allow"] = "PUT"
            return r
        name = alarm.pic_name
        ctype = req.headers.get("content-type", "")
        if ctype.partition(";")[0].strip().lower() != "image/jpeg":
            return self._refuse(alarm, 415, f"Content-Type must be image/jpeg, not {ctype[:64]!r}")
        if len(req.body) > self.options.alarm_picture_max_bytes:
            return self._refuse(
                alarm,
                413,
                f"{len(req.body)} bytes is over the limit of "
                f"{self.options.alarm_picture_max_bytes}",
            )
        try:
            width, height = await asyncio.to_thread(check_jpeg, req.body)
        except BadPicture as exc:
            return self._refuse(alarm, 400, f"not a JPEG picture: {exc}")
        path = self.directory / f"{name}.jpg"
        await asyncio.to_thread(_store, path, req.body)
        if self._slots.get(name) is not alarm:  # dropped while we wrote
            path.unlink(missing_ok=True)
            return _error(404, "the alarm was dropped during the upload")
        puts = alarm.picture.puts + 1 if alarm.picture else 1
        alarm.picture = AlarmPicture(
            path,
            len(req.body),
            width,
            height,
            ctype[:64],
            req.headers.get("mac-identity", "")[:64],
            self.now(),
            puts,
        )
        alarm.picture_error = None
        self._changed(alarm)
        log.info(
            "alarm %d (%s ch%d type %d): picture %dx%d, %d bytes",
            alarm.index,
            alarm.device_id,
            alarm.channel,
            alarm.type,
            width,
            height,
            len(req.body),
        )
        return Response(200, b"")

    def _refuse(self, alarm: Alarm, status: int, why: str) -> Response:
        alarm.picture_error = why
        log.warning(
            "alarm %d (%s): picture refused (%d): %s", alarm.index, alarm.device_id, status, why
        )
        self.ticker.notify()
        return _error(status, why)

    async def wait_alarm(
        self,
        device_id: str,
        *,
        type: int | None = None,
        state: str | None = None,
        channel: int | None = None,
        picture: bool = False,
        timeout: float = 10.0,
    ) -> Alarm:
        def matches(a: Alarm) -> bool:
            return (
                (type is None or a.type == type)
                and (state is None or a.state == state)
                and (channel is None or a.channel == channel)
                and (not picture or a.picture is not None)
            )

        def check() -> Alarm | None:
            return next((a for a in self._alarms.get(device_id, ()) if matches(a)), None)

        what = f"no alarm of {device_id} (type {type}, state {state}, channel {channel}" + (
            ", with its picture)" if picture else ")"
        )
        found: Alarm = await self.ticker.wait_for(check, timeout, what)
        return found


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, data, 0o644)
