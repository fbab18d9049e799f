"""Where the vectorized runtime trains a cohort client by client by choice (a large
model, eager on the CPU), it shares the clients out among threads, one torch thread
each, every thread with a copy of the client work of its own: each client's result
is the local runtime's on one torch thread, bit for bit, whatever thread trained it
and in whatever order."""

import threading

import pytest
import torch
from torch import nn

from fedloom.core import CohortOptions, Replicated
from fedloom.data import ClientData, Examples, load_dataset
from fedloom.learning import (
    ClientInput,
    FullBatchGradient,
    FunctionalModel,
    LocalTraining,
    _cohort_work,
    build_model,
    sgd,
)
from fedloom.learning._client_work import THREADED_BATCH_SIZE
from fedloom.runtimes import LocalRuntime, VectorizedRuntime


@pytest.fixture
def large(monkeypatch):
    """Every model counts as large: its eager CPU training runs client by client."""
    monkeypatch.setattr(_cohort_work, "COMPILED_CPU_PARAMETER_BYTES", 1024)


@pytest.fixture
def calls(monkeypatch):
    """(thread name, torch threads) of every client's call of LocalTraining."""
    seen = []
    train = LocalTraining.__call__

    def recorded(self, params, data):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return train(self, params, data)

    monkeypatch.setattr(LocalTraining, "__call__", recorded)
    return seen


def _digits_cohort(partition="quantity_skew", size=6, **options):
    digits = load_dataset("digits")
    clients = ClientData.from_dataset(digits, partition, 20, seed=1, **options)
    return digits, [ClientInput(clients.client(i), seed=i) for i in range(size)]


def _assert_same_updates(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name, value in w.update.items():
            torch.testing.assert_close(g.update[name], value, rtol=0, atol=0)
        assert float(g.metrics["train_loss"]) == float(w.metrics["train_loss"])


def test_each_client_trains_as_on_the_local_runtime_on_one_thread(
    large, calls, torch_threads
):
    digits, cohort = _digits_cohort(sigma=1.0)
    assert len({len(c.examples) for c in cohort}) > 1  # unequal: trained largest first
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    training = LocalTraining(model, sgd(0.1), epochs=2, batch_size=8)
    params = Replicated(model.init(), len(cohort))
    runtime = VectorizedRuntime()
    options = CohortOptions()
    assert training.clients_at_once([params, cohort], runtime.device, options) == 0
    with torch_threads(3):
        got = runtime.to_members(runtime.map(training, [params, cohort]))
        assert torch.get_num_threads() == 3  # given back
    assert len(calls) == len(cohort) and runtime.fallbacks == 0
    assert all(name.startswith("fedloom") and n == 1 for name, n in calls)
    assert len({name for name, _ in calls}) > 1  # the threads shared the clients
    assert training.steps == {}  # no batched step
    calls.clear()
    with torch_threads(1):
        want = LocalRuntime().map(training, [[model.init()] * len(cohort), cohort])
    _assert_same_updates(got, want)


def test_large_batches_and_fedsgd_gradients_train_in_one_thread(
    large, monkeypatch, torch_threads
):
    # Their operations are large enough to share out among a step's torch threads.
    digits, cohort = _digits_cohort("iid", size=4)
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    for batch in (None, THREADED_BATCH_SIZE + 1):
        assert LocalTraining(model, sgd(0.1), 1, batch).for_thread() is None
    assert LocalTraining(model, sgd(0.1), 1, THREADED_BATCH_SIZE).for_thread()
    threads = []
    gradient = FullBatchGradient(model)
    call = FullBatchGradient.__call__

    def recorded(self, params, data):
        threads.append(threading.current_thread().name)
        return call(self, params, data)

    monkeypatch.setattr(FullBatchGradient, "__call__", recorded)
    params = Replicated(model.init(), len(cohort))
    with torch_threads(2):
        VectorizedRuntime().map(gradient, [params, cohort])
    assert threads == [threading.current_thread().name] * len(cohort)


def test_a_model_that_draws_random_numbers_trains_in_one_thread(
    large, calls, torch_threads
):
    # Dropout draws from the one global stream: on several threads the draws
    # would go to the clients in whatever order the threads ran.
    _, cohort = _digits_cohort("iid", size=4)
    layers = nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.3), nn.Linear(16, 10)
    module = nn.Sequential(*layers)
    model = FunctionalModel(module)
    training = LocalTraining(model, sgd(0.1), epochs=1, batch_size=8)
    assert training.for_thread() is None
    params = Replicated(model.init(), len(cohort))
    with torch_threads(2):
        torch.manual_seed(0)
        got = VectorizedRuntime().to_members(
            VectorizedRuntime().map(training, [params, cohort])
        )
        assert {name for name, _ in calls} == {threading.current_thread().name}
        torch.manual_seed(0)
        want = LocalRuntime().map(training, [[model.init()] * len(cohort), cohort])
    _assert_same_updates(got, want)


def test_a_copy_for_a_thread_trains_a_module_of_its_own():
    model = build_model("2nn", (64,), 10, seed=0)
    training = LocalTraining(model, sgd(0.1), epochs=1, batch_size=8)
    other = training.for_thread()
    assert other is not None and other.model.module is not model.module
    assert other.optimizer is training.optimizer and other.epochs == 1
    for mine, theirs in zip(
        model.module.parameters(), other.model.module.parameters(), strict=True
    ):
        assert mine is not theirs and torch.equal(mine, theirs)


def test_a_clients_error_reaches_the_caller_and_the_threads_are_given_back(
    large, torch_threads
):
    digits, cohort = _digits_cohort("iid", size=4)
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    training = LocalTraining(model, sgd(0.1), epochs=1, batch_size=8)
    wrong = Examples(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))
    cohort[2] = ClientInput(wrong, seed=2)  # 3 features, not 64: fails in its thread
    params = Replicated(model.init(), len(cohort))
    with torch_threads(2):
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            VectorizedRuntime().map(training, [params, cohort])
        assert torch.get_num_threads() == 2
