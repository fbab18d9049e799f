"""The deployment commands: ``server``, ``client``, ``status``, ``certs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedloom.cli import build_parser, main
from fedloom.deploy._store import Store
from fedloom.experiments._files import locked_directory


def test_the_parser_knows_the_deployment_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["client", "--server", "h:1", "--token-file", "t", "--insecure", "--data", "d"]
    )
    assert (args.server, args.num_clients, args.client_index) == ("h:1", 1, 0)
    assert parser.parse_args(["server", "s.toml"]).out is None
    assert parser.parse_args(["status", "dir", "--json"]).json


def test_a_client_needs_a_ca_or_insecure(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["client", "--server", "h:1", "--token-file", "t", "--data", "d"])
    assert status == 2
    assert "one of the arguments --ca --insecure is required" in capsys.readouterr().err


def test_certs_writes_certificates_and_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", str(tmp_path), "--clients", "2"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "ca.key",
        "ca.pem",
        "clients",
        "server.key",
        "server.pem",
        "tokens.json",
    ]
    assert sorted(p.name for p in (tmp_path / "clients").iterdir()) == [
        "client-0.token",
        "client-1.token",
    ]
    assert "tokens.json" in capsys.readouterr().out


def test_server_config_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[algorithm]\nclients_per_round = 1\n[deploy]\ninsecure = true\n")
    assert main(["server", str(path)]) == 2
    assert "deploy.tokens: Field required" in capsys.readouterr().err


def test_a_client_index_out_of_range_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "c.token"
    token.write_text("x\n")
    argv = ["client", "--server", "127.0.0.1:1", "--token-file", str(token)]
    argv += ["--insecure", "--data", "digits", "--num-clients", "3"]
    assert main([*argv, "--client-index", "3"]) == 2
    assert "--client-index 3: must be in 0..2" in capsys.readouterr().err


def test_status_shows_clients_and_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path)
    store.set("address", "127.0.0.1:9")
    store.set("config", {"rounds": 3})
    store.touch_clients({"client-0": 1.0, "client-1": 1.0}, {"client-0": 1})
    store.set(
        "live",
        {
            "updated": 1.0,
            "connected": ["client-0"],
            "finished": False,
            "round": {
                "round": 2,
                "cohort": ["client-0", "client-1"],
                "reported": ["client-0"],
                "waiting_for": ["client-1"],
                "deadline_in": 12.5,
            },
        },
    )
    store.commit_round(1, {"round": 1, "test_accuracy": 0.75}, {"w": torch.ones(1)})
    store.close()
    with locked_directory(tmp_path):  # as a running server holds it
        assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rounds done 1/3" in out
    assert "round 2 in progress: 1 of 2 reported, waiting for client-1" in out
    assert "test accuracy 0.7500" in out
    assert "client-1" in out
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["address"] == "127.0.0.1:9"
    assert main(["status", str(tmp_path / "none")]) == 2
