"""The experiment runner: configuration -> rounds -> metrics, checkpoints, curves."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedloom.aggregators import InvalidUpdateError
from fedloom.learning import ClientInput, ServerState, evaluate, tree_bytes
from fedloom.runtimes import reuse_cpu_memory

from ._checkpoint import (
    CheckpointError,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ._config import ExperimentConfig, config_from_dict, config_to_dict
from ._display import RoundDisplay, print_summary
from ._files import atomic_file, locked_directory
from ._metrics_log import MetricsLog
from ._plots import plot_curves
from ._sampling import client_seed, sample_cohort
from ._setup import Setup, setup

__all__ = ["RunResult", "run_experiment"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class RunResult:
    """What a finished (or stopped) run leaves: its records and final state."""

    out_dir: Path
    records: list[dict[str, Any]]
    state: ServerState
    target_reached: bool


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_file(path) as file:
        file.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


# What may change when a run is resumed: how long it goes on, and how its clients are
# scheduled (chunk_size, compile, steps_per_call: the same rounds by other kernels, so
# floats may round differently from an uninterrupted run's), not what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "rounds",
        "target_accuracy",
        "checkpoint_every",
        "chunk_size",
        "compile",
        "steps_per_call",
    }
)
ROUND_TENSOR = "run/round"


def _check_resume_config(out_dir: Path, config: ExperimentConfig) -> None:
    path = out_dir / CONFIG_FILE
    if not path.exists():
        raise ValueError(f"--resume {out_dir}: no {CONFIG_FILE}; not a fedloom run")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON: {error}") from None
    saved = config_to_dict(config_from_dict(data, str(path)))
    given = config_to_dict(config)
    fixed = {k: v for k, v in saved.items() if k not in RESUMABLE_CHANGES}
    differences = _differences(
        fixed, {k: v for k, v in given.items() if k not in RESUMABLE_CHANGES}
    )
    if differences:
        raise ValueError(
            f"--resume {out_dir}: the configuration differs from the run's "
            f"{CONFIG_FILE} in {', '.join(differences)}; a resumed run may change "
            f"only {sorted(RESUMABLE_CHANGES)}"
        )


def _differences(saved: Any, given: Any, prefix: str = "") -> list[str]:
    """The dotted names of the fields where two configuration dicts differ, with
    both values: ``algorithm.local_epochs (5 -> 1)``."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return [
            difference
            for key in sorted({*saved, *given})
            for difference in _differences(
                saved.get(key), given.get(key), f"{prefix}{key}."
            )
        ]
    if saved == given:
        return []
    return [f"{prefix[:-1]} ({saved!r} -> {given!r})"]


def _restore(out_dir: Path, run: Setup, log: MetricsLog) -> ServerState:
    directory = out_dir / CHECKPOINT_DIR
    if not has_checkpoint(directory):
        # Stopped before its first checkpoint: round 0's state is the seed's, and
        # the rounds logged since run again, as after any checkpoint.
        return run.process.init()
    tensors, meta = load_checkpoint(directory)
    if ROUND_TENSOR not in tensors:
        raise CheckpointError(f"{directory}: the checkpoint has no {ROUND_TENSOR!r}")
    round = int(tensors.pop(ROUND_TENSOR))
    if meta.get("round") != round:
        raise CheckpointError(
            f"{directory}: checkpoint.json says round {meta.get('round')!r} but its "
            f"tensors were saved at round {round}"
        )
    try:
        state = run.process.state_from_tensors(tensors, round)
    except ValueError as error:
        raise CheckpointError(f"{directory}: {error}") from None
    return state


def _reached(config: ExperimentConfig, record: dict[str, Any]) -> bool:
    """Whether ``record``'s round is a scheduled evaluation at the target. The
    evaluation every run's last round also gets does not stop a run: extended,
    it would end where the same run never stopped does not."""
    accuracy = record.get("test_accuracy")
    target = config.target_accuracy
    scheduled = record["round"] % config.eval_every == 0
    return (
        scheduled and target is not None and accuracy is not None and accuracy >= target
    )


def _round_record(
    config: ExperimentConfig, run: Setup, state: ServerState, round: int
) -> tuple[ServerState, dict[str, Any]]:
    started = time.perf_counter()
    cohort_ids = sample_cohort(
        len(run.clients), run.cohort_size, seed=config.seed, round=round
    )
    cohort = [
        ClientInput(run.clients.client(int(i)), client_seed(config.seed, round, int(i)))
        for i in cohort_ids
    ]
    model_bytes = tree_bytes(state.params)
    try:
        state, metrics = run.process.next(state, cohort, runtime=run.runtime)
    except InvalidUpdateError as error:  # name the round and the client's id
        who = "" if error.client is None else f"client {cohort_ids[error.client]}: "
        raise InvalidUpdateError(
            f"round {round + 1}: {who}{error.reason} (a run that diverges may need "
            "a lower client_learning_rate)"
        ) from None
    record: dict[str, Any] = {
        "round": round + 1,
        "clients": len(cohort),
        "train_loss": metrics["train_loss"],
        "test_loss": None,
        "test_accuracy": None,
    }
    last = round + 1 == config.rounds
    if (round + 1) % config.eval_every == 0 or last:
        result = evaluate(run.model, state.params, run.test)
        record.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
    record.update(
        seconds=time.perf_counter() - started,
        bytes_up=len(cohort) * model_bytes,
        bytes_down=len(cohort) * model_bytes,
    )
    return state, record


