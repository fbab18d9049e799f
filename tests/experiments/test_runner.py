"""The experiment runner end to end on digits: records, checkpoints, resume."""

import json
import os
import shutil
import stat

import pytest
import torch

import fedloom.experiments._runner as runner_module
from fedloom.aggregators import InvalidUpdateError
from fedloom.experiments import (
    CheckpointError,
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    load_checkpoint,
    run_experiment,
    sample_cohort,
    setup,
)
from fedloom.experiments._files import locked_directory
from fedloom.runtimes import VectorizedRuntime


def _config(**changes):
    base = {
        "seed": 3,
        "rounds": 6,
        "data": {"dataset": "digits", "partition": "iid", "num_clients": 20},
        "model": {"name": "2nn"},
        "algorithm": {
            "name": "fedavg",
            "clients_per_round": 4,
            "local_epochs": 1,
            "batch_size": 10,
            "client_learning_rate": 0.1,
        },
    }
    base.update(changes)
    return config_from_dict(base)


FIELDS = {
    "round",
    "clients",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "seconds",
    "bytes_up",
    "bytes_down",
}


def test_run_writes_metrics_checkpoint_and_curves(tmp_path):
    result = run_experiment(_config(), out_dir=tmp_path, quiet=True)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= FIELDS for r in records)
    assert all(r["clients"] == 4 for r in records)
    assert records[0]["bytes_down"] == 4 * 4 * sum(
        p.numel() for p in result.state.params.values()
    )
    assert records[-1]["test_accuracy"] > records[0]["test_accuracy"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    tensors, meta = load_checkpoint(tmp_path / "checkpoint")
    assert meta["round"] == 6
    assert torch.equal(tensors["params/1.weight"], result.state.params["1.weight"])


def _strip_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _assert_same_run(got, expected):
    for name, value in expected.state.params.items():
        assert torch.equal(got.state.params[name], value), name
    assert _strip_seconds(got.records) == _strip_seconds(expected.records)


# Every algorithm resumes (its config.json reads back, its server state restores).
ALGORITHMS = {
    "fedavg": {},
    "fedsgd": {"name": "fedsgd", "batch_size": "all", "client_learning_rate": 0.5},
    "fedadam": {"server_optimizer": "adam", "server_learning_rate": 0.01},
}


@pytest.mark.parametrize("algorithm", ALGORITHMS.values(), ids=ALGORITHMS.keys())
def test_stop_after_three_and_resume_equals_uninterrupted_run(tmp_path, algorithm):
    def config(rounds):
        base = _config().algorithm.model_dump(mode="json", exclude_unset=True)
        return _config(rounds=rounds, algorithm={**base, **algorithm})

    whole = run_experiment(config(6), out_dir=tmp_path / "whole", quiet=True)
    run_experiment(config(3), out_dir=tmp_path / "split", quiet=True)
    resumed = run_experiment(
        config(6), out_dir=tmp_path / "split", resume=True, quiet=True
    )
    _assert_same_run(resumed, whole)


def _killed_in_round(monkeypatch, config, out_dir, killed_round):
    """Run ``config`` into ``out_dir`` until it is killed mid-round ``killed_round``
    (1-based), after the rounds before it were logged."""
    real_round = runner_module._round_record

    def dies(config, run, state, round):
        if round + 1 == killed_round:
            raise KeyboardInterrupt
        return real_round(config, run, state, round)

    monkeypatch.setattr(runner_module, "_round_record", dies)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out_dir=out_dir, quiet=True)
    monkeypatch.setattr(runner_module, "_round_record", real_round)


def test_killed_run_resumes_to_the_same_trajectory(tmp_path, monkeypatch):
    whole = run_experiment(_config(), out_dir=tmp_path / "whole", quiet=True)
    # killed mid-round 4, after round 3's checkpoint
    _killed_in_round(monkeypatch, _config(), tmp_path / "killed", 4)
    resumed = run_experiment(
        _config(), out_dir=tmp_path / "killed", resume=True, quiet=True
    )
    _assert_same_run(resumed, whole)


