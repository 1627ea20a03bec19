"""Firmware bundles (issue 12, items 1 and 3): the format, the signatures with a threshold,
and the checks in their order, each failure with its reason (hss_pu/wire/firmware.py)."""

from __future__ import annotations

import base64
import random
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hss_pu.wire import firmware as fw

NOW = 1_800_000_000
HW = "HSS-PU-EMU"
PAYLOAD = bytes(random.Random(7).getrandbits(8) for _ in range(2048))
# Fixed keys (seeded), so a failure reproduces.
KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (1, 2, 3)]


def manifest(payload: bytes = PAYLOAD, **over: Any) -> fw.Manifest:
    fields: dict[str, Any] = {
        "product": "hss-pu",
        "format": 1,
        "firmware_model": "HSS-PU-EMU-2.0",
        "version_number": 5,
        "hardware_models": [HW, "RPI4-HQ"],
        "payload_length": len(payload),
        "payload_sha256": fw.digest(payload).sha256,
        "expires": NOW + 3600,
        "created": NOW - 60,
    }
    fields.update(over)
    return msgspec.convert(fields, fw.Manifest, strict=True)


def bundle(
    m: fw.Manifest | None = None,
    signers: Sequence[Ed25519PrivateKey] = KEYS[:1],
    payload: bytes = PAYLOAD,
) -> bytes:
    m = m or manifest(payload)
    return fw.encode_head(m, fw.sign(m, signers)) + payload


def policy(
    trusted: Sequence[Ed25519PrivateKey] = KEYS[:2],
    threshold: int = 1,
    hardware_model: str = HW,
    high_water: int = 4,
) -> fw.Policy:
    return fw.Policy(
        trusted=fw.trusted_keys(k.public_key().public_bytes_raw() for k in trusted),
        threshold=threshold,
        hardware_model=hardware_model,
        high_water=high_water,
    )


def rejected(data: bytes, pol: fw.Policy | None = None, now: int = NOW) -> fw.Rejected:
    got = fw.verify_bundle(data, pol or policy(), now)
    assert isinstance(got, fw.Rejected), got
    return got


def resign_head(data: bytes, head_json: bytes) -> bytes:
    """``data`` with its head JSON replaced (the prefix's length updated)."""
    n = fw.head_length(data[: fw.PREFIX_LEN])
    assert isinstance(n, int)
    rest = data[fw.PREFIX_LEN + n :]
    return fw.MAGIC + struct.pack(">I", len(head_json)) + head_json + rest


def head_json(data: bytes) -> bytes:
    n = fw.head_length(data[: fw.PREFIX_LEN])
    assert isinstance(n, int)
    return data[fw.PREFIX_LEN : fw.PREFIX_LEN + n]


def test_round_trip() -> None:
    data = bundle()
    assert data[:8] == b"HSSPUFW1"
    got = fw.verify_bundle(data, policy(), NOW)
    assert isinstance(got, fw.BundleHead), got
    assert got.manifest == manifest()
    assert data[got.payload_offset :] == PAYLOAD
    head = fw.parse_head(data[: got.payload_offset])  # the head alone is enough to read
    assert head == got
    results = fw.check_bundle(got, fw.digest(PAYLOAD), policy(), NOW)
    assert [r.name for r in results] == list(fw.CHECKS)
    assert all(r.ok for r in results)


def test_signed_bytes_are_the_context_and_the_canonical_manifest() -> None:
    m = manifest()
    assert fw.signed_bytes(m) == b"hss-pu bundle manifest v1\n" + fw.canonical(m)
    text = fw.canonical(m)
    assert b" " not in text.replace(b"HSS-PU-EMU-2.0", b"")
    keys = list(msgspec.json.decode(text))
    assert keys == sorted(keys)
    sig = fw.sign(m, KEYS[:1])[0]
    assert sig.keyid == fw.keyid(KEYS[0].public_key())
    KEYS[0].public_key().verify(base64.b64decode(sig.sig), fw.signed_bytes(m))


