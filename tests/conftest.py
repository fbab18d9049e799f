"""Fixtures shared by the test suite."""

import contextlib
import warnings

import pytest
import torch


def _tf32(value=None):
    """Read (and with ``value``, set) cuDNN's and cuBLAS's TF32 switches."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    with warnings.catch_warnings():  # newer torch warns about the old switches
        warnings.simplefilter("ignore")
        saved = (cudnn.allow_tf32, matmul.allow_tf32)
        if value is not None:
            cudnn.allow_tf32, matmul.allow_tf32 = value
    return saved


@pytest.fixture
def no_tf32():
    """float32 arithmetic on CUDA too (cuDNN convolutions default to TF32)."""
    saved = _tf32((False, False))
    yield
    _tf32(saved)


@pytest.fixture
def compiled_afresh(monkeypatch):
    """Compile as CI does, and afresh (not from inductor's on-disk cache), so that
    the compiler passes run and their counters count."""
    import torch._inductor.config  # only here: it takes seconds to import

    # with CI set, inductor refuses implicit fallbacks to ops it could decompose
    monkeypatch.setenv("CI", "1")
    torch._dynamo.reset()
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        yield


@pytest.fixture
def float64_eager_steps():
    """``run(model, steps)``: three digits clients' training plan in float64, the
    first ``steps`` batch indices and masks (every client has a batch at each),
    and the parameters after those steps of the eager cohort step (SGD, lr 0.1):
    ``(plan, index, mask, params)``, the reference a compiled step is checked
    against."""
    from fedloom.core import Replicated
    from fedloom.data import ClientData, load_dataset
    from fedloom.learning import sgd
    from fedloom.learning._cohort_work import CohortStep, plan_training

    def run(model, steps):
        digits = load_dataset("digits")
        clients = ClientData.from_dataset(digits, "iid", 10, seed=0)
        examples = [clients.client(i) for i in range(3)]
        start = Replicated({k: v.double() for k, v in model.init().items()}, 3)
        plan = plan_training(start, examples, [1, 2, 3], 1, 8, torch.device("cpu"))
        plan.data.x = plan.data.x.double()  # float64 throughout
        index = plan.batch_index[:, 0, :steps]
        mask = plan.batch_mask[:, 0, :steps]
        assert all(plan.everyone[0][:steps])
        eager = CohortStep(model, sgd(0.1))
        params, state = eager.begin(plan.start)
        for s in range(steps):
            params, state, _ = eager(
                plan.data, params, state, index[:, s], mask[:, s], False
            )
        return plan, index, mask, params

    return run


@pytest.fixture
def dense_steps_taken(monkeypatch):
    """(clients, steps) of every call of ``DenseCohortStep.steps``, in order."""
    from fedloom.learning._dense_cohort import DenseCohortStep

    taken = []
    steps = DenseCohortStep.steps

    def counted(self, params, x, *args):
        taken.append((x.shape[0], x.shape[1]))
        return steps(self, params, x, *args)

    monkeypatch.setattr(DenseCohortStep, "steps", counted)
    return taken


@contextlib.contextmanager
def _torch_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def torch_threads():
    """``with torch_threads(n):`` runs its block on ``n`` torch threads, then gives
    back the count there was."""
    return _torch_threads