def test_sparse_checkpoints_resume_to_the_same_trajectory(tmp_path, monkeypatch):
    whole = run_experiment(_config(), out_dir=tmp_path / "whole", quiet=True)
    sparse = _config(checkpoint_every=4)
    # killed mid-round 6: rounds 1-5 logged, the checkpoint is round 4's
    _killed_in_round(monkeypatch, sparse, tmp_path / "killed", 6)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint")[1]["round"] == 4
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 5
    resumed = run_experiment(
        sparse, out_dir=tmp_path / "killed", resume=True, quiet=True
    )
    _assert_same_run(resumed, whole)
    # the last round is saved whether or not it is a multiple of checkpoint_every
    assert load_checkpoint(tmp_path / "killed" / "checkpoint")[1]["round"] == 6


def test_a_stop_request_ends_the_run_with_a_checkpoint(tmp_path):
    whole = run_experiment(_config(), out_dir=tmp_path / "whole", quiet=True)
    asked = []

    def after_two_rounds(record):
        asked.append(record["round"])
        return len(asked) >= 2

    stopped = run_experiment(
        _config(checkpoint_every=5),
        out_dir=tmp_path / "stopped",
        quiet=True,
        stop=after_two_rounds,
    )
    assert asked == [1, 2]  # asked with each round's record
    assert [r["round"] for r in stopped.records] == [1, 2]
    assert not stopped.target_reached
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint")[1]["round"] == 2
    resumed = run_experiment(
        _config(checkpoint_every=5),
        out_dir=tmp_path / "stopped",
        resume=True,
        quiet=True,
    )
    _assert_same_run(resumed, whole)


def test_resume_after_crash_mid_round_drops_the_unfinished_record(tmp_path):
    whole = run_experiment(_config(rounds=4), out_dir=tmp_path / "whole", quiet=True)
    run_experiment(_config(rounds=4), out_dir=tmp_path / "crash", quiet=True)
    # Simulate a crash after round 2's checkpoint: rewind the checkpoint by
    # re-running 2 rounds elsewhere, and leave extra metric lines behind.
    run_experiment(_config(rounds=2), out_dir=tmp_path / "two", quiet=True)
    for f in (tmp_path / "crash" / "checkpoint").iterdir():
        f.unlink()
    for f in (tmp_path / "two" / "checkpoint").iterdir():
        (tmp_path / "crash" / "checkpoint" / f.name).write_bytes(f.read_bytes())
    resumed = run_experiment(
        _config(rounds=4), out_dir=tmp_path / "crash", resume=True, quiet=True
    )
    assert [r["round"] for r in resumed.records] == [1, 2, 3, 4]
    for name, value in whole.state.params.items():
        assert torch.equal(resumed.state.params[name], value)


def test_resume_with_a_different_config_is_refused(tmp_path):
    run_experiment(_config(rounds=2), out_dir=tmp_path, quiet=True)
    with pytest.raises(ValueError, match=r"differs .* in seed \(3 -> 4\);"):
        run_experiment(
            _config(rounds=2, seed=4), out_dir=tmp_path, resume=True, quiet=True
        )
    local_epochs = {**_config().algorithm.__dict__, "local_epochs": 2}
    with pytest.raises(ValueError, match=r"in algorithm.local_epochs \(1 -> 2\);"):
        run_experiment(
            _config(algorithm=local_epochs), out_dir=tmp_path, resume=True, quiet=True
        )


def test_corrupt_checkpoint_is_refused_on_resume(tmp_path):
    run_experiment(_config(rounds=2), out_dir=tmp_path, quiet=True)
    (tensors_file,) = (tmp_path / "checkpoint").glob("*.safetensors")
    data = bytearray(tensors_file.read_bytes())
    data[-5] ^= 0xFF
    tensors_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        run_experiment(_config(rounds=2), out_dir=tmp_path, resume=True, quiet=True)


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    run_experiment(_config(rounds=1), out_dir=tmp_path, quiet=True)
    with pytest.raises(ValueError, match="already holds a run"):
        run_experiment(_config(rounds=1), out_dir=tmp_path, quiet=True)


