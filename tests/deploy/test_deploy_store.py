"""The server's store: rounds committed atomically, verified on load."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from deploy_helpers import write_server_config
from rich.console import Console

from fedloom.deploy import print_status, read_status
from fedloom.deploy._store import MODELS_DIR, Store
from fedloom.experiments import CheckpointError
from fedloom.experiments._files import locked_directory


def test_rounds_commit_and_reload_bit_for_bit(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.last_round() is None
    for round in (1, 2, 3):
        tensors = {"params/w": torch.full((2,), float(round))}
        store.commit_round(round, {"round": round, "test_accuracy": 0.5}, tensors)
    saved = store.last_round()
    assert saved is not None and saved.round == 3
    assert torch.equal(store.load_model(saved)["params/w"], torch.full((2,), 3.0))
    assert [r["round"] for r in store.records()] == [1, 2, 3]
    assert len(list((tmp_path / MODELS_DIR).iterdir())) == 2  # older ones pruned
    store.close()


def test_a_corrupt_model_file_is_named(tmp_path: Path) -> None:
    store = Store(tmp_path)
    saved = store.commit_round(1, {"round": 1}, {"w": torch.ones(3)})
    path = tmp_path / MODELS_DIR / saved.model_file
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="corrupt model file"):
        store.load_model(saved)
    store.close()


def test_status_reads_the_registry_and_live_round(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.set("address", "127.0.0.1:1234")
    store.set("config", {"rounds": 5})
    store.touch_clients({"client-0": 100.0, "client-1": 101.0}, {"client-0": 1})
    store.touch_clients({"client-0": 99.0}, {"client-0": 2})
    live = {"connected": ["client-0"], "round": {"round": 1}, "finished": False}
    store.set("live", live)
    store.commit_round(1, {"round": 1}, {"w": torch.ones(1)})
    status = read_status(tmp_path)
    store.close()
    assert status["address"] == "127.0.0.1:1234"
    assert status["rounds_total"] == 5
    assert status["live"] == live
    assert status["clients"][0] == {
        "client_id": "client-0",
        "first_seen": 100.0,
        "last_seen": 100.0,
        "results": 3,
    }
    assert [r["round"] for r in status["rounds"]] == [1]
    with pytest.raises(ValueError, match="not a server directory"):
        read_status(tmp_path / "nothing")


def _printed(status: dict[str, Any]) -> str:
    out = io.StringIO()
    print_status(status, Console(file=out, width=200))
    return out.getvalue()


def test_status_tells_a_running_server_from_what_a_stopped_one_left(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    store.set("config", {"rounds": 5})
    store.touch_clients({"client-0": 100.0}, {"client-0": 1})
    store.commit_round(1, {"round": 1}, {"w": torch.ones(1)})
    in_round = {"round": 2, "cohort": ["client-0"], "reported": [], "deadline_in": 9}
    in_round["waiting_for"] = ["client-0"]
    store.set("live", {"connected": ["client-0"], "round": in_round, "updated": 0})
    with locked_directory(tmp_path):  # as the server holds it
        running = read_status(tmp_path)
    stopped = read_status(tmp_path)  # its process gone, however it ended
    store.close()
    assert running["running"] and not stopped["running"]
    shown = _printed(running)
    assert "round 2 in progress: 0 of 1 reported" in shown
    assert "│ client-0 │ yes " in shown
    shown = _printed(stopped)
    assert "(not running; updated" in shown and "in progress" not in shown
    assert "│ client-0 │ no " in shown
    # the live status is a second behind the rounds: a round recorded since is over
    over = {**running, "rounds": [{"round": 1}, {"round": 2}]}
    assert "in progress" not in _printed(over)


def test_a_restarted_server_refuses_another_configuration(tmp_path: Path) -> None:
    from fedloom.deploy._server import _check_config
    from fedloom.experiments import config_from_dict

    config = config_from_dict({"rounds": 3, "algorithm": {"clients_per_round": 2}})
    store = Store(tmp_path)
    _check_config(store, config)
    longer = config.model_copy(update={"rounds": 10})
    _check_config(store, longer)  # going on for longer is allowed
    other = config.model_copy(update={"seed": 1})
    with pytest.raises(
        ValueError,
        match=r"differs from the run's config.json in seed \(0 -> 1\);",
    ):
        _check_config(store, other)
    store.close()


def _serve_for_a_moment(*args: Any, **kwargs: Any) -> BaseException | None:
    """``serve`` on a thread: what it raised, or a failure if it is still serving
    after 60 s (a server that should have refused to start)."""
    from fedloom.deploy import serve

    raised: list[BaseException] = []

    def run() -> None:
        try:
            serve(*args, **kwargs)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        pytest.fail("the second server started")
    return raised[0] if raised else None


def test_a_second_server_on_the_directory_or_the_port_is_refused(
    tmp_path: Path,
) -> None:
    import grpc

    from fedloom.deploy import load_server_config
    from fedloom.deploy._server import server_options
    from fedloom.experiments._files import locked_directory

    path, port = write_server_config(
        tmp_path, rounds=1, num_clients=2, clients_per_round=2, tls=False
    )
    config, settings = load_server_config(path)
    busy = tmp_path / "busy"
    busy.mkdir()
    with locked_directory(busy):
        error = _serve_for_a_moment(config, settings, out_dir=busy, quiet=True)
    assert isinstance(error, ValueError) and "another fedloom" in str(error)

    async def listening() -> grpc.aio.Server:
        server = grpc.aio.server(options=server_options(1 << 20))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        return server

    loop = asyncio.new_event_loop()
    first = loop.run_until_complete(listening())
    try:
        error = _serve_for_a_moment(config, settings, out_dir=tmp_path / "run")
    finally:
        loop.run_until_complete(first.stop(0))
        loop.close()
    assert isinstance(error, OSError)
    assert f"cannot listen on 127.0.0.1:{port}" in str(error)
