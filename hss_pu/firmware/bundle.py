"""Bundle files: build one from wheels and keys, read its head, hash and list its payload.

The format and the checks are in :mod:`hss_pu.wire.firmware`; this module does the file
work around them (and, for ``build`` without ``--wheels``, runs pip).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hss_pu.errors import HssError
from hss_pu.wire.firmware import (
    MAX_HEAD,
    MAX_PAYLOAD,
    PREFIX_LEN,
    BundleHead,
    Manifest,
    PayloadDigest,
    PayloadHasher,
    Rejected,
    encode_head,
    head_length,
    parse_head,
    payload_name_problem,
    sign,
)

__all__ = [
    "BuildError",
    "PayloadError",
    "build",
    "digest_payload",
    "extract_wheels",
    "list_payload",
    "pip_wheels",
    "read_head",
    "requirement",
    "source_checkout",
    "write_payload",
]

CHUNK = 1 << 20
# The installer looks for this distribution's wheel among the payload's.
MAIN_WHEEL_PREFIX = "hss_pu-"


class BuildError(HssError):
    """A bundle that cannot be built; ``str()`` says why in one line."""


def source_checkout() -> Path:
    """The checkout this ``hss_pu`` runs from (pip wheel needs its pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise BuildError(f"{root} is not a source checkout (no pyproject.toml); give --wheels")
    return root


def pip_wheels(source: Path, dest: Path, extras: Sequence[str] = ()) -> list[Path]:
    """``pip wheel`` of ``source`` (with ``extras``) and every dependency, for this
    machine, into ``dest``."""
    target = f"{source}[{','.join(extras)}]" if extras else str(source)
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest), target]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BuildError(f"pip wheel failed ({r.returncode}): {tail}")
    return sorted(dest.glob("*.whl"))


def _check_wheels(wheels: Sequence[Path]) -> None:
    if not wheels:
        raise BuildError("no wheels to bundle")
    for w in wheels:
        problem = payload_name_problem(f"wheels/{w.name}")
        if problem:
            raise BuildError(f"{w}: {problem}")
        if not w.is_file() or w.is_symlink():
            raise BuildError(f"{w} is not a regular file")
    if not any(w.name.startswith(MAIN_WHEEL_PREFIX) for w in wheels):
        raise BuildError("no hss_pu wheel among the wheels")
    names = [w.name for w in wheels]
    if len(set(names)) != len(names):
        raise BuildError("two wheels of the same name")


def write_payload(wheels: Sequence[Path], out: BinaryIO) -> None:
    """An uncompressed tar of ``wheels/<name>.whl``, regular files only, in name order,
    with no owner or time in it (the same wheels make the same payload)."""
    _check_wheels(wheels)
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for w in sorted(wheels, key=lambda p: p.name):
            info = tarfile.TarInfo(f"wheels/{w.name}")
            info.size = w.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with w.open("rb") as f:
                tar.addfile(info, f)


def build(
    *,
    wheels: Sequence[Path],
    keys: Sequence[Ed25519PrivateKey],
    firmware_model: str,
    version_number: int,
    hardware_models: Sequence[str],
    expires: int,
    created: int,
    out: Path,
) -> Manifest:
    """Write the bundle ``out`` (atomically: a reader sees no half bundle)."""
    if not keys:
        raise BuildError("no signing key")
    if expires <= created:
        raise BuildError("the expiry time is not in the future")
    out = out.absolute()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as f:
            f.write(b"\0" * (PREFIX_LEN + MAX_HEAD))  # room for the head, moved down below
            write_payload(wheels, f)
            length = f.tell() - PREFIX_LEN - MAX_HEAD
            if length > MAX_PAYLOAD:
                raise BuildError(f"payload of {length} bytes is over {MAX_PAYLOAD}")
            f.seek(PREFIX_LEN + MAX_HEAD)
            payload = _digest(f, length)
            try:
                manifest = msgspec.convert(
                    {
                        "product": "hss-pu",
                        "format": 1,
                        "firmware_model": firmware_model,
                        "version_number": version_number,
                        "hardware_models": list(hardware_models),
                        "payload_length": length,
                        "payload_sha256": payload.sha256,
                        "expires": expires,
                        "created": created,
                    },
                    Manifest,
                    strict=True,
                )
            except msgspec.ValidationError as exc:
                raise BuildError(f"manifest: {exc}") from None
            head = encode_head(manifest, sign(manifest, keys))
            _move_down(f, PREFIX_LEN + MAX_HEAD, len(head), length)
            f.seek(0)
            f.write(head)
            f.truncate(len(head) + length)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return manifest


