"""Convolutions that round their operands as TF32 does, for float64 references.

On a GPU, ``tl.dot`` (the Triton prototype's convolutions,
``benchmarks/triton_client_conv.py``) takes float32 operands as TF32: 10 bits of
mantissa instead of 23, products exact and sums in float32. Against a float64
reference that does not round so, a few SGD steps of the digits CNN differ by far
more than TF32's 5e-4 would suggest: the rounding moves activations across a ReLU or
a pooling window's maximum, which sends gradients elsewhere. On a CPU, float32 steps
whose convolutions round their operands to nearest so were 11 % of the largest change
off float64 steps after one step and 14 % after three; with the operands truncated,
up to 22 %, what an H200 gave for the prototype's routed steps (to three digits, each
parameter). Against float64 steps that round the same operands alike
(:func:`tf32_convs`), 3.9e-5 (the float32 steps' own rounding).

:func:`tf32_convs` is that reference: every same-size convolution of at least
``min_in_channels`` input channels computes its output and both gradients from
operands rounded to TF32 (to nearest, or truncated: which one a GPU's TF32 products
use is for the check to find), in the model's own dtype otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # imported as benchmarks.tf32_reference (the tests)
    from benchmarks.client_conv_op import swap_each
except ImportError:  # or from a script beside it
    from client_conv_op import swap_each  # type: ignore[no-redef]

__all__ = ["tf32", "tf32_convs"]

_KEPT = 2.0**11
"""TF32 keeps 11 significant bits (10 stored): a mantissa in [0.5, 1) times this is
an integer once rounded."""


def tf32(t: Tensor, truncate: bool = False) -> Tensor:
    """``t``'s values as TF32 holds them (rounded to nearest, ties away from zero,
    or truncated), in ``t``'s dtype; float64 values are first rounded to float32.

    In arithmetic rather than on the bits (``view(torch.int32)``), which ``vmap``
    cannot batch in torch 2.11 (the H200's, 2026-11-28); a test checks the two
    agree bit for bit on normal values."""
    mantissa, exponent = torch.frexp(t.to(torch.float32))
    scaled = mantissa * _KEPT  # exact: at most 24 bits, below 2 ** 11
    if truncate:
        kept = torch.trunc(scaled)
    else:
        kept = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
    return torch.ldexp(kept / _KEPT, exponent).to(t.dtype)


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
    def backward(ctx: Any, dy: Tensor) -> tuple[Any, ...]:
        x, w = ctx.saved_tensors
        x, w, dy_ = (tf32(t, ctx.truncate) for t in (x, w, dy))
        dx = torch.nn.grad.conv2d_input(x.shape, w, dy_, padding=ctx.padding)
        dw = torch.nn.grad.conv2d_weight(x, w.shape, dy_, padding=ctx.padding)
        db = dy.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


class _TF32Conv2d(nn.Conv2d):
    truncate = False

    def forward(self, x: Tensor) -> Tensor:
        return TF32Conv.apply(x, self.weight, self.bias, self.padding[0], self.truncate)


def tf32_convs(
    module: nn.Module, min_in_channels: int = 1, truncate: bool = False
) -> nn.Module:
    """A copy of ``module`` whose convolutions that the prototype takes
    (``client_conv_op.swap_convs``: same-size, stride 1, with a bias) of at least
    ``min_in_channels`` input channels round their operands to TF32 as
    :class:`TF32Conv` does."""

    def swap(conv: nn.Conv2d) -> None:
        conv.__class__ = _TF32Conv2d
        conv.truncate = truncate  # type: ignore[attr-defined]

    return swap_each(module, swap, min_in_channels)[0]
