"""One whole upgrade in a subprocess that SIGKILLs its process group at a step.

    python -m tests.support.upgrade_driver ROOT STAGING URL CA PUBKEY MODEL KILL_AT

The upgrade service as the daemon runs it, minus the daemon: UpgradeFirmware of URL
(served by the test's reference platform over TLS, CA its certificate), download into
STAGING, checks against PUBKEY, install into the slot root ROOT (fake wheels: no pip in
the new venv), the trial; then, as the restarted daemon would, the launcher's start-up
rules and the trial's health gate (healthy at once), which commits. KILL_AT is a step
number (1-based, over every step of the service and of the slot store) or 0 for none;
there the whole process group is killed (power loss). Prints each step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from hss_pu.clients.http import Trust, UrlGuard, platform_http
from hss_pu.firmware import slots
from hss_pu.firmware.keys import load_public_key
from hss_pu.services.upgrade import UpgradeService
from hss_pu.wire.firmware import trusted_keys
from hss_pu.wire.vd import UpgradeFirmwareParams

HW = "HSS-PU-EMU"


def service(
    root: Path, staging: Path, ca: str, pub: Path, running: str | None, restart: asyncio.Event
) -> UpgradeService:
    guard = UrlGuard(allow_insecure=False, allowed_hosts=["127.0.0.1", "localhost"])
    return UpgradeService(
        store=slots.SlotStore(root),
        staging=staging,
        http=platform_http("02:00:00:00:00:01", ca, trust=Trust.UPLOADS, timeout=10, guard=guard),
        guard=guard,
        trusted=trusted_keys([load_public_key(pub)]),
        threshold=1,
        hardware_model=HW,
        running_model="HSS-PU-EMU-1.0",
        running_version=running,
        trial_seconds=60,
        now=time.time,
        restart=restart.set,
        healthy=lambda: None,
        with_pip=False,
        step=_hook,
        backoff=lambda n: 0.01,
    )


_count = 0
_kill_at = 0


def _hook(step: str) -> None:
    global _count
    _count += 1
    print(_count, step, flush=True)
    if _count == _kill_at:
        os.killpg(0, signal.SIGKILL)


async def main() -> int:
    global _kill_at
    root, staging, url, ca, pub, model = sys.argv[1:7]
    _kill_at = int(sys.argv[7])
    slots.set_step_hook(_hook)
    restart = asyncio.Event()
    old = service(Path(root), Path(staging), ca, Path(pub), None, restart)
    await old.start()
    await old.upgrade(UpgradeFirmwareParams(firmware_model=model, url=url))
    await asyncio.wait_for(restart.wait(), 60)
    await old.close()
    # The restart: the launcher's rules, then the trial's own service and its gate.
    plan = slots.SlotStore(root).startup()
    new = service(Path(root), Path(staging), ca, Path(pub), plan.run, asyncio.Event())
    await new.start()
    await new.gate()
    await new.close()
    return 0 if new.status().upgrade_status == "done" else 3


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
