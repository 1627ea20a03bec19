"""Soak: one emulated PU records, pushes live and raises alarms while faults fire.

``hss-pu run`` (kept running by a systemd-like supervisor: Restart=on-failure) logs in to
the reference platform (in this process, TLS on loopback), which starts a recording (4 s
segments) and a live push (srt-live-transmit behind a userspace UDP relay) after every
login; its emulated PIR goes on and off every 10-30 s. Every 10-60 s (seeded RNG, printed)
one fault fires, each kind once in a shuffled round before any repeats: the platform
restarts, Vr misbehaves (5xx, 429, held, slow, aborted), an upload is cut, the SRT
listener restarts, the relay loses/delays/reorders packets, the spool fills (Vr away
past the ``storage.spool_max_mb`` quota, so it evicts), the recording disk fills (the
daemon records onto a real 32 MB filesystem, a :class:`SmallDisk`, and another file takes
all its free space while Vr is away), or the daemon is SIGKILLed.

At the end the platform comes back for good, the daemon drains, and the run is
accounted: every segment the daemon closed (its debug log: ``segment closed: start ...``)
must be saved on the platform once, or dropped by the daemon and reported (op=stat);
segments closed, in memory and not yet saved when a SIGKILL came are counted apart
(a kill -9 loses RAM). Exit status 1 on any other loss, any duplicate or a crash nobody
caused.

Run: .venv/bin/python bench/soak.py [--minutes 30] [--seed N]   (or make soak)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from percentile import pct

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests.support: the rig and the process-side faults
    sys.path.insert(0, str(REPO))

from hss_pu.reference_platform.faults import (  # noqa: E402
    Fault,
    PlatformRestart,
    SrtListenerRestart,
    VrCutUpload,
    VrFaults,
    VrOutage,
)
from hss_pu.reference_platform.server import ReferencePlatform  # noqa: E402
from hss_pu.services.localctl import send_command  # noqa: E402
from tests.support.faults import DaemonKill, DiskFull, RelayChaos, Supervisor  # noqa: E402
from tests.support.rig import DEVICE, daemon_config, start_platform, write_config_file  # noqa: E402
from tests.support.smalldisk import SmallDisk, card_profile  # noqa: E402
from tests.support.udp_relay import UdpRelay  # noqa: E402

SESSION, STREAM, SEG = "soak", "soak-live", 4


def _key(start: float) -> float:
    """A segment's start at the precision both sides carry it (milliseconds: the log's
    %.3f, Vr's declared start), so one instant gives one key on both."""
    return round(start, 3)


_CLOSED = re.compile(r"segment closed: start ([0-9.]+), ([0-9.]+) s")
_DROPPED = re.compile(r"segment dropped: start ([0-9.]+) \((\w+)\)")
_ALARM_START = re.compile(r"^(\S+) .*alarm pir ch0: start")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _s(v: float) -> str:
    return f"{v:.1f} s"


FAULTS = (
    "platform-restart",
    "vr-faults",
    "vr-cut-upload",
    "srt-listener-restart",
    "srt-relay-chaos",
    "vr-outage-spool-full",
    "disk-full",
    "daemon-sigkill",
)
DISK_MB = 32
WARM_UP = 10.0  # s before the first fault: recording and live running


def plan(
    seed: int, minutes: float, every: tuple[float, float], cool_down: float
) -> list[tuple[float, str]]:
    """(seconds from the start, fault name): every ``every`` s, each kind once in a
    shuffled round before any repeats, none in the last ``cool_down`` s (the longest
    fault then ends in time); the same for the same seed, whatever happens."""
    rng = random.Random(f"{seed}-plan")
    out: list[tuple[float, str]] = []
    deck: list[str] = []
    t = WARM_UP
    while True:
        t += rng.uniform(*every)
        if t > minutes * 60 - cool_down:
            return out
        if not deck:
            deck = rng.sample(FAULTS, len(FAULTS))
        out.append((round(t, 1), deck.pop()))


