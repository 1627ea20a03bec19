from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from hss_pu.tasks import TaskSet


async def test_failure_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[tuple[str, BaseException]] = []
    ts = TaskSet(logging.getLogger("t"), lambda n, e: failures.append((n, e)))

    async def boom() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        t = ts.spawn(boom(), "boomer")
        with pytest.raises(RuntimeError):
            await t
        await asyncio.sleep(0)
    assert [n for n, _ in failures] == ["boomer"]
    assert "task boomer failed" in caplog.text
    assert len(ts) == 0


async def test_tasks_are_kept_referenced_until_done() -> None:
    ts = TaskSet(logging.getLogger("t"))
    done = asyncio.Event()

    async def slow() -> None:
        await asyncio.sleep(0.05)
        done.set()

    ts.spawn(slow(), "slow")  # no reference kept by the caller
    gc.collect()
    await asyncio.wait_for(done.wait(), 2)


async def test_cancel_all_reports_what_did_not_stop() -> None:
    ts = TaskSet(logging.getLogger("t"))

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.3)
                return

    async def obedient() -> None:
        await asyncio.sleep(10)

    ts.spawn(stubborn(), "stubborn")
    ts.spawn(obedient(), "obedient")
    await asyncio.sleep(0)
    assert await ts.cancel_all(0.05) == ["stubborn"]
