"""Fleet reconnect storm: N control-plane PUs against one reference platform, restarted.

Run: .venv/bin/python bench/fleet.py [N ...] (default 100 1000). For each N, one process
runs N PUs (the real PlatformLink and Vd Dispatcher, no media) and another runs the
reference platform (TLS, its ``devices`` knowing all N). Once every PU is online the
platform is stopped (SIGTERM) and started again on the same ports and CA; the PUs come
back by themselves, on the 9.3.1.3 schedule (backoff_scale 1: the real one). Printed:
Vd login attempts and successes per second after the restart (the storm's shape, its
peak), the time until 50/95/100 % are back, the Vs requests it caused (counted by the
platform and by the PUs), login latency, and the CPU each side spent: the platform's
tells what one process absorbs, the PUs' whether this client is the limit. ``--down S``
keeps the platform down S seconds first: an outage, where the PUs' failures pile up and
the schedule's later, wider steps spread them further.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from procstat import cpu_seconds

from hss_pu.clock import OffsetClock
from hss_pu.config import ConfigDoc, make_config
from hss_pu.services import link as link_module
from hss_pu.services.channels import ChannelRegistry
from hss_pu.services.control import DeviceContext, Dispatcher
from hss_pu.services.devconfig import DevConfigStore
from hss_pu.services.link import PlatformLink
from hss_pu.wire.vd import KeepaliveParams


def device(i: int) -> tuple[str, str, str]:
    """(id, password, MAC) of PU number ``i``."""
    return (
        f"PU-{i:05d}",
        f"fleet-pass-{i:05d}",
        f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
    )


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: each PU holds a socket or two."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def listen_overflows() -> int:
    """The host's TcpExt ListenOverflows: SYNs dropped because a listen backlog was full
    (the client retries after 1, 3, 7 s). Host-wide: other processes' count too."""
    head, vals = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines()[:2]]
    return int(dict(zip(head, vals, strict=True)).get("ListenOverflows", 0))


# --- the platform process -------------------------------------------------------------


async def serve(state_dir: Path, n: int, vs_port: int, vd_port: int) -> None:
    """The reference platform knowing PUs 0..n-1; prints its ports as one JSON line, and
    its Vs request count as another when SIGTERM stops it."""
    from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform

    devices = {d: pw for d, pw, _ in map(device, range(n))}
    p = ReferencePlatform(
        PlatformOptions(
            state_dir=state_dir, vs_port=vs_port, vd_port=vd_port, devices=devices,
            alarm_record=False,
        )
    )  # fmt: skip
    await p.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"vs_port": p.vs_port, "vd_port": p.vd_port, "ca": str(p.ca_file)}),
          flush=True)  # fmt: skip
    await stop.wait()
    count = p.vs_request_count
    await p.close()
    print(json.dumps({"vs_requests": count}), flush=True)


async def sample_cpu(
    platform: Platform, t0: float, out: list[tuple[float, float, int, float]]
) -> None:
    """(seconds since t0, PU CPU, platform pid, its CPU) every 0.25 s until cancelled: the
    CPU each side spent in each second of the storm."""
    while True:
        proc = platform.proc
        pid, cpu = (proc.pid, -1.0) if proc is not None else (0, -1.0)
        with contextlib.suppress(OSError, IndexError, ValueError):
            cpu = cpu_seconds(pid)
        out.append((time.monotonic() - t0, cpu_seconds(os.getpid()), pid, cpu))
        await asyncio.sleep(0.25)


def cpu_per_second(samples: list[tuple[float, float, int, float]]) -> dict[int, list[float]]:
    """second -> [PU CPU %, platform CPU %] (the platform's only between samples of one
    process, else -1)."""
    res: dict[int, list[float]] = {}
    for a, b in itertools.pairwise(samples):
        s = res.setdefault(int(a[0]), [0.0, 0.0])
        s[0] += 100 * (b[1] - a[1])
        if a[2] == b[2] and a[3] >= 0 and b[3] >= 0:
            s[1] += 100 * (b[3] - a[3])
    return res


