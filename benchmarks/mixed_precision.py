"""Claim: bfloat16 mixed precision (``autocast``) trains the McMahan CNN faster on a
CPU with bfloat16 units, to about the same accuracy.

Two measurements on Fashion-MNIST, the CNN, 10 IID clients of 600 examples, B = 10,
SGD at lr 0.05, in one process:

1. Step times: one epoch (60 steps of the cohort, 600 client steps) of the plain
   PyTorch loop (``simulation_speed.py``'s; for bfloat16 each step's forward pass
   and loss under ``torch.autocast``, PyTorch's recipe), of the vectorized
   runtime's eager step and of its compiled step,
   each in float32 and in bfloat16, timed in turns (best of ``--repeats`` epochs),
   as milliseconds per cohort step and as a ratio to the float32 loop.
2. Accuracy: ``--rounds`` FedAvg rounds (C = 0.1 of 100 clients, E = 5) on the
   compiled vectorized runtime, in float32 and in bfloat16 from the same start and
   seed, the test accuracy after each round (one seed: a check that bfloat16 trains
   as well here, not a measurement of its spread).

The CPU's bfloat16 instructions (``amx_bf16``, ``avx512_bf16`` in /proc/cpuinfo) are
recorded: without them bfloat16 runs emulated and slower.

    python benchmarks/mixed_precision.py [--threads 1] [--repeats 3] [--rounds 3]
        [--json benchmarks/results/mixed_precision.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compiled_step import cohort_plan, run_steps
from benchmarks.records import write_record
from benchmarks.simulation_speed import (
    LEARNING_RATE,
    fashion_mnist_clients,
    torch_loop_round,
)
from benchmarks.turns import best_per_step
from fedloom.experiments import client_seed, sample_cohort
from fedloom.learning import ClientInput, build_model, evaluate, fed_avg, sgd
from fedloom.learning._cohort_work import CohortStep
from fedloom.runtimes import VectorizedRuntime, reuse_cpu_memory

CLIENTS = 10
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def cpu_bfloat16_flags() -> list[str]:
    """The CPU's bfloat16 instruction sets, as /proc/cpuinfo names them."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if "bf16" in f})


def step_times(repeats: int) -> dict[str, float]:
    """Seconds per cohort step of each form of training, in both precisions."""
    dataset, clients = fashion_mnist_clients()
    runs: dict[str, Callable[[], Any]] = {}
    steps = 0
    for precision, dtype in PRECISIONS.items():
        model = build_model(
            "cnn", dataset.input_shape, dataset.num_classes, seed=0, autocast=dtype
        )
        plan = cohort_plan(model, clients, CLIENTS)
        steps = plan.batch_index.shape[2]
        inputs = [ClientInput(clients.client(i), i) for i in range(CLIENTS)]
        plain = build_model("cnn", dataset.input_shape, dataset.num_classes, seed=0)
        runs[f"loop {precision}"] = _loop(plain, inputs, dtype)
        for form, compile in (("eager", False), ("compiled", True)):
            step = CohortStep(model, sgd(LEARNING_RATE), compile=compile)
            runs[f"{form} {precision}"] = partial(run_steps, step, plan, steps)
    for run in runs.values():  # warm-up (compiled: the compilation)
        run()
    return best_per_step(runs, steps, repeats)


def _loop(model: Any, inputs: list[ClientInput], dtype: Any) -> Callable[[], Any]:
    start = model.init()
    return lambda: torch_loop_round(model, start, inputs, 1, autocast=dtype)


def accuracy_by_round(rounds: int) -> dict[str, list[float]]:
    """Test accuracy after each FedAvg round, compiled vectorized, per precision."""
    dataset, clients = fashion_mnist_clients()
    curves = {}
    for precision, dtype in PRECISIONS.items():
        model = build_model(
            "cnn", dataset.input_shape, dataset.num_classes, seed=0, autocast=dtype
        )
        process = fed_avg(
            model, client_learning_rate=LEARNING_RATE, local_epochs=5, batch_size=10
        )
        runtime = VectorizedRuntime(compile=True)
        state, accuracies = process.init(), []
        for r in range(rounds):
            ids = sample_cohort(len(clients), CLIENTS, seed=0, round=r)
            cohort = [
                ClientInput(clients.client(int(i)), client_seed(0, r, int(i)))
                for i in ids
            ]
            state, _ = process.next(state, cohort, runtime=runtime)
            accuracy = evaluate(model, state.params, dataset.test)["accuracy"]
            accuracies.append(float(accuracy))
            print(f"  {precision} round {r + 1}: test accuracy {accuracy:.4f}")
        curves[precision] = accuracies
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/mixed_precision.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    torch.set_num_threads(args.threads)
    flags = cpu_bfloat16_flags()
    print(f"CPU bfloat16 instructions: {', '.join(flags) or 'none'}")
    seconds = step_times(args.repeats)
    base = seconds["loop float32"]
    print(f"CNN, {CLIENTS} clients, B = 10, {args.threads} thread(s): a cohort step")
    print(f"{'form':<20}{'ms':>9}{'vs float32 loop':>17}")
    for name, value in seconds.items():
        print(f"{name:<20}{value * 1e3:>9.2f}{base / value:>16.2f}x")
    curves = accuracy_by_round(args.rounds)
    write_record(
        args.json,
        args,
        cpu_bfloat16_flags=flags,
        ms_per_cohort_step={k: v * 1e3 for k, v in seconds.items()},
        speedup_over_float32_loop={k: base / v for k, v in seconds.items()},
        test_accuracy_by_round=curves,
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
