"""The example configurations load; settings FedSGD would ignore are refused."""

from pathlib import Path

import pytest

from fedloom.experiments import ConfigError, config_from_dict, load_config

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))


def test_there_are_examples():
    names = {p.stem for p in EXAMPLES}
    assert {"digits", "fashion_mnist_2nn_iid", "fashion_mnist_cnn_shards"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_is_valid(path):
    config = load_config(path)
    assert config.algorithm.cohort_size(config.data.num_clients) >= 1


def _fedsgd(**algorithm):
    return {"algorithm": {"name": "fedsgd", "client_fraction": 0.1, **algorithm}}


@pytest.mark.parametrize(
    ("algorithm", "field"),
    [
        ({"batch_size": 10}, "algorithm.batch_size"),
        ({"server_learning_rate": 0.5}, "algorithm.server_learning_rate"),
        ({"local_epochs": 5}, "algorithm.local_epochs"),
    ],
)
def test_fedsgd_refuses_settings_it_would_ignore(algorithm, field):
    with pytest.raises(ConfigError, match=field):
        config_from_dict(_fedsgd(**algorithm))
    assert config_from_dict(_fedsgd()).algorithm.batch_size is None
