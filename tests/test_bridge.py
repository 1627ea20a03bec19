"""The one thread-to-loop bridge (hss_pu/bridge.py)."""

from __future__ import annotations

import ast
import asyncio
import threading
from pathlib import Path

import pytest

import hss_pu
from hss_pu.bridge import LoopBridge


async def test_calls_from_threads_run_on_the_loop_in_order() -> None:
    bridge = LoopBridge()
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []
    done = asyncio.get_running_loop().create_future()

    def note(i: int) -> None:
        seen.append((i, threading.get_ident()))

    def work() -> None:
        for i in range(100):
            assert bridge.call(note, i)
        bridge.set_result(done, "finished")

    t = threading.Thread(target=work)
    t.start()
    assert await asyncio.wait_for(done, 5) == "finished"
    t.join()
    assert [i for i, _ in seen] == list(range(100))
    assert {ident for _, ident in seen} == {loop_thread}
    assert bridge.dropped == 0


async def test_a_done_future_is_left_alone() -> None:
    bridge = LoopBridge()
    loop = asyncio.get_running_loop()
    cancelled: asyncio.Future[int] = loop.create_future()
    cancelled.cancel()
    answered: asyncio.Future[int] = loop.create_future()
    failed: asyncio.Future[int] = loop.create_future()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    def work() -> None:
        bridge.set_result(cancelled, 1)  # the awaiting task gave up: nothing to do
        bridge.set_result(answered, 2)
        bridge.set_result(answered, 3)  # a second answer does not raise InvalidStateError
        bridge.set_exception(failed, OSError("gone"))

    await asyncio.to_thread(work)
    await asyncio.sleep(0.01)
    assert answered.result() == 2
    with pytest.raises(OSError, match="gone"):
        failed.result()
    assert errors == []


def test_a_closed_loop_drops_and_counts_instead_of_raising() -> None:
    loop = asyncio.new_event_loop()

    async def make() -> LoopBridge:
        return LoopBridge()

    bridge = loop.run_until_complete(make())
    assert bridge.loop is loop
    loop.close()
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.extend([bridge.call(print), bridge.call(print)]))
    t.start()
    t.join()
    assert results == [False, False] and bridge.dropped == 2
    fut: asyncio.Future[int] = asyncio.Future(loop=loop)
    assert not bridge.set_result(fut, 1) and bridge.dropped == 3


def test_made_on_the_loop_or_given_one() -> None:
    with pytest.raises(RuntimeError):  # no running loop to bind to
        LoopBridge()
    loop = asyncio.new_event_loop()
    try:
        assert LoopBridge(loop).loop is loop
    finally:
        loop.close()


PENDING: set[str] = set()  # every thread reaches the loop through a LoopBridge


def test_threads_reach_the_loop_through_the_bridge_only() -> None:
    root = Path(hss_pu.__file__).parent
    users = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).as_posix()
        if rel == "hss_pu/bridge.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in (
                "call_soon_threadsafe",
                "run_coroutine_threadsafe",
            ):
                users.add(rel)
    assert users <= PENDING, users - PENDING