def run_experiment(
    config: ExperimentConfig,
    *,
    out_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    config_path: str | None = None,
    stop: Callable[[Mapping[str, Any]], bool] | None = None,
) -> RunResult:
    """Run (or, with ``resume``, continue) the experiment ``config`` into ``out_dir``.

    ``stop``, when given, is asked after every round, with that round's record,
    whether to end the run there (a time limit, say, or a run gone nowhere): the run
    then checkpoints and returns early, and ``resume`` continues it later on the same
    trajectory.

    After every round ``out_dir`` holds ``metrics.jsonl`` (one JSON object per round)
    and, every ``checkpoint_every`` rounds and at the end, a checkpoint (safetensors +
    JSON, written atomically); a run resumed from it with the same configuration
    follows the same trajectory, bit for bit, as one never stopped (the rounds
    logged after the checkpoint run again).
    At the end it writes ``curves.png`` and prints a summary.
    """
    out_dir = Path(out_dir)
    if not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
    # One process a run directory: a second, started at the same time, would
    # interleave its rounds with this one's.
    with locked_directory(out_dir):
        if resume:
            _check_resume_config(out_dir, config)
        elif (out_dir / METRICS_FILE).exists() or has_checkpoint(
            out_dir / CHECKPOINT_DIR
        ):
            raise ValueError(
                f"{out_dir} already holds a run; continue it with --resume or pick "
                "another --out"
            )
        reuse_cpu_memory()  # stacked cohort tensors: no page faults every step
        threads = torch.get_num_threads()
        torch.set_num_threads(config.torch_threads())
        try:
            return _run(config, out_dir, resume, quiet, config_path, stop)
        finally:
            torch.set_num_threads(threads)


def _run(
    config: ExperimentConfig,
    out_dir: Path,
    resume: bool,
    quiet: bool,
    config_path: str | None,
    stop: Callable[[Mapping[str, Any]], bool] | None,
) -> RunResult:
    run = setup(config)
    log = MetricsLog(out_dir / METRICS_FILE)
    state = _restore(out_dir, run, log) if resume else run.process.init()
    if state.round > config.rounds:
        raise ValueError(
            f"--resume {out_dir}: the run is checkpointed at round {state.round}; "
            f"rounds = {config.rounds} would end it before that"
        )
    # Only now, everything checked, is the configuration the run's.
    _write_json(out_dir / CONFIG_FILE, config_to_dict(config))
    log.truncate_after(state.round)
    done = log.read()
    reached = bool(done) and _reached(config, done[-1])
    if reached and state.round < config.rounds and not quiet:
        print(
            f"target_accuracy {config.target_accuracy} was reached at round "
            f"{state.round}: nothing to run (raise target_accuracy to go on)"
        )
    try:
        with RoundDisplay(config.rounds, state.round, enabled=not quiet) as display:
            while not reached and state.round < config.rounds:
                state, record = _round_record(config, run, state, state.round)
                reached = _reached(config, record)
                log.append(record)
                stopping = stop is not None and stop(record)
                last = reached or stopping or state.round == config.rounds
                if last or state.round % config.checkpoint_every == 0:
                    save_checkpoint(
                        out_dir / CHECKPOINT_DIR,
                        {**state.to_tensors(), ROUND_TENSOR: torch.tensor(state.round)},
                        {"round": state.round, "target_reached": reached},
                    )
                display.update(record)
                if stopping:
                    break
    finally:  # the curves of the rounds done, also when a round failed
        records = log.read()
        plot_curves(records, out_dir / CURVES_FILE, title=config_path or str(out_dir))
    if not quiet:
        print_summary(records, _summary(config, config_path, out_dir))
    return RunResult(out_dir, records, state, reached)


def _summary(
    config: ExperimentConfig, config_path: str | None, out_dir: Path
) -> dict[str, Any]:
    algorithm = config.algorithm
    return {
        "config": config_path or "",
        "output": str(out_dir),
        "dataset": f"{config.data.dataset} ({config.data.partition}, "
        f"{config.data.num_clients} clients)",
        "model": config.model.name,
        "algorithm": f"{algorithm.name} E={algorithm.local_epochs} "
        f"B={algorithm.batch_size or 'all'} lr={algorithm.client_learning_rate}",
        "target_accuracy": config.target_accuracy,
    }
