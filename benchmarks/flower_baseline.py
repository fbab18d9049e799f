"""Baseline: the simulation_speed.py workload in Flower's simulation engine.

Runs McMahan et al.'s FedAvg workload (Fashion-MNIST, 100 IID clients of 600
examples, 10 clients a round, B = 10, lr 0.05, the 2NN or the CNN, E local epochs)
in Flower's Ray-based simulation and prints one JSON line::

    {"model": ..., "epochs": ..., "seconds_per_round": ..., "test_accuracy": ...,
     "flwr_version": ..., ...}

It does not import fedloom: it runs in its own virtual environment, which Flower
is not a dependency of fedloom. Install it with (torch pinned: that pin takes the
local CPU wheel; an unpinned torch would pull a multi-GB CUDA build)::

    python3.11 -m venv /tmp/flower-venv
    /tmp/flower-venv/bin/pip install "flwr[simulation]==1.42.*" "torch==2.13.0" numpy

and run it with that interpreter, directly or through simulation_speed.py::

    /tmp/flower-venv/bin/python benchmarks/flower_baseline.py --model 2nn \\
        --epochs 1 --rounds 2
    python benchmarks/simulation_speed.py --flower-python /tmp/flower-venv/bin/python

Flower side: ``flwr.simulation.run_simulation`` (the supported entry point in 1.42;
``start_simulation`` is the deprecated legacy one) with a ``ServerApp`` built from
``ServerAppComponents`` holding the classic ``flwr.server.strategy.FedAvg``
(``fraction_fit=0.1``, ``fraction_evaluate=0``: no client-side evaluation, no
server-side ``evaluate_fn``) and a ``ClientApp`` wrapping a ``NumPyClient`` whose
``fit`` runs E epochs of ``torch.optim.SGD`` over shuffled batches of 10. Each client
actor uses one torch thread and ``client_resources={"num_cpus": 1}``; Ray is given
``--actors`` CPUs (default 1), so that many clients train concurrently. The default
of 1 gives Flower the same one core that simulation_speed.py's single-threaded
runners use; ``--actors 2`` lets it use both cores of this machine.

Timing: the strategy stamps ``time.perf_counter()`` when each round starts
(``configure_fit``) and when it ends (after ``aggregate_fit``). The script runs
1 + R rounds; the first one is the warm-up (Ray actors starting, first imports and
data loads in each actor, like the untimed warm-up round of simulation_speed.py) and
is excluded: ``seconds_per_round = (end of round 1 + R - end of round 1) / R``. This
covers everything Flower does per round (sampling, serialising parameters, sending
messages to the actors, client_fn, training, aggregation) but not the start-up and
shut-down of the simulation. The global model after R rounds (the number of rounds
simulation_speed.py's runners keep) is evaluated centrally, after the simulation, on
the 10,000 test images.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
NUM_CLIENTS = 100
EXAMPLES_PER_CLIENT = 600
COHORT = 10
LEARNING_RATE = 0.05
BATCH_SIZE = 10
CACHE = Path(os.environ.get("FLOWER_BASELINE_CACHE", "/tmp/flower_baseline_cache"))


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def _prepare_cache() -> None:
    """Decode the IDX files once into .npy files that every actor memory-maps."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x_path, y_path = CACHE / f"{split}_x.npy", CACHE / f"{split}_y.npy"
        if x_path.exists() and y_path.exists():
            continue
        x = _read_idx(DATA_DIR / f"{prefix}-images-idx3-ubyte.gz", 16)
        y = _read_idx(DATA_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8)
        np.save(x_path, x.reshape(len(y), 1, 28, 28))
        np.save(y_path, y)


def _load(split: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.load(CACHE / f"{split}_x.npy", mmap_mode="r")
    y = np.load(CACHE / f"{split}_y.npy", mmap_mode="r")
    return x, y


def _partition(seed: int = 0) -> np.ndarray:
    """A fixed IID split: row i holds the 600 training indices of client i."""
    order = np.random.default_rng(seed).permutation(NUM_CLIENTS * EXAMPLES_PER_CLIENT)
    return order.reshape(NUM_CLIENTS, EXAMPLES_PER_CLIENT)


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0),
        torch.from_numpy(np.asarray(y, dtype=np.int64)),
    )


