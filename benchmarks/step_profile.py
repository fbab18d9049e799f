"""Claim: where the cohort step spends the time that a plain loop does not.

Profiles one epoch of the vectorized runtime's FedAvg step (``CohortStep``, 10
Fashion-MNIST clients of 600 examples, B = 10, SGD, lr 0.05: 60 cohort steps),
eager or with ``--compiled``, and the same epoch of ``simulation_speed.py``'s plain
PyTorch loop (``nn.Module`` + ``torch.optim.SGD``, client after client: 600 client
steps) with ``torch.profiler``, and gives each operator's self CPU time per cohort
step (ten client steps) in both, largest difference first. Before profiling, each
is timed without the profiler (best of ``--repeats`` epochs, taking turns), so the
table's totals can be set against the real step times. glibc keeps freed memory
(``reuse_cpu_memory``), as ``fedloom run`` does.

Compiled, the step is built as the runtime builds it except that the calls between
kernels stay in Python (``cpp_wrapper`` off) and inductor records each of its own
kernels (``cpp.enable_kernel_profile``), so that they appear in the profile by name
(``graph_0_cpp_fused_...``, named after the operations fused into them); its timed
step is that variant's too.

    python benchmarks/step_profile.py [--model cnn] [--threads 1] [--compiled]
        [--rows 14] [--repeats 3]
        [--json benchmarks/results/step_profile_cnn_1thread[_compiled].json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compiled_step import cohort_plan, run_steps
from benchmarks.records import write_record
from benchmarks.simulation_speed import (
    LEARNING_RATE,
    fashion_mnist_clients,
    torch_loop_round,
)
from benchmarks.turns import best_per_step
from fedloom.learning import ClientInput, build_model, sgd
from fedloom.learning import _cohort_work as cohort_work
from fedloom.learning._cohort_work import CohortStep
from fedloom.runtimes import reuse_cpu_memory

CLIENTS = 10
# The loop's linear layers run as addmm/mm, the cohort's as bmm: one row for both.
PRODUCTS = "matrix products (mm, addmm, bmm)"
GROUPS = {"aten::mm": PRODUCTS, "aten::addmm": PRODUCTS, "aten::bmm": PRODUCTS}


def profile_compiled_kernels() -> None:
    """Make the runtime's compiled step show its kernels in the profile: inductor
    records each, and the calls between them stay in Python (``cpp_wrapper`` off,
    which ``compile_step`` turns on)."""
    import torch._inductor.config as inductor

    inductor.cpp.enable_kernel_profile = True
    compile_options = dict(cohort_work.COMPILE_OPTIONS, cpp_wrapper=False)
    cohort_work.COMPILE_OPTIONS = compile_options


def self_ms_by_operator(run: Any, steps: int) -> dict[str, float]:
    """Each operator's self CPU time in one run of ``run``, ms per step (the
    matrix products as one, see ``GROUPS``)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    times: dict[str, float] = {}
    for e in prof.key_averages():
        name = GROUPS.get(e.key, e.key)
        times[name] = times.get(name, 0.0) + e.self_cpu_time_total / 1e3 / steps
    return {name: ms for name, ms in times.items() if ms > 0}


def short(name: str, width: int = 44) -> str:
    """``name`` cut to ``width`` characters, keeping its end (a fused kernel's
    name lists its operations and ends with its number; the JSON keeps it whole)."""
    return name if len(name) <= width else f"{name[: width - 9]}...{name[-6:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--rows", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.json is None:
        form = "_compiled" if args.compiled else ""
        name = f"step_profile_{args.model}_{args.threads}thread{form}.json"
        args.json = Path("benchmarks/results") / name
    reuse_cpu_memory()
    torch.set_num_threads(args.threads)
    dataset, clients = fashion_mnist_clients()
    model = build_model(args.model, dataset.input_shape, dataset.num_classes, seed=0)
    plan = cohort_plan(model, clients, CLIENTS)
    steps = plan.batch_index.shape[2]
    if args.compiled:
        profile_compiled_kernels()
    step = CohortStep(model, sgd(LEARNING_RATE), compile=args.compiled)

    start = model.init()
    inputs = [ClientInput(clients.client(i), i) for i in range(CLIENTS)]
    runs = {
        "cohort": lambda: run_steps(step, plan, steps),
        "loop": lambda: torch_loop_round(model, start, inputs, 1),
    }
    for run in runs.values():  # warm-up (compiled: the compilation)
        run()
    timed = best_per_step(runs, steps, args.repeats)
    profiled = {name: self_ms_by_operator(run, steps) for name, run in runs.items()}
    names = set(profiled["cohort"]) | set(profiled["loop"])
    rows = sorted(
        (
            {
                "operator": n,
                "cohort_ms": profiled["cohort"].get(n, 0.0),
                "loop_ms": profiled["loop"].get(n, 0.0),
            }
            for n in names
        ),
        key=lambda r: -abs(r["cohort_ms"] - r["loop_ms"]),
    )
    print(
        f"{args.model}, {CLIENTS} clients, B = 10, SGD, {args.threads} thread(s), "
        f"{'compiled' if args.compiled else 'eager'}: "
        f"ms a cohort step ({CLIENTS} client steps)"
    )
    print(f"{'operator':<44} {'cohort':>8} {'loop':>8} {'cohort - loop':>14}")
    for r in rows[: args.rows]:
        cohort, loop = r["cohort_ms"], r["loop_ms"]
        name = short(r["operator"])
        print(f"{name:<44} {cohort:8.2f} {loop:8.2f} {cohort - loop:14.2f}")
    totals = {k: sum(v.values()) for k, v in profiled.items()}
    print(
        f"{'all operators (profiled)':<44} {totals['cohort']:8.2f} "
        f"{totals['loop']:8.2f} {totals['cohort'] - totals['loop']:14.2f}"
    )
    ms = {k: v * 1e3 for k, v in timed.items()}
    print(
        f"{'step time, not profiled':<44} {ms['cohort']:8.2f} {ms['loop']:8.2f} "
        f"{ms['cohort'] - ms['loop']:14.2f}   (loop/cohort "
        f"{ms['loop'] / ms['cohort']:.2f}x)"
    )
    write_record(
        args.json,
        args,
        ms_per_step=ms,
        profiled_ms_per_step=totals,
        operators=rows,
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
