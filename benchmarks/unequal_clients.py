"""Claim: on clients of unequal size, the eager vectorized runtime trains only the
clients that still have batches, and stays faster than a plain PyTorch loop.

A cohort's clients are padded to its largest; once a client's batches of an epoch
have run out, a masked step computed it with the rest and kept its parameters.
The runtime now plans a cohort longest first, so the clients with a batch at any
step are its first ones, and trains those alone (``plan_training(...,
longest_first=True)``, ``cohort_local_training``). Fashion-MNIST over 100 clients
of lognormal sizes (``quantity_skew``, sigma 1) or Dirichlet labels (alpha 0.5),
cohorts of 10 sampled as in FedAvg (C = 0.1), the 2NN, B = 10, lr 0.05, at each
thread count, in one process:

1. one cohort's local training both ways (masked, the cohort in its own order;
   narrowed, longest first) by the eager and by the compiled step, and the torch
   loop's round of the same cohort, taking turns, best of ``--repeats``; the
   forms leave the same parameters after an epoch to float32 rounding;
2. FedAvg rounds of the torch loop, the local runtime and the vectorized runtime,
   taking turns round by round (``simulation_speed.py``'s runners), mean of
   ``--rounds`` rounds after a warm-up, the ratio to the torch loop; their test
   accuracies must agree within a point (float32 rounding parts them a little).

    python benchmarks/unequal_clients.py [--partitions quantity_skew dirichlet]
        [--epochs 1 5] [--threads 1 2] [--rounds 3] [--repeats 5]
        [--json benchmarks/results/unequal_clients.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compiled_step import assert_same
from benchmarks.records import write_record
from benchmarks.simulation_speed import (
    BATCH_SIZE,
    LEARNING_RATE,
    cohort,
    fedavg_runners,
    rounds_in_turns,
    torch_loop_round,
)
from benchmarks.turns import best_per_step
from fedloom.core import Replicated
from fedloom.data import ClientData, load_dataset
from fedloom.learning import ClientInput, build_model, evaluate, fed_avg, sgd
from fedloom.learning._cohort_work import (
    CohortStep,
    cohort_local_training,
    plan_training,
)
from fedloom.runtimes import LocalRuntime, VectorizedRuntime, reuse_cpu_memory

PARTITIONS = {
    "quantity_skew": {"sigma": 1.0},
    "dirichlet": {"alpha": 0.5},
}
COHORT = 10


def masked_steps(sizes: list[int], epochs: int) -> tuple[int, int]:
    """(steps of a round, those where some client has no batch) for a cohort of
    ``sizes``."""
    steps = -(-max(sizes) // BATCH_SIZE)
    masked = steps - -(-min(sizes) // BATCH_SIZE)
    return epochs * steps, epochs * masked


def training_forms(model: Any, members: list[ClientInput], epochs: int, args: Any):
    """Seconds of one cohort's local training, masked and narrowed, by the eager
    step and by the compiled one (whose narrowed steps run eagerly), and of the
    torch loop's round of that cohort (training and averaging), after a check
    that all four leave the same parameters after one epoch to float32 rounding
    (over more, float32's rounding grows apart: at E = 5 every form, the masked
    eager one of before included, was 2.7 % of the largest change off a float64
    reference, on the 2-core machine of 2026-11-28)."""
    examples = [m.examples for m in members]
    seeds = [m.seed for m in members]
    start = Replicated(model.init(), len(members))
    cpu = torch.device("cpu")
    steps = {
        compiled: CohortStep(model, sgd(LEARNING_RATE), compile=compiled)
        for compiled in (False, True)
    }
    runs: dict[int, dict[str, Any]] = {}
    for e in {1, epochs}:
        runs[e] = {}
        for narrow in (False, True):
            plan = plan_training(
                start, examples, seeds, e, BATCH_SIZE, cpu, longest_first=narrow
            )
            for compiled, step in steps.items():
                form = ("compiled" if compiled else "eager") + (
                    ", narrowed" if narrow else ", masked"
                )
                runs[e][form] = lambda step=step, plan=plan: cohort_local_training(
                    step, plan
                )[0]
    assert_same([run() for run in runs[1].values()], rtol=1e-4, atol=1e-5)
    params = model.init()  # and the torch loop's round of the same cohort
    runs[epochs]["torch loop"] = lambda: torch_loop_round(
        model, params, members, epochs
    )
    return best_per_step(runs[epochs], 1, args.repeats)


def rounds(dataset: Any, clients: ClientData, epochs: int, args: Any) -> dict:
    model = build_model("2nn", dataset.input_shape, dataset.num_classes, seed=0)
    process = fed_avg(
        model,
        client_learning_rate=LEARNING_RATE,
        local_epochs=epochs,
        batch_size=BATCH_SIZE,
    )
    runners = fedavg_runners(
        model,
        process,
        clients,
        epochs,
        {
            "fedloom local": LocalRuntime,
            "fedloom vectorized": VectorizedRuntime,
            "fedloom compiled": lambda: VectorizedRuntime(compile=True),
        },
    )
    states = {}
    for name, run in runners.items():
        first = model.init() if name == "torch loop" else process.init()
        states[name] = run(first, args.rounds)  # warm-up round, not timed
    seconds = rounds_in_turns(runners, states, args.rounds)
    accuracy = {
        name: evaluate(
            model, state if name == "torch loop" else state.params, dataset.test
        )["accuracy"]
        for name, state in states.items()
    }
    if max(accuracy.values()) - min(accuracy.values()) > 0.01:
        raise SystemExit(f"runners disagree: {accuracy}")
    per_round = {name: s / args.rounds for name, s in seconds.items()}
    return {
        "seconds_per_round": per_round,
        "speedup_vs_torch_loop": {
            name: per_round["torch loop"] / s for name, s in per_round.items()
        },
        "test_accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS))
    parser.add_argument("--epochs", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/unequal_clients.json")
    )
    args = parser.parse_args()
    reuse_cpu_memory()
    dataset = load_dataset("fashion_mnist")
    model = build_model("2nn", dataset.input_shape, dataset.num_classes, seed=0)
    rows = []
    for partition in args.partitions:
        clients = ClientData.from_dataset(
            dataset, partition, 100, seed=0, **PARTITIONS[partition]
        )
        members = cohort(clients, 0)
        sizes = [len(m.examples) for m in members]
        for threads in args.threads:
            torch.set_num_threads(threads)
            torch._dynamo.reset()  # compiled afresh at this thread count
            for epochs in args.epochs:
                steps, masked = masked_steps(sizes, epochs)
                training = training_forms(model, members, epochs, args)
                row = {
                    "partition": partition,
                    "threads": threads,
                    "epochs": epochs,
                    "cohort_sizes": sizes,
                    "steps": steps,
                    "masked_steps": masked,
                    "training_seconds": training,
                    "narrowed_speedup": {
                        form: training[f"{form}, masked"]
                        / training[f"{form}, narrowed"]
                        for form in ("eager", "compiled")
                    },
                    **rounds(dataset, clients, epochs, args),
                }
                rows.append(row)
                print(
                    f"{partition} {threads} thread(s) E={epochs}: training "
                    + ", ".join(f"{f} {t:.3f} s" for f, t in training.items())
                    + "; rounds "
                    + ", ".join(
                        f"{n} {s:.3f} s ({row['speedup_vs_torch_loop'][n]:.2f}x)"
                        for n, s in row["seconds_per_round"].items()
                    ),
                    flush=True,
                )
    print(
        "\n2NN, Fashion-MNIST, 10 clients of unequal size a round, B = 10, lr 0.05;"
        " one cohort's local training, masked -> narrowed, and the torch loop's round"
        " of it (loop 1; seconds), and rounds"
        " (seconds, ratio to the torch loop):"
    )
    print(
        f"{'partition':<14} {'thr':>3} {'E':>2} {'masked':>6}/{'steps':<5}"
        f" {'eager':>19} {'compiled':>19} {'loop 1':>6} {'loop':>6} {'local':>13}"
        f" {'vectorized':>13} {'compiled':>13}"
    )
    for row in rows:
        t, r = row["training_seconds"], row["seconds_per_round"]
        ratio, gain = row["speedup_vs_torch_loop"], row["narrowed_speedup"]
        forms = "".join(
            f" {t[f + ', masked']:6.3f}->{t[f + ', narrowed']:5.3f} {gain[f]:4.2f}x"
            for f in ("eager", "compiled")
        )
        rounds_ = "".join(
            f" {r[n]:6.3f} ({ratio[n]:.2f}x)"
            for n in ("fedloom local", "fedloom vectorized", "fedloom compiled")
        )
        print(
            f"{row['partition']:<14} {row['threads']:>3} {row['epochs']:>2}"
            f" {row['masked_steps']:>6}/{row['steps']:<5}{forms}"
            f" {t['torch loop']:6.3f} {r['torch loop']:6.3f}{rounds_}"
        )
    write_record(args.json, args, rows=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
