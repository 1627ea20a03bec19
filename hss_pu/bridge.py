"""The one way a worker thread hands something to the event loop.

Capture threads (a live push that broke, a closed recording segment) and helper threads
(libsrt's blocking connect) finish their work off the loop and must tell it. A
:class:`LoopBridge` is bound to its loop when it is made (on that loop), so a worker
never needs to find one; and once the loop is closed (the daemon is stopping) a call is
dropped and counted instead of raising ``RuntimeError`` into a thread that cannot do
anything about it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

__all__ = ["LoopBridge"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class LoopBridge:
    """Calls from any thread onto one event loop; ``dropped`` counts those that came
    after the loop closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bound to ``loop``, by default the running one (so make it on the loop)."""
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.dropped = 0
        self._lock = threading.Lock()

    def call(self, fn: Callable[[*Ts], object], *args: *Ts) -> bool:
        """Run ``fn(*args)`` on the loop soon; False (and counted) when the loop is gone.
        Thread-safe; never blocks; ``fn`` must be quick (it runs on the loop)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # "Event loop is closed"
            with self._lock:
                self.dropped += 1
            return False
        return True

    def set_result(self, fut: asyncio.Future[T], value: T) -> bool:
        """Complete ``fut`` with ``value`` on the loop, unless it is done by then
        (cancelled, or completed by an earlier call)."""
        return self.call(_set_result, fut, value)

    def set_exception(self, fut: asyncio.Future[T], exc: BaseException) -> bool:
        """As :meth:`set_result`, with an exception."""
        return self.call(_set_exception, fut, exc)


def _set_result(fut: asyncio.Future[T], value: T) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[T], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
