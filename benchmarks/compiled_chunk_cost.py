"""Claim: compiled on the CPU, a client's step costs more the more clients run with it,
once their parameters outgrow the caches, and for convolutions.

Why FedAvg's compiled step on the CPU trains a few clients at a time rather than
the whole cohort (``fedloom.learning._cohort_work.clients_at_once_compiled``). This
times the runtime's compiled step (``CohortStep``, SGD lr 0.05 or ``--momentum``,
B = 10, Fashion-MNIST clients) on cohorts of ``--clients`` sizes and gives the
milliseconds per client step, for four models that pull the two causes apart:

- ``2nn``: the McMahan 2NN, 0.8 MB of parameters, no convolutions;
- ``wide``: two hidden layers of 1,500 units, 13.8 MB, no convolutions;
- ``small-cnn``: the McMahan CNN's two convolutions, then global average pooling
  into one linear layer: 0.2 MB, convolutions (grouped under ``vmap``);
- ``cnn``: the McMahan CNN, 6.7 MB, both.

The sizes take turns (``benchmarks/turns.py``), best of ``--repeats`` calls of
``--steps`` steps each. The ratio is each size's time a client step to the first
size's, in the same run.

    python benchmarks/compiled_chunk_cost.py [--threads 1] [--clients 1 2 5 10]
        [--models 2nn wide small-cnn cnn] [--momentum]
        [--json benchmarks/results/compiled_chunk_cost_1thread.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compiled_step import cohort_plan, run_steps
from benchmarks.records import write_record
from benchmarks.simulation_speed import fashion_mnist_clients
from benchmarks.turns import best_per_step
from fedloom.learning import FunctionalModel, build_model, momentum, sgd
from fedloom.learning._cohort_work import CohortStep
from fedloom.runtimes import reuse_cpu_memory

LEARNING_RATE = 0.05


def _module(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "wide":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 1500),
            nn.ReLU(),
            nn.Linear(1500, 1500),
            nn.ReLU(),
            nn.Linear(1500, 10),
        )
    return nn.Sequential(  # "small-cnn": the McMahan CNN's convolutions
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def model_named(name: str) -> FunctionalModel:
    if name in ("2nn", "cnn"):
        return build_model(name, (1, 28, 28), 10, seed=0)
    return FunctionalModel(_module(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument(
        "--models", nargs="+", default=["2nn", "wide", "small-cnn", "cnn"]
    )
    parser.add_argument("--momentum", action="store_true", help="beta 0.9")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    reuse_cpu_memory()
    torch.set_num_threads(args.threads)
    _, clients = fashion_mnist_clients()
    rows: list[dict[str, Any]] = []
    print(f"{'model':9} {'MB':>5} {'clients':>7} {'ms/step':>8} {'ms/client':>9} ratio")
    for name in args.models:
        model = model_named(name)
        megabytes = sum(v.nbytes for v in model.init().values()) / 1e6
        runs = {}
        for count in args.clients:
            optimizer = momentum(LEARNING_RATE) if args.momentum else sgd(LEARNING_RATE)
            step = CohortStep(model, optimizer, compile=True)
            plan = cohort_plan(model, clients, count)
            run_steps(step, plan, 5)  # compiles
            runs[count] = lambda step=step, plan=plan: run_steps(step, plan, args.steps)
        best = best_per_step(runs, args.steps, args.repeats)
        first = best[args.clients[0]] / args.clients[0]
        for count in args.clients:
            per_client = best[count] / count
            rows.append(
                {
                    "model": name,
                    "parameter_megabytes": megabytes,
                    "clients": count,
                    "seconds_per_step": best[count],
                    "seconds_per_client_step": per_client,
                    "relative_to_first": per_client / first,
                }
            )
            print(
                f"{name:9} {megabytes:5.1f} {count:7d} {best[count] * 1e3:8.2f} "
                f"{per_client * 1e3:9.2f} {per_client / first:5.2f}",
                flush=True,
            )
    if args.json:
        write_record(args.json, args, rows=rows)


if __name__ == "__main__":
    main()
