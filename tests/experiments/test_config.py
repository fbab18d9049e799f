"""Tests for the experiment configuration: TOML, overrides, validation messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedloom.experiments._config import (
    DATASETS,
    AlgorithmConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
)

FULL_EXAMPLE = """\
seed = 0
rounds = 50
runtime = "local"
target_accuracy = 0.9
eval_every = 1

[data]
dataset = "digits"
partition = "dirichlet"
num_clients = 100
alpha = 0.5
shards_per_client = 2
sigma = 1.0

[data.options]
alpha = 1.0
beta = 1.0

[model]
name = "cnn"

[algorithm]
name = "fedavg"
client_fraction = 0.1
local_epochs = 5
batch_size = 10
client_learning_rate = 0.05
server_optimizer = "adam"
server_learning_rate = 1.0
server_momentum = 0.9
server_beta2 = 0.99
server_epsilon = 1e-3
"""

MINIMAL = """\
[algorithm]
clients_per_round = 10
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str, *overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    return info.value


def test_full_example_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_EXAMPLE))
    assert cfg.seed == 0 and cfg.rounds == 50 and cfg.runtime == "local"
    assert cfg.target_accuracy == 0.9 and cfg.eval_every == 1
    assert cfg.data == DataConfig(
        dataset="digits",
        partition="dirichlet",
        num_clients=100,
        alpha=0.5,
        options={"alpha": 1.0, "beta": 1.0},
    )
    assert cfg.model.name == "cnn"
    algorithm = cfg.algorithm
    assert algorithm.client_fraction == 0.1 and algorithm.clients_per_round is None
    assert (algorithm.local_epochs, algorithm.batch_size) == (5, 10)
    assert algorithm.server_optimizer == "adam"
    assert (algorithm.server_beta2, algorithm.server_epsilon) == (0.99, 1e-3)
    assert algorithm.cohort_size(cfg.data.num_clients) == 10


def test_minimal_example_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.rounds == 50 and cfg.target_accuracy is None
    assert cfg.data.dataset == "digits" and cfg.data.partition == "iid"
    assert cfg.algorithm.name == "fedavg" and cfg.algorithm.local_epochs == 5
    assert cfg.algorithm.cohort_size(100) == 10


def test_threads_default_to_one_for_local_and_every_core_for_vectorized(
    tmp_path: Path,
) -> None:
    local = load_config(write(tmp_path, MINIMAL))
    assert local.threads is None and local.torch_threads() == 1
    vectorized = local.model_copy(update={"runtime": "vectorized"})
    assert vectorized.torch_threads() == len(os.sched_getaffinity(0))
    assert vectorized.model_copy(update={"threads": 3}).torch_threads() == 3


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("partition", ["iid", "shards", "quantity_skew", "natural"])
def test_every_dataset_and_partition(
    tmp_path: Path, dataset: str, partition: str
) -> None:
    cfg = load_config(
        write(tmp_path, MINIMAL),
        [f"data.dataset={dataset}", f'data.partition="{partition}"'],
    )
    assert (cfg.data.dataset, cfg.data.partition) == (dataset, partition)


@pytest.mark.parametrize("model", ["2nn", "cnn", "logistic"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_every_model_and_server_optimizer(
    tmp_path: Path, model: str, optimizer: str
) -> None:
    cfg = load_config(
        write(tmp_path, MINIMAL),
        [f'model.name="{model}"', f"algorithm.server_optimizer={optimizer}"],
    )
    assert (cfg.model.name, cfg.algorithm.server_optimizer) == (model, optimizer)


def test_batch_size_all_is_none_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), ['algorithm.batch_size="all"'])
    assert cfg.algorithm.batch_size is None
    assert config_to_dict(cfg)["algorithm"]["batch_size"] == "all"
    assert load_config(write(tmp_path, MINIMAL), ["algorithm.batch_size=all"]) == cfg


def test_fedsgd_defaults_and_rejects_local_epochs(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), ["algorithm.name=fedsgd"])
    assert cfg.algorithm.local_epochs == 1 and cfg.algorithm.batch_size is None
    cfg = load_config(
        write(tmp_path, MINIMAL), ["algorithm.name=fedsgd", "algorithm.local_epochs=1"]
    )
    assert cfg.algorithm.local_epochs == 1
    error = config_error(
        tmp_path, MINIMAL, "algorithm.name=fedsgd", "algorithm.local_epochs=5"
    )
    assert "algorithm.local_epochs" in str(error) and "got 5" in str(error)


def test_negative_learning_rate_message_names_file_and_field(tmp_path: Path) -> None:
    text = MINIMAL + "client_learning_rate = -0.1\n"
    path = write(tmp_path, text, "digits.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: algorithm.client_learning_rate: must be > 0 (got -0.1)"
    )
    assert info.value.problems == (
        ("algorithm.client_learning_rate", "must be > 0 (got -0.1)"),
    )


