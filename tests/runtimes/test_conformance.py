"""Every runtime computes what the local (reference) runtime computes.

FedAvg, FedSGD and evaluation run on each runtime and must agree with ``local`` to
float32 tolerances, for IID clients of equal size and for clients of unequal size.
The CUDA variants (eager, and with captured CUDA graphs) run where a GPU is present
(``pytest -m gpu``), with TF32 off so that float32 tolerances hold.
"""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from fedloom.aggregators import weighted_mean
from fedloom.core import (
    CLIENTS,
    SERVER,
    aggregate,
    broadcast,
    computation,
    map,
    mean,
    sum,
)
from fedloom.data import ClientData, Examples, load_dataset
from fedloom.learning import (
    ClientInput,
    FunctionalModel,
    adam,
    build_model,
    fed_avg,
    fed_sgd,
    federated_evaluate,
    momentum,
)
from fedloom.runtimes import LocalRuntime, VectorizedRuntime, get_runtime

RUNTIMES = {
    "vectorized": lambda: VectorizedRuntime(),
    "vectorized-chunked": lambda: VectorizedRuntime(chunk_size=3),
    "vectorized-compiled": lambda: VectorizedRuntime(compile=True),
    "cuda": lambda: VectorizedRuntime("cuda", cuda_graphs=False),
    "cuda-graphs": lambda: VectorizedRuntime("cuda"),
    "cuda-graphs-chunked": lambda: VectorizedRuntime("cuda", chunk_size=3),
    "cuda-compiled": lambda: VectorizedRuntime("cuda", cuda_graphs=False, compile=True),
    "cuda-graphs-compiled": lambda: VectorizedRuntime("cuda", compile=True),
}
GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
NAMES = [pytest.param(n, marks=GPU if "cuda" in n else ()) for n in RUNTIMES]
pytestmark = [
    pytest.mark.usefixtures("no_tf32", "fresh_compile"),
    # inductor's advice to turn on the TF32 that no_tf32 turned off (compiling on CUDA)
    pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores"),
]
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture
def fresh_compile():
    # torch.compile keeps at most 8 compilations of a function per process; each
    # test starts afresh, so that a compiled runtime really runs compiled code
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cohort(digits, partition, count=7):
    clients = ClientData.from_dataset(digits, partition, 40, seed=1)
    return [ClientInput(clients.client(i), seed=100 + i) for i in range(count)]


def _assert_same_round(process, cohort, runtime, tolerance=TOLERANCE, loss_rel=1e-5):
    state = process.init()
    expected_state, expected = process.next(state, cohort, runtime=LocalRuntime())
    got_state, got = process.next(state, cohort, runtime=runtime)
    for name, value in expected_state.params.items():
        torch.testing.assert_close(got_state.params[name], value, **tolerance)
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=loss_rel)
    assert got["num_examples"] == expected["num_examples"]
    return got_state


def _cnn_fedavg(digits):
    """The CNN's FedAvg round that :func:`test_fedavg` runs everywhere.

    At a client learning rate of 0.1 this round is chaotic: moving the start by
    3e-6 of itself moved the result by more than 1e-5 in 16 of 32 draws (up to
    3e-4: a ReLU or a pooling window's maximum flips), and on an H200 the compiled
    CUDA runtime, in float32 (TF32 off) but summing in cuDNN's order, landed 4.2e-5
    from the CPU's. At 0.01 no draw moved it by more than 6e-6, so float32's
    tolerance measures the runtime, not a flip; the test below keeps it so (at 0.1
    it fails for both partitions).
    """
    model = build_model("cnn", digits.input_shape, digits.num_classes, seed=0)
    return fed_avg(model, client_learning_rate=0.01, local_epochs=2, batch_size=8)


