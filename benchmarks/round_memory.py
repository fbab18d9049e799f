"""Claim: a training round costs one cohort's memory, whatever the population.

For each population size, in a fresh process: an IID population of that many
clients, each of ``--examples`` examples of ``--features`` float32 features (10
classes, generated), then FedAvg on the vectorized runtime (the 2NN, E = 1, B = 2,
a cohort of ``--cohort`` sampled as ``fedloom run`` samples it): one warm-up round,
then ``--rounds`` rounds while a thread reads how much of the heap is in use
(glibc's ``mallinfo2``: the bytes of live allocations, PyTorch's CPU tensors among
them, not memory freed and kept by the allocator, which the population's
partitioning leaves behind), every millisecond it gets the interpreter (PyTorch's
operations let it run), so the peak it reports is a lower bound; and ``tracemalloc``
traces Python's own allocations, whose small objects ``mallinfo2`` does not see. It
reports the heap in use before the rounds (the population and its examples
included), the peak above it during them, the peak of Python's allocations above
their level before the rounds, and the cohort's share of the examples and its
parameters (one model a client). If idle clients cost nothing, neither peak grows
with the population. (The first round's one-off allocations, thread pools and the
like, fall in the warm-up.) Linux with glibc 2.33 or later.

    python benchmarks/round_memory.py [--populations 1000 1000000] [--cohort 100]
        [--rounds 3] [--json benchmarks/results/round_memory.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from fedloom.data import ClientData, Examples, iid
from fedloom.experiments import client_seed, sample_cohort
from fedloom.learning import ClientInput, build_model, fed_avg
from fedloom.runtimes import VectorizedRuntime

MIB = 2**20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def heap_in_use() -> int:
    """Bytes of live heap allocations now: the main and other arenas' allocated
    chunks and the blocks given their own ``mmap``."""
    info = _LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class PeakSampler:
    """The most heap in use seen between ``start`` and ``stop``, read every
    millisecond by a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, heap_in_use())
            time.sleep(0.001)

    def start(self) -> None:
        self.peak = heap_in_use()
        self._thread.start()

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, heap_in_use())


def measure(population: int, args: argparse.Namespace) -> dict[str, Any]:
    """One population's figures, in this process."""
    torch.manual_seed(0)
    count = population * args.examples
    y = torch.randint(0, 10, (count,))
    block = Examples(torch.randn(count, args.features), y)
    clients = ClientData(block, iid(y.numpy(), population, seed=0))
    model = build_model("2nn", (args.features,), 10, seed=0)
    process = fed_avg(model, client_learning_rate=0.05, local_epochs=1, batch_size=2)
    state = process.init()
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.init().values())

    def round_(r: int) -> Any:
        ids = sample_cohort(population, args.cohort, seed=0, round=r)
        cohort = [
            ClientInput(clients.client(int(i)), client_seed(0, r, int(i))) for i in ids
        ]
        return process.next(state, cohort, runtime=VectorizedRuntime())[0]

    state = round_(0)  # warm-up
    tracemalloc.start()
    python_before = tracemalloc.get_traced_memory()[0]
    before = heap_in_use()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    for r in range(1, args.rounds + 1):
        state = round_(r)
    seconds = (time.perf_counter() - started) / args.rounds
    peak = sampler.stop()
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    example_bytes = args.features * 4 + 8  # float32 features, an int64 label
    return {
        "population": population,
        "examples_mib": count * example_bytes / MIB,
        "heap_before_rounds_mib": before / MIB,
        "round_peak_above_mib": (peak - before) / MIB,
        "python_peak_above_mib": (python_peak - python_before) / MIB,
        "cohort_examples_mib": args.cohort * args.examples * example_bytes / MIB,
        "cohort_parameters_mib": args.cohort * parameter_bytes / MIB,
        "seconds_per_round": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--populations", type=int, nargs="+", default=[1_000, 1_000_000]
    )
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--cohort", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/round_memory.json")
    )
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args)))
        return
    rows = []
    own = sys.argv[1:]  # --child is only ever added below
    for population in args.populations:
        out = subprocess.run(
            [sys.executable, __file__, *own, "--child", str(population)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"FedAvg rounds on the vectorized runtime, cohorts of {args.cohort}, "
        f"{args.examples} examples of {args.features} features a client (MiB):"
    )
    heads = (
        "population",
        "examples",
        "heap in use",
        "round peak +",
        "Python peak +",
        "cohort's data",
        "cohort params",
        "s/round",
    )
    print("".join(f"{h:>15}" for h in heads))
    for row in rows:
        print(
            f"{row['population']:>15,}{row['examples_mib']:>15.1f}"
            f"{row['heap_before_rounds_mib']:>15.1f}"
            f"{row['round_peak_above_mib']:>15.1f}"
            f"{row['python_peak_above_mib']:>15.2f}"
            f"{row['cohort_examples_mib']:>15.3f}{row['cohort_parameters_mib']:>15.1f}"
            f"{row['seconds_per_round']:>15.3f}"
        )
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