@pytest.mark.parametrize(
    "field", ["client_learning_rate", "server_learning_rate", "server_epsilon"]
)
def test_zero_rates_are_rejected(tmp_path: Path, field: str) -> None:
    error = config_error(tmp_path, MINIMAL, f"algorithm.{field}=0")
    assert f"algorithm.{field}: must be > 0 (got 0)" in str(error)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("threads=100000", "threads: must be <= 1024 (got 100000)"),
        ("seed=18446744073709551616", "seed: must be <= 18446744073709551615"),
    ],
)
def test_values_the_run_cannot_use_are_refused(
    tmp_path: Path, assignment: str, message: str
) -> None:
    assert message in str(config_error(tmp_path, MINIMAL, assignment))


def test_unknown_dataset_lists_the_choices(tmp_path: Path) -> None:
    error = config_error(tmp_path, '[data]\ndataset = "cifar"\n' + MINIMAL)
    message = str(error)
    assert "data.dataset" in message and "'cifar'" in message
    for name in DATASETS:
        assert name in message


def test_unknown_field_is_named(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "lr = 0.1\n")
    assert str(error).endswith("algorithm.lr: unknown field")
    error = config_error(tmp_path, MINIMAL + "[extra]\nx = 1\n")
    assert "extra: unknown field" in str(error)


