"""Claim: folding SGD's update into the gradient's matrix product speeds up the step.

Times one compiled step of the vectorized runtime (a cohort of Fashion-MNIST
clients, B = 10, SGD lr 0.05, the 2NN by default) three ways, in one process:

- ``functional``: the step returns new parameters (how the compiled step worked
  before the parameters were updated in place);
- ``in place``: the step writes the new parameters into its own, no compiler pass;
- ``in place + fold``: as the runtime runs it, with ``FoldUpdateIntoGemm``
  (``w.baddbmm_(a, b, alpha=-lr)`` for each linear layer's weight).

The variants take turns, ``--repeats`` times ``--steps`` steps each, and the best
time per step of each is kept (the noise of a shared machine only adds time). The
speed-up is the ratio to ``functional`` in the same run. It also checks that the
three leave the same parameters after the same three steps (float32 tolerance).

    python benchmarks/gemm_update.py [--threads 2] [--clients 10] [--model 2nn]
        [--json benchmarks/results/gemm_update.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedloom.core import Replicated
from fedloom.data import ClientData, load_dataset
from fedloom.learning import build_model, sgd
from fedloom.learning._cohort_work import (
    CohortStep,
    TrainingPlan,
    _own_code,
    plan_training,
)
from fedloom.runtimes import reuse_cpu_memory

LEARNING_RATE = 0.05
CHECKED_STEPS = 3


class Functional(CohortStep):
    """The compiled step returning new parameters (no in-place update, no fold)."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, sgd(LEARNING_RATE))
        self._compiled = torch.compile(_own_code(self._step), dynamic=True)

    def __call__(self, data, params, state, index, mask, masked):  # type: ignore[no-untyped-def]
        index, mask = index.contiguous(), mask.contiguous()
        return self._compiled(data.x, data.y, params, state, index, mask, masked)


class InPlace(CohortStep):
    """The runtime's compiled step without its compiler pass."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, sgd(LEARNING_RATE), compile=True)
        self._run = torch.compile(_own_code(self._step_in_place), dynamic=True)


def _run(step: CohortStep, plan: TrainingPlan, steps: int) -> dict[str, torch.Tensor]:
    params, state = step.begin(plan.start)
    for s in range(steps):
        index, mask = plan.batch_index[:, 0, s], plan.batch_mask[:, 0, s]
        params, state, _ = step(plan.data, params, state, index, mask, False)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--model", default="2nn")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/gemm_update.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    torch.set_num_threads(args.threads)
    dataset = load_dataset("fashion_mnist")
    clients = ClientData.from_dataset(dataset, "iid", 100, seed=0)
    model = build_model(args.model, dataset.input_shape, dataset.num_classes, seed=0)
    examples = [clients.client(i) for i in range(args.clients)]
    seeds = list(range(args.clients))
    plan = plan_training(
        Replicated(model.init(), args.clients),
        examples,
        seeds,
        1,
        10,
        torch.device("cpu"),
    )
    if args.steps > plan.batch_index.shape[2]:
        sys.exit(f"--steps: at most {plan.batch_index.shape[2]} (one epoch)")
    # Compiled afresh (not from inductor's on-disk cache), so "folded" counts.
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    variants = {
        "functional": Functional(model),
        "in place": InPlace(model),
        "in place + fold": CohortStep(model, sgd(LEARNING_RATE), compile=True),
    }
    # Compile each, then check that a few steps agree (after many, float32
    # rounding differences may flip a ReLU and the runs drift apart).
    results = {name: _run(step, plan, CHECKED_STEPS) for name, step in variants.items()}
    for params in results.values():
        for k, v in results["functional"].items():
            torch.testing.assert_close(params[k], v, rtol=1e-4, atol=1e-6)
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(args.repeats):
        for name, step in variants.items():
            started = time.perf_counter()
            _run(step, plan, args.steps)
            best[name] = min(best[name], (time.perf_counter() - started) / args.steps)
    rows = [
        {
            "variant": name,
            "ms_per_step": best[name] * 1e3,
            "speedup_vs_functional": best["functional"] / best[name],
            "folded": step.fold.folded if step.fold else 0,
        }
        for name, step in variants.items()
    ]
    print(f"{args.model}, {args.clients} clients, B = 10, {args.threads} thread(s)")
    print(f"{'variant':<18} {'ms/step':>8} {'speed-up':>9} {'folded':>7}")
    for row in rows:
        print(
            f"{row['variant']:<18} {row['ms_per_step']:8.3f}"
            f" {row['speedup_vs_functional']:8.2f}x {row['folded']:7d}"
        )
    record = {
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "workload": vars(args) | {"json": str(args.json)},
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
