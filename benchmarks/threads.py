"""Claim: how a local-runtime round's speed depends on PyTorch's thread count.

Measures seconds per round of the local runtime (10 clients, E = 5, B = 10) for the
digits CNN, the Fashion-MNIST 2NN and (unless ``--skip-cnn``) the Fashion-MNIST CNN
with 1 and with all cores' intra-op threads, in the same process, and reports the
ratio. Its answer depends on the machine: on one of the project's 2-core machines one
thread was 2.5-4x faster than two (the reason ``threads = 1`` is the local runtime's
default in ``fedloom run``), on another two threads were 1.00-1.76x as fast (the
README gives both).

    python benchmarks/threads.py [--rounds 3] [--skip-cnn]
        [--out benchmarks/results/threads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fedloom.data import ClientData, load_dataset
from fedloom.learning import ClientInput, build_model, fed_avg


def seconds_per_round(
    dataset_name: str, model_name: str, threads: int, rounds: int
) -> float:
    torch.set_num_threads(threads)
    dataset = load_dataset(dataset_name)
    clients = ClientData.from_dataset(dataset, "iid", 100, seed=0)
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, seed=0)
    process = fed_avg(model, client_learning_rate=0.05, local_epochs=5, batch_size=10)
    state = process.init()
    cohort = [ClientInput(clients.client(i), seed=i) for i in range(10)]
    state, _ = process.next(state, cohort[:1])  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        state, _ = process.next(state, cohort)
    return (time.perf_counter() - started) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/threads.json")
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    workloads = [("digits", "cnn"), ("fashion_mnist", "2nn")]
    if not args.skip_cnn:
        workloads.append(("fashion_mnist", "cnn"))
    for dataset_name, model_name in workloads:
        one = seconds_per_round(dataset_name, model_name, 1, args.rounds)
        many = seconds_per_round(dataset_name, model_name, cores, args.rounds)
        rows.append(
            {
                "workload": f"{dataset_name} {model_name}",
                "seconds_per_round_1_thread": one,
                f"seconds_per_round_{cores}_threads": many,
                "speedup_of_1_thread": many / one,
            }
        )
    header = f"{cores} threads s/round"
    print(f"{'workload':<22}{'1 thread s/round':>18}{header:>20}{'ratio':>8}")
    for row in rows:
        values = list(row.values())
        print(f"{values[0]:<22}{values[1]:>18.3f}{values[2]:>20.3f}{values[3]:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": cores,
            "torch": torch.__version__,
        },
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
