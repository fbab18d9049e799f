"""Claim: a client of the local runtime trains as fast as a plain PyTorch loop.

Times one client's local training (FedAvg's ``LocalTraining``: 600 Fashion-MNIST
examples, B = 10, SGD, lr 0.05, ``--epochs`` epochs) against the same client in
``simulation_speed.py``'s plain loop (``nn.Module`` + ``torch.optim.SGD``), per
step, at each ``--threads`` count, in one process: they take turns ``--repeats``
times, and the best of each is kept. The per-step overhead of the local runtime's
bookkeeping (its functional step, its loss accounting) is what the ratio shows.

``unfolded`` is the local training without folding SGD's update of the linear
layers' weights into their gradients' products (``_linear_fold.py``): the same
optimizer with ``fold_alpha=None``. ``swap a step`` is the local training as it was
before ``FunctionalModel.training``: ``functional_call`` swaps the parameters into
the module at every step. The unfolded results are checked to be the swap's, bit
for bit; the folded ones to be within 1e-4 of the largest change of the unfolded
after five steps (the figure after all of them is recorded too).
``--optimizer adam`` gives the fedloom runners Adam (lr 1e-3), an optimizer without
an in-place update, whose new parameters are now copied into the leaves in the
module; the torch loop keeps its SGD, so compare it only with ``sgd``.

    python benchmarks/local_step.py [--models 2nn cnn] [--epochs 1]
        [--threads 1 2] [--repeats 7] [--optimizer sgd]
        [--json benchmarks/results/local_step.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.records import write_record
from benchmarks.simulation_speed import (
    BATCH_SIZE,
    LEARNING_RATE,
    fashion_mnist_clients,
    torch_loop_round,
)
from benchmarks.turns import best_per_step
from fedloom.data import ClientData, Examples
from fedloom.learning import ClientInput, adam, build_model, sgd
from fedloom.learning._client_work import LocalTraining, _gradient_and_loss
from fedloom.learning._cohort_work import own_copy
from fedloom.runtimes import reuse_cpu_memory


class SwapEachStep(LocalTraining):  # type: ignore[misc]
    """The local training before ``FunctionalModel.training``: each step's
    gradient by ``functional_call`` with new leaves, on a copy of the parameters
    of its own (updated in place) or on the optimizer's new parameters."""

    def _train(self, params, x, y, steps):  # type: ignore[no-untyped-def]
        in_place, step = self.optimizer.update_in_place, _gradient_and_loss(self.model)
        local = params if in_place is None else own_copy(params)
        state, losses = self.optimizer.init(local), []
        for index in steps:
            grads, loss = step(local, x[index], y[index])
            if in_place is None:
                local, state = self.optimizer.update(grads, state, local)
            else:
                in_place(grads, state, local)
            losses.append(loss)
        return local, losses


OPTIMIZERS = {"sgd": lambda: sgd(LEARNING_RATE), "adam": lambda: adam(1e-3)}


def _off(got: dict[str, Any], want: dict[str, Any]) -> float:
    """The largest difference of ``got`` from ``want``, over each one's largest."""
    return max(float((got[k] - v).abs().max() / v.abs().max()) for k, v in want.items())


def measure(dataset: Any, clients: ClientData, name: str, args: Any) -> dict[str, Any]:
    model = build_model(name, dataset.input_shape, dataset.num_classes, seed=0)
    params, client = model.init(), ClientInput(clients.client(0), 0)
    optimizer = OPTIMIZERS[args.optimizer]()
    work = LocalTraining(model, optimizer, args.epochs, BATCH_SIZE)
    unfolded_sgd = optimizer._replace(fold_alpha=None)
    unfolded = LocalTraining(model, unfolded_sgd, args.epochs, BATCH_SIZE)
    before = SwapEachStep(model, optimizer, args.epochs, BATCH_SIZE)
    got, plain, want = (
        work(params, client),
        unfolded(params, client),
        before(params, client),
    )
    for k, v in want.update.items():  # bound training, unfolded: the same steps
        torch.testing.assert_close(plain.update[k], v, rtol=0, atol=0)
    torch.testing.assert_close(plain.metrics, want.metrics, rtol=0, atol=0)
    # folded: the same steps rounded otherwise (one product-and-sum where there were
    # a product, then a sum). Over five steps that is float32's rounding; the CNN's
    # 60 steps amplify it, as any rounding (a ReLU or pooling maximum that flips):
    # folded or not, they end some 25 % of the largest change from float64 steps,
    # which agree with each other to 1e-12 (tests/learning/test_linear_fold.py)
    head = ClientInput(Examples(client.examples.x[:50], client.examples.y[:50]), 0)
    five_off = _off(work(params, head).update, unfolded(params, head).update)
    assert five_off < 1e-4
    runs = {
        "fedloom local": lambda: work(params, client),
        "unfolded": lambda: unfolded(params, client),
        "swap a step": lambda: before(params, client),
        "torch loop": lambda: torch_loop_round(model, params, [client], args.epochs),
    }
    steps = args.epochs * len(client.examples) // BATCH_SIZE
    best = best_per_step(runs, steps, args.repeats)
    return {
        "model": name,
        "threads": torch.get_num_threads(),
        "us_per_step": {runner: seconds * 1e6 for runner, seconds in best.items()},
        "local_vs_loop": best["torch loop"] / best["fedloom local"],
        "local_vs_unfolded": best["unfolded"] / best["fedloom local"],
        "local_vs_swap": best["swap a step"] / best["fedloom local"],
        "fold_off_by_after_5_steps": five_off,
        "fold_off_by": _off(got.update, plain.update),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["2nn", "cnn"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="sgd",
        help="the clients' (the torch loop keeps SGD: compare it only with sgd)",
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1})
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/local_step.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    dataset, clients = fashion_mnist_clients()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows += [measure(dataset, clients, name, args) for name in args.models]
    print(f"one client, E = {args.epochs}, B = 10, {args.optimizer}: µs a step")
    print(
        f"{'model':<6} {'threads':>7} {'fedloom local':>14} {'unfolded':>9}"
        f" {'swap a step':>12} {'torch loop':>11}  local vs unfolded, vs swap, vs loop"
    )
    for row in rows:
        us = row["us_per_step"]
        print(
            f"{row['model']:<6} {row['threads']:>7} {us['fedloom local']:14.1f}"
            f" {us['unfolded']:9.1f} {us['swap a step']:12.1f}"
            f" {us['torch loop']:11.1f}  {row['local_vs_unfolded']:.2f}x,"
            f" {row['local_vs_swap']:.2f}x, {row['local_vs_loop']:.2f}x"
        )
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
