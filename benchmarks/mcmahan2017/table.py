"""The markdown table: the paper's MNIST rounds beside fedloom's, cell by cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import cells as grid
from .cells import Cell
from .results import best, ended_early, runs_of_cell

TABLE_FILE = Path(__file__).resolve().parent / "table.md"
TIMES = "\u00d7"  # the paper prints speed-ups as (3.5 TIMES)


def rounds_text(run: Mapping[str, Any] | None) -> str:
    """A run's rounds to target, ``> cap`` when it never got there, ``> rounds
    run`` and its mark when it ended early (diverged †, stalled ‡), or ``—``.

    Example:
        >>> rounds_text({"rounds_to_target": None, "max_rounds": 500})
        '> 500'
        >>> rounds_text({"rounds_to_target": None, "max_rounds": 500,
        ...              "rounds_run": 200, "diverged": True})
        '> 200†'
    """
    if run is None:
        return "—"
    if run["rounds_to_target"] is not None:
        return str(run["rounds_to_target"])
    if ended_early(run):
        return f"> {run['rounds_run']}{_mark(run)}"
    return f"> {run['max_rounds']}"


def rerun_text(run: Mapping[str, Any]) -> str:
    """For a run made again for its curve (``--rerun-best``) that did not repeat
    its first run's rounds, those rounds; else nothing.

    Example:
        >>> rerun_text({"rounds_to_target": 80, "max_rounds": 500,
        ...             "rerun_of": {"rounds_to_target": 69}})
        ' (first run: 69)'
        >>> rerun_text({"rounds_to_target": 70, "max_rounds": 500, "rerun_of":
        ...             {"rounds_to_target": None, "max_rounds": 69}})
        ' (first run: > 69)'
        >>> rerun_text({"rounds_to_target": 70, "rerun_of": {"rounds_to_target": 70}})
        ''
    """
    first = run.get("rerun_of")
    if first is None or first["rounds_to_target"] == run["rounds_to_target"]:
        return ""
    if first.get("max_rounds") is None:  # kept before the field was
        return f" (first run: {first['rounds_to_target'] or 'not reached'})"
    return f" (first run: {rounds_text(first)})"


def speedup_text(
    baseline: Mapping[str, Any] | None, run: Mapping[str, Any] | None
) -> str:
    """FedSGD's rounds over this run's, as the paper prints it: ``(3.5x)``.

    A FedSGD baseline that missed the target gives a lower bound, ``(≥ 2.0x)``;
    a run that missed it has no speed-up.
    """
    if baseline is None or run is None or run["rounds_to_target"] is None:
        return ""
    ours = speedup(baseline, run)
    if ours is None:
        return ""
    ratio, bound = ours
    return f"({'≥ ' if bound else ''}{ratio:.1f}{TIMES})"


def speedup(
    baseline: Mapping[str, Any], run: Mapping[str, Any]
) -> tuple[float, bool] | None:
    """(FedSGD rounds / run rounds, whether it is a lower bound), or None when
    FedSGD's best run ended early without reaching the target (no bound)."""
    base = baseline["rounds_to_target"]
    if base is None:
        if ended_early(baseline):
            return None
        return baseline["max_rounds"] / run["rounds_to_target"], True
    return base / run["rounds_to_target"], False


def verdict(
    cell: Cell, paper_ratio: float | None, ours: tuple[float, bool] | None
) -> str:
    """Whether FedAvg beats FedSGD (fewer rounds) here as it does in the paper."""
    if cell.algorithm == "fedsgd" or paper_ratio is None or ours is None:
        return ""
    paper_beats, ours_beats = paper_ratio > 1, ours[0] > 1
    if ours[1] and not ours_beats:  # a lower bound <= 1 settles nothing
        return "?"
    return "yes" if paper_beats == ours_beats else "**no**"


def rates_text(
    runs: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any] | None
) -> str:
    """The rates tried, the best in bold, a diverged one (NaN updates) marked †, one
    stalled at chance ‡."""
    rates = sorted(runs, key=lambda r: r["learning_rate"])
    texts = [f"{r['learning_rate']:g}{_mark(r)}" for r in rates]
    return ", ".join(
        f"**{text}**" if r is chosen else text
        for r, text in zip(rates, texts, strict=True)
    )


def _device_text(run: Mapping[str, Any]) -> str:
    chunk = run.get("chunk_size")
    return run["device"] + ("" if chunk is None else f", chunks of {chunk}")


def _mark(run: Mapping[str, Any]) -> str:
    if run.get("diverged"):
        return "†"
    return "‡" if run.get("stalled") else ""


def _paper_text(cell: Cell) -> tuple[str, float | None]:
    rounds = grid.paper_rounds(cell)
    if rounds is None:
        return "unknown", None
    baseline = grid.paper_rounds(Cell(cell.model, cell.partition, "fedsgd", 1, None))
    if cell.algorithm == "fedsgd" or baseline is None:
        return str(rounds), None
    ratio = baseline / rounds
    return f"{rounds} ({ratio:.1f}{TIMES})", ratio


