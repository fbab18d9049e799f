"""The client works a device runs: registered by name, built from the task config."""

from __future__ import annotations

import pytest
import torch

from fedloom.deploy import (
    client_work,
    register_client_work,
    registered_client_works,
    task_model,
    task_spec,
)
from fedloom.experiments import config_from_dict
from fedloom.experiments._config import ALGORITHMS
from fedloom.learning import FullBatchGradient, LocalTraining, build_model


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_names_a_client_work_devices_have(algorithm: str) -> None:
    config = config_from_dict(
        {"algorithm": {"name": algorithm, "clients_per_round": 1}}
    )
    spec = task_spec(config)
    assert spec.client_work in registered_client_works()
    model = build_model(config.model.name, (1, 8, 8), 10)
    work = client_work(spec.client_work, model, {**spec.config, "seed": 3})
    expected = LocalTraining if algorithm == "fedavg" else FullBatchGradient
    assert isinstance(work, expected)
    if isinstance(work, LocalTraining):
        assert (work.epochs, work.batch_size) == (5, 10)


def test_an_unregistered_or_misconfigured_work_is_refused() -> None:
    model = build_model("logistic", (4,), 2)
    with pytest.raises(LookupError, match="'evil/exec' is not registered"):
        client_work("evil/exec", model, {})
    with pytest.raises(ValueError, match="'epochs' must be an integer"):
        client_work(
            "fedavg/local_training", model, {"learning_rate": 0.1, "epochs": "5"}
        )
    with pytest.raises(ValueError, match="already registered"):
        register_client_work("fedavg/local_training", lambda m, c: None)  # type: ignore[arg-type,return-value]


def test_devices_build_the_model_in_the_servers_precision() -> None:
    for autocast, dtype in ((None, None), ("bfloat16", torch.bfloat16)):
        model: dict = (
            {"name": "2nn"}
            if autocast is None
            else {"name": "2nn", "autocast": autocast}
        )
        config = config_from_dict(
            {"model": model, "algorithm": {"name": "fedavg", "clients_per_round": 1}}
        )
        spec = task_spec(config)
        assert spec.config.get("autocast") == autocast
        built = task_model(spec.config, (1, 8, 8), 10)
        assert built.autocast is dtype
    with pytest.raises(ValueError, match="'autocast' must be 'bfloat16'"):
        task_model({"model": "2nn", "autocast": "float16"}, (1, 8, 8), 10)
