"""Installed firmware versions on the device, and the trial that decides whether a new one stays.

Layout under a root (``/opt/hss-pu`` when installed by ``make install``, else
``storage.dir/firmware``)::

    versions/<name>/venv/     a complete install: its own venv, built offline from wheels
    versions/<name>/COMPLETE  written last, fsync'd: without it the directory is debris
    current  -> versions/<name>   the committed version: what a start runs
    previous -> versions/<name>   the committed version before it (kept as a fallback)
    state.json                the trial, the anti-rollback mark, the last outcome
    highest                   a second copy of the mark (a damaged state.json cannot lower it)

A new version is never linked as ``current`` until it has proven itself (the way the
Raspberry Pi's ``tryboot`` and RAUC's boot counters work): the state names it as the
trial with N attempts left, and the *committed* version's start-up code (``launch``)
spends one attempt (persisted before it runs the trial) and hands over with ``execv``.
A trial that crashes or hangs is restarted by systemd into the committed code again,
which spends the next attempt; with none left, or an attempt that outlived its deadline
without committing, it rolls back: the trial is dropped with its reason, and ``current``
(never changed) runs. So code that cannot even import never decides its own fate.
``commit`` (called by the trial once healthy) switches ``previous`` then ``current``
with atomic symlink renames and clears the trial. docs/protocol.md, reading 34.

Everything here blocks (fsync, subprocesses): call it from a worker thread, not the
event loop. Stdlib only besides hss_pu.fsutil, so the launcher starts fast.

For the upgrade service::

    store = SlotStore(running_root() or emulated_root(config.storage_dir))
    store.load_state().highest        # refuse a version number not above it
    store.install(wheels, name)       # InstallError: nothing the device runs changed
    store.begin_trial(name, number, trial_seconds=...)   # the switch
    reexec(sys.argv[1:])              # once the daemon has stopped: through the launcher
    # in the new version, ``t = store.load_state().trial``; on trial when
    # ``t and t.name == running_version()`` (deadline: ``t.wall_deadline``); then
    store.commit(name)  or  store.rollback(name, reason); reexec(...)
    store.load_state().last           # QueryUpgrade after the restart: result, reason
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from hss_pu.fsutil import atomic_write, fsync_dir

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_TRIAL_SECONDS",
    "INSTALLED_ROOT",
    "Clock",
    "Disk",
    "InstallError",
    "Outcome",
    "Plan",
    "SlotStore",
    "State",
    "Trial",
    "decide",
    "emulated_root",
    "launch",
    "reexec",
    "running_root",
    "running_version",
    "set_step_hook",
]

log = logging.getLogger(__name__)

INSTALLED_ROOT = Path("/opt/hss-pu")
DEFAULT_ATTEMPTS = 3
DEFAULT_TRIAL_SECONDS = 120.0
STATE_FILE = "state.json"
MARK_FILE = "highest"
STATE_LIMIT = 64 * 1024
MARKER = "COMPLETE"
# The signed manifest of the bundle a version came from (its firmware_model is what the
# device reports while it runs); absent for a version installed by hand.
MANIFEST_FILE = "manifest.json"
MANIFEST_LIMIT = 16 * 1024
LOCK_FILE = ".lock"
MAX_TRIAL_SECONDS = 86400.0
# Set by the launcher for the version it hands over to, so that version does not spend
# an attempt again; removed by it at once, so its own re-execs go through the launcher.
LAUNCHED_ENV = "HSS_PU_LAUNCHED"
# The command the launcher was started as (e.g. /opt/hss-pu/current/venv/bin/hss-pu):
# what a restart must exec so it goes through the committed code's launcher again.
ENTRY_ENV = "HSS_PU_ENTRY"
# The kernel's SIGALRM ends a trial that neither commits nor rolls back in time (alarms
# survive execve), whatever its code does; this much after its deadline.
ALARM_GRACE = 30.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class InstallError(Exception):
    """A version could not be installed; nothing the device runs was changed."""


# --- fault injection for the interruption tests -------------------------------------------

_step_hook: Callable[[str], None] | None = None


def set_step_hook(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(step)`` at each durable step (tests kill the process there)."""
    global _step_hook
    _step_hook = hook


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


# --- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    name: str
    version_number: int
    attempts_left: int
    trial_seconds: float
    # Set when an attempt starts: the kernel's boot id and CLOCK_BOOTTIME deadline (a Pi
    # has no RTC: its wall clock jumps at NTP sync), and the wall-clock one for reports.
    boot_id: str | None = None
    boot_deadline: float | None = None
    wall_deadline: float | None = None