@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
def test_the_fedavg_round_is_not_chaotic(digits, partition):
    process, cohort = _cnn_fedavg(digits), _cohort(digits, partition)
    state = process.init()
    expected, _ = process.next(state, cohort, runtime=LocalRuntime())
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        moved = {
            k: v * (1 + 3e-6 * torch.randn(v.shape, generator=generator))
            for k, v in state.params.items()
        }
        got, _ = process.next(
            replace(state, params=moved), cohort, runtime=LocalRuntime()
        )
        for name, value in expected.params.items():
            torch.testing.assert_close(got.params[name], value, **TOLERANCE)


@pytest.mark.parametrize("runtime", NAMES)
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
def test_fedavg(digits, runtime, partition):
    process = _cnn_fedavg(digits)
    vectorized = RUNTIMES[runtime]()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    _assert_same_round(process, _cohort(digits, partition), vectorized)
    assert vectorized.fallbacks == 0  # the whole round ran batched
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    assert (compiled > 0) == ("compiled" in runtime)  # and compiled when asked


@pytest.mark.parametrize("runtime", NAMES)
@pytest.mark.parametrize("client", ["momentum", "adam"])
def test_fedavg_stateful_client_and_server_optimizers(digits, runtime, client):
    # A client whose batches ran out must keep its optimizer state (momentum's
    # velocity; Adam's moments and step count) as well as its parameters.
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    process = fed_avg(
        model,
        client_learning_rate=0.05,
        local_epochs=3,
        batch_size=16,
        client_optimizer={"momentum": momentum(0.05, beta=0.9), "adam": adam(0.01)}[
            client
        ],
        # FedAdam's epsilon (Reddi et al. 2021); with 1e-8, Adam turns float32
        # rounding in a near-zero update into a full step of either sign.
        server_optimizer=adam(0.01, beta2=0.99, epsilon=1e-3),
    )
    # The client's Adam (epsilon 1e-8) divides by the root of its second moment,
    # near zero for the digits' blank pixels, where CUDA's float32 rounding grows:
    # on an H200, 1 of 12,800 weights came out 1.9e-5 from the CPU's.
    tolerance = TOLERANCE
    if client == "adam" and "cuda" in runtime:
        tolerance = {"rtol": 1e-4, "atol": 1e-4}
    cohort = _cohort(digits, "quantity_skew")
    _assert_same_round(process, cohort, RUNTIMES[runtime](), tolerance)


@pytest.mark.parametrize("runtime", NAMES)
def test_fedavg_in_mixed_precision(digits, runtime):
    # bfloat16 (8 bits of mantissa) rounds grouped and plain convolutions
    # differently: the runtimes agree to about a bfloat16 step of the parameters
    # (up to 1.3e-3 apart on the CPU, values of order 0.1), not to float32's 1e-5
    bf16 = build_model(
        "cnn", digits.input_shape, digits.num_classes, seed=0, autocast=torch.bfloat16
    )
    process = fed_avg(bf16, client_learning_rate=0.1, local_epochs=2, batch_size=8)
    cohort = _cohort(digits, "quantity_skew")
    tolerance = {"rtol": 2e-2, "atol": 4e-3}
    state = _assert_same_round(process, cohort, RUNTIMES[runtime](), tolerance, 1e-4)
    fp32 = build_model("cnn", digits.input_shape, digits.num_classes, seed=0)
    process = fed_avg(fp32, client_learning_rate=0.1, local_epochs=2, batch_size=8)
    fp32_state, _ = process.next(process.init(), cohort, runtime=LocalRuntime())
    apart = max((state.params[k] - v).abs().max() for k, v in fp32_state.params.items())
    assert apart > 1e-4  # bfloat16 did change the result (1.1-1.5e-3 on the CPU)


