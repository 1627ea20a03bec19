"""One wake-up for every waiter on a server's records (Vd, Vr, alarms): each change sets
the current event and arms a new one, so a waiter never misses a change made between its
check and its wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["Ticker"]


class Ticker:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """The first result of ``check`` that is neither None nor False, checked now and
        after every change; TimeoutError naming ``what`` after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = self._event
                    found = check()
                    if found is not None and found is not False:
                        return found
                    await event.wait()
        except TimeoutError:
            raise TimeoutError(f"{what} within {timeout:g} s") from None
