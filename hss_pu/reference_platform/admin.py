"""The platform's admin API: what a person (``hss-pu platform call``) uses to drive devices.

Plain HTTP on loopback, guarded by a bearer token that only the owner of platform.json
(mode 0600) can read: anyone else on the host could otherwise reboot the camera.

- ``GET /admin/devices`` -> ``{"devices": [{"id", "online", "peer", "since", "login",
  "last_keepalive", "last_keepalive_time", "battery", "battery_time"}]}``, every
  configured or connected id (``battery``: its last BatteryChange, or null).
- ``POST /admin/call`` ``{"device", "method", "params"?, "timeout"?}`` -> 200 ``{"resp": {}}``
  or 200 ``{"err": {"code", "msg"}}`` (the device answered); 404 offline, 504 no answer in
  time, 502 the session ended first.
- ``POST /admin/event`` ``{"device", "event", "params"?}`` -> 200 ``{}``; 404 offline.
- ``POST /admin/kick`` ``{"device"}`` -> 200 ``{}`` (also when it was offline).
- ``GET /admin/records?device=ID&since=N`` -> ``{"records": [...], "next": N}``; ``since``
  is a record ``index`` (the first one wanted), ``next`` the one to ask for next time.
- ``GET /admin/vr/segments?channel=N&last=K`` -> ``{"segments": [...]}``: saved Vr
  segments (``VrSegment.to_json``), by channel then save order; ``last``: the K most
  recent of each channel.
- ``POST /admin/play`` ``{"device", "channel"?, "name"?}`` -> 200 ``{"url"}``: PlayVideo of
  the platform's clip ``name`` (default ``tone-5s.m4a``; see reference_platform.media);
  404 no such clip or device offline. CtrlVideo and QueryVideoStatus go through
  ``/admin/event`` and ``/admin/call``.
- ``POST /admin/firmware`` ``{"path"}`` -> 200 ``{"name", "url"}``: copy the bundle file
  at ``path`` (absolute, on the platform's host) into the platform's store and say where
  devices download it (``/firmware/<name>`` on the HTTPS port, Range served; see
  reference_platform.firmware); 400 not an absolute path to a regular file.
- ``GET /admin/firmware/requests?name=NAME&last=K`` -> ``{"requests": [...]}``: the
  downloads of bundles (``FirmwareRequest.to_json``: Range asked, status, bytes sent,
  complete), oldest first; ``name``: of that bundle only; ``last``: the K most recent.
- ``GET /admin/sleeping`` -> ``{"sleeping": [{"id", "peer", "since", "heartbeats",
  "last_heartbeat_age"}]}``: devices hibernating on the hibernation server.
- ``POST /admin/wake`` ``{"device", "wait"?}`` -> 200 ``{"seconds"}``: TOWAKEUP, then
  (unless ``wait`` is 0) up to ``wait`` s (default 20) for the Vd login; 404 not asleep,
  504 not back in time. ``/admin/call`` of PushLive, StartRecord, Snapshot or KeepAwaken
  wakes a sleeping device first.
- ``GET /admin/alarms?device=ID&last=K`` -> ``{"alarms": [...]}``: the alarms devices sent
  (``Alarm.to_json``), oldest first, each with its picture (path, size, dimensions) and
  ``recording``: the alarm policy's recording it belongs to (``AlarmRecording.to_json``
  plus ``segments``, its saved Vr segments), or null; ``last``: the K most recent.
- ``POST /admin/logs`` ``{"device", "minutes"?}`` -> ``{"done": LogDone params, "path",
  "size", "text"}``: LogUploadAsync of the device's last ``minutes`` (default 60) and
  what arrived (``text`` only up to 64 KiB; ``path`` the platform's copy); 404 offline,
  502 refused or failed, 504 no LogDone in time.

Every failure is ``{"info": TEXT}`` (wire-notes' error body); 401 without the token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hss_pu.reference_platform.web import Request, Response, json_response

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hss_pu.reference_platform.alarms import AlarmStore
    from hss_pu.reference_platform.firmware import FirmwareStore
    from hss_pu.reference_platform.hibernation import HibernationServer
    from hss_pu.reference_platform.policy import AlarmPolicy
    from hss_pu.reference_platform.vd import VdServer
    from hss_pu.reference_platform.vr import VrSegment, VrServer
    from hss_pu.wire.vd import Reply

    Call = Callable[[str, str, Mapping[str, Any] | None, float | None], Awaitable[Reply]]

__all__ = ["MAX_CALL_TIMEOUT", "AdminApi"]

log = logging.getLogger("hss_pu.platform.admin")

MAX_CALL_TIMEOUT = 600.0
MAX_LOG_TEXT = 64 * 1024  # a log shown inline by /admin/logs; larger ones by path


class _BadRequest(Exception):
    pass


def _json(status: int, body: Any) -> Response:
    return json_response(status, json.dumps(body).encode())


def _info(status: int, text: str) -> Response:
    return _json(status, {"info": text})


def _body(req: Request) -> dict[str, Any]:
    try:
        body = json.loads(req.body or b"{}")
    except ValueError as exc:
        raise _BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("body is not a JSON object")
    return body


def _str(body: dict[str, Any], *keys: str) -> str:
    for key in keys:
        v = body.get(key)
        if isinstance(v, str) and v:
            return v
    raise _BadRequest(f"{keys[0]} missing or not a non-empty string")


def _last(q: dict[str, str]) -> int:
    """``?last=K``: the K most recent (0, the default: all)."""
    try:
        last = int(q.get("last", "0"))
    except ValueError:
        raise _BadRequest("last must be an integer") from None
    if last < 0:
        raise _BadRequest("last must be >= 0")
    return last


def _params(body: dict[str, Any]) -> dict[str, Any] | None:
    p = body.get("params")
    if p is not None and not isinstance(p, dict):
        raise _BadRequest("params is not a JSON object")
    return p


class AdminApi:
    """Routes admin requests to the Vd sessions (calls, events, records), Vr's saved
    segments and the alarms."""

    def __init__(
        self,
        vd: VdServer,
        vr: VrServer,
        token: str,
        alarms: AlarmStore | None = None,
        policy: AlarmPolicy | None = None,
        *,
        # (device, minutes, timeout) -> (LogDone params, the upload or None).
        logs: Callable[[str, float, float], Awaitable[tuple[dict[str, Any], Any]]] | None = None,
        play: Callable[[str, int, str], Awaitable[str]] | None = None,
        call: Call | None = None,
        hibernation: HibernationServer | None = None,
        wake: Callable[..., Awaitable[float]] | None = None,
        firmware: FirmwareStore | None = None,
    ) -> None:
        self.firmware = firmware
        self.logs = logs
        self.play = play  # (device, channel, clip name) -> the URL sent; LookupError
        self.vd = vd
        self.call = call or vd.call  # the platform's: it wakes a sleeping device first
        self.hibernation = hibernation
        self.wake = wake
        self.vr = vr
        self.alarms = alarms
        self.policy = policy
        self._token = f"Bearer {token}".encode()

    def _authorized(self, req: Request) -> bool:
        given = req.headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._token)

    async def handle(self, req: Request) -> Response:
        if not self._authorized(req):
            r = _info(401, "missing or wrong bearer token (see platform.json)")
            r.headers["www-authenticate"] = "Bearer"
            return r
        routes = {
            "/admin/devices": ("GET", self._devices),
            "/admin/records": ("GET", self._records),
            "/admin/call": ("POST", self._call),
            "/admin/event": ("POST", self._event),
            "/admin/kick": ("POST", self._kick),
            "/admin/vr/segments": ("GET", self._vr_segments),
            "/admin/alarms": ("GET", self._alarms),
            "/admin/logs": ("POST", self._fetch_logs),
            "/admin/play": ("POST", self._play),
            "/admin/sleeping": ("GET", self._sleeping),
            "/admin/wake": ("POST", self._wake),
            "/admin/firmware": ("POST", self._add_firmware),
            "/admin/firmware/requests": ("GET", self._firmware_requests),
        }
        route = routes.get(req.path)
        if route is None:
            return _info(404, "no such endpoint")
        method, handler = route
        if req.method != method:
            return _info(405, f"{method} only")
        try:
            return await handler(req)
        except _BadRequest as exc:
            return _info(400, str(exc))

    async def _devices(self, req: Request) -> Response:
        p = self.vd
        ids = sorted(set(p.options.devices) | set(p.online_ids()))
        devices = []
        for i in ids:
            info = p.session_info(i) or {}
            devices.append(
                {
                    "id": i,
                    "online": p.online(i),
                    "peer": info.get("peer"),
                    "since": info.get("since"),
                    "login": info.get("login"),
                    "last_keepalive": p.last_keepalive(i),
                    "last_keepalive_time": p.last_keepalive_time(i),
                    "battery": p.battery(i),
                    "battery_time": p.battery_time(i),
                    "sleeping": bool(self.hibernation and self.hibernation.is_sleeping(i)),
                }
            )
        return _json(200, {"devices": devices})

    async def _records(self, req: Request) -> Response:
        q = req.query
        device = q.get("device") or None
        try:
            since = int(q.get("since", "0"))
        except ValueError:
            raise _BadRequest("since is not an integer") from None
        recs = [
            dataclasses.asdict(r)
            for r in list(self.vd.records)
            if r.index >= since and (device is None or r.device_id == device)
        ]
        last = self.vd.records[-1].index + 1 if self.vd.records else since
        return _json(200, {"records": recs, "next": max(last, since)})

    async def _call(self, req: Request) -> Response:
        body = _body(req)
        device = _str(body, "device")
        method = _str(body, "method")
        params = _params(body)
        timeout = body.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_CALL_TIMEOUT
        ):
            raise _BadRequest(f"timeout must be a number in (0, {MAX_CALL_TIMEOUT:g}]")
        log.info("admin: call %s %s", device, method)
        try:
            reply = await self.call(device, method, params, timeout)
        except LookupError as exc:
            return _info(404, str(exc))
        except TimeoutError as exc:
            return _info(504, str(exc))
        except (ConnectionError, RuntimeError) as exc:
            return _info(502, str(exc))
        if reply.err is not None:
            return _json(200, {"err": {"code": reply.err.code, "msg": reply.err.msg}})
        return _json(200, {"resp": reply.resp or {}})

    async def _event(self, req: Request) -> Response:
        body = _body(req)
        device = _str(body, "device")
        name = _str(body, "event", "name")
        log.info("admin: event %s %s", device, name)
        try:
            await self.vd.send_event(device, name, _params(body))
        except LookupError as exc:
            return _info(404, str(exc))
        except ConnectionError as exc:
            return _info(502, str(exc))
        return _json(200, {})

    async def _kick(self, req: Request) -> Response:
        device = _str(_body(req), "device")
        log.info("admin: kick %s", device)
        await self.vd.kick(device)
        return _json(200, {})

    async def _play(self, req: Request) -> Response:
        body = _body(req)
        device = _str(body, "device")
        channel = body.get("channel", 0)
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= 15:
            raise _BadRequest("channel must be an integer in [0, 15]")
        name = body.get("name", "tone-5s.m4a")
        if not isinstance(name, str) or not name:
            raise _BadRequest("name must be a non-empty string")
        if self.play is None:
            return _info(404, "this platform serves no media")
        log.info("admin: play %s on %s ch%d", name, device, channel)
        try:
            url = await self.play(device, channel, name)
        except LookupError as exc:
            return _info(404, str(exc))
        except ConnectionError as exc:
            return _info(502, str(exc))
        return _json(200, {"url": url})

    async def _sleeping(self, req: Request) -> Response:
        return _json(200, {"sleeping": self.hibernation.sleeping() if self.hibernation else []})

    async def _wake(self, req: Request) -> Response:
        body = _body(req)
        device = _str(body, "device")
        wait = body.get("wait", 20)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 600:
            raise _BadRequest("wait must be a number of seconds in [0, 600]")
        if self.wake is None:
            return _info(404, "this platform runs no hibernation server")
        log.info("admin: wake %s", device)
        try:
            seconds = await self.wake(device, wait=wait or None)
        except LookupError as exc:
            return _info(404, str(exc))
        except TimeoutError as exc:
            return _info(504, str(exc))
        except ConnectionError as exc:
            return _info(502, str(exc))
        return _json(200, {"seconds": round(seconds, 3)})

    async def _add_firmware(self, req: Request) -> Response:
        path = _str(_body(req), "path")
        if not path.startswith("/"):
            raise _BadRequest(
                "path must be absolute (the platform's working directory is not yours)"
            )
        if self.firmware is None:
            return _info(404, "this platform serves no firmware")
        try:
            name = await asyncio.to_thread(self.firmware.add, Path(path))
        except (OSError, ValueError) as exc:
            raise _BadRequest(f"cannot add {path}: {exc}") from None
        log.info("admin: firmware %s added as %s", path, name)
        return _json(200, {"name": name, "url": self.firmware.url_for(name)})

    async def _firmware_requests(self, req: Request) -> Response:
        q = req.query
        last = _last(q)
        reqs = list(self.firmware.requests) if self.firmware else []
        if q.get("name"):
            reqs = [r for r in reqs if r.name == q["name"]]
        return _json(200, {"requests": [r.to_json() for r in (reqs[-last:] if last else reqs)]})

    async def _vr_segments(self, req: Request) -> Response:
        q = req.query
        try:
            channel = int(q["channel"]) if q.get("channel") else None
        except ValueError:
            raise _BadRequest("channel must be an integer") from None
        last = _last(q)
        by_channel = self.vr.segments
        channels = sorted(by_channel) if channel is None else [channel]
        segs = []
        for ch in channels:
            saved = list(by_channel.get(ch, ()))
            segs += [s.to_json() for s in (saved[-last:] if last else saved)]
        return _json(200, {"segments": segs})

    async def _alarms(self, req: Request) -> Response:
        q = req.query
        last = _last(q)
        alarms = self.alarms.alarms(q.get("device") or None) if self.alarms else []
        out = []
        for a in alarms[-last:] if last else alarms:
            j = a.to_json()
            rec = self.policy.recording(a.session_id) if self.policy and a.session_id else None
            j["recording"] = None if rec is None else {
                **rec.to_json(),
                "segments": [_segment(s) for s in self.vr.session_segments(rec.session_id)],
            }  # fmt: skip
            out.append(j)
        return _json(200, {"alarms": out})

    async def _fetch_logs(self, req: Request) -> Response:
        body = _body(req)
        device = _str(body, "device")
        minutes = body.get("minutes", 60)
        if (
            isinstance(minutes, bool)
            or not isinstance(minutes, int | float)
            or not (0 < minutes <= 7 * 24 * 60)
        ):
            raise _BadRequest("minutes must be a number in (0, 10080]")
        if self.logs is None:
            return _info(404, "this platform keeps no log uploads")
        log.info("admin: logs of %s (%g min)", device, minutes)
        try:
            done, up = await self.logs(device, float(minutes), 30.0)
        except LookupError as exc:
            return _info(404, str(exc))
        except TimeoutError:
            return _info(504, "no LogDone in time")
        except (RuntimeError, ConnectionError) as exc:
            return _info(502, str(exc))
        if up is None:
            return _json(502, {"info": f"the device's upload failed: {done.get('reason')}",
                               "done": done})  # fmt: skip
        text = up.body.decode("utf-8", "replace") if len(up.body) <= MAX_LOG_TEXT else None
        return _json(200, {"done": done, "path": str(up.path), "size": len(up.body), "text": text})


def _segment(s: VrSegment) -> dict[str, Any]:
    """A recording's segment, in short: where it is and what it holds."""
    check = s.check
    return {
        "name": s.name,
        "start": s.start,
        "duration": s.duration,
        "size": s.size,
        "path": str(s.path),
        "ok": None if check is None else check.ok,
    }