class _Probe(nn.Module):
    """Records the dtype of what reaches it (a linear layer's output: bfloat16
    under autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.dtype)
        return x


@pytest.mark.parametrize("runtime", ["local", *NAMES])
def test_mixed_precision_reaches_the_model_on_every_runtime(digits, runtime):
    # the tolerance above cannot tell bfloat16 from float32 (both 1e-3 apart):
    # here each runtime's client training must run the model under autocast
    probe = _Probe()
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), probe)
    model = FunctionalModel(module, autocast=torch.bfloat16)
    process = fed_avg(model, client_learning_rate=0.1, local_epochs=1, batch_size=8)
    runtime_ = LocalRuntime() if runtime == "local" else RUNTIMES[runtime]()
    cohort = _cohort(digits, "iid", 3)
    state, _ = process.next(process.init(), cohort, runtime=runtime_)
    assert probe.seen and set(probe.seen) == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in state.params.values())


@pytest.mark.parametrize("runtime", NAMES)
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
def test_fedavg_of_a_dense_network_under_plain_sgd(
    digits, runtime, partition, dense_steps_taken
):
    # The 2NN on the digits in batches of 8: on the CPU, eager, its first layer's
    # updates are deferred over two steps (DenseCohortStep.steps), those of every
    # client and those of a longest-first cohort's clients that are left.
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    process = fed_avg(model, client_learning_rate=0.1, local_epochs=2, batch_size=8)
    _assert_same_round(process, _cohort(digits, partition), RUNTIMES[runtime]())
    eager_on_cpu = "cuda" not in runtime and "compiled" not in runtime
    narrowed = runtime == "vectorized-compiled" and partition == "quantity_skew"
    taken = {steps for _, steps in dense_steps_taken}
    assert (2 in taken) == (eager_on_cpu or narrowed)


@pytest.mark.parametrize("runtime", NAMES)
@pytest.mark.parametrize("partition", ["iid", "quantity_skew"])
def test_fedsgd(digits, runtime, partition):
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    process = fed_sgd(model, learning_rate=0.5)
    _assert_same_round(process, _cohort(digits, partition), RUNTIMES[runtime]())


@pytest.mark.parametrize("runtime", NAMES)
def test_full_batch_fedavg_and_a_client_without_examples(digits, runtime):
    model = build_model("logistic", digits.input_shape, digits.num_classes, seed=0)
    process = fed_avg(model, client_learning_rate=0.3, local_epochs=2, batch_size=None)
    empty = Examples(
        torch.zeros(0, *digits.input_shape), torch.zeros(0, dtype=torch.int64)
    )
    cohort = [*_cohort(digits, "quantity_skew", 4), ClientInput(empty, seed=5)]
    _assert_same_round(process, cohort, RUNTIMES[runtime]())


@pytest.mark.parametrize("runtime", NAMES)
def test_federated_evaluation(digits, runtime):
    model = build_model("cnn", digits.input_shape, digits.num_classes, seed=0)
    params = model.init()
    cohort = [c.examples for c in _cohort(digits, "quantity_skew", 9)]
    expected = federated_evaluate(model, params, cohort, runtime=LocalRuntime())
    got = federated_evaluate(model, params, cohort, runtime=RUNTIMES[runtime]())
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(expected["accuracy"])


def _model(digits, *layers, inputs=()):
    features = math.prod(digits.input_shape)
    hidden = nn.Sequential(
        nn.Flatten(), *inputs, nn.Linear(features, 16), *layers, nn.ReLU()
    )
    torch.manual_seed(0)
    return FunctionalModel(nn.Sequential(hidden, nn.Linear(16, digits.num_classes)))


class _UnitLength(nn.Module):
    """x / |x|: finite on every real example, NaN on an all-zero one."""

    def forward(self, x):
        return x / x.norm(dim=1, keepdim=True)


def _every_kind_of_work(model, runtime, cohort):
    """FedAvg (a client without examples among them), FedSGD and evaluation."""
    empty = Examples(
        torch.zeros(0, *cohort[0].examples.x.shape[1:]),
        torch.zeros(0, dtype=torch.int64),
    )
    avg = fed_avg(model, client_learning_rate=0.1, local_epochs=2, batch_size=8)
    sgd = fed_sgd(model, learning_rate=0.5)
    results = []
    for process, clients in [(avg, [*cohort, ClientInput(empty, 9)]), (sgd, cohort)]:
        torch.manual_seed(1)  # dropout draws from the global generator
        state, metrics = process.next(process.init(), clients, runtime=runtime)
        results += [state.params, metrics]
    examples = [c.examples for c in cohort]
    results.append(federated_evaluate(model, model.init(), examples, runtime=runtime))
    return results


@pytest.mark.parametrize("runtime", NAMES)
@pytest.mark.parametrize("layer", ["batch norm", "dropout"])
def test_models_a_padded_batch_would_change_run_client_by_client(
    digits, runtime, layer
):
    # Batch statistics would mix in the padding; dropout would need a random stream
    # per client. Both run with the sequential meaning: the same results, to the bit.
    extra = {
        "batch norm": nn.BatchNorm1d(16, track_running_stats=False),
        "dropout": nn.Dropout(0.3),
    }[layer]
    model = _model(digits, extra)
    cohort = _cohort(digits, "iid", 5)  # no batch of one (batch norm refuses it)
    expected = _every_kind_of_work(model, LocalRuntime(), cohort)
    vectorized = RUNTIMES[runtime]()
    with pytest.warns(RuntimeWarning, match=r"client by client.* 0\.2 \("):
        got = _every_kind_of_work(model, vectorized, cohort)
    torch.testing.assert_close(got[:4], expected[:4], rtol=0, atol=0)  # training
    # dropout is off in evaluation, which therefore still runs batched
    assert vectorized.fallbacks == (3 if layer == "batch norm" else 2)
    exact = {"rtol": 0, "atol": 0} if layer == "batch norm" else TOLERANCE
    torch.testing.assert_close(got[4], expected[4], **exact)


@pytest.mark.parametrize("runtime", NAMES)
def test_padding_is_made_of_real_examples(digits, runtime):
    # A model that is NaN on an all-zero input trains and evaluates as on `local`:
    # padded positions repeat real examples, and masks keep them out.
    model = _model(digits, inputs=[_UnitLength()])
    cohort = _cohort(digits, "quantity_skew", 5)
    expected = _every_kind_of_work(model, LocalRuntime(), cohort)
    got = _every_kind_of_work(model, RUNTIMES[runtime](), cohort)
    torch.testing.assert_close(got, expected, **TOLERANCE)
    assert all(math.isfinite(v) for r in got[1::2] for v in r.values())


@pytest.mark.parametrize("runtime", NAMES)
def test_generic_functions_are_vmapped_or_run_in_sequence(runtime):
    @computation(SERVER, CLIENTS, SERVER)
    def weighted(scale, xs, template):
        scaled = map(lambda s, x: s * x, broadcast(scale), xs)
        # .item() cannot be vmapped: this map falls back to the sequential meaning.
        weights = map(lambda x: float(x.sum().item()) + 1.0, xs)
        return aggregate(weighted_mean(), scaled, weights, template=template)

    xs = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, -1.0])]
    args = (torch.tensor(2.0), xs, torch.zeros(3))
    expected = weighted(*args, runtime=LocalRuntime())
    vectorized = RUNTIMES[runtime]()
    got = weighted(*args, runtime=vectorized)
    torch.testing.assert_close(got, expected)
    assert vectorized.fallbacks == 1  # the .item() map, and only that one


def test_vmapped_functions_run_chunk_by_chunk():
    calls = []

    @computation(CLIENTS)
    def doubled(xs):
        return map(lambda x: calls.append(x.shape) or 2 * x, xs)

    xs = [torch.full((3,), float(i)) for i in range(5)]
    got = doubled(xs, runtime=VectorizedRuntime(chunk_size=2))
    torch.testing.assert_close(got, [2 * x for x in xs])
    assert len(calls) == 3  # chunks of 2, 2 and 1 clients


@pytest.mark.parametrize("runtime", NAMES)
def test_a_cohort_without_examples_is_refused_clearly(digits, runtime):
    model = build_model("logistic", digits.input_shape, digits.num_classes, seed=0)
    empty = Examples(
        torch.zeros(0, *digits.input_shape), torch.zeros(0, dtype=torch.int64)
    )
    for process in [
        fed_avg(model, client_learning_rate=0.1),
        fed_sgd(model, learning_rate=0.1),
    ]:
        with pytest.raises(ValueError, match="none of the cohort's 2 clients has an"):
            process.next(
                process.init(),
                [ClientInput(empty, 1), ClientInput(empty, 2)],
                runtime=RUNTIMES[runtime](),
            )


@pytest.mark.parametrize("runtime", NAMES)
def test_poisoned_update_is_rejected_on_every_runtime(runtime):
    @computation(CLIENTS, SERVER)
    def average(xs, template):
        return aggregate(weighted_mean(), xs, template=template)

    xs = [torch.zeros(2), torch.tensor([1.0, float("nan")])]
    with pytest.raises(ValueError, match=r"client 1: .*NaN or infinity"):
        average(xs, torch.zeros(2), runtime=RUNTIMES[runtime]())


def test_chunk_size_must_be_a_positive_int_or_none():
    with pytest.raises(ValueError, match="chunk_size"):
        VectorizedRuntime(chunk_size=0)
    for wrong in [2.5, "4", True]:
        with pytest.raises(TypeError, match="chunk_size must be an int or None"):
            VectorizedRuntime(chunk_size=wrong)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_cuda_device_is_refused_at_once():
    with pytest.raises(ValueError, match="no CUDA device is available here"):
        VectorizedRuntime("cuda")


def test_compile_is_for_cpu_and_cuda():
    with pytest.raises(ValueError, match="compile=True is for 'cpu' and 'cuda'"):
        VectorizedRuntime("meta", compile=True)


def test_steps_per_call_is_for_the_cpu():
    # refused before the device is looked at: the same on machines without CUDA
    for graphs in (True, False):
        with pytest.raises(ValueError, match="leave steps_per_call at 1"):
            VectorizedRuntime(
                "cuda", cuda_graphs=graphs, compile=True, steps_per_call=5
            )
    runtime = VectorizedRuntime(compile=True, steps_per_call=5)  # the CPU: allowed
    assert runtime.options.steps_per_call == 5


def test_compile_on_cuda_without_triton_is_refused_at_once(monkeypatch):
    import torch.utils._triton

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.utils._triton, "has_triton_package", lambda: False)
    with pytest.raises(ValueError, match="compile=True on CUDA needs Triton"):
        VectorizedRuntime("cuda", compile=True)
    VectorizedRuntime("cuda")  # without compile, Triton is not needed


def test_compile_without_a_cpp_compiler_is_refused_at_once():
    from torch._inductor import config

    with config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        with pytest.raises(ValueError, match=r"C\+\+ compiler.*/nonexistent/g"):
            VectorizedRuntime(compile=True)
        VectorizedRuntime()  # eager needs none
    VectorizedRuntime(compile=True)  # this machine's compiler is found


def test_steps_per_call_is_for_the_compiled_step():
    with pytest.raises(ValueError, match="compile=True"):
        VectorizedRuntime(steps_per_call=5)
    with pytest.raises(ValueError, match="steps_per_call must be >= 1"):
        VectorizedRuntime(compile=True, steps_per_call=0)
    with pytest.raises(ValueError, match="neither computes clients in chunks"):
        get_runtime("local", steps_per_call=5)


@pytest.mark.parametrize("runtime", NAMES)
def test_python_numbers_give_python_numbers(runtime):
    @computation(CLIENTS, CLIENTS)
    def both(xs, ws):
        return sum(xs), mean(xs, ws)

    expected = both([1.0, 2.0, 4.0], [1, 1, 2], runtime=LocalRuntime())
    got = both([1.0, 2.0, 4.0], [1, 1, 2], runtime=RUNTIMES[runtime]())
    assert got == expected == (7.0, 2.75)
    assert all(type(v) is float for v in got)
