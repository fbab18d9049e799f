"""Claim: idle clients cost nothing beyond their rows in the partition's arrays.

Builds an IID population of ``--clients`` clients over ``2 * clients`` tiny examples
and measures with ``tracemalloc`` what the population holds after it is built (and the
peak while partitioning), beside the size of the examples themselves.

    python benchmarks/population_memory.py [--clients 1000000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import torch

from fedloom.data import ClientData, Examples, iid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/population_memory.json")
    )
    args = parser.parse_args()
    examples = 2 * args.clients
    y = torch.zeros(examples, dtype=torch.int64)
    block = Examples(torch.zeros(examples, 8), y)
    ClientData(block, iid(y.numpy(), 2, seed=0))  # first-use imports, not measured
    tracemalloc.start()
    started = time.perf_counter()
    population = ClientData(block, iid(y.numpy(), args.clients, seed=0))
    seconds = time.perf_counter() - started
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    started = time.perf_counter()
    _ = population.client(str(args.clients - 1)).x  # gathered when read
    fetch = time.perf_counter() - started
    row = {
        "clients": len(population),
        "examples_mib": (block.x.numel() * 4 + block.y.numel() * 8) / 2**20,
        "population_held_mib": held / 2**20,
        "held_bytes_per_client": held / len(population),
        "peak_while_partitioning_mib": peak / 2**20,
        "build_seconds": seconds,
        "fetch_one_client_ms": fetch * 1e3,
    }
    for key, value in row.items():
        print(
            f"{key:<30}{value:>14.2f}"
            if isinstance(value, float)
            else f"{key:<30}{value:>14}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "result": row,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
