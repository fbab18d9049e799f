"""Claim: the vectorized runtime evaluates a cohort under one broadcast model as
fast as the local runtime, where ``vmap`` over the padded cohort was slower.

Federated evaluation sends one model to every client. The vectorized runtime ran
it as ``vmap(model.predict)`` over the cohort padded to its largest client; it
now evaluates the clients' examples one after another with the model itself and
sums each example's loss and hit into its client's (``cohort_evaluation``). This
times, for a cohort of 10 Fashion-MNIST clients (IID, 600 examples each, or of
lognormal sizes: ``quantity_skew``, sigma 1), the 2NN and the McMahan CNN at
each thread count, in one process: the local runtime's ``federated_evaluate``,
the vectorized runtime's, and the padded ``vmap`` form (``cohort_evaluation`` of
the same parameters stacked), taking turns, best of ``--repeats``, after a check
that all three give the same per-client results to float32 rounding.

    python benchmarks/cohort_evaluation.py [--models 2nn cnn] [--threads 1 2]
        [--repeats 3] [--json benchmarks/results/cohort_evaluation.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from benchmarks.turns import best_per_step
from fedloom.core import Replicated, Stacked
from fedloom.data import ClientData, load_dataset
from fedloom.learning import build_model, federated_evaluate
from fedloom.learning._cohort_work import cohort_evaluation
from fedloom.runtimes import LocalRuntime, VectorizedRuntime, reuse_cpu_memory

PARTITIONS = {"iid": {}, "quantity_skew": {"sigma": 1.0}}
COHORT, BATCH_SIZE = 10, 1024  # ClientEvaluation's default batch size


def forms(model: Any, cohort: list[Any]) -> dict[str, Any]:
    """Each form's evaluation of the cohort: per-client results (the runtimes'
    through ``cohort_evaluation``) or the federated mean."""
    params = model.init()
    cpu = torch.device("cpu")
    stacked = Stacked(
        {k: v.expand(len(cohort), *v.shape).contiguous() for k, v in params.items()},
        len(cohort),
    )
    return {
        "local": lambda: federated_evaluate(
            model, params, cohort, runtime=LocalRuntime()
        ),
        "vectorized": lambda: federated_evaluate(
            model, params, cohort, runtime=VectorizedRuntime()
        ),
        "vmap, padded": lambda: cohort_evaluation(
            model, stacked, cohort, BATCH_SIZE, cpu
        ),
        "one model": lambda: cohort_evaluation(
            model, Replicated(params, len(cohort)), cohort, BATCH_SIZE, cpu
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["2nn", "cnn"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/cohort_evaluation.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    dataset = load_dataset("fashion_mnist")
    rows = []
    for partition, options in PARTITIONS.items():
        clients = ClientData.from_dataset(dataset, partition, 100, seed=0, **options)
        cohort = [clients.client(i) for i in range(COHORT)]
        sizes = [len(c) for c in cohort]
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name in args.models:
                model = build_model(
                    name, dataset.input_shape, dataset.num_classes, seed=0
                )
                runs = forms(model, cohort)
                padded, flat = runs["vmap, padded"](), runs["one model"]()
                for k in ("loss", "accuracy"):
                    torch.testing.assert_close(flat[k], padded[k], rtol=1e-5, atol=0)
                local, vectorized = runs["local"](), runs["vectorized"]()
                assert abs(local["loss"] - vectorized["loss"]) < 1e-5 * local["loss"]
                timed = {k: runs[k] for k in ("local", "vectorized", "vmap, padded")}
                seconds = best_per_step(timed, 1, args.repeats)
                row = {
                    "partition": partition,
                    "cohort_sizes": sizes,
                    "threads": threads,
                    "model": name,
                    "seconds": seconds,
                    "speedup_vs_local": {
                        k: seconds["local"] / s for k, s in seconds.items()
                    },
                }
                rows.append(row)
                print(
                    f"{partition} {threads} thread(s) {name}: "
                    + ", ".join(f"{k} {s:.3f} s" for k, s in seconds.items()),
                    flush=True,
                )
    print(
        f"\nfederated evaluation of a cohort of {COHORT} Fashion-MNIST clients, "
        "batches of 1024, seconds (ratio to the local runtime):"
    )
    print(
        f"{'partition':<14} {'thr':>3} {'model':<5} {'local':>7}"
        f" {'vectorized':>16} {'vmap, padded':>16}"
    )
    for row in rows:
        s, r = row["seconds"], row["speedup_vs_local"]
        print(
            f"{row['partition']:<14} {row['threads']:>3} {row['model']:<5}"
            f" {s['local']:7.3f} {s['vectorized']:8.3f} ({r['vectorized']:.2f}x)"
            f" {s['vmap, padded']:8.3f} ({r['vmap, padded']:.2f}x)"
        )
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
