"""A device with its own data and its own client work, through the Python API.

Start the server of the README's walkthrough (``fedloom server
examples/deploy/digits_server.toml``), then, instead of ``fedloom client``::

    python examples/deploy/own_client.py --token-file \
        examples/deploy/certs/clients/client-0.token --rows 0:900

The data here are rows of the digits' training split (the server evaluates on the
test split, which no device may hold: its test accuracy would count examples trained
on); on a real device they would be the device's own. The client work is FedAvg's local
training, registered under the name the server asks for, with a log line added: a
device runs only what it registered, whatever the server names.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedloom.data import Examples, load_dataset
from fedloom.deploy import DeviceClient, register_client_work
from fedloom.learning import (
    ClientInput,
    ClientResult,
    FunctionalModel,
    LocalTraining,
    Params,
    build_model,
    sgd,
)


def my_examples(rows: slice) -> Examples:
    """This device's data: 8x8 digit images in [0, 1] and their labels, from the
    training split of the server's seed (0)."""
    train = load_dataset("digits", seed=0).train
    return Examples(train.x[rows], train.y[rows])


def logged_local_training(model: FunctionalModel, config: Mapping[str, Any]) -> Any:
    """FedAvg's local training, as the built-in factory makes it, announcing each
    task."""
    train = LocalTraining(
        model, sgd(config["learning_rate"]), config["epochs"], config["batch_size"]
    )

    def work(params: Params, data: ClientInput) -> ClientResult:
        print(f"training {config['epochs']} epochs on {len(data.examples)} examples")
        return train(params, data)

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:8765")
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--ca", type=Path, default=Path("examples/deploy/certs/ca.pem"))
    parser.add_argument(
        "--rows", default="0:900", help="START:STOP rows of the 1,438 training digits"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start, stop = (int(part) for part in args.rows.split(":"))
    register_client_work("fedavg/local_training", logged_local_training, replace=True)
    client = DeviceClient(
        args.server,
        token=args.token_file.read_text().strip(),
        examples=my_examples(slice(start, stop)),
        model=build_model("2nn", (1, 8, 8), 10),
        root_certificates=args.ca.read_bytes(),
        name=args.token_file.stem,
    )
    print(f"{client.run()} tasks done")


if __name__ == "__main__":
    main()
