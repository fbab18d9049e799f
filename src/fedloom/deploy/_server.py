"""``fedloom server``: the algorithm's server side, with real clients over gRPC.

The gRPC service runs on an asyncio event loop; the rounds run on a training
thread that calls the very ``LearningProcess.next`` simulation calls, on a
:class:`DeploymentRuntime`. After each round the state is committed to the store
(SQLite + safetensors), the metrics record appended to ``metrics.jsonl``; a server
started again on the same directory resumes after the last committed round.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch

from fedloom.experiments import (
    CheckpointError,
    ExperimentConfig,
    MetricsLog,
    RunResult,
    client_seed,
    config_to_dict,
    plot_curves,
    sample_cohort,
    setup,
)
from fedloom.experiments._display import RoundDisplay, print_summary
from fedloom.experiments._files import locked_directory
from fedloom.experiments._runner import (
    CONFIG_FILE,
    CURVES_FILE,
    METRICS_FILE,
    _check_resume_config,
    _write_json,
)
from fedloom.experiments._setup import Setup
from fedloom.learning import ServerState, evaluate

from ._auth import TokenBook
from ._config import DeployConfig
from ._proto import deploy_pb2_grpc as pb_grpc
from ._round import RoundFailed, TaskSpec
from ._runtime import DeploymentRuntime
from ._service import Coordinator
from ._store import Store

__all__ = ["serve", "task_spec"]

logger = logging.getLogger("fedloom.deploy")


def task_spec(config: ExperimentConfig) -> TaskSpec:
    """The task the devices run for ``config``'s algorithm (name + JSON config)."""
    algorithm = config.algorithm
    common: dict[str, Any] = {"model": config.model.name}
    if config.model.autocast is not None:  # devices train as the server evaluates
        common["autocast"] = config.model.autocast
    if algorithm.name == "fedsgd":
        return TaskSpec("fedsgd/full_batch_gradient", common)
    return TaskSpec(
        "fedavg/local_training",
        {
            **common,
            "learning_rate": algorithm.client_learning_rate,
            "epochs": algorithm.local_epochs,
            "batch_size": algorithm.batch_size,
        },
    )


def _check_config(store: Store, config: ExperimentConfig) -> None:
    """Refuse a state directory of another run; record this run's configuration.

    A restarted server is a resumed run: the check is the runner's own, on the same
    ``config.json``.
    """
    out_dir = store.directory
    if (out_dir / CONFIG_FILE).exists():
        _check_resume_config(out_dir, config)
    elif store.last_round() is not None:
        raise ValueError(f"{out_dir}: rounds recorded but no {CONFIG_FILE}")
    _write_json(out_dir / CONFIG_FILE, config_to_dict(config))
    store.set("config", config_to_dict(config))


def _restore(store: Store, run: Setup, log: MetricsLog) -> ServerState:
    saved = store.last_round()
    records = store.records()
    log.truncate_after(saved.round if saved else 0)
    logged = {r.get("round") for r in log.read()}
    for record in records:  # rounds committed but not yet in the log
        if record["round"] not in logged:
            log.append(record)
    if saved is None:
        return run.process.init()
    try:
        return run.process.state_from_tensors(store.load_model(saved), saved.round)
    except ValueError as error:
        raise CheckpointError(f"{store.directory}: {error}") from None


def _cohort(connected: list[str], size: int, seed: int, key: int) -> tuple[str, ...]:
    positions = sample_cohort(len(connected), size, seed=seed, round=key)
    return tuple(connected[int(i)] for i in positions)


