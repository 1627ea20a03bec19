"""``hss-pu`` command line.

Exit status: 0 success or clean stop, 1 runtime failure, 2 bad configuration or usage
(systemd's Restart=on-failure then retries 1 but a person must fix 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hss_pu import __version__
from hss_pu.config import (
    CameraSection,
    ConfigDoc,
    DeviceSection,
    PlatformSection,
    StorageSection,
    UpgradeSection,
    default_storage_dir,
    load_config,
    make_config,
)
from hss_pu.logsetup import setup_logging
from hss_pu.profiles import load_profile, profile_names
from hss_pu.schema import SchemaError
from hss_pu.services.localctl import SENSOR_ACTIONS, send_command
from hss_pu.wire.urls import redact_url

# Only what every command needs is imported here: ``status``, ``bind`` and
# ``check-config`` must answer at once (people and scripts run them), so the daemon (PyAV, numpy,
# the network clients), asyncio and the reference platform are imported by the commands
# that run them (tests/test_cli_imports.py holds this).
if TYPE_CHECKING:
    from hss_pu.daemon import Daemon
    from hss_pu.reference_platform.server import ReferencePlatform

__all__ = ["EMBEDDED_DEVICE", "main"]

log = logging.getLogger("hss_pu")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
EXIT_RESTART = -1  # internal: re-exec ourselves
SENSOR_NAMES = ("pir", "bell", "lock", "external", "motion")

# The embedded default's device: a demo identity on a loopback-only platform.
EMBEDDED_DEVICE = DeviceSection(
    id="PU-0001",
    password="embedded-demo-pass",  # noqa: S106 - only ever sent to our own loopback server
    mac="02:00:00:00:00:01",
    profile="emulated",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hss-pu", description="H.627.2 premises-unit agent (camera side)."
    )
    p.add_argument("--version", action="version", version=f"hss-pu {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Run the daemon. Without --config: an emulated camera against the "
        "built-in reference platform on loopback.",
    )
    run.add_argument("--config", "-c", type=Path, help="config file (TOML)")
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override log.level"
    )
    chk = sub.add_parser("check-config", help="validate a config file and exit")
    chk.add_argument("path", type=Path)
    prof = sub.add_parser("profiles", help="list firmware profiles, or show one's GetCap")
    prof.add_argument("name", nargs="?")
    bind = sub.add_parser("bind", help="send a Bind report through the running daemon")
    bind.add_argument("bind_id")
    bind.add_argument("--config", "-c", type=Path, help="the running daemon's config")
    status = sub.add_parser("status", help="ask the running daemon how it is")
    status.add_argument("--config", "-c", type=Path, help="the running daemon's config")
    sensor = sub.add_parser(
        "sensor",
        help="drive an emulated sensor of the running daemon",
        description="Drive an emulated device's sensor input (its mock GPIO pin) or, for "
        "motion, its emulated camera's scene. Refused on real hardware.",
    )
    sensor.add_argument("name", choices=SENSOR_NAMES)
    sensor.add_argument("action", choices=SENSOR_ACTIONS)
    sensor.add_argument("--channel", type=int, help="the channel, where several have one")
    sensor.add_argument("--config", "-c", type=Path, help="the running daemon's config")
    battery = sub.add_parser(
        "battery",
        help="set the emulated battery of the running daemon",
        description="Set an emulated battery's level (it drains, or charges, from there); "
        "the daemon reads it at once. Refused for a real battery.",
    )
    battery.add_argument("percent", type=_percent, help="0-100")
    how = battery.add_mutually_exclusive_group()
    how.add_argument("--charging", dest="charging", action="store_true", default=None)
    how.add_argument("--discharging", dest="charging", action="store_false")
    battery.add_argument("--config", "-c", type=Path, help="the running daemon's config")
    sub.add_parser(  # for --help only, as ``platform`` below
        "firmware", help="signed firmware bundles (keygen, build, verify, show)", add_help=False
    )
    # Listed for --help only: main() hands ``platform ...`` to the reference platform's
    # own parser before this one runs, so other commands never import the platform.
    sub.add_parser(
        "platform",
        help="the reference platform (serve, call, event, devices, records, kick, segments, "
        "alarms, logs, play, sleeping, wake)",
        add_help=False,
    )
    return p


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 100:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is not in 0..100")
    return value


def _config_error(exc: SchemaError) -> int:
    print(f"hss-pu: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(path: Path) -> int:
    try:
        cfg = load_config(path)
    except SchemaError as exc:
        return _config_error(exc)
    print(
        f"{cfg.path}: OK (device {cfg.device.id}, profile {cfg.profile.name}, "
        f"Vs {cfg.platform.schedule_url}, camera {redact_url(cfg.camera_source)} "
        f"{cfg.camera.width}x{cfg.camera.height}@{cfg.camera.fps})"
    )
    return EXIT_OK


def cmd_profiles(name: str | None) -> int:
    if name is None:
        for n in profile_names():
            prof = load_profile(n)
            print(f"{n:20} {prof.hardware_model:16} {prof.doc.description}")
        return EXIT_OK
    try:
        prof = load_profile(name)
    except SchemaError as exc:
        return _config_error(exc)
    print(json.dumps(prof.capabilities(), indent=2))
    return EXIT_OK


def embedded_storage() -> Path:
    return default_storage_dir() / "embedded"


async def _run_daemon(daemon: Daemon) -> int:
    rc = await daemon.run()
    return EXIT_RESTART if daemon.restart_requested else rc


async def _run_file(path: Path, level: str | None) -> int:
    from hss_pu.daemon import Daemon

    try:
        cfg = load_config(path)
    except SchemaError as exc:
        setup_logging(level or "info")
        log.error("config error: %s", exc)
        return EXIT_CONFIG
    setup_logging(level or cfg.doc.log.level)
    return await _run_daemon(Daemon(cfg))


async def _run_embedded(level: str | None) -> int:
    import asyncio

    from hss_pu.daemon import Daemon
    from hss_pu.reference_platform.server import PlatformOptions, ReferencePlatform

    setup_logging(level or "info")
    state = embedded_storage()
    log.info("no --config: embedded default (emulated camera, reference platform on loopback)")
    platform = ReferencePlatform(
        PlatformOptions(state_dir=state / "platform", admin_port=0, console=True)
    )
    await platform.start()
    # The console's URL and, the first time, its password: printed, never logged.
    from hss_pu.reference_platform.cli import console_lines

    print("\n".join(["hss-pu web console", *console_lines(platform)]), flush=True)
    try:
        demo_key = await asyncio.to_thread(_demo_firmware_key, state)
        ca = platform.ca_file
        doc = ConfigDoc(
            device=EMBEDDED_DEVICE,
            platform=PlatformSection(
                schedule_url=platform.schedule_url, ca_file=str(ca) if ca else None
            ),
            storage=StorageSection(dir=str(state / "pu")),
            # The ring from start-up, so the platform's alarm recordings begin before the alarm.
            camera=CameraSection(prerecord_seconds=platform.options.alarm_prerecord_seconds),
            upgrade=UpgradeSection(trusted_keys=[str(demo_key.with_name(demo_key.name + ".pub"))]),
        )
        cfg = make_config(doc)
        # One process: the console's sensor buttons reach the daemon's control socket.
        platform.options.device_sockets[EMBEDDED_DEVICE.id] = Path(cfg.storage_dir)
        log.info("reference platform: Vs %s, CA %s", platform.schedule_url, ca)
        log.info(
            "try: hss-pu platform call %s DevStatus --state-dir %s",
            EMBEDDED_DEVICE.id,
            state / "platform",
        )
        log.info(
            "alarms, their pictures and recordings: hss-pu platform alarms --state-dir %s",
            state / "platform",
        )
        log.info(
            "firmware upgrade: hss-pu firmware build --key %s --firmware-model HSS-PU-EMU-demo-N "
            "--version-number N --hardware-model HSS-PU-EMU --expires 2030-01-01T00:00:00Z "
            "--out /tmp/demo.bundle, then hss-pu platform upgrade %s /tmp/demo.bundle "
            "--state-dir %s",
            demo_key, EMBEDDED_DEVICE.id, state / "platform",
        )  # fmt: skip
        demo = asyncio.create_task(_demo_live(platform))
        try:
            return await _run_daemon(Daemon(cfg))
        finally:
            # Ended before the platform closes, so nothing it was starting is left over.
            demo.cancel()
            await asyncio.wait([demo])
            if not demo.cancelled() and demo.exception() is not None:
                log.warning("demo live stream failed: %r", demo.exception())
    finally:
        await platform.close()


async def _demo_live(platform: ReferencePlatform) -> None:
    """The embedded default shows a live stream: PushLive as soon as the camera is online."""
    try:
        await platform.wait_online(EMBEDDED_DEVICE.id, timeout=60)
        rx, reply = await platform.push_live(EMBEDDED_DEVICE.id, 0, "demo-live", viewer=True)
    except (TimeoutError, LookupError, ConnectionError, RuntimeError) as exc:
        log.warning("demo live stream not started: %s", exc)
        return
    if reply.err is not None:
        log.warning("demo live stream refused: %d %s", reply.err.code, reply.err.msg)
        return
    log.info("watch the camera: ffplay -fflags nobuffer %s", rx.viewer_url)
    log.info("received stream is recorded to %s", rx.files[-1])


def cmd_local(command: dict[str, object], config: Path | None, *, say_error: bool = False) -> int:
    """Talk to the running daemon over its control socket in storage.dir; ``say_error``:
    a refusal is one line on stderr instead of the reply."""
    if config is not None:
        try:
            directory = Path(load_config(config).storage_dir)
        except SchemaError as exc:
            return _config_error(exc)
    else:
        directory = embedded_storage() / "pu"
    try:
        reply = send_command(directory, command)
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"hss-pu: no running daemon answers at {directory} ({exc})", file=sys.stderr)
        return EXIT_FAILURE
    if say_error and not reply.get("ok"):
        print(f"hss-pu: {command['cmd']}: {reply.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(reply, indent=2))
    return EXIT_OK if reply.get("ok") else EXIT_FAILURE


def _demo_firmware_key(state: Path) -> Path:
    """The embedded default's signing key (made once, 0600), which its device trusts, so
    that an upgrade can be tried on a laptop. A real device lists its maker's keys."""
    from hss_pu.firmware.keys import generate

    key = state / "demo-firmware.key"
    if not key.exists():
        state.mkdir(parents=True, exist_ok=True)
        generate(key)
    return key


