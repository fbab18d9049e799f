"""Claim: the vectorized runtime trains a cohort faster than clients one by one.

On the workload of McMahan et al. 2017 (Fashion-MNIST, 100 IID clients of 600
examples, C = 0.1, B = 10, lr 0.05; the 2NN and the CNN; E = 1 and 5) this measures
seconds per round of, in the same process:

- ``torch loop``: plain PyTorch, what a per-client framework does: for each client a
  copy of the ``nn.Module``, ``torch.optim.SGD``, E epochs over its shuffled batches,
  then the weighted average of the state dicts;
- ``fedloom local``: FedAvg on the sequential reference runtime;
- ``fedloom vectorized``: the same FedAvg on the vectorized runtime as it chooses to
  run it eagerly: the whole cohort batched by ``vmap``, or, for a model whose
  parameters the compiled step would train at most two clients' of at once (the
  CNN), client by client, unbatched;
- ``fedloom vectorized, batched``: the same with the whole cohort batched whatever
  the model (a chunk size given, so not chosen);
- ``fedloom compiled``: the vectorized runtime with ``compile=True`` (its batched
  step through ``torch.compile``; compiled in the warm-up round, whose seconds the
  JSON keeps as ``first_round_seconds`` for every runner);
- ``fedloom compiled xK`` (with ``--steps-per-call K``): the same with
  ``steps_per_call=K``, K local steps unrolled into each compiled call;

and checks that all of them reach the same test accuracy after the timed rounds. Speed
is reported as the ratio to the torch loop measured in the same run; after a warm-up
round each, the runners take turns round by round, so that the noise of a shared
machine falls on all of them alike.

Every workload runs at each ``--threads`` count (default: 1 and all cores). One
thread is best for a client's small batches (the torch loop and ``local`` slow down
on two); a batched cohort step has up to ten clients' work per call (compiled on the
CPU, the runtime takes as many clients at once as its parameter budget a thread
allows: one or two of the CNN's, all ten of the 2NN's), enough for intra-op threads
to pay. So the summary also compares each runner at its own best count.

With ``--flower-python PATH`` (the python of a virtual environment holding Flower,
set up as benchmarks/flower_baseline.py's docstring says; Flower is not a dependency
of fedloom) it also runs, for each workload, flower_baseline.py in a subprocess with
that interpreter and adds a ``flower simulation`` row: the same workload in Flower's
Ray-based simulation, timed the same way (a warm-up round excluded). That run uses
its own client split and seeds, so it is left out of the same-accuracy check; its
accuracy only has to be within 0.05 of the torch loop's. Flower runs with as many
actors (one core, one torch thread each) as the row's thread count.

All runners share the process's allocator setting: by default it calls
``fedloom.runtimes.reuse_cpu_memory()`` first, as ``fedloom run`` does (glibc then
keeps large freed blocks instead of unmapping them; the CNN's stacked cohort tensors
otherwise fault in fresh pages every step); ``--no-reuse-cpu-memory`` leaves glibc's
default.

    python benchmarks/simulation_speed.py [--rounds 2] [--threads 1 2] [--quick]
        [--models 2nn cnn] [--epochs 1 5] [--steps-per-call 5] [--no-reuse-cpu-memory]
        [--flower-python /tmp/flower-venv/bin/python]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
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
from fedloom.runtimes import LocalRuntime, VectorizedRuntime, reuse_cpu_memory

LEARNING_RATE = 0.05
BATCH_SIZE = 10
FLOWER_SCRIPT = Path(__file__).with_name("flower_baseline.py")
FLOWER_ACCURACY_TOLERANCE = 0.05


def fashion_mnist_clients() -> tuple[Dataset, ClientData]:
    """The workload's data, which the other CPU benchmarks share: Fashion-MNIST split
    IID over 100 clients (seed 0)."""
    dataset = load_dataset("fashion_mnist")
    return dataset, ClientData.from_dataset(dataset, "iid", 100, seed=0)


def torch_loop_round(
    model: FunctionalModel,
    params: dict[str, torch.Tensor],
    cohort: list[ClientInput],
    epochs: int,
    device: torch.device | None = None,
    autocast: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One FedAvg round the way per-client frameworks run it, in plain PyTorch.

    On ``device`` (default: the CPU) each client's model and data are moved there;
    the averaged parameters come back to the CPU. With ``autocast`` each step's
    forward pass and loss run under ``torch.autocast`` in that dtype (as PyTorch's
    mixed-precision recipe has it: backward and the update outside).
    """
    device = device or torch.device("cpu")
    total = {k: torch.zeros_like(v, device=device) for k, v in params.items()}
    examples = 0
    for client in cohort:
        module = copy.deepcopy(model.module).to(device)
        module.load_state_dict(params)
        optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE)
        x, y = client.examples.x.to(device), client.examples.y.to(device)
        generator = torch.Generator().manual_seed(client.seed)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator).to(device)
            for start in range(0, len(y), BATCH_SIZE):
                index = order[start : start + BATCH_SIZE]
                optimizer.zero_grad()
                with _autocast(device, autocast):
                    loss = nn.functional.cross_entropy(module(x[index]), y[index])
                loss.backward()
                optimizer.step()
        for k, v in module.state_dict().items():
            total[k] += len(y) * v.detach()
        examples += len(y)
    return {k: (v / examples).cpu() for k, v in total.items()}


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def cohort(clients: ClientData, round: int) -> list[ClientInput]:
    """Round ``round``'s cohort of 10 of ``clients``, as ``fedloom run`` samples it."""
    ids = sample_cohort(len(clients), 10, seed=0, round=round)
    return [
        ClientInput(clients.client(int(i)), client_seed(0, round, int(i))) for i in ids
    ]


