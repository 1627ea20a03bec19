"""Installed firmware versions (issue 12, items 4-6): the start-up rules, install from
wheels, commit and rollback, and SIGKILL at every durable step of an upgrade.

Versions are built from a hand-made ``hss-pu`` wheel (tests/support/fakewheel.py) so an
install takes ~0.4 s; real venvs, real pip, real symlinks and renames throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from hss_pu import __version__
from hss_pu.firmware import slots
from hss_pu.firmware.slots import Clock, Disk, InstallError, SlotStore, State, Trial, decide
from tests.support.fakewheel import build_fake_wheel

REPO = Path(__file__).resolve().parent.parent
BOOT = "boot-a"


def _clock(boottime: float = 100.0, boot_id: str | None = BOOT) -> Clock:
    return Clock(wall=1_800_000_000.0 + boottime, boot_id=boot_id, boottime=boottime)


def _disk(
    *,
    complete: set[str],
    present: set[str] | None = None,
    current: str | None = "1.0",
    previous: str | None = None,
    state: State | None = None,
) -> Disk:
    present = complete | (present or set())
    return Disk(frozenset(present), frozenset(complete), current, previous, state or State())


# --- the rules, by construction ------------------------------------------------------------


def test_trial_counts_down_then_rolls_back_after_n_failed_starts() -> None:
    state = State(highest=2, trial=Trial("2.0", 2, attempts_left=3, trial_seconds=60))
    runs = []
    for start in range(4):
        plan = decide(_disk(complete={"1.0", "2.0"}, state=state), _clock(10.0 + start))
        runs.append((plan.run, plan.trial))
        state = plan.state
        if start < 3:
            assert state.trial is not None and state.trial.attempts_left == 2 - start
    assert runs == [("2.0", True)] * 3 + [("1.0", False)]
    assert state.trial is None and state.last is not None
    assert state.last.result == "rolled back"
    assert "start attempts" in state.last.reason
    assert state.highest == 2
    assert plan.current == "1.0"  # never changed by the trial


def test_attempt_past_its_deadline_rolls_back_with_reason() -> None:
    state = State(highest=2, trial=Trial("2.0", 2, attempts_left=3, trial_seconds=60))
    first = decide(_disk(complete={"1.0", "2.0"}, state=state), _clock(100.0))
    assert first.run == "2.0"
    # Restarted (watchdog, a crash) within its 60 s: another attempt.
    again = decide(_disk(complete={"1.0", "2.0"}, state=first.state), _clock(150.0))
    assert again.run == "2.0"
    # Restarted after running 61 s without a commit: the health gate failed.
    late = decide(_disk(complete={"1.0", "2.0"}, state=again.state), _clock(211.5))
    assert late.run == "1.0" and late.state.trial is None
    assert late.state.last is not None and "in time" in late.state.last.reason


def test_a_reboot_counts_the_attempt_but_ignores_the_clocks() -> None:
    # A Pi has no RTC: after a power cut the clocks of the old boot mean nothing.
    state = State(highest=2, trial=Trial("2.0", 2, attempts_left=3, trial_seconds=60))
    first = decide(_disk(complete={"1.0", "2.0"}, state=state), _clock(5000.0))
    after = decide(_disk(complete={"1.0", "2.0"}, state=first.state), _clock(3.0, "boot-b"))
    assert after.run == "2.0"
    assert after.state.trial is not None and after.state.trial.attempts_left == 1


def test_current_missing_or_incomplete_falls_back_to_previous() -> None:
    for present in (set(), {"3.0"}):  # 3.0 missing, or there without its marker
        plan = decide(
            _disk(complete={"2.0"}, present=present, current="3.0", previous="2.0"), _clock()
        )
        assert (plan.run, plan.current, plan.previous) == ("2.0", "2.0", None)
        assert plan.remove == frozenset(present)
    # Nothing usable at all: the launcher's own code runs (a checkout), nothing deleted
    # that is complete.
    plan = decide(_disk(complete=set(), current="3.0", previous="2.0"), _clock())
    assert (plan.run, plan.current, plan.previous) == (None, None, None)


def test_half_written_and_unreferenced_versions_are_removed_unless_busy() -> None:
    disk = _disk(complete={"1.0", "0.9", "0.8"}, present={"2.0"}, previous="0.9")
    plan = decide(disk, _clock())
    assert plan.remove == {"0.8", "2.0"}
    assert decide(replace(disk, busy=True), _clock()).remove == frozenset()


def test_interrupted_commit_is_finished() -> None:
    # Killed after current was switched, before the state said so.
    state = State(highest=2, trial=Trial("2.0", 2, attempts_left=2, trial_seconds=60))
    plan = decide(
        _disk(complete={"1.0", "2.0"}, current="2.0", previous="1.0", state=state), _clock()
    )
    assert (plan.run, plan.trial) == ("2.0", False)
    assert plan.state.trial is None and plan.state.last is not None
    assert plan.state.last.result == "committed"


def test_trial_of_a_vanished_version_rolls_back() -> None:
    state = State(highest=2, trial=Trial("2.0", 2, attempts_left=3, trial_seconds=60))
    plan = decide(_disk(complete={"1.0"}, present={"2.0"}, state=state), _clock())
    assert plan.run == "1.0" and plan.remove == {"2.0"}
    assert plan.state.last is not None and plan.state.last.result == "rolled back"


# --- the store, with real venvs --------------------------------------------------------------


@pytest.fixture(scope="module")
def fw_wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheels")
    out = {}
    for v in ("1.0", "2.0", "3.0"):
        build_fake_wheel(base / v, v)
        out[v] = base / v
    return out


def _committed(root: Path, wheels: dict[str, Path], *names: str) -> SlotStore:
    store = SlotStore(root)
    for n, name in enumerate(names, 1):
        store.install(wheels[name], name, with_pip=False)
        store.begin_trial(name, n)
        store.startup()
        store.commit(name)
    return store


def _version_of(store: SlotStore, link: str) -> str:
    exe = store.root / link / "venv" / "bin" / "hss-pu"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def test_install_commit_keeps_the_version_and_prunes(
    tmp_path: Path, fw_wheels: dict[str, Path]
) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0", "2.0")
    assert (store.link("current"), store.link("previous")) == ("2.0", "1.0")
    assert _version_of(store, "current") == "2.0"
    # Later starts keep running it.
    for _ in range(4):
        plan = store.startup()
        assert (plan.run, plan.trial) == ("2.0", False)
    store.install(fw_wheels["3.0"], "3.0", with_pip=False)
    store.begin_trial("3.0", 3)
    store.commit("3.0")
    assert (store.link("current"), store.link("previous")) == ("3.0", "2.0")
    assert sorted(p.name for p in store.versions.iterdir()) == ["2.0", "3.0"]
    state = store.load_state()
    assert state.highest == 3 and state.last is not None and state.last.result == "committed"
    assert oct((store.root / "state.json").stat().st_mode & 0o777) == "0o644"


def test_high_water_mark_only_goes_up(tmp_path: Path, fw_wheels: dict[str, Path]) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0")
    store.install(fw_wheels["2.0"], "2.0", with_pip=False)
    store.begin_trial("2.0", 7)
    store.rollback("2.0", "no Keepalive answer")
    state = store.load_state()
    assert state.highest == 7  # a rolled-back number is never taken again (replay)
    assert state.last is not None and state.last.reason == "no Keepalive answer"
    assert store.link("current") == "1.0"
    for number in (7, 6, 1):
        with pytest.raises(InstallError, match="not above 7"):
            store.begin_trial("2.0", number)
    assert store.load_state().highest == 7
    store.begin_trial("2.0", 8)
    assert store.load_state().highest == 8


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": 2, "highest": 3}',
        b'{"format": 1, "highest": -1}',
        b'{"format": 1, "highest": 3, "trial": {"name": "../../etc"}}',
        b'{"format": 1, "highest": 3, "trial": {"name": "x", "version_number": "9",'
        b' "attempts_left": 1, "trial_seconds": 5}}',
        b" " * (slots.STATE_LIMIT + 1),
        b'{"format": 1, "highest": 3, "trial": {"name": "2.0", "version_number": 2,'
        b' "attempts_left": 1, "trial_seconds": 1e300}}',
        b'{"format": 1, "highest": 3, "trial": {"name": "2.0", "version_number": 2,'
        b' "attempts_left": 1, "trial_seconds": 60, "boot_deadline": "soon"}}',
        b'{"format": 1, "highest": 3, "trial": null, "last": ["x"]}',
        None,  # a directory where the file should be
    ],
)
def test_corrupt_state_starts_the_committed_version(
    tmp_path: Path, fw_wheels: dict[str, Path], content: bytes | None
) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0")
    path = store.root / "state.json"
    path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    if content is None:
        # Nothing can be written: the launcher still starts the committed version.
        with pytest.raises(OSError):
            store.startup()
        assert store.load_state().problem
        out = _launch(store.root, tmp_path / "log", 0)
        assert out.returncode == 0, out.stderr
        assert "start-up rules not applied" in out.stderr
        assert (tmp_path / "log").read_text() == "1.0 run --config x.toml\n"
        return
    plan = store.startup()
    assert (plan.run, plan.trial) == ("1.0", False)
    # Rewritten sound; the anti-rollback mark survives in its second copy.
    assert store.load_state() == State(highest=1)
    with pytest.raises(InstallError, match="not above 1"):
        store.begin_trial("1.0", 1)
    assert store.link("current") == "1.0"


def test_install_refuses_bad_names_and_a_version_in_use(
    tmp_path: Path, fw_wheels: dict[str, Path]
) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0")
    for bad in ("..", "../x", "", "a/b", ".hidden"):
        with pytest.raises(InstallError, match="bad version name"):
            store.install(fw_wheels["2.0"], bad, with_pip=False)
    with pytest.raises(InstallError, match="in use"):
        store.install(fw_wheels["1.0"], "1.0", with_pip=False)
    with pytest.raises(InstallError, match="pip install failed"):
        store.install(tmp_path, "2.0", with_pip=False)  # no wheels there
    plan = store.startup()
    assert plan.remove == {"2.0"} and not (store.versions / "2.0").exists()


def test_install_with_its_own_pip(tmp_path: Path, fw_wheels: dict[str, Path]) -> None:
    # The default: the new venv carries pip, so it can install the version after it.
    store = SlotStore(tmp_path / "fw")
    venv = store.install(fw_wheels["1.0"], "1.0")
    assert (venv / "bin" / "pip").exists()
    assert (store.versions / "1.0" / "COMPLETE").read_text() == "1.0\n"


# --- SIGKILL at every step -------------------------------------------------------------------


def _drive(
    root: Path, wheels: Path, kill_at: int, delay: float = 0.0, mode: str = "commit"
) -> tuple[int, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fw_driver", root, wheels, str(kill_at), str(delay)],
        cwd=REPO,
        env={**os.environ, "FW_DRIVER_MODE": mode},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, _ = proc.communicate(timeout=60)
    # The whole group died at once (power loss), but a child's exit may not be complete
    # yet: wait for it, as the next boot would, so its lock is released.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the killed upgrade's processes are still there")
    return proc.returncode, [line.split(" ", 1)[1] for line in out.splitlines()]


def _assert_recovers(store: SlotStore, label: str) -> str:
    plan = store.startup()
    assert plan.run in {"1.0", "2.0"}, label
    current = store.link("current")
    assert current in {"1.0", "2.0"} and store.is_complete(current), label
    assert {p.name for p in store.versions.iterdir()} <= {"1.0", "2.0"}, label
    for name in os.listdir(store.versions):
        assert store.is_complete(name), f"{label}: {name} left half-written"
    assert not store.load_state().problem, label
    assert _version_of(store, "current") == current, label
    assert plan.run is not None
    return plan.run


def test_sigkill_at_every_step_leaves_a_complete_current(
    tmp_path: Path, fw_wheels: dict[str, Path]
) -> None:
    # Upgrade 1.0 -> 2.0 (install, trial, a start, commit) killed at each durable step,
    # and a few times in the middle of `venv` and `pip`; then the next start.
    root = tmp_path / "fw"
    _committed(root, fw_wheels, "1.0")
    template = tmp_path / "template"
    shutil.copytree(root, template, symlinks=True)
    rc, steps = _drive(root, fw_wheels["2.0"], 0)
    assert rc == 0 and len(steps) >= 20, steps
    cases = [(k, 0.0) for k in range(1, len(steps) + 1)]
    cases += [(steps.index("venv-start") + 1, d) for d in (0.01, 0.02)]
    cases += [(steps.index("pip install-start") + 1, d) for d in (0.05, 0.15, 0.25)]
    ran = {}
    for k, delay in cases:
        shutil.rmtree(root)
        shutil.copytree(template, root, symlinks=True)  # same path: the venv's scripts work
        rc, _ = _drive(root, fw_wheels["2.0"], k, delay)
        label = f"killed at step {k} ({steps[k - 1]}) after {delay}s"
        assert rc == -signal.SIGKILL, f"{label}: exit {rc}"
        store = SlotStore(root)
        first = _assert_recovers(store, label)
        ran[label] = first
        # The start after that one too (a trial gets its attempts, then commits or not).
        second = _assert_recovers(store, label)
        if first == "2.0" and store.link("current") != "2.0":
            assert store.load_state().trial is not None, label
        assert second in {"1.0", "2.0"}
    # Killed before the trial state was written: 1.0 stays and 2.0 is cleaned away;
    # killed after it: 2.0 runs on trial (or committed).
    trial_at = steps.index("trial-state") + 1
    assert all(v == "1.0" for lab, v in ran.items() if int(lab.split()[3]) < trial_at)
    assert all(v == "2.0" for lab, v in ran.items() if int(lab.split()[3]) >= trial_at)
    assert len(cases) >= 25


def test_startup_killed_while_removing_debris(tmp_path: Path, fw_wheels: dict[str, Path]) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0")
    store.install(fw_wheels["2.0"], "2.0", with_pip=False)  # complete, never put on trial
    code = (
        "import os, signal, sys\n"
        "from hss_pu.firmware import slots\n"
        "def hook(step):\n"
        "    if step == 'remove-unmarked': os.kill(os.getpid(), signal.SIGKILL)\n"
        "slots.set_step_hook(hook)\n"
        "slots.SlotStore(sys.argv[1]).startup()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, store.root], cwd=REPO, timeout=30, check=False
    )
    assert proc.returncode == -signal.SIGKILL
    assert not store.is_complete("2.0") and (store.versions / "2.0").exists()
    assert _assert_recovers(store, "after a killed clean-up") == "1.0"
    assert not (store.versions / "2.0").exists()


# --- the launcher: hand-over by execv ------------------------------------------------------


def _launch(root: Path, log: Path, rc: int) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hss_pu.firmware import slots\n"
        "plan = slots.launch(Path(sys.argv[1]), ['run', '--config', 'x.toml'])\n"
        "print('launcher itself runs', plan.run if plan else None)\n"
    )
    env = {**os.environ, "FAKE_PU_LOG": str(log), "FAKE_PU_RC": str(rc)}
    env.pop(slots.LAUNCHED_ENV, None)
    return subprocess.run(
        [sys.executable, "-c", code, root],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_launcher_runs_the_trial_n_times_then_the_committed_version(
    tmp_path: Path, fw_wheels: dict[str, Path]
) -> None:
    # A trial whose every start fails (an import error, a crash): systemd restarts the
    # unit, and each start goes through the committed code, which spends an attempt.
    store = _committed(tmp_path / "fw", fw_wheels, "1.0")
    store.install(fw_wheels["2.0"], "2.0", with_pip=False)
    store.begin_trial("2.0", 2, attempts=3)
    log = tmp_path / "runs.log"
    codes = [_launch(store.root, log, rc=1).returncode for _ in range(4)]
    assert codes == [1, 1, 1, 1]
    assert log.read_text().splitlines() == ["2.0 run --config x.toml"] * 3 + [
        "1.0 run --config x.toml"
    ]
    state = store.load_state()
    assert state.trial is None and state.last is not None and state.last.result == "rolled back"


def test_launcher_on_an_empty_root_runs_itself(tmp_path: Path) -> None:
    out = _launch(tmp_path / "none", tmp_path / "log", 0)
    assert out.returncode == 0 and "launcher itself runs None" in out.stdout
    root = tmp_path / "empty"
    root.mkdir()
    out = _launch(root, tmp_path / "log", 0)
    assert out.returncode == 0 and "launcher itself runs None" in out.stdout, out.stderr
    assert not (tmp_path / "log").exists()


def test_state_file_is_plain_json(tmp_path: Path, fw_wheels: dict[str, Path]) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0")
    doc = json.loads((store.root / "state.json").read_text())
    assert doc["format"] == 1 and doc["highest"] == 1 and doc["trial"] is None
    assert doc["last"]["result"] == "committed"


def test_hss_pu_run_from_the_checkout_hands_over_to_the_emulated_trial(
    tmp_path: Path, fw_wheels: dict[str, Path], write_config: Callable[..., Path]
) -> None:
    # `make run` / a laptop: the checkout's hss-pu applies the rules to
    # storage.dir/firmware and execs the chosen version with the same arguments; that
    # version learns how to come back through the launcher (its restarts count).
    config = write_config()
    store = _committed(tmp_path / "state" / "firmware", fw_wheels, "1.0")
    store.install(fw_wheels["2.0"], "2.0", with_pip=False)
    store.begin_trial("2.0", 2, attempts=2)
    log, entry = tmp_path / "runs.log", tmp_path / "entry"
    env = {**os.environ, "FAKE_PU_LOG": str(log), "FAKE_PU_ENTRY_LOG": str(entry)}
    env.pop(slots.LAUNCHED_ENV, None)
    env.pop(slots.ENTRY_ENV, None)
    hss_pu = Path(sys.executable).parent / "hss-pu"
    for _ in range(3):
        subprocess.run(
            [hss_pu, "run", "--config", config],
            env=env,
            timeout=60,
            check=False,
            capture_output=True,
        )
    assert log.read_text().splitlines() == [
        f"{v} run --config {config}" for v in ("2.0", "2.0", "1.0")
    ]
    assert json.loads(entry.read_text()) == [str(hss_pu)]
    last = store.load_state().last
    assert last is not None and last.result == "rolled back"


def test_restart_goes_back_through_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(slots.ENTRY_ENV, json.dumps(["/opt/hss-pu/current/venv/bin/hss-pu"]))
    assert slots._entry() == ["/opt/hss-pu/current/venv/bin/hss-pu"]
    monkeypatch.setenv(slots.ENTRY_ENV, "not json")
    monkeypatch.setattr(sys, "argv", ["/nonexistent/hss-pu"])
    assert slots._entry() == [sys.executable, "-m", "hss_pu"]


def test_make_install_adopts_a_version_it_built(tmp_path: Path, fw_wheels: dict[str, Path]) -> None:
    # scripts/install.sh builds versions/<name>/venv with pip, then `slots adopt`:
    # marked complete, current -> it, previous -> the one before, any trial dropped.
    store = _committed(tmp_path / "fw", fw_wheels, "1.0")
    store.install(fw_wheels["2.0"], "2.0", with_pip=False)
    store.begin_trial("2.0", 2)
    venv = store.versions / "3.0" / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            fw_wheels["3.0"],
            "hss-pu",
        ],
        check=True,
    )
    cmd = [sys.executable, "-m", "hss_pu.firmware.slots", "adopt", str(store.root), "3.0"]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=30)
    assert (store.link("current"), store.link("previous")) == ("3.0", "1.0")
    assert store.is_complete("3.0") and not (store.versions / "2.0").exists()
    state = store.load_state()
    assert state.trial is None and state.highest == 2
    assert state.last is not None and state.last.result == "installed"
    assert store.startup().run == "3.0"
    bad = subprocess.run(
        [sys.executable, "-m", "hss_pu.firmware.slots", "adopt", store.root, "../x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 1 and "bad version name" in bad.stderr


@pytest.mark.slow
def test_real_hss_pu_wheel_set_installs_offline(tmp_path: Path) -> None:
    # The bundle's payload: this checkout's wheel and its dependencies (~60 MB). Built
    # with pip from whatever index pip is configured with; skipped where there is none.
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--disable-pip-version-check",
            "-w",
            wheels,
            REPO,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"no wheel set here: {built.stderr.strip()[-300:]}")
    store = SlotStore(tmp_path / "fw")
    started = time.monotonic()
    venv = store.install(wheels, "real", system_site_packages=False)
    took = time.monotonic() - started
    assert store.is_complete("real")
    out = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import hss_pu.daemon, av, numpy, cryptography; "
            "import hss_pu; print(hss_pu.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == __version__
    assert took < 60, f"install took {took:.1f} s"


def test_high_water_mark_survives_a_lost_state_file(
    tmp_path: Path, fw_wheels: dict[str, Path]
) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0", "2.0")
    (store.root / "state.json").unlink()
    assert store.load_state().highest == 2
    store.startup()  # rewrites state.json, with the mark
    (store.root / "highest").write_text("1\n")  # an older copy never lowers the state's
    assert store.load_state().highest == 2


def test_launcher_cancels_a_trials_alarm(tmp_path: Path) -> None:
    # A trial that rolled back re-execs into the launcher with its alarm still pending.
    code = (
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "from hss_pu.firmware import slots\n"
        "signal.alarm(1)\n"
        "slots.launch(Path(sys.argv[1]), ['run'])\n"
        "time.sleep(1.3)\n"
        "print('alive')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, tmp_path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0 and "alive" in out.stdout


def test_sigkill_while_a_failed_trial_rolls_back(
    tmp_path: Path, fw_wheels: dict[str, Path]
) -> None:
    root = tmp_path / "fw"
    _committed(root, fw_wheels, "1.0")
    template = tmp_path / "template"
    shutil.copytree(root, template, symlinks=True)
    rc, steps = _drive(root, fw_wheels["2.0"], 0, mode="rollback")
    assert rc == 0, steps
    store = SlotStore(root)
    assert store.link("current") == "1.0" and not (store.versions / "2.0").exists()
    last = store.load_state().last
    assert last is not None and last.reason == "health gate failed"
    first = steps.index("trial-state") + 1
    assert len(steps) - first >= 4, steps
    for k in range(first, len(steps) + 1):
        shutil.rmtree(root)
        shutil.copytree(template, root, symlinks=True)
        rc, _ = _drive(root, fw_wheels["2.0"], k, mode="rollback")
        label = f"rollback killed at step {k} ({steps[k - 1]})"
        assert rc == -signal.SIGKILL, label
        ran = _assert_recovers(store, label)
        assert store.link("current") == "1.0", label
        last = store.load_state().last
        if last is not None and last.result == "rolled back":  # 1.0 from now on
            assert ran == "1.0" and _assert_recovers(store, label) == "1.0", label
        else:  # killed before the rollback was written: the trial's one attempt is spent
            assert ran == "1.0" or store.load_state().trial is not None, label
            assert _assert_recovers(store, label) == "1.0", label


def test_current_removed_by_hand_falls_back_to_previous(
    tmp_path: Path, fw_wheels: dict[str, Path]
) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0", "2.0")
    shutil.rmtree(store.versions / "2.0")
    plan = store.startup()
    assert (plan.run, store.link("current"), store.link("previous")) == ("1.0", "1.0", None)
    assert _version_of(store, "current") == "1.0"


def test_a_version_damaged_after_its_marker_does_not_stop_the_launcher(
    tmp_path: Path, fw_wheels: dict[str, Path]
) -> None:
    store = _committed(tmp_path / "fw", fw_wheels, "1.0")
    (store.venv("1.0") / "bin" / "hss-pu").unlink()
    out = _launch(store.root, tmp_path / "log", 0)
    assert out.returncode == 0, out.stderr
    assert "cannot start version 1.0" in out.stderr
    assert "launcher itself runs 1.0" in out.stdout
