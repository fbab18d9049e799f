"""Where a vectorized CNN step spends its GPU time, and what precision would buy.

For a cohort of ``--cohort`` McMahan CNN clients (B = 10 examples each), this
(1) profiles eager vmapped training steps and prints the kernels that take the most
GPU time, grouped by name, with the kernel launches and the GPU time of a step in
all; (2) times one step (gradient by ``vmap(grad)`` and the SGD update, captured as a
CUDA graph and replayed) in float32 as PyTorch runs it by default (cuDNN
convolutions in TF32), with TF32 matmuls too, and under bf16 autocast, reporting
each as a ratio to the default.

``--convs cudnn triton`` does both for the model as it is (its convolutions are
cuDNN's grouped ones under ``vmap``) and with its convolutions routed to
``benchmarks/triton_client_conv.py``'s kernels (``client_conv_op.swap_convs``, as
``gpu_speed.py``'s ``graphs triton-conv`` row): with the convolutions down to a
launch each, what the rest of the step costs, and in how many launches.
``compiled`` is the model as it is with the step through ``torch.compile``, as
``VectorizedRuntime("cuda", compile=True)`` runs it (inductor's kernels; the eager
profile is of the compiled step, called step by step), and ``compiled-triton`` the
same with the step's convolutions routed to the Triton kernels by
``benchmarks/compiled_client_conv.py``'s compiler pass (as ``gpu_speed.py``'s
``graphs compiled triton-conv flat`` row).

    python benchmarks/gpu_profile.py [--cohort 10 100]
        [--convs cudnn triton compiled compiled-triton] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from fedloom.data import Examples
from fedloom.learning import FunctionalModel, build_model, sgd
from fedloom.learning._cohort_work import CohortStep, PaddedCohort

BATCH = 10
CONVS = ("cudnn", "triton", "compiled", "compiled-triton")


def _model(convs: str) -> FunctionalModel:
    """The McMahan CNN, its convolutions cuDNN's or ``client_conv_op``'s."""
    model = build_model("cnn", (1, 28, 28), 10, seed=0)
    if convs in ("cudnn", "compiled", "compiled-triton"):
        return model
    sys.path.insert(0, str(Path(__file__).parent))
    import client_conv_op  # beside this file; imports Triton if it can

    if not client_conv_op.uses_triton(torch.zeros(1, device="cuda")):
        raise RuntimeError("Triton's kernels cannot run here")
    tiling = client_conv_op.kernels.Tiling(rows=64, flat=False)  # gpu_speed.py's
    module, _ = client_conv_op.swap_convs(model.module, tiling)
    return FunctionalModel(module)


def _setup(
    cohort: int, convs: str
) -> tuple[CohortStep, PaddedCohort, dict[str, torch.Tensor]]:
    model = _model(convs)
    generator = torch.Generator().manual_seed(0)
    examples = [
        Examples(
            torch.rand(BATCH, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (BATCH,), generator=generator),
        )
        for _ in range(cohort)
    ]
    data = PaddedCohort(examples, torch.device("cuda"))
    params = {
        k: v.cuda().expand(cohort, *v.shape).clone() for k, v in model.init().items()
    }
    # compiled with the runtime's CUDA options (no C++ wrapper)
    compiled = convs.startswith("compiled")
    routing: Any = contextlib.nullcontext()
    if convs == "compiled-triton":
        sys.path.insert(0, str(Path(__file__).parent))
        import compiled_client_conv  # beside this file

        kernels = compiled_client_conv.op.kernels
        if kernels is None:
            raise RuntimeError("Triton's kernels cannot run here")
        tiling = kernels.Tiling(rows=64, flat=True)  # gpu_speed.py's
        routing = compiled_client_conv.routing(1, tiling)
    with routing:  # the pass takes its settings when the step is made
        step = CohortStep(model, sgd(0.05), compile=compiled, cpp_wrapper=False)
    return step, data, params


def profile_kernels(
    cohort: int, convs: str, steps: int = 20
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The top kernels of an eager step, and the step's kernel launches and GPU
    time in all."""
    step, data, params = _setup(cohort, convs)
    index = torch.arange(BATCH, device="cuda").expand(cohort, BATCH).contiguous()
    mask = torch.ones(cohort, BATCH, dtype=torch.bool, device="cuda")
    state = step.init(params)
    for _ in range(3):
        params, state, _ = step(data, params, state, index, mask, False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            params, state, _ = step(data, params, state, index, mask, False)
        torch.cuda.synchronize()
    rows = []
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events) or 1.0
    for e in sorted(events, key=lambda e: -e.device_time_total)[:15]:
        rows.append(
            {
                "kernel": e.key[:110],
                "calls_per_step": e.count / steps,
                "us_per_step": e.device_time_total / steps,
                "share": e.device_time_total / total,
            }
        )
    launches = sum(e.count for e in events) / steps
    return rows, {"launches_per_step": launches, "gpu_us_per_step": total / steps}


def time_step(cohort: int, convs: str, mode: str, replays: int = 50) -> float:
    """The mean time of one step over ``replays`` graph replays, in ms."""
    step, data, params = _setup(cohort, convs)
    index = torch.arange(BATCH, device="cuda").expand(cohort, BATCH).contiguous()
    mask = torch.ones(cohort, BATCH, dtype=torch.bool, device="cuda")
    state = step.init(params)
    torch.backends.cuda.matmul.allow_tf32 = mode != "float32 (default)"
    autocast = torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=mode == "bf16", cache_enabled=False
    )

    def run() -> None:
        with autocast:
            new, _, _ = step(data, params, state, index, mask, False)
        for k, v in new.items():
            params[k].copy_(v)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
    graph.replay()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    torch.backends.cuda.matmul.allow_tf32 = False
    return start.elapsed_time(end) / replays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--convs", nargs="+", choices=CONVS, default=["cudnn"])
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/gpu_profile.json")
    )
    args = parser.parse_args()
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "runs": [],
    }
    for cohort in args.cohort:
        for convs in args.convs:
            _run(report, cohort, convs)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")


def _run(report: dict[str, Any], cohort: int, convs: str) -> None:
    """Profile and time a ``cohort`` with ``convs`` convolutions into ``report``."""
    label = f"cohort {cohort}, {convs} convolutions"
    try:
        kernels, totals = profile_kernels(cohort, convs)
    except Exception as error:  # keep going: the timings may still run
        print(f"{label}: profiling failed: {error!r}")
        kernels, totals = [], {}
    print(f"\n{label}: top kernels of an eager step (GPU time)")
    for k in kernels:
        print(
            f"  {k['us_per_step']:9.1f} us {k['share']:6.1%} "
            f"x{k['calls_per_step']:<4.0f} {k['kernel']}"
        )
    if totals:
        print(
            f"  in all: {totals['launches_per_step']:.0f} launches,"
            f" {totals['gpu_us_per_step']:.1f} us of GPU time a step"
        )
    modes = ["float32 (default)", "tf32", "bf16"]
    times: dict[str, float] = {}
    for mode in modes:
        try:
            times[mode] = time_step(cohort, convs, mode)
        except Exception as error:
            print(f"{label} {mode}: failed: {error!r}")
    base = times.get(modes[0], float("nan"))
    print(f"{label}: one captured step, ms (ratio to default)")
    for mode, ms in times.items():
        print(f"  {mode:<18} {ms:8.3f} ms  {base / ms:5.2f}x")
    report["runs"].append(
        {
            "cohort": cohort,
            "convs": convs,
            "kernels": kernels,
            **totals,
            "step_ms": times,
        }
    )


if __name__ == "__main__":
    main()
