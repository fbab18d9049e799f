"""The captured epoch program computes what the eager cohort training computes.

On a CPU the program runs its steps eagerly over its fixed buffers, which checks
everything but the capture itself: the buffers, reloading a new cohort of the same
shape, masks and the optimizer state. On a GPU (``pytest -m gpu``) the graph is
captured and replayed.
"""

import contextlib

import pytest
import torch

from fedloom.core import Replicated
from fedloom.data import ClientData, Examples, load_dataset
from fedloom.learning import adam, build_model, momentum, sgd
from fedloom.learning._cohort_graphs import GraphCache, captured_local_training
from fedloom.learning._cohort_work import (
    CohortStep,
    cohort_local_training,
    plan_training,
)

OPTIMIZERS = {
    "sgd": lambda: sgd(0.1),
    "momentum": lambda: momentum(0.05, beta=0.9),
    "adam": lambda: adam(0.01),
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cohort(digits, partition, seed, count=5):
    clients = ClientData.from_dataset(digits, partition, 30, seed=seed)
    examples = [clients.client(i) for i in range(count)]
    return examples, [seed * 100 + i for i in range(count)]


def _train(step, params, examples, seeds, device, cache=None):
    plan = plan_training(params, examples, seeds, 2, 8, device)
    if cache is None:
        return cohort_local_training(step, plan)
    capture = device.type == "cuda"
    return captured_local_training(step, plan, cache, capture=capture)


def _assert_same(got, expected, **tolerance):
    for name, value in expected[0].items():
        torch.testing.assert_close(got[0][name], value, **tolerance)
    torch.testing.assert_close(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2], **tolerance)


def _check(digits, optimizer_name, partition, device, compile=False, **tolerance):
    """The program against eager cohort training, on three cohorts; with
    ``compile``, the program runs the compiled step (as the runtime's
    ``compile=True`` on CUDA does)."""
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    optimizer = OPTIMIZERS[optimizer_name]()
    params = Replicated(model.init(), 5)
    cache = GraphCache()
    eager = CohortStep(model, optimizer)
    compiled = {"compile": True, "cpp_wrapper": device.type == "cpu"} if compile else {}
    step = CohortStep(model, optimizer, **compiled)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for seed in (1, 1, 2):  # the second and third cohorts reuse the program
        examples, seeds = _cohort(digits, partition, seed)
        expected = _train(eager, params, examples, seeds, device)
        got = _train(step, params, examples, seeds, device, cache)
        _assert_same(got, expected, **tolerance)
    made = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    assert (made > 0) == compile  # the program ran the compiled step when asked
    return cache


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
def test_epoch_program_matches_eager_training_on_cpu(digits, optimizer, partition):
    cache = _check(digits, optimizer, partition, torch.device("cpu"))
    assert cache.captures == 0  # no capture on a CPU
    # IID clients are all the same size: one program serves every cohort. Unequal
    # sizes pad to each cohort's largest client, so they may need more than one.
    assert len(cache) == 1 if partition == "iid" else len(cache) >= 1


@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
@pytest.mark.usefixtures("compiled_afresh")
def test_epoch_program_runs_the_compiled_step_on_cpu(digits, partition):
    # the compiled step updates the program's buffers in place; unequal clients
    # (quantity_skew) run its masked graph
    cache = _check(
        digits, "sgd", partition, torch.device("cpu"), True, rtol=1e-4, atol=1e-5
    )
    assert cache.captures == 0


def test_a_client_without_examples_keeps_its_parameters(digits):
    model = build_model("logistic", digits.input_shape, digits.num_classes, seed=0)
    examples, seeds = _cohort(digits, "iid", 3, count=3)
    empty = Examples(
        torch.zeros(0, *digits.input_shape), torch.zeros(0, dtype=torch.int64)
    )
    examples.append(empty)
    seeds.append(7)
    params = Replicated(model.init(), 4)
    cpu = torch.device("cpu")
    step = CohortStep(model, sgd(0.1))
    deltas, weights, losses = _train(step, params, examples, seeds, cpu, GraphCache())
    assert all(float(v[3].abs().max()) == 0.0 for v in deltas.values())
    assert float(weights[3]) == 0.0 and float(losses[3]) == 0.0
    assert all(float(v[0].abs().max()) > 0.0 for v in deltas.values())


@pytest.mark.usefixtures("compiled_afresh")
def test_one_cache_keeps_each_steps_program(digits):
    # the same cohort shape, trained by the eager step and by the compiled one
    # through one cache (as a process run on two runtimes does): each runs its own
    # program, not the one the other left
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    params = Replicated(model.init(), 5)
    examples, seeds = _cohort(digits, "iid", 1)
    cpu, cache = torch.device("cpu"), GraphCache()
    eager, compiled = (
        CohortStep(model, sgd(0.1)),
        CohortStep(model, sgd(0.1), compile=True),
    )
    first = _train(eager, params, examples, seeds, cpu, cache)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    second = _train(compiled, params, examples, seeds, cpu, cache)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    assert len(cache) == 2
    _assert_same(second, first, rtol=1e-4, atol=1e-5)


def test_graph_cache_keeps_the_most_recent():
    cache = GraphCache(capacity=2)
    for key in ("a", "b", "c"):
        cache.put(key, object())  # type: ignore[arg-type]
    assert cache.get("a") is None and len(cache) == 2
    assert cache.get("b") is not None
    cache.put("d", object())  # type: ignore[arg-type]
    assert cache.get("c") is None and cache.get("b") is not None
    with pytest.raises(ValueError, match="capacity"):
        GraphCache(capacity=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
@pytest.mark.usefixtures("no_tf32")
def test_captured_graph_matches_eager_training_on_cuda(digits, optimizer, partition):
    cache = _check(digits, optimizer, partition, torch.device("cuda"))
    assert cache.captures == len(cache) >= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
@pytest.mark.usefixtures("no_tf32", "compiled_afresh")
@pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores")  # no_tf32 wants so
def test_captured_compiled_step_matches_eager_training_on_cuda(
    digits, optimizer, partition
):
    cuda = torch.device("cuda")
    # Adam divides by the root of its second moment, near zero for the digits'
    # blank pixels, where the compiled kernels' rounding grows: 2 of 200,000
    # weights 3.2e-5 apart on an H200 (0.3 % of one step of lr 0.01)
    atol = 1e-4 if optimizer == "adam" else 1e-5
    cache = _check(digits, optimizer, partition, cuda, True, rtol=1e-4, atol=atol)
    assert cache.captures == len(cache) >= 1


def test_a_failed_capture_says_how_to_run_eagerly(digits, monkeypatch):
    # Stand-ins for CUDA's streams, so that the capture runs up to torch.cuda.graph,
    # which fails as it does for a model that syncs with the host.
    class Stream:
        def __init__(self, *args):
            pass

        def wait_stream(self, other):
            pass

    class Failing:
        def __init__(self, graph):
            pass

        def __enter__(self):
            raise RuntimeError("operation not permitted when stream is capturing")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: Stream())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph", Failing)
    model = build_model("logistic", digits.input_shape, digits.num_classes, seed=0)
    examples, seeds = _cohort(digits, "iid", 4, count=2)
    step = CohortStep(model, sgd(0.1))
    plan = plan_training(Replicated(model.init(), 2), examples, seeds, 1, 8, "cpu")
    cache = GraphCache()
    with pytest.raises(RuntimeError, match=r"cuda_graphs=False") as raised:
        captured_local_training(step, plan, cache, capture=True)
    assert "stream is capturing" in str(raised.value.__cause__)
    assert len(cache) == 0  # nothing half-captured is kept