@dataclass
class _Rounds:
    """The training thread: waits for clients, runs rounds, commits them."""

    config: ExperimentConfig
    settings: DeployConfig
    run: Setup
    store: Store
    log: MetricsLog
    coordinator: Coordinator
    clients: list[str]  # every client id the tokens file knows, sorted
    stopping: threading.Event
    completed: bool = False

    @property
    def min_results(self) -> int:
        return min(self.settings.min_clients or self.run.cohort_size, self.selected)

    @property
    def selected(self) -> int:
        size = math.ceil(self.run.cohort_size * (1 + self.settings.over_selection))
        return min(size, len(self.clients))

    def wait_for_clients(self) -> list[str]:
        """The connected clients, once there are a cohort's worth of them (or, after
        a round deadline of waiting, at least ``min_results``)."""
        waited_since = time.monotonic()
        wanted = min(self.run.cohort_size, len(self.clients))
        while not self.stopping.is_set():
            connected = self.coordinator.connected()
            enough = len(connected) >= self.min_results
            waited = time.monotonic() - waited_since > self.settings.round_deadline
            if len(connected) >= wanted or (enough and waited):
                return connected
            time.sleep(0.05)
        return []

    def run_round(self, state: ServerState, attempt: int) -> ServerState | None:
        connected = self.wait_for_clients()
        if self.stopping.is_set():
            return None
        size = min(self.selected, len(connected))
        seed = self.config.seed
        cohort = _cohort(connected, size, seed, state.round + attempt)
        index = {client: i for i, client in enumerate(self.clients)}
        seeds = {c: client_seed(seed, state.round, index[c]) for c in cohort}
        dispatch = functools.partial(
            self.coordinator.dispatch,
            round=state.round,
            seeds=seeds,
            target=self.run.cohort_size,
        )
        runtime = DeploymentRuntime(
            dispatch=dispatch,
            client_works=[(self.run.process.client_work, task_spec(self.config))],
            min_results=self.min_results,
            metrics=frozenset({"train_loss"}),  # what the round's record reads
        )
        started = time.perf_counter()
        try:
            # A cohort member is a client id here: its data stays on the device.
            members: list[Any] = list(cohort)
            new_state, metrics = self.run.process.next(state, members, runtime=runtime)
        except RoundFailed as error:
            if self.stopping.is_set():
                logger.warning("stopped in round %d; it runs again", state.round + 1)
            else:
                logger.warning("%s; running the round again", error)
            self.coordinator.round_done(state.round)
            return None
        open_round = runtime.rounds[-1]
        record: dict[str, Any] = {
            "round": new_state.round,
            "clients": len(open_round.accepted),
            "selected": len(cohort),
            "train_loss": metrics["train_loss"],
            "test_loss": None,
            "test_accuracy": None,
        }
        last = new_state.round == self.config.rounds
        if new_state.round % self.config.eval_every == 0 or last:
            result = evaluate(self.run.model, new_state.params, self.run.dataset.test)
            record.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
        record.update(
            seconds=time.perf_counter() - started,
            bytes_up=open_round.bytes_up,
            bytes_down=open_round.bytes_down,
        )
        self.store.commit_round(new_state.round, record, new_state.to_tensors())
        self.log.append(record)
        self.coordinator.round_done(new_state.round)
        return new_state

    def __call__(self, state: ServerState, display: RoundDisplay) -> ServerState:
        attempt = 0
        target = self.config.target_accuracy
        records = self.store.records()
        reached = bool(records) and _reached(target, records[-1])
        while not reached and state.round < self.config.rounds:
            if self.stopping.is_set():
                return state  # stopped: the clients keep waiting for a restart
            new_state = self.run_round(state, attempt)
            if new_state is None:
                attempt += 1
                continue
            state, attempt = new_state, 0
            record = self.store.records()[-1]
            display.update(record)
            reached = _reached(target, record)
        self.completed = True
        return state


def _reached(target: float | None, record: dict[str, Any]) -> bool:
    accuracy = record.get("test_accuracy")
    return target is not None and accuracy is not None and accuracy >= target


