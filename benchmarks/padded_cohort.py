"""What laying a cohort's examples out as one padded tensor costs on the CPU.

Every round the vectorized runtime copies the cohort's examples into one padded
tensor (``PaddedCohort``) before moving it to the device: for 100 Fashion-MNIST
clients of 600 examples, 188 MB. It allocates that tensor without filling it
(every row is then written: the examples, then padding that repeats a real one);
this times it (the examples, their labels and the mask) against the examples alone
in the same layout in a zero-filled tensor, as it was built before: in the same run,
taking turns, with glibc keeping freed memory (``reuse_cpu_memory``, as ``fedloom
run`` does) and without.

    python benchmarks/padded_cohort.py [--sizes 10 100] [--repeats 7]
        [--json benchmarks/results/padded_cohort.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from gpu_speed import POPULATION, cohort

from fedloom.data import ClientData, Examples, load_dataset
from fedloom.learning._cohort_work import PaddedCohort
from fedloom.runtimes import reuse_cpu_memory


def zero_filled(examples: list[Examples]) -> torch.Tensor:
    """The examples laid out as ``PaddedCohort`` lays them, in a zeroed tensor."""
    longest = max(len(e) for e in examples)
    x = torch.zeros((len(examples), longest, *examples[0].x.shape[1:]))
    for c, e in enumerate(examples):
        x[c, : len(e)] = e.x
        x[c, len(e) :] = e.x[0]
    return x


def _ms(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/padded_cohort.json")
    )
    args = parser.parse_args()
    dataset = load_dataset("fashion_mnist")
    clients = ClientData.from_dataset(dataset, "iid", POPULATION, seed=0)
    cpu = torch.device("cpu")
    rows = []
    for reuse in (False, True):
        if reuse:
            reuse_cpu_memory()  # from here on, for the rest of the process
        for size in args.sizes:
            # read, as plain Examples: PaddedCohort copies them in (a population's
            # unread rows it would gather at once: benchmarks/round_overhead.py)
            examples = [
                Examples(c.examples.x, c.examples.y) for c in cohort(clients, size, 0)
            ]
            torch.testing.assert_close(
                PaddedCohort(examples, cpu).x, zero_filled(examples)
            )
            filled, unfilled = [], []
            for _ in range(args.repeats):  # taking turns
                filled.append(_ms(lambda e=examples: zero_filled(e)))
                unfilled.append(_ms(lambda e=examples: PaddedCohort(e, cpu)))
            row = {
                "clients": size,
                "reuse_cpu_memory": reuse,
                "zero_filled_ms": statistics.median(filled),
                "padded_cohort_ms": statistics.median(unfilled),
            }
            row["speedup"] = row["zero_filled_ms"] / row["padded_cohort_ms"]
            rows.append(row)
            print(
                f"{size:>4} clients, reuse_cpu_memory {reuse!s:<5}: zero-filled "
                f"{row['zero_filled_ms']:6.1f} ms, PaddedCohort "
                f"{row['padded_cohort_ms']:6.1f} ms ({row['speedup']:.2f}x)"
            )
    report = {"command": " ".join(sys.argv), "threads": torch.get_num_threads()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
