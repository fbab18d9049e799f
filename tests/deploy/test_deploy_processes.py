"""A server and client processes on 127.0.0.1: training, dropouts, restarts, refusals.

Every process is a real ``fedloom server`` or ``fedloom client`` (most clients are
forked from one launcher that imported torch once, to keep CI fast; the wrong-key
client and the client that comes back are started as ``python -m fedloom.cli``).
The tests read the server's state directory as ``fedloom status`` does.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from deploy_helpers import Processes, rounds_done, wait_for, write_server_config

from fedloom.deploy import load_server_config, read_status
from fedloom.deploy._store import Store
from fedloom.experiments import MetricsLog, run_experiment

pytestmark = pytest.mark.integration


def _records(out: Path) -> list[dict[str, Any]]:
    # Read as the server reads it: a line torn by SIGKILL is not a record.
    return MetricsLog(out / "metrics.jsonl").read()


def _final_params(out: Path) -> dict[str, torch.Tensor]:
    store = Store(out)
    try:
        saved = store.last_round()
        assert saved is not None
        tensors = store.load_model(saved)
    finally:
        store.close()
    return {
        name.removeprefix("params/"): tensor
        for name, tensor in tensors.items()
        if name.startswith("params/")
    }


def test_ten_client_processes_train_like_simulation_and_refuse_a_wrong_key(
    tmp_path: Path, processes: Processes
) -> None:
    config, port = write_server_config(
        tmp_path,
        rounds=4,
        num_clients=10,
        clients_per_round=10,
        local_epochs=3,
        extra="chunk_bytes = 4096",  # the model goes down in many small messages
    )
    out = tmp_path / "run"
    server = processes.server(config, out)
    # First a client whose key the server does not know: it is refused.
    impostor = tmp_path / "certs" / "clients" / "impostor.token"
    impostor.write_text("not-a-key-the-server-knows\n")
    refused, *clients = processes.clients(port, 10, {"impostor": 0}, range(10))
    assert refused.wait(timeout=60) == 1
    assert "unknown client token" in processes.log("impostor")
    assert server.wait(timeout=120) == 0, processes.log("server")
    for client in clients:
        assert client.wait(timeout=30) == 0
    deployed = _records(out)
    assert [r["round"] for r in deployed] == [1, 2, 3, 4]
    assert all(r["clients"] == 10 for r in deployed)
    assert (out / "curves.png").stat().st_size > 0

    # The same experiment simulated: the same FedAvg, so the same model up to the
    # order in which the server summed the updates.
    experiment, _ = load_server_config(config)
    simulated = run_experiment(experiment, out_dir=tmp_path / "sim", quiet=True)
    final = _final_params(out)
    for name, tensor in simulated.state.params.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-5, rtol=1e-4)
    accuracy = deployed[-1]["test_accuracy"]
    assert accuracy > 0.85
    assert abs(accuracy - simulated.records[-1]["test_accuracy"]) <= 0.01


def test_a_client_killed_mid_round_is_left_out_then_rejoins(
    tmp_path: Path, processes: Processes
) -> None:
    # A cohort of three; a round counts with two results.
    config, port = write_server_config(
        tmp_path,
        rounds=4,
        num_clients=3,
        clients_per_round=3,
        local_epochs=30,
        client_timeout=1.0,
        heartbeat_seconds=0.2,
        extra="min_clients = 2",
    )
    out = tmp_path / "run"
    server = processes.server(config, out)
    clients: list[Any] = processes.clients(port, 3, range(3))
    wait_for(lambda: rounds_done(out) >= 1, 90, "the first round")
    clients[2].send_signal(signal.SIGKILL)
    clients[2].wait(timeout=10)
    clients[2] = processes.client(port, 2, 3)  # comes back, as devices do
    assert server.wait(timeout=120) == 0, processes.log("server")
    records = _records(out)
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    # The round the client died in finished without it ...
    assert any(r["selected"] == 3 and r["clients"] == 2 for r in records)
    # ... and once it was back, it trained again.
    assert records[-1]["clients"] == 3
    assert "done" in processes.log("client-2")
    assert records[-1]["test_accuracy"] > 0.8
    for client in clients:
        assert client.wait(timeout=30) == 0


def test_server_killed_and_restarted_resumes(
    tmp_path: Path, processes: Processes
) -> None:
    config, port = write_server_config(
        tmp_path, rounds=6, num_clients=2, clients_per_round=2, local_epochs=10
    )
    out = tmp_path / "run"
    server = processes.server(config, out)
    clients = processes.clients(port, 2, range(2))
    wait_for(lambda: rounds_done(out) >= 3, 90, "three rounds")
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    # The server commits a round to its database, then appends it to the log: the
    # kill may fall in between, and the restarted server writes what the log lacks.
    before = sorted(read_status(out)["rounds"], key=lambda r: r["round"])
    done = len(before)
    assert done >= 3
    logged = _records(out)
    assert logged == before[: len(logged)] and len(logged) >= done - 1

    restarted = time.monotonic()
    server = processes.fedloom("server-again", "server", str(config), "--out", str(out))
    wait_for(lambda: rounds_done(out) > done, 60, "a round after the restart")
    assert time.monotonic() - restarted < 30
    assert server.wait(timeout=120) == 0, processes.log("server-again")
    after = _records(out)
    assert [r["round"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert after[:done] == before  # nothing committed was lost or rewritten
    assert after[-1]["test_accuracy"] > 0.8
    for client in clients:
        assert client.wait(timeout=30) == 0
