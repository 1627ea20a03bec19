"""systemd notification protocol (sd_notify) without libsystemd.

Type=notify lets systemd know when the daemon is really ready and, with
WatchdogSec=, restart it when the event loop hangs. Everything here is a no-op
when NOTIFY_SOCKET is unset (a laptop, a test run), and sending never raises:
the daemon must keep running even if systemd's socket has gone away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from types import TracebackType

__all__ = ["SdNotifier"]

log = logging.getLogger(__name__)

# A send that blocks this long means systemd is not draining its socket; give
# up rather than stall the event loop (the next ping will try again).
_SEND_TIMEOUT_S = 0.5


def _parse_address(raw: str) -> bytes | None:
    """Return the sockaddr_un path for NOTIFY_SOCKET, or None if unsupported.

    '@name' is an abstract socket: the kernel wants a leading NUL instead.
    Other forms (vsock:...) are not something a Pi or laptop daemon meets.
    """
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    return None


def _positive_int(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value > 0 else None


class SdNotifier:
    """Sends state changes and watchdog pings to the service manager."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self._address = _parse_address(address) if address else None
        if address and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not a supported address; not notifying", address)
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._closed = False
        # Log the first failure of a run of failures only: watchdog pings
        # every few seconds would otherwise flood the log.
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SdNotifier:
        env = os.environ if environ is None else environ
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_positive_int(env.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(env.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None and not self._closed

    def notify(self, **fields: str) -> bool:
        """Send KEY=value assignments in one datagram; True if it was sent.

        Raises ValueError for a newline in a key or value (or '=' in a key):
        it would smuggle in another assignment, so it is a caller bug.
        """
        message = self._encode(fields)
        if self._address is None or self._closed:
            return False
        try:
            sock = self._socket()
            sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failing:
                log.debug("sd_notify to %r failed: %s", self._address, exc)
                self._failing = True
            return False
        self._failing = False
        return True

    @staticmethod
    def _encode(fields: Mapping[str, str]) -> bytes:
        lines = []
        for key, value in fields.items():
            if not key or "=" in key or "\n" in key:
                raise ValueError(f"invalid sd_notify key {key!r}")
            if "\n" in value:
                raise ValueError(f"sd_notify value for {key} contains a newline")
            lines.append(f"{key}={value}")
        if not lines:
            raise ValueError("sd_notify needs at least one field")
        return "\n".join(lines).encode()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.settimeout(_SEND_TIMEOUT_S)
            self._sock = sock
        return self._sock

    def ready(self, status: str = "") -> None:
        if status:
            self.notify(READY="1", STATUS=status)
        else:
            self.notify(READY="1")

    def status(self, text: str) -> None:
        self.notify(STATUS=text)

    def stopping(self, status: str = "") -> None:
        if status:
            self.notify(STOPPING="1", STATUS=status)
        else:
            self.notify(STOPPING="1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled advises.

        WATCHDOG_PID names the process systemd watches; a child that inherited
        the environment must not ping on the parent's behalf.
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1e6

    def ping(self) -> None:
        self.notify(WATCHDOG="1")

    async def watchdog_loop(self) -> None:
        """Ping until cancelled.

        Runs as an asyncio task on purpose: if the event loop stalls, pings
        stop and systemd restarts the daemon.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            self.ping()
            # Schedule from the previous deadline so pings do not drift late.
            deadline = max(deadline + interval, loop.time())
            await asyncio.sleep(deadline - loop.time())

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SdNotifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
