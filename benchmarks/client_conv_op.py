"""A prototype: a model's convolutions routed, under ``vmap``, to one launch a cohort.

``swap_convs(module)`` replaces each same-size stride-1 ``nn.Conv2d`` of a model by a
:class:`ClientConv2d` (the same parameters, so the same names and shapes), whose
forward is :class:`ClientConv`. Alone it is ``F.conv2d``; under the vectorized
runtime's ``vmap`` over clients its vmap rule calls :func:`cohort_conv` instead, and
its backward calls two more ``autograd.Function``s (input and weight gradient) whose
vmap rules call the cohort's gradients. On a CUDA device with Triton the cohort
functions are ``benchmarks/triton_client_conv.py``'s kernels (per-client
channels-last: the tensors are permuted in and out); elsewhere they are the grouped
convolution that ``vmap`` makes of ``F.conv2d`` anyway, so that the composition can
be tested without a GPU. ``benchmarks/gpu_speed.py``'s
``graphs triton-conv`` row times a whole round with it.

This is a measurement aid, not part of fedloom: whether it belongs in the runtime
is what that row is to decide.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import triton_client_conv as kernels  # beside this file
except ImportError:  # no Triton: the grouped-convolution fallback only
    kernels = None

__all__ = [
    "ClientConv",
    "ClientConv2d",
    "swap_convs",
    "swap_each",
    "swappable",
    "uses_triton",
]


def uses_triton(x: Tensor) -> bool:
    """Whether the cohort functions run Triton's kernels for tensors like ``x``:
    float32, on a GPU or on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``,
    for tests)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    on_device = x.is_cuda or interpreted
    return kernels is not None and x.dtype == torch.float32 and on_device


def _grouped(x: Tensor) -> Tensor:
    """[C, N, Ci, H, W] -> [N, C * Ci, H, W]: the clients side by side as groups."""
    c, n, ci, h, w = x.shape
    return x.transpose(0, 1).reshape(n, c * ci, h, w)