def test_tampered_payload_byte() -> None:
    data = bytearray(bundle())
    data[-100] ^= 0x01
    assert rejected(bytes(data)) == fw.Rejected(
        "length and hash", "payload sha256 differs from the manifest's"
    )


def test_tampered_manifest() -> None:
    """A manifest changed after signing (canonical, signatures of the original)."""
    good = bundle()
    head = fw.parse_head(good)
    assert isinstance(head, fw.BundleHead)
    evil = manifest(version_number=6)
    data = fw.encode_head(evil, head.signatures) + PAYLOAD
    r = rejected(data)
    assert r.check == "signature"
    assert r.reason.startswith("0 valid signature(s) of trusted keys, 1 required")


def test_unknown_key_is_ignored() -> None:
    r = rejected(bundle(signers=[KEYS[2]]))
    assert r.check == "signature"
    assert r.reason.startswith("0 valid signature(s) of trusted keys, 1 required")
    # ... but does not spoil a bundle a trusted key signed too.
    assert isinstance(
        fw.verify_bundle(bundle(signers=[KEYS[2], KEYS[0]]), policy(), NOW), fw.BundleHead
    )


def test_no_trusted_keys() -> None:
    assert rejected(bundle(), policy(trusted=[])) == fw.Rejected("signature", "no trusted keys")


def test_threshold_needs_distinct_trusted_keys() -> None:
    two = policy(threshold=2)
    assert isinstance(fw.verify_bundle(bundle(signers=KEYS[:2]), two, NOW), fw.BundleHead)
    one = rejected(bundle(signers=KEYS[:1]), two)
    assert one.check == "signature"
    assert one.reason.startswith("1 valid signature(s) of trusted keys, 2 required")
    # The same key twice counts once.
    twice = rejected(bundle(signers=[KEYS[0], KEYS[0]]), two)
    assert (
        twice.reason
        == "1 valid signature(s) of trusted keys, 2 required (2 signature(s) in the bundle)"
    )
    # An untrusted second signer does not make up the number.
    assert rejected(bundle(signers=[KEYS[0], KEYS[2]]), two).check == "signature"


def test_a_signature_by_the_right_key_id_but_of_other_bytes() -> None:
    m = manifest()
    sig = fw.sign(manifest(version_number=99), KEYS[:1])  # valid, but for another manifest
    assert rejected(fw.encode_head(m, sig) + PAYLOAD).check == "signature"


@pytest.mark.parametrize("high_water", [5, 6, 1000])
def test_version_number_not_above_the_high_water_mark(high_water: int) -> None:
    r = rejected(bundle(), policy(high_water=high_water))
    assert r == fw.Rejected(
        "version number", f"version number 5 is not above {high_water}, the highest installed"
    )


def test_wrong_hardware_model() -> None:
    r = rejected(bundle(), policy(hardware_model="RPI5-CAM3-PTZ"))
    assert r == fw.Rejected("hardware model", f"made for {HW}, RPI4-HQ, not RPI5-CAM3-PTZ")


@pytest.mark.parametrize("now", [NOW + 3600, NOW + 10**6])
def test_expired(now: int) -> None:
    r = rejected(bundle(), now=now)
    assert r == fw.Rejected("expiry", f"expired at {NOW + 3600} (now {now})")


def test_over_long_and_short_payload() -> None:
    r = rejected(bundle() + b"\0")
    assert r == fw.Rejected(
        "length and hash", f"payload runs past the manifest's {len(PAYLOAD)} bytes"
    )
    r = rejected(bundle()[:-1])
    assert r.check == "length and hash"
    assert r.reason == f"payload is {len(PAYLOAD) - 1} bytes, the manifest says {len(PAYLOAD)}"


