"""Claim: ``evaluate``'s default batch of 1,024 examples is its fastest on the CPU.

``evaluate`` and a client's evaluation run the model on batches of ``batch_size``
examples (1,024 by default); the McMahan CNN's first convolution alone writes 100
KB an example. With freed memory reused, as ``fedloom run`` and this script have
it (``reuse_cpu_memory``), large batches cost no page faults (without it, one-off
timings made batches of 128 look 1.8x as fast as 1,024 for the CNN). This times
``evaluate`` of the CNN and the 2NN on Fashion-MNIST's 10,000 test images at each
batch size and thread count, the sizes taking turns, best of ``--repeats``, and
checks that every size gives the same accuracy.

    python benchmarks/evaluation_batch.py [--models cnn 2nn] [--threads 1 2]
        [--batch-sizes 64 128 256 512 1024] [--repeats 3]
        [--json benchmarks/results/evaluation_batch.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from benchmarks.turns import best_per_step
from fedloom.data import load_dataset
from fedloom.learning import build_model, evaluate
from fedloom.runtimes import reuse_cpu_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "2nn"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/evaluation_batch.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    dataset = load_dataset("fashion_mnist")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.models:
            model = build_model(name, dataset.input_shape, dataset.num_classes, seed=0)
            params = model.init()
            runs = {
                size: lambda size=size, model=model, params=params: evaluate(
                    model, params, dataset.test, batch_size=size
                )
                for size in args.batch_sizes
            }
            accuracies = {run()["accuracy"] for run in runs.values()}  # warm-up
            if len(accuracies) != 1:
                raise SystemExit(f"batch sizes disagree: {accuracies}")
            seconds = best_per_step(runs, 1, args.repeats)
            largest = max(args.batch_sizes)
            row = {
                "model": name,
                "threads": threads,
                "seconds": {str(size): s for size, s in seconds.items()},
                "speedup_vs_largest": {
                    str(size): seconds[largest] / s for size, s in seconds.items()
                },
            }
            rows.append(row)
            print(
                f"{name} {threads} thread(s): "
                + ", ".join(f"{size}: {s:.3f} s" for size, s in seconds.items()),
                flush=True,
            )
    print("\nevaluate() on Fashion-MNIST's test set, seconds (ratio to the largest):")
    print(f"{'model':<5} {'thr':>3} " + " ".join(f"{b:>14}" for b in args.batch_sizes))
    for row in rows:
        s, r = row["seconds"], row["speedup_vs_largest"]
        cells = " ".join(
            f"{s[str(b)]:7.3f} ({r[str(b)]:.2f}x)" for b in args.batch_sizes
        )
        print(f"{row['model']:<5} {row['threads']:>3} {cells}")
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