def test_neither_client_fraction_nor_count(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[algorithm]\nlocal_epochs = 1\n")
    assert "algorithm.client_fraction" in str(error)
    assert "clients_per_round" in str(error)


def test_missing_algorithm_section(tmp_path: Path) -> None:
    error = config_error(tmp_path, "rounds = 3\n")
    assert "algorithm: required field is missing" in str(error)


def test_both_client_fraction_and_count(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "client_fraction = 0.5\n")
    assert "algorithm.clients_per_round" in str(error)
    assert "both" in str(error)


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.1"])
def test_client_fraction_range(tmp_path: Path, fraction: str) -> None:
    error = config_error(tmp_path, f"[algorithm]\nclient_fraction = {fraction}\n")
    assert "algorithm.client_fraction" in str(error)


def test_cohort_larger_than_population(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[data]\nnum_clients = 5\n" + MINIMAL)
    message = str(error)
    assert "algorithm.clients_per_round" in message
    assert "10" in message and "5" in message


def test_cohort_size() -> None:
    assert AlgorithmConfig(client_fraction=0.1).cohort_size(100) == 10
    assert AlgorithmConfig(client_fraction=0.1).cohort_size(3) == 1
    assert AlgorithmConfig(client_fraction=1.0).cohort_size(7) == 7
    assert AlgorithmConfig(client_fraction=0.25).cohort_size(10) == 2  # round(2.5)
    assert AlgorithmConfig(clients_per_round=4).cohort_size(4) == 4
    with pytest.raises(ConfigError) as info:
        AlgorithmConfig(clients_per_round=11).cohort_size(10)
    message = str(info.value)
    assert "algorithm.clients_per_round" in message
    assert "11" in message and "10" in message


def test_dirichlet_requires_alpha(tmp_path: Path) -> None:
    error = config_error(tmp_path, '[data]\npartition = "dirichlet"\n' + MINIMAL)
    assert "data.alpha: required" in str(error)
    error = config_error(
        tmp_path, '[data]\npartition = "dirichlet"\nalpha = 0\n' + MINIMAL
    )
    assert "data.alpha: must be > 0" in str(error)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("seed=-1", "seed"),
        ("rounds=0", "rounds"),
        ("eval_every=0", "eval_every"),
        ("target_accuracy=1.5", "target_accuracy"),
        ("target_accuracy=0", "target_accuracy"),
        ("runtime=ray", "runtime"),
        ("data.num_clients=0", "data.num_clients"),
        ("data.sigma=0", "data.sigma"),
        ("data.shards_per_client=0", "data.shards_per_client"),
        ("data.partition=pathological", "data.partition"),
        ("model.name=resnet", "model.name"),
        ("algorithm.name=fedprox", "algorithm.name"),
        ("algorithm.batch_size=0", "algorithm.batch_size"),
        ("algorithm.batch_size=some", "algorithm.batch_size"),
        ("algorithm.local_epochs=0", "algorithm.local_epochs"),
        ("algorithm.local_epochs=2.5", "algorithm.local_epochs"),
        ("algorithm.server_momentum=1.0", "algorithm.server_momentum"),
        ("algorithm.server_optimizer=yogi", "algorithm.server_optimizer"),
        ("algorithm.client_learning_rate=nan", "algorithm.client_learning_rate"),
        ("algorithm.client_learning_rate=inf", "algorithm.client_learning_rate"),
        ("rounds=true", "rounds"),
        ("rounds=ten", "rounds"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, override: str, field: str) -> None:
    error = config_error(tmp_path, MINIMAL, override)
    assert f": {field}: " in str(error)
    assert error.problems[0][0] == field
    # Errors caused by an override are attributed to it, not to the file.
    assert str(error).startswith(f"--set {override}: ")


def test_overrides_parse_toml_values() -> None:
    assert parse_override("rounds=5") == (("rounds",), 5)
    assert parse_override("algorithm.client_learning_rate=0.1") == (
        ("algorithm", "client_learning_rate"),
        0.1,
    )
    assert parse_override("x.y=1e-3") == (("x", "y"), 1e-3)
    assert parse_override('data.dataset="fashion_mnist"') == (
        ("data", "dataset"),
        "fashion_mnist",
    )
    assert parse_override("data.dataset=fashion_mnist") == (
        ("data", "dataset"),
        "fashion_mnist",
    )
    assert parse_override("a=true") == (("a",), True)
    assert parse_override("a=false") == (("a",), False)
    assert parse_override(" a . b = [1, 2] ") == (("a", "b"), [1, 2])
    assert parse_override("a=") == (("a",), "")


@pytest.mark.parametrize("item", ["rounds", "=5", "a..b=1", "."])
def test_malformed_override(item: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override(item)


def test_overrides_apply_to_the_file(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, FULL_EXAMPLE),
        [
            "rounds=3",
            "target_accuracy=0.5",
            "algorithm.local_epochs=1",
            "algorithm.client_fraction=0.5",
            "data.dataset=synthetic",
            "data.options.alpha=0.5",
            "data.options.nested.flag=true",
        ],
    )
    assert cfg.rounds == 3 and cfg.target_accuracy == 0.5
    assert cfg.algorithm.local_epochs == 1 and cfg.algorithm.client_fraction == 0.5
    assert cfg.data.dataset == "synthetic"
    assert cfg.data.options == {"alpha": 0.5, "beta": 1.0, "nested": {"flag": True}}


def test_override_can_switch_cohort_spec_via_both_keys(tmp_path: Path) -> None:
    # A file with client_fraction plus an override clients_per_round gives both.
    error = config_error(tmp_path, FULL_EXAMPLE, "algorithm.clients_per_round=3")
    assert "algorithm.clients_per_round" in str(error)


@pytest.mark.parametrize(
    ("override", "dotted"),
    [
        ("algorithm.lr=0.1", "algorithm.lr"),
        ("optimizer.name=adam", "optimizer"),
        ("seed.value=1", "seed"),
        ("data=3", "data"),
    ],
)
def test_override_of_unknown_key(tmp_path: Path, override: str, dotted: str) -> None:
    error = config_error(tmp_path, MINIMAL, override)
    assert f"--set {override}: {dotted}:" in str(error)


def test_apply_overrides_does_not_mutate_input() -> None:
    data = {"algorithm": {"clients_per_round": 1}}
    result, overridden = apply_overrides(data, ["algorithm.clients_per_round=2"])
    assert data == {"algorithm": {"clients_per_round": 1}}
    assert result == {"algorithm": {"clients_per_round": 2}}
    assert overridden == {
        "algorithm.clients_per_round": "algorithm.clients_per_round=2"
    }


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    error = config_error(tmp_path, "rounds = = 3\n")
    assert "invalid TOML" in str(error)


def test_options_must_be_json_compatible(tmp_path: Path) -> None:
    error = config_error(tmp_path, "[data.options]\nwhen = 1979-05-27\n" + MINIMAL)
    assert "data.options.when" in str(error)


def test_models_are_frozen() -> None:
    cfg = config_from_dict({"algorithm": {"client_fraction": 0.1}})
    with pytest.raises(ValueError):
        cfg.rounds = 3


def test_json_round_trip(tmp_path: Path) -> None:
    for extra in ([], ['algorithm.batch_size="all"', "target_accuracy=0.8"]):
        cfg = load_config(write(tmp_path, FULL_EXAMPLE), extra)
        data = json.loads(json.dumps(config_to_dict(cfg)))
        assert config_from_dict(data) == cfg
        assert config_to_dict(config_from_dict(data)) == config_to_dict(cfg)


def test_config_from_dict_errors_name_source() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"algorithm": {"client_fraction": 2}}, "run/config.json")
    assert str(info.value).startswith("run/config.json: algorithm.client_fraction:")


def test_direct_construction() -> None:
    cfg = ExperimentConfig(algorithm=AlgorithmConfig(clients_per_round=3))
    assert cfg.algorithm.cohort_size(cfg.data.num_clients) == 3


def test_fedsgd_json_round_trip() -> None:
    """A FedSGD run's config.json reads back (resume re-reads it): the unused
    server_learning_rate, which config_from_dict refuses, is not written."""
    algorithm = {"name": "fedsgd", "batch_size": "all", "client_fraction": 0.1}
    cfg = config_from_dict({"algorithm": algorithm})
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert "server_learning_rate" not in data["algorithm"]
    assert config_from_dict(data) == cfg
