"""Tokens, rate limits and the certificate helper."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from fedloom.deploy import (
    TokenBook,
    hash_token,
    make_certificates,
    write_client_tokens,
)
from fedloom.deploy._auth import RateLimiter


def test_tokens_are_stored_as_hashes_and_identify_their_client(
    tmp_path: Path,
) -> None:
    tokens = write_client_tokens(tmp_path, 3)
    stored = json.loads((tmp_path / "tokens.json").read_text())["clients"]
    assert stored == {client: hash_token(t) for client, t in tokens.items()}
    assert all(t not in (tmp_path / "tokens.json").read_text() for t in tokens.values())
    book = TokenBook.load(tmp_path / "tokens.json")
    assert book.identify(tokens["client-1"]) == "client-1"
    assert book.identify(tokens["client-1"] + "x") is None
    token_file = tmp_path / "clients" / "client-2.token"
    assert token_file.read_text().strip() == tokens["client-2"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_client_ids_sort_naturally() -> None:
    book = TokenBook({f"client-{i}": hash_token(str(i)) for i in (10, 2, 1)})
    assert book.clients() == ["client-1", "client-2", "client-10"]


def test_a_bad_tokens_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such tokens file"):
        TokenBook.load(tmp_path / "missing.json")
    bad = tmp_path / "tokens.json"
    bad.write_text('{"clients": {"a": "md5:00"}}')
    with pytest.raises(ValueError, match=r"tokens\.json: not a fedloom tokens file"):
        TokenBook.load(bad)


def test_the_rate_limiter_refills_at_its_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=2)
    assert [limiter.allow("a", now=0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", now=0.0)
    assert not limiter.allow("a", now=0.4)
    assert limiter.allow("a", now=0.5)


def test_certificates_name_the_hosts_and_load_into_grpc(tmp_path: Path) -> None:
    files = make_certificates(tmp_path, ["localhost", "127.0.0.1", "fl.example"])
    server = x509.load_pem_x509_certificate(files.server_certificate.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    assert server.issuer == ca.subject
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == ["localhost", "fl.example"]
    assert [str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1"
    ]
    server.verify_directly_issued_by(ca)
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    grpc.ssl_server_credentials(
        [(files.server_key.read_bytes(), files.server_certificate.read_bytes())]
    )
