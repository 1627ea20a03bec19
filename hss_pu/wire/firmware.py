"""Firmware bundles: the head's format, its one canonical encoding, Ed25519 signatures and
the checks a device runs before anything changes (issue 12; docs/protocol.md reading 33).

A bundle is ``MAGIC``, ``head_len`` (uint32 big-endian, at most ``MAX_HEAD``), the head
JSON (``{"manifest": ..., "signatures": [...]}``) and the payload (exactly
``manifest.payload_length`` bytes, nothing after), so a downloader reads and checks the
head before it keeps a payload byte. Pure: no I/O, no clock (``now`` is a parameter).
Parsers never raise on bad input; they return :class:`Rejected` with the reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hss_pu.schema import split_validation_error

__all__ = [
    "CHECKS",
    "MAGIC",
    "MAX_HEAD",
    "MAX_PAYLOAD",
    "MAX_SIGNATURES",
    "PREFIX_LEN",
    "SIGNING_CONTEXT",
    "BundleHead",
    "CheckResult",
    "Manifest",
    "PayloadDigest",
    "PayloadHasher",
    "Policy",
    "Rejected",
    "Signature",
    "canonical",
    "check_bundle",
    "digest",
    "encode_head",
    "first_failure",
    "head_length",
    "is_keyid",
    "keyid",
    "parse_head",
    "payload_name_problem",
    "sign",
    "signed_bytes",
    "trusted_keys",
    "verify_bundle",
]

MAGIC = b"HSSPUFW1"
PREFIX_LEN = len(MAGIC) + 4
MAX_HEAD = 64 * 1024
# The whole wheel set of a Pi build is ~60 MiB; a bound keeps "endless data" finite.
MAX_PAYLOAD = 1 << 30
MAX_SIGNATURES = 16
MAX_JSON_INT = 2**53
SIGNING_CONTEXT = b"hss-pu bundle manifest v1\n"
# The order of issue 12's item 3: the first that fails is the reason.
CHECKS = ("signature", "length and hash", "hardware model", "expiry", "version number")

_HEX64 = r"^[0-9a-f]{64}$"
_PRINTABLE = r"^[\x20-\x7e]+$"  # ASCII: one JSON encoding per string
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_PRINTABLE)]
_Time = Annotated[int, msgspec.Meta(ge=0, le=MAX_JSON_INT)]


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the signatures cover: product, version, targets, payload length and hash."""

    product: Literal["hss-pu"]
    firmware_model: _Name
    version_number: Annotated[int, msgspec.Meta(ge=1, le=MAX_JSON_INT)]
    hardware_models: Annotated[list[_Name], msgspec.Meta(min_length=1, max_length=16)]
    payload_length: Annotated[int, msgspec.Meta(ge=0, le=MAX_PAYLOAD)]
    payload_sha256: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    expires: _Time
    created: _Time
    format: Literal[1]


class Signature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    keyid: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    sig: Annotated[str, msgspec.Meta(min_length=88, max_length=88)]  # base64 of 64 bytes