def test_an_extended_run_stops_where_the_same_run_never_stopped_does(tmp_path):
    # eval_every 2: a 3-round run's last round is evaluated too, off schedule;
    # at the target there, it must not stop the run when it is extended
    every = run_experiment(_config(rounds=6), out_dir=tmp_path / "every", quiet=True)
    accuracy = [r["test_accuracy"] for r in every.records]
    target = accuracy[2]  # round 3's
    assert accuracy[1] < target  # round 2 (scheduled) below it: the test can fail

    def config(rounds):
        return _config(rounds=rounds, eval_every=2, target_accuracy=target)

    whole = run_experiment(config(6), out_dir=tmp_path / "whole", quiet=True)
    split = run_experiment(config(3), out_dir=tmp_path / "split", quiet=True)
    assert split.records[-1]["test_accuracy"] == target and not split.target_reached
    resumed = run_experiment(
        config(6), out_dir=tmp_path / "split", resume=True, quiet=True
    )
    assert [r["round"] for r in resumed.records] == [r["round"] for r in whole.records]
    assert resumed.target_reached == whole.target_reached
    for name, value in whole.state.params.items():
        assert torch.equal(resumed.state.params[name], value), name


def test_target_accuracy_stops_early(tmp_path):
    result = run_experiment(
        _config(rounds=30, target_accuracy=0.5), out_dir=tmp_path, quiet=True
    )
    assert result.target_reached
    assert len(result.records) < 30
    assert result.records[-1]["test_accuracy"] >= 0.5
    again = run_experiment(
        _config(rounds=30, target_accuracy=0.5),
        out_dir=tmp_path,
        resume=True,
        quiet=True,
    )
    assert len(again.records) == len(result.records)


def test_fedsgd_and_server_optimizers_run(tmp_path):
    for i, algorithm in enumerate(
        [
            {"name": "fedsgd", "client_fraction": 0.5, "client_learning_rate": 0.5},
            {
                "name": "fedavg",
                "clients_per_round": 4,
                "server_optimizer": "momentum",
                "server_learning_rate": 1.0,
            },
            {
                "name": "fedavg",
                "clients_per_round": 4,
                "server_optimizer": "adam",
                "server_learning_rate": 0.01,
            },
        ]
    ):
        result = run_experiment(
            _config(rounds=2, algorithm=algorithm),
            out_dir=tmp_path / str(i),
            quiet=True,
        )
        assert len(result.records) == 2
        assert result.records[0]["clients"] == (
            10 if algorithm["name"] == "fedsgd" else 4
        )


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match=r"data\.dataset"):
        _config(data={"dataset": "cifar"})


def test_cohort_larger_than_population_is_a_clear_error():
    with pytest.raises(ValueError, match="clients_per_round"):
        _config(algorithm={"name": "fedavg", "clients_per_round": 21})
    assert isinstance(_config(), ExperimentConfig)


def test_runtime_is_one_config_key(tmp_path):
    local = run_experiment(_config(rounds=2), out_dir=tmp_path / "local", quiet=True)
    vectorized = run_experiment(
        _config(rounds=2, runtime="vectorized"), out_dir=tmp_path / "vec", quiet=True
    )
    for name, value in local.state.params.items():
        torch.testing.assert_close(
            vectorized.state.params[name], value, rtol=1e-4, atol=1e-5
        )
    assert vectorized.records[-1]["test_accuracy"] == pytest.approx(
        local.records[-1]["test_accuracy"], abs=0.02
    )


def test_chunk_size_is_a_config_key_and_changes_no_result(tmp_path):
    whole = run_experiment(
        _config(rounds=2, runtime="vectorized"), out_dir=tmp_path / "whole", quiet=True
    )
    config = _config(rounds=2, runtime="vectorized", chunk_size=3)
    runtime = setup(config).runtime
    assert isinstance(runtime, VectorizedRuntime) and runtime.chunk_size == 3
    chunked = run_experiment(config, out_dir=tmp_path / "chunked", quiet=True)
    for name, value in whole.state.params.items():
        torch.testing.assert_close(
            chunked.state.params[name], value, rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="chunk_size: only the 'vectorized' runtime"):
        _config(chunk_size=3)


