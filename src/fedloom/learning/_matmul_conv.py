"""Convolutions as matrix products, for a model vmapped over a cohort's clients.

Under ``vmap`` over clients, ``conv2d`` with per-client weights becomes one grouped
convolution (a group per client), and grouped convolutions run far below the
matrix units' rate. Written as ``unfold`` (im2col) and a matrix product instead,
each client's convolution over its whole minibatch is one GEMM, ``(C_out, C_in k k)
@ (C_in k k, B H W)``, and the cohort's a batched GEMM. Same parameters, same
names, the same function up to rounding.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from fedloom.core import CohortOptions

from ._functional import FunctionalModel

__all__ = ["MatmulConv2d", "cohort_model", "matmul_convolutions"]


class MatmulConv2d(nn.Module):
    """``nn.Conv2d`` (groups 1, zero padding) computed by ``unfold`` and ``matmul``.

    It holds the original layer's ``weight`` and ``bias`` under the same names.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not supported(conv):
            raise ValueError(f"cannot compute {conv} as a matrix product")
        self.weight = conv.weight
        self.bias = conv.bias
        self.out_channels = conv.out_channels
        self.kernel_size = _pair(conv.kernel_size)
        self.stride = _pair(conv.stride)
        self.padding = _pair(conv.padding)
        self.dilation = _pair(conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        batch, _, height, width = x.shape
        columns = nn.functional.unfold(
            x, self.kernel_size, self.dilation, self.padding, self.stride
        )  # (B, C_in k k, L)
        k, positions = columns.shape[1], columns.shape[2]
        columns = columns.transpose(0, 1).reshape(k, batch * positions)
        out = self.weight.reshape(self.out_channels, k) @ columns
        if self.bias is not None:
            out = out + self.bias[:, None]
        sizes = [
            (size + 2 * p - d * (kernel - 1) - 1) // s + 1
            for size, kernel, s, p, d in zip(
                (height, width),
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                strict=True,
            )
        ]
        out = out.reshape(self.out_channels, batch, *sizes).transpose(0, 1)
        return out.squeeze(0) if unbatched else out


def _pair(value: Any) -> tuple[int, int]:
    first, second = value
    return int(first), int(second)


def supported(conv: nn.Module) -> bool:
    """Whether ``conv`` is an ``nn.Conv2d`` that :class:`MatmulConv2d` computes."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def matmul_convolutions(model: FunctionalModel) -> FunctionalModel:
    """The same model (same parameter names) with its supported ``Conv2d`` layers
    computed as matrix products; a model without any is returned as it is."""
    if not any(supported(m) for m in model.module.modules()):
        return model
    module = copy.deepcopy(model.module)
    _replace(module)
    return FunctionalModel(module)


def _replace(module: nn.Module) -> None:
    for name, child in module.named_children():
        if supported(child):
            setattr(module, name, MatmulConv2d(child))  # type: ignore[arg-type]
        else:
            _replace(child)


def cohort_model(model: FunctionalModel, options: CohortOptions) -> FunctionalModel:
    """The model a cohort function vmaps, as ``options`` ask."""
    return matmul_convolutions(model) if options.conv_as_matmul else model
