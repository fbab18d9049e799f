"""Test accuracy against rounds, FedSGD and the FedAvg variants, like Figure 2.

One PNG per (dataset, model, partition), each cell at its best learning rate. The
curves come from the results file (each run's test accuracy by round), or for a
run recorded before it kept them, from its ``metrics.jsonl`` under ``runs/``. A
figure some best run has no curve for is not drawn: the one in git stays as it is
rather than lose a curve. A run stops at its target, so a curve ends where the
table's rounds are counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import cells as grid
from .results import best, curve_of, runs_of_cell

CURVES_DIR = Path(__file__).resolve().parent / "curves"


def plot_group(
    dataset: str,
    model: str,
    partition: str,
    runs: Mapping[str, Mapping[str, Any]],
    runs_dir: Path,
    target: float,
    path: Path,
) -> list[str] | None:
    """Write one Figure-2-like PNG and return []; or write none and return None when
    no cell has runs, or the names of the cells whose best run has no curve."""
    # Imported here: matplotlib is slow to import and only needed for plots.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen_runs = []
    missing = []
    for cell in grid.all_cells((model,)):
        if cell.partition != partition:
            continue
        chosen = best(runs_of_cell(runs, dataset, cell, target))
        if chosen is None:
            continue
        points = curve_of(chosen, runs_dir)
        if points is None:
            missing.append(cell.name)
        chosen_runs.append((cell, chosen, points))
    if not chosen_runs:
        return None
    if missing:
        return missing
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for cell, chosen, points in chosen_runs:
        assert points is not None
        rounds, accuracy = points
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
    return []


def plot_all(
    dataset: str,
    runs: Mapping[str, Mapping[str, Any]],
    runs_dir: Path,
    targets: Mapping[tuple[str, str, str], float] = grid.TARGETS,
    out_dir: Path = CURVES_DIR,
) -> list[str]:
    """Write every (model, partition) figure that has runs and a curve for each of
    its cells; return a line for each figure: written, or left as it was and why."""
    lines = []
    for model in grid.MODELS:
        for partition in grid.PARTITIONS:
            path = out_dir / f"{dataset}_{model}_{partition}.png"
            target = targets[(dataset, model, partition)]
            missing = plot_group(
                dataset, model, partition, runs, runs_dir, target, path
            )
            if missing is None:
                continue
            if missing:
                lines.append(
                    f"{path} left as it was: no curve for the best run of "
                    f"{', '.join(missing)} (its run directory is not here; "
                    "run --rerun-best makes it again)"
                )
            else:
                lines.append(str(path))
    return lines
