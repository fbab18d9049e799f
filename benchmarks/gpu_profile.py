"""Where a vectorized CNN step spends its GPU time, and what precision would buy.

For a cohort of ``--cohort`` McMahan CNN clients (B = 10 examples each), this
(1) profiles eager vmapped training steps and prints the kernels that take the most
GPU time, grouped by name; (2) times one step (gradient by ``vmap(grad)`` and the SGD
update, captured as a CUDA graph and replayed) in float32 as PyTorch runs it by
default (cuDNN convolutions in TF32), with TF32 matmuls too, and under bf16
autocast, reporting each as a ratio to the default.

    python benchmarks/gpu_profile.py [--cohort 10 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from fedloom.data import Examples
from fedloom.learning import build_model, sgd
from fedloom.learning._cohort_work import CohortStep, PaddedCohort

BATCH = 10


def _setup(cohort: int) -> tuple[CohortStep, PaddedCohort, dict[str, torch.Tensor]]:
    model = build_model("cnn", (1, 28, 28), 10, seed=0)
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
    return CohortStep(model, sgd(0.05)), data, params


def profile_kernels(cohort: int, steps: int = 20) -> list[dict[str, Any]]:
    step, data, params = _setup(cohort)
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
    events = prof.key_averages()
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
    return rows


def time_step(cohort: int, mode: str, replays: int = 50) -> float:
    """The mean time of one step over ``replays`` graph replays, in ms."""
    step, data, params = _setup(cohort)
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
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/gpu_profile.json")
    )
    args = parser.parse_args()
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cohorts": {},
    }
    for cohort in args.cohort:
        try:
            kernels = profile_kernels(cohort)
        except Exception as error:  # keep going: the timings may still run
            print(f"cohort {cohort}: profiling failed: {error!r}")
            kernels = []
        print(f"\ncohort {cohort}: top kernels of an eager step (GPU time)")
        for k in kernels:
            print(
                f"  {k['us_per_step']:9.1f} us {k['share']:6.1%} "
                f"x{k['calls_per_step']:<4.0f} {k['kernel']}"
            )
        modes = ["float32 (default)", "tf32", "bf16"]
        times: dict[str, float] = {}
        for mode in modes:
            try:
                times[mode] = time_step(cohort, mode)
            except Exception as error:
                print(f"cohort {cohort} {mode}: failed: {error!r}")
        base = times.get(modes[0], float("nan"))
        print(f"cohort {cohort}: one captured step, ms (ratio to default)")
        for mode, ms in times.items():
            print(f"  {mode:<18} {ms:8.3f} ms  {base / ms:5.2f}x")
        report["cohorts"][str(cohort)] = {"kernels": kernels, "step_ms": times}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
