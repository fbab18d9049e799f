"""Claim: each change to the compiled cohort step made it faster.

Times one compiled step of the vectorized runtime (a cohort of Fashion-MNIST
clients, B = 10, lr 0.05, SGD or ``--optimizer momentum`` (beta 0.9), the 2NN by
default) in eight variants, one process:

- ``functional, dynamic``: the step returns new parameters, every dimension
  symbolic (``torch.compile(dynamic=True)``), as the step was first compiled;
- ``in place, dynamic``: the step writes the new parameters into its own;
- ``+ fold``: with ``FoldUpdateIntoGemm`` (``w.baddbmm_(a, b, alpha=-lr)`` for each
  linear layer's weight, or with momentum ``v.baddbmm_(a, b, beta=0.9)`` for its
  velocity: the gradient never stored);
- ``+ static shapes``: shapes static until one changes (``torch.compile``'s
  default), so fewer guards run before each call;
- ``+ cpp_wrapper``: the calls between kernels made from C++ rather than Python,
  as the runtime compiles it (``fedloom.learning._cohort_work.compile_step``);
- ``+ 5 steps a call``: five steps unrolled into each compiled call
  (``steps_per_call=5``), so the call's overhead is paid once for five;
- ``+ deferred first layer``: in those five steps, the forward products of the
  layer fed by the data (the 2NN's first) as one product, and its five updates
  as one at the end (``fedloom.learning._defer_update``; SGD only);
- ``+ PyTorch layouts kept``: inductor's ``layout_optimization`` off, so a model
  with convolutions (``--model cnn``) is not laid out channels-last (a model
  without them compiles the same), as the runtime compiles it.

The variants take turns, ``--repeats`` times ``--steps`` steps each, and the best
time per step of each is kept (the noise of a shared machine only adds time). Each
speed-up is the ratio to the first variant and to the one before, in the same run.
It also checks that all leave the same parameters after the same three steps
(float32 tolerance). ``--steps`` must be a multiple of 5.

To say how close a step comes to what the CPU can do, it also counts the step's
floating-point operations (``torch.utils.flop_counter`` on the eager step: its
batched matrix products) and measures, in the same run, the rate of one large
float32 matrix product (2048 x 2048 x 2048, best of 5) at the same thread count;
each variant's GFLOP/s is given as a share of that rate.

    python benchmarks/compiled_step.py [--threads 2] [--clients 10] [--model 2nn]
        [--optimizer sgd|momentum]
        [--steps 20] [--repeats 40] [--json benchmarks/results/compiled_step.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from benchmarks.simulation_speed import fashion_mnist_clients
from benchmarks.turns import best_per_step
from fedloom.core import Replicated
from fedloom.data import ClientData
from fedloom.learning import build_model, momentum, sgd
from fedloom.learning._cohort_work import (
    CohortStep,
    TrainingPlan,
    _own_code,
    plan_training,
)
from fedloom.learning._gemm_update import FoldUpdateIntoGemm
from fedloom.runtimes import reuse_cpu_memory

LEARNING_RATE = 0.05
OPTIMIZERS = {"sgd": sgd, "momentum": momentum}  # momentum: beta 0.9
CHECKED_STEPS = 5


class Variant(CohortStep):
    """The cohort step compiled with the given settings."""

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        *,
        in_place: bool,
        fold: bool,
        static: bool,
        cpp: bool,
        steps_per_call: int = 1,
        defer: bool = True,
        keep_layouts: bool = True,
    ) -> None:
        super().__init__(model, optimizer, compile=True, steps_per_call=steps_per_call)
        self.in_place = in_place
        if in_place and fold and static and cpp and defer and keep_layouts:
            return  # the runtime's own compile_step
        self.fold = FoldUpdateIntoGemm(defer=defer) if fold else None
        options: dict[str, Any] = {"cpp_wrapper": cpp, "layout_optimization": False}
        if not keep_layouts:
            del options["layout_optimization"]  # inductor's default: on
        if self.fold is not None:
            options["post_grad_custom_post_pass"] = self.fold
        method = self._step_in_place if in_place else self._step
        dynamic = None if static else True
        self._run = torch.compile(_own_code(method), dynamic=dynamic, options=options)
        self._run_steps = torch.compile(
            _own_code(self._steps_in_place), dynamic=dynamic, options=options
        )

    def __call__(self, data, params, state, index, mask, masked):  # type: ignore[no-untyped-def]
        if self.in_place:
            return super().__call__(data, params, state, index, mask, masked)
        index, mask = index.contiguous(), mask.contiguous()
        return self._run(data.x, data.y, params, state, index, mask, masked)


_EARLIER = dict(keep_layouts=False)  # the forms before "+ PyTorch layouts kept"
VARIANTS = {
    "functional, dynamic": dict(
        in_place=False, fold=False, static=False, cpp=False, **_EARLIER
    ),
    "in place, dynamic": dict(
        in_place=True, fold=False, static=False, cpp=False, **_EARLIER
    ),
    "+ fold": dict(in_place=True, fold=True, static=False, cpp=False, **_EARLIER),
    "+ static shapes": dict(
        in_place=True, fold=True, static=True, cpp=False, **_EARLIER
    ),
    "+ cpp_wrapper": dict(in_place=True, fold=True, static=True, cpp=True, **_EARLIER),
    "+ 5 steps a call": dict(
        in_place=True,
        fold=True,
        static=True,
        cpp=True,
        steps_per_call=5,
        defer=False,
        **_EARLIER,
    ),
    "+ deferred first layer": dict(
        in_place=True, fold=True, static=True, cpp=True, steps_per_call=5, **_EARLIER
    ),
    "+ PyTorch layouts kept": dict(
        in_place=True, fold=True, static=True, cpp=True, steps_per_call=5
    ),
}


def _conv_backward_flops(
    grad_out_shape: Any,
    x_shape: Any,
    w_shape: Any,
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Any,
    *_: Any,
    **__: Any,
) -> int:
    """Each gradient a convolution's backward computes costs what its forward does.
    (torch's own formula counts a grouped convolution's weight gradient once for
    every group: ten times over for the cohort's convolutions.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _step_flops(model: Any, optimizer: Any, plan: TrainingPlan) -> int:
    """Floating-point operations of one cohort step (counted on the eager step)."""
    step = CohortStep(model, optimizer)
    params, state = step.begin(plan.start)
    index, mask = plan.batch_index[:, 0, 0], plan.batch_mask[:, 0, 0]
    corrected = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=corrected) as counter:
        step(plan.data, params, state, index, mask, False)
    return int(counter.get_total_flops())


