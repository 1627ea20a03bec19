"""The hibernation connection: one TCP connection to the platform's hibernation server
while the device sleeps (wire-notes "Power").

The first heartbeat goes as soon as the connection is up, then one every ``interval``
(60 s); :meth:`HibernationClient.run` returns when the server sends ``TOWAKEUP``. A lost
or refused connection is tried again after a random 0-10 s (times ``backoff_scale``, as
every retry loop of the daemon). OSError and friends never leave this module: they are
:class:`~hss_pu.errors.LinkError` inside and a log line outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

from hss_pu.errors import LinkError
from hss_pu.wire.hibernation import WakeScanner, encode_heartbeat

__all__ = ["HEARTBEAT_INTERVAL", "HibernationClient", "HibernationStats"]

log = logging.getLogger("hss_pu.hibernation")

HEARTBEAT_INTERVAL = 60.0  # s, wire-notes
RECONNECT_MAX = 10.0  # s: a lost connection is tried again after uniform(0, this)
MIN_RETRY_DELAY = 0.05  # s: whatever backoff_scale says, no retry loop spins
CONNECT_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
READ_BYTES = 256


@dataclass
class HibernationStats:
    connects: int = 0  # connections made
    failures: int = 0  # connections refused or lost
    heartbeats: int = 0  # heartbeats written
    last_error: str | None = None


class HibernationClient:
    def __init__(
        self,
        host: str,
        port: int,
        device_id: str,
        token: str,
        *,
        interval: float = HEARTBEAT_INTERVAL,
        backoff_scale: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.heartbeat = encode_heartbeat(device_id, token)  # ValueError: cannot hibernate
        self.interval = interval
        self.backoff_scale = backoff_scale
        self.rng = rng or random.Random()
        self.stats = HibernationStats()
        self.connected = False
        # Monotonic time of the last heartbeat written (of the start, before the first):
        # how long the server has been out of reach.
        self.last_heartbeat = time.monotonic()
        self._failing = 0  # tries in a row that failed (the log says the first, not each)

    async def run(self) -> None:
        """Heartbeats until ``TOWAKEUP`` arrives (then return); cancel to stop."""
        while True:
            try:
                if await self._connection():
                    return
                raise LinkError("the server closed the connection")
            except LinkError as exc:
                self.stats.failures += 1
                self.stats.last_error = str(exc)
                self._failing += 1
                delay = max(
                    MIN_RETRY_DELAY, self.rng.uniform(0.0, RECONNECT_MAX) * self.backoff_scale
                )
                # The first failure of a run is a warning; the rest (every few seconds
                # for as long as the server is away) would flood the journal.
                log.log(
                    logging.WARNING if self._failing == 1 else logging.DEBUG,
                    "hibernation: %s:%d: %s; again in %.1f s", self.host, self.port, exc, delay,
                )  # fmt: skip
            await asyncio.sleep(delay)

    async def _connection(self) -> bool:
        """One connection, to its end: True when the server sent TOWAKEUP."""
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that
            # meets a connection refused at once, and the daemon could not stop us.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"cannot connect: {exc or type(exc).__name__}") from None
        self.stats.connects += 1
        self.connected = True
        log.info(
            "hibernation: connected to %s:%d%s", self.host, self.port,
            f" after {self._failing} failed tries" if self._failing else "",
        )  # fmt: skip
        self._failing = 0
        beats = asyncio.create_task(self._heartbeats(writer), name="hibernation-heartbeat")
        read: asyncio.Future[bytes] | None = None
        try:
            scanner = WakeScanner()
            while True:
                read = asyncio.ensure_future(reader.read(READ_BYTES))
                done, _ = await asyncio.wait({read, beats}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    beats.result()  # a write failure: LinkError
                    raise LinkError("heartbeats stopped")  # not reached: they loop forever
                data = read.result()
                if not data:
                    return False
                if scanner.feed(data):
                    log.info("hibernation: TOWAKEUP received")
                    return True
        except (OSError, EOFError) as exc:
            raise LinkError(f"connection lost: {exc or type(exc).__name__}") from None
        finally:
            self.connected = False
            if read is not None:
                read.cancel()
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkError):
                await beats
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _heartbeats(self, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                writer.write(self.heartbeat)
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.drain()
            except (OSError, TimeoutError) as exc:
                raise LinkError(f"heartbeat not sent: {exc or type(exc).__name__}") from None
            self.stats.heartbeats += 1
            self.last_heartbeat = time.monotonic()
            log.debug("hibernation: heartbeat %d sent", self.stats.heartbeats)
            await asyncio.sleep(self.interval)
