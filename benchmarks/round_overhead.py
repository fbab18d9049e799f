"""Claim: a round's work around the clients' training got cheaper.

Beside the training itself, a round of ``LearningProcess.next`` lays out the
cohort's examples, picks the update, the weight and the metrics out of the clients'
results (``map`` of a getter) and checks every update for NaN and infinity before
aggregating it. Before, each client's rows were gathered from the population and
then copied into the padded cohort, the vectorized runtime ran each pick under
``vmap`` (about a millisecond for nothing: a pick of a stacked value is the stacked
pick) and ``checked`` wrote a boolean for every element (``isfinite``). Now the
cohort's rows are gathered into the padded cohort at once (``ExampleRows``), a
getter picks from the stacked value itself, and a finite sum of each tensor proves
it finite (the element-wise look only where a sum is not finite).

This times whole rounds of the Fashion-MNIST 2NN (10 of 100 IID clients, B = 10,
lr 0.05) in both forms, in one process: ``before`` restores the old forms (each
client's rows gathered, then copied; the getters as plain functions; the
element-wise check always). The forms take turns
round by round, each from the same state; the median and best round of each are
kept, and the first round's parameters of both are checked to be the same, bit for
bit. Rows: FedAvg E = 1 compiled with five steps a call (the CPU's fastest form,
where the training takes least of the round), FedSGD on the vectorized runtime
(one step a round), and FedSGD on the local runtime (its check is the same).

    python benchmarks/round_overhead.py [--rounds 30] [--threads 2]
        [--json benchmarks/results/round_overhead.json]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from benchmarks.simulation_speed import (
    BATCH_SIZE,
    LEARNING_RATE,
    cohort,
    fashion_mnist_clients,
)
from fedloom.aggregators import _checked
from fedloom.core import LocalRuntime
from fedloom.learning import _cohort_work, _process, build_model, fed_avg, fed_sgd
from fedloom.runtimes import VectorizedRuntime, reuse_cpu_memory


def _old_update(result: Any) -> Any:
    return result.update


def _old_weight(result: Any) -> Any:
    return result.weight


def _old_metrics(result: Any) -> Any:
    return result.metrics


@contextlib.contextmanager
def before() -> Iterator[None]:
    """The old forms: each client's rows gathered and then copied into the padded
    cohort, plain functions as getters (vmapped by the vectorized runtime), and
    the element-wise finiteness check for every tensor."""
    saved = (_process._update, _process._weight, _process._metrics)
    proof, gathered = _checked._surely_finite, _cohort_work._gathered
    _process._update, _process._weight, _process._metrics = (
        _old_update,
        _old_weight,
        _old_metrics,
    )
    _checked._surely_finite = lambda leaves: False
    _cohort_work._gathered = lambda examples, longest: None
    try:
        yield
    finally:
        _process._update, _process._weight, _process._metrics = saved
        _checked._surely_finite, _cohort_work._gathered = proof, gathered


FORMS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "before": before,
    "after": contextlib.nullcontext,
}


def measure(name: str, process: Any, runtime: Any, clients: Any, rounds: int) -> dict:
    state = process.init()
    for r in range(2):  # warm-up: compilation, first-use imports
        for form in FORMS.values():
            with form():
                process.next(state, cohort(clients, r), runtime=runtime)
    firsts = []
    for form in FORMS.values():
        with form():
            firsts.append(process.next(state, cohort(clients, 0), runtime=runtime)[0])
    for key in firsts[0].params:
        if not torch.equal(firsts[0].params[key], firsts[1].params[key]):
            raise SystemExit(f"{name}: the forms disagree on {key}")
    seconds: dict[str, list[float]] = {form: [] for form in FORMS}
    states = dict.fromkeys(FORMS, state)
    for r in range(rounds):
        for form, context in FORMS.items():
            with context():
                started = time.perf_counter()
                states[form] = process.next(
                    states[form], cohort(clients, r), runtime=runtime
                )[0]
                seconds[form].append(time.perf_counter() - started)
    row: dict[str, Any] = {"workload": name}
    for form, times in seconds.items():
        row[f"{form}_median_ms"] = statistics.median(times) * 1e3
        row[f"{form}_best_ms"] = min(times) * 1e3
    row["speedup_median"] = row["before_median_ms"] / row["after_median_ms"]
    row["speedup_best"] = row["before_best_ms"] / row["after_best_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/round_overhead.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()  # as fedloom run does
    torch.set_num_threads(args.threads)
    dataset, clients = fashion_mnist_clients()
    model = build_model("2nn", dataset.input_shape, dataset.num_classes, seed=0)
    fedavg = fed_avg(
        model, client_learning_rate=LEARNING_RATE, local_epochs=1, batch_size=BATCH_SIZE
    )
    fedsgd = fed_sgd(model, learning_rate=LEARNING_RATE)
    workloads = {
        "FedAvg E=1, vectorized compiled x5": (
            fedavg,
            VectorizedRuntime(compile=True, steps_per_call=5),
        ),
        "FedSGD, vectorized": (fedsgd, VectorizedRuntime()),
        "FedSGD, local": (fedsgd, LocalRuntime()),
    }
    rows = []
    print(f"{'workload':<38}{'before ms':>11}{'after ms':>10}{'speedup':>9}")
    for name, (process, runtime) in workloads.items():
        row = measure(name, process, runtime, clients, args.rounds)
        rows.append(row)
        print(
            f"{name:<38}{row['before_median_ms']:>11.1f}{row['after_median_ms']:>10.1f}"
            f"{row['speedup_median']:>8.2f}x  (best {row['before_best_ms']:.1f} / "
            f"{row['after_best_ms']:.1f} ms)",
            flush=True,
        )
    write_record(args.json, args, rows=rows)


if __name__ == "__main__":
    main()
