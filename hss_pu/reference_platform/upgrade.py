"""``hss-pu platform upgrade DEVICE BUNDLE``: serve a bundle, send UpgradeFirmware, and
follow QueryUpgrade to the end (reading 35 of docs/protocol.md).

The device restarts in the middle (into the new version on trial, and, if that fails its
health check, back into the old one), so "offline" answers while polling are expected:
they are shown once and polling goes on. The command ends on ``done`` (exit 0) or
``error`` (exit 1, with the device's reason), or after ``timeout`` seconds (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from hss_pu.firmware.bundle import read_head
from hss_pu.wire.firmware import Rejected

__all__ = ["UpgradeCommandError", "bundle_model", "follow_upgrade"]

# (method, path, body, timeout) -> the admin API's JSON reply; raises on non-200.
Admin = Callable[[str, str, dict[str, Any], float], Any]


class UpgradeCommandError(Exception):
    """A failure worth one line on stderr."""


def bundle_model(bundle: Path) -> str:
    """The bundle's firmware_model (what UpgradeFirmware names), read from its head."""
    try:
        with bundle.open("rb") as f:
            head = read_head(f)
    except OSError as exc:
        raise UpgradeCommandError(f"cannot read {bundle}: {exc}") from None
    if isinstance(head, Rejected):
        raise UpgradeCommandError(f"{bundle}: not a bundle ({head})")
    return head.manifest.firmware_model


def follow_upgrade(
    admin: Admin,
    device: str,
    bundle: Path,
    *,
    timeout: float,
    interval: float = 1.0,
    out: TextIO,
    offline_errors: tuple[type[Exception], ...],
) -> int:
    """Serve, send, poll; one line per change of status (and per 10 % of download)."""
    model = bundle_model(bundle)
    served = admin("POST", "/admin/firmware", {"path": str(bundle.resolve())}, 60.0)
    url = served["url"]
    print(f"serving {bundle.name} as {url}", file=out, flush=True)
    admin(
        "POST",
        "/admin/event",
        {"device": device, "event": "UpgradeFirmware",
         "params": {"firmware_model": model, "url": url}},
        10.0,
    )  # fmt: skip
    print(f"UpgradeFirmware sent to {device}: {model}", file=out, flush=True)
    started = time.monotonic()
    last: tuple[str, int] | None = None
    offline = False
    while time.monotonic() - started < timeout:
        time.sleep(interval)
        try:
            data = admin("POST", "/admin/call", {"device": device, "method": "QueryUpgrade"}, 30.0)
        except offline_errors as exc:
            if not offline:
                print(f"{_t(started)} {device}: {exc} (restarting?)", file=out, flush=True)
            offline = True
            continue
        offline = False
        err = data.get("err")
        if isinstance(err, dict):
            print(f"{_t(started)} QueryUpgrade: error {err.get('code')}: {err.get('msg')}",
                  file=out, flush=True)  # fmt: skip
            continue
        resp = data.get("resp") or {}
        status, progress = str(resp.get("upgrade_status")), int(resp.get("progress") or 0)
        running = resp.get("firmware_model")
        now = (status, progress // 10 if status == "downloading" else -1)
        if now != last:
            last = now
            line = f"{_t(started)} {status} {progress}% ({running})"
            if resp.get("reason"):
                line += f": {resp['reason']}"
            print(line, file=out, flush=True)
        if status == "done" and running == model:
            print(f"done: {device} runs {model} (committed)", file=out, flush=True)
            return 0
        if status == "error":
            print(f"failed: {device} runs {running}: {resp.get('reason')}", file=out, flush=True)
            return 1
    print(f"no end within {timeout:g} s (last: {last})", file=out, flush=True)
    return 1


def _t(started: float) -> str:
    return f"[{time.monotonic() - started:6.1f} s]"
