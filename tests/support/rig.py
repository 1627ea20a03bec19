"""The one rig of the integration tests: the reference platform over TLS on loopback, the
daemon's config, the daemon in-process (:class:`Rig`) and ``hss-pu`` as a process
(:class:`Proc`).

Every test that needs a platform or a daemon builds it here (or through the fixtures of
tests/conftest.py, which are built on this), so a device id, a password or a default
means the same thing everywhere, and a change to how the daemon starts is made once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from hss_pu.config import (
    AlarmsSection,
    CameraSection,
    ConfigDoc,
    DeviceSection,
    LogSection,
    PlatformSection,
    PowerSection,
    StorageSection,
    UpgradeSection,
    make_config,
)
from hss_pu.daemon import Daemon
from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform
from hss_pu.reference_platform.vd import Record

__all__ = [
    "DEVICE",
    "MAC",
    "PASSWORD",
    "ConfigFile",
    "MakePlatform",
    "MakeRig",
    "Proc",
    "Rig",
    "Spawn",
    "build_daemon",
    "config_toml",
    "daemon_config",
    "marked_processes",
    "run_daemon",
    "start_daemon",
    "start_platform",
    "start_process",
    "until",
    "write_config_file",
]

# The device every rig runs as, and the one the reference platform knows by default.
DEVICE = "PU-0001"
PASSWORD = "s3cret-Pa55word"
MAC = "02:00:00:00:00:01"

# A camera that costs little CPU: what most recording and live tests need.
SMALL = (320, 180)


# --- the reference platform -----------------------------------------------------------


async def start_platform(
    state_dir: Path,
    *,
    before_start: Callable[[ReferencePlatform], None] | None = None,
    **options: Any,
) -> ReferencePlatform:
    """A started reference platform (TLS unless ``tls=False``) that knows the rig's device;
    ``options`` are :class:`PlatformOptions` fields (clock_offset, hb_interval, devices,
    the faults...). The caller closes it. Unlike ``hss-pu platform serve``, it does not
    record on alarms unless told (``alarm_record=True``): tests drive recordings; it does
    answer alarms with a picture URL (``alarm_pictures=False`` for the no-picture path).
    ``before_start`` sees the platform before it listens (to add routes to its web_app)."""
    options.setdefault("devices", {DEVICE: PASSWORD})
    options.setdefault("alarm_record", False)
    p = ReferencePlatform(PlatformOptions(state_dir=state_dir, **options))
    if before_start is not None:
        before_start(p)
    await p.start()
    return p


# --- the daemon's config ----------------------------------------------------------------


def daemon_config(
    platform: ReferencePlatform | str,
    storage: Path,
    *,
    password: str = PASSWORD,
    profile: str = "emulated",
    bind_id: str | None = None,
    backoff_scale: float = 0.01,
    keepalive: float = 10.0,
    source: str = "emulated",
    sources: Sequence[str] = (),
    size: tuple[int, int] = SMALL,
    fps: int = 15,
    bitrate: int | None = 300_000,
    prerecord_seconds: int = 0,
    scene: str = "pattern",
    audio_output: str | None = None,
    spool_max_mb: int | None = None,
    memory_queue_mb: int | None = None,
    log_level: str = "info",
    allowed_hosts: Sequence[str] = (),
    alarms_per_minute: int = 6,
    power: PowerSection | None = None,
    upgrade: UpgradeSection | None = None,
) -> ConfigDoc:
    """The config of the rig's device for ``platform`` (its Vs URL and CA) or a bare
    schedule URL (no CA: the system store), storing under ``storage``. Back-offs scaled
    down and a small camera by default, so that tests stay fast."""
    if isinstance(platform, ReferencePlatform):
        url, ca = platform.schedule_url, platform.ca_file
    else:
        url, ca = platform, None
    return ConfigDoc(
        device=DeviceSection(
            id=DEVICE, password=password, mac=MAC, profile=profile, bind_id=bind_id
        ),
        platform=PlatformSection(
            schedule_url=url,
            ca_file=None if ca is None else str(ca),
            backoff_scale=backoff_scale,
            keepalive_interval=keepalive,
            allowed_hosts=list(allowed_hosts),
        ),
        camera=CameraSection(
            source=source,
            sources=list(sources),
            width=size[0],
            height=size[1],
            fps=fps,
            bitrate=bitrate,
            prerecord_seconds=prerecord_seconds,
            scene=scene,  # type: ignore[arg-type]
            audio_output=audio_output,
        ),
        storage=StorageSection(
            dir=str(storage), spool_max_mb=spool_max_mb, memory_queue_mb=memory_queue_mb
        ),
        alarms=AlarmsSection(max_per_minute=alarms_per_minute),
        power=power or PowerSection(),
        upgrade=upgrade or UpgradeSection(),
        log=msgspec.convert({"level": log_level}, LogSection),
    )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def config_toml(doc: ConfigDoc) -> str:
    """The config file a user would write for ``doc`` (keys left at None are left out)."""
    lines: list[str] = []
    for section, keys in msgspec.to_builtins(doc).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def write_config_file(doc: ConfigDoc, path: Path, *, mode: int = 0o600, extra: str = "") -> Path:
    """``doc`` as a config file (mode 0600, as the daemon demands, unless told otherwise),
    followed by ``extra`` TOML."""
    path.write_text(config_toml(doc) + extra)
    os.chmod(path, mode)
    return path


# --- the daemon in-process --------------------------------------------------------------


@dataclass
class Rig:
    """A daemon running in this event loop against a reference platform."""

    platform: ReferencePlatform
    daemon: Daemon
    task: asyncio.Task[int]
    storage: Path

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, timeout: float = 20.0
    ) -> Any:
        """An RPC from the platform to the device: its wire.vd.Reply (typed Any, so a test
        reads ``.resp`` without a check first); an ``err`` reply is returned."""
        return await self.platform.call(DEVICE, method, params, timeout=timeout)

    async def wait_online(self, timeout: float = 10.0) -> None:
        await self.platform.wait_online(DEVICE, timeout=timeout)

    async def stop(self, timeout: float = 15.0) -> int:
        """Stop the daemon (once; again returns the same) and return its exit status."""
        if not self.task.done():
            self.daemon.stop()
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)

    async def set_config(self, patch: Mapping[str, Any]) -> Any:
        return await self.call("SetConfig", patch)

    def channel_state(self, channel: int = 0) -> int:
        """The channel's state as the next Keepalive will report it."""
        return self.daemon.channels.keepalive()[channel].state

    async def status(self) -> dict[str, Any]:
        """What ``hss-pu status`` would print."""
        return await self.daemon._cmd_status({})

    def keepalive_channels(self) -> list[dict[str, Any]]:
        """The channels of the last Keepalive the platform received."""
        ka = self.platform.last_keepalive(DEVICE)
        assert ka is not None, "no Keepalive yet"
        channels: list[dict[str, Any]] = ka["channels"]
        return channels

    async def keepalive(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 6.0
    ) -> Record:
        """The first Keepalive from now on whose channel 0 matches ``pred``."""
        now = self.platform.now()
        return await self.platform.wait_record(
            lambda r: r.name == "Keepalive" and r.time >= now and pred(r.params["channels"][0]),
            timeout=timeout,
        )

    async def start_record(self, session: str = "rec-1", **params: Any) -> Any:
        """StartRecord to this platform's Vr: 4 s segments from now unless told otherwise."""
        body = {
            "session_id": session,
            "channel": 0,
            "max_bitrate": 0,
            "seg_duration": 4,
            "seg_max_size": 8 << 20,
            "seg_max_count": 5,
            "start_ts": self.platform.now(),
            "cbk_url": self.platform.vr_cbk_url(0),
            **params,
        }
        return await self.call("StartRecord", body)

    async def stop_record(self, session: str = "rec-1", channel: int = 0) -> Any:
        return await self.call("StopRecord", {"session_id": session, "channel": channel})


