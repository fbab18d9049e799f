"""Fixtures shared by the test suite."""

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
