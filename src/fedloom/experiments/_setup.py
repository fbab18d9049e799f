"""From a validated configuration to the objects of a run: data, model, process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fedloom.core import Runtime
from fedloom.data import ClientData, DataFileError, Dataset, Examples, load_dataset
from fedloom.learning import (
    AUTOCAST_DTYPES,
    FunctionalModel,
    LearningProcess,
    Optimizer,
    adam,
    build_model,
    fed_avg,
    fed_sgd,
    momentum,
    sgd,
)
from fedloom.runtimes import get_runtime

from ._config import AlgorithmConfig, ConfigError, ExperimentConfig

__all__ = ["Setup", "build_process", "build_server_optimizer", "setup"]


@dataclass(frozen=True)
class Setup:
    """Everything a run needs besides its state."""

    dataset: Dataset
    clients: ClientData
    model: FunctionalModel
    process: LearningProcess
    cohort_size: int
    runtime: Runtime
    test: Examples
    """The test set, on the configuration's device (evaluated there every round)."""


def build_server_optimizer(algorithm: AlgorithmConfig, lr: float) -> Optimizer:
    """The server optimizer a configuration names, at learning rate ``lr``."""
    if algorithm.server_optimizer == "momentum":
        return momentum(lr, beta=algorithm.server_momentum)
    if algorithm.server_optimizer == "adam":
        return adam(
            lr,
            beta1=algorithm.server_momentum,
            beta2=algorithm.server_beta2,
            epsilon=algorithm.server_epsilon,
            bias_correction=False,  # FedAdam as in Reddi et al. 2021, Algorithm 2
        )
    return sgd(lr)


def build_process(
    algorithm: AlgorithmConfig, model: FunctionalModel
) -> LearningProcess:
    """The learning process a configuration names."""
    if algorithm.name == "fedsgd":
        # FedSGD's step size eta is ``client_learning_rate``, the key FedAvg uses for
        # its local steps, so one learning-rate grid sweeps both (McMahan et al. 2017
        # tune eta for both the same way). The server optimizer takes the step.
        eta = algorithm.client_learning_rate
        return fed_sgd(
            model,
            learning_rate=eta,
            server_optimizer=build_server_optimizer(algorithm, eta),
        )
    server_optimizer = build_server_optimizer(algorithm, algorithm.server_learning_rate)
    return fed_avg(
        model,
        client_learning_rate=algorithm.client_learning_rate,
        local_epochs=algorithm.local_epochs,
        batch_size=algorithm.batch_size,
        server_optimizer=server_optimizer,
    )


def _partition_options(config: ExperimentConfig) -> dict[str, Any]:
    data = config.data
    if data.partition == "dirichlet":
        return {"alpha": data.alpha}
    if data.partition == "shards":
        return {"shards_per_client": data.shards_per_client}
    if data.partition == "quantity_skew":
        return {"sigma": data.sigma}
    return {}


@contextlib.contextmanager
def _naming(fields: str) -> Iterator[None]:
    """Turn an error raised while building from the config into one naming fields
    (not one about the data's files: missing, unreadable or corrupt, they say so)."""
    try:
        yield
    except (OSError, DataFileError):
        raise
    except (TypeError, ValueError) as error:
        message = f"{fields}: {error}"
        raise ConfigError(message, [(fields, str(error))]) from error


def setup(config: ExperimentConfig) -> Setup:
    """Load the data, partition it, build the model and the process."""
    data = config.data
    with _naming(f"data.dataset ({data.dataset!r}) / data.options"):
        dataset = load_dataset(data.dataset, seed=config.seed, **data.options)
    with _naming(f"data.partition ({data.partition!r}) / data.num_clients"):
        clients = ClientData.from_dataset(
            dataset,
            data.partition,
            data.num_clients,
            seed=config.seed,
            **_partition_options(config),
        )
    autocast = config.model.autocast
    with _naming(f"model.name ({config.model.name!r})"):
        model = build_model(
            config.model.name,
            dataset.input_shape,
            dataset.num_classes,
            seed=config.seed,
            autocast=None if autocast is None else AUTOCAST_DTYPES[autocast],
        )
    with _naming(f"runtime ({config.runtime!r}) / device ({config.device!r})"):
        runtime = get_runtime(
            config.runtime,
            device=config.device,
            chunk_size=config.chunk_size,
            compile=config.compile,
            steps_per_call=config.steps_per_call,
        )
    return Setup(
        dataset=dataset,
        clients=clients,
        model=model,
        process=build_process(config.algorithm, model),
        cohort_size=config.algorithm.cohort_size(len(clients)),
        runtime=runtime,
        test=dataset.test.to(config.device),
    )