def _restart() -> None:
    """RebootDevice in daemon mode: the same command again, in the same process (same PID
    for systemd's Type=notify), through the launcher that started us, so a firmware
    trial's restart spends an attempt (hss_pu/firmware/slots.py)."""
    from hss_pu.firmware.slots import reexec

    reexec(sys.argv[1:])


def _firmware_handover(argv: list[str], config: Path | None) -> None:
    """Before the daemon starts: the firmware start-up rules, and an execv into the
    version they choose if that is not this code. Installed (``make install``): the
    root this venv lives in; a checkout: ``storage.dir/firmware``, so an emulated camera
    upgraded once keeps running its upgrade (remove that directory to run the checkout)."""
    from hss_pu.firmware.slots import emulated_root, launch, running_root

    root = running_root()
    if root is None:
        if config is None:
            root = emulated_root(embedded_storage() / "pu")
        else:
            try:
                root = emulated_root(load_config(config).storage_dir)
            except SchemaError:
                return  # reported by the run itself
    launch(root, argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["platform"]:
        from hss_pu.reference_platform.cli import main as platform_main

        return platform_main(argv[1:])
    if argv[:1] == ["firmware"]:
        from hss_pu.firmware.cli import main as firmware_main

        return firmware_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return cmd_check_config(args.path)
    if args.command == "profiles":
        return cmd_profiles(args.name)
    if args.command == "bind":
        return cmd_local({"cmd": "bind", "bind_id": args.bind_id}, args.config)
    if args.command == "status":
        return cmd_local({"cmd": "status"}, args.config)
    if args.command == "sensor":
        req = {"cmd": "sensor", "name": args.name, "action": args.action, "channel": args.channel}
        return cmd_local(req, args.config, say_error=True)
    if args.command == "battery":
        req = {"cmd": "battery", "percent": args.percent, "charging": args.charging}
        return cmd_local(req, args.config, say_error=True)
    if args.command == "run":
        import asyncio

        _firmware_handover(argv, args.config)

        coro = (
            _run_file(args.config, args.log_level) if args.config else _run_embedded(args.log_level)
        )
        try:
            rc = asyncio.run(coro)
        except KeyboardInterrupt:  # a second Ctrl-C during shutdown
            return EXIT_OK
        if rc == EXIT_RESTART:
            _restart()
        return rc
    return EXIT_FAILURE
