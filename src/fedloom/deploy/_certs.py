"""A self-signed certificate authority and a server certificate, for local use.

``fedloom certs DIR`` writes ``ca.pem`` (give it to the clients), ``ca.key`` (keep
it), ``server.pem`` and ``server.key`` (the server's), with ECDSA P-256 keys. The
server certificate names ``localhost`` and ``127.0.0.1`` unless other hosts are
given. For a real deployment use certificates from your own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.experiments._files import atomic_file

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """Where :func:`make_certificates` wrote its files."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    with atomic_file(path, "wb", private=True) as file:  # mode 0600
        file.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    with atomic_file(path, "wb") as file:
        file.write(certificate.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def make_certificates(
    directory: str | Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    days: int = 365,
) -> Certificates:
    """Create a CA and a server certificate for ``hosts`` in ``directory``."""
    if not hosts:
        raise ValueError("the server certificate needs at least one host name")
    directory = Path(directory)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fedloom local CA"))
        .issuer_name(_name("fedloom local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    files = Certificates(
        directory / "ca.pem",
        directory / "ca.key",
        directory / "server.pem",
        directory / "server.key",
    )
    _write_key(files.ca_key, ca_key)
    _write_key(files.server_key, server_key)
    _write_certificate(files.ca_certificate, ca)
    _write_certificate(files.server_certificate, server)
    return files