def build_daemon(
    platform: ReferencePlatform | str,
    storage: Path,
    *,
    seed: int = 1,
    rpc_timeout: float = 20.0,
    start_media: bool = True,
    **config: Any,
) -> Daemon:
    """A daemon (not started) with :func:`daemon_config`; ``start_media=False`` is the
    control plane alone (PushLive, Snapshot, StartRecord answer "not available")."""
    doc = daemon_config(platform, storage, **config)
    return Daemon(
        make_config(doc), rng=random.Random(seed), rpc_timeout=rpc_timeout,
        start_media=start_media,
    )  # fmt: skip


async def run_daemon(platform: ReferencePlatform, daemon: Daemon, *, online: bool = True) -> Rig:
    """Run ``daemon`` in this loop and, unless ``online=False``, wait for its Vd login."""
    task = asyncio.create_task(daemon.run(), name="daemon")
    rig = Rig(platform, daemon, task, Path(daemon.config.storage_dir))
    if online:
        try:
            await rig.wait_online()
        except BaseException:
            if not task.done():
                daemon.stop()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 15)
            raise
    return rig


async def start_daemon(
    platform: ReferencePlatform, storage: Path, *, online: bool = True, **kw: Any
) -> Rig:
    """:func:`build_daemon` then :func:`run_daemon`."""
    return await run_daemon(platform, build_daemon(platform, storage, **kw), online=online)


