"""Claim: the chunk size that trains a cohort fastest depends on B and the device.

Under ``vmap`` a convolution with per-client weights becomes a grouped convolution
(a group per client), which cuDNN runs as one small kernel per client
(``benchmarks/gpu_profile.py``). With ``chunk_size = 1`` the vectorized runtime
computes one client at a time: plain convolutions over that client's batch. Which
is faster was measured, not assumed (README, "The command line"): on the 2-core CPU
one client at a time wins at B = ∞ and loses at B = 10; on an H200 the whole cohort
wins at B = 10 and 50, and B = ∞ is level within the noise. With ``--compile``
(FedAvg's step; FedSGD's one gradient is never compiled), where no per-operation
dispatch is left to share, small chunks win on the CPU at B = 10 too. ``auto``
among ``--chunks`` is the runtime's own choice when not given one (``chunk_size``
left out: for FedAvg compiled on the CPU, as many clients as hold 8 MiB of
parameters a torch thread, ``fedloom.learning._cohort_work.clients_at_once_compiled``;
eager on the CPU, where that is one or two, none at once: client by client,
unbatched), which the table shows beside the chunk it came to (0 for none). The
McMahan sweep on a GPU (``benchmarks/mcmahan2017/gpu.sh``) runs each (algorithm, B)
at the chunk size :func:`fastest_chunk_sizes` picks from this script's report for
that GPU.

Workload: the McMahan et al. 2017 CNN on Fashion-MNIST, 100 IID clients, C = 0.1,
the vectorized runtime (CUDA graphs on a GPU), one local epoch at each batch size
(FedSGD, and FedAvg at B = ∞, 50, 10), for each chunk size. A row is the mean
seconds of ``--rounds`` rounds of training after a first, untimed one (which
captures the graphs), from the run's own records; the test set is evaluated only
after the last round and that round is not averaged. The ratio is to the first of
``--chunks`` (by default 10, the whole cohort at once) in the same run. Each row
records its torch threads (``--threads``; by default the vectorized runtime's, every
core).

    python benchmarks/chunk_size.py --device cuda [--chunks 10 5 2 1] [--rounds 3]
        [--json benchmarks/results/chunk_size_nvidia_h200.json]
    python benchmarks/chunk_size.py --compile --chunks 10 auto 5 2 1
        --threads 1 --json benchmarks/results/chunk_size_compiled_1thread.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.fedavg_vs_fedsgd import command_line
from benchmarks.mcmahan2017 import cells as grid
from fedloom.core import Replicated
from fedloom.experiments import config_from_dict, run_experiment
from fedloom.learning import build_model
from fedloom.learning._client_work import EAGER_BATCHED_FROM
from fedloom.learning._cohort_work import clients_at_once_compiled

COHORT = round(grid.NUM_CLIENTS * grid.CLIENT_FRACTION)  # clients a round
WORKLOADS = [  # (algorithm, E, B, learning rate): one local epoch each
    ("fedsgd", 1, None, 0.215),
    ("fedavg", 1, None, 0.464),
    ("fedavg", 1, 50, 0.215),
    ("fedavg", 1, 10, 0.1),
]


def round_seconds(
    workload: tuple[str, int, int | None, float],
    chunk: int | None,
    args: argparse.Namespace,
) -> tuple[list[float], int]:
    """Seconds of each training round after the first (the last, evaluated, one
    left out), and the torch threads they ran with."""
    algorithm, epochs, batch, lr = workload
    cell = grid.Cell("cnn", "iid", algorithm, epochs, batch)
    rounds = args.rounds + 2
    config = grid.make_config(
        cell,
        lr,
        dataset="fashion_mnist",
        target=1.0,
        max_rounds=rounds,
        device=args.device,
        runtime="vectorized",
        checkpoint_every=rounds,
    )
    config.update(eval_every=rounds, threads=args.threads, compile=args.compile)
    if chunk is not None:  # None: the runtime chooses
        config.update(chunk_size=chunk)
    checked = config_from_dict(config)
    with tempfile.TemporaryDirectory() as out:
        result = run_experiment(checked, out_dir=out, quiet=True)
    return [r["seconds"] for r in result.records[1:-1]], checked.torch_threads()


CLEARLY_FASTER = 1.1  # a smaller chunk must beat the largest by this much


def fastest_chunk_sizes(path: Path) -> dict[tuple[str, int | None], int]:
    """The chunk size of each (algorithm, B) in a report this script wrote: the
    largest measured, unless a smaller one was at least 10 % faster (less is noise).

    Example:
        >>> import tempfile
        >>> def row(b, c, s):
        ...     return {"algorithm": "fedavg", "B": b, "chunk_size": c,
        ...             "seconds_per_round": s}
        >>> rows = [row(None, 10, 0.5), row(None, 1, 0.2),
        ...         row(50, 10, 0.37), row(50, 5, 0.34),
        ...         row(50, None, 0.1)]  # "auto": left out
        >>> with tempfile.TemporaryDirectory() as d:
        ...     report = Path(d) / "r.json"
        ...     _ = report.write_text(json.dumps({"rows": rows}))
        ...     fastest_chunk_sizes(report)
        {('fedavg', None): 1, ('fedavg', 50): 10}
    """
    rows: dict[tuple[str, int | None], list[tuple[int, float]]] = {}
    for row in json.loads(path.read_text())["rows"]:
        if row["chunk_size"] is None:  # the runtime's choice: no size of its own
            continue
        key = (row["algorithm"], row["B"])
        rows.setdefault(key, []).append((row["chunk_size"], row["seconds_per_round"]))
    chosen = {}
    for key, timed in rows.items():
        largest, seconds = max(timed)
        fastest, best = min(timed, key=lambda t: t[1])
        chosen[key] = fastest if best * CLEARLY_FASTER <= seconds else largest
    return chosen


def chunk_argument(text: str) -> int | None:
    """A ``--chunks`` entry: a number of clients, or ``auto`` (None).

    >>> chunk_argument("auto"), chunk_argument("2")
    (None, 2)
    """
    if text == "auto":
        return None
    chunk = int(text)
    if chunk < 1:
        raise argparse.ArgumentTypeError(f"a chunk holds at least 1 client: {text}")
    return chunk


def automatic_chunk(threads: int) -> int:
    """The chunk the runtime chooses for the compiled CNN on the CPU at
    ``threads`` torch threads."""
    model = build_model("cnn", (1, 28, 28), 10)  # Fashion-MNIST's shapes
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return clients_at_once_compiled(Replicated(model.init(), 1))
    finally:
        torch.set_num_threads(before)


def machine(device: torch.device) -> dict[str, Any]:
    name = "cpu"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--chunks", type=chunk_argument, nargs="+", default=[10, 5, 2, 1]
    )
    parser.add_argument(
        "--compile", action="store_true", help="the vectorized runtime compiled"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batches", nargs="+", default=None, help="e.g. inf 50")
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/chunk_size.json")
    )
    args = parser.parse_args()
    workloads = [
        w
        for w in WORKLOADS
        if args.batches is None or str(w[2] or "inf") in args.batches
    ]
    report: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(torch.device(args.device)),
        "rows": [],
    }
    print(f"{'algorithm':9} {'E':>2} {'B':>4} {'chunk':>8} {'s/round':>9} ratio")
    for workload in workloads:
        algorithm, epochs, batch, lr = workload
        base = None
        for chunk in args.chunks:
            started = time.perf_counter()
            seconds, threads = round_seconds(workload, chunk, args)
            mean = statistics.mean(seconds)
            base = base or mean
            chosen = COHORT if chunk is None else chunk
            compiled = args.compile and algorithm == "fedavg"  # FedSGD: eager
            if chunk is None and args.device == "cpu":  # FedSGD's: eager
                at_once = min(automatic_chunk(threads), COHORT)  # the runtime's
                if compiled:
                    chosen = at_once
                elif at_once < EAGER_BATCHED_FROM:
                    chosen = 0  # eager: client by client, unbatched
            report["rows"].append(
                {
                    "algorithm": algorithm,
                    "E": epochs,
                    "B": batch,
                    "learning_rate": lr,
                    "chunk_size": chunk,
                    "clients_at_once": chosen,
                    "compiled": compiled,
                    "threads": threads,
                    "seconds_per_round": mean,
                    "rounds": seconds,
                    "speedup_over_first_chunk": base / mean,
                    "wall_seconds": time.perf_counter() - started,
                }
            )
            shown = str(chunk) if chunk else f"auto ({chosen})"
            print(
                f"{algorithm:9} {epochs:>2} {batch or '∞':>4} {shown:>8} "
                f"{mean:9.4f} {base / mean:5.2f}x",
                flush=True,
            )
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
