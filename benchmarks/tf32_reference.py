"""Convolutions that round their operands as TF32 does, for float64 references.

On a GPU, ``tl.dot`` (the Triton prototype's convolutions,
``benchmarks/triton_client_conv.py``) takes float32 operands as TF32: 10 bits of
mantissa instead of 23, products exact and sums in float32. Against a float64
reference that does not round so, a few SGD steps of the digits CNN differ by far
more than TF32's 5e-4 would suggest: the rounding moves activations across a ReLU or
a pooling window's maximum, which sends gradients elsewhere. On this CPU, a float32
step whose convolutions round their operands so was 11 % of the largest change off a
float64 step after one step and 14 % after three; against a float64 step that rounds
the same operands (:func:`tf32_convs`), 3.9e-5 (the float32 step's own rounding).

:func:`tf32_convs` is that reference: every same-size convolution of at least
``min_in_channels`` input channels computes its output and both gradients from
operands rounded to TF32 (to nearest, or truncated: which one a GPU's TF32 products
use is for the check to find), in the model's own dtype otherwise.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["tf32", "tf32_convs"]

_LOW_BITS = (1 << 13) - 1
"""The 13 mantissa bits of a float32 that TF32 drops."""


def tf32(t: Tensor, truncate: bool = False) -> Tensor:
    """``t``'s values as TF32 holds them (rounded to nearest, ties away from zero,
    or truncated), in ``t``'s dtype; float64 values are first rounded to float32."""
    bits = t.to(torch.float32).contiguous().view(torch.int32)
    if not truncate:
        bits = bits + (1 << 12)  # half of the dropped bits' range: to nearest
    return (bits & ~_LOW_BITS).view(torch.float32).to(t.dtype)


class TF32Conv(torch.autograd.Function):
    """A same-size convolution and its gradients from TF32-rounded operands (the
    bias and the bias gradient as they are)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor, w: Tensor, b: Tensor | None, padding: int, truncate: bool
    ) -> Tensor:
        return F.conv2d(tf32(x, truncate), tf32(w, truncate), b, padding=padding)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, w, _, padding, truncate = inputs
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.truncate = padding, truncate

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        x, w = ctx.saved_tensors
        x, w, dy_ = (tf32(t, ctx.truncate) for t in (x, w, dy))
        dx = torch.nn.grad.conv2d_input(x.shape, w, dy_, padding=ctx.padding)
        dw = torch.nn.grad.conv2d_weight(x, w.shape, dy_, padding=ctx.padding)
        return dx, dw, dy.sum((0, 2, 3)), None, None


class _TF32Conv2d(nn.Conv2d):
    truncate = False

    def forward(self, x: Tensor) -> Tensor:
        return TF32Conv.apply(x, self.weight, self.bias, self.padding[0], self.truncate)


def tf32_convs(
    module: nn.Module, min_in_channels: int = 1, truncate: bool = False
) -> nn.Module:
    """A copy of ``module`` whose same-size, stride-1 ``nn.Conv2d`` of at least
    ``min_in_channels`` input channels (those the prototype takes) round their
    operands to TF32 as :class:`TF32Conv` does."""
    module = copy.deepcopy(module)
    for child in module.modules():
        kernel = child.kernel_size[0] if isinstance(child, nn.Conv2d) else 0
        if (
            type(child) is nn.Conv2d
            and child.in_channels >= min_in_channels
            and child.stride == (1, 1)
            and child.padding == (kernel // 2, kernel // 2)
            and child.groups == 1
        ):
            child.__class__ = _TF32Conv2d
            child.truncate = truncate
    return module
