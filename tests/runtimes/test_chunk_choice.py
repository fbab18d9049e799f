"""How many clients the vectorized runtime computes at once when not told.

By default a cohort function may ask for smaller chunks than the runtime's
(``clients_at_once``); FedAvg's compiled step on the CPU does, by its parameters'
size. A chunk size given to the runtime is used as it is.
"""

import pytest
import torch

from fedloom.core import CohortOptions, NotBatchable, Replicated, Stacked
from fedloom.data import ClientData, load_dataset
from fedloom.learning import (
    ClientInput,
    FullBatchGradient,
    LocalTraining,
    _cohort_work,
    build_model,
    fed_avg,
    sgd,
)
from fedloom.runtimes import LocalRuntime, VectorizedRuntime
from fedloom.runtimes._vectorized import DEFAULT_CHUNK_SIZE


class _WithoutPreference:
    """A cohort function that states no preference (``clients_at_once`` is
    optional) and records the chunks it is given."""

    def __init__(self):
        self.chunks = []

    def __call__(self, x):
        return 2 * x

    def map_cohort(self, args, device, options):
        (x,) = args
        self.chunks.append(x.size)
        return Stacked(2 * x.tree, x.size)


class _Doubling(_WithoutPreference):
    """One that asks for chunks of ``preferred`` clients."""

    def __init__(self, preferred):
        super().__init__()
        self.preferred = preferred

    def clients_at_once(self, args, device, options):
        return self.preferred


def _seven_clients():
    return Stacked(torch.arange(7.0), 7)


@pytest.mark.parametrize(
    ("preferred", "chunk_size", "chunks"),
    [
        (3, None, [3, 3, 1]),  # the function's preference, by default
        (None, None, [7]),  # no preference: the runtime's default
        (3, 2, [2, 2, 2, 1]),  # a chunk size given wins
        (3, 5, [5, 2]),
        (1000, None, [7]),
    ],
)
def test_cohort_functions_choose_their_chunks_unless_told(
    preferred, chunk_size, chunks
):
    fn = _Doubling(preferred)
    got = VectorizedRuntime(chunk_size=chunk_size).map(fn, [_seven_clients()])
    torch.testing.assert_close(got.tree, 2 * torch.arange(7.0))
    assert fn.chunks == chunks


def test_a_cohort_function_may_ask_to_run_client_by_client():
    fn = _Doubling(0)  # none at once: called client by client, unbatched
    runtime = VectorizedRuntime()
    got = runtime.map(fn, [_seven_clients()])
    torch.testing.assert_close(got.tree, 2 * torch.arange(7.0))
    assert fn.chunks == [] and runtime.fallbacks == 0  # a choice, not a fallback
    fn = _Doubling(0)
    VectorizedRuntime(chunk_size=4).map(fn, [_seven_clients()])
    assert fn.chunks == [4, 3]  # a chunk size given wins


def test_eager_cpu_training_of_a_large_model_runs_client_by_client(
    monkeypatch, torch_threads
):
    # The same results as the local runtime's on one torch thread, to the bit: it
    # is its computation, each client on a thread of its own (test_client_threads).
    monkeypatch.setattr(_cohort_work, "COMPILED_CPU_PARAMETER_BYTES", 1024)
    digits = load_dataset("digits")
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    training = LocalTraining(model, sgd(0.1), epochs=1, batch_size=8)
    clients = ClientData.from_dataset(digits, "iid", 40, seed=1)
    cohort = [ClientInput(clients.client(i), seed=i) for i in range(3)]
    params = Replicated(model.init(), 3)
    runtime = VectorizedRuntime()
    assert (
        training.clients_at_once([params, cohort], runtime.device, CohortOptions()) == 0
    )
    got = runtime.map(training, [params, cohort])
    assert isinstance(got, Stacked) and runtime.fallbacks == 0
    assert training.steps == {}  # no batched step was made
    with torch_threads(1):
        want = LocalRuntime().map(training, [[model.init()] * 3, cohort])
    for g, w in zip(runtime.to_members(got), want, strict=True):
        for name, value in w.update.items():
            torch.testing.assert_close(g.update[name], value, rtol=0, atol=0)