def test_checks_run_in_the_issues_order() -> None:
    """Everything wrong at once: the signature is reported; fix one at a time, the next."""
    old_expired = manifest(version_number=1, expires=NOW - 1, hardware_models=["OTHER"])
    pol = policy(threshold=2)
    tampered = bundle(old_expired, signers=KEYS[:1])[:-1] + b"x"
    assert rejected(tampered, pol).check == "signature"
    signed = bundle(old_expired, signers=KEYS[:2])
    assert rejected(signed[:-1] + b"x", pol).check == "length and hash"
    assert rejected(signed, pol).check == "hardware model"
    assert rejected(signed, policy(threshold=2, hardware_model="OTHER")).check == "expiry"
    fresh = bundle(manifest(version_number=1, hardware_models=["OTHER"]), signers=KEYS[:2])
    assert rejected(fresh, policy(threshold=2, hardware_model="OTHER")).check == "version number"
    head = fw.parse_head(signed)
    assert isinstance(head, fw.BundleHead)
    results = fw.check_bundle(head, fw.digest(PAYLOAD), pol, NOW)
    assert [(r.name, r.ok) for r in results] == [
        ("signature", True),
        ("length and hash", True),
        ("hardware model", False),
    ]


def test_head_over_64_kib() -> None:
    prefix = fw.MAGIC + struct.pack(">I", fw.MAX_HEAD + 1)
    assert fw.head_length(prefix) == fw.Rejected("format", "head of 65537 bytes is over 65536")
    assert fw.parse_head(prefix + b"{" * (fw.MAX_HEAD + 1)) == fw.Rejected(
        "format", "head of 65537 bytes is over 65536"
    )
    # A head of exactly 64 KiB is read (and refused for what it holds, not its size).
    big = fw.MAGIC + struct.pack(">I", fw.MAX_HEAD) + b" " * fw.MAX_HEAD
    r = fw.parse_head(big)
    assert isinstance(r, fw.Rejected)
    assert r.reason.startswith("bad head")
    # The encoder will not make one either.
    many = manifest(hardware_models=["M" * 64] * 16)
    with pytest.raises(ValueError, match="over 65536"):
        fw.encode_head(many, fw.sign(many, KEYS[:1]) * 700)


def test_non_canonical_manifest() -> None:
    """The same manifest, signed over its canonical bytes, but spelled otherwise in the head:
    refused, so one signed manifest has one byte string."""
    m = manifest()
    sigs = msgspec.json.encode(fw.sign(m, KEYS[:1]))
    for spelling in (
        msgspec.json.encode(m),  # field order, not sorted
        msgspec.json.format(fw.canonical(m), indent=1),  # whitespace
        fw.canonical(m).replace(b'"hss-pu"', b'"\\u0068ss-pu"'),  # an escape
        fw.canonical(m).replace(b'"format":1', b'"format":1,"format":1'),  # a key twice
    ):
        assert spelling != fw.canonical(m)
        head = b'{"manifest":' + spelling + b',"signatures":' + sigs + b"}"
        r = rejected(resign_head(bundle(), head))
        assert r.check == "format", spelling
        assert r.reason == "manifest is not in canonical form (sorted keys, no spaces)", r
    # The head around it must be canonical too, and the signature's base64.
    good = head_json(bundle())
    assert rejected(resign_head(bundle(), good.replace(b',"signatures"', b', "signatures"'))) == (
        fw.Rejected("format", "head is not in canonical form (sorted keys, no spaces)")
    )


