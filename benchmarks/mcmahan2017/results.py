"""The results file: one JSON object per finished run, rewritten after every run.

A run's key names its dataset, cell, learning rate and target, so a rerun of the
sweep skips what is done and a change of target never mixes with older runs.
Each run keeps its test accuracy by round (``ACCURACY_BY_ROUND``), so the curves
can be drawn again from the file alone: the run directories under ``runs/`` are
not in git and do not outlive the machine that made them.
Sweeps that share the file (two cells in two processes) each add their runs to
what the file holds when they record one, under a lock: none loses another's.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedloom.experiments import MetricsLog
from fedloom.experiments._files import atomic_file, locked_directory

from .cells import Cell

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ACCURACY_BY_ROUND = "test_accuracy_by_round"  # [round 1's, round 2's, ...]; None:
# a round not evaluated


def results_path(dataset: str) -> Path:
    """Where the sweep of ``dataset`` keeps its results (committed to git)."""
    return RESULTS_DIR / f"{dataset}.json"


def run_key(dataset: str, cell: Cell, lr: float, target: float) -> str:
    """The results-file key of one run.

    Example:
        >>> run_key("mnist", Cell("cnn", "iid", "fedsgd", 1, None), 0.215, 0.99)
        'mnist/cnn/iid/fedsgd_E1_Binf/lr0.215/target0.99'
    """
    return f"{dataset}/{cell.name}/lr{lr:g}/target{target:g}"


def cell_fields(cell: Cell) -> dict[str, Any]:
    """The fields that name ``cell`` in a stored run (the inverse of ``cell_of``)."""
    return {
        "model": cell.model,
        "partition": cell.partition,
        "algorithm": cell.algorithm,
        "local_epochs": cell.local_epochs,
        "batch_size": cell.batch_size,
    }


def cell_of(run: Mapping[str, Any]) -> Cell:
    """The cell a stored run belongs to."""
    return Cell(
        run["model"],
        run["partition"],
        run["algorithm"],
        run["local_epochs"],
        run["batch_size"],
    )


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    """The runs stored at ``path`` by key (none when the file does not exist)."""
    if not path.exists():
        return {}
    runs: dict[str, dict[str, Any]] = json.loads(path.read_text())["runs"]
    return runs


def save_runs(path: Path, runs: Mapping[str, Mapping[str, Any]]) -> None:
    """Write ``runs`` to ``path`` atomically (a temporary file of its own, synced,
    then renamed into place)."""
    data = {
        "benchmark": "mcmahan2017",
        "about": "McMahan et al. 2017, Table 2: rounds to a target test accuracy; "
        "one entry per (cell, learning rate) run; written by "
        "python -m benchmarks.mcmahan2017 run",
        "runs": {key: runs[key] for key in sorted(runs)},
    }
    text = json.dumps(data, indent=1, ensure_ascii=False)
    with atomic_file(path) as file:
        file.write(_NUMBER_LIST.sub(_one_line, text) + "\n")


# A JSON list of numbers and nulls as json.dumps(indent=...) writes it, an item a
# line (a newline inside brackets is never in a string: JSON escapes those): the
# accuracies by round are kept on one line each.
_ITEM = r"(?:-?[0-9.eE+-]+|null)"
_NUMBER_LIST = re.compile(rf"\[\n\s*(?:{_ITEM},\n\s*)*{_ITEM}\n\s*\]")


def _one_line(match: re.Match[str]) -> str:
    return "[" + ", ".join(item.strip() for item in match[0][1:-1].split(",")) + "]"


def record_run(path: Path, key: str, run: Mapping[str, Any]) -> None:
    """Add ``run`` under ``key`` to the runs ``path`` holds now (re-read under the
    lock, so runs another sweep recorded meanwhile stay)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked_directory(path.parent, wait=True):
        runs = load_runs(path)
        runs[key] = dict(run)
        save_runs(path, runs)


def accuracy_by_round(records: Sequence[Mapping[str, Any]]) -> list[float | None]:
    """A run's test accuracies from its metrics records, the accuracy of round r at
    index r - 1 (None where that round was not evaluated; a resumed run's rounds
    logged twice count once).

    Example:
        >>> accuracy_by_round([{"round": 1, "test_accuracy": 0.25},
        ...                    {"round": 3, "test_accuracy": 0.5}])
        [0.25, None, 0.5]
    """
    by_round = {r["round"]: r.get("test_accuracy") for r in records}
    last = max(by_round, default=0)
    return [by_round.get(r) for r in range(1, last + 1)]


