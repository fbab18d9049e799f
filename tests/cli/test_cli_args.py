"""Tests for the ``fedloom`` command: argument parsing and error paths, in-process."""

from __future__ import annotations

import datetime
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import fedloom.data
import fedloom.experiments
from fedloom.cli import build_parser, main
from fedloom.cli._main import default_out_dir
from fedloom.experiments._checkpoint import CheckpointError
from fedloom.experiments._config import ExperimentConfig

CONFIG = """\
rounds = 3
[data]
dataset = "digits"
num_clients = 20
[algorithm]
client_fraction = 0.5
"""


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs without --out make their directory under runs/ of the working one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "digits.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace the runner with a recorder of its arguments."""
    recorded: list[dict[str, Any]] = []

    def fake_run_experiment(config: ExperimentConfig, **kwargs: Any) -> None:
        recorded.append({"config": config, **kwargs})

    monkeypatch.setattr(
        fedloom.experiments, "run_experiment", fake_run_experiment, raising=False
    )
    return recorded


def test_run_passes_config_and_options(
    config_path: Path, tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    out = tmp_path / "out"
    status = main(
        [
            "run",
            str(config_path),
            "--set",
            "rounds=7",
            "--set",
            "algorithm.client_learning_rate=0.2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    (call,) = calls
    assert call["config"].rounds == 7
    assert call["config"].algorithm.client_learning_rate == 0.2
    assert call["out_dir"] == out
    assert call["resume"] is False and call["quiet"] is True
    assert call["config_path"] == str(config_path)


def test_run_default_out_dir(config_path: Path, calls: list[dict[str, Any]]) -> None:
    assert main(["run", str(config_path)]) == 0
    out_dir = calls[0]["out_dir"]
    assert out_dir.parent == Path("runs") and out_dir.is_dir()
    assert out_dir.name.startswith("digits-") and len(out_dir.name) == len(
        "digits-20240101-120000"
    )
    assert calls[0]["quiet"] is False and calls[0]["resume"] is False


def test_runs_started_in_the_same_second_get_directories_of_their_own(
    config_path: Path,
    calls: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.datetime(2024, 3, 5, 7, 8, 9)
    monkeypatch.setattr(
        "fedloom.cli._main.default_out_dir",
        lambda path: default_out_dir(path, now),  # the module's own, unpatched
    )
    for _ in range(3):
        assert main(["run", str(config_path)]) == 0
    assert [str(c["out_dir"]) for c in calls] == [
        "runs/digits-20240305-070809",
        "runs/digits-20240305-070809-2",
        "runs/digits-20240305-070809-3",
    ]


def test_files_that_cannot_be_written_exit_1(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(config_path), "--out", str(config_path)]) == 1
    assert capsys.readouterr().err.startswith("error: [Errno 17] File exists")


def test_default_out_dir_format() -> None:
    now = datetime.datetime(2024, 3, 5, 7, 8, 9)
    assert default_out_dir(Path("cfg/exp.toml"), now) == Path(
        "runs/exp-20240305-070809"
    )


def test_run_resume(
    config_path: Path, tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert main(["run", str(config_path), "--resume", str(run_dir)]) == 0
    assert calls[0]["out_dir"] == run_dir and calls[0]["resume"] is True


def test_resume_missing_directory(
    config_path: Path,
    tmp_path: Path,
    calls: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["run", str(config_path), "--resume", str(tmp_path / "nope")])
    assert status == 2 and calls == []
    assert "error: --resume" in capsys.readouterr().err


def test_out_and_resume_are_exclusive(
    config_path: Path, calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["run", str(config_path), "--out", "a", "--resume", "b"])
    assert status == 2 and calls == []
    assert "not allowed with" in capsys.readouterr().err


def test_bad_config_exits_2_naming_field(
    tmp_path: Path, calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG + "client_learning_rate = -0.1\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "algorithm.client_learning_rate: must be > 0 (got -0.1)" in err
    assert "Traceback" not in err and calls == []


def test_bad_override_exits_2(
    config_path: Path, calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(config_path), "--set", "algorithm.lr=1"]) == 2
    assert "algorithm.lr: unknown field" in capsys.readouterr().err
    assert main(["run", str(config_path), "--set", "rounds"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert calls == []


def test_missing_config_file(
    tmp_path: Path, calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error", [ValueError("bad shapes"), CheckpointError("checkpoint.json: corrupt")]
)
def test_runner_errors_become_exit_2(
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
) -> None:
    def failing(config: ExperimentConfig, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(fedloom.experiments, "run_experiment", failing, raising=False)
    assert main(["run", str(config_path)]) == 2
    assert capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(type(error)):
        main(["--traceback", "run", str(config_path)])
    with pytest.raises(type(error)):  # after the command too
        main(["run", str(config_path), "--traceback"])


def test_interrupt_exits_130(
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted(config: ExperimentConfig, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(
        fedloom.experiments, "run_experiment", interrupted, raising=False
    )
    assert main(["run", str(config_path)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_other_errors_propagate(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(config: ExperimentConfig, **kwargs: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(fedloom.experiments, "run_experiment", broken, raising=False)
    with pytest.raises(RuntimeError, match="bug"):
        main(["run", str(config_path)])


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "CONFIG.toml" in capsys.readouterr().err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("fedloom ")
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--set", "--out", "--resume", "--quiet"):
        assert option in out


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["run", "x.toml"])
    assert args.overrides == [] and args.out is None and args.resume is None
    assert args.quiet is False and args.config == Path("x.toml")


@dataclass(frozen=True)
class FakeInfo:
    name: str
    description: str
    location: Path


def test_datasets_lists_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = [
        FakeInfo("alpha_set", "first", Path("/cache/alpha")),
        FakeInfo("beta_set", "second", Path("/cache/beta")),
    ]
    monkeypatch.setattr(fedloom.data, "available_datasets", lambda: fake)
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for text in ("alpha_set", "beta_set", "first", "/cache/beta"):
        assert text in out


def test_datasets_real(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for info in fedloom.data.available_datasets():
        assert info.name in out


def test_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedloom.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fedloom ")


def test_missing_data_files_are_not_blamed_on_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data" / "fashion_mnist").mkdir(parents=True)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    config = tmp_path / "fashion.toml"
    config.write_text(CONFIG.replace('"digits"', '"fashion_mnist"'))
    assert main(["run", str(config), "--quiet"]) == 1
    assert capsys.readouterr().err.startswith("error: FEDLOOM_DATA: ")


def test_corrupt_data_files_are_not_blamed_on_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data" / "fashion_mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3"):
        (folder / f"{name}-ubyte.gz").write_bytes(b"cut short")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01")
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "data"))
    config = tmp_path / "fashion.toml"
    config.write_text(CONFIG.replace('"digits"', '"fashion_mnist"'))
    assert main(["run", str(config), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder / 'train-images-idx3-ubyte.gz'}: corrupt")
