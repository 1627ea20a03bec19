"""Run one firmware operation in a subprocess that SIGKILLs its process group at a step.

    python -m tests.support.fw_driver ROOT WHEELS KILL_AT [DELAY]

Upgrades ROOT to version 2.0 from WHEELS the way the upgrade service will: install,
begin_trial, the restart's start-up (one attempt), commit; with FW_DRIVER_MODE=rollback
the trial is rolled back instead. KILL_AT is a step number
(1-based, counted over every step hook call) or 0 for none; at that step the whole
process group is killed (power loss, or systemd killing the unit's cgroup), after DELAY
seconds if given (so the kill lands inside the venv or pip child). Prints each step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from hss_pu.firmware import slots


def main() -> int:
    root, wheels, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    count = 0

    def kill() -> None:
        os.killpg(0, signal.SIGKILL)

    def hook(step: str) -> None:
        nonlocal count
        count += 1
        print(count, step, flush=True)
        if count != kill_at:
            return
        if delay:
            threading.Timer(delay, kill).start()
        else:
            kill()

    slots.set_step_hook(hook)
    store = slots.SlotStore(root)
    store.install(wheels, "2.0", with_pip=False)
    if os.environ.get("FW_DRIVER_MODE") == "rollback":
        # The trial fails: its one start, then the health gate's rollback, then a start
        # that runs the old version again and removes the new one.
        store.begin_trial("2.0", 2, attempts=1, trial_seconds=60)
        store.startup()
        store.rollback("2.0", "health gate failed")
        store.startup()
    else:
        store.begin_trial("2.0", 2, trial_seconds=60)
        store.startup()
        store.commit("2.0")
    time.sleep(delay + 1 if delay else 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