def fedavg_runners(
    model: Any,
    process: Any,
    clients: ClientData,
    epochs: int,
    runtimes: dict[str, Callable[[], Any]],
) -> dict[str, Callable[[Any, int], Any]]:
    """A round of each runner, ``run(state, r)`` on round r's cohort of
    ``clients``: the torch loop (its state the model's parameters), then FedAvg's
    ``process`` on a runtime made afresh by each of ``runtimes`` (its state the
    process's)."""
    runners: dict[str, Callable[[Any, int], Any]] = {
        "torch loop": lambda params, r: torch_loop_round(
            model, params, cohort(clients, r), epochs
        ),
    }
    for name, runtime in runtimes.items():
        runners[name] = lambda state, r, runtime=runtime: process.next(
            state, cohort(clients, r), runtime=runtime()
        )[0]
    return runners


def rounds_in_turns(
    runners: dict[str, Callable[[Any, int], Any]], states: dict[str, Any], rounds: int
) -> dict[str, float]:
    """Seconds each runner took for rounds 0 to ``rounds`` - 1 from its state in
    ``states`` (which end as the last round leaves them). Round by round, the
    runners take turns, so a slow spell of a shared machine falls on all of them
    rather than on whichever ran then."""
    seconds = dict.fromkeys(runners, 0.0)
    for r in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            states[name] = run(states[name], r)
            seconds[name] += time.perf_counter() - started
    return seconds


