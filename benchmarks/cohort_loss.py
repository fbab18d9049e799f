"""Claim: the cohort step's own cross-entropy makes its eager step faster.

The vectorized runtime's loss takes each example's cross-entropy as the label's
entry of ``log_softmax``, negated (``_cohort_loss.cross_entropy``), rather than by
``F.cross_entropy(reduction="none")``, whose handling of ``ignore_index`` adds, under
``vmap``, a dozen more small operations to a step (each a kernel launch on a GPU).
This counts the operations of one eager step of each form (ATen operators that are
not views), checks that both leave the same parameters after a few steps (bit for
bit), and times a step of each, on a cohort of Fashion-MNIST clients (B = 10,
SGD, lr 0.05), in one process: the forms take turns, ``--repeats`` times
``--steps`` steps each, and the best time per step of each is kept.

    python benchmarks/cohort_loss.py [--models 2nn cnn] [--clients 10]
        [--threads 2] [--steps 20] [--repeats 10]
        [--json benchmarks/results/cohort_loss.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.func import grad_and_value, vmap
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compiled_step import assert_same, cohort_plan, run_steps
from benchmarks.records import write_record
from benchmarks.simulation_speed import fashion_mnist_clients
from benchmarks.turns import best_per_step
from fedloom.data import ClientData
from fedloom.learning import build_model, sgd
from fedloom.learning._cohort_work import CohortStep
from fedloom.runtimes import reuse_cpu_memory


def _torch_loss(model: Any) -> Any:
    """The masked loss with ``F.cross_entropy`` (the step's loss before)."""

    def loss(params: Any, x: Any, y: Any, mask: Any) -> Any:
        per_example = torch.nn.functional.cross_entropy(
            model.apply(params, x), y, reduction="none"
        )
        weights = mask.to(per_example.dtype)
        return (per_example * weights).sum() / weights.sum().clamp(min=1)

    return loss


class _Count(TorchDispatchMode):
    """Counts the ATen operators that are not views."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


def measure(dataset: Any, clients: ClientData, name: str, args: Any) -> dict[str, Any]:
    model = build_model(name, dataset.input_shape, dataset.num_classes, seed=0)
    plan = cohort_plan(model, clients, args.clients)
    optimizer = sgd(0.05)._replace(fold_alpha=None)  # the vmap step, every model
    before = CohortStep(model, optimizer)
    before.grad = vmap(grad_and_value(_torch_loss(model)))
    forms = {"F.cross_entropy": before, "own": CohortStep(model, optimizer)}
    assert_same([run_steps(step, plan, 3) for step in forms.values()])
    ops = {}
    for form, step in forms.items():
        with _Count() as counter:
            run_steps(step, plan, 1)
        ops[form] = counter.ops
    runs = {
        form: lambda step=step: run_steps(step, plan, args.steps)
        for form, step in forms.items()
    }
    best = best_per_step(runs, args.steps, args.repeats)
    return {
        "model": name,
        "ops_per_step": ops,
        "ms_per_step": {form: seconds * 1e3 for form, seconds in best.items()},
        "speedup": best["F.cross_entropy"] / best["own"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["2nn", "cnn"])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/cohort_loss.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    torch.set_num_threads(args.threads)
    dataset, clients = fashion_mnist_clients()
    rows = [measure(dataset, clients, name, args) for name in args.models]
    print(f"{args.clients} clients, B = 10, SGD, {args.threads} thread(s), eager step:")
    print(f"{'model':<6} {'ops':>10} {'F.cross_entropy ms':>19} {'own ms':>8}")
    for row in rows:
        ops, ms = row["ops_per_step"], row["ms_per_step"]
        print(
            f"{row['model']:<6} {ops['F.cross_entropy']:>4} -> {ops['own']:<3}"
            f" {ms['F.cross_entropy']:19.3f} {ms['own']:8.3f}   {row['speedup']:.2f}x"
        )
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