@dataclass
class Result:
    minutes: float
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    recorded: int = 0
    saved: int = 0
    lost: list[float] = field(default_factory=list)
    lost_to_kill: list[float] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_reported: int = 0
    duplicates: int = 0
    undecodable: int = 0
    sensor_on: int = 0  # "pir on" accepted by the daemon
    alarms_raised: int = 0  # alarm starts the daemon logged
    alarms_delivered: int = 0  # distinct starts the platform received
    alarms_duplicated: int = 0  # received again (at-least-once delivery over a lost link)
    alarms_lost_to_kill: int = 0  # raised shortly before a SIGKILL, never delivered
    alarms_refused: int = 0  # the daemon was down (killed) when the sensor fired
    rss_growth: float = float("nan")  # median of the last tenth of samples vs the first
    rss_from: float = 0.0  # s: samples before this are excluded (5 min, when the run is long)
    fd_growth: int = 0
    rss_mb: tuple[float, float] = (0.0, 0.0)
    reconnect: list[float] = field(default_factory=list)
    restart_online: list[float] = field(default_factory=list)
    restarts: int = 0
    crashes: int = 0
    live_bytes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # fault -> why it cannot fire here
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [
            f"soak: {self.minutes:g} min, seed {self.seed}; faults fired: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            f"segments: recorded {self.recorded}, saved {self.saved}, lost {len(self.lost)}, "
            f"duplicates {self.duplicates}, undecodable {self.undecodable}; dropped by the "
            f"daemon {sum(self.dropped.values())} ("
            + (", ".join(f"{k} {v}" for k, v in self.dropped.items()) or "none")
            + f"), reported to the platform (op=stat) {self.dropped_reported}; "
            f"closed and lost in RAM to a SIGKILL {len(self.lost_to_kill)}",
            f"alarms: PIR on {self.sensor_on} times, raised {self.alarms_raised}, delivered "
            f"{self.alarms_delivered} (+{self.alarms_duplicated} repeated), lost in RAM to a "
            f"SIGKILL {self.alarms_lost_to_kill}; sensor refused while the daemon was down "
            f"{self.alarms_refused}",
            f"RSS {self.rss_mb[0]:.0f} -> {self.rss_mb[1]:.0f} MB from {self.rss_from:.0f} s on "
            f"(growth {self.rss_growth:+.1%}), open fds growth {self.fd_growth:+d}",
            f"reconnect after a platform restart ({len(self.reconnect)}): p50 "
            f"{_s(pct(self.reconnect, 0.5))}, p95 {_s(pct(self.reconnect, 0.95))}; daemon "
            f"start -> online ({len(self.restart_online)}): p50 "
            f"{_s(pct(self.restart_online, 0.5))}, p95 {_s(pct(self.restart_online, 0.95))}",
            f"daemon restarts {self.restarts} (unexplained crashes {self.crashes}); live bytes "
            f"received {self.live_bytes}",
        ]
        lines += [f"fault not available here: {k} ({v})" for k, v in self.skipped.items()]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("soak: OK" if self.ok else "soak: FAILED")
        return "\n".join(lines)


@dataclass
class Unavailable:
    """A fault this machine cannot inject (the run says why instead)."""

    name: str
    why: str

    async def fire(self) -> str:
        return f"not fired: {self.why}"