@dataclass(frozen=True)
class Outcome:
    """The end of the last trial, for QueryUpgrade: ``committed`` or ``rolled back``."""

    name: str
    result: str
    reason: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class State:
    highest: int = 0  # the highest version number ever installed: only goes up
    trial: Trial | None = None
    last: Outcome | None = None
    problem: str = ""  # why the file on disk could not be used (it was not)

    def to_bytes(self) -> bytes:
        doc = {
            "format": 1,
            "highest": self.highest,
            "trial": None if self.trial is None else self.trial.__dict__,
            "last": None if self.last is None else self.last.__dict__,
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> State:
        """Raises ValueError for anything but a state this module wrote."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != 1:
            raise ValueError("not a format 1 state")
        highest = doc.get("highest")
        if type(highest) is not int or highest < 0:
            raise ValueError("bad highest")
        trial = doc.get("trial")
        last = doc.get("last")
        if not isinstance(trial, dict | None) or not isinstance(last, dict | None):
            raise ValueError("bad trial or last")
        try:
            t = None if trial is None else Trial(**trial)
            o = None if last is None else Outcome(**last)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        if t is not None and not _valid_trial(t):
            raise ValueError("bad trial")
        if o is not None and not (
            isinstance(o.name, str)
            and isinstance(o.result, str)
            and isinstance(o.reason, str)
            and _is_number(o.at)
        ):
            raise ValueError("bad last")
        return cls(highest=highest, trial=t, last=o)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e15


def _valid_trial(t: Trial) -> bool:
    return (
        isinstance(t.name, str)
        and _NAME.fullmatch(t.name) is not None
        and type(t.attempts_left) is int
        and type(t.version_number) is int
        and _is_number(t.trial_seconds)
        and 0 < t.trial_seconds <= MAX_TRIAL_SECONDS
        and isinstance(t.boot_id, str | None)
        and all(v is None or _is_number(v) for v in (t.boot_deadline, t.wall_deadline))
    )


# --- the start-up decision (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    wall: float
    boot_id: str | None
    boottime: float

    @classmethod
    def now(cls) -> Clock:
        try:
            boot_id: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot_id = None
        boottime = time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))
        return cls(time.time(), boot_id, boottime)


@dataclass(frozen=True)
class Disk:
    """What start-up found: version directories, which are complete, the links, the state."""

    present: frozenset[str]
    complete: frozenset[str]
    current: str | None
    previous: str | None
    state: State
    busy: bool = False  # another process (an install) holds the lock: leave debris alone


@dataclass(frozen=True)
class Plan:
    run: str | None  # the version to run; None: the launcher's own code (nothing installed)
    current: str | None
    previous: str | None
    state: State
    remove: frozenset[str] = field(default_factory=frozenset)
    notes: tuple[str, ...] = ()
    trial: bool = False  # ``run`` is the trial: arm the alarm


def decide(disk: Disk, clock: Clock) -> Plan:
    """Start-up rules. Everything ``launch`` does to the disk follows from this."""
    notes: list[str] = []
    current, previous = disk.current, disk.previous
    state = disk.state
    if state.problem:
        notes.append(f"state unusable ({state.problem}): no trial, starting the committed version")
    if previous is not None and previous not in disk.complete:
        notes.append(f"previous {previous} is incomplete or missing: dropped")
        previous = None
    if current is not None and current not in disk.complete:
        notes.append(f"current {current} is incomplete or missing: back to {previous}")
        current, previous = previous, None
    if current == previous:
        previous = None
    trial = state.trial
    run, on_trial = current, False
    if trial is not None:
        reason = ""
        if trial.name == current:
            notes.append(f"trial {trial.name} was committed (interrupted): finishing")
            done = Outcome(trial.name, "committed", "", clock.wall)
            state = replace(state, trial=None, last=done)
            trial = None
        elif trial.name not in disk.complete:
            reason = f"version {trial.name} is incomplete or missing"
        elif trial.attempts_left <= 0:
            reason = f"version {trial.name} did not become healthy in its start attempts"
        elif _deadline_passed(trial, clock):
            reason = f"version {trial.name} did not pass the health check in time"
        if reason and trial is not None:
            notes.append(f"rolled back: {reason}")
            failed = Outcome(trial.name, "rolled back", reason, clock.wall)
            state = replace(state, trial=None, last=failed)
            trial = None
        elif trial is not None:
            trial = replace(
                trial,
                attempts_left=trial.attempts_left - 1,
                boot_id=clock.boot_id,
                boot_deadline=clock.boottime + trial.trial_seconds,
                wall_deadline=clock.wall + trial.trial_seconds,
            )
            state = replace(state, trial=trial)
            run, on_trial = trial.name, True
            notes.append(f"trial {trial.name}: starting it, {trial.attempts_left} attempts left")
    keep = {n for n in (current, previous, trial.name if trial else None) if n is not None}
    remove = frozenset() if disk.busy else frozenset(disk.present - keep)
    return Plan(run, current, previous, replace(state, problem=""), remove, tuple(notes), on_trial)


def _deadline_passed(trial: Trial, clock: Clock) -> bool:
    """An earlier attempt ran past its deadline without committing. Across a reboot the
    clocks say nothing (the attempt simply counts)."""
    if trial.boot_deadline is None:
        return False
    if trial.boot_id is not None and trial.boot_id == clock.boot_id:
        return clock.boottime > trial.boot_deadline
    return False


# --- the store (I/O) -------------------------------------------------------------------------


def _fsync_tree(top: Path) -> None:
    """Every file and directory below ``top``, files first, so the marker after it means
    the whole tree is on disk."""
    dirs: list[Path] = []
    for dirpath, _dirnames, filenames in os.walk(top):
        d = Path(dirpath)
        dirs.append(d)
        for name in filenames:
            p = d / name
            if p.is_symlink() or not p.is_file():
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in reversed(dirs):
        fsync_dir(d)


class SlotStore:
    """The versions, links and state under ``root``; see the module docstring."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"

    # reading

    def link(self, name: str) -> str | None:
        """The version a link names, or None (absent, or not ``versions/<name>``)."""
        try:
            target = os.readlink(self.root / name)
        except OSError:
            return None
        parts = Path(target).parts
        if len(parts) == 2 and parts[0] == "versions" and _NAME.fullmatch(parts[1]):
            return parts[1]
        return None

    def is_complete(self, name: str) -> bool:
        marker = self.versions / name / MARKER
        return marker.is_file() and not marker.is_symlink()

    def load_state(self) -> State:
        """The state; a missing file is a fresh device, an unusable one is reported in
        ``problem`` and treated as no trial (never an exception). ``highest`` is never
        below the copy kept in ``highest``."""
        state = self._load_state()
        mark = self._read_mark()
        return replace(state, highest=mark) if mark > state.highest else state

    def _load_state(self) -> State:
        path = self.root / STATE_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as exc:
            return State(problem=str(exc))
        if len(data) > STATE_LIMIT:
            return State(problem="too large")
        try:
            return State.from_bytes(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return State(problem=f"corrupt: {exc}")

    def scan(self, *, busy: bool = False) -> Disk:
        present: set[str] = set()
        if self.versions.is_dir():
            present = {p.name for p in self.versions.iterdir() if p.is_dir() or p.is_symlink()}
        complete = {n for n in present if _NAME.fullmatch(n) and self.is_complete(n)}
        return Disk(
            frozenset(present),
            frozenset(complete),
            self.link("current"),
            self.link("previous"),
            self.load_state(),
            busy,
        )

    def venv(self, name: str) -> Path:
        return self.versions / name / "venv"

    def manifest(self, name: str) -> bytes | None:
        """The manifest ``install`` kept with version ``name`` (None: none, or unreadable)."""
        try:
            with (self.versions / name / MANIFEST_FILE).open("rb") as f:
                data = f.read(MANIFEST_LIMIT + 1)
        except OSError:
            return None
        return data if len(data) <= MANIFEST_LIMIT else None

    # writing

    @contextlib.contextmanager
    def _locked(self, *, wait: bool = True) -> Iterator[int | None]:
        """An exclusive flock on root/.lock; the descriptor (for children to inherit so an
        orphaned pip keeps it), or None when ``wait`` is false and someone holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield None
                return
            yield fd
        finally:
            os.close(fd)

    def _write_state(self, state: State) -> None:
        # The mark is kept twice, so a damaged state file cannot lower it (replay).
        if state.highest > self._read_mark():
            atomic_write(self.root / MARK_FILE, f"{state.highest}\n".encode(), mode=0o644)
        atomic_write(self.root / STATE_FILE, state.to_bytes(), mode=0o644)

    def _read_mark(self) -> int:
        try:
            text = (self.root / MARK_FILE).read_bytes()[:32].decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return 0
        return int(text) if text.isdigit() else 0

    def _switch(self, link: str, name: str | None) -> None:
        """Point ``link`` at versions/<name> atomically (or remove it for None)."""
        path = self.root / link
        if name is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fsync_dir(self.root)
            return
        tmp = self.root / f".{link}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"versions/{name}", tmp)
        _step(f"{link}-temp-link")
        fsync_dir(self.root)
        _step(f"{link}-temp-fsynced")
        os.replace(tmp, path)
        _step(f"{link}-renamed")
        fsync_dir(self.root)
        _step(f"{link}-fsynced")

    def _remove(self, names: Sequence[str] | frozenset[str]) -> None:
        for name in sorted(names):
            p = self.versions / name
            log.info("firmware: removing %s", p)
            if p.is_symlink() or not p.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            else:
                # The marker first, so a kill half-way leaves something recognisably debris.
                with contextlib.suppress(FileNotFoundError):
                    (p / MARKER).unlink()
                _step("remove-unmarked")
                shutil.rmtree(p, ignore_errors=True)
        if names:
            fsync_dir(self.versions)

    def install(
        self,
        wheels: Path,
        name: str,
        *,
        requirement: str = "hss-pu",
        system_site_packages: bool | None = None,
        python: str = sys.executable,
        with_pip: bool = True,
        timeout: float = 900.0,
        manifest: bytes | None = None,
    ) -> Path:
        """Build versions/<name> from a directory of wheels, offline; returns its venv.

        The venv is built at its final path (a venv cannot be moved: its scripts name
        their interpreter), checked by running its ``hss-pu --version``, fsync'd, and only
        then marked COMPLETE. It is not run until ``begin_trial``. ``system_site_packages``
        defaults to what the current version's venv has (a Pi's sees apt's picamera2).
        ``with_pip=False`` builds a venv without pip, installed into by ``python``'s own
        pip (~0.4 s instead of ~3 s; the tests), but that version cannot install the next.
        """
        if not _NAME.fullmatch(name):
            raise InstallError(f"bad version name {name!r}")
        if not wheels.is_dir():
            raise InstallError(f"no wheel directory {wheels}")
        with self._locked() as lock:
            assert lock is not None
            _step("locked")
            disk = self.scan()
            if name in {disk.current, disk.previous}:
                raise InstallError(f"version {name} is installed and in use")
            if disk.state.trial is not None and disk.state.trial.name == name:
                raise InstallError(f"version {name} is on trial")
            self.versions.mkdir(parents=True, exist_ok=True)
            target = self.versions / name
            if target.exists() or target.is_symlink():
                self._remove([name])
                _step("old-removed")
            if system_site_packages is None:
                system_site_packages = self._current_uses_system_site()
            target.mkdir(mode=0o755)
            _step("mkdir")
            venv = target / "venv"
            env = {
                **os.environ,
                "PIP_CONFIG_FILE": os.devnull,
                "PIP_NO_INPUT": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            }
            # pip compiles the venv's bytecode now, while we may write (the unit's may not).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            site = ["--system-site-packages"] if system_site_packages else []
            nopip = [] if with_pip else ["--without-pip"]
            cmd = [python, "-m", "venv", *site, *nopip, str(venv)]
            self._run(cmd, env, lock, timeout, "venv")
            _step("venv")
            vpy = str(venv / "bin" / "python")
            installer = [vpy, "-m", "pip"] if with_pip else [python, "-m", "pip", "--python", vpy]
            pip = [
                *installer,
                "install",
                "--no-index",
                "--no-cache-dir",
                "--only-binary=:all:",
                "--find-links",
                str(wheels),
                requirement,
            ]
            self._run(pip, env, lock, timeout, "pip install")
            _step("pip")
            self._run([str(venv / "bin" / "hss-pu"), "--version"], env, lock, 120.0, "smoke test")
            _step("smoke")
            if manifest is not None:
                if len(manifest) > MANIFEST_LIMIT:
                    raise InstallError(f"manifest of {len(manifest)} bytes is too large")
                atomic_write(target / MANIFEST_FILE, manifest, mode=0o644)
                _step("manifest")
            _fsync_tree(target)
            _step("fsync-tree")
            marker = target / MARKER
            atomic_write(marker, f"{name}\n".encode(), mode=0o644)
            _step("marker")
            fsync_dir(self.versions)
            _step("installed")
            log.info("firmware: installed %s", target)
            return venv

    def _current_uses_system_site(self) -> bool:
        current = self.link("current")
        if current is None:
            return False
        try:
            cfg = (self.venv(current) / "pyvenv.cfg").read_text()
        except OSError:
            return False
        return bool(re.search(r"^include-system-site-packages\s*=\s*true\s*$", cfg, re.M | re.I))

    @staticmethod
    def _run(cmd: list[str], env: dict[str, str], lock: int, timeout: float, what: str) -> None:
        # The lock's descriptor goes to the child: if we are killed, an orphaned pip still
        # holds it, so a start-up meanwhile leaves its directory alone.
        _step(f"{what}-start")
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                pass_fds=(lock,),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{what} failed: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-800:]
            raise InstallError(f"{what} failed (exit {proc.returncode}): {tail}")

    def begin_trial(
        self,
        name: str,
        version_number: int,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        trial_seconds: float = DEFAULT_TRIAL_SECONDS,
    ) -> None:
        """Put an installed version on trial: the switch. One atomic state write also
        raises the anti-rollback mark, so even a rolled-back number is never taken again."""
        if not 1 <= attempts <= 100 or not 0 < trial_seconds <= MAX_TRIAL_SECONDS:
            raise ValueError(f"attempts 1-100 and trial_seconds in (0, {MAX_TRIAL_SECONDS}]")
        with self._locked():
            if not self.is_complete(name):
                raise InstallError(f"version {name} is not a complete install")
            state = self.load_state()
            if state.trial is not None:
                raise InstallError(f"version {state.trial.name} is already on trial")
            if version_number <= state.highest:
                raise InstallError(
                    f"version number {version_number} is not above {state.highest}, "
                    "the highest ever installed"
                )
            trial = Trial(name, version_number, attempts, float(trial_seconds))
            self._write_state(replace(state, highest=version_number, trial=trial, problem=""))
            _step("trial-state")

    def startup(self, clock: Clock | None = None) -> Plan:
        """Apply the start-up rules (``decide``) to the disk; never raises for what a past
        run left behind. The decremented attempt is on disk before this returns."""
        clock = clock or Clock.now()
        with self._locked(wait=False) as lock:
            disk = self.scan(busy=lock is None)
            plan = decide(disk, clock)
            for note in plan.notes:
                log.warning("firmware: %s", note)
            missing = not (self.root / STATE_FILE).exists()
            if disk.state.problem or plan.state != disk.state or missing:
                self._write_state(plan.state)
                _step("startup-state")
            # current first: a kill in between leaves both naming the same version.
            if plan.current != disk.current:
                self._switch("current", plan.current)
            if plan.previous != disk.previous:
                self._switch("previous", plan.previous)
            self._remove(plan.remove)
            with contextlib.suppress(FileNotFoundError):
                (self.root / ".current.tmp").unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.root / ".previous.tmp").unlink()
            _step("startup-done")
            return plan

    def commit(self, name: str) -> None:
        """The trial ``name`` is healthy: it becomes ``current``, the old one ``previous``,
        anything older is removed. Cancels the trial's alarm."""
        with self._locked():
            state = self.load_state()
            if state.trial is None or state.trial.name != name:
                raise InstallError(f"version {name} is not on trial")
            old = self.link("current")
            if old is not None and old != name and self.is_complete(old):
                self._switch("previous", old)
            self._switch("current", name)
            self._write_state(
                replace(state, trial=None, last=Outcome(name, "committed", "", time.time()))
            )
            _step("commit-state")
            with contextlib.suppress(ValueError, OSError):
                signal.alarm(0)
            keep = {name, self.link("previous")}
            self._remove(frozenset(self.scan().present - keep))
            _step("committed")

    def adopt(self, name: str) -> None:
        """Make versions/<name>, built by someone else (``make install``: pip from the
        network, as root), the committed version at once: fsync'd, marked, linked. A person
        installing by hand is the health check; a trial in progress is dropped."""
        if not _NAME.fullmatch(name):
            raise InstallError(f"bad version name {name!r}")
        with self._locked():
            target = self.versions / name
            if not (target / "venv" / "bin" / "hss-pu").is_file():
                raise InstallError(f"{target} has no venv/bin/hss-pu")
            _fsync_tree(target)
            atomic_write(target / MARKER, f"{name}\n".encode(), mode=0o644)
            fsync_dir(self.versions)
            state = self.load_state()
            old = self.link("current")
            if old is not None and old != name and self.is_complete(old):
                self._switch("previous", old)
            self._switch("current", name)
            done = Outcome(name, "installed", "by hand", time.time())
            self._write_state(replace(state, trial=None, last=done, problem=""))
            keep = {name, self.link("previous")}
            self._remove(frozenset(self.scan().present - keep))

    def rollback(self, name: str, reason: str) -> None:
        """The trial ``name`` failed its health gate: drop it, record why. The caller then
        restarts (``reexec``) into the committed version."""
        with self._locked():
            state = self.load_state()
            if state.trial is None or state.trial.name != name:
                raise InstallError(f"version {name} is not on trial")
            self._write_state(
                replace(state, trial=None, last=Outcome(name, "rolled back", reason, time.time()))
            )
            _step("rollback-state")


# --- starting the right version ------------------------------------------------------------


def running_root() -> Path | None:
    """The slot root this interpreter was installed in (``<root>/versions/<n>/venv``)."""
    prefix = Path(sys.prefix).resolve()
    if prefix.name == "venv" and prefix.parent.parent.name == "versions":
        return prefix.parent.parent.parent
    return None


def running_version() -> str | None:
    """The version name this interpreter was installed as, or None (a checkout)."""
    root = running_root()
    return None if root is None else Path(sys.prefix).resolve().parent.name


def emulated_root(storage_dir: Path | str) -> Path:
    return Path(storage_dir) / "firmware"


def _entry() -> list[str]:
    """How this process was started, to be started again the same way."""
    saved = os.environ.get(ENTRY_ENV)
    if saved:
        with contextlib.suppress(ValueError):
            entry = json.loads(saved)
            if isinstance(entry, list) and entry and all(isinstance(a, str) for a in entry):
                return entry
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and os.path.basename(argv0) == "hss-pu" and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]
    return [sys.executable, "-m", "hss_pu"]


def reexec(args: Sequence[str]) -> None:
    """Replace this process with the launcher it was started by, with ``args``: a restart
    always goes through the committed version's start-up rules (same PID for systemd)."""
    entry = _entry()
    os.environ.pop(LAUNCHED_ENV, None)
    logging.shutdown()
    os.execv(entry[0], [*entry, *args])  # noqa: S606


def launch(root: Path, args: Sequence[str], clock: Clock | None = None) -> Plan | None:
    """At the start of ``hss-pu run``: apply the start-up rules, then hand over (execv) to
    the version to run unless that is this very code. Returns the plan when this process
    goes on (None: it was started by a launcher, which already decided)."""
    if os.environ.pop(LAUNCHED_ENV, None) is not None:
        return None
    # A trial's alarm survives its rollback's re-exec into us: we decide afresh.
    signal.alarm(0)
    entry = _entry()
    store = SlotStore(root)
    if not store.root.is_dir():
        return None
    try:
        plan = store.startup(clock)
    except OSError as exc:
        # Nothing can be persisted (a full or read-only disk, a state path that is not a
        # file): no attempt can be counted, so no trial; the committed version runs.
        log.error("firmware: start-up rules not applied (%s): starting the committed one", exc)
        current = store.link("current")
        run = current if current is not None and store.is_complete(current) else None
        plan = Plan(run, current, store.link("previous"), store.load_state())
    if plan.run is None:
        return plan
    venv = store.venv(plan.run)
    if Path(sys.prefix).resolve() == venv.resolve() and not plan.trial:
        return plan
    os.environ[LAUNCHED_ENV] = plan.run
    os.environ[ENTRY_ENV] = json.dumps(entry)
    if plan.trial and plan.state.trial is not None:
        signal.alarm(int(plan.state.trial.trial_seconds + ALARM_GRACE))
    log.info("firmware: starting version %s", plan.run)
    logging.shutdown()
    exe = str(venv / "bin" / "hss-pu")
    try:
        os.execv(exe, [exe, *args])  # noqa: S606
    except OSError as exc:
        # Damaged since it was marked complete: this code runs instead (a trial's spent
        # attempt stays spent, so it is not tried for ever).
        signal.alarm(0)
        os.environ.pop(LAUNCHED_ENV, None)
        log.error("firmware: cannot start version %s (%s): running this code", plan.run, exc)
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hss_pu.firmware.slots adopt ROOT NAME`` (scripts/install.sh)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "adopt":
        print("usage: python -m hss_pu.firmware.slots adopt ROOT NAME", file=sys.stderr)
        return 2
    try:
        SlotStore(args[1]).adopt(args[2])
    except (InstallError, OSError) as exc:
        print(f"hss-pu firmware: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
