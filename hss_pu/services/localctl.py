"""Local control socket: ``hss-pu bind``, ``status`` and ``sensor`` talk to the running daemon.

A Unix socket in storage.dir, mode 0600: only the daemon's user (and root) can use it, so
it needs no authentication of its own. One JSON object per line each way.

The CLI imports this module for :func:`send_command`, a blocking client; asyncio is
imported by the server's methods only, so a quick command does not pay for it (about a
third of ``hss-pu status``'s start-up).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hss_pu.errors import DeviceError

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "SENSOR_ACTIONS",
    "SOCKET_NAME",
    "LocalControl",
    "SensorDriver",
    "send_command",
    "sensor_command",
]

log = logging.getLogger("hss_pu.localctl")

SOCKET_NAME = "control.sock"
MAX_LINE = 4096  # a request
MAX_REPLY = 1 << 20  # what the client reads (a status reply grows with channels)

Command = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# ``hss-pu sensor NAME ACTION [--channel N]``: (action, channel or None) -> the reply;
# a DeviceError is the refusal the person sees.
SensorDriver = Callable[[str, int | None], Awaitable[dict[str, Any]]]
SENSOR_ACTIONS = ("on", "off", "press")


def sensor_command(drivers: Mapping[str, SensorDriver]) -> Command:
    """The ``sensor`` command over a table NAME -> driver (the board's emulated inputs,
    the emulated camera's ``motion``...). The table is read at each request, so an entry
    added after start-up is there."""

    async def sensor(req: dict[str, Any]) -> dict[str, Any]:
        name, action, channel = req.get("name"), req.get("action"), req.get("channel")
        if not isinstance(name, str) or action not in SENSOR_ACTIONS:
            return {"ok": False, "error": f"expected a sensor name and {'|'.join(SENSOR_ACTIONS)}"}
        if channel is not None and (
            not isinstance(channel, int) or isinstance(channel, bool) or not 0 <= channel <= 15
        ):
            return {"ok": False, "error": "channel must be an integer 0..15"}
        driver = drivers.get(name)
        if driver is None:
            have = ", ".join(sorted(drivers)) or "none"
            return {"ok": False, "error": f"no sensor {name!r} on this device (have: {have})"}
        try:
            return await driver(action, channel)
        except DeviceError as exc:
            return {"ok": False, "error": str(exc)}

    return sensor


class LocalControl:
    def __init__(self, directory: Path | str, commands: dict[str, Command]) -> None:
        self.path = Path(directory) / SOCKET_NAME
        self.commands = commands
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        import asyncio

        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed daemon
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        import asyncio

        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio

        try:
            async with asyncio.timeout(10):
                line = await reader.readline()
                reply = await self._handle(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError) as exc:
            log.debug("control socket client dropped: %s", exc)
        finally:
            writer.close()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": 'expected {"cmd": ...}'}
        cmd = self.commands.get(req["cmd"])
        if cmd is None:
            return {"ok": False, "error": f"unknown command {req['cmd']!r}"}
        try:
            return await cmd(req)
        except Exception as exc:
            log.exception("control command %s failed", req["cmd"])
            return {"ok": False, "error": str(exc)}


def send_command(
    directory: Path | str, request: dict[str, Any], timeout: float = 10.0
) -> dict[str, Any]:
    """Client side, for the CLI. Blocking and asyncio-free: ``hss-pu status`` starts in a
    fraction of the time. OSError (TimeoutError included) when no daemon answers there,
    ValueError for a reply that is not one JSON object line."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(Path(directory) / SOCKET_NAME))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            if len(buf) > MAX_REPLY:
                raise ValueError(f"reply longer than {MAX_REPLY} bytes")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply within {timeout:g} s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(bytes(buf).partition(b"\n")[0] or b"{}")
    if not isinstance(reply, dict):
        raise ValueError("bad reply from the daemon")
    return reply
