"""Learning curves of a run as a PNG: accuracy and loss against rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._files import atomic_file

__all__ = ["plot_curves"]


def _series(
    records: Sequence[Mapping[str, Any]], key: str
) -> tuple[list[int], list[float]]:
    """The rounds and values of ``key``, skipping records where it is absent or NaN."""
    rounds: list[int] = []
    values: list[float] = []
    for record in records:
        round_number = record.get("round")
        value = record.get(key)
        if (
            isinstance(round_number, int)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            rounds.append(round_number)
            values.append(float(value))
    return rounds, values


def plot_curves(
    records: Sequence[Mapping[str, Any]], path: str | Path, title: str = ""
) -> None:
    """Write a PNG with test accuracy (left) and train/test loss (right) per round.

    ``records`` are metrics-log records (see ``_metrics_log``); rounds without a value
    are skipped. Matplotlib's Agg canvas is used directly, so no global backend or
    pyplot state is touched; the file is written atomically.
    """
    # Imported here: matplotlib is slow to import and only needed for plots.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    accuracy_axes, loss_axes = figure.subplots(1, 2)

    panels = (
        (accuracy_axes, "accuracy", (("test_accuracy", "test"),)),
        (loss_axes, "loss", (("train_loss", "train"), ("test_loss", "test"))),
    )
    for axes, name, series in panels:
        for key, label in series:
            rounds, values = _series(records, key)
            if rounds:
                marker = "." if len(rounds) < 50 else ""
                axes.plot(rounds, values, marker=marker, label=label)
        axes.set_xlabel("round")
        axes.set_ylabel(name)
        axes.set_title(name)
        axes.grid(alpha=0.3)

    for axes in (accuracy_axes, loss_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.lines:
            axes.legend()
        else:
            axes.text(
                0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes
            )
    if title:
        figure.suptitle(title)

    with atomic_file(path, "wb") as file:
        figure.savefig(file, format="png", dpi=100)