class _Head(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    manifest: msgspec.Raw
    signatures: Annotated[list[Signature], msgspec.Meta(max_length=MAX_SIGNATURES)]


class BundleHead(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed head; the payload starts at ``payload_offset`` in the bundle."""

    manifest: Manifest
    signatures: tuple[Signature, ...]
    payload_offset: int


class Rejected(msgspec.Struct, frozen=True):
    """Why a bundle is refused: ``check`` is "format" or one of CHECKS."""

    check: str
    reason: str

    def __str__(self) -> str:
        return f"{self.check}: {self.reason}"


class PayloadDigest(msgspec.Struct, frozen=True):
    """What was received after the head: its length (counted up to one byte past the
    manifest's) and the sha256 of those bytes."""

    length: int
    sha256: str


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """What a device trusts and is: keys by keyid, how many must sign, its hardware model,
    and the highest version number it ever installed (0: none)."""

    trusted: Mapping[str, Ed25519PublicKey]
    threshold: int
    hardware_model: str
    high_water: int


class CheckResult(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    detail: str


_encoder = msgspec.json.Encoder(order="sorted")
_HEX_RE = re.compile(_HEX64)


def canonical(manifest: Manifest) -> bytes:
    """The manifest's one encoding: JSON, keys sorted, no whitespace, UTF-8."""
    return _encoder.encode(manifest)


def signed_bytes(manifest: Manifest) -> bytes:
    return SIGNING_CONTEXT + canonical(manifest)


def keyid(public_key: Ed25519PublicKey) -> str:
    """The hex sha256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()


def sign(manifest: Manifest, keys: Iterable[Ed25519PrivateKey]) -> list[Signature]:
    data = signed_bytes(manifest)
    return [
        Signature(keyid=keyid(k.public_key()), sig=base64.b64encode(k.sign(data)).decode("ascii"))
        for k in keys
    ]


def encode_head(manifest: Manifest, signatures: Sequence[Signature]) -> bytes:
    """The bundle's first bytes: magic, head length, head JSON (the payload follows)."""
    head = _encoder.encode(
        {"manifest": msgspec.Raw(canonical(manifest)), "signatures": list(signatures)}
    )
    if len(head) > MAX_HEAD:
        raise ValueError(f"head of {len(head)} bytes is over {MAX_HEAD}")
    return MAGIC + struct.pack(">I", len(head)) + head


def head_length(prefix: bytes) -> int | Rejected:
    """From the first PREFIX_LEN bytes: the head JSON's length."""
    if len(prefix) < PREFIX_LEN:
        return Rejected("format", f"truncated: {len(prefix)} bytes, the prefix is {PREFIX_LEN}")
    if prefix[: len(MAGIC)] != MAGIC:
        return Rejected("format", "not an hss-pu bundle (bad magic)")
    (n,) = struct.unpack(">I", prefix[len(MAGIC) : PREFIX_LEN])
    if n > MAX_HEAD:
        return Rejected("format", f"head of {n} bytes is over {MAX_HEAD}")
    if n == 0:
        return Rejected("format", "empty head")
    return int(n)


_manifest_decoder = msgspec.json.Decoder(Manifest)
_head_decoder = msgspec.json.Decoder(_Head)


def _problem(exc: msgspec.MsgspecError) -> str:
    if isinstance(exc, msgspec.ValidationError):
        key, msg = split_validation_error(exc)
        return f"{key}: {msg}" if key else msg
    return str(exc)


def parse_head(data: bytes) -> BundleHead | Rejected:
    """The head of a bundle from its first bytes (at least PREFIX_LEN + head_len; what
    follows is the payload and is not looked at). The manifest and the head must be in
    their canonical encoding, so no two byte strings carry the same signed head."""
    n = head_length(data[:PREFIX_LEN])
    if isinstance(n, Rejected):
        return n
    end = PREFIX_LEN + n
    if len(data) < end:
        return Rejected("format", f"truncated head: {len(data) - PREFIX_LEN} of {n} bytes")
    raw = data[PREFIX_LEN:end]
    try:
        head = _head_decoder.decode(raw)
        manifest_raw = bytes(head.manifest)
        manifest = _manifest_decoder.decode(manifest_raw)
    except msgspec.MsgspecError as exc:
        return Rejected("format", f"bad head: {_problem(exc)}")
    if canonical(manifest) != manifest_raw:
        return Rejected("format", "manifest is not in canonical form (sorted keys, no spaces)")
    sigs = tuple(head.signatures)
    for s in sigs:
        if _sig_bytes(s) is None:
            return Rejected("format", f"signature of {s.keyid[:16]}: not canonical base64")
    try:
        canonical_head = encode_head(manifest, sigs)[PREFIX_LEN:]
    except ValueError:  # over MAX_HEAD: cannot be, canonical is the shortest spelling
        canonical_head = b""
    if canonical_head != raw:
        return Rejected("format", "head is not in canonical form (sorted keys, no spaces)")
    return BundleHead(manifest=manifest, signatures=sigs, payload_offset=end)


def _sig_bytes(s: Signature) -> bytes | None:
    """The 64 signature bytes, or None unless ``sig`` is their one base64 spelling."""
    try:
        raw = base64.b64decode(s.sig, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != s.sig:
        return None
    return raw


def digest(payload: bytes) -> PayloadDigest:
    return PayloadDigest(len(payload), hashlib.sha256(payload).hexdigest())


class PayloadHasher:
    """Hash a payload as it streams in, refusing it past the manifest's length: ``update``
    returns False (and keeps nothing of the chunk) once the bytes run past ``length``."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.received = 0
        self._sha = hashlib.sha256()

    def update(self, chunk: bytes) -> bool:
        if self.received + len(chunk) > self.length:
            self.received = self.length + 1  # "more than": the length check names it
            return False
        self._sha.update(chunk)
        self.received += len(chunk)
        return True

    def digest(self) -> PayloadDigest:
        return PayloadDigest(self.received, self._sha.hexdigest())


def _check_signatures(head: BundleHead, policy: Policy) -> tuple[str | None, str]:
    """(problem or None, what was found)."""
    if not policy.trusted:
        return "no trusted keys", ""
    data = signed_bytes(head.manifest)
    good: set[str] = set()
    for s in head.signatures:
        key = policy.trusted.get(s.keyid)
        raw = _sig_bytes(s)
        if key is None or raw is None or s.keyid in good:
            continue  # unknown keys are ignored; a key counts once
        try:
            key.verify(raw, data)
        except InvalidSignature:
            continue
        good.add(s.keyid)
    if len(good) < policy.threshold:
        return (
            f"{len(good)} valid signature(s) of trusted keys, {policy.threshold} required "
            f"({len(head.signatures)} signature(s) in the bundle)"
        ), ""
    return None, f"{len(good)} trusted key(s) signed, {policy.threshold} required"


def check_bundle(
    head: BundleHead, payload: PayloadDigest, policy: Policy, now: int
) -> list[CheckResult]:
    """Run CHECKS in order, stopping at the first failure (its result is last)."""
    if policy.threshold < 1:
        raise ValueError("threshold must be at least 1")
    m = head.manifest
    results: list[CheckResult] = []

    def step(name: str, problem: str | None, ok_detail: str) -> bool:
        results.append(CheckResult(name, problem is None, problem or ok_detail))
        return problem is None

    sig_problem, signed = _check_signatures(head, policy)
    if not step("signature", sig_problem, signed):
        return results
    if payload.length > m.payload_length:
        length_problem: str | None = f"payload runs past the manifest's {m.payload_length} bytes"
    elif payload.length < m.payload_length:
        length_problem = f"payload is {payload.length} bytes, the manifest says {m.payload_length}"
    elif payload.sha256 != m.payload_sha256:
        length_problem = "payload sha256 differs from the manifest's"
    else:
        length_problem = None
    if not step("length and hash", length_problem, f"{m.payload_length} bytes, sha256 matches"):
        return results
    hw = policy.hardware_model
    hw_problem = (
        None if hw in m.hardware_models else f"made for {', '.join(m.hardware_models)}, not {hw}"
    )
    if not step("hardware model", hw_problem, hw):
        return results
    expiry_problem = None if now < m.expires else f"expired at {m.expires} (now {now})"
    if not step("expiry", expiry_problem, f"expires at {m.expires}"):
        return results
    version_problem = (
        None
        if m.version_number > policy.high_water
        else f"version number {m.version_number} is not above {policy.high_water}, "
        "the highest installed"
    )
    step("version number", version_problem, f"{m.version_number} > {policy.high_water}")
    return results


def first_failure(results: Sequence[CheckResult]) -> Rejected | None:
    bad = next((r for r in results if not r.ok), None)
    return None if bad is None else Rejected(bad.name, bad.detail)


def verify_bundle(data: bytes, policy: Policy, now: int) -> BundleHead | Rejected:
    """A whole bundle in memory: parsed and every check passed, or the first failure."""
    head = parse_head(data)
    if isinstance(head, Rejected):
        return head
    payload = data[head.payload_offset :]
    failed = first_failure(check_bundle(head, digest(payload), policy, now))
    return head if failed is None else failed


_WHEEL = re.compile(r"^wheels/[A-Za-z0-9_][A-Za-z0-9_.+!-]{0,200}\.whl$")


def payload_name_problem(name: str) -> str | None:
    """Why ``name`` may not be a payload member (only ``wheels/<file>.whl``)."""
    if not _WHEEL.match(name) or ".." in name:
        return f"{name[:120]!r} is not wheels/<file>.whl"
    return None


def trusted_keys(raw_keys: Iterable[bytes]) -> dict[str, Ed25519PublicKey]:
    """Keys by keyid from raw 32-byte Ed25519 public keys."""
    keys = [Ed25519PublicKey.from_public_bytes(r) for r in raw_keys]
    return {keyid(k): k for k in keys}


def is_keyid(text: str) -> bool:
    return _HEX_RE.match(text) is not None
