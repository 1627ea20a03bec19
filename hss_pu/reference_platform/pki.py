"""A private CA for the reference platform, so the daemon verifies TLS even in demos."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hss_pu.fsutil import atomic_write

__all__ = ["Pki", "ensure_pki"]

_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hss-pu reference platform"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host.lower())


def _still_good(pki: Pki, names: list[x509.GeneralName]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(pki.cert_file.read_bytes())
        x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
        pki.server_context()
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, ssl.SSLError, x509.ExtensionNotFound):
        return False
    margin = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    return cert.not_valid_after_utc > margin and all(n in sans for n in names)


def ensure_pki(directory: Path | str, hosts: Iterable[str] = ()) -> Pki:
    """Reuse the CA in ``directory`` when valid and its server certificate names each of
    ``hosts`` (the address the platform serves on, beyond localhost, 127.0.0.1 and ::1),
    else make a new CA and server cert (the CA's key is not kept: a new name, a new CA)."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server.key")
    sans = list(dict.fromkeys(_san(h) for h in (*_HOSTS, *hosts)))
    if _still_good(pki, sans):
        return pki
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    until = now + dt.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("hss-pu reference platform CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    # The CA key is not kept: nothing else is ever signed with it.
    atomic_write(pki.key_file, _pem_key(key), 0o600)
    atomic_write(pki.cert_file, cert.public_bytes(pem) + ca.public_bytes(pem), 0o644)
    atomic_write(pki.ca_file, ca.public_bytes(pem), 0o644)
    return pki