async def until(pred: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` (the daemon's state, another process's files) until it is true or
    ``timeout`` passes; whether it became true (assert on it)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


# --- hss-pu as a process ------------------------------------------------------------------

MARK = "HSS_PU_TEST_RUN"


def marked_processes(token: str) -> list[int]:
    """Live processes whose environment carries ``HSS_PU_TEST_RUN=<token>``: one process
    started by :func:`start_process` and everything it started, reparented or not."""
    mark = f"{MARK}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if mark in env.split(b"\0") and state != "Z":
                found.append(int(entry))
    return found


@dataclass
class Proc:
    """``hss-pu`` (or a script) as a child process. Its stderr (the log) is read as it
    comes, so a daemon that logs much never stalls on a full pipe; ``lines`` has every
    line so far."""

    proc: asyncio.subprocess.Process
    token: str
    lines: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            while raw := await self.proc.stderr.readline():
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.set()
        finally:
            self._changed.set()

    @property
    def eof(self) -> bool:
        return self._reader is not None and self._reader.done()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait_for(self, text: str, timeout: float = 20.0, since: int = 0) -> str:
        """The first log line from line ``since`` on that contains ``text``."""
        async with asyncio.timeout(timeout):
            seen = since
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = max(seen, len(self.lines))
                if self.eof:
                    raise AssertionError(f"exited before {text!r}: {self.lines[-30:]}")
                self._changed.clear()
                await self._changed.wait()

    async def wait(self, timeout: float = 20.0) -> int:
        """Its exit status, once it has exited by itself and its log is read to the end."""
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
            assert self._reader is not None
            await self._reader
        return rc

    async def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0
    ) -> tuple[int, float]:
        """Send ``sig``, wait for the exit: (exit status, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = await self.wait(timeout)
        return rc, time.monotonic() - t0

    async def kill(self) -> int:
        """kill -9 (no clean-up of any kind, as a power cut)."""
        self.proc.kill()
        return await self.wait(10)

    def leftovers(self) -> list[int]:
        """Processes of this run still alive (it, or anything it started)."""
        return marked_processes(self.token)

    async def reap_leftovers(self, wait: float = 2.0) -> list[int]:
        """Wait up to ``wait`` s for this run's processes to go (a killed one is gone in
        milliseconds, a leaked one stays), kill -9 what is left and return those pids."""
        deadline = time.monotonic() + wait
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            left = self.leftovers()
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return left


async def start_process(
    *args: str,
    code: str | None = None,
    python_flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
) -> Proc:
    """``python [python_flags] -m hss_pu ARGS`` (or ``-c code ARGS``), stdin and stdout
    closed, stderr read into :attr:`Proc.lines`; ``env`` is added to ours (NOTIFY_SOCKET
    emptied unless given: no test talks to a real systemd). ``wrapper``: a command that
    execs the rest (nsenter), so the pid is still the daemon's."""
    token = uuid.uuid4().hex
    entry = ["-c", code] if code is not None else ["-m", "hss_pu"]
    proc = await asyncio.create_subprocess_exec(
        *wrapper, sys.executable, *python_flags, *entry, *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NOTIFY_SOCKET": "", **(env or {}), MARK: token},
    )  # fmt: skip
    return Proc(proc, token)


# --- the factories the fixtures of tests/conftest.py hand out ------------------------------

MakePlatform = Callable[..., Awaitable[ReferencePlatform]]
MakeRig = Callable[..., Awaitable[Rig]]
Spawn = Callable[..., Awaitable[Proc]]
ConfigFile = Callable[..., Path]
