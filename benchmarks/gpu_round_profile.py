"""Where a whole FedAvg round's time goes on a GPU, beyond its steps.

``gpu_profile.py`` times one captured step. On an H200, 300 compiled steps of 10
clients take 228 ms, and a round of them 284 to 316 ms (``gpu_speed.py``, 2026-11-27):
20 to 28 % of the round is not the steps. This script profiles whole rounds
of ``gpu_speed.py``'s workload (the McMahan CNN on Fashion-MNIST, 600 examples a
client, E = 5, B = 10) on ``VectorizedRuntime`` with captured CUDA graphs, after two
warm-up rounds (compilation and capture):

1. one round under ``cProfile``: the seconds of fedloom's own functions, cumulative
   (the plan and the data on the device, the epoch replays, the aggregation, the
   server update, the metrics), where a wait for the GPU shows as the time of the
   call that waits, and the functions with the most time of their own;
2. one round under ``torch.profiler``: the GPU's busy time (the union of its kernels'
   and copies' intervals) against the round's wall time, and the operators with the
   most CPU time of their own.

    python benchmarks/gpu_round_profile.py [--cohort 10] [--eager]
        [--json benchmarks/results/gpu_round_profile.json]
    python benchmarks/gpu_round_profile.py --device cpu --epochs 1   # a dry run
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
from pathlib import Path
from typing import Any

import torch
from gpu_speed import EPOCHS, POPULATION, _timed, cohort
from simulation_speed import BATCH_SIZE, LEARNING_RATE
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from fedloom.data import ClientData, load_dataset
from fedloom.learning import build_model, fed_avg
from fedloom.runtimes import VectorizedRuntime

TOP = 15


def _python_rows(stats: pstats.Stats) -> dict[str, list[dict[str, Any]]]:
    """fedloom's functions by cumulative time; all functions by their own time."""
    rows = [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "calls": calls,
            "own_s": own,
            "cumulative_s": cumulative,
            "fedloom": "fedloom" in file,
        }
        for (file, line, name), (_, calls, own, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    ours = sorted((r for r in rows if r["fedloom"]), key=lambda r: -r["cumulative_s"])
    own = sorted(rows, key=lambda r: -r["own_s"])
    return {"fedloom_cumulative": ours[:TOP], "own_time": own[:TOP]}


def _gpu_busy_s(prof: Any) -> tuple[float, float, int]:
    """The GPU's busy seconds (the union of its kernels' and copies' intervals), the
    sum of their durations, and their number. Only the GPU's own events count: a CPU
    operator's device time repeats its kernels' (summed over every event, the round
    of 2026-11-28 gave 638 ms of GPU time in 256 ms of wall time)."""
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == DeviceType.CUDA
    )
    busy, summed, reach = 0.0, 0.0, float("-inf")
    for start, end in spans:
        summed += end - start
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return busy / 1e6, summed / 1e6, len(spans)


def _torch_rows(prof: Any) -> dict[str, Any]:
    busy, summed, events = _gpu_busy_s(prof)
    cpu = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:TOP]
    return {
        "gpu_busy_s": busy,
        "gpu_event_s": summed,
        "gpu_events": events,
        "cpu_ops": [
            {"op": e.key, "calls": e.count, "own_cpu_s": e.self_cpu_time_total / 1e6}
            for e in cpu
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--eager", action="store_true", help="without torch.compile")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/gpu_round_profile.json")
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = load_dataset("fashion_mnist")
    clients = ClientData.from_dataset(dataset, "iid", POPULATION, seed=0)
    model = build_model("cnn", dataset.input_shape, dataset.num_classes, seed=0)
    process = fed_avg(
        model,
        client_learning_rate=LEARNING_RATE,
        local_epochs=args.epochs,
        batch_size=BATCH_SIZE,
    )
    runtime = VectorizedRuntime(
        device, cuda_graphs=device.type == "cuda", compile=not args.eager
    )
    state = process.init()

    def round(number: int) -> float:
        nonlocal state
        (state, _), seconds = _timed(
            device,
            lambda: process.next(
                state, cohort(clients, args.cohort, number), runtime=runtime
            ),
        )
        return seconds

    warm = [round(0), round(1)]
    python = cProfile.Profile()
    python.enable()
    python_round = round(2)
    python.disable()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        torch_round = round(3)
    plain = round(4)  # neither profiler's overhead
    report = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu",
        "torch": torch.__version__,
        "cohort": args.cohort,
        "epochs": args.epochs,
        "compiled": not args.eager,
        "warm_up_rounds_s": warm,
        "round_s": plain,
        "round_under_cprofile_s": python_round,
        "round_under_torch_profiler_s": torch_round,
        **_python_rows(pstats.Stats(python)),
        **_torch_rows(prof),
    }
    print(
        f"{report['device']}, {args.cohort} clients, E = {args.epochs}: a round "
        f"{plain * 1e3:.1f} ms ({python_round * 1e3:.1f} under cProfile, "
        f"{torch_round * 1e3:.1f} under torch.profiler, in which the GPU was busy "
        f"{report['gpu_busy_s'] * 1e3:.1f} ms: {report['gpu_events']} kernels and "
        f"copies of {report['gpu_event_s'] * 1e3:.1f} ms in all)"
    )
    print("fedloom's functions, cumulative ms (calls):")
    for row in report["fedloom_cumulative"]:
        print(f"  {row['cumulative_s'] * 1e3:9.1f}  {row['function']} ({row['calls']})")
    print("functions with the most time of their own, ms (calls):")
    for row in report["own_time"]:
        print(f"  {row['own_s'] * 1e3:9.1f}  {row['function']} ({row['calls']})")
    print("operators with the most CPU time of their own, ms (calls):")
    for row in report["cpu_ops"]:
        print(f"  {row['own_cpu_s'] * 1e3:9.1f}  {row['op']} ({row['calls']})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
