"""Claim: on pathological non-IID data the rounds to target move with the seed.

Table 2 gives one number a cell, and so does our sweep (seed 0). Where FedAvg's
advantage over FedSGD is small the ratio of two such numbers may say more about
the draw than about the algorithms. This script reruns cells at the best rate the
sweep found (from its results file) with other seeds (each seed draws its own
partition, initial model and cohorts) and prints, for each cell, the rounds to
target of every seed and their spread, beside the ratio of the cells' medians to
the first cell's (put FedSGD first).

    python -m benchmarks.mcmahan2017.seeds --cells 2nn/shards/fedsgd_E1_Binf \\
        2nn/shards/fedavg_E5_Binf 2nn/shards/fedavg_E1_B50 --seeds 0 1 2 3 4 \\
        [--json benchmarks/results/mcmahan2017_seeds.json]

Seed 0's run is the sweep's own, read from its results file, not rerun (it may
have run on another device or runtime; each row says which). The others run here
with the sweep's settings (target, one thread a run; the local runtime on the CPU
by default) in a temporary directory, ``--processes`` at a time; a run that does
not reach the target within the cell's cap (or ``--max-rounds``) counts as that
many rounds, marked ``>``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from . import cells as grid
from .results import best, ended_early, load_runs, results_path, runs_of_cell
from .sweep import Settings, run_one
from .table import rounds_text


def best_rate(settings: Settings, cell: grid.Cell) -> dict[str, Any]:
    runs = runs_of_cell(
        load_runs(settings.results_path), settings.dataset, cell, settings.target(cell)
    )
    chosen = best(runs)
    if chosen is None or chosen["rounds_to_target"] is None:
        raise SystemExit(f"{cell.name}: no run of the sweep reached its target yet")
    return dict(chosen)


def run_seed(job: tuple[str, str, str, grid.Cell, float, int, int]) -> dict[str, Any]:
    """One rerun (in a worker process when ``--processes`` > 1)."""
    dataset, device, runtime, cell, lr, seed, limit = job
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(
            dataset=dataset,
            results_path=Path(scratch) / "results.json",
            runs_dir=Path(scratch),
            device=device,
            runtime=runtime,
            seed=seed,
        )
        outcome = run_one(settings, cell, lr, limit, None)
    assert outcome is not None  # no deadline: every run ends
    print(f"  {cell.name} lr {lr:g} seed {seed}: {rounds_text(outcome)}", flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=grid.DATASETS, default="fashion_mnist")
    parser.add_argument("--cells", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", choices=("local", "vectorized"), default="local")
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        help="end a rerun here if it has not reached the target (default: the "
        "cell's cap); it counts as this many rounds",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="reruns at once (one thread each)"
    )
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/mcmahan2017_seeds.json")
    )
    args = parser.parse_args(argv)
    if args.processes < 1 or (args.max_rounds is not None and args.max_rounds < 1):
        parser.error("--processes and --max-rounds must be at least 1")
    cells = grid.cells_named(args.cells)
    base = Settings(dataset=args.dataset, results_path=results_path(args.dataset))
    chosen = {cell.name: best_rate(base, cell) for cell in cells}
    jobs = [
        (
            args.dataset,
            args.device,
            args.runtime,
            cell,
            chosen[cell.name]["learning_rate"],
            seed,
            args.max_rounds or base.cap(cell),
        )
        for cell in cells
        for seed in args.seeds
        if seed != 0
    ]
    if args.processes > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
            outcomes = list(pool.map(run_seed, jobs))
    else:
        outcomes = [run_seed(job) for job in jobs]
    reruns = {
        (job[3].name, job[5]): outcome
        for job, outcome in zip(jobs, outcomes, strict=True)
    }
    rows: list[dict[str, Any]] = []
    for name in args.cells:
        for seed in args.seeds:
            run = chosen[name] if seed == 0 else reruns[(name, seed)]
            if seed == 0:
                shown = rounds_text(run)
                print(f"  {name} lr {run['learning_rate']:g} seed 0: {shown}")
            rows.append(
                {
                    "cell": name,
                    "learning_rate": run["learning_rate"],
                    "seed": seed,
                    "target": run["target"],
                    "cap": run["max_rounds"],
                    "rounds_to_target": run["rounds_to_target"],
                    "ended_early": ended_early(run),
                    "best_accuracy": run["best_accuracy"],
                    "seconds": run["seconds"],
                    "device": run["device"],
                    "runtime": run["runtime"],
                    "commit": run["commit"],
                }
            )
    summary = summarize(rows, args.cells)
    print_table(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"benchmark": "mcmahan2017_seeds", "summary": summary, "runs": rows},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")
    return 0


def summarize(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per cell: the rounds of each seed (the cap where not reached), their min,
    median and max, and the median's ratio to the first cell's median. A seed
    whose run ended early (diverged or stalled at chance) is listed apart and
    left out of the figures: it has no rounds to count, not even the cap.

    Example:
        >>> def run(cell, seed, rounds, ended_early=False):
        ...     return {"cell": cell, "seed": seed, "learning_rate": 0.1,
        ...             "rounds_to_target": rounds, "cap": 500,
        ...             "ended_early": ended_early}
        >>> rows = [run("sgd", 0, 300), run("sgd", 1, 340), run("sgd", 2, 320),
        ...         run("avg", 0, 150), run("avg", 1, None), run("avg", 2, 170),
        ...         run("avg", 3, None, ended_early=True)]
        >>> sgd, avg = summarize(rows, ["sgd", "avg"])
        >>> avg["rounds"], avg["not_reached"], avg["ended_early"], avg["median"]
        ([150, 500, 170], [1], [3], 170)
        >>> round(avg["speedup_of_medians"], 2)  # 320 / 170
        1.88
    """
    summary = []
    for name in names:
        every = [r for r in rows if r["cell"] == name]
        runs = [r for r in every if not r.get("ended_early")]
        if not runs:
            raise SystemExit(f"{name}: every seed's run diverged or stalled")
        rounds = [r["rounds_to_target"] or r["cap"] for r in runs]
        summary.append(
            {
                "cell": name,
                "learning_rate": runs[0]["learning_rate"],
                "seeds": [r["seed"] for r in runs],
                "rounds": rounds,
                "not_reached": [
                    r["seed"] for r in runs if r["rounds_to_target"] is None
                ],
                "ended_early": [r["seed"] for r in every if r.get("ended_early")],
                "min": min(rounds),
                "median": statistics.median(rounds),
                "max": max(rounds),
            }
        )
    for row in summary:
        row["speedup_of_medians"] = summary[0]["median"] / row["median"]
    return summary


def print_table(summary: list[dict[str, Any]]) -> None:
    print("| cell | lr | rounds by seed | min | median | max | speed-up (medians) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in summary:
        by_seed = ", ".join(
            f"> {r}" if s in row["not_reached"] else str(r)
            for s, r in zip(row["seeds"], row["rounds"], strict=True)
        )
        if row["ended_early"]:
            early = ", ".join(map(str, row["ended_early"]))
            by_seed += f" (seeds {early} diverged or stalled: left out)"
        print(
            f"| {row['cell']} | {row['learning_rate']:g} | {by_seed} | {row['min']} "
            f"| {row['median']:g} | {row['max']} | {row['speedup_of_medians']:.2f}× |"  # noqa: RUF001
        )


if __name__ == "__main__":
    sys.exit(main())
