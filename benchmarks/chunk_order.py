"""Claim: a cohort cut into chunks computes faster with clients of like size
together (largest first) than cut in the cohort's order.

The vectorized runtime pads each chunk to its largest client. Where a cohort
function tells each client's size (``client_sizes``), the runtime sorts the
cohort by it before cutting, so a chunk's clients are alike and its padding, its
steps and with them its time shrink; the results come back in the cohort's order.
Fashion-MNIST over 1,000 clients of lognormal sizes (``quantity_skew``, sigma 1),
a cohort of 100 sampled as in FedAvg (C = 0.1), the 2NN, B = 10, lr 0.05, at each
thread count, in one process: one ``map`` of each cohort function over the
cohort, in the cohort's order (the function wrapped so that it tells no sizes)
and sorted, the two taking turns, best of ``--repeats``, after a check that both
give the same results to float32 rounding:

- FedAvg's local training (E = 1), eager in chunks of ``--chunk-sizes``, and
  compiled in the chunks it chooses;
- FedSGD's full-batch gradients and federated evaluation, eager, in chunks of the
  first of ``--chunk-sizes``.

    python benchmarks/chunk_order.py [--threads 1 2] [--chunk-sizes 10 25]
        [--repeats 3] [--json benchmarks/results/chunk_order.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from benchmarks.simulation_speed import BATCH_SIZE, LEARNING_RATE
from benchmarks.turns import best_per_step
from fedloom.core import Replicated, tree_flatten
from fedloom.data import ClientData, load_dataset
from fedloom.experiments import client_seed, sample_cohort
from fedloom.learning import (
    ClientInput,
    FullBatchGradient,
    LocalTraining,
    build_model,
    sgd,
)
from fedloom.learning._evaluation import ClientEvaluation
from fedloom.runtimes import VectorizedRuntime, reuse_cpu_memory

CLIENTS, COHORT = 1000, 100


class InCohortOrder:
    """A cohort function as it is, except that it tells no client sizes: the
    runtime cuts the cohort in its own order (as it did before sorting)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def map_cohort(self, args: Any, device: Any, options: Any) -> Any:
        return self.fn.map_cohort(args, device, options)

    def clients_at_once(self, args: Any, device: Any, options: Any) -> Any:
        asks = getattr(self.fn, "clients_at_once", None)
        return asks(args, device, options) if asks else None


def workloads(model: Any, members: list[ClientInput], chunk_sizes: list[int]):
    """(name, runtime, cohort function, its arguments) of each measured map."""
    params = Replicated(model.init(), len(members))
    training = LocalTraining(model, sgd(LEARNING_RATE), epochs=1, batch_size=BATCH_SIZE)
    eager = [
        (f"training, eager, chunks of {n}", VectorizedRuntime(chunk_size=n))
        for n in chunk_sizes
    ]
    runs = [(name, rt, training, [params, members]) for name, rt in eager]
    runs.append(
        (
            "training, compiled",
            VectorizedRuntime(compile=True),
            training,
            [
                params,
                members,
            ],
        )
    )
    first = VectorizedRuntime(chunk_size=chunk_sizes[0])
    examples = [m.examples for m in members]
    runs += [
        (
            f"FedSGD gradients, chunks of {chunk_sizes[0]}",
            first,
            FullBatchGradient(model),
            [params, members],
        ),
        (
            f"evaluation, chunks of {chunk_sizes[0]}",
            first,
            ClientEvaluation(model),
            [params, examples],
        ),
    ]
    return runs


def chunk_counts(sizes: list[int], chunk: int) -> dict[str, int]:
    """Padded examples of a cohort cut into chunks, in order and sorted."""

    def padded(order: list[int]) -> int:
        parts = [order[i : i + chunk] for i in range(0, len(order), chunk)]
        return sum(len(p) * max(p) for p in parts)

    return {"cohort order": padded(sizes), "sorted": padded(sorted(sizes)[::-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--chunk-sizes", nargs="+", type=int, default=[10, 25])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/chunk_order.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    dataset = load_dataset("fashion_mnist")
    clients = ClientData.from_dataset(
        dataset, "quantity_skew", CLIENTS, seed=0, sigma=1.0
    )
    ids = sample_cohort(CLIENTS, COHORT, seed=0, round=0)
    members = [
        ClientInput(clients.client(int(i)), client_seed(0, 0, int(i))) for i in ids
    ]
    sizes = [len(m.examples) for m in members]
    print(
        f"cohort of {len(sizes)}: {min(sizes)} to {max(sizes)} examples, "
        f"{sum(sizes)} in all"
    )
    model = build_model("2nn", dataset.input_shape, dataset.num_classes, seed=0)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch._dynamo.reset()  # compiled afresh at this thread count
        for name, runtime, fn, fn_args in workloads(model, members, args.chunk_sizes):
            forms = {
                "cohort order": lambda fn=fn, rt=runtime, a=fn_args: rt.map(
                    InCohortOrder(fn), a
                ),
                "sorted": lambda fn=fn, rt=runtime, a=fn_args: rt.map(fn, a),
            }
            # Warm-up (compiles) and the check: the same results either way.
            ordered, sorted_ = (tree_flatten(run().tree)[0] for run in forms.values())
            for want, got in zip(ordered, sorted_, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            seconds = best_per_step(forms, 1, args.repeats)
            row = {
                "threads": threads,
                "workload": name,
                "seconds": seconds,
                "speedup": seconds["cohort order"] / seconds["sorted"],
            }
            rows.append(row)
            print(
                f"{threads} thread(s), {name}: cohort order "
                f"{seconds['cohort order']:.3f} s, sorted {seconds['sorted']:.3f} s "
                f"({row['speedup']:.2f}x)",
                flush=True,
            )
    padding = {n: chunk_counts(sizes, n) for n in args.chunk_sizes}
    print(
        f"\n2NN, Fashion-MNIST, a cohort of {COHORT} of {CLIENTS} lognormal clients "
        f"({min(sizes)}-{max(sizes)} examples, {sum(sizes)} in all), B = 10; "
        "seconds of one map, cut in the cohort's order and sorted:"
    )
    print(
        f"{'thr':>3} {'workload':<34} {'cohort order':>12} {'sorted':>8} {'ratio':>6}"
    )
    for row in rows:
        s = row["seconds"]
        print(
            f"{row['threads']:>3} {row['workload']:<34} {s['cohort order']:12.3f}"
            f" {s['sorted']:8.3f} {row['speedup']:5.2f}x"
        )
    for n, counts in padding.items():
        print(
            f"padded examples in chunks of {n}: cohort order "
            f"{counts['cohort order']}, sorted {counts['sorted']}"
        )
    write_record(
        args.json, args, cohort_sizes=sizes, padded_examples=padding, rows=rows
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
