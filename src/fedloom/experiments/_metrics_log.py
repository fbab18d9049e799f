"""An append-only log of per-round metrics, one JSON object a line (``metrics.jsonl``).

Each record describes one round. The keys that the display and the plots read:

* ``round`` (int): the 1-based number of the round just finished;
* ``test_accuracy``, ``test_loss`` (float): centralized evaluation, absent on rounds
  without evaluation;
* ``train_loss`` (float): the cohort's example-weighted training loss;
* ``seconds`` (float): wall-clock time of this round;
* ``bytes_up``, ``bytes_down`` (int): bytes sent by / to the cohort in this round.

Non-finite floats (NaN, +-inf, e.g. the loss of a diverged run) are written as
``null`` so that every line stays valid JSON; they read back as ``None``.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     log = MetricsLog(Path(tmp) / "metrics.jsonl")
    ...     log.append({"round": 1, "train_loss": float("nan")})
    ...     log.read()
    [{'round': 1, 'train_loss': None}]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._files import atomic_file

__all__ = ["MetricsLog", "MetricsLogError"]


class MetricsLogError(ValueError):
    """A metrics log line that is not a JSON object (names the file and line)."""


def _clean(value: Any, where: str) -> Any:
    """``value`` as plain JSON types, with non-finite floats turned into ``None``."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _clean(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item, f"{where}[{i}]") for i, item in enumerate(value)]
    item = getattr(value, "item", None)
    if callable(item):  # NumPy and 0-d torch scalars
        try:
            return _clean(item(), where)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(
        f"metrics record field {where!r} has unsupported type {type(value).__name__}"
    )


class MetricsLog:
    """The ``metrics.jsonl`` file of a run: append a record per round, read, truncate.

    Every append is flushed and fsynced, so after a crash the log holds every round
    that finished; :meth:`truncate_after` then drops the rounds past the checkpoint.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line; NaN and infinities are stored as ``null``."""
        line = json.dumps(_clean(record, "record"), allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as file:
            # A crash mid-append can leave a last line without its newline; drop
            # that fragment rather than glue the new record onto it.
            size = file.seek(0, os.SEEK_END)
            if size:
                file.seek(size - 1)
                if file.read(1) != b"\n":
                    file.seek(0)
                    keep = file.read().rfind(b"\n") + 1
                    file.truncate(keep)
                    file.seek(keep)
            file.write(line.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())

    def read(self) -> list[dict[str, Any]]:
        """All records in order; ``[]`` if the file does not exist.

        A last line cut short by a crash is ignored; any other bad line raises
        :class:`MetricsLogError`.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        torn_tail = not text.endswith("\n")
        records: list[dict[str, Any]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if torn_tail and number == len(lines):
                    break
                raise MetricsLogError(
                    f"{self.path}:{number}: invalid JSON: {exc}"
                ) from None
            if not isinstance(record, dict):
                raise MetricsLogError(f"{self.path}:{number}: not a JSON object")
            records.append(record)
        return records

    def truncate_after(self, round: int) -> int:
        """Drop the records whose ``round`` is greater than ``round``; atomic.

        Records without a ``round`` are kept. Returns how many records were dropped.
        """
        records = self.read()
        kept = [
            record
            for record in records
            if not isinstance(record.get("round"), int) or record["round"] <= round
        ]
        if not self.path.exists():
            return 0
        with atomic_file(self.path) as file:
            for record in kept:
                file.write(json.dumps(record, allow_nan=False) + "\n")
        return len(records) - len(kept)
