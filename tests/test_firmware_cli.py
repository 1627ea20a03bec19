"""``hss-pu firmware keygen | build | verify | show`` end to end, and the ``[upgrade]``
config section (issue 12, item 1 and the Contract)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hss_pu.config import load_config
from hss_pu.firmware import bundle as fwbundle
from hss_pu.firmware.keys import KeyFileError, load_private_key, load_public_key
from hss_pu.schema import SchemaError
from hss_pu.wire import firmware as fw

from .conftest import WriteConfig

EXPIRES = "2100-01-01T00:00:00Z"
UPGRADE_K1 = '\n[upgrade]\ntrusted_keys = ["k1.pub"]\n'


def hss_pu(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hss_pu", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A real, installable pure-Python wheel (PEP 427), made without a build backend."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{dist}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hss-pu-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
    return path


@pytest.fixture
def tiny_wheels(tmp_path: Path) -> Path:
    """An ``hss_pu`` wheel and the one dependency it needs."""
    d = tmp_path / "wheels"
    d.mkdir()
    make_wheel(d, "hss_pu", "9.9.9", requires=("tinydep>=1",))
    make_wheel(d, "tinydep", "1.0")
    return d


def offline_resolves(wheel_dir: Path, requirement: str) -> list[str]:
    """What ``pip install --no-index`` from ``wheel_dir`` alone would install."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index",
         "--ignore-installed", "--find-links", str(wheel_dir), "--report", "-", requirement],
        capture_output=True,
        text=True,
        timeout=120,
        # No pip.conf (its find-links, its index): the payload's directory alone.
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    return sorted(i["metadata"]["name"] for i in report["install"])


def extract_payload(path: Path, dest: Path) -> list[str]:
    data = path.read_bytes()
    head = fw.parse_head(data)
    assert isinstance(head, fw.BundleHead)
    with tarfile.open(fileobj=io.BytesIO(data[head.payload_offset :]), mode="r:") as tar:
        names = tar.getnames()
        tar.extractall(dest, filter="data")
    return names


def upgrade_config(write_config: WriteConfig, keys: list[str], extra: str = "") -> Path:
    quoted = ", ".join(f'"{k}"' for k in keys)
    return write_config(extra=f"\n[upgrade]\ntrusted_keys = [{quoted}]\n{extra}")


