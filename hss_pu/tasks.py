"""Background tasks that are never lost: kept referenced until done, failures logged.

asyncio keeps only a weak reference to a task, so a fire-and-forget ``create_task`` can be
garbage-collected mid-flight, and an exception in a task nobody awaits is reported only
when the task is collected, if ever. Every task the daemon starts goes through a
:class:`TaskSet`, which holds it until it ends and logs how it failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSet"]

T = TypeVar("T")


class TaskSet:
    """A set of named tasks; ``on_failure(name, exc)`` is told when one raises."""

    def __init__(
        self,
        log: logging.Logger,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._log = log
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self._log.error("task %s failed", task.get_name(), exc_info=exc)
        if self._on_failure is not None:
            self._on_failure(task.get_name(), exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self, timeout: float) -> list[str]:
        """Cancel every task and wait up to ``timeout`` s; returns the names still running."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return [t.get_name() for t in pending]
