"""``hss-pu platform ...``: run the reference platform, and call devices through it.

``serve`` runs the platform in the foreground; the other commands find it through
``<state-dir>/platform.json`` and talk to its admin API, so a person can drive a camera
(``hss-pu platform call PU-0001 GetCap``) while the daemon runs elsewhere.

Exit status: 0 success, 1 failure (including an ``err`` reply), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import httpx

from hss_pu.config import default_storage_dir
from hss_pu.logsetup import add_secret, setup_logging
from hss_pu.reference_platform.admin import MAX_CALL_TIMEOUT
from hss_pu.reference_platform.console import ConsoleRefused
from hss_pu.reference_platform.console.auth import PASSWORD_FILE, PasswordFileError, store_password
from hss_pu.reference_platform.options import DEMO_DEVICES, PlatformOptions
from hss_pu.reference_platform.server import STATE_FILE, ReferencePlatform
from hss_pu.reference_platform.upgrade import UpgradeCommandError, follow_upgrade
from hss_pu.reference_platform.vr import CSEG_PREFIX
from hss_pu.wire.vd import PtzOp

__all__ = ["main", "run_platform_command"]

log = logging.getLogger("hss_pu.platform")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure worth one line on stderr."""


def _default_state_dir() -> Path:
    return default_storage_dir() / "platform"


def _device(text: str) -> tuple[str, str]:
    # The message never echoes the value: it holds a password.
    dev, sep, pw = text.partition(":")
    if not sep or not dev or not pw:
        raise argparse.ArgumentTypeError("expected ID:PASSWORD (both non-empty)")
    return dev, pw


