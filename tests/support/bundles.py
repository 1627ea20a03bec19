"""Signing keys and firmware bundles for the upgrade tests (hss_pu.firmware.bundle.build,
the same code as ``hss-pu firmware build``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hss_pu.firmware.bundle import build
from hss_pu.firmware.keys import generate, load_private_key

from .fakewheel import build_fake_wheel

__all__ = ["HW", "fake_bundle", "make_bundle", "new_key"]

HW = "HSS-PU-EMU"  # the emulated profile's hardware model


def new_key(directory: Path, name: str = "key") -> tuple[Ed25519PrivateKey, Path]:
    """A key pair as ``hss-pu firmware keygen`` writes it: the key and its .pub path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    generate(path)
    return load_private_key(path), path.with_name(path.name + ".pub")


def make_bundle(
    out: Path,
    wheels: Sequence[Path],
    keys: Sequence[Ed25519PrivateKey],
    *,
    model: str,
    number: int,
    hardware: Sequence[str] = (HW,),
    expires_in: float = 3600.0,
) -> Path:
    now = int(time.time())
    build(
        wheels=list(wheels),
        keys=list(keys),
        firmware_model=model,
        version_number=number,
        hardware_models=list(hardware),
        expires=now + int(expires_in),
        created=now - 60 if expires_in > 0 else now + int(expires_in) - 60,
        out=out,
    )
    return out


def fake_bundle(
    directory: Path,
    keys: Sequence[Ed25519PrivateKey],
    *,
    model: str = "HSS-PU-EMU-2.0",
    number: int = 2,
    hardware: Sequence[str] = (HW,),
    expires_in: float = 3600.0,
    name: str | None = None,
) -> Path:
    """A bundle whose payload is the tiny fake hss_pu wheel (tests/support/fakewheel.py)."""
    wheel = build_fake_wheel(directory / f"wheels-{number}", f"{number}.0")
    out = directory / (name or f"fw-{number}-{len(keys)}.bundle")
    return make_bundle(
        out, [wheel], keys, model=model, number=number, hardware=hardware, expires_in=expires_in
    )