def measure(
    dataset: Dataset,
    clients: ClientData,
    model_name: str,
    epochs: int,
    rounds: int,
    threads: int,
    steps_per_call: int = 1,
) -> list[dict[str, Any]]:
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, seed=0)
    process = fed_avg(
        model,
        client_learning_rate=LEARNING_RATE,
        local_epochs=epochs,
        batch_size=BATCH_SIZE,
    )
    runtimes: dict[str, Callable[[], Any]] = {
        "fedloom local": LocalRuntime,
        "fedloom vectorized": VectorizedRuntime,
        "fedloom vectorized, batched": lambda: VectorizedRuntime(chunk_size=10),
        "fedloom compiled": lambda: VectorizedRuntime(compile=True),
    }
    if steps_per_call > 1:
        runtimes[f"fedloom compiled x{steps_per_call}"] = lambda: VectorizedRuntime(
            compile=True, steps_per_call=steps_per_call
        )
    runners = fedavg_runners(model, process, clients, epochs, runtimes)
    torch.set_num_threads(threads)
    torch._dynamo.reset()  # compiled afresh at this thread count
    states: dict[str, Any] = {}
    first: dict[str, float] = {}
    for name, step in runners.items():
        state = model.init() if name == "torch loop" else process.init()
        started = time.perf_counter()
        step(state, rounds)  # warm-up round, not timed and not kept
        first[name] = time.perf_counter() - started
        states[name] = state
    seconds = rounds_in_turns(runners, states, rounds)
    rows: list[dict[str, Any]] = []
    for name in runners:
        state = states[name]
        params = state if name == "torch loop" else state.params
        accuracy = evaluate(model, params, dataset.test)["accuracy"]
        per_round = seconds[name] / rounds
        rows.append(
            {
                "model": model_name,
                "epochs": epochs,
                "runner": name,
                "threads": threads,
                "seconds_per_round": per_round,
                "first_round_seconds": first[name],
                "test_accuracy": accuracy,
            }
        )
        print(
            f"  {model_name} E={epochs} {name:<20} {threads} thread(s)"
            f" {per_round:8.3f} s/round  acc {accuracy:.4f}",
            flush=True,
        )
    baseline = rows[0]["seconds_per_round"]
    accuracies = [row["test_accuracy"] for row in rows]
    if max(accuracies) - min(accuracies) > 0.01:
        raise SystemExit(f"{model_name} E={epochs}: runners disagree: {accuracies}")
    for row in rows:
        row["speedup_vs_torch_loop"] = baseline / row["seconds_per_round"]
    return rows


def measure_flower(
    python: str,
    torch_loop: dict[str, Any],
    rounds: int,
    actors: int,
) -> dict[str, Any]:
    """Runs flower_baseline.py in Flower's virtual environment for one workload."""
    model_name, epochs = torch_loop["model"], torch_loop["epochs"]
    command = [
        python,
        str(FLOWER_SCRIPT),
        f"--model={model_name}",
        f"--epochs={epochs}",
        f"--rounds={rounds}",
        f"--actors={actors}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{model_name} E={epochs}: flower_baseline.py failed")
    result = json.loads(lines[-1])
    seconds, accuracy = result["seconds_per_round"], result["test_accuracy"]
    name = "flower simulation"
    print(
        f"  {model_name} E={epochs} {name:<20} {seconds:8.3f} s/round"
        f"  acc {accuracy:.4f}  (flwr {result['flwr_version']}, {actors} actor(s))",
        flush=True,
    )
    if abs(accuracy - torch_loop["test_accuracy"]) > FLOWER_ACCURACY_TOLERANCE:
        message = (
            f"{model_name} E={epochs}: flower accuracy {accuracy:.4f} is not within"
            f" {FLOWER_ACCURACY_TOLERANCE} of the torch loop's"
            f" {torch_loop['test_accuracy']:.4f}"
        )
        if rounds > 1:
            raise SystemExit(message)
        # After a single round accuracy still moves by more than the tolerance
        # from one client split / seed to another (0.51 to 0.57 for Flower's own
        # 2NN E=1 runs), so a one-round run (--quick) only warns.
        print(f"  warning: {message} (one round: split and seed noise)", flush=True)
    return {
        "model": model_name,
        "epochs": epochs,
        "runner": name,
        "threads": actors,  # one actor, one core, one torch thread
        "seconds_per_round": seconds,
        "test_accuracy": accuracy,
        "speedup_vs_torch_loop": torch_loop["seconds_per_round"] / seconds,
        "flwr_version": result["flwr_version"],
        "flower_actors": actors,
        "flower_warmup_round_seconds": result["warmup_round_seconds"],
    }


