"""Claim: FedSGD's rounds got faster on the CPU, one client after another.

A FedSGD client computes the gradient of its mean loss on all its examples. It did
so with ``torch.func.grad`` and then ran the model once more, without gradients, for
the loss it reports; now plain autograd gives both from one forward pass (the same
values, bit for bit). And on the CPU the vectorized runtime computes the cohort's
gradients client by client, unbatched, for a model of which the compiled FedAvg step
would train at most two clients at once (the CNN), as it does FedAvg's training.

This times FedSGD rounds (Fashion-MNIST, 10 of 100 IID clients of 600 examples,
lr 0.05) of the 2NN and the CNN in one process, taking turns round by round after a
warm-up round each: ``local, before`` (the old client work restored), ``local``,
``vectorized, batched`` (the whole cohort under ``vmap``: a chunk size given) and
``vectorized`` (as it chooses). The median round of each and its ratio to ``local,
before``; the first round's parameters of the two local forms are checked to be the
same, bit for bit.

    python benchmarks/fedsgd_rounds.py [--rounds 5] [--threads 1 2]
        [--json benchmarks/results/fedsgd_rounds.json]
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
from torch.func import grad

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from benchmarks.simulation_speed import LEARNING_RATE, cohort, fashion_mnist_clients
from fedloom.core import LocalRuntime
from fedloom.learning import ClientResult, build_model, fed_sgd
from fedloom.learning._client_work import FullBatchGradient, _zero_result
from fedloom.runtimes import VectorizedRuntime, reuse_cpu_memory


def _old_call(self: FullBatchGradient, params: Any, data: Any) -> ClientResult:
    """FullBatchGradient.__call__ as it was: torch.func.grad, then the loss again."""
    x, y = data.examples.x, data.examples.y
    if len(y) == 0:
        return _zero_result(params)
    gradient = grad(self.model.loss)(params, x, y)
    with torch.no_grad():
        loss = self.model.loss(params, x, y).to(torch.float64)
    weight = torch.tensor(float(len(y)), dtype=torch.float64)
    detached = {k: v.detach() for k, v in gradient.items()}
    return ClientResult(detached, weight, {"train_loss": loss})


@contextlib.contextmanager
def _before() -> Iterator[None]:
    new = FullBatchGradient.__call__
    FullBatchGradient.__call__ = _old_call  # type: ignore[method-assign]
    try:
        yield
    finally:
        FullBatchGradient.__call__ = new  # type: ignore[method-assign]


RUNNERS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "local, before": (LocalRuntime, _before),
    "local": (LocalRuntime, contextlib.nullcontext),
    "vectorized, batched": (
        lambda: VectorizedRuntime(chunk_size=10),
        contextlib.nullcontext,
    ),
    "vectorized": (VectorizedRuntime, contextlib.nullcontext),
}


def measure(
    model_name: str, threads: int, rounds: int, dataset: Any, clients: Any
) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, seed=0)
    process = fed_sgd(model, learning_rate=LEARNING_RATE)
    start = process.init()
    firsts = {}
    for name, (runtime, context) in RUNNERS.items():  # warm-up, first round kept
        with context():
            firsts[name] = process.next(start, cohort(clients, 0), runtime=runtime())
    for key, value in firsts["local"][0].params.items():
        if not torch.equal(value, firsts["local, before"][0].params[key]):
            raise SystemExit(f"{model_name}: the local forms disagree on {key}")
    states = {name: first[0] for name, first in firsts.items()}
    seconds: dict[str, list[float]] = {name: [] for name in RUNNERS}
    for r in range(1, rounds + 1):
        for name, (runtime, context) in RUNNERS.items():
            with context():
                started = time.perf_counter()
                states[name] = process.next(
                    states[name], cohort(clients, r), runtime=runtime()
                )[0]
                seconds[name].append(time.perf_counter() - started)
    base = statistics.median(seconds["local, before"])
    return [
        {
            "model": model_name,
            "threads": threads,
            "runner": name,
            "median_seconds": statistics.median(times),
            "rounds_seconds": times,
            "speedup_over_local_before": base / statistics.median(times),
        }
        for name, times in seconds.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["2nn", "cnn"])
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/fedsgd_rounds.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()  # as fedloom run does
    dataset, clients = fashion_mnist_clients()
    rows = []
    print(f"{'model':<6}{'threads':>8}  {'runner':<22}{'ms/round':>10}{'ratio':>8}")
    for model_name in args.models:
        for threads in args.threads:
            for row in measure(model_name, threads, args.rounds, dataset, clients):
                rows.append(row)
                print(
                    f"{model_name:<6}{threads:>8}  {row['runner']:<22}"
                    f"{row['median_seconds'] * 1e3:>10.1f}"
                    f"{row['speedup_over_local_before']:>7.2f}x",
                    flush=True,
                )
    write_record(args.json, args, rows=rows)


if __name__ == "__main__":
    main()