def _matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one large float32 matrix product, best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def cohort_plan(model: Any, clients: ClientData, count: int) -> TrainingPlan:
    """An epoch of B = 10 for the first ``count`` of ``clients`` (client i seeded
    with i) from ``model``'s initial parameters, on the CPU."""
    examples = [clients.client(i) for i in range(count)]
    start = Replicated(model.init(), count)
    return plan_training(start, examples, range(count), 1, 10, torch.device("cpu"))


def assert_same(
    results: list[dict[str, torch.Tensor]], rtol: float = 0.0, atol: float = 0.0
) -> None:
    """Every parameter tree of ``results`` equals the first (bit for bit unless
    given a tolerance)."""
    for params in results[1:]:
        for k, v in results[0].items():
            torch.testing.assert_close(params[k], v, rtol=rtol, atol=atol)


def run_steps(
    step: CohortStep, plan: TrainingPlan, steps: int
) -> dict[str, torch.Tensor]:
    """The parameters after ``steps`` steps from ``plan``'s start, as
    :func:`cohort_local_training` runs them (``steps_per_call`` at a time)."""
    params, state = step.begin(plan.start)
    if step.steps_per_call > 1:  # as cohort_local_training runs it
        k = step.steps_per_call
        for s in range(0, steps, k):
            index, mask = (
                plan.batch_index[:, 0, s : s + k],
                plan.batch_mask[:, 0, s : s + k],
            )
            step.steps(plan.data, params, state, index, mask)
        return params
    for s in range(steps):
        index, mask = plan.batch_index[:, 0, s], plan.batch_mask[:, 0, s]
        params, state, _ = step(plan.data, params, state, index, mask, False)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--model", default="2nn")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/compiled_step.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    torch.set_num_threads(args.threads)
    dataset, clients = fashion_mnist_clients()
    model = build_model(args.model, dataset.input_shape, dataset.num_classes, seed=0)
    plan = cohort_plan(model, clients, args.clients)
    if args.steps > plan.batch_index.shape[2] or args.steps % 5:
        sys.exit(f"--steps: a multiple of 5, at most {plan.batch_index.shape[2]}")
    # Compiled afresh (not from inductor's on-disk cache), so "folded" counts.
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    optimizer = OPTIMIZERS[args.optimizer](LEARNING_RATE)
    variants = {
        name: Variant(model, optimizer, **how) for name, how in VARIANTS.items()
    }
    # Compile each, then check that a few steps agree (after many, float32
    # rounding differences may flip a ReLU and the runs drift apart).
    results, compile_seconds = {}, {}
    for name, step in variants.items():
        started = time.perf_counter()
        results[name] = run_steps(step, plan, CHECKED_STEPS)
        compile_seconds[name] = time.perf_counter() - started
    assert_same(list(results.values()), rtol=1e-4, atol=1e-6)
    runs = {
        name: lambda step=step: run_steps(step, plan, args.steps)
        for name, step in variants.items()
    }
    best = best_per_step(runs, args.steps, args.repeats)
    names = list(variants)
    first = names[0]
    flops, matmul = _step_flops(model, optimizer, plan), _matmul_rate()
    rows = [
        {
            "variant": name,
            "ms_per_step": best[name] * 1e3,
            "speedup_vs_first": best[first] / best[name],
            "speedup_vs_previous": best[names[max(i - 1, 0)]] / best[name],
            "folded": variants[name].fold.folded if variants[name].fold else 0,
            "deferred": variants[name].fold.deferred if variants[name].fold else 0,
            "first_steps_seconds": compile_seconds[name],
            "gflop_per_s": flops / best[name] / 1e9,
            "share_of_matmul_rate": flops / best[name] / matmul,
        }
        for i, name in enumerate(names)
    ]
    print(
        f"{args.model}, {args.optimizer}, {args.clients} clients, B = 10,"
        f" {args.threads} thread(s):"
        f" {flops / 1e6:.1f} MFLOP a step; a 2048^3 float32 matrix product runs at"
        f" {matmul / 1e9:.0f} GFLOP/s"
    )
    print(
        f"{'variant':<22} {'ms/step':>8} {'vs first':>9} {'vs previous':>12}"
        f" {'folded':>7} {'deferred':>9} {'compile s':>10} {'GFLOP/s':>8}"
        f" {'of matmul':>10}"
    )
    for row in rows:
        print(
            f"{row['variant']:<22} {row['ms_per_step']:8.3f}"
            f" {row['speedup_vs_first']:8.2f}x {row['speedup_vs_previous']:11.2f}x"
            f" {row['folded']:7d} {row['deferred']:9d}"
            f" {row['first_steps_seconds']:10.1f}"
            f" {row['gflop_per_s']:8.1f} {row['share_of_matmul_rate']:9.0%}"
        )
    write_record(args.json, args, step_flops=flops, matmul_flop_per_s=matmul, rows=rows)


if __name__ == "__main__":
    main()