def _ungrouped(y: Tensor, clients: int) -> Tensor:
    n, channels, h, w = y.shape
    return y.reshape(n, clients, channels // clients, h, w).transpose(0, 1)


def _nhwc(x: Tensor) -> Tensor:
    """[C, N, Ch, H, W] -> contiguous [C, N, H, W, Ch]."""
    return x.permute(0, 1, 3, 4, 2).contiguous()


def _hwio(w: Tensor) -> Tensor:
    """[C, Co, Ci, k, k] -> contiguous [C, k, k, Ci, Co]."""
    return w.permute(0, 3, 4, 2, 1).contiguous()


def cohort_conv(x: Tensor, w: Tensor, b: Tensor, tiling: Any = None) -> Tensor:
    """Every client's ``conv(x[c], w[c]) + b[c]``: x [C, N, Ci, H, W], w [C, Co, Ci,
    k, k], b [C, Co] -> [C, N, Co, H, W] (same size, stride 1)."""
    clients, pad = x.shape[0], w.shape[-1] // 2
    if uses_triton(x):
        y = kernels.forward(_nhwc(x), _hwio(w), b.contiguous(), tiling=_tiling(tiling))
        return y.permute(0, 1, 4, 2, 3)
    y = F.conv2d(_grouped(x), w.flatten(0, 1), b.flatten(), padding=pad, groups=clients)
    return _ungrouped(y, clients).contiguous()


def cohort_conv_input_grad(dy: Tensor, w: Tensor, tiling: Any = None) -> Tensor:
    """dx of :func:`cohort_conv` from dy [C, N, Co, H, W]."""
    clients, pad = dy.shape[0], w.shape[-1] // 2
    if uses_triton(dy):
        dx = kernels.input_grad(_nhwc(dy), _hwio(w), tiling=_tiling(tiling))
        return dx.permute(0, 1, 4, 2, 3)
    n, h, width = dy.shape[1], dy.shape[3], dy.shape[4]
    shape = (n, clients * w.shape[2], h, width)
    dx = torch.nn.grad.conv2d_input(
        shape, w.flatten(0, 1), _grouped(dy), padding=pad, groups=clients
    )
    return _ungrouped(dx, clients).contiguous()


def cohort_conv_weight_grad(
    x: Tensor, dy: Tensor, kernel: int, tiling: Any = None
) -> Tensor:
    """dw [C, Co, Ci, k, k] of :func:`cohort_conv`."""
    clients, pad = x.shape[0], kernel // 2
    if uses_triton(x):
        dw = kernels.weight_grad(_nhwc(x), _nhwc(dy), kernel, tiling=_tiling(tiling))
        return dw.permute(0, 4, 3, 1, 2).contiguous()
    c_in, c_out = x.shape[2], dy.shape[2]
    shape = (clients * c_out, c_in, kernel, kernel)
    dw = torch.nn.grad.conv2d_weight(
        _grouped(x), shape, _grouped(dy), padding=pad, groups=clients
    )
    return dw.reshape(clients, c_out, c_in, kernel, kernel)


def _tiling(tiling: Any) -> Any:
    return kernels.DEFAULT if tiling is None else tiling


def _batched(value: Tensor, dim: int | None, size: int) -> Tensor:
    """``value`` with its client axis first (broadcast where it has none)."""
    if dim is None:
        return value.expand(size, *value.shape)
    return value.movedim(dim, 0)


class _Gradient(torch.autograd.Function):
    """A gradient of :class:`ClientConv`, itself not differentiated again."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        raise RuntimeError("ClientConv has no second derivative")


class _InputGrad(_Gradient):
    """One client's dx of a same-size stride-1 convolution; the cohort's under vmap."""

    @staticmethod
    def forward(dy: Tensor, w: Tensor, tiling: Any) -> Tensor:
        shape = (dy.shape[0], w.shape[1], *dy.shape[2:])
        return torch.nn.grad.conv2d_input(shape, w, dy, padding=w.shape[-1] // 2)

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[Any, ...], dy: Tensor, w: Tensor, tiling: Any
    ) -> Any:
        size = info.batch_size
        pair = zip((dy, w), in_dims[:2], strict=True)
        dys, ws = (_batched(v, d, size) for v, d in pair)
        return cohort_conv_input_grad(dys, ws, tiling), 0


class _WeightGrad(_Gradient):
    """One client's dw of a same-size stride-1 convolution; the cohort's under vmap."""

    @staticmethod
    def forward(x: Tensor, dy: Tensor, kernel: int, tiling: Any) -> Tensor:
        shape = (dy.shape[1], x.shape[1], kernel, kernel)
        return torch.nn.grad.conv2d_weight(x, shape, dy, padding=kernel // 2)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[Any, ...],
        x: Tensor,
        dy: Tensor,
        kernel: int,
        tiling: Any,
    ) -> Any:
        size = info.batch_size
        pair = zip((x, dy), in_dims[:2], strict=True)
        xs, dys = (_batched(v, d, size) for v, d in pair)
        return cohort_conv_weight_grad(xs, dys, kernel, tiling), 0


class ClientConv(torch.autograd.Function):
    """One client's same-size stride-1 convolution, x [N, Ci, H, W]: ``F.conv2d``
    alone, :func:`cohort_conv` under ``vmap``, and so its gradients. (Functions
    rather than custom ops with ``register_autograd``: in torch 2.13 only these
    compose with ``torch.func.grad``.)"""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor, tiling: Any) -> Tensor:
        return F.conv2d(x, w, b, padding=w.shape[-1] // 2)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x, w, _, tiling = inputs
        ctx.save_for_backward(x, w)
        ctx.tiling = tiling

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor, Tensor, None]:
        x, w = ctx.saved_tensors
        # the first layer's input is data: no gradient to compute for it
        needs_dx = ctx.needs_input_grad[0]
        dx = _InputGrad.apply(dy, w, ctx.tiling) if needs_dx else None
        dw = _WeightGrad.apply(x, dy, w.shape[-1], ctx.tiling)
        return dx, dw, dy.sum(dim=(0, 2, 3)), None

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[Any, ...],
        x: Tensor,
        w: Tensor,
        b: Tensor,
        tiling: Any,
    ) -> tuple[Tensor, int]:
        size = info.batch_size
        triple = zip((x, w, b), in_dims[:3], strict=True)
        xs, ws, bs = (_batched(v, d, size) for v, d in triple)
        return cohort_conv(xs, ws, bs, tiling), 0


class ClientConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same-size, stride 1, with bias) through :class:`ClientConv`;
    ``tiling``: the Triton kernels' (``triton_client_conv.Tiling``, None: theirs)."""

    tiling: Any = None

    def forward(self, x: Tensor) -> Tensor:
        return ClientConv.apply(x, self.weight, self.bias, self.tiling)


def swappable(conv: nn.Conv2d) -> bool:
    """Whether :class:`ClientConv` computes ``conv``: a same-size, stride-1,
    undilated, ungrouped convolution of an odd square kernel, zero-padded, with a
    bias."""
    k = conv.kernel_size
    return (
        k[0] == k[1]
        and k[0] % 2 == 1
        and conv.stride == (1, 1)
        and conv.padding == (k[0] // 2, k[0] // 2)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.bias is not None
    )


def swap_each(
    module: nn.Module, swap: Callable[[nn.Conv2d], None], min_in_channels: int = 1
) -> tuple[nn.Module, int]:
    """A copy of ``module`` with ``swap`` applied to every :func:`swappable`
    ``nn.Conv2d`` of at least ``min_in_channels`` input channels (it changes the
    layer's class in place); and how many it was applied to."""
    module = copy.deepcopy(module)
    swapped = 0
    for child in module.modules():
        if (
            type(child) is nn.Conv2d
            and swappable(child)
            and child.in_channels >= min_in_channels
        ):
            swap(child)
            swapped += 1
    return module, swapped


def swap_convs(
    module: nn.Module, tiling: Any = None, min_in_channels: int = 1
) -> tuple[nn.Module, int]:
    """A copy of ``module`` with every swappable ``nn.Conv2d`` of at least
    ``min_in_channels`` input channels a :class:`ClientConv2d` (same parameters)
    with ``tiling``; and how many were swapped."""

    def swap(conv: nn.Conv2d) -> None:
        conv.__class__ = ClientConv2d
        conv.tiling = tiling  # type: ignore[attr-defined]

    return swap_each(module, swap, min_in_channels)
