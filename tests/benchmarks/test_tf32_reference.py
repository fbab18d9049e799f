"""benchmarks/tf32_reference.py: float64 convolutions that round their operands as
TF32 does, the reference the routed step's GPU check compares with."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.compiled_client_conv import digits_clients, three_steps
from benchmarks.tf32_reference import TF32Conv, tf32, tf32_convs
from fedloom.learning import FunctionalModel, build_model


def test_tf32_keeps_ten_bits_of_mantissa():
    ulp = 2.0**-10  # TF32's, at 1
    x = torch.tensor([1 + ulp, 1 + ulp / 2, 1 + ulp / 4, -(1 + 3 * ulp / 4), 3.0])
    assert tf32(x).tolist() == [1 + ulp, 1 + ulp, 1.0, -(1 + ulp), 3.0]
    assert tf32(x, truncate=True).tolist() == [1 + ulp, 1.0, 1.0, -1.0, 3.0]
    assert tf32(x.double()).dtype == torch.float64


@pytest.mark.parametrize("truncate", [False, True])
def test_tf32_drops_the_low_thirteen_bits_under_vmap_too(truncate):
    # the definition on the bits: keep a float32's top 19 (sign, exponent, 10 of
    # mantissa), adding half of the dropped range first to round to nearest
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=generator)
    x = x * torch.exp(5 * torch.randn(4096, generator=generator))
    ties = (torch.arange(1024, 2048) + 0.5) * 2.0**-11  # halfway between two
    x = torch.cat([x, ties, -ties, torch.tensor([0.0, 1.0, -3.0])])
    bits = x.view(torch.int32) + (0 if truncate else 1 << 12)
    want = (bits & ~((1 << 13) - 1)).view(torch.float32)
    assert torch.equal(tf32(x, truncate), want)
    by_rows = vmap(lambda row: tf32(row, truncate))(x.view(-1, 3))
    assert torch.equal(by_rows.flatten(), want)


def _conv_grads(conv, x, w, b, dy):
    """vmap over clients of (dw, db, dx) of sum(conv(x, w, b) * dy)."""

    def loss(w, b, x):
        return (conv(x, w, b) * dy).sum()

    return vmap(grad(loss, argnums=(0, 1, 2)))(w, b, x)


@pytest.mark.parametrize("truncate", [False, True])
def test_the_convolution_rounds_its_operands_under_vmap(truncate):
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):  # values TF32 holds exactly: no rounding
        return torch.randint(-8, 8, shape, generator=generator).double() / 8

    x, w, b, dy = draw(3, 2, 4, 6, 6), draw(3, 5, 4, 3, 3), draw(3, 5), draw(2, 5, 6, 6)

    def rounded(x, w, b):
        return TF32Conv.apply(x, w, b, 1, truncate)

    def plain(x, w, b):
        return torch.nn.functional.conv2d(x, w, b, padding=1)

    def agree(x, w, dy):  # which of (dw, db, dx) the rounding leaves as they are
        got, want = (_conv_grads(conv, x, w, b, dy) for conv in (rounded, plain))
        pairs = zip(got, want, strict=True)
        return [torch.allclose(g, e, rtol=0, atol=1e-12) for g, e in pairs]

    assert agree(x, w, dy) == [True, True, True]
    # values between two of TF32's: x moves dw, w moves dx, dy both; the bias's
    # gradient never (it is no product)
    fine = 2.0**-14
    assert agree(x + fine, w, dy) == [False, True, True]
    assert agree(x, w + fine, dy) == [True, True, False]
    assert agree(x, w, dy + fine) == [False, True, False]
    xs = x + fine
    assert not torch.allclose(rounded(xs[0], w[0], b[0]), plain(xs[0], w[0], b[0]))
    # without a bias, no bias gradient
    w0 = w[0].clone().requires_grad_()
    TF32Conv.apply(x[0], w0, None, 1, truncate).sum().backward()
    assert w0.grad is not None


def test_tf32_convs_swaps_the_convolutions_with_enough_input_channels():
    module = build_model("cnn", (1, 8, 8), 10, seed=0).module
    both, second = tf32_convs(module), tf32_convs(module, min_in_channels=16)
    kinds = [
        [type(m).__name__ for m in copy.modules() if isinstance(m, nn.Conv2d)]
        for copy in (module, both, second)
    ]
    assert kinds == [
        ["Conv2d", "Conv2d"],
        ["_TF32Conv2d", "_TF32Conv2d"],
        ["Conv2d", "_TF32Conv2d"],
    ]
    x = torch.rand(4, 1, 8, 8)
    params = dict(module.named_parameters())
    assert not torch.equal(functional_call(both, params, (x,)), module(x))
    assert FunctionalModel(both).init().keys() == FunctionalModel(module).init().keys()


def _three_steps(module, dtype):
    """Each parameter's change after three SGD steps of three digits clients."""
    model = FunctionalModel(module)
    return three_steps(model, digits_clients(), "cpu", dtype)


def test_only_a_reference_that_rounds_alike_measures_tf32_steps():
    # the digits CNN's steps flip ReLUs and pooling maxima on TF32's rounding
    module = build_model("cnn", (1, 8, 8), 10, seed=0).module
    tf32_steps = _three_steps(tf32_convs(module), torch.float32)

    def off(want):
        return max(
            float((tf32_steps[k] - v).abs().max() / v.abs().max())
            for k, v in want.items()
        )

    assert off(_three_steps(module, torch.float64)) > 0.05  # 0.14
    assert off(_three_steps(tf32_convs(module), torch.float64)) < 1e-4  # 3.9e-5
