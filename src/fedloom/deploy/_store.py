"""The server's durable state: SQLite for the run's records, safetensors for tensors.

``DIR/state.db`` holds the run's configuration, one row per completed round (its
metrics record and the name and SHA-256 of its model file), the client registry and
what the server is doing now (for ``fedloom status``). ``DIR/models/`` holds the
server state after each round as safetensors (no pickle).

A round is committed in two steps: its tensors go to a new file, written atomically
(``atomic_file``: temporary file, fsync, rename); then one SQLite transaction records
the round and names that file. The transaction is the commit point: a server killed
at any moment restarts from the last round whose row exists, and that row's file is
whole (its SHA-256 is checked on load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedloom.experiments import CheckpointError
from fedloom.experiments._files import atomic_file

__all__ = ["STATE_FILE", "SavedRound", "Store"]

STATE_FILE = "state.db"
MODELS_DIR = "models"
_KEEP_MODELS = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, record TEXT NOT NULL, model_file TEXT NOT NULL,
    sha256 TEXT NOT NULL, finished_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    results INTEGER NOT NULL DEFAULT 0);
"""


@dataclass(frozen=True)
class SavedRound:
    """The last committed round: its number and its model file."""

    round: int
    model_file: str
    sha256: str


class Store:
    """The server's SQLite database and model files in ``directory``.

    Safe to use from the server's event loop and its training thread (one lock).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        (self.directory / MODELS_DIR).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.directory / STATE_FILE, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- meta ---------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The JSON value stored under ``key``, or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        """Store a JSON-compatible ``value`` under ``key``."""
        text = json.dumps(value, allow_nan=False, sort_keys=True)
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    # --- rounds -------------------------------------------------------------------

    def last_round(self) -> SavedRound | None:
        """The last committed round, or ``None`` before the first."""
        with self._lock:
            row = self._db.execute(
                "SELECT round, model_file, sha256 FROM rounds "
                "ORDER BY round DESC LIMIT 1"
            ).fetchone()
        return None if row is None else SavedRound(int(row[0]), row[1], row[2])

    def records(self) -> list[dict[str, Any]]:
        """The metrics records of the committed rounds, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM rounds ORDER BY round"
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def commit_round(
        self,
        round: int,
        record: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
    ) -> SavedRound:
        """Durably record that round ``round`` finished with ``tensors`` as state."""
        data = save_safetensors({k: v.contiguous() for k, v in tensors.items()})
        sha256 = hashlib.sha256(data).hexdigest()
        name = f"round-{round:06d}-{sha256[:16]}.safetensors"
        with atomic_file(self.directory / MODELS_DIR / name, "wb") as file:
            file.write(data)
        text = json.dumps(dict(record), allow_nan=False)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?)",
                (round, text, name, sha256, time.time()),
            )
        self._prune()
        return SavedRound(round, name, sha256)

    def _prune(self) -> None:
        with self._lock:
            rows = self._db.execute(
                "SELECT model_file FROM rounds ORDER BY round DESC LIMIT ?",
                (_KEEP_MODELS,),
            ).fetchall()
        keep = {row[0] for row in rows}
        for path in (self.directory / MODELS_DIR).glob("round-*.safetensors"):
            if path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def load_model(self, saved: SavedRound) -> dict[str, torch.Tensor]:
        """The tensors of ``saved``, checked against the SHA-256 recorded with it."""
        path = self.directory / MODELS_DIR / saved.model_file
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CheckpointError(f"{path}: cannot read the model: {error}") from None
        if hashlib.sha256(data).hexdigest() != saved.sha256:
            raise CheckpointError(f"{path}: corrupt model file (SHA-256 differs)")
        return load_safetensors(data)

    # --- clients ------------------------------------------------------------------

    def touch_clients(
        self, seen: Mapping[str, float], results: Mapping[str, int]
    ) -> None:
        """Record when clients were last seen and how many results each gave."""
        with self._transaction() as db:
            for client, when in seen.items():
                db.execute(
                    "INSERT INTO clients (client_id, first_seen, last_seen) "
                    "VALUES (?, ?, ?) ON CONFLICT(client_id) DO UPDATE SET "
                    "last_seen = MAX(last_seen, excluded.last_seen)",
                    (client, when, when),
                )
            for client, count in results.items():
                db.execute(
                    "UPDATE clients SET results = results + ? WHERE client_id = ?",
                    (count, client),
                )

    def clients(self) -> list[dict[str, Any]]:
        """The client registry: id, first and last seen (Unix time), results."""
        with self._lock:
            rows = self._db.execute(
                "SELECT client_id, first_seen, last_seen, results FROM clients "
                "ORDER BY client_id"
            ).fetchall()
        keys = ("client_id", "first_seen", "last_seen", "results")
        return [dict(zip(keys, row, strict=True)) for row in rows]
