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
