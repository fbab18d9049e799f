"""A prototype: a model's one-input-channel convolutions as ``unfold`` and a matmul.

Under the vectorized runtime's ``vmap`` over clients, ``conv2d`` with per-client
weights becomes a grouped convolution, a group per client. For the McMahan CNN's
first convolution (one input channel, 32 out) that is a depthwise-style convolution,
which PyTorch runs on CUDA with its own native kernels (``conv_depthwise2d_*``, 1.4
ms of an eager step's GPU time at 100 clients in
``benchmarks/results/gpu_profile.json``), and which a Triton tile with a reduction
step of 16 or more wastes (some 1.7 ms of the Triton step's 5.2 ms).

Written as ``unfold`` (im2col: k x k columns a pixel, cheap with one channel) and
a matrix product, a client's convolution over its minibatch is one GEMM,
``(C_out, k k) @ (k k, B H W)``, the cohort's a batched GEMM, and the weight
gradient a batched GEMM whose reduction runs over ``B H W``; the input gradient is
never computed, since the input is the data. Plain torch operations: ``vmap``,
``grad`` and ``torch.compile`` take it as they are (no ``vmap`` rule for dynamo to
trace past, unlike ``client_conv_op.py``).

All of a model's convolutions computed so were 2.2-2.9x slower than the grouped
ones on an H200 (``benchmarks/results/gpu_speed_h200_matmul_conv.json``): the
second convolution's 32 input channels make 800 columns a pixel. Whether the first
alone gains is what ``benchmarks/gpu_speed.py``'s ``matmul-conv1`` rows are to
measure. This is a measurement aid, not part of fedloom.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["UnfoldConv2d", "swap_first_convs"]


class UnfoldConv2d(nn.Module):
    """``nn.Conv2d`` with one input channel (groups 1, zero padding, stride 1, no
    dilation) computed by ``unfold`` and ``matmul``, under the original layer's
    ``weight`` and ``bias`` names."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not _supported(conv):
            raise ValueError(f"not a one-input-channel stride-1 convolution: {conv}")
        self.weight = conv.weight
        self.bias = conv.bias
        self.kernel_size = (int(conv.kernel_size[0]), int(conv.kernel_size[1]))
        self.padding = (int(conv.padding[0]), int(conv.padding[1]))  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        batch, _, height, width = x.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        rows, cols = height + 2 * ph - kh + 1, width + 2 * pw - kw + 1
        columns = nn.functional.unfold(x, self.kernel_size, padding=self.padding)
        # (B, k k, L) -> (k k, B L): one product for the whole minibatch
        columns = columns.transpose(0, 1).reshape(kh * kw, batch * rows * cols)
        out = self.weight.reshape(self.weight.shape[0], kh * kw) @ columns
        if self.bias is not None:
            out = out + self.bias[:, None]
        out = out.reshape(-1, batch, rows, cols).transpose(0, 1)
        return out.squeeze(0) if unbatched else out


def _supported(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.in_channels == 1
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
    )


def swap_first_convs(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module`` whose one-input-channel convolutions are
    :class:`UnfoldConv2d` (same parameter names), and how many were swapped."""
    module = copy.deepcopy(module)
    if _supported(module):
        return UnfoldConv2d(module), 1  # type: ignore[arg-type]
    names = [name for name, child in module.named_modules() if _supported(child)]
    for name in names:
        conv = module.get_submodule(name)
        module.set_submodule(name, UnfoldConv2d(conv))  # type: ignore[arg-type]
    return module, len(names)