def _device_socket(text: str) -> tuple[str, Path]:
    dev, sep, directory = text.partition("=")
    if not sep or not dev or not directory:
        raise argparse.ArgumentTypeError("expected ID=DIR (the device's storage.dir)")
    return dev, Path(directory)


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= MAX_CALL_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_CALL_TIMEOUT:g}]")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _int_in(top: int, bottom: int = 0) -> Callable[[str], int]:
    """An argparse type: a whole number in [bottom, top]."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not bottom <= v <= top:
            raise argparse.ArgumentTypeError(f"must be in [{bottom}, {top}]")
        return v

    return parse


def _parser() -> argparse.ArgumentParser:
    plat = argparse.ArgumentParser(
        prog="hss-pu platform",
        description="Run the reference platform, or drive devices through its admin API.",
    )
    psub = plat.add_subparsers(dest="platform_command", required=True)

    def with_state_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="platform state (PKI, platform.json); default: <storage dir>/platform",
        )
        return p

    serve = with_state_dir(psub.add_parser("serve", help="run the platform in the foreground"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--vs-port", type=int, default=0, help="0: any free port")
    serve.add_argument("--vd-port", type=int, default=0, help="0: any free port")
    serve.add_argument("--admin-port", type=int, default=0, help="0: any free port")
    serve.add_argument("--plain", action="store_true", help="http/ws instead of https/wss")
    serve.add_argument(
        "--device",
        type=_device,
        action="append",
        metavar="ID:PASSWORD",
        help="a device allowed to log in (repeatable); default: the embedded demo device",
    )
    serve.add_argument(
        "--device-socket",
        type=_device_socket,
        action="append",
        metavar="ID=DIR",
        help="a daemon on this host whose control socket is in DIR (its storage.dir): the "
        "console shows buttons for its emulated sensors (repeatable)",
    )
    serve.add_argument("--hb-interval", type=int, help="hb_interval in GetServerInfo replies")
    serve.add_argument("--hb-token", help="hb_token in GetServerInfo replies")
    serve.add_argument(
        "--hibernation-port",
        type=_int_in(65535),
        default=0,
        help="the hibernation server's TCP port (default: any free port)",
    )
    serve.add_argument(
        "--no-hibernation",
        action="store_true",
        help="no hibernation server (GetServerInfo then has no hibernation address)",
    )
    serve.add_argument(
        "--clock-offset", type=float, default=0.0, help="seconds added to the Vs time"
    )
    serve.add_argument(
        "--no-alarm-record",
        action="store_true",
        help="do not record on alarms (default: StartRecord with pre-record on an alarm)",
    )
    serve.add_argument(
        "--no-alarm-pictures", action="store_true", help="answer AlarmNotify without a picture URL"
    )
    d = PlatformOptions
    serve.add_argument(
        "--alarm-prerecord",
        type=_int_in(3600),
        metavar="S",
        default=d.alarm_prerecord_seconds,
        help="prerecord_seconds of an alarm's StartRecord (default %(default)s)",
    )
    serve.add_argument(
        "--alarm-post-roll",
        type=_int_in(3600),
        metavar="S",
        default=d.alarm_post_roll,
        help="recording after the last alarm ends (default %(default)s)",
    )
    serve.add_argument(
        "--alarm-seg-duration",
        type=_int_in(3600, 1),
        metavar="S",
        default=d.alarm_seg_duration,
        help="seg_duration of an alarm's StartRecord (default %(default)s)",
    )
    serve.add_argument(
        "--alarm-keep",
        type=_int_in(10**6, 1),
        metavar="N",
        default=d.alarm_keep,
        help="alarms (and pictures) kept per device (default %(default)s)",
    )
    serve.add_argument(
        "--no-console", action="store_true", help="no web console (/console/ on the Vs port)"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")

    with_state_dir(
        psub.add_parser(
            "console-password",
            help="set the web console's password (read from standard input)",
            description="Read a new password for the web console's user admin from standard "
            "input (typed twice, without echo, on a terminal) and store its hash in "
            "<state-dir>/console.json; a running platform takes it at once.",
        )
    )

    call = with_state_dir(psub.add_parser("call", help="an RPC to a device; prints the reply"))
    call.add_argument("device")
    call.add_argument("method")
    call.add_argument("params", nargs="?", help="a JSON object")
    call.add_argument("--timeout", type=_positive, help="seconds (default: the platform's)")

    event = with_state_dir(psub.add_parser("event", help="send an event to a device"))
    event.add_argument("device")
    event.add_argument("name")
    event.add_argument("params", nargs="?", help="a JSON object")

    ptz = with_state_dir(psub.add_parser("ptz", help="move a device's camera (CtrlPTZ)"))
    ptz.add_argument("device")
    ptz.add_argument("op", choices=get_args(PtzOp), metavar="OP", help="up, zoomin_step, ...")
    ptz.add_argument("value", nargs="?", type=_int_in(255), help="speed, step or preset id")
    ptz.add_argument("--channel", type=_int_in(15), default=0)

    with_state_dir(psub.add_parser("devices", help="list devices, online or not"))

    with_state_dir(psub.add_parser("sleeping", help="devices hibernating on this platform"))

    wake = with_state_dir(psub.add_parser("wake", help="send TOWAKEUP to a sleeping device"))
    wake.add_argument("device")
    wake.add_argument(
        "--wait", type=_int_in(600), default=20, help="seconds to wait for its login (0: none)"
    )

    records = with_state_dir(psub.add_parser("records", help="what devices have sent"))
    records.add_argument("device", nargs="?")
    records.add_argument("--since", type=int, default=0, help="first record index wanted")

    logs = with_state_dir(
        psub.add_parser("logs", help="a device's own log (LogUploadAsync), printed if small")
    )
    logs.add_argument("device")
    logs.add_argument(
        "--minutes", type=_positive, default=60.0, help="how far back (default %(default)s)"
    )

    kick = with_state_dir(psub.add_parser("kick", help="close a device's Vd session"))
    kick.add_argument("device")

    segs = with_state_dir(psub.add_parser("segments", help="saved Vr recording segments"))
    segs.add_argument("--channel", type=_non_negative, help="only this channel")
    segs.add_argument(
        "--last", type=_non_negative, default=0, help="the N most recent per channel (0: all)"
    )
    segs.add_argument("--json", action="store_true", help="the admin API's JSON, as is")

    play = with_state_dir(
        psub.add_parser("play", help="PlayVideo: a clip (a file, or a test tone) to a device")
    )
    play.add_argument("device")
    play.add_argument(
        "file", nargs="?", type=Path, help="a media file (copied to the platform's media); "
        "default: a generated 5 s tone (tone-5s.m4a)",
    )  # fmt: skip
    play.add_argument("--channel", type=_int_in(15), default=0)

    upgrade = with_state_dir(
        psub.add_parser(
            "upgrade", help="serve a firmware bundle, send UpgradeFirmware, follow QueryUpgrade"
        )
    )
    upgrade.add_argument("device")
    upgrade.add_argument("bundle", type=Path, help="a bundle from `hss-pu firmware build`")
    upgrade.add_argument(
        "--timeout", type=_positive, default=900.0, help="seconds (default %(default)s)"
    )

    alarms = with_state_dir(
        psub.add_parser("alarms", help="alarms devices sent, their pictures and recordings")
    )
    alarms.add_argument("device", nargs="?")
    alarms.add_argument("--last", type=_non_negative, default=0, help="the N most recent (0: all)")
    alarms.add_argument("--json", action="store_true", help="the admin API's JSON, as is")
    return plat


def main(argv: Sequence[str]) -> int:
    """``hss-pu platform ARGV...`` (hss_pu.cli hands these over before its own parsing)."""
    return run_platform_command(_parser().parse_args(argv))


def run_platform_command(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir or _default_state_dir()
    if args.platform_command == "serve":
        return _cmd_serve(args, state_dir)
    if args.platform_command == "console-password":
        return _cmd_console_password(state_dir)
    try:
        return _client_command(args, state_dir)
    except CliError as exc:
        print(f"hss-pu platform: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# --- serve --------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace, state_dir: Path) -> int:
    setup_logging(args.log_level)
    devices = dict(args.device) if args.device else dict(DEMO_DEVICES)
    for pw in devices.values():
        add_secret(pw)  # a second line of defence; nothing here logs them anyway
    opts = PlatformOptions(
        host=args.host,
        vs_port=args.vs_port,
        vd_port=args.vd_port,
        admin_port=args.admin_port,
        tls=not args.plain,
        state_dir=state_dir,
        clock_offset=args.clock_offset,
        devices=devices,
        hb_interval=args.hb_interval,
        hb_token=args.hb_token,
        hibernation_port=None if args.no_hibernation else args.hibernation_port,
        alarm_record=not args.no_alarm_record,
        alarm_pictures=not args.no_alarm_pictures,
        alarm_prerecord_seconds=args.alarm_prerecord,
        alarm_post_roll=float(args.alarm_post_roll),
        alarm_seg_duration=args.alarm_seg_duration,
        alarm_keep=args.alarm_keep,
        console=not args.no_console,
    )
    opts.device_sockets = dict(args.device_socket or ())
    try:
        return asyncio.run(_serve(opts))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return EXIT_OK


async def _serve(opts: PlatformOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    platform = ReferencePlatform(opts)
    try:
        await platform.start()
    except (OSError, ConsoleRefused, PasswordFileError) as exc:
        log.error("cannot start the reference platform: %s", exc)
        return EXIT_FAILURE
    try:
        _banner(platform)
        log.info("reference platform ready")
        await stop.wait()
        log.info("%s received: stopping", received[0])
    finally:
        await platform.close()
    log.info("stopped")
    return EXIT_OK


def _banner(p: ReferencePlatform) -> None:
    first = next(iter(p.options.devices), "PU-0001")
    state = shlex.quote(str(p.options.state_dir))
    lines = [
        "hss-pu reference platform",
        f"  schedule URL: {p.schedule_url}",
        f"  Vd:           {p.vd_url}",
        f"  CA file:      {p.ca_file or '(none: plain transport)'}",
        f"  admin API:    {p.admin_url} (token in {p.state_file})",
        f"  Vr cbk_url:   {p.schedule_url}{CSEG_PREFIX}<channel>",
        f"  devices:      {', '.join(p.options.devices)}",
        f"  alarms:       {_policy_text(p.options)} (hss-pu platform alarms)",
        f"  hibernation:  {p.hibernation_address or 'off'} (hss-pu platform sleeping, wake)",
        *console_lines(p),
        f"try: hss-pu platform call {shlex.quote(first)} GetCap --state-dir {state}",
    ]
    print("\n".join(lines), flush=True)


def console_lines(p: ReferencePlatform) -> list[str]:
    """The console's URL, and its password the first time (printed, never logged)."""
    if p.console is None:
        return ["  console:      off"]
    lines = [f"  console:      user admin at {p.console.url}"]
    password = p.console.take_generated_password()
    if password is not None:
        lines.append(
            f"  console password: {password} (shown this once; to set another: "
            f"hss-pu platform console-password --state-dir {shlex.quote(str(p.options.state_dir))})"
        )
    return lines


