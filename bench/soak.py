"""Soak: one emulated PU records, pushes live and raises alarms while faults fire.

``hss-pu run`` (kept running by a systemd-like supervisor: Restart=on-failure) logs in to
the reference platform (in this process, TLS on loopback), which starts a recording (4 s
segments) and a live push (srt-live-transmit behind a userspace UDP relay) after every
login; its emulated PIR goes on and off every 10-30 s. Every 10-60 s (seeded RNG, printed)
one fault fires: the platform restarts, Vr misbehaves (5xx, 429, held, slow, aborted),
an upload is cut, the SRT listener restarts, the relay loses/delays/reorders packets,
the spool fills (Vr away past the ``storage.spool_max_mb`` quota, so it evicts: the
disk-full path, without filling a real disk), or the daemon is SIGKILLed.

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
from tests.support.faults import DaemonKill, RelayChaos, Supervisor  # noqa: E402
from tests.support.rig import DEVICE, daemon_config, start_platform, write_config_file  # noqa: E402
from tests.support.udp_relay import UdpRelay  # noqa: E402

SESSION, STREAM, SEG = "soak", "soak-live", 4
_CLOSED = re.compile(r"segment closed: start ([0-9.]+), ([0-9.]+) s")
_DROPPED = re.compile(r"segment dropped: start ([0-9.]+) \((\w+)\)")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _s(v: float) -> str:
    return f"{v:.1f} s"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


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
    alarms_raised: int = 0
    alarms_delivered: int = 0
    alarms_refused: int = 0  # the daemon was down (killed) when the sensor fired
    rss_growth: float = float("nan")
    fd_growth: int = 0
    rss_mb: tuple[float, float] = (0.0, 0.0)
    reconnect: list[float] = field(default_factory=list)
    restart_online: list[float] = field(default_factory=list)
    restarts: int = 0
    crashes: int = 0
    live_bytes: int = 0
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
            f"alarms: raised {self.alarms_raised}, delivered {self.alarms_delivered} "
            f"(sensor refused while the daemon was down: {self.alarms_refused})",
            f"RSS {self.rss_mb[0]:.0f} -> {self.rss_mb[1]:.0f} MB after the first 5 min "
            f"(growth {self.rss_growth:+.1%}), open fds growth {self.fd_growth:+d}",
            f"reconnect after a platform restart ({len(self.reconnect)}): p50 "
            f"{_s(pct(self.reconnect, 0.5))}, p95 {_s(pct(self.reconnect, 0.95))}; daemon "
            f"start -> online ({len(self.restart_online)}): p50 "
            f"{_s(pct(self.restart_online, 0.5))}, p95 {_s(pct(self.restart_online, 0.95))}",
            f"daemon restarts {self.restarts} (unexplained crashes {self.crashes}); live bytes "
            f"received {self.live_bytes}",
        ]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("soak: OK" if self.ok else "soak: FAILED")
        return "\n".join(lines)


class Soak:
    def __init__(self, tmp: Path, minutes: float, seed: int, every: tuple[float, float]) -> None:
        self.tmp = tmp
        self.minutes = minutes
        self.rng = random.Random(seed)
        self.every = every
        self.result = Result(minutes, seed)
        self.t0 = time.monotonic()
        self.platform: ReferencePlatform
        self.sup: Supervisor
        self.relay: UdpRelay
        self.storage = tmp / "pu"
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
        while True:
            await asyncio.sleep(self.rng.uniform(10, 30))
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
                        self.result.alarms_raised += 1
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

    def faults(self) -> list[Fault]:
        rx = self.platform.receivers[STREAM]
        return [
            PlatformRestart(self.platform, self.rng),
            VrFaults(self.platform, self.rng),
            VrCutUpload(self.platform),
            SrtListenerRestart(rx),
            RelayChaos(self.relay, self.rng),
            VrOutage(self.platform, self.rng),
            DaemonKill(self.sup),
        ]

    async def fire_faults(self, until: float) -> None:
        faults = self.faults()
        while True:
            wait = self.rng.uniform(*self.every)
            if time.monotonic() + wait >= until:
                return
            await asyncio.sleep(wait)
            fault = self.rng.choice(faults)
            if isinstance(fault, DaemonKill):
                self.kills.append(time.monotonic())
            what = await fault.fire()
            if isinstance(fault, PlatformRestart):
                self.platform_back.append(time.monotonic())
            self.result.faults[fault.name] += 1
            self.say(f"fault {fault.name}: {what}")

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> Result:
        self.platform = await start_platform(self.tmp / "platform")
        try:
            return await self._run()
        finally:
            await self.platform.close()

    async def _run(self) -> Result:
        rx = await self.platform.open_live(STREAM)
        self.relay = UdpRelay(("127.0.0.1", rx.port), seed=self.rng.randrange(1 << 30))
        await self.relay.start()
        doc = daemon_config(
            self.platform, self.storage, backoff_scale=0.1, spool_max_mb=2, memory_queue_mb=8
        )
        config = write_config_file(doc, self.tmp / "config.toml")
        self.sup = Supervisor(config, restart_sec=5.0, log_level="debug")
        tasks = [
            asyncio.create_task(self.watch_online()),
            asyncio.create_task(self.application(rx.port)),
            asyncio.create_task(self.sample()),
        ]
        await self.sup.start()
        try:
            await self.platform.wait_online(DEVICE, timeout=60)
            await self.platform.vr.wait_segments(0, 1, timeout=60)
            self.say("recording and live; faults start")
            tasks.append(asyncio.create_task(self.alarms()))
            end = self.t0 + self.minutes * 60
            await self.fire_faults(end)
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
        await asyncio.sleep(3)  # the last, partial segment
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
                dropped[round(float(m[1]), 2)] = m[2]
        saved = self.platform.vr.segments[0]
        starts = Counter(round(s.start, 2) for s in saved)
        r.recorded, r.saved = len(closed), len(saved)
        r.duplicates = sum(n - 1 for n in starts.values() if n > 1)
        r.undecodable = sum(1 for s in saved if s.check is not None and not s.check.ok)
        r.dropped = Counter(dropped.values())
        r.dropped_reported = sum(s.dropped_nb for s in self.platform.vr_stats)
        for start, _dur, _i in closed:
            key = round(start, 2)
            if key in starts or key in dropped:
                continue
            # Closed within 30 s before a SIGKILL and never saved: it was in RAM.
            r.lost.append(start)
        if r.lost:
            r.lost_to_kill = [s for s in r.lost if self._killed_in_ram(s, closed)]
            r.lost = [s for s in r.lost if s not in r.lost_to_kill]
        extra = set(starts) - {round(c[0], 2) for c in closed}
        if extra:
            r.problems.append(f"{len(extra)} saved segments the daemon never logged as closed")
        r.alarms_delivered = sum(1 for a in self.platform.alarms(DEVICE) if a.state != "end")
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
        if r.duplicates:
            r.problems.append(f"{r.duplicates} duplicate segments")
        if r.undecodable:
            r.problems.append(f"{r.undecodable} saved segments do not decode")
        for e in self.sup.crashes:
            r.problems.append(f"unexplained exit {e.rc}: " + " | ".join(e.tail[-5:]))
        if r.recorded == 0 or r.saved == 0:
            r.problems.append("nothing recorded")
        if r.alarms_raised and r.alarms_delivered == 0:
            r.problems.append("no alarm delivered")

    def _killed_in_ram(self, start: float, closed: list[tuple[float, float, int]]) -> bool:
        """Did a SIGKILL end the incarnation that closed this segment? (A segment closed
        by a daemon that was then killed and never saved: it was in memory.)"""
        for s, _d, i in closed:
            if s == start:
                inc = self._incarnation(i)
                exits = self.sup.exits
                return inc < len(exits) and exits[inc].expected
        return False

    def _incarnation(self, line_index: int) -> int:
        """Which process (0, 1, ...) wrote line ``line_index`` of :meth:`Supervisor.lines`."""
        n = 0
        for k, e in enumerate(self.sup.exits):
            n += e.lines
            if line_index < n:
                return k
        return len(self.sup.exits)


async def soak(minutes: float, seed: int, every: tuple[float, float] = (10, 60)) -> Result:
    with tempfile.TemporaryDirectory(prefix="hss-soak-") as d:
        return await Soak(Path(d), minutes, seed, every).run()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    default = float(os.environ.get("SOAK_MINUTES", "30"))
    ap.add_argument("--minutes", type=float, default=default)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--every", type=float, nargs=2, default=(10.0, 60.0), metavar=("MIN", "MAX"))
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"soak: {args.minutes:g} min, seed {seed} (replay with --seed {seed})", flush=True)
    result = asyncio.run(soak(args.minutes, seed, (args.every[0], args.every[1])))
    print(result.report(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