def _credentials(settings: DeployConfig) -> grpc.ServerCredentials | None:
    if settings.insecure:
        return None
    assert settings.tls_certificate and settings.tls_private_key  # validated
    key = Path(settings.tls_private_key).read_bytes()
    certificate = Path(settings.tls_certificate).read_bytes()
    return grpc.ssl_server_credentials([(key, certificate)])


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC channel options: message size limits (both ways), keepalive, and no
    port sharing (gRPC's default on Linux: a second server on the port would
    take half the clients)."""
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ]


async def _serve(
    config: ExperimentConfig, settings: DeployConfig, out_dir: Path, quiet: bool
) -> RunResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    with locked_directory(out_dir):  # one server a state directory
        return await _serve_locked(config, settings, out_dir, quiet)


async def _serve_locked(
    config: ExperimentConfig, settings: DeployConfig, out_dir: Path, quiet: bool
) -> RunResult:
    run = setup(config)
    tokens = TokenBook.load(settings.tokens)
    store = Store(out_dir)
    try:
        _check_config(store, config)
        log = MetricsLog(out_dir / METRICS_FILE)
        state = _restore(store, run, log)
        loop = asyncio.get_running_loop()
        coordinator = Coordinator(settings, tokens, store, loop)
        coordinator.rounds_done = state.round
        server = grpc.aio.server(options=server_options(settings.max_message_bytes))
        pb_grpc.add_CoordinatorServicer_to_server(coordinator, server)
        credentials = _credentials(settings)
        try:
            if credentials is None:
                port = server.add_insecure_port(settings.listen)
            else:
                port = server.add_secure_port(settings.listen, credentials)
        except RuntimeError as error:  # gRPC's "failed to bind"
            raise OSError(
                f"cannot listen on {settings.listen} (another server there?): {error}"
            ) from None
        host = settings.listen.rpartition(":")[0]
        store.set("address", f"{host}:{port}")
        await server.start()
        logger.info("listening on %s:%d (%s)", host, port, out_dir)
        rounds = _Rounds(
            config,
            settings,
            run,
            store,
            log,
            coordinator,
            tokens.clients(),
            threading.Event(),
        )
        try:
            state = await _train(rounds, state, quiet)
        finally:
            if rounds.completed:  # else the clients wait for the server to return
                coordinator.finish()
                await coordinator.wait_told_finished(settings.client_timeout)
            await server.stop(grace=1.0)
            await coordinator.flush()
    finally:
        store.close()
    records = MetricsLog(out_dir / METRICS_FILE).read()
    plot_curves(records, out_dir / CURVES_FILE, title=str(out_dir))
    reached = bool(records) and _reached(config.target_accuracy, records[-1])
    return RunResult(out_dir, records, state, reached)


async def _train(rounds: _Rounds, state: ServerState, quiet: bool) -> ServerState:
    config, coordinator, stopping = rounds.config, rounds.coordinator, rounds.stopping
    loop = asyncio.get_running_loop()
    done: asyncio.Future[ServerState] = loop.create_future()

    def work() -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(config.torch_threads())
        try:
            with RoundDisplay(config.rounds, state.round, enabled=not quiet) as display:
                result = rounds(state, display)
            loop.call_soon_threadsafe(_settle, done, result, None)
        except BaseException as error:  # handed to the event loop
            loop.call_soon_threadsafe(_settle, done, None, error)
        finally:
            torch.set_num_threads(threads)

    def stop() -> None:
        stopping.set()
        if coordinator.round is not None:
            coordinator.round.close()

    thread = threading.Thread(target=work, name="fedloom-rounds", daemon=True)
    flusher = asyncio.create_task(coordinator.flush_forever())
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, stop)
    thread.start()
    try:
        return await asyncio.shield(done)
    finally:
        stop()
        await asyncio.to_thread(thread.join)
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher


def _settle(
    future: asyncio.Future[ServerState],
    result: ServerState | None,
    error: BaseException | None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def serve(
    config: ExperimentConfig,
    settings: DeployConfig,
    *,
    out_dir: str | Path,
    quiet: bool = False,
) -> RunResult:
    """Run the server until ``config.rounds`` rounds are done (or the target
    accuracy is reached); resumes from ``out_dir`` if it holds a run.

    Blocks. SIGINT or SIGTERM stop it: the round in progress is abandoned (it runs
    again on restart) and the clients, not told the run is over, keep trying to
    reconnect; only a finished run sends them home.
    """
    result = asyncio.run(_serve(config, settings, Path(out_dir), quiet))
    if not quiet:
        print_summary(result.records, _summary(config, result.out_dir))
    return result


def _summary(config: ExperimentConfig, out_dir: Path) -> dict[str, Any]:
    algorithm = config.algorithm
    return {
        "output": str(out_dir),
        "dataset": config.data.dataset,
        "model": config.model.name,
        "algorithm": f"{algorithm.name} E={algorithm.local_epochs} "
        f"B={algorithm.batch_size or 'all'} lr={algorithm.client_learning_rate}",
        "target_accuracy": config.target_accuracy,
    }
