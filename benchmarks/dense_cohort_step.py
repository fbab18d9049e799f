"""Claim: an eager cohort step of a dense network runs faster without ``vmap``.

The vectorized runtime's eager step of plain SGD or heavy-ball momentum on a
network of linear layers runs on the CPU as batched products with a backward
pass of its own (no autograd graph), each weight's update (SGD) or velocity
(momentum) folded into its gradient's product (``DenseCohortStep``,
``_dense_cohort.py``), where it ran as ``vmap(grad(loss))`` and then the update.
This times one step of each form (the ``vmap`` form: the same optimizer with
``fold_alpha=None`` or ``heavy_ball=None``) on Fashion-MNIST clients (B = 10, lr
0.05, momentum 0.9), for each optimizer, model, cohort size and thread count, in
one process: the forms take turns ``--repeats`` times, ``--steps`` steps each,
and the best time per step of each is kept. It first checks that both leave the
same parameters to float32 rounding after a few steps.

    python benchmarks/dense_cohort_step.py [--optimizers sgd momentum]
        [--models 2nn logistic]
        [--clients 10 100] [--threads 1 2] [--steps 20] [--repeats 8]
        [--json benchmarks/results/dense_cohort_step.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compiled_step import assert_same, cohort_plan, run_steps
from benchmarks.records import write_record
from benchmarks.simulation_speed import fashion_mnist_clients
from benchmarks.turns import best_per_step
from fedloom.data import ClientData
from fedloom.learning import build_model, momentum, sgd
from fedloom.learning._cohort_work import CohortStep
from fedloom.runtimes import reuse_cpu_memory

LEARNING_RATE = 0.05
OPTIMIZERS = {  # (folded, unfolded: the vmap step's)
    "sgd": lambda: (
        sgd(LEARNING_RATE),
        sgd(LEARNING_RATE)._replace(fold_alpha=None),
    ),
    "momentum": lambda: (
        momentum(LEARNING_RATE, 0.9),
        momentum(LEARNING_RATE, 0.9)._replace(heavy_ball=None),
    ),
}


def measure(
    dataset: Any,
    clients: ClientData,
    optimizer: str,
    name: str,
    count: int,
    args: Any,
) -> dict[str, Any]:
    model = build_model(name, dataset.input_shape, dataset.num_classes, seed=0)
    plan = cohort_plan(model, clients, count)
    folded, unfolded = OPTIMIZERS[optimizer]()
    forms = {
        "vmap": CohortStep(model, unfolded),
        "dense": CohortStep(model, folded),
    }
    assert forms["vmap"].dense is None and forms["dense"].dense is not None
    assert_same([run_steps(s, plan, 3) for s in forms.values()], rtol=1e-4, atol=1e-6)
    runs = {
        form: lambda step=step: run_steps(step, plan, args.steps)
        for form, step in forms.items()
    }
    best = best_per_step(runs, args.steps, args.repeats)
    return {
        "optimizer": optimizer,
        "model": name,
        "clients": count,
        "threads": torch.get_num_threads(),
        "ms_per_step": {form: seconds * 1e3 for form, seconds in best.items()},
        "speedup": best["vmap"] / best["dense"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--models", nargs="+", default=["2nn", "logistic"])
    parser.add_argument("--clients", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/dense_cohort_step.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    dataset, clients = fashion_mnist_clients()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for optimizer in args.optimizers:
            for name in args.models:
                for count in args.clients:
                    rows.append(measure(dataset, clients, optimizer, name, count, args))
    print("eager cohort step, Fashion-MNIST clients, B = 10, lr 0.05 (momentum 0.9):")
    print(
        f"{'optimizer':<9} {'model':<9} {'clients':>7} {'threads':>7} {'vmap ms':>9}"
        f" {'dense ms':>9}"
    )
    for row in rows:
        ms = row["ms_per_step"]
        print(
            f"{row['optimizer']:<9} {row['model']:<9} {row['clients']:>7}"
            f" {row['threads']:>7}"
            f" {ms['vmap']:9.3f} {ms['dense']:9.3f}   {row['speedup']:.2f}x"
        )
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
