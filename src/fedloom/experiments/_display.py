"""Progress bar while a run trains, and a summary table when it ends (rich).

On a terminal :class:`RoundDisplay` shows a live progress bar; on anything else (a
file, a pipe, a captured test stream) it prints one plain line per evaluated round,
and with ``enabled=False`` nothing at all.

Example:
    >>> import io
    >>> from rich.console import Console
    >>> console = Console(file=io.StringIO(), width=100)
    >>> with RoundDisplay(total_rounds=2, console=console) as display:
    ...     display.update({"round": 1, "test_accuracy": 0.5, "test_loss": 1.2})
    >>> "round 1/2" in console.file.getvalue()
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["RoundDisplay", "format_bytes", "print_summary", "summary_table"]


def format_bytes(count: float) -> str:
    """``count`` bytes in binary units, e.g. ``format_bytes(1536) == "1.5 KiB"``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _number(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ):
        return float(value)
    return None


def _metrics(record: Mapping[str, Any]) -> dict[str, str]:
    """Formatted metrics of one record, by label.

    A ``None`` test metric means the round was not evaluated and is left out, unless
    the round has a test accuracy (then the loss was non-finite, shown as ``nan``);
    a ``None`` train loss is always a non-finite one.
    """
    evaluated = _number(record, "test_accuracy") is not None
    shown: dict[str, str] = {}
    for key, label in (
        ("test_accuracy", "acc"),
        ("test_loss", "test loss"),
        ("train_loss", "train loss"),
    ):
        if key not in record:
            continue
        value = _number(record, key)
        if value is not None:
            shown[label] = f"{value:.4f}"
        elif key == "train_loss" or evaluated:
            shown[label] = "nan"
    return shown


def _metrics_text(metrics: Mapping[str, str]) -> str:
    return "  ".join(f"{label} {value}" for label, value in metrics.items())


class RoundDisplay:
    """Shows training progress: round, test accuracy and loss.

    Use as a context manager and call :meth:`update` with each round's record.
    ``start_round`` is the number of rounds already done (when resuming).
    """

    def __init__(
        self,
        total_rounds: int,
        start_round: int = 0,
        enabled: bool = True,
        console: Console | None = None,
    ) -> None:
        self.total_rounds = total_rounds
        self.start_round = start_round
        self.enabled = enabled
        self.console = console if console is not None else Console(stderr=True)
        self._live = enabled and self.console.is_terminal
        self._latest: dict[str, str] = {}
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> RoundDisplay:
        if self._live:
            self._progress = Progress(
                TextColumn("round"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[metrics]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                "rounds",
                total=self.total_rounds,
                completed=self.start_round,
                metrics="",
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the progress bar (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def update(self, record: Mapping[str, Any]) -> None:
        """Show the round just finished, with its metrics if it has any."""
        if not self.enabled:
            return
        round_number = record.get("round")
        metrics = _metrics(record)
        if self._progress is not None and self._task is not None:
            # Keep showing the latest evaluation on rounds without one.
            self._latest.update(metrics)
            self._progress.update(
                self._task,
                completed=round_number if isinstance(round_number, int) else None,
                metrics=_metrics_text(self._latest),
            )
        elif not self._live and "acc" in metrics:
            self.console.print(
                f"round {round_number}/{self.total_rounds}  {_metrics_text(metrics)}",
                highlight=False,
                soft_wrap=True,
            )


def _target_round(records: Sequence[Mapping[str, Any]], target: float) -> int | None:
    for record in records:
        accuracy = _number(record, "test_accuracy")
        round_number = record.get("round")
        if (
            accuracy is not None
            and accuracy >= target
            and isinstance(round_number, int)
        ):
            return round_number
    return None


def summary_table(
    records: Sequence[Mapping[str, Any]], config_summary: Mapping[str, Any]
) -> Table:
    """A two-column table: the ``config_summary`` entries (``None`` ones left out),
    then the run's results.

    Results are the final and best test accuracy, rounds run, total seconds, total
    bytes up and down, and, when ``config_summary`` has a ``target_accuracy``, the
    round at which it was first reached.
    """
    table = Table(title="fedloom run", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    shown = {key: value for key, value in config_summary.items() if value is not None}
    for key, value in shown.items():
        table.add_row(str(key), str(value))
    if shown:
        table.add_section()

    evaluated = [
        (record.get("round"), accuracy)
        for record in records
        if (accuracy := _number(record, "test_accuracy")) is not None
    ]
    if evaluated:
        final_round, final = evaluated[-1]
        best_round, best = max(evaluated, key=lambda pair: pair[1])
        table.add_row("final accuracy", f"{final:.4f} (round {final_round})")
        table.add_row("best accuracy", f"{best:.4f} (round {best_round})")
    else:
        table.add_row("final accuracy", "n/a")
    rounds = [r for record in records if isinstance(r := record.get("round"), int)]
    table.add_row("rounds run", str(max(rounds, default=0)))
    seconds = sum(_number(record, "seconds") or 0.0 for record in records)
    table.add_row("total seconds", f"{seconds:.1f}")
    for key, label in (("bytes_up", "bytes up"), ("bytes_down", "bytes down")):
        total = sum(_number(record, key) or 0.0 for record in records)
        table.add_row(label, format_bytes(total))
    target = config_summary.get("target_accuracy")
    if isinstance(target, int | float) and not isinstance(target, bool):
        reached = _target_round(records, float(target))
        table.add_row(
            f"target {float(target):.4f}",
            "not reached" if reached is None else f"reached at round {reached}",
        )
    return table


def print_summary(
    records: Sequence[Mapping[str, Any]],
    config_summary: Mapping[str, Any],
    console: Console | None = None,
) -> None:
    """Print :func:`summary_table` to ``console`` (standard output by default)."""
    (console if console is not None else Console()).print(
        summary_table(records, config_summary)
    )