def build_model(name: str) -> nn.Module:
    if name == "2nn":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 200),
            nn.ReLU(),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, 10),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )
    raise ValueError(f"unknown model {name!r}")


def get_weights(module: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy() for v in module.state_dict().values()]


def set_weights(module: nn.Module, weights: list[np.ndarray]) -> None:
    keys = module.state_dict().keys()
    module.load_state_dict(
        {k: torch.from_numpy(np.array(w)) for k, w in zip(keys, weights, strict=True)}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["2nn", "cnn"], default="2nn")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds")
    parser.add_argument(
        "--actors", type=int, default=1, help="CPUs given to Ray = concurrent clients"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Ray's worker processes inherit the environment: one torch thread each.
    os.environ["OMP_NUM_THREADS"] = "1"
    import flwr
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    torch.set_num_threads(1)
    _prepare_cache()
    model_name, epochs = args.model, args.epochs
    torch.manual_seed(args.seed)
    initial = get_weights(build_model(model_name))

    class FashionClient(NumPyClient):
        def __init__(self, cid: int, seed: int) -> None:
            self.cid, self.seed = cid, seed

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            torch.set_num_threads(1)
            x_all, y_all = _load("train")
            index = np.sort(_partition()[self.cid])
            x, y = _tensors(x_all[index], y_all[index])
            module = build_model(model_name)
            set_weights(module, parameters)
            optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE)
            generator = torch.Generator().manual_seed(
                self.seed * 1_000_003 + int(config.get("round", 0)) * 1009 + self.cid
            )
            for _ in range(epochs):
                order = torch.randperm(len(y), generator=generator)
                for start in range(0, len(y), BATCH_SIZE):
                    batch = order[start : start + BATCH_SIZE]
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(module(x[batch]), y[batch])
                    loss.backward()
                    optimizer.step()
            return get_weights(module), len(y), {}

    def client_fn(context: Any) -> Any:
        cid = int(context.node_config["partition-id"])
        return FashionClient(cid, args.seed).to_client()

    stamps: dict[str, list[float]] = {"start": [], "end": []}
    history: dict[int, list[np.ndarray]] = {}

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round: int, parameters: Any, client_manager):
            stamps["start"].append(time.perf_counter())
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any):
            if failures:
                raise RuntimeError(f"round {server_round}: {failures!r}")
            aggregated = super().aggregate_fit(server_round, results, failures)
            history[server_round] = parameters_to_ndarrays(aggregated[0])
            stamps["end"].append(time.perf_counter())
            return aggregated

    def server_fn(context: Any) -> ServerAppComponents:
        strategy = TimedFedAvg(
            fraction_fit=COHORT / NUM_CLIENTS,
            fraction_evaluate=0.0,
            min_fit_clients=COHORT,
            min_evaluate_clients=0,
            min_available_clients=NUM_CLIENTS,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=lambda r: {"round": r},
        )
        return ServerAppComponents(
            strategy=strategy, config=ServerConfig(num_rounds=1 + args.rounds)
        )

    started = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=NUM_CLIENTS,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": args.actors,
                "num_gpus": 0,
                "logging_level": logging.ERROR,
                "log_to_driver": False,
            },
        },
    )
    total = time.perf_counter() - started
    if len(stamps["end"]) != 1 + args.rounds:
        raise SystemExit(f"only {len(stamps['end'])} rounds completed: {stamps}")
    seconds = (stamps["end"][-1] - stamps["end"][0]) / args.rounds

    module = build_model(model_name)
    set_weights(module, history[args.rounds])
    x_test, y_test = _tensors(*_load("test"))
    with torch.no_grad():
        accuracy = (module(x_test).argmax(1) == y_test).float().mean().item()
    print(
        json.dumps(
            {
                "model": model_name,
                "epochs": epochs,
                "seconds_per_round": seconds,
                "test_accuracy": accuracy,
                "flwr_version": flwr.__version__,
                "rounds_timed": args.rounds,
                "warmup_round_seconds": stamps["end"][0] - stamps["start"][0],
                "simulation_wall_seconds": total,
                "actors": args.actors,
                "torch": torch.__version__,
            }
        ),
        flush=True,
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