def test_compile_is_a_config_key_for_the_vectorized_runtime():
    runtime = setup(_config(runtime="vectorized", compile=True)).runtime
    assert isinstance(runtime, VectorizedRuntime) and runtime.options.compile
    with pytest.raises(ValueError, match="compile: only the 'vectorized' runtime"):
        _config(compile=True)
    on_cuda = _config(runtime="vectorized", device="cuda", compile=True)
    assert on_cuda.compile  # valid; setup needs a GPU
    with pytest.raises(ValueError, match=r"steps_per_call: .* is for device 'cpu'"):
        _config(runtime="vectorized", device="cuda", compile=True, steps_per_call=5)
    config = _config(runtime="vectorized", compile=True, steps_per_call=5)
    assert setup(config).runtime.options.steps_per_call == 5
    with pytest.raises(ValueError, match="steps_per_call: more than one step a call"):
        _config(runtime="vectorized", steps_per_call=5)


def test_autocast_is_a_model_config_key():
    model = setup(_config(model={"name": "2nn", "autocast": "bfloat16"})).model
    assert model.autocast is torch.bfloat16
    assert setup(_config()).model.autocast is None
    with pytest.raises(ValueError, match=r"model\.autocast"):
        _config(model={"name": "2nn", "autocast": "float16"})


def test_tampered_checkpoint_round_is_refused(tmp_path):
    run_experiment(_config(rounds=2), out_dir=tmp_path, quiet=True)
    index = tmp_path / "checkpoint" / "checkpoint.json"
    data = json.loads(index.read_text())
    data["meta"]["round"] = 1
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="round"):
        run_experiment(_config(rounds=4), out_dir=tmp_path, resume=True, quiet=True)


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(tmp_path):
    expected = run_experiment(_config(rounds=4), out_dir=tmp_path / "a", quiet=True)
    # killed after logging two rounds, before checkpointing any (checkpoint_every 3)
    run_experiment(_config(rounds=2), out_dir=tmp_path / "b", quiet=True)
    shutil.rmtree(tmp_path / "b" / "checkpoint")
    got = run_experiment(
        _config(rounds=4), out_dir=tmp_path / "b", resume=True, quiet=True
    )
    _assert_same_run(got, expected)


