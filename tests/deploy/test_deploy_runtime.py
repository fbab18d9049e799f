"""DeploymentRuntime: FedAvg's unchanged round, with results arriving as a server
would receive them (offered to an open round from another thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping

import pytest
import torch

from fedloom.core import CLIENTS, computation, map
from fedloom.data import ClientData, load_dataset
from fedloom.deploy import DeploymentRuntime, RoundFailed, TaskSpec
from fedloom.deploy._round import OpenRound, Submission
from fedloom.learning import ClientInput, ClientResult, Params, build_model, fed_avg

SPEC = TaskSpec("fedavg/local_training", {})


def _digits_cohort(size: int) -> list[ClientInput]:
    clients = ClientData.from_dataset(load_dataset("digits"), "iid", size, seed=0)
    return [ClientInput(clients.client(i), seed=100 + i) for i in range(size)]


def _runtime(
    results: Callable[[Params, tuple[str, ...]], Mapping[str, ClientResult]],
    work: object,
    *,
    min_results: int = 1,
    target: int = 100,
    metrics: frozenset[str] | None = None,
) -> tuple[DeploymentRuntime, list[OpenRound]]:
    """A runtime whose rounds receive ``results(params, cohort)`` from a thread."""
    opened: list[OpenRound] = []

    def dispatch(spec: TaskSpec, params: Params, cohort: tuple[str, ...]) -> OpenRound:
        round = OpenRound(
            round=0,
            task_id="t",
            spec=spec,
            template=params,
            chunks=[],
            cohort=cohort,
            seeds={},
            target=target,
            deadline=time.monotonic() + 30,
            alive=lambda client: True,
        )
        opened.append(round)

        def send() -> None:
            for client, result in results(params, cohort).items():
                round.offer(client, result, 0)

        threading.Thread(target=send).start()
        return round

    runtime = DeploymentRuntime(dispatch, [(work, SPEC)], min_results, metrics)
    return runtime, opened


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Training runs on a second thread here, as on a server; two OpenMP pools
    # spinning on two cores slow it a hundredfold (the server uses one thread too).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fedavg_on_devices_matches_the_local_runtime() -> None:
    model = build_model("2nn", (1, 8, 8), 10, seed=0)
    process = fed_avg(model, client_learning_rate=0.1, local_epochs=2, batch_size=10)
    inputs = _digits_cohort(4)
    ids = [f"client-{i}" for i in range(4)]
    state = process.init()
    expected, expected_metrics = process.next(state, inputs)

    def train(params: Params, cohort: tuple[str, ...]) -> dict[str, ClientResult]:
        # Devices answer in another order than the cohort's.
        order = [3, 1, 0, 2]
        return {ids[i]: process.client_work(params, inputs[i]) for i in order}

    runtime, _ = _runtime(train, process.client_work)
    got, metrics = process.next(state, ids, runtime=runtime)  # type: ignore[arg-type]
    assert got.round == expected.round == 1
    for name in expected.params:
        torch.testing.assert_close(got.params[name], expected.params[name])
    assert metrics["train_loss"] == pytest.approx(expected_metrics["train_loss"])
    assert metrics["num_examples"] == expected_metrics["num_examples"]


def _result(update: Params, weight: float = 1.0, **metrics: float) -> ClientResult:
    return ClientResult(
        update,
        torch.tensor(weight, dtype=torch.float64),
        {k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()}
        or {"train_loss": torch.tensor(0.0, dtype=torch.float64)},
    )


def test_bad_updates_are_refused_and_left_out_of_the_aggregate() -> None:
    model = build_model("logistic", (4,), 2, seed=0)
    process = fed_avg(model, client_learning_rate=0.1)
    params = process.init().params
    good = {k: torch.ones_like(v) for k, v in params.items()}
    nan = {k: torch.full_like(v, float("nan")) for k, v in params.items()}
    misshapen = {k: torch.ones(7) for k in params}

    def send(_: Params, cohort: tuple[str, ...]) -> dict[str, ClientResult]:
        return {
            "a": _result(nan),
            "b": _result(good, 2.0),
            "c": _result(misshapen),
            "d": _result(good, 1.0, other=1.0),
            "e": _result({k: 3 * v for k, v in good.items()}, 2.0),
        }

    runtime, opened = _runtime(send, process.client_work, target=2)
    new_state, _ = process.next(
        process.init(),
        ["a", "b", "c", "d", "e"],  # type: ignore[list-item]
        runtime=runtime,
    )
    (round,) = opened
    assert round.accepted == ["b", "e"]
    assert set(round.rejected) == {"a", "c", "d"}
    assert "NaN" in round.rejected["a"]
    assert "shape" in round.rejected["c"]
    assert "metrics" in round.rejected["d"]
    for name, value in params.items():  # mean of 1 and 3 with equal weights: 2
        torch.testing.assert_close(new_state.params[name], value + 2.0)


def test_results_that_would_overflow_or_lack_the_metrics_are_refused() -> None:
    # Each value is finite, but weight times value is not; and the server's record
    # reads train_loss, so a first result without it does not set the rule.
    model = build_model("logistic", (4,), 2, seed=0)
    process = fed_avg(model, client_learning_rate=0.1)
    params = process.init().params
    good = {k: torch.ones_like(v) for k, v in params.items()}
    huge = {k: torch.full_like(v, 1e30) for k, v in params.items()}
    nothing = ClientResult(good, torch.tensor(1.0, dtype=torch.float64), {})

    def send(_: Params, cohort: tuple[str, ...]) -> dict[str, ClientResult]:
        return {
            "a": nothing,
            "b": _result(huge, 1e300),
            "c": _result(good, 1e300, train_loss=1e10),
            "d": _result(good),
        }

    runtime, opened = _runtime(
        send, process.client_work, target=1, metrics=frozenset({"train_loss"})
    )
    new_state, _ = process.next(
        process.init(),
        ["a", "b", "c", "d"],
        runtime=runtime,  # type: ignore[list-item]
    )
    (round,) = opened
    assert round.accepted == ["d"]
    assert "metrics [] differ from the cohort's ['train_loss']" in round.rejected["a"]
    assert "times its values is not finite" in round.rejected["b"]
    assert "times its values is not finite" in round.rejected["c"]
    for name, value in params.items():
        torch.testing.assert_close(new_state.params[name], value + 1.0)


def test_a_result_whose_client_left_takes_no_answer() -> None:
    # The client's call was cancelled (the connection dropped) while its result
    # waited for the training thread: answering it must not raise.
    round = OpenRound(
        0, "t", SPEC, {}, [], ("a", "b"), {}, 2, time.monotonic() + 9, lambda c: True
    )
    left = round.offer("a", _result({}), 0)
    assert left is not None and left.cancel()
    round.settle(Submission("a", _result({}), left), None)
    queued = round.offer("b", _result({}), 0)
    assert queued is not None and queued.cancel()
    round.close()  # answers what is still queued: "the round closed"
    assert round.accepted == ["a"] and not round.is_open


def test_too_few_results_fail_the_round() -> None:
    model = build_model("logistic", (4,), 2, seed=0)
    process = fed_avg(model, client_learning_rate=0.1)
    params = process.init().params
    good = {k: torch.ones_like(v) for k, v in params.items()}
    runtime, opened = _runtime(
        lambda *_: {"a": _result(good)}, process.client_work, min_results=2
    )
    opened_deadline: list[OpenRound] = opened
    with pytest.raises(RoundFailed, match="1 of 2 clients"):
        # "b" never answers; the round closes when "b" is taken as gone.
        runtime.dispatch = _closing(runtime.dispatch)
        process.next(process.init(), ["a", "b"], runtime=runtime)  # type: ignore[list-item]
    assert opened_deadline[0].accepted == ["a"]


def _closing(dispatch: Callable[..., OpenRound]) -> Callable[..., OpenRound]:
    def wrapped(*args: object) -> OpenRound:
        round = dispatch(*args)
        round.deadline = time.monotonic() + 0.3
        return round

    return wrapped


def test_only_registered_client_work_is_sent_to_devices() -> None:
    runtime = DeploymentRuntime(lambda *a: None, [], 1)  # type: ignore[arg-type,return-value]
    double = computation(CLIENTS)(lambda x: map(lambda v: v * 2, x))
    with pytest.raises(TypeError, match="only registered client work"):
        double(["client-0"], runtime=runtime)