def test_keygen_build_verify_show(
    tmp_path: Path, tiny_wheels: Path, write_config: WriteConfig
) -> None:
    r = hss_pu("firmware", "keygen", "--out", "k1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "k1").stat().st_mode) == 0o600
    kid = fw.keyid(load_private_key(tmp_path / "k1").public_key())
    assert kid in r.stdout
    assert hashlib.sha256(load_public_key(tmp_path / "k1.pub")).hexdigest() == kid
    # Never over an existing key.
    again = hss_pu("firmware", "keygen", "--out", "k1", cwd=tmp_path)
    assert again.returncode == 1 and "exists; not overwriting" in again.stderr
    assert hss_pu("firmware", "keygen", "--out", tmp_path / "k2").returncode == 0

    out = tmp_path / "fw.bundle"
    r = hss_pu(
        "firmware", "build", "--key", tmp_path / "k1", "--key", tmp_path / "k2",
        "--firmware-model", "HSS-PU-EMU-9.9.9", "--version-number", "7",
        "--hardware-model", "HSS-PU-EMU", "--hardware-model", "RPI4-HQ",
        "--expires", EXPIRES, "--wheels", tiny_wheels, "--out", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "2 wheels" in r.stdout and "2 signature(s)" in r.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fw.bundle")] == []

    # verify: against the config's keys (2 of 2), its profile's hardware model, now.
    cfg = upgrade_config(write_config, ["k1.pub", "k2.pub"], "threshold = 2\n")
    r = hss_pu("firmware", "verify", out, "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == [
        f"ok   {name}" for name in fw.CHECKS
    ]
    r = hss_pu("firmware", "verify", out, "--config", cfg, "--high-water", "7")
    assert r.returncode == 1
    assert "FAIL version number: version number 7 is not above 7" in r.stdout
    # Another profile listed in the bundle verifies; one not listed fails its hardware
    # model, and nothing after it is checked.
    pi4 = write_config(name="pi4.toml", profile="pi4-hq", extra=UPGRADE_K1)
    r = hss_pu("firmware", "verify", out, "--config", pi4)
    assert r.returncode == 0, r.stdout + r.stderr
    pi5 = write_config(name="pi5.toml", profile="pi5-cam3-ptz", extra=UPGRADE_K1)
    r = hss_pu("firmware", "verify", out, "--config", pi5)
    assert r.returncode == 1
    assert "FAIL hardware model: made for HSS-PU-EMU, RPI4-HQ, not RPI5-CAM3-PTZ" in r.stdout
    assert "-    expiry: not checked" in r.stdout
    # No config: the embedded default trusts no key.
    r = hss_pu("firmware", "verify", out)
    assert r.returncode == 1
    assert "FAIL signature: no trusted keys" in r.stdout
    assert "-    version number: not checked" in r.stdout

    # show: the manifest, the signers' keyids, the payload's files.
    r = hss_pu("firmware", "show", out)
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout[: r.stdout.index("}") + 1])
    assert manifest["firmware_model"] == "HSS-PU-EMU-9.9.9"
    assert manifest["version_number"] == 7
    assert manifest["hardware_models"] == ["HSS-PU-EMU", "RPI4-HQ"]
    assert f"signed by {kid}" in r.stdout
    assert "wheels/hss_pu-9.9.9-py3-none-any.whl" in r.stdout
    assert "wheels/tinydep-1.0-py3-none-any.whl" in r.stdout

    # The payload is what the issue says: the wheels, installable with no index.
    names = extract_payload(out, tmp_path / "x")
    assert names == ["wheels/hss_pu-9.9.9-py3-none-any.whl", "wheels/tinydep-1.0-py3-none-any.whl"]
    assert offline_resolves(tmp_path / "x" / "wheels", "hss-pu") == ["hss-pu", "tinydep"]

    # A payload byte changed on disk: verify says which check failed.
    data = bytearray(out.read_bytes())
    data[-5] ^= 0x40
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(bytes(data))
    r = hss_pu("firmware", "verify", bad, "--config", cfg)
    assert r.returncode == 1
    assert "FAIL length and hash: payload sha256 differs" in r.stdout
    bad.write_bytes(out.read_bytes() + b"more")
    r = hss_pu("firmware", "verify", bad, "--config", cfg)
    assert r.returncode == 1
    assert "FAIL length and hash: payload runs past" in r.stdout


def test_build_refuses(tmp_path: Path, tiny_wheels: Path) -> None:
    assert hss_pu("firmware", "keygen", "--out", tmp_path / "k").returncode == 0
    common = ("--firmware-model", "X-1", "--version-number", "1", "--hardware-model", "HW",
              "--out", tmp_path / "b")  # fmt: skip
    key = ("--key", tmp_path / "k")
    (tmp_path / "k").chmod(0o640)
    r = hss_pu("firmware", "build", *key, *common, "--expires", EXPIRES, "--wheels", tiny_wheels)
    assert r.returncode == 1 and "readable by group/others (mode 0640)" in r.stderr
    (tmp_path / "k").chmod(0o600)
    r = hss_pu(
        "firmware", "build", *key, *common, "--expires", "2100-01-01T00:00", "--wheels", tiny_wheels
    )
    assert r.returncode == 2 and "no UTC offset" in r.stderr
    r = hss_pu(
        "firmware",
        "build",
        *key,
        *common,
        "--expires",
        "2001-01-01T00:00Z",
        "--wheels",
        tiny_wheels,
    )
    assert r.returncode == 1 and "not in the future" in r.stderr
    (tiny_wheels / "hss_pu-9.9.9-py3-none-any.whl").unlink()
    r = hss_pu("firmware", "build", *key, *common, "--expires", EXPIRES, "--wheels", tiny_wheels)
    assert r.returncode == 1 and "no hss_pu wheel" in r.stderr
    assert not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub", "wheels"]  # no temp left


def test_show_refuses_a_payload_that_breaks_the_rules(tmp_path: Path) -> None:
    """A signed bundle whose tar holds a link or a path outside wheels/: show names it (the
    installer will use the same rules)."""
    key = Ed25519PrivateKey.generate()
    for member, why in (
        (tarfile.TarInfo("wheels/../../etc/x.whl"), "is not wheels/<file>.whl"),
        (tarfile.TarInfo("/wheels/a.whl"), "is not wheels/<file>.whl"),
        (tarfile.TarInfo("wheels/link.whl"), "not a regular file"),
        (tarfile.TarInfo("wheels/twice.whl"), "twice"),
    ):
        if member.name.endswith("link.whl"):
            member.type = tarfile.SYMTYPE
            member.linkname = "/etc/passwd"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:") as tar:
            tar.addfile(member, io.BytesIO(b""))
            if member.name.endswith("twice.whl"):
                tar.addfile(member, io.BytesIO(b""))
        payload = buf.getvalue()
        m = fw.Manifest(
            product="hss-pu", format=1, firmware_model="X", version_number=1,
            hardware_models=["HW"],
            payload_length=len(payload), payload_sha256=fw.digest(payload).sha256,
            expires=int(time.time()) + 99, created=0,
        )  # fmt: skip
        path = tmp_path / "evil.bundle"
        path.write_bytes(fw.encode_head(m, fw.sign(m, [key])) + payload)
        r = hss_pu("firmware", "show", path)
        assert r.returncode == 1, r.stdout
        assert why in r.stderr, r.stderr
        with path.open("rb") as f:
            head = fwbundle.read_head(f)
            assert isinstance(head, fw.BundleHead)
            with pytest.raises(fwbundle.PayloadError):
                fwbundle.list_payload(f, head)


@pytest.mark.slow
def test_build_of_this_checkout_installs_offline(tmp_path: Path) -> None:
    """Without --wheels: pip wheel of this checkout and its dependencies, for this machine;
    the payload alone resolves hss-pu with no index."""
    assert hss_pu("firmware", "keygen", "--out", tmp_path / "k").returncode == 0
    out = tmp_path / "real.bundle"
    t0 = time.monotonic()
    r = hss_pu(
        "firmware", "build", "--key", tmp_path / "k", "--firmware-model", "HSS-PU-EMU-next",
        "--version-number", "2", "--hardware-model", "HSS-PU-EMU", "--expires", EXPIRES,
        "--out", out,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    print(f"real wheel set: {out.stat().st_size} bytes, built in {took:.1f} s")
    names = extract_payload(out, tmp_path / "x")
    assert any(n.startswith("wheels/hss_pu-") for n in names)
    resolved = offline_resolves(tmp_path / "x" / "wheels", "hss-pu")
    assert {"hss-pu", "msgspec", "cryptography", "av", "numpy", "websockets", "httpx"} <= set(
        resolved
    )


# --- [upgrade] in the config -----------------------------------------------------------


@pytest.fixture
def pubkeys(tmp_path: Path) -> list[Path]:
    """Two public key files beside the config."""
    for name in ("a", "b"):
        assert hss_pu("firmware", "keygen", "--out", tmp_path / name).returncode == 0
    return [tmp_path / "a.pub", tmp_path / "b.pub"]


def test_upgrade_section_loads_keys(write_config: WriteConfig, pubkeys: list[Path]) -> None:
    cfg = load_config(upgrade_config(write_config, ["a.pub", str(pubkeys[1])], "threshold = 2\n"))
    assert cfg.trusted_keys == tuple(load_public_key(p) for p in pubkeys)
    assert cfg.doc.upgrade.threshold == 2
    assert cfg.doc.upgrade.trial_seconds == 120
    plain = load_config(write_config(name="plain.toml"))
    assert plain.trusted_keys == ()
    assert plain.doc.upgrade.threshold == 1


def one_line_error(path: Path, key: str, *words: str) -> None:
    r = hss_pu("check-config", path)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"{path}: {key}: " in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_upgrade_section_errors(
    write_config: WriteConfig, pubkeys: list[Path], tmp_path: Path
) -> None:
    one_line_error(
        upgrade_config(write_config, ["a.pub"], "threshold = 2\n"),
        "upgrade.threshold",
        "2 is more than the 1 trusted key(s)",
    )
    (tmp_path / "junk.pub").write_text("not a key\n")
    one_line_error(
        upgrade_config(write_config, ["a.pub", "junk.pub"]),
        "upgrade.trusted_keys",
        str(tmp_path / "junk.pub"),
        "not a PEM public key",
    )
    cases = {
        "missing.pub": "does not exist",
        "a": "not a PEM public key",  # the private key by mistake
        "/dev/zero": "not a regular file",
    }
    for name, words in cases.items():
        with pytest.raises(SchemaError, match=words) as exc:
            load_config(upgrade_config(write_config, [name]))
        assert exc.value.key == "upgrade.trusted_keys"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "ec.pub").write_bytes(
        ec_pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(SchemaError, match="not an Ed25519 key"):
        load_config(upgrade_config(write_config, ["ec.pub"]))
    (tmp_path / "copy.pub").write_bytes(pubkeys[0].read_bytes())
    with pytest.raises(SchemaError, match="holds the same key as"):
        load_config(upgrade_config(write_config, ["a.pub", "copy.pub"]))
    for extra, key in (
        ("threshold = 0\n", "upgrade.threshold"),
        ("trial_seconds = 0\n", "upgrade.trial_seconds"),
        ("trial_seconds = 86400\n", "upgrade.trial_seconds"),
        ("surprise = 1\n", "upgrade.surprise"),
    ):
        with pytest.raises(SchemaError) as exc:
            load_config(upgrade_config(write_config, ["a.pub"], extra))
        assert exc.value.key == key, (extra, exc.value)
    with pytest.raises(SchemaError) as exc:
        load_config(upgrade_config(write_config, ["a.pub"] * 17))
    assert exc.value.key == "upgrade.trusted_keys"


def test_key_files(tmp_path: Path) -> None:
    assert hss_pu("firmware", "keygen", "--out", tmp_path / "k").returncode == 0
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        (tmp_path / "k.pub").chmod(0o600)
        load_private_key(tmp_path / "k.pub")
    with pytest.raises(KeyFileError, match="does not exist"):
        load_public_key(tmp_path / "nothing.pub")


def test_the_install_asks_for_the_extras_whose_wheels_came(tmp_path: Path) -> None:
    # A laptop bundle built with --extra people carries OpenCV: the new version installs
    # hss-pu[people], so its person detection (alarms.body) survives the upgrade.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "hss_pu-0.1.0-py3-none-any.whl").write_bytes(b"")
    assert fwbundle.requirement(wheels) == "hss-pu"
    (wheels / "opencv_python_headless-4.11.0.86-cp37-abi3-manylinux_2_17_x86_64.whl").touch()
    assert fwbundle.requirement(wheels) == "hss-pu[people]"