def _read_new_password() -> str:
    """From a terminal: typed twice without echo; otherwise one line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("new console password: ")
        if first != getpass.getpass("again: "):
            raise ValueError("the two passwords differ")
        return first
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


def _cmd_console_password(state_dir: Path) -> int:
    try:
        password = _read_new_password()
        store_password(state_dir, password)
    except ValueError as exc:
        print(f"hss-pu platform console-password: {exc}; nothing changed", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"hss-pu platform console-password: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"console password of admin stored (hashed) in {state_dir / PASSWORD_FILE}; "
        "a running platform takes it at once and ends the old one's sessions",
        flush=True,
    )
    return EXIT_OK


def _policy_text(o: PlatformOptions) -> str:
    pictures = "pictures" if o.alarm_pictures else "no pictures"
    if not o.alarm_record:
        return f"kept with {pictures}; no recording"
    return (
        f"kept with {pictures}; recorded with {o.alarm_prerecord_seconds} s pre-record "
        f"and {o.alarm_post_roll:g} s post-roll"
    )


# --- the admin API's clients ----------------------------------------------------------


def _params_arg(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _UsageError(f"PARAMS_JSON is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _UsageError("PARAMS_JSON must be a JSON object")
    return value


class _UsageError(Exception):
    pass


def _load_state(state_dir: Path) -> tuple[str, str]:
    path = state_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(
            f"no {path}: is `hss-pu platform serve` running with this --state-dir?"
        ) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    url, token = state.get("admin_url"), state.get("token")
    if not isinstance(url, str) or not isinstance(token, str):
        raise CliError(f"{path}: this platform runs without an admin API")
    return url, token


def _request(
    state_dir: Path,
    method: str,
    path: str,
    *,
    body: Any = None,
    timeout: float = 10.0,
    query: dict[str, str] | None = None,
) -> tuple[int, Any]:
    url, token = _load_state(state_dir)
    try:
        with httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=5.0),
            trust_env=False,
        ) as http:
            r = http.request(method, path, json=body, params=query)
    except httpx.ConnectError:
        raise CliError(
            f"cannot reach the admin API at {url}: is `hss-pu platform serve` running?"
        ) from None
    except httpx.HTTPError as exc:
        raise CliError(f"admin API request failed: {type(exc).__name__}: {exc}") from None
    try:
        data = r.json()
    except ValueError:
        raise CliError(f"admin API answered {r.status_code} with a body that is not JSON") from None
    if r.status_code == 401:
        raise CliError(f"admin API refused the token: is {state_dir / STATE_FILE} stale?")
    if r.status_code != 200:
        info = data.get("info") if isinstance(data, dict) else None
        raise CliError(str(info) if info else f"admin API answered {r.status_code}")
    return r.status_code, data


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2), flush=True)


def _client_command(args: argparse.Namespace, state_dir: Path) -> int:
    cmd = args.platform_command
    try:
        params = _params_arg(args.params) if cmd in ("call", "event") else None
    except _UsageError as exc:
        print(f"hss-pu platform: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if cmd == "call":
        body: dict[str, Any] = {"device": args.device, "method": args.method}
        if params is not None:
            body["params"] = params
        if args.timeout is not None:
            body["timeout"] = args.timeout
        # The platform answers within the RPC timeout; the margin covers the HTTP hop.
        wait = (args.timeout or MAX_CALL_TIMEOUT) + 5.0
        _, data = _request(state_dir, "POST", "/admin/call", body=body, timeout=wait)
        _print(data)
        err = data.get("err") if isinstance(data, dict) else None
        if isinstance(err, dict):
            print(
                f"hss-pu platform: {args.device} answered {args.method} with error "
                f"{err.get('code')}: {err.get('msg')}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        return EXIT_OK
    if cmd == "event":
        body = {"device": args.device, "event": args.name}
        if params is not None:
            body["params"] = params
        _, data = _request(state_dir, "POST", "/admin/event", body=body)
        _print(data)
        return EXIT_OK
    if cmd == "ptz":
        ptz: dict[str, Any] = {"channel": args.channel, "op": args.op}
        if args.value is not None:
            ptz["value"] = args.value
        body = {"device": args.device, "event": "CtrlPTZ", "params": ptz}
        _, data = _request(state_dir, "POST", "/admin/event", body=body)
        _print(data)
        return EXIT_OK
    if cmd == "devices":
        _, data = _request(state_dir, "GET", "/admin/devices")
        _print(data)
        return EXIT_OK
    if cmd == "sleeping":
        _, data = _request(state_dir, "GET", "/admin/sleeping")
        _print(data)
        return EXIT_OK
    if cmd == "wake":
        body = {"device": args.device, "wait": args.wait}
        _, data = _request(state_dir, "POST", "/admin/wake", body=body, timeout=args.wait + 15.0)
        _print(data)
        return EXIT_OK
    if cmd == "records":
        query = {"since": str(args.since)}
        if args.device:
            query["device"] = args.device
        _, data = _request(state_dir, "GET", "/admin/records", query=query)
        _print(data)
        return EXIT_OK
    if cmd == "segments":
        query = {"last": str(args.last)}
        if args.channel is not None:
            query["channel"] = str(args.channel)
        _, data = _request(state_dir, "GET", "/admin/vr/segments", query=query)
        if args.json:
            _print(data)
        else:
            print(_segments_table(data.get("segments", [])), flush=True)
        return EXIT_OK
    if cmd == "alarms":
        query = {"last": str(args.last)}
        if args.device:
            query["device"] = args.device
        _, data = _request(state_dir, "GET", "/admin/alarms", query=query)
        if args.json:
            _print(data)
        else:
            print(_alarms_text(data.get("alarms", [])), flush=True)
        return EXIT_OK
    if cmd == "logs":
        body = {"device": args.device, "minutes": args.minutes}
        _, data = _request(state_dir, "POST", "/admin/logs", body=body, timeout=45.0)
        done = data.get("done", {})
        if data.get("text") is not None:
            sys.stdout.write(data["text"])
            sys.stdout.flush()
        else:
            print(f"{data.get('size')} bytes: too long to show here; see {data.get('path')}")
        print(
            f"hss-pu platform: LogDone {done.get('status')} {done.get('start')} .. "
            f"{done.get('end')} ({done.get('size')} bytes, platform copy {data.get('path')})",
            file=sys.stderr,
        )
        return EXIT_OK
    if cmd == "play":
        name = _media_file(args.file, state_dir) if args.file else "tone-5s.m4a"
        body = {"device": args.device, "channel": args.channel, "name": name}
        _, data = _request(state_dir, "POST", "/admin/play", body=body, timeout=60.0)
        _print(data)
        status = json.dumps({"channel": args.channel})
        print(
            f"status: hss-pu platform call {shlex.quote(args.device)} QueryVideoStatus "
            f"{shlex.quote(status)} --state-dir {shlex.quote(str(state_dir))}",
            file=sys.stderr,
        )
        return EXIT_OK
    if cmd == "upgrade":

        def admin(method: str, path: str, body: dict[str, Any], timeout: float) -> Any:
            return _request(state_dir, method, path, body=body, timeout=timeout)[1]

        try:
            return follow_upgrade(
                admin, args.device, args.bundle, timeout=args.timeout, out=sys.stdout,
                offline_errors=(CliError,),
            )  # fmt: skip
        except UpgradeCommandError as exc:
            raise CliError(str(exc)) from None
    if cmd == "kick":
        _, data = _request(state_dir, "POST", "/admin/kick", body={"device": args.device})
        _print(data)
        return EXIT_OK
    raise CliError(f"unknown command {cmd}")


def _media_file(path: Path, state_dir: Path) -> str:
    """Copy ``path`` into the platform's media directory; the name it is served as."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip("._-")[:100] or "clip"
    media = state_dir / "media"
    try:
        media.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, media / name)
    except OSError as exc:
        raise CliError(f"cannot copy {path} to {media}: {exc}") from None
    return name


