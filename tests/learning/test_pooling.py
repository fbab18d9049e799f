"""Max pooling of non-overlapping windows as maxima of strided views (evaluation on
the CPU): the same values as ATen's, bit for bit, and ATen's wherever it differs."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from fedloom.learning import _pooling, build_model
from fedloom.learning._pooling import WindowMaxima

torch.manual_seed(0)


def _input(*shape):
    x = torch.randn(*shape).relu()  # zeros: windows of equal maxima
    x.view(-1)[::7] = float("nan")
    x.view(-1)[3::11] = float("-inf")
    x.view(-1)[5::13] = float("inf")
    return x


@pytest.mark.parametrize(
    ("shape", "args", "kwargs"),
    [
        ((2, 3, 8, 8), (2,), {}),
        ((2, 3, 9, 7), (2,), {"stride": 2}),  # odd sizes: the rest is left out
        ((3, 10, 11), (3,), {"stride": [3, 3]}),  # an unbatched input
        ((1, 2, 12, 12), ((2, 3),), {}),
        ((1, 2, 5, 5), (1,), {}),
        ((1, 2, 4, 4), (2,), {"stride": []}),
    ],
)
def test_non_overlapping_windows_give_atens_values(shape, args, kwargs, monkeypatch):
    rewritten = []
    maxima = _pooling._window_maxima
    monkeypatch.setattr(
        _pooling,
        "_window_maxima",
        lambda *a, **k: rewritten.append(maxima(*a, **k)) or rewritten[-1],
    )
    x = _input(*shape)
    want = F.max_pool2d(x, *args, **kwargs)
    with torch.no_grad(), WindowMaxima():
        got = F.max_pool2d(x, *args, **kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert len(rewritten) == 1 and rewritten[0] is got  # the maxima, not ATen


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "stride": 2},  # overlapping
        {"kernel_size": 2, "padding": 1},
        {"kernel_size": 2, "dilation": 2},
        {"kernel_size": 2, "ceil_mode": True},
    ],
)
def test_other_poolings_are_atens(kwargs, monkeypatch):
    x = _input(2, 3, 9, 9)
    want = F.max_pool2d(x, **kwargs)
    with torch.no_grad(), WindowMaxima():
        got = F.max_pool2d(x, **kwargs)
        indices = F.max_pool2d(x, 2, return_indices=True)[1]
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(indices, F.max_pool2d(x, 2, return_indices=True)[1])


def test_with_gradients_pooling_is_atens():
    # On equal maxima ATen gives the gradient to one input; maxima would split it.
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    with WindowMaxima():
        F.max_pool2d(x, 2).sum().backward()
    want = torch.zeros(1, 1, 4, 4, requires_grad=True)
    F.max_pool2d(want, 2).sum().backward()
    assert torch.equal(x.grad, want.grad)
    assert x.grad.sum() == 4 and x.grad.max() == 1


def test_a_model_predicts_as_its_module_computes():
    model = build_model("cnn", (1, 28, 28), 10, seed=0)
    params, x = model.init(), torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        want = functional_call(model.module.eval(), params, (x,))
        got = model.predict(params, x)
        batched = vmap(model.predict, in_dims=(None, 0))(
            params, x.view(2, 3, 1, 28, 28)
        )
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Pooling under vmap is exact too, but the first Linear's matrix product over
    # 2 x 3 rows may round differently from one over 6 (seen on an AVX2 CPU).
    torch.testing.assert_close(batched.flatten(0, 1), want, rtol=1e-5, atol=1e-6)