def best_of_each(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each runner's fastest row (over the thread counts) in one workload's rows."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        chosen = best.get(row["runner"])
        if chosen is None or row["seconds_per_round"] < chosen["seconds_per_round"]:
            best[row["runner"]] = row
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({1, os.cpu_count() or 1}),
        help="torch threads (Flower: actors) to run every workload with",
    )
    parser.add_argument("--quick", action="store_true", help="2NN, E=1, one round")
    parser.add_argument(
        "--steps-per-call",
        type=int,
        default=1,
        help="K > 1 adds a 'fedloom compiled xK' runner: K local steps a compiled call",
    )
    parser.add_argument("--models", nargs="+", default=["2nn", "cnn"])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--reuse-cpu-memory", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--flower-python",
        help="python of Flower's venv: adds a 'flower simulation' row (see docstring)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/simulation_speed.json")
    )
    args = parser.parse_args()
    reused = args.reuse_cpu_memory and reuse_cpu_memory()
    dataset, clients = fashion_mnist_clients()
    grid = [(m, e) for m in args.models for e in args.epochs]
    if args.quick:
        grid = [("2nn", 1)]
    rounds = 1 if args.quick else args.rounds
    rows: list[dict[str, Any]] = []
    summary = []
    compared = ["vectorized", "compiled"]
    if args.steps_per_call > 1:
        compared.append(f"compiled x{args.steps_per_call}")
    for model_name, epochs in grid:
        workload = []
        for threads in args.threads:
            measured = measure(
                dataset,
                clients,
                model_name,
                epochs,
                rounds,
                threads,
                args.steps_per_call,
            )
            workload += measured
            if args.flower_python:
                workload.append(
                    measure_flower(args.flower_python, measured[0], rounds, threads)
                )
        rows += workload
        best = best_of_each(workload)
        line: dict[str, Any] = {
            "model": model_name,
            "epochs": epochs,
            "best_threads": {name: row["threads"] for name, row in best.items()},
        }
        for runner in compared:
            seconds = best[f"fedloom {runner}"]["seconds_per_round"]
            loop = best["torch loop"]["seconds_per_round"]
            line[f"{runner}_over_torch_loop"] = loop / seconds
            if args.flower_python:
                flower = best["flower simulation"]["seconds_per_round"]
                line[f"flower_over_{runner}"] = flower / seconds
        summary.append(line)
    print(
        f"\n{'model':<6}{'E':>3}  {'runner':<20}{'threads':>8}{'s/round':>10}"
        f"{'vs torch loop':>15}{'accuracy':>10}"
    )
    for row in rows:
        print(
            f"{row['model']:<6}{row['epochs']:>3}  {row['runner']:<20}"
            f"{row['threads']:>8}{row['seconds_per_round']:>10.3f}"
            f"{row['speedup_vs_torch_loop']:>14.2f}x{row['test_accuracy']:>10.4f}"
        )
    for runner in compared:
        print(f"\neach runner at its best thread count: fedloom {runner} is")
        for line in summary:
            flower = line.get(f"flower_over_{runner}")
            print(
                f"  {line['model']:<6}E={line['epochs']:<3}"
                f"{line[f'{runner}_over_torch_loop']:>6.2f}x faster than the torch "
                "loop"
                + (f", {flower:.2f}x faster than Flower" if flower else "")
                + f"  (threads: {line['best_threads']})"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "reuse_cpu_memory": reused,
        },
        "workload": {
            "dataset": "fashion_mnist",
            "clients": 100,
            "cohort": 10,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "rounds": rounds,
            "threads": args.threads,
        },
        "rows": rows,
        "best_of_each": summary,
    }
    if args.flower_python:
        report["flower"] = {"python": args.flower_python}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
