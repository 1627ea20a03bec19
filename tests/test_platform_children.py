"""The reference platform kills every child process it starts when it closes.

Its live receivers are ``srt-live-transmit`` processes; one left behind outlives the
daemon (the embedded default) and holds its pipes. Closing must kill them whatever the
receiver was doing: started, being started, or being started by a task that is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from hss_pu.reference_platform.server import ReferencePlatform

from .support.rig import start_platform

NULL_TS = b"\x47\x1f\xff\x10" + b"\xff" * 184  # one null packet (PID 0x1fff)


def live_children() -> list[int]:
    """Our srt-live-transmit children that are still running (zombies do not count)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        # Not the comm field: libsrt renames threads, the main one included at times.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if argv0.endswith(b"srt-live-transmit") and int(ppid) == os.getpid() and state != "Z":
            found.append(int(entry))
    return found


async def assert_no_children() -> None:
    """A killed child is gone within milliseconds; a leaked one stays."""
    for _ in range(100):
        if not (left := live_children()):
            break
        await asyncio.sleep(0.02)
    for pid in left:  # do not leak them into the rest of the run
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    assert not left, f"srt-live-transmit children left running: {left}"


async def _platform(tmp_path: Path, n: int) -> ReferencePlatform:
    """One of many, each closed by its test (plain transport: no TLS to set up each time)."""
    return await start_platform(tmp_path / f"p{n}", tls=False)


async def _steps(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_open_live_then_close_kills_both_processes(tmp_path: Path) -> None:
    p = await _platform(tmp_path, 0)
    rx = await p.open_live("s", viewer=True)
    assert len(live_children()) == 2  # the listener and the viewer relay
    # What the listener received goes on to the viewer relay through its stdin: a little
    # is enough to put srt-live-transmit in the state where it ignores SIGTERM.
    rx._to_viewer(NULL_TS * 7)
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await p.close()
    await assert_no_children()
    # close() must not sit out a kill timeout on the viewer relay.
    assert time.monotonic() - t0 < 1.0


async def test_cancelled_while_starting_leaves_no_process(tmp_path: Path) -> None:
    """Cancel open_live after every number of loop steps it takes, then close: what the
    embedded default does when a stop arrives while its demo receiver is being started."""
    completed = False
    for n in range(200):
        p = await _platform(tmp_path, n)
        task = asyncio.create_task(p.open_live("s", viewer=True))
        await _steps(n)
        completed = task.done()
        task.cancel()
        await p.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        await assert_no_children()
        if completed:
            break
    assert completed, "open_live never finished: the loop above did not reach its end"


async def test_close_while_starting_leaves_no_process(tmp_path: Path) -> None:
    """close() from another task while open_live is still starting: the receiver must not
    come up afterwards on a closed platform."""
    completed = False
    for n in range(200):
        p = await _platform(tmp_path, n)
        task = asyncio.create_task(p.open_live("s", viewer=True))
        await _steps(n)
        completed = task.done()
        await p.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        await assert_no_children()
        if completed:
            break
    assert completed, "open_live never finished: the loop above did not reach its end"
