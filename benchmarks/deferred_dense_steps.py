"""Claim: eager SGD steps of a dense cohort run faster several at once, the first
layer's updates deferred to their end, where the batches are small.

``DenseCohortStep.steps`` takes K steps of every client at once: the first linear
layer's K forward products become one, each step adds a correction from the steps
before it, and its K updates become one at the end. This times, for the 2NN on
Fashion-MNIST clients (lr 0.05), the eager dense step one step at a time against K
at a time for K = 2, 3, 5, per cohort size, batch size and thread count, in one
process (the forms take turns ``--repeats`` times, ``--steps`` steps each; the best
time per step of each is kept), after checking that each leaves the parameters of
one step at a time in float64. ``rule`` is the K that
``deferred_steps`` picks (1: none), which the runtime uses.

    python benchmarks/deferred_dense_steps.py [--clients 10 100]
        [--batches 10 20 50] [--threads 1 2] [--steps 30] [--repeats 5]
        [--json benchmarks/results/deferred_dense_steps.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compiled_step import assert_same
from benchmarks.records import write_record
from benchmarks.simulation_speed import fashion_mnist_clients
from benchmarks.turns import best_per_step
from fedloom.core import Replicated
from fedloom.learning import build_model, sgd
from fedloom.learning._cohort_work import TrainingPlan, plan_training
from fedloom.learning._dense_cohort import DenseCohortStep
from fedloom.runtimes import reuse_cpu_memory

LEARNING_RATE = 0.05
AT_ONCE = (1, 2, 3, 5)


def batches(plan: TrainingPlan, steps: int) -> tuple[torch.Tensor, ...]:
    """The first ``steps`` steps of ``plan``'s epoch as ``[clients, steps, B, ...]``."""
    index, mask = plan.batch_index[:, 0, :steps], plan.batch_mask[:, 0, :steps]
    rows = torch.arange(index.shape[0])[:, None, None]
    return plan.data.x[rows, index], plan.data.y[rows, index], mask


def train(
    dense: DenseCohortStep, start: dict[str, torch.Tensor], data: Any, at_once: int
) -> dict[str, torch.Tensor]:
    """Parameters after every step of ``data``, ``at_once`` at a time."""
    params = {k: v.clone() for k, v in start.items()}
    x, y, mask = data
    for s in range(0, x.shape[1], at_once):
        part = slice(s, s + at_once)
        dense.steps(params, x[:, part], y[:, part], mask[:, part])
    return params


def measure(
    model: Any, clients: Any, count: int, batch: int, args: Any
) -> dict[str, Any]:
    examples = [clients.client(i) for i in range(count)]
    start = Replicated(model.init(), count)
    cpu = torch.device("cpu")
    plan = plan_training(start, examples, range(count), 1, batch, cpu)
    steps = min(args.steps, plan.batch_index.shape[2])
    data = batches(plan, steps)
    dense = DenseCohortStep.of(model, sgd(LEARNING_RATE))
    assert dense is not None
    # in float64: in float32 a ReLU flipped by rounding moves a client's weights
    # by 1e-5 and more (100 clients, B = 20: one step at a time as much as five)
    x, y, mask = batches(plan, 6)
    start = {k: v.double() for k, v in plan.start.items()}
    checked = [train(dense, start, (x.double(), y, mask), k) for k in AT_ONCE]
    assert_same(checked, rtol=1e-10, atol=1e-12)
    runs = {
        k: lambda k=k: train(dense, plan.start, data, k) for k in AT_ONCE if k <= steps
    }
    best = best_per_step(runs, steps, args.repeats)
    rule = dense.steps_at_once(plan.data.x.shape[2:], batch)
    return {
        "clients": count,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "ms_per_step": {str(k): seconds * 1e3 for k, seconds in best.items()},
        "speedup": {str(k): best[1] / seconds for k, seconds in best.items()},
        "rule": rule,
        "rule_speedup": best[1] / best[rule],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--batches", nargs="+", type=int, default=[10, 20, 50])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("benchmarks/results/deferred_dense_steps.json"),
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    dataset, clients = fashion_mnist_clients()
    model = build_model("2nn", dataset.input_shape, dataset.num_classes, seed=0)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for count in args.clients:
            for batch in args.batches:
                rows.append(measure(model, clients, count, batch, args))
    print("eager dense 2NN steps, Fashion-MNIST clients, lr 0.05, ms a step:")
    heads = "".join(f" {'K=' + str(k):>16}" for k in AT_ONCE)
    print(f"{'clients':>7} {'B':>3} {'threads':>7}{heads} {'rule':>5}")
    for row in rows:
        ms, up = row["ms_per_step"], row["speedup"]
        cells = "".join(
            f" {ms[str(k)]:8.3f} ({up[str(k)]:.2f}x)" if str(k) in ms else f" {'':>16}"
            for k in AT_ONCE
        )
        print(
            f"{row['clients']:>7} {row['batch']:>3} {row['threads']:>7}{cells}"
            f" {row['rule']:>5}"
        )
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