class Platform:
    """The platform child process: started, stopped, started again on the same ports."""

    def __init__(self, state_dir: Path, n: int) -> None:
        self.state_dir, self.n = state_dir, n
        self.vs_port = self.vd_port = 0
        self.ca = ""
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", str(self.state_dir), str(self.n),
            str(self.vs_port), str(self.vd_port), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the platform exited {await self.proc.wait()} before serving")
        info = json.loads(line)
        self.vs_port, self.vd_port, self.ca = info["vs_port"], info["vd_port"], info["ca"]

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    async def stop(self) -> int:
        """SIGTERM; the Vs requests this run of the platform answered."""
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        out = await self.proc.stdout.read()
        await self.proc.wait()
        lines = out.decode().strip().splitlines()
        return int(json.loads(lines[-1])["vs_requests"]) if lines else -1


# --- the PU side ----------------------------------------------------------------------


@dataclass
class Attempts:
    """Every Vd login attempt of the fleet: (start, end, accepted), monotonic seconds,
    and why the failed ones failed (exception type and message, counted)."""

    rows: list[tuple[float, float, bool]] = field(default_factory=list)
    why: Counter[str] = field(default_factory=Counter)

    @contextlib.contextmanager
    def wrapped(self) -> Iterator[None]:
        """Every PU's login goes through this wrapper (the link's own name for it)."""
        real = getattr(link_module, "connect_vd")  # noqa: B009

        async def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.monotonic()
            try:
                s = await real(*args, **kw)
            except BaseException as exc:
                self.rows.append((t0, time.monotonic(), False))
                self.why[f"{type(exc).__name__}: {exc}"[:120]] += 1
                raise
            self.rows.append((t0, time.monotonic(), True))
            return s

        setattr(link_module, "connect_vd", timed)  # noqa: B010
        try:
            yield
        finally:
            setattr(link_module, "connect_vd", real)  # noqa: B010