def _segments_table(segments: list[dict[str, Any]]) -> str:
    """One line per segment: what a person checks first (times, sizes, does it decode)."""
    if not segments:
        return "no saved segments"
    rows = [("CH", "NAME", "START (UTC)", "DURATION", "SIZE", "CHECK")]
    for s in segments:
        start = datetime.fromtimestamp(s["start"], UTC).isoformat(timespec="milliseconds")
        rows.append(
            (
                str(s["channel"]),
                s["name"],
                start.replace("+00:00", "Z"),
                f"{s['duration']:.3f}",
                str(s["size"]),
                _check_text(s.get("check"), bool(s.get("discontinue"))),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )


def _check_text(check: dict[str, Any] | None, discontinue: bool) -> str:
    flag = " (discontinue)" if discontinue else ""
    if check is None:
        return "not checked" + flag
    size = f"{check.get('width')}x{check.get('height')}"
    frames = f"{check.get('frames')} frames {size} {check.get('codec')}"
    if check.get("error") is None:
        return f"ok: {frames}{flag}"
    return f"BAD: {check['error']} ({frames}){flag}"


def _utc(epoch: float, spec: str = "seconds") -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _alarms_text(alarms: list[dict[str, Any]]) -> str:
    """A few lines per alarm: when, what, its picture and its recording's segments."""
    if not alarms:
        return "no alarms"
    lines: list[str] = []
    for a in alarms:
        delay = a["received"] - a["timestamp"]
        lines.append(
            f"#{a['index']} {a['device']} ch{a['channel']} {_utc(a['timestamp'])} "
            f"type {a['type']} {a['state']} {a['desc']!r} (received {delay:+.1f} s)"
        )
        pic = a.get("picture")
        if pic:
            lines.append(
                f"    picture:   {pic['path']} ({pic['size']} bytes, "
                f"{pic['width']}x{pic['height']} JPEG)"
            )
        elif a.get("picture_error"):
            lines.append(f"    picture:   refused: {a['picture_error']}")
        elif a.get("picture_expected"):
            lines.append("    picture:   not uploaded (yet)")
        rec = a.get("recording")
        if rec:
            segs = rec.get("segments", [])
            span = sum(s["duration"] for s in segs)
            what = rec["state"] + (f": {rec['error']}" if rec.get("error") else "")
            lines.append(
                f"    recording: {rec['session_id']} ({what}; {len(segs)} segments, {span:.1f} s)"
            )
            for s in segs:
                ok = {True: "ok", False: "BAD", None: "not checked"}[s.get("ok")]
                lines.append(
                    f"      {_utc(s['start'], 'milliseconds')} {s['duration']:.3f} s "
                    f"{s['size']} bytes {ok} {s['path']}"
                )
        elif a.get("stale"):
            lines.append("    recording: none (the alarm came too late)")
    return "\n".join(lines)
