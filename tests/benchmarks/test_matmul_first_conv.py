"""benchmarks/matmul_first_conv.py: its convolution equals nn.Conv2d's, alone and
under vmap(grad) (in float64, which the GPU's matmul-conv1 rows rest on)."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import matmul_first_conv as op


def test_swapped_cnn_has_the_same_gradients_under_vmap(cnn, gradient_errors):
    swapped, count = op.swap_first_convs(cnn.module)
    assert count == 1  # the first convolution; the second has 32 input channels
    assert [type(m) for m in swapped.modules()].count(op.UnfoldConv2d) == 1
    assert dict(swapped.named_parameters()).keys() == cnn.init().keys()
    errors = gradient_errors(swapped)
    assert errors.keys() == cnn.init().keys()
    assert max(errors.values()) < 1e-12, errors


@pytest.mark.parametrize("padding", [0, 1, (2, 1)])
def test_one_channel_convolution_as_a_product(padding):
    conv = nn.Conv2d(1, 4, kernel_size=(3, 5), padding=padding).double()
    swapped, count = op.swap_first_convs(conv)
    assert count == 1
    x = torch.randn(2, 1, 7, 9, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(swapped(x), conv(x))
    torch.testing.assert_close(swapped(x[0]), conv(x[0]))  # unbatched
    (dx,) = torch.autograd.grad(swapped(x).square().sum(), x)
    (expected,) = torch.autograd.grad(conv(x).square().sum(), x)
    torch.testing.assert_close(dx, expected)


def test_other_convolutions_are_left_alone():
    for conv in [
        nn.Conv2d(2, 4, 3),
        nn.Conv2d(1, 4, 3, stride=2),
        nn.Conv2d(1, 4, 3, padding="same"),
        nn.Conv2d(1, 4, 3, padding_mode="reflect"),
    ]:
        assert op.swap_first_convs(conv)[1] == 0
    with pytest.raises(ValueError, match="one-input-channel"):
        op.UnfoldConv2d(nn.Conv2d(2, 4, 3))
