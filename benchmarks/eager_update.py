"""Claim: eager training steps are faster with the optimizer's update in place.

The vectorized runtime's eager step (``CohortStep`` without ``compile``) writes SGD's,
momentum's and Adam's update into the stacked parameters (``Optimizer.update_in_place``)
instead of into new tensors (``update``), and so does the local runtime's client
(``LocalTraining``, into a copy of the parameters of its own). This times a step of
each form, for each model and optimizer, on Fashion-MNIST clients (B = 10, lr 0.05,
momentum's beta 0.9), in one process: for ``cohort``, one step of ``--clients``
clients at once, ``--steps`` steps a turn; for ``local``, one client's local
training (an epoch: 60 steps) a turn. The forms take turns ``--repeats`` times,
and the best time per step of each is kept (a shared machine's noise only adds
time). It first checks that both leave the same parameters (bit for bit: the same
arithmetic).

    python benchmarks/eager_update.py [--runtimes cohort local] [--models cnn 2nn]
        [--optimizers sgd momentum adam] [--clients 10] [--threads 2] [--steps 10]
        [--repeats 8] [--json benchmarks/results/eager_update.json]
"""

from __future__ import annotations

import argparse
import os
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
from fedloom.learning import ClientInput, adam, build_model, momentum, sgd
from fedloom.learning._client_work import LocalTraining
from fedloom.learning._cohort_work import CohortStep
from fedloom.runtimes import reuse_cpu_memory

LEARNING_RATE = 0.05
OPTIMIZERS = {"sgd": sgd, "momentum": momentum, "adam": adam}  # momentum: beta 0.9


def _cohort_forms(
    model: Any, optimizers: dict[str, Any], clients: ClientData, args: Any
) -> tuple[dict[str, Any], int]:
    """A cohort step of each form, as a call with no arguments, and its steps."""
    plan = cohort_plan(model, clients, args.clients)
    steps = {form: CohortStep(model, opt) for form, opt in optimizers.items()}
    assert_same([run_steps(step, plan, 3) for step in steps.values()])
    return {
        form: lambda step=step: run_steps(step, plan, args.steps)
        for form, step in steps.items()
    }, args.steps


def _local_forms(
    model: Any, optimizers: dict[str, Any], clients: ClientData, args: Any
) -> tuple[dict[str, Any], int]:
    """One client's local training (an epoch) in each form, and its steps."""
    client, params = ClientInput(clients.client(0), 0), model.init()
    works = {form: LocalTraining(model, opt, 1, 10) for form, opt in optimizers.items()}
    assert_same([work(params, client).update for work in works.values()])
    return {
        form: lambda work=work: work(params, client) for form, work in works.items()
    }, len(client.examples) // 10


FORMS = {"cohort": _cohort_forms, "local": _local_forms}


def measure(
    dataset: Any,
    clients: ClientData,
    runtime: str,
    model_name: str,
    name: str,
    args: Any,
) -> dict[str, Any]:
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, seed=0)
    # unfolded: SGD's folded steps (_linear_fold.py, _dense_cohort.py) update in
    # their own way, with or without update_in_place
    optimizer = OPTIMIZERS[name](LEARNING_RATE)._replace(fold_alpha=None)
    optimizers = {
        "new tensors": optimizer._replace(update_in_place=None),
        "in place": optimizer,
    }
    forms, steps = FORMS[runtime](model, optimizers, clients, args)
    best = best_per_step(forms, steps, args.repeats)
    return {
        "runtime": runtime,
        "model": model_name,
        "optimizer": name,
        "ms_per_step": {form: seconds * 1e3 for form, seconds in best.items()},
        "speedup": best["new tensors"] / best["in place"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", choices=FORMS, default=list(FORMS))
    parser.add_argument("--models", nargs="+", default=["cnn", "2nn"])
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=None)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/eager_update.json")
    )
    args = parser.parse_args()
    args.optimizers = args.optimizers or list(OPTIMIZERS)
    reuse_cpu_memory()
    torch.set_num_threads(args.threads)
    dataset, clients = fashion_mnist_clients()
    rows = [
        measure(dataset, clients, runtime, model_name, name, args)
        for runtime in args.runtimes
        for model_name in args.models
        for name in args.optimizers
    ]
    print(
        f"B = 10, {args.threads} thread(s), eager steps (cohort: {args.clients}"
        " clients at once; local: one client):"
    )
    print(
        f"{'runtime':<7} {'model':<6} {'optimizer':<9} {'new tensors ms':>15}"
        f" {'in place ms':>12}"
    )
    for row in rows:
        ms = row["ms_per_step"]
        print(
            f"{row['runtime']:<7} {row['model']:<6} {row['optimizer']:<9}"
            f" {ms['new tensors']:15.2f} {ms['in place']:12.2f}"
            f"   {row['speedup']:.2f}x"
        )
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