def test_non_canonical_base64_signature() -> None:
    good = head_json(bundle())
    sig = fw.sign(manifest(), KEYS[:1])[0].sig
    assert sig.endswith("==")
    last = sig[-3]  # carries 4 bits the decoder ignores
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    other = alphabet[alphabet.index(last) ^ 1]
    twin = sig[:-3] + other + "=="
    assert base64.b64decode(twin) == base64.b64decode(sig)
    r = rejected(resign_head(bundle(), good.replace(sig.encode(), twin.encode())))
    assert r.check == "format"
    assert "not canonical base64" in r.reason


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("product", "other", "product"),
        ("format", 2, "format"),
        ("version_number", 0, "version_number"),
        ("version_number", 1.0, "version_number"),
        ("hardware_models", [], "hardware_models"),
        ("firmware_model", "", "firmware_model"),
        ("firmware_model", "caf\u00e9", "firmware_model"),
        ("payload_sha256", "AB" * 32, "payload_sha256"),
        ("surprise", 1, "unknown field"),
        ("product", None, "product"),
    ],
)
def test_manifest_fields_are_checked(field: str, value: object, words: str) -> None:
    fields = msgspec.to_builtins(manifest())
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    text = msgspec.json.encode(fields, order="sorted")
    sigs = msgspec.json.encode(fw.sign(manifest(), KEYS[:1]))
    r = rejected(resign_head(bundle(), b'{"manifest":' + text + b',"signatures":' + sigs + b"}"))
    assert r.check == "format"
    assert r.reason.startswith("bad head") and words in r.reason, r


def reason(data: bytes) -> str:
    r = fw.parse_head(data)
    assert isinstance(r, fw.Rejected)
    assert r.check == "format"
    return r.reason


def test_prefix_errors() -> None:
    assert reason(b"") == "truncated: 0 bytes, the prefix is 12"
    assert reason(b"HSSPUFW2" + bytes(4)) == "not an hss-pu bundle (bad magic)"
    assert reason(fw.MAGIC + bytes(4)) == "empty head"
    assert reason(bundle()[:100]).startswith("truncated head")


def test_parser_never_raises_on_junk() -> None:
    rng = random.Random(3)
    good = bundle()
    for _ in range(300):
        n = rng.randrange(0, 600)
        junk = fw.MAGIC + struct.pack(">I", n) + bytes(rng.getrandbits(8) for _ in range(n))
        assert isinstance(fw.parse_head(junk), fw.Rejected)
        cut = good[: rng.randrange(len(good))]
        assert isinstance(fw.verify_bundle(cut, policy(), NOW), fw.Rejected)


def test_payload_names() -> None:
    assert fw.payload_name_problem("wheels/hss_pu-0.1.0-py3-none-any.whl") is None
    for bad in (
        "/wheels/a.whl",
        "wheels/../a.whl",
        "wheels/sub/a.whl",
        "wheels/.hidden.whl",
        "wheels/a.tar.gz",
        "other/a.whl",
        "wheels/a..whl",
        "wheels/",
    ):
        assert fw.payload_name_problem(bad) is not None, bad


def test_one_thousand_bit_flips_none_verifies() -> None:
    """Issue 12 "Shown by": any single bit flipped anywhere in a good bundle (magic, length,
    head, signatures, every payload byte) is refused. Signed by exactly the threshold (2 of
    2), so no signature is spare."""
    pol = policy(threshold=2)
    good = bundle(signers=KEYS[:2])
    assert isinstance(fw.verify_bundle(good, pol, NOW), fw.BundleHead)
    rng = random.Random(20261130)
    caught: Counter[str] = Counter()
    for _ in range(1000):
        data = bytearray(good)
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        r = fw.verify_bundle(bytes(data), pol, NOW)
        assert isinstance(r, fw.Rejected), f"bit {bit} flipped still verifies"
        caught[r.check] += 1
    # Flips landed in every part of the bundle.
    assert set(caught) == {"format", "signature", "length and hash"}, caught


def test_payload_hasher_streams_and_stops_past_the_length() -> None:
    h = fw.PayloadHasher(len(PAYLOAD))
    for i in range(0, len(PAYLOAD), 100):
        assert h.update(PAYLOAD[i : i + 100])
    assert h.digest() == fw.digest(PAYLOAD)
    assert not h.update(b"x")  # one byte too many
    head = fw.parse_head(bundle())
    assert isinstance(head, fw.BundleHead)
    r = fw.first_failure(fw.check_bundle(head, h.digest(), policy(), NOW))
    assert r == fw.Rejected(
        "length and hash", f"payload runs past the manifest's {len(PAYLOAD)} bytes"
    )
