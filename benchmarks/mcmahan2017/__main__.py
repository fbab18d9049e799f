"""The command line of the McMahan et al. 2017 reproduction.

From the repository root::

    python -m benchmarks.mcmahan2017 run                       # the whole table
    python -m benchmarks.mcmahan2017 run --model 2nn           # the 2NN cells
    python -m benchmarks.mcmahan2017 run --cell 2nn/iid/fedavg_E5_B10   # one cell
    python -m benchmarks.mcmahan2017 run --model cnn --device cuda \\
        --runtime vectorized --time-budget 500                 # CNN on a GPU
    python -m benchmarks.mcmahan2017 run --dataset mnist       # with $FEDLOOM_DATA
    python -m benchmarks.mcmahan2017 table                     # table.md only
    python -m benchmarks.mcmahan2017 curves                    # curves/*.png only
    python -m benchmarks.mcmahan2017 run --rerun-best ...      # runs for the curves
    python -m benchmarks.mcmahan2017 pack --out DIR            # for the device tool
    python -m benchmarks.mcmahan2017 run ... --out DIR         # run, packing as it goes

On the device tool's GPU, ``bash benchmarks/mcmahan2017/gpu.sh`` runs the CNN
cells for a time budget and packs what the next call needs (see that file).

``run`` skips the runs its results file already holds, so the same command
resumes a stopped sweep; after every run it rewrites the results file and the
table, at the end the curves. The curves come from the runs' accuracies by round
in the results file; ``run --rerun-best`` runs again the best run of each cell
recorded before the file kept them, when its run directory is not here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.chunk_size import fastest_chunk_sizes

from . import cells as grid
from .curves import plot_all
from .results import load_runs, pack, results_path, store_curves
from .sweep import RUNS_DIR, Settings, rerun_best, sweep
from .table import write_table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mcmahan2017",
        description="McMahan et al. 2017, Table 2: rounds to target, per cell.",
    )
    parser.add_argument("command", choices=("run", "table", "curves", "pack"))
    parser.add_argument("--dataset", choices=grid.DATASETS, default="fashion_mnist")
    parser.add_argument("--model", choices=grid.MODELS, nargs="+", default=None)
    parser.add_argument("--partition", choices=grid.PARTITIONS, nargs="+")
    parser.add_argument(
        "--cell", nargs="+", help="cells by name, e.g. 2nn/iid/fedavg_E5_B10"
    )
    parser.add_argument("--device", default="cpu", help='"cpu", "cuda", "cuda:N"')
    parser.add_argument("--runtime", choices=("local", "vectorized"), default=None)
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new run after this long (rerun to go on)",
    )
    parser.add_argument(
        "--chunk-sizes",
        type=Path,
        default=None,
        metavar="JSON",
        help="benchmarks/chunk_size.py's report: each (algorithm, B) runs with "
        "the chunk size clearly fastest there (vectorized runtime)",
    )
    parser.add_argument(
        "--rerun-best",
        action="store_true",
        help="instead of the search: run again each selected cell's best run that "
        "has no accuracy by round stored nor its run directory here (for its curve)",
    )
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    parser.add_argument("--results", type=Path, default=None, help="results JSON")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write runs.tar (pack; run: rewritten after every run)",
    )
    return parser.parse_args(argv)


def selected_cells(args: argparse.Namespace) -> list[grid.Cell]:
    """The cells named by --cell, or those of --model and --partition."""
    if args.cell:
        return grid.cells_named(args.cell)
    models = args.model or grid.MODELS
    partitions = args.partition or grid.PARTITIONS
    return [
        c for c in grid.all_cells() if c.model in models and c.partition in partitions
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.results or results_path(args.dataset)
    all_results = {d: load_runs(results_path(d)) for d in grid.DATASETS}

    def table() -> None:
        all_results[args.dataset] = load_runs(path)
        write_table(all_results)
        if args.out is not None:  # a device call's files: up to date if it is cut off
            pack(all_results[args.dataset], args.runs_dir, args.out)

    if args.command == "run":
        runtime = args.runtime or ("vectorized" if args.device != "cpu" else "local")
        settings = Settings(
            dataset=args.dataset,
            results_path=path,
            runs_dir=args.runs_dir,
            device=args.device,
            runtime=runtime,
            time_budget=args.time_budget,
            chunk_sizes=fastest_chunk_sizes(args.chunk_sizes)
            if args.chunk_sizes
            else {},
        )
        how = rerun_best if args.rerun_best else sweep
        how(settings, selected_cells(args), after_run=table)
    if args.command in ("run", "table"):
        table()
        print(f"table: {Path('benchmarks/mcmahan2017/table.md')}")
    if args.command == "pack" or (args.command == "run" and args.out is not None):
        print(f"packed: {pack(load_runs(path), args.runs_dir, args.out)}")
    if args.command in ("run", "curves"):
        for key in store_curves(path, args.runs_dir):
            print(f"accuracy by round stored from runs/: {key}")
        for line in plot_all(args.dataset, load_runs(path), args.runs_dir):
            print(f"curves: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