def logged_accuracies(
    run: Mapping[str, Any], runs_dir: Path
) -> list[float | None] | None:
    """A stored run's accuracy by round from its run directory's metrics log, or
    None when that is not here or is not the run recorded: it must hold the run's
    rounds, reach the target first where the run did, and have its best accuracy
    (a rerun under way in the same directory, say, does not)."""
    log = runs_dir / run["run_dir"] / "metrics.jsonl"
    if not log.exists():
        return None
    accuracies = accuracy_by_round(MetricsLog(log).read())[: run["rounds_run"]]
    evaluated = [a for a in accuracies if a is not None]
    first = first_round_at(accuracies, run["target"])
    if (
        len(accuracies) < run["rounds_run"]
        or max(evaluated, default=0.0) != run["best_accuracy"]
        or (run["rounds_to_target"] is not None and first != run["rounds_to_target"])
    ):
        return None
    return accuracies


def first_round_at(accuracies: Sequence[float | None], threshold: float) -> int | None:
    """The first round whose test accuracy is at least ``threshold``, or None.

    Example:
        >>> first_round_at([0.5, None, 0.75, 0.7, 0.8], 0.7)
        3
        >>> first_round_at([0.5, 0.6], 0.7) is None
        True
    """
    for index, accuracy in enumerate(accuracies):
        if accuracy is not None and accuracy >= threshold:
            return index + 1
    return None


def accuracies_of(run: Mapping[str, Any], runs_dir: Path) -> list[float | None] | None:
    """A stored run's accuracy by round: from its results entry, else from its run
    directory's metrics log; None when it has neither."""
    stored = run.get(ACCURACY_BY_ROUND)
    return list(stored) if stored is not None else logged_accuracies(run, runs_dir)


def curve_of(
    run: Mapping[str, Any], runs_dir: Path
) -> tuple[list[int], list[float]] | None:
    """The (rounds, test accuracies) of a stored run (see :func:`accuracies_of`)."""
    stored = accuracies_of(run, runs_dir)
    if stored is None:
        return None
    pairs = [(i + 1, a) for i, a in enumerate(stored) if a is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def store_curves(path: Path, runs_dir: Path) -> list[str]:
    """Copy into the results file the accuracy by round of each run that lacks it
    and whose run directory is here; return the keys of the runs filled in."""
    if not path.exists():
        return []
    with locked_directory(path.parent, wait=True):
        runs = load_runs(path)
        filled = []
        for key, run in runs.items():
            if ACCURACY_BY_ROUND not in run:
                accuracies = logged_accuracies(run, runs_dir)
                if accuracies is not None:
                    run[ACCURACY_BY_ROUND] = accuracies
                    filled.append(key)
        if filled:
            save_runs(path, runs)
    return filled


def runs_of_cell(
    runs: Mapping[str, Mapping[str, Any]], dataset: str, cell: Cell, target: float
) -> list[Mapping[str, Any]]:
    """The stored runs of ``cell`` on ``dataset`` towards ``target``."""
    return [
        run
        for run in runs.values()
        if run["dataset"] == dataset
        and run["target"] == target
        and cell_of(run) == cell
    ]


def ended_early(run: Mapping[str, Any]) -> bool:
    """Whether a run that missed its target stopped before its round limit: its
    updates diverged, or it sat at chance (it says nothing of later rounds)."""
    return run["rounds_to_target"] is None and bool(
        run.get("diverged") or run.get("stalled")
    )


def rank(run: Mapping[str, Any]) -> tuple[int, float, float]:
    """Sort key, best first: reached the target in fewest rounds; then, of those
    that did not, the ones that ran all their rounds, by accuracy; then the ones
    that ended early (diverged or stalled), by accuracy.

    Example:
        >>> full = {"rounds_to_target": None, "best_accuracy": 0.84}
        >>> diverged = {**full, "best_accuracy": 0.845, "diverged": True}
        >>> best([diverged, full]) is full
        True
    """
    reached = run["rounds_to_target"]
    if reached is not None:
        return (0, float(reached), -run["best_accuracy"])
    return (2 if ended_early(run) else 1, -run["best_accuracy"], 0.0)


def best(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The best run of a cell (fewest rounds to target), or None without runs."""
    return min(runs, key=rank) if runs else None


def pack(runs: Mapping[str, Mapping[str, Any]], runs_dir: Path, out: Path) -> Path:
    """Write ``out/runs.tar``: every run directory's metrics and configuration (for
    the curves), and the checkpoint of runs not finished (stopped by a time budget,
    so the next sweep resumes them): those not in ``runs``, and reruns (their
    directory a recorded run's, whose record has no curve yet)."""
    finished = {run["run_dir"] for run in runs.values() if ACCURACY_BY_ROUND in run}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.tar"
    with tarfile.open(path, "w") as tar:
        for config in sorted(runs_dir.rglob("config.json")):
            directory = config.parent
            name = directory.relative_to(runs_dir)
            for item in ("config.json", "metrics.jsonl", "checkpoint"):
                keep = item != "checkpoint" or str(name) not in finished
                if keep and (directory / item).exists():
                    tar.add(directory / item, arcname=str(name / item))
    return path
