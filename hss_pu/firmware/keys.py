"""Ed25519 key files: the signer's private key (PKCS8 PEM, mode 0600) and the ``.pub``
(SubjectPublicKeyInfo PEM) a device lists in ``upgrade.trusted_keys``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hss_pu.errors import HssError
from hss_pu.fsutil import atomic_write, read_bounded
from hss_pu.wire.firmware import keyid

__all__ = [
    "MAX_KEY_FILE",
    "KeyFileError",
    "generate",
    "load_private_key",
    "load_public_key",
    "public_key_from_pem",
]

MAX_KEY_FILE = 16 * 1024


class KeyFileError(HssError, ValueError):
    """A key file that cannot be used; ``str()`` names the file and why."""


def public_key_from_pem(data: bytes) -> bytes:
    """The raw 32-byte key of a PEM Ed25519 public key; ValueError says why not."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for odd keys
        raise ValueError(f"not a usable public key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 key ({type(key).__name__.lstrip('_')})")
    return key.public_bytes_raw()


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    try:
        return read_bounded(path, MAX_KEY_FILE)
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None


def load_public_key(path: Path) -> bytes:
    data, _ = _read(path)
    try:
        return public_key_from_pem(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A signing key; refused when group or others may read it."""
    data, st = _read(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path} is readable by group/others (mode {mode:04o}); run 'chmod 600 {path}'"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    except Exception as exc:  # UnsupportedAlgorithm
        raise KeyFileError(f"{path}: not a usable private key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def generate(out: Path) -> str:
    """A new key pair as ``out`` (0600) and ``out``.pub; returns its keyid. Never
    overwrites: a lost signing key cannot be made again."""
    pub = out.with_name(out.name + ".pub")
    for p in (out, pub):
        if p.exists() or p.is_symlink():
            raise KeyFileError(f"{p} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        atomic_write(out, private_pem, mode=0o600)
        atomic_write(pub, public_pem, mode=0o644)
    except OSError as exc:
        raise KeyFileError(f"cannot write {out}: {exc.strerror or exc}") from None
    return keyid(key.public_key())