def make_link(i: int, platform: Platform, storage: Path, scale: float, seed: int) -> PlatformLink:
    dev, pw, mac = device(i)
    doc = msgspec.convert(
        {
            "device": {"id": dev, "password": pw, "mac": mac, "profile": "emulated"},
            "platform": {
                "schedule_url": f"https://127.0.0.1:{platform.vs_port}",
                "ca_file": platform.ca,
                "backoff_scale": scale,
            },
            "storage": {"dir": str(storage)},
        },
        ConfigDoc,
    )
    config = make_config(doc)
    clock = OffsetClock()
    channels = ChannelRegistry(config.profile)
    ctx = DeviceContext(
        config=config, clock=clock, channels=channels, devconfig=DevConfigStore(config)
    )
    return PlatformLink(
        config,
        clock,
        Dispatcher(ctx),
        lambda: KeepaliveParams(mac_id=mac, state=1, channels=channels.next_keepalive()),
        rng=random.Random(seed * 100_003 + i),
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def histogram(times: list[float], t0: float) -> Counter[int]:
    return Counter(int(t - t0) for t in times if t >= t0)


async def storm(
    n: int, scale: float, seed: int, timeout: float, settle: float = 3.0, down: float = 0.0
) -> dict[str, Any]:
    """One run with ``n`` PUs; the figures as a dict."""
    attempts = Attempts()
    with attempts.wrapped(), tempfile.TemporaryDirectory(prefix="hss-fleet-") as tmp:
        platform = Platform(Path(tmp) / "platform", n)
        await platform.start()
        storage = Path(tmp) / "pu"
        storage.mkdir()
        links = [make_link(i, platform, storage, scale, seed) for i in range(n)]
        back: dict[int, float] = {}
        phase = {"restarted": False}
        all_back = asyncio.Event()
        for i, link in enumerate(links):

            def mark(_s: Any, i: int = i) -> None:
                if phase["restarted"] and i not in back:
                    back[i] = time.monotonic()
                    if len(back) == n:
                        all_back.set()

            link.on_login(mark)
        tasks: list[asyncio.Task[None]] = []
        try:
            t_cold = time.monotonic()
            pu_cold0, plat_cold0 = cpu_seconds(os.getpid()), platform.cpu()
            ovf0 = listen_overflows()
            tasks += [asyncio.create_task(lk.run(), name=f"pu-{i}") for i, lk in enumerate(links)]
            while sum(lk.online.is_set() for lk in links) < n:
                if time.monotonic() - t_cold > timeout:
                    raise SystemExit(
                        f"cold start: only {sum(lk.online.is_set() for lk in links)}/{n} online"
                    )
                await asyncio.sleep(0.05)
            cold = time.monotonic() - t_cold
            pu_cold = cpu_seconds(os.getpid()) - pu_cold0
            plat_cold = platform.cpu() - plat_cold0
            ovf_cold = listen_overflows() - ovf0
            cold_attempts = len(attempts.rows)
            await asyncio.sleep(settle)  # Keepalives, GetServerInfo answered: a steady fleet
            vs_pu_before = sum(lk.vs_requests for lk in links)
            pu_cpu0 = cpu_seconds(os.getpid())
            ovf0 = listen_overflows()
            t0 = time.monotonic()
            attempts.why.clear()
            phase["restarted"] = True
            samples: list[tuple[float, float, int, float]] = []
            sampler = asyncio.create_task(sample_cpu(platform, t0, samples))
            await platform.stop()
            down_at = time.monotonic() - t0
            await asyncio.sleep(down)  # an outage, not a quick restart, when down > 0
            pu_cpu_mid = cpu_seconds(os.getpid())
            await platform.start()
            up_at = time.monotonic() - t0
            plat_cpu_start = platform.cpu()  # the new process's start-up (imports, TLS keys)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_back.wait(), timeout)
            t_end = time.monotonic()
            sampler.cancel()
            ovf_storm = listen_overflows() - ovf0
            end_rows = len(attempts.rows)  # not the logouts of the final stop below
            why = dict(attempts.why.most_common(5))
            pu_cpu = cpu_seconds(os.getpid()) - pu_cpu0
            plat_cpu_storm = platform.cpu() - plat_cpu_start
            vs_pu = sum(lk.vs_requests for lk in links) - vs_pu_before
            vs_platform = await platform.stop()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if platform.proc is not None and platform.proc.returncode is None:
                platform.proc.kill()
                await platform.proc.wait()
    rows = [r for r in attempts.rows[cold_attempts:end_rows] if r[0] >= t0]
    ok = [r for r in rows if r[2]]
    times = [t - t0 for t in back.values()]
    window = t_end - t0
    return {
        "n": n,
        "cold_start_s": cold,
        "platform_down_s": down_at,
        "platform_up_s": up_at,
        "back": len(back),
        "back_p50_s": pct(times, 0.5) if times else None,
        "back_p95_s": pct(times, 0.95) if times else None,
        "back_p100_s": max(times) if times else None,
        "attempts": len(rows),
        "attempts_failed": len(rows) - len(ok),
        "attempts_per_s": dict(sorted(histogram([r[0] for r in rows], t0).items())),
        "logins_per_s": dict(sorted(histogram([r[1] for r in ok], t0).items())),
        "login_latency_p50_ms": 1000 * statistics.median(r[1] - r[0] for r in ok) if ok else None,
        "login_latency_p95_ms": 1000 * pct([r[1] - r[0] for r in ok], 0.95) if ok else None,
        "failed_why": why,
        "vs_requests_platform": vs_platform,
        "vs_requests_pu": vs_pu,
        "window_s": window,
        "pu_cpu_s": pu_cpu,
        "pu_cpu_while_down_s": pu_cpu_mid - pu_cpu0,
        "platform_cpu_storm_s": plat_cpu_storm,
        "platform_cpu_start_s": plat_cpu_start,
        "cpu_per_s": cpu_per_second(samples),
        "cold_listen_overflows": ovf_cold,
        "listen_overflows": ovf_storm,
        "cold_pu_cpu_s": pu_cold,
        "cold_platform_cpu_s": plat_cold,
    }


def show(r: dict[str, Any]) -> None:
    n = r["n"]
    print(f"\n=== N = {n} PUs (backoff_scale {r.get('scale', 1)}) ===")
    c = r["cold_start_s"]
    print(f"cold start (all at once, no schedule): all {n} online in {c:.1f} s "
          f"({n / c:.0f} logins/s); CPU PUs {r['cold_pu_cpu_s']:.2f} s, platform "
          f"{r['cold_platform_cpu_s']:.2f} s ({1000 * r['cold_platform_cpu_s'] / n:.1f} ms "
          f"per login); SYNs dropped at a full backlog: {r['cold_listen_overflows']}")  # fmt: skip
    print(f"restart: platform down at +{r['platform_down_s']:.2f} s, serving again at "
          f"+{r['platform_up_s']:.2f} s")  # fmt: skip
    if r["back"] < n:
        print(f"back online: only {r['back']}/{n} within the timeout")
        return
    print(f"back online: {r['back']}/{n}; 50 % at {r['back_p50_s']:.1f} s, 95 % at "
          f"{r['back_p95_s']:.1f} s, 100 % at {r['back_p100_s']:.1f} s")  # fmt: skip
    print(f"Vd login attempts {r['attempts']} ({r['attempts_failed']} failed); "
          f"login latency p50 {r['login_latency_p50_ms']:.0f} ms, "
          f"p95 {r['login_latency_p95_ms']:.0f} ms")  # fmt: skip
    for why, count in r["failed_why"].items():
        print(f"  failed {count}x: {why}")
    print(f"SYNs dropped at a full listen backlog: {r['listen_overflows']}")
    print(f"Vs requests caused: {r['vs_requests_platform']} reached the platform, "
          f"{r['vs_requests_pu']} sent by the PUs")  # fmt: skip
    a, ok = r["attempts_per_s"], r["logins_per_s"]
    last = max([*a, *ok, 0])
    cps = r["cpu_per_s"]
    print("second  attempts  logins  CPU% PUs  platform")
    top = max(ok.values(), default=1)
    for s in range(last + 1):
        bar = "#" * (ok.get(s, 0) * 60 // top)
        pu, pl = cps.get(s, [0, 0])
        print(f"{s:6d}  {a.get(s, 0):8d}  {ok.get(s, 0):6d}  {pu:8.0f}  {pl:8.0f}  {bar}")
    print(f"peak: {max(a.values(), default=0)} attempts/s, {max(ok.values(), default=0)} logins/s")
    w = r["window_s"]
    print(f"CPU over the {w:.1f} s from the stop to the last login: PUs {r['pu_cpu_s']:.1f} s "
          f"({100 * r['pu_cpu_s'] / w:.0f} % of a core), platform (new process, after its "
          f"{r['platform_cpu_start_s']:.1f} s start-up) {r['platform_cpu_storm_s']:.1f} s "
          f"({100 * r['platform_cpu_storm_s'] / w:.0f} %)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("n", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--backoff-scale", type=float, default=1.0,
                    help="the PUs' backoff_scale; 1 is the real 9.3.1.3 schedule")  # fmt: skip
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--down", type=float, default=0.0, help="seconds the platform stays down")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds online before the restart")
    ap.add_argument("--json", action="store_true", help="one JSON line per N, nothing else")
    ap.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    raise_nofile()
    if args.serve:
        state, n, vs, vd = args.serve
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(Path(state), int(n), int(vs), int(vd)))
        return
    for n in args.n:
        r = asyncio.run(
            storm(n, args.backoff_scale, args.seed, args.timeout, args.settle, args.down)
        )
        r["scale"] = args.backoff_scale
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            show(r)


if __name__ == "__main__":
    main()
