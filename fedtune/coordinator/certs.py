"""``fedtune certs``: a private CA and the SuperLink's TLS certificate, with ``cryptography``.

The coordinator keeps ``ca.key`` offline-ish (it signs server certificates), gives ``ca.crt`` to
every node operator (SuperNodes verify the SuperLink with it: ``--root-certificates``) and runs
the SuperLink with ``server.pem`` / ``server.key``.  The server certificate's subject alternative
names must contain every host name or IP address nodes use to reach the SuperLink.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedtune.common.files import atomic_write_text

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"


class CertError(ValueError):
    """Bad request for certificates (nothing is written)."""


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise CertError(f"'{host}' is neither an IP address nor a host name") from None
        return x509.DNSName(host)


def _key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def create_certificates(out: str | Path, hosts: list[str], days: int = 825, force: bool = False,
                        organisation: str = "fedtune federation") -> Certificates:
    """Create a CA and a server certificate for ``hosts`` (DNS names or IPs) in ``out``.

    Refuses to overwrite existing files unless ``force``; writes each file atomically, keys 0600.
    """
    if not hosts:
        raise CertError("give at least one host name or IP address the nodes will connect to (e.g. --host 127.0.0.1)")
    if days < 1:
        raise CertError("--days must be at least 1")
    sans = [_san(h) for h in hosts]
    out = Path(out).expanduser()
    paths = Certificates(out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY)
    existing = [p for p in vars(paths).values() if p.exists()]
    if existing and not force:
        raise CertError(f"{', '.join(map(str, existing))} already exist; use another --out or --force to replace them")

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                                 x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write_text(paths.ca_key, _key_pem(ca_key), private=True)
    atomic_write_text(paths.server_key, _key_pem(server_key), private=True)
    atomic_write_text(paths.ca_cert, _cert_pem(ca_cert))
    atomic_write_text(paths.server_cert, _cert_pem(server_cert))
    return paths
