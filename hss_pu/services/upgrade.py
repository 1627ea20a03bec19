"""UpgradeFirmware and QueryUpgrade: download, check, install, trial, commit or roll back.

One upgrade at a time, as a background task of the service (UpgradeFirmware is an event:
nothing waits for it). Nothing the device runs changes before every check has passed: the
bundle goes to a staging directory under storage.dir, its head is checked before a payload
byte is kept, and the whole bundle again, in the order of docs/protocol.md reading 33,
once it is all here. The install builds a new version directory and puts it on trial
(hss_pu.firmware.slots); the daemon then restarts through the launcher into it.

In the trial the same service is the health gate: once the daemon has logged in to Vd,
had a Keepalive answered and opened its cameras, within the trial's seconds, the version
is committed; otherwise it is rolled back with the reason and the daemon restarts into
the committed version, which then reports ``error`` and that reason (reading 35).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hss_pu.clients.firmware import BundleRefused, Fetched, fetch_bundle
from hss_pu.clients.http import DownloadError, HttpClient, UploadError, UrlGuard
from hss_pu.firmware.bundle import PayloadError, extract_wheels, requirement
from hss_pu.firmware.slots import Clock, InstallError, SlotStore, State, Trial
from hss_pu.wire.firmware import (
    BundleHead,
    Manifest,
    PayloadDigest,
    Policy,
    Rejected,
    canonical,
    check_bundle,
    first_failure,
)
from hss_pu.wire.vd import QueryUpgradeResp, UpgradeFirmwareParams

__all__ = ["PROGRESS", "UpgradeService", "installed_model", "version_name"]

log = logging.getLogger("hss_pu.upgrade")

# QueryUpgrade's progress is one rising scale over the whole upgrade (reading 35): the
# download fills 0-80, the install 80-95, the trial is 95, the commit 100.
PROGRESS = {"downloading": 0, "installing": 80, "upgrading": 95, "done": 100}
DOWNLOAD_SHARE = 80
GATE_POLL = 0.25
BUNDLE_FILE = "bundle"
SPACE_MARGIN = 16 << 20


def version_name(m: Manifest) -> str:
    """The version directory's name: the version number, then the model made safe."""
    model = re.sub(r"[^A-Za-z0-9._+-]", "_", m.firmware_model)
    return f"{m.version_number}-{model}"[:64].rstrip("._+-")


def installed_model(store: SlotStore, version: str | None) -> str | None:
    """The firmware_model of the bundle installed as ``version`` (None: not installed from
    a bundle, or its manifest unreadable: the profile's model is reported)."""
    if version is None:
        return None
    data = store.manifest(version)
    if data is None:
        return None
    try:
        return msgspec.json.decode(data, type=Manifest).firmware_model
    except msgspec.MsgspecError:
        log.error("firmware: the manifest of version %s is unreadable", version)
        return None


class _Refused(Exception):
    """An upgrade that stops with ``error``; the message is the reason."""


@dataclass(frozen=True)
class _Report:
    status: str
    progress: int
    model: str
    reason: str = ""