def test_fedsgd_gradients_of_a_large_model_run_client_by_client_on_the_cpu(
    monkeypatch,
):
    digits = load_dataset("digits")
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    gradient = FullBatchGradient(model)
    params, eager = Replicated(model.init(), 3), CohortOptions()
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert gradient.clients_at_once([params, []], cpu, eager) is None  # batched
    monkeypatch.setattr(_cohort_work, "COMPILED_CPU_PARAMETER_BYTES", 1024)
    assert gradient.clients_at_once([params, []], cpu, eager) == 0
    assert gradient.clients_at_once([params, []], meta, eager) is None
    clients = ClientData.from_dataset(digits, "iid", 40, seed=1)
    cohort = [ClientInput(clients.client(i), seed=i) for i in range(3)]
    runtime = VectorizedRuntime()
    got = runtime.to_members(runtime.map(gradient, [params, cohort]))
    for g, member in zip(got, cohort, strict=True):  # each client's own gradient
        want = torch.func.grad(model.loss)(
            model.init(), member.examples.x, member.examples.y
        )
        for name, value in want.items():
            torch.testing.assert_close(g.update[name], value)
        loss = model.loss(model.init(), member.examples.x, member.examples.y)
        assert float(g.metrics["train_loss"]) == float(loss)


def test_no_preference_is_larger_than_the_default():
    fn = _Doubling(DEFAULT_CHUNK_SIZE + 1)
    clients = Stacked(torch.zeros(DEFAULT_CHUNK_SIZE + 1), DEFAULT_CHUNK_SIZE + 1)
    VectorizedRuntime().map(fn, [clients])
    assert fn.chunks == [DEFAULT_CHUNK_SIZE, 1]