def _move_down(f: BinaryIO, src: int, dst: int, length: int) -> None:
    """Copy ``length`` bytes from ``src`` to ``dst`` < ``src`` within ``f``."""
    done = 0
    while done < length:
        f.seek(src + done)
        chunk = f.read(min(CHUNK, length - done))
        f.seek(dst + done)
        f.write(chunk)
        done += len(chunk)


def _digest(f: BinaryIO, length: int) -> PayloadDigest:
    """Hash what follows in ``f``, refused once it runs past ``length`` bytes."""
    hasher = PayloadHasher(length)
    while chunk := f.read(CHUNK):
        if not hasher.update(chunk):
            break
    return hasher.digest()


def read_head(f: BinaryIO) -> BundleHead | Rejected:
    """The head of the bundle open as ``f`` (read from its start; the payload follows)."""
    f.seek(0)
    prefix = f.read(PREFIX_LEN)
    n = head_length(prefix)
    if isinstance(n, Rejected):
        return n
    return parse_head(prefix + f.read(n))


def digest_payload(f: BinaryIO, head: BundleHead) -> PayloadDigest:
    f.seek(head.payload_offset)
    return _digest(f, head.manifest.payload_length)


class PayloadError(HssError):
    """A payload whose tar breaks the rules (names, kinds of member)."""


def list_payload(f: BinaryIO, head: BundleHead) -> list[tuple[str, int]]:
    """The payload's members (name, size), each checked against the payload rules: a
    regular file named ``wheels/<file>.whl``, once."""
    f.seek(head.payload_offset)  # tarfile reads from here
    members: list[tuple[str, int]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                _check_member(m, seen)
                members.append((m.name, m.size))
    except tarfile.TarError as exc:
        raise PayloadError(f"not a tar: {exc}") from None
    return members


def _check_member(m: tarfile.TarInfo, seen: set[str]) -> None:
    """The payload rules for one member (``seen``: the names before it, added to)."""
    problem = payload_name_problem(m.name)
    if problem:
        raise PayloadError(problem)
    if not m.isreg():
        raise PayloadError(f"{m.name}: not a regular file")
    if m.name in seen:
        raise PayloadError(f"{m.name}: twice")
    seen.add(m.name)


def extract_wheels(
    f: BinaryIO, head: BundleHead, dest: Path, step: Callable[[str], None] | None = None
) -> Path:
    """Unpack the checked payload's wheels into ``dest/wheels`` (made here; ``dest`` must
    be empty or absent) and return that directory. Every member is checked against the
    payload rules before a byte of it is written; PayloadError otherwise. The files are
    written and closed, not fsync'd: the install fsyncs what it builds from them, and a
    crash before that leaves only staging debris."""
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, mode=0o700)
    f.seek(head.payload_offset)
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                _check_member(m, seen)
                src = tar.extractfile(m)
                if src is None:  # cannot be for a regular file
                    raise PayloadError(f"{m.name}: unreadable")
                out = wheels / m.name.removeprefix("wheels/")
                with src, out.open("xb") as w:
                    shutil.copyfileobj(src, w, CHUNK)
                if step is not None:
                    step("extract-member")
    except tarfile.TarError as exc:
        raise PayloadError(f"not a tar: {exc}") from None
    if not any(n.startswith(f"wheels/{MAIN_WHEEL_PREFIX}") for n in seen):
        raise PayloadError("no hss_pu wheel in the payload")
    return wheels


# An extra of hss-pu, and the wheel that shows a payload carries it.
EXTRA_WHEELS = {"people": "opencv_python_headless-"}


def requirement(wheels: Path) -> str:
    """What to install from an unpacked payload: ``hss-pu`` with every extra whose
    wheels came with it (a laptop's person detection survives an upgrade)."""
    names = [p.name for p in wheels.glob("*.whl")]
    extras = [e for e, prefix in EXTRA_WHEELS.items() if any(n.startswith(prefix) for n in names)]
    return f"hss-pu[{','.join(extras)}]" if extras else "hss-pu"
