"""Client authentication by bearer token, and per-client rate limits.

The server keeps only SHA-256 hashes of the tokens (``tokens.json``:
``{"clients": {"<client id>": "sha256:<hex>"}}``); a client sends its token as
gRPC metadata ``authorization: Bearer <token>``. Tokens are 256 random bits, so a
plain hash is as good as a slow one: there is nothing to guess.

Example:
    >>> book = TokenBook({"phone-1": hash_token("secret")})
    >>> book.identify("secret"), book.identify("wrong")
    ('phone-1', None)
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedloom.experiments._files import atomic_file

__all__ = [
    "AUTH_METADATA",
    "RateLimiter",
    "TokenBook",
    "hash_token",
    "natural",
    "new_token",
    "write_client_tokens",
    "write_tokens",
]

AUTH_METADATA = "authorization"
"""The gRPC metadata key carrying ``Bearer <token>``."""

_PREFIX = "sha256:"


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of ``token``, as stored in ``tokens.json``."""
    return _PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenBook:
    """Which client a token belongs to, from the stored hashes."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        for client, digest in hashes.items():
            if not client or not digest.startswith(_PREFIX) or len(digest) != 71:
                raise ValueError(
                    f"client {client!r}: token hash must be 'sha256:' and 64 hex digits"
                )
        self._clients = {digest: client for client, digest in hashes.items()}
        if len(self._clients) != len(hashes):
            raise ValueError("two clients share one token")

    @classmethod
    def load(cls, path: str | Path) -> TokenBook:
        """Read ``tokens.json``; a ``ValueError`` naming the file if it is bad."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            hashes = data["clients"]
            if not isinstance(hashes, dict):
                raise TypeError("'clients' must be an object")
            return cls({str(k): str(v) for k, v in hashes.items()})
        except FileNotFoundError:
            raise ValueError(f"{path}: no such tokens file") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a fedloom tokens file: {error}") from None

    def identify(self, token: str) -> str | None:
        """The client id whose token this is, or ``None``."""
        # Looking up the hash leaks nothing useful about the token: no timing
        # attack can walk towards a SHA-256 preimage.
        return self._clients.get(hash_token(token))

    def clients(self) -> list[str]:
        """Every client id the book knows, in natural order (``client-2`` before
        ``client-10``), which fixes each client's seed."""
        return sorted(self._clients.values(), key=natural)

    def __len__(self) -> int:
        return len(self._clients)


def natural(text: str) -> list[tuple[int, str]]:
    """A sort key that orders ``client-2`` before ``client-10``."""
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", text)]


def write_tokens(path: str | Path, clients: Iterable[str]) -> dict[str, str]:
    """Make a token for each client id, write their hashes to ``path`` (atomic) and
    return the tokens themselves, to hand to the clients."""
    tokens = {client: new_token() for client in clients}
    data = {"clients": {client: hash_token(t) for client, t in tokens.items()}}
    with atomic_file(Path(path), private=True) as file:
        file.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return tokens


def write_client_tokens(directory: str | Path, count: int) -> dict[str, str]:
    """Tokens for clients ``client-0`` ... ``client-<count-1>``: their hashes in
    ``directory/tokens.json`` (for the server), each token in
    ``directory/clients/<id>.token`` (mode 0600, for that client)."""
    if count < 1:
        raise ValueError(f"the number of clients must be >= 1, got {count}")
    directory = Path(directory)
    ids = [f"client-{i}" for i in range(count)]
    tokens = write_tokens(directory / "tokens.json", ids)
    for client, token in tokens.items():
        token_file = directory / "clients" / f"{client}.token"
        with atomic_file(token_file, private=True) as file:
            file.write(token + "\n")
    return tokens


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        """Take one request from ``key``'s bucket; ``False`` when it is empty."""
        now = time.monotonic() if now is None else now
        level, last = self._buckets.get(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - last) * self.rate)
        if level < 1:
            self._buckets[key] = (level, now)
            return False
        self._buckets[key] = (level - 1, now)
        return True
