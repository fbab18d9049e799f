"""benchmarks/client_conv_op.py: its convolutions equal nn.Conv2d's under vmap(grad).

Without Triton (as in CI) the cohort ops are the grouped-convolution fallback; these
tests check the plumbing (the vmap rules of the convolution and of both its
gradients, the layouts, the swap) in float64, which is what the GPU's Triton rows
rest on.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import client_conv_op as op


def test_swapped_cnn_has_the_same_gradients_under_vmap(cnn, gradient_errors):
    swapped, count = op.swap_convs(cnn.module)
    assert count == 2
    assert op.swap_convs(cnn.module, min_in_channels=16)[1] == 1  # not 1 -> 32
    assert [type(m) for m in swapped.modules()].count(op.ClientConv2d) == 2
    assert dict(swapped.named_parameters()).keys() == cnn.init().keys()
    errors = gradient_errors(swapped)
    assert errors.keys() == cnn.init().keys()
    assert max(errors.values()) < 1e-12, errors


def test_unbatched_call_is_a_plain_convolution():
    conv = nn.Conv2d(3, 5, kernel_size=3, padding=1).double()
    swapped, _ = op.swap_convs(conv)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(swapped(x), conv(x))
    (dx,) = torch.autograd.grad(swapped(x).sum(), x)
    (expected,) = torch.autograd.grad(conv(x).sum(), x)
    torch.testing.assert_close(dx, expected)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 5, kernel_size=3, stride=2, padding=1),
        nn.Conv2d(3, 5, kernel_size=3, padding=0),
        nn.Conv2d(3, 5, kernel_size=2, padding=1),
        nn.Conv2d(4, 4, kernel_size=3, padding=1, groups=2),
        nn.Conv2d(3, 5, kernel_size=3, padding=1, bias=False),
    ],
)
def test_only_same_size_stride_one_convolutions_are_swapped(conv):
    swapped, count = op.swap_convs(nn.Sequential(conv))
    assert count == 0
    assert type(swapped[0]) is nn.Conv2d


def test_swapped_cnn_trains_like_the_original_for_many_steps_in_float64(
    cnn, vmap_gradients
):
    # In float32 the two part within a few dozen steps (a ReLU or max-pool that
    # flips on a rounding difference, as plain PyTorch's float32 does against
    # float64); in float64 they must not part at all.
    base = cnn.module.double()
    swapped, _ = op.swap_convs(base)
    generator = torch.Generator().manual_seed(0)
    clients, n, steps = 2, 4, 30
    params = {k: v.double().expand(clients, *v.shape) for k, v in cnn.init().items()}
    xs = torch.randn(
        steps, clients, n, 1, 28, 28, generator=generator, dtype=torch.float64
    )
    ys = torch.randint(0, 10, (steps, clients, n), generator=generator)
    a, b = params, params
    for x, y in zip(xs, ys, strict=True):
        ga, gb = vmap_gradients(base, a, x, y), vmap_gradients(swapped, b, x, y)
        a = {k: v - 0.05 * ga[k] for k, v in a.items()}
        b = {k: v - 0.05 * gb[k] for k, v in b.items()}
    for k in a:
        assert not torch.equal(a[k], params[k])  # it trained
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-12)
