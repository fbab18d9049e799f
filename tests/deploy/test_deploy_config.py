"""The server's TOML: an experiment plus [deploy], errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.deploy import load_server_config
from fedloom.experiments import ConfigError

EXPERIMENT = """\
rounds = 2
[data]
dataset = "digits"
num_clients = 4
[algorithm]
clients_per_round = 2
"""


def _write(tmp_path: Path, deploy: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(EXPERIMENT + deploy)
    return path


def test_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[deploy]\ntokens = "certs/tokens.json"\ntls_certificate = "c.pem"\n'
        'tls_private_key = "/abs/c.key"\n',
    )
    experiment, settings = load_server_config(path)
    assert experiment.rounds == 2
    assert settings.tokens == str(tmp_path / "certs" / "tokens.json")
    assert settings.tls_certificate == str(tmp_path / "c.pem")
    assert settings.tls_private_key == "/abs/c.key"


@pytest.mark.parametrize(
    ("deploy", "message"),
    [
        ("", "deploy: a [deploy] table is required"),
        ('[deploy]\ntokens = "t.json"\n', "deploy: tls_certificate and"),
        (
            '[deploy]\ntokens = "t"\ninsecure = true\nround_deadline = -1\n',
            "deploy.round_deadline: Input should be greater than 0 (got -1)",
        ),
        ("[deploy]\ninsecure = true\n", "deploy.tokens: Field required"),
        ('[deploy]\ntokens = "t"\ninsecure = true\nport = 1\n', "deploy.port:"),
        (
            '[deploy]\ntokens = "t"\ninsecure = true\nlisten = "nowhere"\n',
            "listen must be HOST:PORT",
        ),
    ],
)
def test_errors_name_the_file_and_the_field(
    tmp_path: Path, deploy: str, message: str
) -> None:
    path = _write(tmp_path, deploy)
    with pytest.raises(ConfigError) as caught:
        load_server_config(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_experiment_errors_are_those_of_fedloom_run(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        "rounds = 0\n[algorithm]\nclients_per_round = 1\n"
        '[deploy]\ntokens = "t"\ninsecure = true\n'
    )
    with pytest.raises(ConfigError, match="rounds: must be >= 1"):
        load_server_config(path)


EXAMPLES = Path(__file__).parents[2] / "examples" / "deploy"


def test_the_example_server_config_loads() -> None:
    experiment, settings = load_server_config(EXAMPLES / "digits_server.toml")
    assert experiment.algorithm.cohort_size(experiment.data.num_clients) == 2
    assert settings.tokens == str(EXAMPLES / "certs" / "tokens.json")
    assert not settings.insecure


def test_the_own_client_example_trains_on_its_own_data() -> None:
    import runpy

    import torch

    from fedloom.data import load_dataset
    from fedloom.learning import ClientInput, build_model

    example = runpy.run_path(str(EXAMPLES / "own_client.py"))
    examples = example["my_examples"](slice(0, 40))
    assert examples.x.shape == (40, 1, 8, 8) and examples.x.max() <= 1.0
    # rows of the training split: none of the server's test examples
    train = load_dataset("digits", seed=0).train
    assert torch.equal(examples.x, train.x[:40])
    assert torch.equal(examples.y, train.y[:40])
    model = build_model("2nn", (1, 8, 8), 10)
    config = {"learning_rate": 0.1, "epochs": 1, "batch_size": 10}
    work = example["logged_local_training"](model, config)
    result = work(model.init(), ClientInput(examples, seed=0))
    assert float(result.weight) == 40.0
    assert all(torch.isfinite(v).all() for v in result.update.values())
