"""``hss-pu firmware keygen | build | verify | show``: make and inspect signed bundles.

Exit status: 0 success, 1 a bundle that fails a check or cannot be built, 2 bad usage or
configuration (as ``hss-pu``'s own commands).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from hss_pu.config import load_config
from hss_pu.errors import HssError
from hss_pu.firmware import bundle, keys
from hss_pu.profiles import load_profile
from hss_pu.schema import SchemaError
from hss_pu.wire.firmware import CHECKS, Policy, Rejected, check_bundle, trusted_keys

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hss-pu firmware", description="Signed firmware bundles.")
    sub = p.add_subparsers(dest="command", required=True)
    kg = sub.add_parser("keygen", help="make an Ed25519 signing key (KEY, mode 0600) and KEY.pub")
    kg.add_argument("--out", required=True, type=Path, metavar="KEY")
    b = sub.add_parser("build", help="build a signed bundle")
    b.add_argument("--key", action="append", required=True, type=Path, help="a signing key")
    b.add_argument("--firmware-model", required=True)
    b.add_argument("--version-number", required=True, type=int)
    b.add_argument("--hardware-model", action="append", required=True, dest="hardware_models")
    b.add_argument("--expires", required=True, type=_iso8601, help="ISO 8601 with a UTC offset")
    b.add_argument(
        "--wheels",
        type=Path,
        help="a directory of wheels (hss_pu's and its dependencies'); default: pip wheel of "
        "this checkout for this machine",
    )
    b.add_argument(
        "--extra",
        action="append",
        choices=["people"],
        default=[],
        help="without --wheels: also the wheels of this extra (people: OpenCV, for person "
        "detection off a Pi); the device installs it when its wheels are in the bundle",
    )
    b.add_argument("--out", required=True, type=Path, metavar="BUNDLE")
    v = sub.add_parser("verify", help="run the device's checks on a bundle")
    v.add_argument("bundle", type=Path)
    v.add_argument("--config", "-c", type=Path, help="the device's config (trusted keys, profile)")
    v.add_argument(
        "--high-water",
        type=int,
        default=0,
        help="the highest version number already installed (default 0)",
    )
    s = sub.add_parser("show", help="print a bundle's manifest, signers and payload files")
    s.add_argument("bundle", type=Path)
    return p


def _iso8601(text: str) -> int:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (e.g. ...T00:00:00Z)")
    return int(t.timestamp())


def _fail(msg: str, code: int = EXIT_FAILURE) -> int:
    print(f"hss-pu firmware: {msg}", file=sys.stderr)
    return code


def cmd_keygen(out: Path) -> int:
    kid = keys.generate(out)
    print(f"{out} (private, mode 0600), {out}.pub (public); keyid {kid}")
    return EXIT_OK


def cmd_build(a: argparse.Namespace) -> int:
    signers = [keys.load_private_key(k) for k in a.key]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hss-pu-wheels-") as tmp:
        if a.wheels is not None:
            if not a.wheels.is_dir():
                return _fail(f"--wheels {a.wheels} is not a directory", EXIT_USAGE)
            wheels = sorted(a.wheels.glob("*.whl"))
        else:
            wheels = bundle.pip_wheels(bundle.source_checkout(), Path(tmp), extras=a.extra)
        manifest = bundle.build(
            wheels=wheels,
            keys=signers,
            firmware_model=a.firmware_model,
            version_number=a.version_number,
            hardware_models=a.hardware_models,
            expires=a.expires,
            created=int(time.time()),
            out=a.out,
        )
    took = time.monotonic() - t0
    size = a.out.stat().st_size
    print(
        f"{a.out}: {manifest.firmware_model} #{manifest.version_number}, {len(wheels)} wheels, "
        f"{size} bytes, {len(signers)} signature(s), built in {took:.1f} s"
    )
    return EXIT_OK


def _policy(config: Path | None, high_water: int) -> Policy:
    if config is None:  # the embedded default: emulated profile, no trusted key
        return Policy(
            trusted={},
            threshold=1,
            hardware_model=load_profile("emulated").hardware_model,
            high_water=high_water,
        )
    cfg = load_config(config)
    return Policy(
        trusted=trusted_keys(cfg.trusted_keys),
        threshold=cfg.doc.upgrade.threshold,
        hardware_model=cfg.profile.hardware_model,
        high_water=high_water,
    )


def cmd_verify(path: Path, config: Path | None, high_water: int) -> int:
    try:
        policy = _policy(config, high_water)
    except SchemaError as exc:
        return _fail(f"config error: {exc}", EXIT_USAGE)
    with path.open("rb") as f:
        head = bundle.read_head(f)
        if isinstance(head, Rejected):
            print(f"FAIL {head}")
            return EXIT_FAILURE
        results = check_bundle(head, bundle.digest_payload(f, head), policy, int(time.time()))
    for r in results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}")
    for name in CHECKS[len(results) :]:
        print(f"-    {name}: not checked")
    return EXIT_OK if all(r.ok for r in results) and len(results) == len(CHECKS) else EXIT_FAILURE


def cmd_show(path: Path) -> int:
    with path.open("rb") as f:
        head = bundle.read_head(f)
        if isinstance(head, Rejected):
            return _fail(f"{path}: {head}")
        print(json.dumps(msgspec.to_builtins(head.manifest), indent=2, sort_keys=True))
        for s in head.signatures:
            print(f"signed by {s.keyid}")
        got = bundle.digest_payload(f, head)
        if got.length != head.manifest.payload_length:
            print(f"payload: {got.length} bytes after the head, not {head.manifest.payload_length}")
        try:
            members = bundle.list_payload(f, head)
        except bundle.PayloadError as exc:
            return _fail(f"{path}: payload: {exc}")
    for name, size in members:
        print(f"{size:>12} {name}")
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.command == "keygen":
            return cmd_keygen(a.out)
        if a.command == "build":
            return cmd_build(a)
        if a.command == "verify":
            return cmd_verify(a.bundle, a.config, a.high_water)
        if a.command == "show":
            return cmd_show(a.bundle)
    except HssError as exc:  # key files, wheels, pip
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    return EXIT_USAGE
