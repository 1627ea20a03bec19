"""The console's alarms: the list, each with its picture and a link to the recording at
its moment.

- ``GET /console/api/alarms?device=ID&last=K`` -> ``{"alarms": [Alarm]}``, newest last;
  Alarm = ``{"id", "device", "time", "received", "type", "kind", "desc", "channel",
  "state", "picture", "recording"}``. ``time`` is the alarm's own (AlarmNotify
  ``timestamp``, the device's synchronised clock, the one its Vr segments are stamped
  with); ``picture`` a URL under /console/api/pictures/ once the device's upload passed
  the platform's JPEG check, else null; ``recording`` ``{"device", "channel", "at"}``
  when a recording holds that moment (the one the alarm policy started for it, or a
  saved segment of the channel), else null: the page plays the channel's playlist there.
- ``GET /console/api/pictures/{slot}.jpg``: the picture. Only the platform's own upload
  slots are served: the name is looked up among the kept alarms, the path taken from
  the record.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web

from hss_pu.reference_platform.console.recordings import device_segments
from hss_pu.reference_platform.console.timeline import GAP_TOLERANCE
from hss_pu.wire.alarms import ALARM_KINDS

if TYPE_CHECKING:
    from hss_pu.reference_platform.alarms import Alarm
    from hss_pu.reference_platform.server import ReferencePlatform

__all__ = ["PICTURES", "PREFIX", "add_routes", "alarm_json", "picture_url"]

PREFIX = "/console/api/alarms"
PICTURES = "/console/api/pictures"
MAX_LAST = 100_000
_SLOT = re.compile(r"([0-9]{1,12}-[0-9a-f]{16})\.jpg")  # AlarmStore's slot names
_KIND_OF_TYPE = {k.type: k.kind for k in ALARM_KINDS.values()}

# (device, channel) -> its saved segments' starts (sorted) and the furthest end so far.
_Spans = dict[tuple[str, int], tuple[list[float], list[float]]]


def _refuse(cls: type[web.HTTPException], info: str) -> NoReturn:
    raise cls(text=json.dumps({"info": info}), content_type="application/json")


def picture_url(alarm: Alarm) -> str | None:
    """Where the console serves the alarm's picture; None until one has arrived."""
    if alarm.picture is None or alarm.pic_name is None:
        return None
    return f"{PICTURES}/{alarm.pic_name}.jpg"


def alarm_json(
    platform: ReferencePlatform, alarm: Alarm, spans: _Spans | None = None
) -> dict[str, Any]:
    """The console's Alarm (``spans``: a cache of segment spans shared across a list)."""
    return {
        "id": alarm.index,
        "device": alarm.device_id,
        "time": alarm.timestamp,
        "received": alarm.received,
        "type": alarm.type,
        "kind": _KIND_OF_TYPE.get(alarm.type),
        "desc": alarm.desc,
        "channel": alarm.channel,
        "state": alarm.state,
        "picture": picture_url(alarm),
        "recording": _recording(platform, alarm, {} if spans is None else spans),
    }


def _recording(platform: ReferencePlatform, alarm: Alarm, spans: _Spans) -> dict[str, Any] | None:
    link = {"device": alarm.device_id, "channel": alarm.channel, "at": alarm.timestamp}
    if alarm.session_id is not None:
        rec = platform.alarm_policy.recording(alarm.session_id)
        if rec is not None and rec.state != "failed":
            return link
    key = (alarm.device_id, alarm.channel)
    if key not in spans:
        try:
            segs = sorted(device_segments(platform, *key), key=lambda s: s.start)
        except LookupError:
            segs = []
        spans[key] = (
            [s.start for s in segs],
            list(itertools.accumulate((s.end for s in segs), max)),
        )
    starts, reach = spans[key]
    # Some segment starting by the moment ends after it (within the gap tolerance).
    i = bisect.bisect_right(starts, alarm.timestamp + GAP_TOLERANCE) - 1
    return link if i >= 0 and reach[i] + GAP_TOLERANCE > alarm.timestamp else None


class Alarms:
    def __init__(self, platform: ReferencePlatform) -> None:
        self.platform = platform

    async def list(self, request: web.Request) -> web.Response:
        q = request.query
        device = q.get("device") or None
        last: int | None = None
        if "last" in q:
            text = q["last"]
            if not text.isdigit() or not 1 <= int(text) <= MAX_LAST:
                _refuse(web.HTTPBadRequest, f"last must be an integer in [1, {MAX_LAST}]")
            last = int(text)
        found = self.platform.alarms(device)
        if last is not None:
            found = found[-last:]
        spans: _Spans = {}
        return web.json_response(
            {"alarms": [alarm_json(self.platform, a, spans) for a in found]},
            headers={"Cache-Control": "no-store"},
        )

    async def picture(self, request: web.Request) -> web.FileResponse:
        m = _SLOT.fullmatch(request.match_info["name"])
        if m is None:
            _refuse(web.HTTPBadRequest, "not a picture name (<N>-<16 hex digits>.jpg)")
        alarm = next((a for a in self.platform.alarms() if a.pic_name == m.group(1)), None)
        pic = alarm.picture if alarm is not None else None
        if pic is None or not pic.path.is_file():
            _refuse(web.HTTPNotFound, "no such picture (never uploaded, or its alarm is gone)")
        return web.FileResponse(
            pic.path,
            headers={"Content-Type": "image/jpeg", "Cache-Control": "private, max-age=3600"},
        )


ALARMS = web.AppKey("console_alarms", Alarms)


def add_routes(app: web.Application, platform: ReferencePlatform) -> None:
    a = Alarms(platform)
    app[ALARMS] = a
    app.router.add_get(PREFIX, a.list)
    app.router.add_get(f"{PICTURES}/{{name:.*}}", a.picture)