class UpgradeService:
    """See the module docstring. ``healthy`` says what the daemon still lacks for the
    health gate (None: healthy); ``restart`` stops the daemon so that it starts again
    through the launcher."""

    def __init__(
        self,
        *,
        store: SlotStore,
        staging: Path,
        http: HttpClient,
        guard: UrlGuard,
        trusted: Mapping[str, Ed25519PublicKey],
        threshold: int,
        hardware_model: str,
        running_model: str,
        running_version: str | None,
        trial_seconds: float,
        now: Callable[[], float],
        restart: Callable[[], None],
        healthy: Callable[[], str | None],
        with_pip: bool = True,
        step: Callable[[str], None] | None = None,
        download_attempts: int = 6,
        backoff: Callable[[int], float] = lambda n: min(30.0, 2.0**n),
    ) -> None:
        self.store = store
        self.staging = staging
        self.http = http
        self.guard = guard
        self.trusted = dict(trusted)
        self.threshold = threshold
        self.hardware_model = hardware_model
        self.running_model = running_model
        self.running_version = running_version
        self.trial_seconds = trial_seconds
        self.now = now
        self.restart = restart
        self.healthy = healthy
        self.with_pip = with_pip
        self._step_hook = step
        self.download_attempts = download_attempts
        self.backoff = backoff
        self._report = _Report("notstart", 0, running_model)
        self._task: asyncio.Task[None] | None = None
        self.trial: Trial | None = None  # this process is that trial
        self._trial_left = 0.0  # seconds of the trial's deadline left at start
        self._pending_trial = False  # a trial of another version is waiting for a start
        self._last_progress_log = -1

    # --- what the dispatcher and the daemon ask ----------------------------------------

    @property
    def ready(self) -> bool:
        """An upgrade can succeed here: GetCap's firmware_download_https."""
        return bool(self.trusted)

    @property
    def active(self) -> bool:
        """An upgrade or a trial is under way (hibernation waits for it)."""
        return self.trial is not None or self._report.status in (
            "downloading", "installing", "upgrading",
        )  # fmt: skip

    @property
    def busy(self) -> bool:
        """Keepalive ``state`` 2: from the start of the install to the commit."""
        return self._report.status in ("installing", "upgrading")

    def status(self) -> QueryUpgradeResp:
        r = self._report
        return QueryUpgradeResp(
            upgrade_status=r.status,  # type: ignore[arg-type]
            progress=r.progress,
            firmware_model=r.model,
            reason=r.reason or None,
        )

    def report(self) -> dict[str, object]:
        """``hss-pu status``."""
        r = self._report
        return {
            "status": r.status,
            "progress": r.progress,
            "firmware_model": r.model,
            "reason": r.reason,
            "trial": None if self.trial is None else self.trial.name,
            "ready": self.ready,
        }

    async def start(self) -> None:
        """At start-up: staging left by a killed run is removed, and the last upgrade's
        outcome (or this process's trial) is read from the slot state."""
        state, clock = await asyncio.to_thread(self._start_files)
        trial = state.trial
        if trial is not None and trial.name == self.running_version:
            self.trial = trial
            self._trial_left = _left(trial, clock)
            self._report = _Report("upgrading", PROGRESS["upgrading"], self.running_model)
            log.warning(
                "firmware: version %s (%s) on trial: committed once logged in to Vd, a "
                "Keepalive answered and the cameras open, within %.0f s",
                trial.name, self.running_model, self._trial_left,
            )  # fmt: skip
            return
        if trial is not None:
            # Put on trial but not started yet (we were not started through the launcher).
            self._pending_trial = True
            self._report = _Report("upgrading", PROGRESS["upgrading"], self.running_model)
            return
        last = state.last
        if last is None:
            return
        if last.result == "committed" and last.name == self.running_version:
            self._report = _Report("done", 100, self.running_model)
        elif last.result == "rolled back":
            self._report = _Report("error", 0, self.running_model, f"rolled back: {last.reason}")
            log.error("firmware: the last upgrade (%s) was rolled back: %s", last.name, last.reason)

    def _start_files(self) -> tuple[State, Clock]:
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.store.load_state(), Clock.now()

    async def upgrade(self, p: UpgradeFirmwareParams) -> None:
        """UpgradeFirmware: starts the upgrade in the background (one at a time)."""
        if self._task is not None and not self._task.done():
            log.warning(
                "firmware: UpgradeFirmware to %s ignored: the upgrade to %s is under way",
                p.firmware_model, self._report.model,
            )  # fmt: skip
            return
        if self.trial is not None or self._pending_trial:
            log.warning(
                "firmware: UpgradeFirmware to %s ignored: version %s is on trial",
                p.firmware_model, self.running_model,
            )  # fmt: skip
            return
        self._task = asyncio.create_task(self._upgrade(p), name="firmware-upgrade")

    async def close(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.aclose()

    # --- the upgrade -------------------------------------------------------------------

    def _set(self, status: str, progress: int, model: str, reason: str = "") -> None:
        self._report = _Report(status, progress, model, reason)

    def _step(self, name: str) -> None:
        if self._step_hook is not None:
            self._step_hook(name)

    async def _upgrade(self, p: UpgradeFirmwareParams) -> None:
        target = p.firmware_model
        self._set("downloading", 0, target)
        self._last_progress_log = -1
        started = time.monotonic()
        log.info("firmware: upgrade to %s requested", target)
        try:
            await self._run(p)
        except asyncio.CancelledError:
            await asyncio.to_thread(shutil.rmtree, self.staging, True)
            raise
        except Exception as exc:  # _Refused, or a bug of ours: the upgrade ends, not the daemon
            if not isinstance(exc, _Refused):
                log.exception("firmware: upgrade to %s failed", target)
                exc = _Refused(f"internal error: {type(exc).__name__}: {exc}"[:300])
            reason = str(exc)
            self._set("error", self._report.progress, self.running_model, reason)
            log.error("firmware: upgrade to %s refused, nothing changed: %s", target, reason)
            await asyncio.to_thread(shutil.rmtree, self.staging, True)
            return
        log.warning(
            "firmware: %s installed and on trial after %.1f s; restarting into it",
            target, time.monotonic() - started,
        )  # fmt: skip
        self.restart()

    async def _run(self, p: UpgradeFirmwareParams) -> None:
        if not self.trusted:
            raise _Refused("no trusted keys (upgrade.trusted_keys)")
        try:
            await self.guard.check(p.url)
            state = await asyncio.to_thread(self.store.load_state)
            policy = Policy(
                trusted=self.trusted,
                threshold=self.threshold,
                hardware_model=self.hardware_model,
                high_water=state.highest,
            )
            await asyncio.to_thread(_fresh_dir, self.staging)
            fetched = await fetch_bundle(
                self.http,
                p.url,
                self.staging / BUNDLE_FILE,
                accept_head=lambda head: self._accept_head(head, policy, p.firmware_model),
                progress=self._download_progress,
                step=self._step,
                attempts=self.download_attempts,
                backoff=self.backoff,
            )
        except BundleRefused as exc:
            raise _Refused(str(exc.rejected)) from None
        except (DownloadError, UploadError) as exc:  # UrlNotAllowed is an UploadError
            raise _Refused(f"download: {exc}") from None
        except OSError as exc:
            raise _Refused(f"staging: {exc}") from None
        self._step("check")
        m = fetched.head.manifest
        results = check_bundle(fetched.head, fetched.payload, policy, int(self.now()))
        for r in results:
            log.info("firmware: check %s: %s", r.name, "ok" if r.ok else "FAILED")
        failed = first_failure(results)
        if failed is not None:
            raise _Refused(str(failed))
        self._set("installing", PROGRESS["installing"], p.firmware_model)
        name = version_name(m)
        try:
            wheels = await asyncio.to_thread(self._extract, fetched)
            self._set("installing", 85, p.firmware_model)
            await asyncio.to_thread(
                self.store.install, wheels, name, requirement=requirement(wheels),
                manifest=canonical(m), with_pip=self.with_pip,
            )  # fmt: skip
            self._set("installing", 92, p.firmware_model)
            self._step("installed")
            await asyncio.to_thread(
                self.store.begin_trial, name, m.version_number, trial_seconds=self.trial_seconds
            )
        except PayloadError as exc:
            raise _Refused(f"payload: {exc}") from None
        except InstallError as exc:
            raise _Refused(f"install: {exc}") from None
        except OSError as exc:
            raise _Refused(f"install: {exc}") from None
        self._pending_trial = True
        self._set("upgrading", PROGRESS["upgrading"], p.firmware_model)
        self._step("trial")
        await asyncio.to_thread(shutil.rmtree, self.staging, True)

    def _accept_head(self, head: BundleHead, policy: Policy, asked: str) -> Rejected | None:
        """The checks a head alone can answer, before a payload byte is kept (the length
        and hash are the manifest's own here; they are checked on the payload later)."""
        m = head.manifest
        claimed = PayloadDigest(m.payload_length, m.payload_sha256)
        failed = first_failure(check_bundle(head, claimed, policy, int(self.now())))
        if failed is not None:
            return failed
        if m.firmware_model != asked:
            problem = f"the bundle is {m.firmware_model}, the platform asked for {asked}"
            return Rejected("firmware model", problem)
        # The bundle and its unpacked wheels sit in staging together until the install.
        need = 2 * m.payload_length + SPACE_MARGIN
        try:
            free = shutil.disk_usage(self.staging).free
        except OSError as exc:
            return Rejected("disk space", f"{self.staging}: {exc}")
        if free < need:
            return Rejected(
                "disk space", f"{free >> 20} MiB free in {self.staging}, {need >> 20} MiB needed"
            )
        log.info(
            "firmware: bundle %s (version number %d, %d payload bytes) accepted; downloading",
            m.firmware_model, m.version_number, m.payload_length,
        )  # fmt: skip
        return None

    def _download_progress(self, got: int, total: int) -> None:
        pct = 0 if total <= 0 else min(100, got * 100 // total)
        self._set("downloading", pct * DOWNLOAD_SHARE // 100, self._report.model)
        if pct // 25 > self._last_progress_log // 25 or pct == 100:
            self._last_progress_log = pct
            log.info("firmware: downloaded %d%% (%d of %d bytes)", pct, got, total)

    def _extract(self, fetched: Fetched) -> Path:
        self._step("extract")
        with fetched.path.open("rb") as f:
            wheels = extract_wheels(f, fetched.head, self.staging / "payload", self._step)
        fetched.path.unlink()  # the space goes to the install
        self._step("extracted")
        return wheels

    # --- the trial -----------------------------------------------------------------------

    async def gate(self) -> None:
        """The health gate of this process's trial (nothing to do when not on trial)."""
        trial = self.trial
        if trial is None:
            return
        deadline = time.monotonic() + self._trial_left
        missing = self.healthy()
        while missing is not None and time.monotonic() < deadline:
            await asyncio.sleep(GATE_POLL)
            missing = self.healthy()
        if missing is None:
            try:
                await asyncio.to_thread(self.store.commit, trial.name)
            except (InstallError, OSError) as exc:
                # The launcher's alarm and start-up rules roll it back later.
                log.error("firmware: commit of %s failed: %s", trial.name, exc)
                return
            self.trial = None
            self._set("done", 100, self.running_model)
            log.warning("firmware: version %s (%s) passed its health check: committed",
                        trial.name, self.running_model)  # fmt: skip
            return
        reason = f"did not pass the health check in {trial.trial_seconds:g} s: {missing}"
        log.error("firmware: version %s %s; rolling back", trial.name, reason)
        try:
            await asyncio.to_thread(self.store.rollback, trial.name, reason)
        except (InstallError, OSError) as exc:
            log.error("firmware: rollback of %s not recorded (%s); restarting", trial.name, exc)
        self.restart()


def _left(trial: Trial, clock: Clock) -> float:
    """Seconds left of the attempt's deadline (set by the launcher on this boot)."""
    if trial.boot_deadline is not None and trial.boot_id == clock.boot_id and clock.boot_id:
        return max(0.0, trial.boot_deadline - clock.boottime)
    return trial.trial_seconds


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
