"""The console's devices: their state (live over SSE), the controls, emulated sensors.

- ``GET /console/api/devices`` -> ``{"devices": [Device]}`` (docs: CONSOLE.md).
- ``GET /console/api/events``: Server-Sent Events. ``event: device`` with a Device when
  anything about it changes (login, logout, Keepalive, BatteryChange, its sensors learnt),
  ``event: alarm`` with an Alarm (:func:`.alarms.alarm_json`, as the alarm list has it)
  when one arrives and again when its picture does. Each
  client's queue is bounded; a client that falls behind is cut off (its EventSource comes
  back and starts from a fresh list) rather than buffered without limit.
- ``POST /console/api/devices/{id}/call`` ``{"method", "params"}`` -> ``{"resp": ...}`` or
  ``{"err": {"code", "msg"}}``, the device's own answer, for :data:`ALLOWED` methods only.
  The console fills in what a person cannot know (Snapshot's upload URL, StartRecord's
  session and Vr callback, StopRecord's session from the Keepalive, an UpgradeFirmware
  bundle's URL and model); every request is checked against the wire types before it goes.
- ``POST /console/api/devices/{id}/sensor`` ``{"name", "action", "channel"?, "percent"?}``
  -> ``{}``: ``hss-pu sensor NAME ACTION`` (or ``hss-pu battery PERCENT`` for ``battery``)
  through the daemon's control socket, for a device whose socket directory the platform
  was told (``PlatformOptions.device_sockets``); 404 for any other.
- ``GET /console/api/snapshots/{name}``: a picture a console Snapshot uploaded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from hss_pu.reference_platform.console.alarms import alarm_json
from hss_pu.reference_platform.policy import SEG_MAX_COUNT, SEG_MAX_SIZE
from hss_pu.services.localctl import SENSOR_ACTIONS, send_command
from hss_pu.wire.vd import MESSAGES, RpcError, decode_params

if TYPE_CHECKING:
    from hss_pu.reference_platform.alarms import Alarm
    from hss_pu.reference_platform.server import ReferencePlatform

__all__ = ["ALLOWED", "HUB", "DeviceHub", "add_routes", "device_json"]

log = logging.getLogger("hss_pu.platform.console")

# What a person may ask of a device from the console. Left out on purpose: PushLive and
# StopLive (the live relay owns them), Settime, LogUploadAsync, FormatDisk, ResetConfig.
ALLOWED = frozenset(
    {
        "Snapshot", "StartRecord", "StopRecord", "CtrlPTZ", "GetPTZPresetList",
        "GetConfig", "SetConfig", "GetCap", "DevStatus", "QueryUpgrade", "QueryTime",
        "QueryVideoStatus", "GetDiskInfo", "KeepAwaken", "RebootDevice", "RebootChannel",
        "UpgradeFirmware",
    }
)  # fmt: skip

MAX_CLIENT_EVENTS = 256  # queued per SSE client ...
MAX_CLIENT_BYTES = 1 << 20  # ... and bytes: beyond either, the client is cut off
PING_SECONDS = 15.0  # an SSE comment this often: proxies keep the stream, dead peers show
WRITE_TIMEOUT = 10.0  # a client that takes no bytes for this long is cut off
COALESCE_SECONDS = 0.05  # changes within this are published together
MAX_PENDING_ALARMS = 1000
SENSOR_TIMEOUT = 5.0  # the daemon's control socket
KEEP_SNAPSHOTS = 50  # console snapshots kept in the platform's uploads directory

_SNAPSHOT = re.compile(r"console-snap-[0-9a-f]{16}\.jpg")


class _BadRequest(Exception):
    pass


def _info(status: int, text: str) -> web.Response:
    return web.json_response({"info": text}, status=status)


# --- what the console shows ------------------------------------------------------------


def device_json(
    platform: ReferencePlatform,
    device_id: str,
    *,
    models: dict[str, tuple[str, str]],
    sensors: list[str],
) -> dict[str, Any]:
    """A Device of the console API from what the platform knows (``models``: the
    hardware and firmware models of each device's latest login)."""
    info = platform.session_info(device_id)
    ka = platform.last_keepalive(device_id) or {}
    ka_time = platform.last_keepalive_time(device_id)
    battery = platform.battery(device_id)
    battery_time = platform.battery_time(device_id)
    hardware, firmware = models.get(device_id, (None, None))
    channels = []
    for c in ka.get("channels") or []:
        if isinstance(c, dict):
            channels.append(
                {
                    "channel": c.get("channel"),
                    "state": c.get("state"),
                    "alarm": c.get("alarm") or 0,
                    "stream_id": c.get("stream_id"),
                    "record_session": c.get("record_session"),
                }
            )
    since: float | None = info["since"] if info else None
    seen = [t for t in (ka_time, battery_time, since) if t is not None]
    hibernation = platform.hibernation
    return {
        "id": device_id,
        "online": info is not None,
        "since": since,
        "last_seen": max(seen) if seen else None,
        "hardware_model": hardware,
        "firmware_model": firmware,
        "battery": None if battery is None else {"battery": battery, "time": battery_time},
        "state": ka.get("state"),
        "channels": channels,
        "alarms_active": any(c["alarm"] for c in channels),
        "sleeping": bool(hibernation and hibernation.is_sleeping(device_id)),
        "sensors": sensors,
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# --- the live feed ----------------------------------------------------------------------


@dataclass(eq=False)
class _Client:
    """One SSE stream's queue, bounded in events and bytes."""

    queue: collections.deque[bytes] = field(default_factory=collections.deque)
    size: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    cut: bool = False

    def put(self, data: bytes) -> None:
        if self.cut:
            return
        if len(self.queue) >= MAX_CLIENT_EVENTS or self.size + len(data) > MAX_CLIENT_BYTES:
            log.warning("console: an event stream fell behind: cut off (it will reconnect)")
            self.cut = True
            self.queue.clear()
            self.size = 0
        else:
            self.queue.append(data)
            self.size += len(data)
        self.wake.set()

    def take(self) -> bytes:
        data = b"".join(self.queue)
        self.queue.clear()
        self.size = 0
        return data


class DeviceHub:
    """What the console knows of devices beyond the platform (their models while offline,
    their sensors) and the SSE clients it publishes changes to."""

    def __init__(self, platform: ReferencePlatform) -> None:
        self.platform = platform
        self._clients: set[_Client] = set()
        self._last: dict[str, dict[str, Any]] = {}  # the Device each client last got
        self._models: dict[str, tuple[str, str]] = {}
        # Device -> (the session start they were read for, its sensor buttons).
        self._sensors: dict[str, tuple[float, list[str]]] = {}
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._alarms: dict[int, Alarm] = {}  # changed since the last publish
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._snapshots: collections.deque[str] = collections.deque()
        # The alarms part's Alarm: one reads the same in the list and in the events.
        self._alarm_json = functools.partial(alarm_json, platform)
        self.closed = False
        for rec in platform.logins:  # the models of devices seen before the console
            if rec.accepted:
                self._remember(rec.device_id, rec.params)

    # lifecycle (aiohttp signals)

    async def start(self, app: web.Application) -> None:
        self.closed = False  # a platform's restart starts its app again
        self._unsubscribe = [
            self.platform.subscribe_devices(self._dirty.set),
            self.platform.alarm_store.subscribe(self._alarm_changed),
        ]
        self._task = asyncio.create_task(self._run(), name="console-devices")

    async def shutdown(self, app: web.Application) -> None:
        """Every event stream ends now, so the server's shutdown need not wait for them."""
        self.closed = True
        for c in self._clients:
            c.wake.set()

    async def cleanup(self, app: web.Application) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        tasks = [t for t in (self._task, *self._fetching.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # state

    def ids(self) -> list[str]:
        p = self.platform
        return sorted(set(p.options.devices) | set(p.online_ids()))

    def _remember(self, device_id: str, login: dict[str, str]) -> None:
        self._models[device_id] = (login.get("hardware_model", ""), login.get("firmware_model", ""))

    def device(self, device_id: str) -> dict[str, Any]:
        info = self.platform.session_info(device_id)
        if info is not None:
            self._remember(device_id, info["login"])
        known = self._sensors.get(device_id)
        sensors = known[1] if known and info and known[0] == info["since"] else []
        return device_json(self.platform, device_id, models=self._models, sensors=sensors)

    def devices(self) -> list[dict[str, Any]]:
        self._fetch_sensors()
        return [self.device(i) for i in self.ids()]

    async def settle(self, timeout: float = SENSOR_TIMEOUT) -> None:
        """Until the sensors of newly online devices are read (or ``timeout``)."""
        self._fetch_sensors()
        if self._fetching:
            await asyncio.wait(list(self._fetching.values()), timeout=timeout)

    # sensors: read from the daemon once per session

    def socket_dir(self, device_id: str) -> Path | None:
        d = self.platform.options.device_sockets.get(device_id)
        return None if d is None else Path(d)

    def _fetch_sensors(self) -> None:
        for device_id in self.platform.options.device_sockets:
            info = self.platform.session_info(device_id)
            known = self._sensors.get(device_id)
            if info is None or (known and known[0] == info["since"]):
                continue
            if device_id not in self._fetching:
                task = asyncio.create_task(self._read_sensors(device_id, info["since"]))
                self._fetching[device_id] = task

    async def _read_sensors(self, device_id: str, since: float) -> None:
        try:
            await self._ask_sensors(device_id, since)
        finally:
            self._fetching.pop(device_id, None)

    async def _ask_sensors(self, device_id: str, since: float) -> None:
        directory = self.socket_dir(device_id)
        assert directory is not None
        try:
            reply = await asyncio.to_thread(
                send_command, directory, {"cmd": "sensors"}, SENSOR_TIMEOUT
            )
        except (OSError, ValueError) as exc:
            log.warning("console: no sensors of %s from %s: %s", device_id, directory, exc)
            reply = {}
        names = reply.get("sensors") if reply.get("ok") else None
        sensors = sorted(n for n in names if isinstance(n, str)) if isinstance(names, list) else []
        if reply.get("battery") is True:
            sensors.append("battery")
        self._sensors[device_id] = (since, sensors)
        self._dirty.set()

    # publishing

    def _alarm_changed(self, alarm: Alarm) -> None:
        if len(self._alarms) < MAX_PENDING_ALARMS:
            self._alarms[alarm.index] = alarm
        self._dirty.set()

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                self._publish()
            except Exception:
                log.exception("console: publishing device changes failed")
            await asyncio.sleep(COALESCE_SECONDS)

    def _publish(self) -> None:
        alarms, self._alarms = self._alarms, {}
        if not self._clients:
            self._last.clear()  # the next client starts from a full list anyway
            return
        self._fetch_sensors()
        out = []
        for device_id in self.ids():
            d = self.device(device_id)
            if self._last.get(device_id) != d:
                self._last[device_id] = d
                out.append(_sse("device", d))
        out += [_sse("alarm", self._alarm_json(a)) for a in alarms.values()]
        for data in out:
            for c in self._clients:
                c.put(data)

    def join(self) -> _Client:
        """A new SSE client, its queue holding every device as it is now."""
        c = _Client()
        for d in self.devices():
            c.put(_sse("device", d))
        self._clients.add(c)
        return c

    def leave(self, c: _Client) -> None:
        self._clients.discard(c)

    def snapshot_taken(self, name: str) -> None:
        """Keep the last :data:`KEEP_SNAPSHOTS` console pictures; delete older ones."""
        self._snapshots.append(name)
        uploads = self.platform.options.state_dir / "uploads"
        while len(self._snapshots) > KEEP_SNAPSHOTS:
            (uploads / self._snapshots.popleft()).unlink(missing_ok=True)


HUB = web.AppKey("console_device_hub", DeviceHub)


# --- handlers ---------------------------------------------------------------------------


async def _devices(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await hub.settle()
    return web.json_response({"devices": hub.devices()})


async def _events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a reverse proxy must not hold events back
        }
    )
    await resp.prepare(request)
    await hub.settle()
    client = hub.join()
    try:
        await resp.write(b"retry: 1000\n\n")
        while not hub.closed and not client.cut:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.wake.wait(), PING_SECONDS)
            client.wake.clear()
            data = client.take() or b": ping\n\n"
            if hub.closed or client.cut:
                break
            await asyncio.wait_for(resp.write(data), WRITE_TIMEOUT)
    except (ConnectionError, TimeoutError) as exc:
        log.debug("console: event stream ended: %r", exc)
    finally:
        hub.leave(client)
    return resp


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise _BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("body is not a JSON object")
    return body


def _channel(params: dict[str, Any]) -> int:
    ch = params.get("channel", 0)
    if isinstance(ch, bool) or not isinstance(ch, int) or not 0 <= ch <= 15:
        raise _BadRequest("params.channel must be an integer 0..15")
    return ch


def _fill(
    hub: DeviceHub, device_id: str, method: str, params: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The request's params with what the console knows filled in, and the name of the
    snapshot it will upload (None for other methods)."""
    p = hub.platform
    if method == "Snapshot":
        name = f"console-snap-{secrets.token_hex(8)}.jpg"
        return {"channel": _channel(params), "url": p.upload_url(name)}, name
    if method == "StartRecord":
        ch = _channel(params)
        session = params.get("session_id") or f"console-{secrets.token_hex(4)}"
        query = urlencode({"session": session})
        return {
            "session_id": session,
            "channel": ch,
            "max_bitrate": 0,
            "seg_duration": p.options.alarm_seg_duration,
            "seg_max_size": SEG_MAX_SIZE,
            "seg_max_count": SEG_MAX_COUNT,
            "start_ts": p.now(),
            "cbk_url": f"{p.vr_cbk_url(ch)}?{query}",
            **{k: v for k, v in params.items() if k in ("seg_duration", "prerecord_seconds")},
        }, None
    if method == "StopRecord" and "session_id" not in params:
        ch = _channel(params)
        sessions = [
            c.get("record_session")
            for c in (p.last_keepalive(device_id) or {}).get("channels") or []
            if isinstance(c, dict) and c.get("channel") == ch
        ]
        if not sessions or not sessions[0]:
            raise _BadRequest(f"channel {ch} is not recording (its last Keepalive says so)")
        return {"session_id": sessions[0], "channel": ch}, None
    if method == "UpgradeFirmware" and "bundle" in params:
        name = params["bundle"]
        path = p.firmware.path_for(name) if isinstance(name, str) else None
        if path is None:
            raise _BadRequest(f"no bundle {name!r} in the platform's firmware store")
        from hss_pu.reference_platform.upgrade import UpgradeCommandError, bundle_model

        try:
            model = bundle_model(path)
        except UpgradeCommandError as exc:
            raise _BadRequest(str(exc)) from None
        return {"firmware_model": model, "url": p.firmware.url_for(name)}, None
    return params, None


async def _call(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    device_id = request.match_info["id"]
    try:
        body = await _json_body(request)
        method = body.get("method")
        if not isinstance(method, str) or method not in ALLOWED:
            allowed = ", ".join(sorted(ALLOWED))
            raise _BadRequest(f"method {str(method)[:64]!r} is not one of {allowed}")
        params = body.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise _BadRequest("params is not a JSON object")
        params, snapshot = _fill(hub, device_id, method, params)
        spec = MESSAGES[method]
        try:
            decode_params(method, params if spec.params is not None else None)
        except RpcError as exc:
            raise _BadRequest(f"{method}: {exc.msg}") from None
    except _BadRequest as exc:
        return _info(400, str(exc))
    wire = params if spec.params is not None else None
    log.info("console: %s %s", device_id, method)
    try:
        if spec.kind == "event":
            await hub.platform.send_event(device_id, method, wire)
            return web.json_response({"resp": {}, "event": True})
        reply = await hub.platform.call(device_id, method, wire)
    except LookupError as exc:
        return _info(404, str(exc) or f"device {device_id} is offline")
    except TimeoutError:
        return _info(504, f"{device_id} did not answer {method} in time")
    except (ConnectionError, RuntimeError) as exc:
        return _info(502, str(exc) or f"{device_id}'s session ended before its answer")
    if reply.err is not None:
        return web.json_response({"err": {"code": reply.err.code, "msg": reply.err.msg}})
    out: dict[str, Any] = {"resp": reply.resp or {}}
    if method == "StartRecord":
        out["session_id"] = params["session_id"]
    if snapshot is not None:
        hub.snapshot_taken(snapshot)
        out["picture"] = f"/console/api/snapshots/{snapshot}"
    return web.json_response(out)


async def _sensor(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    device_id = request.match_info["id"]
    directory = hub.socket_dir(device_id)
    if directory is None:
        return _info(404, f"{device_id} has no emulated sensors this platform can reach")
    try:
        body = await _json_body(request)
        name, action = body.get("name"), body.get("action")
        if not isinstance(name, str) or not name:
            raise _BadRequest("name must be a sensor name")
        if name == "battery":
            percent = body.get("percent")
            if (
                isinstance(percent, bool)
                or not isinstance(percent, int | float)
                or not 0 <= percent <= 100
            ):
                raise _BadRequest("percent must be a number 0..100")
            cmd: dict[str, Any] = {"cmd": "battery", "percent": percent, "charging": None}
        else:
            if action not in SENSOR_ACTIONS:
                raise _BadRequest(f"action must be one of {', '.join(SENSOR_ACTIONS)}")
            channel = body.get("channel")
            if channel is not None:
                channel = _channel(body)
            cmd = {"cmd": "sensor", "name": name, "action": action, "channel": channel}
    except _BadRequest as exc:
        return _info(400, str(exc))
    log.info("console: %s sensor %s %s", device_id, name, action or "")
    try:
        reply = await asyncio.to_thread(send_command, directory, cmd, SENSOR_TIMEOUT)
    except (OSError, ValueError) as exc:
        return _info(502, f"no daemon answers at {directory}: {exc}")
    if not reply.get("ok"):
        return _info(400, str(reply.get("error") or "refused"))
    return web.json_response({})


async def _snapshot(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    hub = request.app[HUB]
    path = hub.platform.options.state_dir / "uploads" / name
    if not _SNAPSHOT.fullmatch(name) or not await asyncio.to_thread(path.is_file):
        return _info(404, "no such snapshot")
    return web.FileResponse(path, headers={"Content-Type": "image/jpeg"})


def add_routes(app: web.Application, platform: ReferencePlatform) -> None:
    hub = DeviceHub(platform)
    app[HUB] = hub
    app.on_startup.append(hub.start)
    app.on_shutdown.append(hub.shutdown)
    app.on_cleanup.append(hub.cleanup)
    app.router.add_get("/console/api/devices", _devices)
    app.router.add_get("/console/api/events", _events)
    app.router.add_post("/console/api/devices/{id}/call", _call)
    app.router.add_post("/console/api/devices/{id}/sensor", _sensor)
    app.router.add_get("/console/api/snapshots/{name}", _snapshot)
