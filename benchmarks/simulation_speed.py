"""Claim: the vectorized runtime trains a cohort faster than clients one by one.

On the workload of McMahan et al. 2017 (Fashion-MNIST, 100 IID clients of 600
examples, C = 0.1, B = 10, lr 0.05; the 2NN and the CNN; E = 1 and 5) this measures
seconds per round of, in the same process:

- ``torch loop``: plain PyTorch, what a per-client framework does: for each client a
  copy of the ``nn.Module``, ``torch.optim.SGD``, E epochs over its shuffled batches,
  then the weighted average of the state dicts;
- ``fedloom local``: FedAvg on the sequential reference runtime;
- ``fedloom vectorized``: the same FedAvg with the whole cohort batched by ``vmap``;

and checks that all three reach the same test accuracy after the timed rounds. Speed
is reported as the ratio to the torch loop measured in the same run.

    python benchmarks/simulation_speed.py [--rounds 2] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedloom.data import ClientData, Dataset, load_dataset
from fedloom.experiments import client_seed, sample_cohort
from fedloom.learning import (
    ClientInput,
    FunctionalModel,
    build_model,
    evaluate,
    fed_avg,
)
from fedloom.runtimes import LocalRuntime, VectorizedRuntime

LEARNING_RATE = 0.05
BATCH_SIZE = 10


def torch_loop_round(
    model: FunctionalModel,
    params: dict[str, torch.Tensor],
    cohort: list[ClientInput],
    epochs: int,
) -> dict[str, torch.Tensor]:
    """One FedAvg round the way per-client frameworks run it, in plain PyTorch."""
    total: dict[str, torch.Tensor] = {k: torch.zeros_like(v) for k, v in params.items()}
    examples = 0
    for client in cohort:
        module = copy.deepcopy(model.module)
        module.load_state_dict(params)
        optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE)
        x, y = client.examples.x, client.examples.y
        generator = torch.Generator().manual_seed(client.seed)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), BATCH_SIZE):
                index = order[start : start + BATCH_SIZE]
                optimizer.zero_grad()
                nn.functional.cross_entropy(module(x[index]), y[index]).backward()
                optimizer.step()
        for k, v in module.state_dict().items():
            total[k] += len(y) * v.detach()
        examples += len(y)
    return {k: v / examples for k, v in total.items()}


def _cohort(clients: ClientData, round: int) -> list[ClientInput]:
    ids = sample_cohort(len(clients), 10, seed=0, round=round)
    return [
        ClientInput(clients.client(int(i)), client_seed(0, round, int(i))) for i in ids
    ]


def measure(
    dataset: Dataset, clients: ClientData, model_name: str, epochs: int, rounds: int
) -> list[dict[str, Any]]:
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, seed=0)
    process = fed_avg(
        model,
        client_learning_rate=LEARNING_RATE,
        local_epochs=epochs,
        batch_size=BATCH_SIZE,
    )
    runners: dict[str, Callable[[Any, int], Any]] = {
        "torch loop": lambda params, r: torch_loop_round(
            model, params, _cohort(clients, r), epochs
        ),
        "fedloom local": lambda state, r: process.next(
            state, _cohort(clients, r), runtime=LocalRuntime()
        )[0],
        "fedloom vectorized": lambda state, r: process.next(
            state, _cohort(clients, r), runtime=VectorizedRuntime()
        )[0],
    }
    rows = []
    for name, step in runners.items():
        state: Any = model.init() if name == "torch loop" else process.init()
        step(state, rounds)  # warm-up round, not timed and not kept
        started = time.perf_counter()
        for r in range(rounds):
            state = step(state, r)
        seconds = (time.perf_counter() - started) / rounds
        params = state if name == "torch loop" else state.params
        accuracy = evaluate(model, params, dataset.test)["accuracy"]
        rows.append(
            {
                "model": model_name,
                "epochs": epochs,
                "runner": name,
                "seconds_per_round": seconds,
                "test_accuracy": accuracy,
            }
        )
        print(
            f"  {model_name} E={epochs} {name:<20} {seconds:8.3f} s/round"
            f"  acc {accuracy:.4f}",
            flush=True,
        )
    baseline = rows[0]["seconds_per_round"]
    accuracies = [row["test_accuracy"] for row in rows]
    if max(accuracies) - min(accuracies) > 0.01:
        raise SystemExit(f"{model_name} E={epochs}: runners disagree: {accuracies}")
    for row in rows:
        row["speedup_vs_torch_loop"] = baseline / row["seconds_per_round"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2NN, E=1, one round")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/simulation_speed.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset("fashion_mnist")
    clients = ClientData.from_dataset(dataset, "iid", 100, seed=0)
    grid = (
        [("2nn", 1)] if args.quick else [("2nn", 1), ("2nn", 5), ("cnn", 1), ("cnn", 5)]
    )
    rounds = 1 if args.quick else args.rounds
    rows = []
    for model_name, epochs in grid:
        rows += measure(dataset, clients, model_name, epochs, rounds)
    print(
        f"\n{'model':<6}{'E':>3}  {'runner':<20}{'s/round':>10}"
        f"{'vs torch loop':>15}{'accuracy':>10}"
    )
    for row in rows:
        print(
            f"{row['model']:<6}{row['epochs']:>3}  {row['runner']:<20}"
            f"{row['seconds_per_round']:>10.3f}"
            f"{row['speedup_vs_torch_loop']:>14.2f}x{row['test_accuracy']:>10.4f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "workload": {
            "dataset": "fashion_mnist",
            "clients": 100,
            "cohort": 10,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "rounds": rounds,
        },
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