def test_compiled_cpu_training_asks_for_clients_by_parameter_bytes(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    params = {"w": torch.zeros(1024, 1024), "b": torch.zeros(1024)}  # 4 MiB + 4 KiB
    training = LocalTraining(
        build_model("logistic", (4,), 2), sgd(0.1), epochs=1, batch_size=8
    )
    compiled, cpu = CohortOptions(compile=True), torch.device("cpu")
    # 8 MiB a thread, two threads: three clients of just over 4 MiB
    assert training.clients_at_once([Replicated(params, 9), []], cpu, compiled) == 3
    stacked = Stacked({k: v.expand(9, *v.shape) for k, v in params.items()}, 9)
    assert training.clients_at_once([stacked, []], cpu, compiled) == 3
    huge = {"w": torch.zeros(4096, 1024)}  # 16 MiB, more than the budget
    assert training.clients_at_once([Replicated(huge, 9), []], cpu, compiled) == 1
    # eager: no preference where three or more would be compiled together, none
    # at once (client by client, unbatched) where one or two
    eager = CohortOptions()
    assert training.clients_at_once([Replicated(params, 9), []], cpu, eager) is None
    assert training.clients_at_once([Replicated(huge, 9), []], cpu, eager) == 0
    # on another device: no preference
    meta = torch.device("meta")
    assert training.clients_at_once([Replicated(params, 9), []], meta, compiled) is None
    assert training.clients_at_once([Replicated(huge, 9), []], meta, eager) is None
    # parameters that could not be stacked (a list): not batchable (the next test)
    with pytest.raises(NotBatchable, match="could not be stacked"):
        training.clients_at_once([[params] * 9, []], cpu, compiled)


@pytest.mark.parametrize("compile", [False, True])
def test_parameters_that_could_not_be_stacked_train_client_by_client(compile):
    digits = load_dataset("digits")
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    training = LocalTraining(model, sgd(0.1), epochs=1, batch_size=8)
    clients = ClientData.from_dataset(digits, "iid", 40, seed=1)
    cohort = [ClientInput(clients.client(i), seed=i) for i in range(3)]
    params = [model.init() for _ in cohort]  # a list, as unstackable values are kept
    runtime = VectorizedRuntime(compile=compile)
    with pytest.warns(RuntimeWarning, match="could not be stacked"):
        got = runtime.map(training, [params, cohort])
    assert runtime.fallbacks == 1
    want = LocalRuntime().map(training, [params, cohort])
    for g, w in zip(runtime.to_members(got), want, strict=True):
        for name, value in w.update.items():
            torch.testing.assert_close(g.update[name], value)


@pytest.fixture
def fresh_compile():
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_compile")
def test_compiled_fedavg_in_automatic_chunks_agrees_with_local(monkeypatch):
    digits = load_dataset("digits")
    model = build_model("cnn", digits.input_shape, digits.num_classes, seed=0)
    per_client = sum(v.nbytes for v in model.init().values())
    # a budget that makes two clients a chunk, whatever the thread count
    budget = 2 * per_client // torch.get_num_threads() + 1
    monkeypatch.setattr(_cohort_work, "COMPILED_CPU_PARAMETER_BYTES", budget)
    chunks = []
    map_cohort = LocalTraining.map_cohort

    def recording(self, args, device, options):
        chunks.append(len(args[1]))
        return map_cohort(self, args, device, options)

    monkeypatch.setattr(LocalTraining, "map_cohort", recording)
    clients = ClientData.from_dataset(digits, "quantity_skew", 40, seed=1)
    cohort = [ClientInput(clients.client(i), seed=100 + i) for i in range(7)]
    process = fed_avg(model, client_learning_rate=0.1, local_epochs=2, batch_size=8)
    state = process.init()
    expected, _ = process.next(state, cohort, runtime=LocalRuntime())
    got, _ = process.next(state, cohort, runtime=VectorizedRuntime(compile=True))
    assert chunks == [2, 2, 2, 1]
    for name, value in expected.params.items():
        torch.testing.assert_close(got.params[name], value, rtol=1e-4, atol=1e-5)


def test_a_cohort_function_need_not_state_a_preference():
    fn = _WithoutPreference()
    runtime = VectorizedRuntime()
    got = runtime.map(fn, [_seven_clients()])
    torch.testing.assert_close(got.tree, 2 * torch.arange(7.0))
    assert fn.chunks == [7] and runtime.fallbacks == 0


class _Sized(_WithoutPreference):
    """One that tells each client's size: here the list argument's lengths."""

    def map_cohort(self, args, device, options):
        x, lists = args
        self.chunks.append(([len(items) for items in lists], x.tree.tolist()))
        return Stacked(2 * x.tree + torch.tensor([len(i) for i in lists]), x.size)

    def client_sizes(self, args):
        return [len(items) for items in args[1]]


@pytest.mark.parametrize(
    ("sizes", "chunks"),
    [
        # clients of like size together, largest first, equal ones in cohort order
        ([1, 5, 3, 5, 0, 2, 4], [[5, 5, 4], [3, 2, 1], [0]]),
        ([5, 4, 3, 3, 2, 1, 0], [[5, 4, 3], [3, 2, 1], [0]]),  # already so
        ([1, 2], [[1, 2]]),  # one chunk: as it is
    ],
)
def test_chunks_hold_clients_of_like_size_and_results_keep_the_cohorts_order(
    sizes, chunks
):
    fn = _Sized()
    x = Stacked(torch.arange(float(len(sizes))), len(sizes))
    lists = [[0] * n for n in sizes]
    got = VectorizedRuntime(chunk_size=3).map(fn, [x, lists])
    assert [c[0] for c in fn.chunks] == chunks
    # each chunk's stacked argument is its own clients'
    assert all(
        [sizes[int(c)] for c in members] == got_sizes
        for got_sizes, members in fn.chunks
    )
    want = 2 * torch.arange(float(len(sizes))) + torch.tensor(sizes)
    assert torch.equal(got.tree, want)