def _targets(dataset: str, model: str, targets: Mapping[Any, float]) -> str:
    iid, shards = (targets[(dataset, model, p)] for p in grid.PARTITIONS)
    if iid == shards:
        return f"{iid:.0%}"
    return f"{iid:.0%} IID, {shards:.0%} non-IID"


def model_table(
    model: str,
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    targets: Mapping[tuple[str, str, str], float] = grid.TARGETS,
) -> list[str]:
    """The markdown lines of one model's block (both partitions).

    ``results`` maps a dataset name to its stored runs (see ``results.py``).
    """
    fashion, mnist = "fashion_mnist", "mnist"
    lines = [
        f"### {model.upper()}: MNIST to {_targets(mnist, model, targets)} (paper), "
        f"Fashion-MNIST to {_targets(fashion, model, targets)} (fedloom)",
        "",
        "| data | algorithm | E | B | u | MNIST, paper | MNIST, fedloom "
        "| Fashion-MNIST, fedloom | FedAvg beats FedSGD as in the paper "
        "| rates tried (best) | best accuracy | seconds | device |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for cell in grid.all_cells((model,)):
        paper_text, paper_ratio = _paper_text(cell)
        found: dict[str, tuple[Any, Any, list[Mapping[str, Any]]]] = {}
        for dataset in (mnist, fashion):
            target = targets[(dataset, cell.model, cell.partition)]
            runs = results.get(dataset, {})
            cell_runs = runs_of_cell(runs, dataset, cell, target)
            fedsgd = Cell(cell.model, cell.partition, "fedsgd", 1, None)
            found[dataset] = (
                best(cell_runs),
                best(runs_of_cell(runs, dataset, fedsgd, target)),
                cell_runs,
            )
        chosen, baseline, fashion_runs = found[fashion]
        mnist_best, mnist_base, _ = found[mnist]
        ours = None
        if chosen is not None and baseline is not None and chosen["rounds_to_target"]:
            ours = speedup(baseline, chosen)
        mnist_text = (
            f"{rounds_text(mnist_best)} {speedup_text(mnist_base, mnist_best)}"
            if mnist_best is not None
            else "not run here"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    "IID" if cell.partition == "iid" else "non-IID",
                    "FedSGD" if cell.algorithm == "fedsgd" else "FedAvg",
                    str(cell.local_epochs),
                    cell.batch_text,
                    f"{cell.u:g}",
                    paper_text,
                    mnist_text.strip(),
                    f"{rounds_text(chosen)} {speedup_text(baseline, chosen)}"
                    f"{rerun_text(chosen)}".strip()
                    if chosen is not None
                    else "not run yet",
                    verdict(cell, paper_ratio, ours),
                    rates_text(fashion_runs, chosen),
                    f"{chosen['best_accuracy']:.4f}" if chosen else "",
                    f"{chosen['seconds']:.1f}" if chosen else "",
                    _device_text(chosen) if chosen else "",
                ]
            )
            + " |"
        )
    return lines


def write_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    path: Path = TABLE_FILE,
    targets: Mapping[tuple[str, str, str], float] = grid.TARGETS,
) -> str:
    """Write the whole table (both models) to ``path``; return its text."""
    lines = [
        "# McMahan et al. 2017, Table 2, beside fedloom",
        "",
        "Written by `python -m benchmarks.mcmahan2017 table` from "
        "`results/*.json`. Rounds of communication to reach the target test "
        "accuracy at the best learning rate of those tried (in bold), and in "
        "brackets the speed-up over FedSGD in the same block; `> N`: not reached "
        "in the cap of N rounds; †: the rate diverged (a client's update was not "
        "finite), its run stopped there; ‡: the rate stalled at chance (test "
        "accuracy at most 20 % for 50 rounds), its run stopped there. Paper: "
        "arXiv 1602.05629v4, Table 2 (CNN) and, "
        "for the 2NN, Table 1 (C = 0.1, E = 1), the only 2NN cells we could read "
        "(`paper.json`). (first run: N): the best run was made again for its "
        "curve (`run --rerun-best`, the results file keeping each run's test "
        "accuracy by round since) and did not take the rounds its first run took; "
        "the table gives the new run's. Seconds: the best-rate run's rounds "
        "(training and "
        "evaluation), without loading data, their first round with the runtime's "
        "warm-up (on a GPU, the graph capture, and in a sweep's first run CUDA's "
        "start-up); the device, and the clients computed "
        "at once where a run set it (`chunk_size`: for its algorithm and B, the "
        "largest chunk measured in `benchmarks/results/chunk_size_*.json` unless a "
        "smaller one was at least 10 % faster). 100 clients, C = 0.1.",
        "",
    ]
    for model in grid.MODELS:
        lines += [*model_table(model, results, targets), ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text