def test_a_failed_resume_leaves_the_run_as_it_was(tmp_path):
    run_experiment(_config(rounds=3), out_dir=tmp_path, quiet=True)
    saved = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="checkpointed at round 3; rounds = 2"):
        run_experiment(_config(rounds=2), out_dir=tmp_path, resume=True, quiet=True)
    tensors = next((tmp_path / "checkpoint").glob("*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        run_experiment(_config(rounds=5), out_dir=tmp_path, resume=True, quiet=True)
    assert (tmp_path / "config.json").read_text() == saved


def test_one_process_a_run_directory(tmp_path):
    with locked_directory(tmp_path), pytest.raises(ValueError, match="another"):
        run_experiment(_config(rounds=1), out_dir=tmp_path, quiet=True)
    assert list(tmp_path.iterdir()) == []
    run_experiment(_config(rounds=1), out_dir=tmp_path, quiet=True)  # released


def test_a_diverged_run_names_its_round_and_client_and_keeps_its_curves(tmp_path):
    config = _config(
        rounds=5,
        algorithm={**_config().algorithm.__dict__, "client_learning_rate": 30},
    )
    with pytest.raises(InvalidUpdateError) as raised:
        run_experiment(config, out_dir=tmp_path, quiet=True)
    message = str(raised.value)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert message.startswith("round 2: client ")  # its id, not its place
    client = int(message.split("client ")[1].split(":")[0])
    assert client in sample_cohort(20, 4, seed=3, round=1).tolist()
    assert "client_learning_rate" in message
    assert (tmp_path / "curves.png").exists()  # of the round done


def test_run_files_are_as_readable_as_the_umask_says(tmp_path):
    umask = os.umask(0o022)
    try:
        run_experiment(_config(rounds=2), out_dir=tmp_path, quiet=True)
        run_experiment(_config(rounds=3), out_dir=tmp_path, resume=True, quiet=True)
    finally:
        os.umask(umask)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 5  # config, metrics, curves, checkpoint index and tensors
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


def test_resume_may_raise_the_target(tmp_path):
    first = run_experiment(
        _config(rounds=30, target_accuracy=0.5), out_dir=tmp_path, quiet=True
    )
    higher = run_experiment(
        _config(rounds=30, target_accuracy=0.8),
        out_dir=tmp_path,
        resume=True,
        quiet=True,
    )
    assert len(higher.records) > len(first.records)
    assert higher.records[-1]["test_accuracy"] >= 0.8


def test_resuming_a_run_at_its_target_says_why_nothing_runs(tmp_path, capsys):
    first = run_experiment(
        _config(rounds=30, target_accuracy=0.5), out_dir=tmp_path, quiet=True
    )
    more = run_experiment(
        _config(rounds=40, target_accuracy=0.5), out_dir=tmp_path, resume=True
    )
    assert more.records == first.records
    done = len(first.records)
    assert f"target_accuracy 0.5 was reached at round {done}: nothing to run" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"data": {"dataset": "digits", "partition": "natural"}}, "data.partition"),
        ({"data": {"dataset": "digits", "num_clients": 5000}}, "data.num_clients"),
        ({"data": {"dataset": "digits", "options": {"foo": 1}}}, "data.options"),
        ({"model": {"name": "cnn"}, "data": {"dataset": "synthetic"}}, "model.name"),
    ],
)
def test_setup_errors_name_the_field(tmp_path, changes, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        run_experiment(_config(**changes), out_dir=tmp_path, quiet=True)


def test_compile_without_a_cpp_compiler_stops_before_the_run(tmp_path):
    from torch._inductor import config

    out = tmp_path / "run"
    no_compiler = config.patch({"cpp.cxx": ("/nonexistent/g++",)})
    with no_compiler, pytest.raises(ConfigError, match=r"needs a C\+\+ compiler"):
        run_experiment(
            _config(runtime="vectorized", compile=True), out_dir=out, quiet=True
        )
    assert not out.exists() or not any(out.iterdir())


def test_device_is_one_config_key_and_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"device: must be 'cpu', 'cuda' or 'cuda:N'"):
        _config(device="gpu")
    with pytest.raises(ConfigError, match="runtime 'local' computes on the CPU"):
        run_experiment(_config(device="cuda"), out_dir=tmp_path / "a", quiet=True)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available here"):
            run_experiment(
                _config(device="cuda", runtime="vectorized"),
                out_dir=tmp_path / "b",
                quiet=True,
            )
    result = run_experiment(
        _config(rounds=1, device="cpu", runtime="vectorized"),
        out_dir=tmp_path / "c",
        quiet=True,
    )
    assert result.records[-1]["round"] == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("no_tf32")
def test_a_run_on_cuda_matches_the_cpu(tmp_path):
    cpu = run_experiment(_config(rounds=2), out_dir=tmp_path / "cpu", quiet=True)
    cuda = run_experiment(
        _config(rounds=2, runtime="vectorized", device="cuda"),
        out_dir=tmp_path / "cuda",
        quiet=True,
    )
    for name, value in cpu.state.params.items():
        torch.testing.assert_close(cuda.state.params[name], value, rtol=1e-4, atol=1e-5)
    for got, expected in zip(cuda.records, cpu.records, strict=True):
        # the test set is evaluated on the GPU, to the CPU's figures
        assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-4)
        assert abs(got["test_accuracy"] - expected["test_accuracy"]) <= 2 / 359
