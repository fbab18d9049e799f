"""``fedloom status DIR``: what a server is doing, read from its state database.

The server writes its live status (connected clients, the round in progress) to
``DIR/state.db`` every second; this reads it without disturbing the server. Whether a
server is running there is told by the lock it holds on ``DIR`` (gone with its
process, however it ended): the live status a stopped server left is shown as
such, no client connected.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedloom.experiments._files import directory_locked

from ._store import STATE_FILE

__all__ = ["print_status", "read_status"]


def read_status(directory: str | Path) -> dict[str, Any]:
    """The server's status: ``address``, ``running`` (whether a server holds the
    directory now), ``live`` (connected clients, the round in progress, as the
    server last wrote them), ``clients`` (the registry) and ``rounds`` (records of
    done rounds)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {STATE_FILE}; not a server directory")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        rounds = [json.loads(r) for (r,) in db.execute("SELECT record FROM rounds")]
        keys = ("client_id", "first_seen", "last_seen", "results")
        clients = [
            dict(zip(keys, row, strict=True))
            for row in db.execute(f"SELECT {', '.join(keys)} FROM clients")
        ]
    finally:
        db.close()
    config = meta.get("config") or {}
    return {
        "address": meta.get("address"),
        "running": directory_locked(Path(directory)),
        "rounds_total": config.get("rounds"),
        "live": meta.get("live") or {},
        "clients": clients,
        "rounds": rounds,
    }


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    """Print :func:`read_status`'s result as two tables."""
    console = console or Console()
    running = status.get("running", True)
    live = status["live"] if running else {**status["live"], "connected": []}
    connected = set(live.get("connected", []))
    age = time.time() - live.get("updated", 0)
    done = len(status["rounds"])
    state = "finished" if live.get("finished") else f"updated {age:.0f} s ago"
    if not running:
        state = f"not running; {state}"
    console.print(
        f"server {status['address']}  rounds done {done}/{status['rounds_total']}  "
        f"({state})",
        highlight=False,
    )
    current = live.get("round")
    # the live status is written every second, a round's record as it ends
    if running and current and not live.get("finished") and current["round"] > done:
        console.print(
            f"round {current['round']} in progress: {len(current['reported'])} of "
            f"{len(current['cohort'])} reported, waiting for "
            f"{', '.join(current['waiting_for']) or 'nobody'}; deadline in "
            f"{current['deadline_in']} s",
            highlight=False,
        )
    if status["rounds"]:
        last = status["rounds"][-1]
        accuracy = last.get("test_accuracy")
        shown = "n/a" if accuracy is None else f"{accuracy:.4f}"
        console.print(f"last round {last['round']}: test accuracy {shown}")
    table = Table(title="clients")
    for column in ("client", "connected", "last seen", "results"):
        table.add_column(column)
    for client in status["clients"]:
        seen = time.time() - client["last_seen"]
        table.add_row(
            client["client_id"],
            "yes" if client["client_id"] in connected else "no",
            f"{seen:.0f} s ago",
            str(client["results"]),
        )
    console.print(table)
