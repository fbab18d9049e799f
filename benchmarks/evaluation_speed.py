"""Claim: evaluating a CNN on the CPU got faster, with the same results.

``fedloom run`` evaluates the model on the test set after every round (by default):
for the McMahan CNN on Fashion-MNIST's 10,000 test images on a 2-core CPU, most of a
second or more, as long as a compiled training round. A third of that was ATen's max
pooling; ``FunctionalModel.predict`` now pools non-overlapping windows as maxima of
strided views (``fedloom.learning._pooling``). This times ``evaluate`` on the test
set both ways, taking turns, the best of ``--repeats``, at each thread count, and
checks that both give the same loss and accuracy (to the bit).

    python benchmarks/evaluation_speed.py [--models cnn 2nn] [--threads 1 2]
        [--repeats 5] [--json benchmarks/results/evaluation_speed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from fedloom.data import load_dataset
from fedloom.learning import _functional, build_model, evaluate
from fedloom.runtimes import reuse_cpu_memory


@contextlib.contextmanager
def before() -> Any:
    """ATen's max pooling throughout, as before."""
    mode = _functional.WindowMaxima
    _functional.WindowMaxima = contextlib.nullcontext  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        _functional.WindowMaxima = mode  # type: ignore[misc]


FORMS = {"before": before, "after": contextlib.nullcontext}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "2nn"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/evaluation_speed.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()  # as fedloom run does
    dataset = load_dataset("fashion_mnist")
    rows = []
    print(f"{'model':<6}{'threads':>8}{'before ms':>11}{'after ms':>10}{'speedup':>9}")
    for name in args.models:
        model = build_model(name, dataset.input_shape, dataset.num_classes, seed=0)
        params = model.init()
        for threads in args.threads:
            torch.set_num_threads(threads)
            results, best = {}, dict.fromkeys(FORMS, float("inf"))
            for repeat in range(args.repeats + 1):  # the first, a warm-up
                for form, context in FORMS.items():
                    with context():
                        started = time.perf_counter()
                        results[form] = evaluate(model, params, dataset.test)
                        seconds = time.perf_counter() - started
                    if repeat:
                        best[form] = min(best[form], seconds)
            if results["before"] != results["after"]:
                raise SystemExit(f"{name}: the forms disagree: {results}")
            row = {
                "model": name,
                "threads": threads,
                "before_ms": best["before"] * 1e3,
                "after_ms": best["after"] * 1e3,
                "speedup": best["before"] / best["after"],
                "accuracy": results["after"]["accuracy"],
            }
            rows.append(row)
            print(
                f"{name:<6}{threads:>8}{row['before_ms']:>11.1f}"
                f"{row['after_ms']:>10.1f}{row['speedup']:>8.2f}x",
                flush=True,
            )
    write_record(args.json, args, rows=rows)


if __name__ == "__main__":
    main()
