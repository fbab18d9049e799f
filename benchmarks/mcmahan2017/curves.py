"""Test accuracy against rounds, FedSGD and the FedAvg variants, like Figure 2.

One PNG per (dataset, model, partition), each cell at its best learning rate. The
curves come from the runs' ``metrics.jsonl`` (under ``runs/``, not in git); a run
stops at its target, so a curve ends where the table's rounds are counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedloom.experiments import MetricsLog

from . import cells as grid
from .results import best, runs_of_cell

CURVES_DIR = Path(__file__).resolve().parent / "curves"


def curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """The (rounds, test accuracies) of a run directory's metrics log."""
    records = MetricsLog(run_dir / "metrics.jsonl").read()
    pairs = [
        (r["round"], r["test_accuracy"])
        for r in records
        if r.get("test_accuracy") is not None
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_group(
    dataset: str,
    model: str,
    partition: str,
    runs: Mapping[str, Mapping[str, Any]],
    runs_dir: Path,
    target: float,
    path: Path,
) -> int:
    """Write one Figure-2-like PNG; return how many curves it holds (0: no file)."""
    # Imported here: matplotlib is slow to import and only needed for plots.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    count = 0
    for cell in grid.all_cells((model,)):
        if cell.partition != partition:
            continue
        chosen = best(runs_of_cell(runs, dataset, cell, target))
        directory = runs_dir / chosen["run_dir"] if chosen else None
        if chosen is None or directory is None or not directory.exists():
            continue
        rounds, accuracy = curve(directory)
        fedsgd = cell.algorithm == "fedsgd"
        label = (
            "FedSGD"
            if fedsgd
            else f"FedAvg E={cell.local_epochs} B={cell.batch_text} (u={cell.u:g})"
        )
        axes.plot(
            rounds,
            accuracy,
            label=f"{label}, lr {chosen['learning_rate']:g}",
            color="black" if fedsgd else None,
            linewidth=2.0 if fedsgd else 1.2,
        )
        count += 1
    if count == 0:
        return 0
    axes.axhline(target, color="gray", linewidth=1)
    axes.set_xscale("log")
    axes.set_ylim(max(0.0, target - 0.25), min(1.0, target + 0.08))
    axes.set_xlabel("communication rounds (log scale)")
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    name = {"iid": "IID", "shards": "pathological non-IID"}[partition]
    axes.set_title(
        f"{dataset} {model.upper()}, {name}, C = 0.1: best rate of each cell "
        f"(gray: target {target:.0%})",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return count


def plot_all(
    dataset: str,
    runs: Mapping[str, Mapping[str, Any]],
    runs_dir: Path,
    targets: Mapping[tuple[str, str, str], float] = grid.TARGETS,
    out_dir: Path = CURVES_DIR,
) -> list[Path]:
    """Write every (model, partition) figure that has runs; return their paths."""
    written = []
    for model in grid.MODELS:
        for partition in grid.PARTITIONS:
            path = out_dir / f"{dataset}_{model}_{partition}.png"
            target = targets[(dataset, model, partition)]
            if plot_group(dataset, model, partition, runs, runs_dir, target, path):
                written.append(path)
    return written