class Soak:
    def __init__(
        self,
        tmp: Path,
        minutes: float,
        seed: int,
        every: tuple[float, float],
        max_outage: float = 60.0,
        log_file: Path | None = None,
    ) -> None:
        self.tmp = tmp
        self.log_file = log_file
        self.max_outage = max_outage
        self.minutes = minutes
        self.seed = seed
        self.every = every
        self.result = Result(minutes, seed)
        self.t0 = time.monotonic()
        self.platform: ReferencePlatform
        self.sup: Supervisor
        self.relay: UdpRelay
        self.storage = tmp / "pu"
        self.disk: SmallDisk | None = None
        self.kills: list[float] = []  # monotonic
        self.platform_back: list[float] = []  # monotonic: listening again after a restart
        self.online_at: list[float] = []  # monotonic: offline -> online transitions
        self.samples: list[tuple[float, int, int]] = []  # (t, rss kB, fds)
        self._login_seen = asyncio.Event()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f} s] {text}", flush=True)

    # -- the platform's application: record and view after every login -----------------

    async def watch_online(self) -> None:
        was = False
        while True:
            now = self.platform.online(DEVICE)
            if now and not was:
                self.online_at.append(time.monotonic())
                self._login_seen.set()
            was = now
            await asyncio.sleep(0.05)

    async def application(self, rx_port: int) -> None:
        live_url = f"srt://127.0.0.1:{self.relay.port}?streamid={STREAM}&latency=200"
        while True:
            await self._login_seen.wait()
            self._login_seen.clear()
            for method, params in (
                ("StartRecord", {
                    "session_id": SESSION, "channel": 0, "max_bitrate": 0,
                    "seg_duration": SEG, "seg_max_size": 8 << 20, "seg_max_count": 5,
                    "start_ts": self.platform.now(), "cbk_url": self.platform.vr_cbk_url(0),
                }),
                ("PushLive", {"channel": 0, "url": live_url, "stream_id": STREAM,
                              "max_bitrate": 0}),
            ):  # fmt: skip
                try:
                    reply = await self.platform.call(DEVICE, method, params, timeout=20)
                    if reply.err is not None:
                        self.say(f"{method} refused: {reply.err}")
                except Exception as exc:  # the link went again: the next login retries
                    self.say(f"{method} not answered ({exc!r})")
                    self._login_seen.set()
                    await asyncio.sleep(1)
                    break

    async def alarms(self) -> None:
        rng = self._rng("alarms")
        while True:
            await asyncio.sleep(rng.uniform(10, 30))
            for action in ("on", "off"):
                try:
                    reply = await asyncio.to_thread(
                        send_command, self.storage, {"cmd": "sensor", "name": "pir",
                                                     "action": action}, 5.0,
                    )  # fmt: skip
                except (OSError, ValueError):
                    reply = {"ok": False}
                if action == "on":
                    if reply.get("ok"):
                        self.result.sensor_on += 1
                    else:
                        self.result.alarms_refused += 1
                await asyncio.sleep(2)

    async def sample(self) -> None:
        while True:
            pid = self.sup.pid
            if pid is not None:
                with contextlib.suppress(OSError):
                    self.samples.append((time.monotonic() - self.t0, rss_kb(pid), fds(pid)))
            await asyncio.sleep(5)

    # -- faults ----------------------------------------------------------------------------

    def _rng(self, what: str) -> random.Random:
        """One RNG per consumer, so the fault plan does not depend on what else ran."""
        return random.Random(f"{self.seed}-{what}")

    def faults(self) -> dict[str, Fault]:
        rx = self.platform.receivers[STREAM]
        faults: list[Fault] = [
            PlatformRestart(self.platform, self._rng("platform-restart")),
            VrFaults(self.platform, self._rng("vr-faults")),
            VrCutUpload(self.platform, self._rng("vr-cut-upload")),
            SrtListenerRestart(rx),
            RelayChaos(self.relay, self._rng("relay")),
            VrOutage(self.platform, self._rng("vr-outage"), max_seconds=self.max_outage),
            DiskFull(self.disk, self.platform, self._rng("disk-full"), self.max_outage)
            if self.disk is not None
            else Unavailable("disk-full", self.result.skipped["disk-full"]),
            DaemonKill(self.sup),
        ]
        assert [f.name for f in faults] == list(FAULTS)
        return {f.name: f for f in faults}

    async def fire_faults(self) -> None:
        """Fire the plan: each fault at its time, in a task of its own (a long one, an
        outage, overlaps the next); a fault still running when its kind comes up again
        is waited for first."""
        faults = self.faults()
        running: dict[str, asyncio.Task[None]] = {}
        for at, name in plan(self.seed, self.minutes, self.every, self.max_outage):
            await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))
            if (prev := running.get(name)) is not None:
                await prev
            running[name] = asyncio.create_task(self._fire(faults[name]))
        await asyncio.gather(*running.values())

    async def _fire(self, fault: Fault) -> None:
        if isinstance(fault, DaemonKill):
            self.kills.append(time.monotonic())
        self.say(f"fault {fault.name} ...")
        what = await fault.fire()
        if isinstance(fault, PlatformRestart):
            self.platform_back.append(time.monotonic())
        if not isinstance(fault, Unavailable):
            self.result.faults[fault.name] += 1
        self.say(f"fault {fault.name}: {what}")

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> Result:
        self.platform = await start_platform(self.tmp / "platform")
        disk = SmallDisk(self.tmp / "card", DISK_MB)
        try:
            await disk.start()
            self.disk = disk
        except RuntimeError as exc:
            self.result.skipped["disk-full"] = str(exc)
            self.say(f"no small disk here ({exc}): recording under the storage dir")
        try:
            return await self._run()
        finally:
            await self.platform.close()
            await disk.stop()

    async def _run(self) -> Result:
        rx = await self.platform.open_live(STREAM)
        self.relay = UdpRelay(
            ("127.0.0.1", rx.port), seed=self._rng("relay-loss").randrange(1 << 30)
        )
        await self.relay.start()
        profile = "emulated"
        if self.disk is not None:
            profile = str(card_profile(self.disk.path, self.tmp / "emulated-card.toml"))
        doc = daemon_config(
            self.platform,
            self.storage,
            profile=profile,
            backoff_scale=0.1,
            bitrate=1_000_000,  # ~0.5 MB segments: a 1 MB spool fills within a short outage
            spool_max_mb=1,
            memory_queue_mb=8,
        )
        config = write_config_file(doc, self.tmp / "config.toml")
        self.sup = Supervisor(
            config,
            restart_sec=5.0,
            log_level="debug",
            wrapper=self.disk.prefix if self.disk is not None else (),
        )
        tasks = [
            asyncio.create_task(self.watch_online()),
            asyncio.create_task(self.application(rx.port)),
            asyncio.create_task(self.sample()),
        ]
        await self.sup.start()
        try:
            await self.platform.wait_online(DEVICE, timeout=60)
            await self.platform.vr.wait_segments(0, 1, timeout=60)
            schedule = plan(self.seed, self.minutes, self.every, self.max_outage)
            self.say(
                "recording and live; faults planned: "
                + ", ".join(f"{n} at {t:g} s" for t, n in schedule)
            )
            tasks.append(asyncio.create_task(self.alarms()))
            end = self.t0 + self.minutes * 60
            await self.fire_faults()
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            for t in tasks[3:]:
                t.cancel()
            await self.settle()
        finally:
            for t in tasks:
                t.cancel()
            rc = await self.sup.stop()
            await self.relay.stop()
            self.say(f"daemon stopped (exit status {rc})")
            if rc not in (0, None):
                self.result.problems.append(f"the daemon's clean stop exited {rc}")
        self.account(rx.bytes_received)
        if self.log_file is not None:
            self.log_file.write_text("\n".join(self.sup.lines()) + "\n")
        return self.result

    async def settle(self) -> None:
        """Faults off, the platform up; wait for the daemon to be online and drained."""
        self.platform.vr.clear_faults()
        self.platform.vr_down = False
        self.relay.drop = self.relay.drop_back = self.relay.delay = self.relay.reorder = 0.0
        self.say("faults stopped; draining")
        await self.platform.wait_online(DEVICE, timeout=120)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                st = await asyncio.to_thread(send_command, self.storage, {"cmd": "status"}, 10.0)
                rec = st.get("record", {})
                if rec.get("queued_memory", 1) + rec.get("queued_disk", 1) == 0:
                    break
            except (OSError, ValueError):
                pass
            await asyncio.sleep(1)
        else:
            self.result.problems.append("the daemon's queue did not drain within 180 s")
        reply = await self.platform.call(
            DEVICE, "StopRecord", {"session_id": SESSION, "channel": 0}, timeout=20
        )
        if reply.err is not None:
            self.result.problems.append(f"StopRecord: {reply.err}")
        rx = self.platform.receivers[STREAM]
        live0 = rx.bytes_received
        await asyncio.sleep(3)  # the last, partial segment; the alarms' ends
        if rx.bytes_received == live0:
            self.result.problems.append("the live stream is not flowing at the end")
        self.say("drained")

    # -- accounting ------------------------------------------------------------------------

    def account(self, live_bytes: int) -> None:
        r = self.result
        lines = self.sup.lines()
        closed: list[tuple[float, float, int]] = []  # (start, duration, line index)
        dropped: dict[float, str] = {}
        for i, line in enumerate(lines):
            if m := _CLOSED.search(line):
                closed.append((float(m[1]), float(m[2]), i))
            elif m := _DROPPED.search(line):
                dropped[_key(float(m[1]))] = m[2]
        saved = self.platform.vr.segments[0]
        starts = Counter(_key(s.start) for s in saved)
        r.recorded, r.saved = len(closed), len(saved)
        r.duplicates = sum(n - 1 for n in starts.values() if n > 1)
        r.undecodable = sum(1 for s in saved if s.check is not None and not s.check.ok)
        r.dropped = Counter(dropped.values())
        r.dropped_reported = sum(s.dropped_nb for s in self.platform.vr_stats)
        for start, _dur, _i in closed:
            key = _key(start)
            if key in starts or key in dropped:
                continue
            # Closed within 30 s before a SIGKILL and never saved: it was in RAM.
            r.lost.append(start)
        if r.lost:
            r.lost_to_kill = [s for s in r.lost if self._killed_in_ram(s, closed)]
            r.lost = [s for s in r.lost if s not in r.lost_to_kill]
        extra = set(starts) - {_key(c[0]) for c in closed}
        if extra:
            r.problems.append(f"{len(extra)} saved segments the daemon never logged as closed")
        alarm_starts = Counter(
            (a.type, a.timestamp) for a in self.platform.alarms(DEVICE) if a.state == "start"
        )
        r.alarms_delivered = len(alarm_starts)
        r.alarms_duplicated = sum(n - 1 for n in alarm_starts.values())
        got = [ts for _type, ts in alarm_starts]
        for i, line in enumerate(lines):
            if m := _ALARM_START.search(line):
                r.alarms_raised += 1
                at = time.mktime(time.strptime(m[1], "%Y-%m-%dT%H:%M:%S"))  # local time
                if any(abs(ts - at) <= 2 for ts in got):
                    continue
                if self._killed(i):
                    r.alarms_lost_to_kill += 1
                else:
                    r.problems.append(f"the alarm raised at {m[1]} was never delivered")
        r.live_bytes = live_bytes
        r.restarts = len(self.sup.starts) - 1
        r.crashes = len(self.sup.crashes)
        for back in self.platform_back:
            after = [t for t in self.online_at if t >= back]
            if after:
                r.reconnect.append(after[0] - back)
        for start in self.sup.starts[1:]:
            after = [t for t in self.online_at if t >= start]
            if after:
                r.restart_online.append(after[0] - start)
        late = [s for s in self.samples if s[0] >= 300] or self.samples
        if late:
            r.rss_from = late[0][0]
            k = max(1, len(late) // 10)
            first = statistics.median(x[1] for x in late[:k])
            last = statistics.median(x[1] for x in late[-k:])
            r.rss_mb = (first / 1024, last / 1024)
            r.rss_growth = (last - first) / first
            r.fd_growth = int(
                statistics.median(x[2] for x in late[-k:])
                - statistics.median(x[2] for x in late[:k])
            )
        if r.lost:
            r.problems.append(f"{len(r.lost)} segments lost: starts {r.lost[:10]}")
        if r.dropped_reported < sum(r.dropped.values()):
            r.problems.append(
                f"{sum(r.dropped.values()) - r.dropped_reported} dropped segments never "
                "reported to the platform (op=stat)"
            )
        if r.duplicates:
            r.problems.append(f"{r.duplicates} duplicate segments")
        if r.undecodable:
            r.problems.append(f"{r.undecodable} saved segments do not decode")
        for e in self.sup.crashes:
            r.problems.append(f"unexplained exit {e.rc}: " + " | ".join(e.tail[-5:]))
        if r.recorded == 0 or r.saved == 0:
            r.problems.append("nothing recorded")
        if r.sensor_on and r.alarms_delivered == 0:
            r.problems.append("no alarm delivered")

    def _killed_in_ram(self, start: float, closed: list[tuple[float, float, int]]) -> bool:
        """Did a SIGKILL end the incarnation that closed this segment? (A segment closed
        by a daemon that was then killed and never saved: it was in memory.)"""
        return any(s == start and self._killed(i) for s, _d, i in closed)

    def _killed(self, line_index: int) -> bool:
        """Was the process that wrote this log line ended by an injected SIGKILL?"""
        inc = self._incarnation(line_index)
        exits = self.sup.exits
        return inc < len(exits) and exits[inc].expected and exits[inc].rc == -9

    def _incarnation(self, line_index: int) -> int:
        """Which process (0, 1, ...) wrote line ``line_index`` of :meth:`Supervisor.lines`."""
        n = 0
        for k, e in enumerate(self.sup.exits):
            n += e.lines
            if line_index < n:
                return k
        return len(self.sup.exits)


async def soak(
    minutes: float,
    seed: int,
    every: tuple[float, float] = (10, 60),
    max_outage: float = 60.0,
    log_file: Path | None = None,
) -> Result:
    """The soak in this event loop (its daemon a process); ``max_outage``: the longest Vr
    outage (the spool-full fault), which is also how early before the end faults stop;
    ``log_file``: where the daemon's log (every run of it, debug level) is written."""
    with tempfile.TemporaryDirectory(prefix="hss-soak-") as d:
        return await Soak(Path(d), minutes, seed, every, max_outage, log_file).run()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    default = float(os.environ.get("SOAK_MINUTES", "30"))
    ap.add_argument("--minutes", type=float, default=default)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--every", type=float, nargs=2, default=(10.0, 60.0), metavar=("MIN", "MAX"))
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    log_file = Path(tempfile.gettempdir()) / f"hss-soak-{seed}.log"
    print(f"soak: {args.minutes:g} min, seed {seed} (replay with --seed {seed})", flush=True)
    every = (args.every[0], args.every[1])
    result = asyncio.run(soak(args.minutes, seed, every, log_file=log_file))
    print(result.report(), flush=True)
    print(f"the daemon's log: {log_file}", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
