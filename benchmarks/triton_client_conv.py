"""A prototype: each client's convolution as one Triton implicit-GEMM launch.

Under ``vmap`` a cohort's convolution, whose weights differ per client, becomes a
grouped convolution (a group per client), and on an H200 cuDNN ran it as one small
kernel per client, 65-75 % of a CNN step's GPU time (``benchmarks/gpu_profile.py``).
These kernels do the whole cohort in one launch each, a client per grid column:

- ``forward``:      ``y[c] = conv(x[c], w[c]) + b[c]``,
- ``input_grad``:   ``dx[c]``, the same kernel reading ``dy`` with the kernel
  mirrored (a stride-1 convolution's input gradient is one),
- ``weight_grad``:  ``dw[c]``, per (client, kernel offset) a product over the
  examples and positions.

With fewer than 16 input channels (the CNN's first convolution has one) a product a
kernel offset would fill ``tl.dot``'s least reduction of 16 with padding (16x the
work) and read dy once an offset; there ``forward`` and ``weight_grad`` take all
kernel offsets and channels (at most :data:`MAX_TAPS`) as one dimension of one
product instead (``_conv_taps_kernel``, ``_weight_grad_taps_kernel``).

Tensors are per-client channels-last: ``x[c, n, h, w, ci]``, ``w[c, kh, kw, ci, co]``,
``y[c, n, h, w, co]``; stride 1, zero padding, any odd kernel size. This file is a
measurement aid, not part of fedloom: ``benchmarks/gpu_grouped_conv.py`` times it
beside cuDNN's layouts (the ``triton`` rows) on the device tool's GPU, and its
correctness is checked here, without a GPU, by Triton's interpreter against a
float64 reference::

    TRITON_INTERPRET=1 python benchmarks/triton_client_conv.py   # CPU, interpreter
    python benchmarks/triton_client_conv.py --device cuda        # on a GPU

(``pip install triton==3.6.0`` gives the interpreter on a CPU-only machine; the
device tool's image has Triton.) On a GPU ``tl.dot`` takes float32 inputs as TF32,
like cuDNN's default for convolutions, so the check's tolerance there is TF32's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


class Tiling(NamedTuple):
    """How a kernel's work is cut: a program's tile (rows, columns, reduction step,
    each clamped to what the sizes need), its warps, and for the convolution
    kernel whether its loop over kernel offsets is flat (pipelined) or unrolled."""

    rows: int = 64
    columns: int = 64
    step: int = 32
    warps: int = 4
    flat: bool = False

    def __str__(self) -> str:
        loop = "flat" if self.flat else "unrolled"
        return f"{self.rows}x{self.columns}x{self.step} {loop}"


DEFAULT = Tiling()


@triton.jit
def _tap(
    acc, x_c, w_c, n, h, w, row_ok, cols, col_ok, kh, kw, k0, H, W,
    sx_n, sx_h, sx_w, sw_kh, sw_kw, sw_k, sw_n,
    K: tl.constexpr, PAD: tl.constexpr, SIGN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """``acc`` plus one kernel offset's (kh, kw) product over channels k0 + [0, BK)."""
    ih = h + SIGN * (kh - PAD)
    iw = w + SIGN * (kw - PAD)
    inside = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    ks = k0 + tl.arange(0, BK)
    k_ok = ks < K
    a = tl.load(
        (x_c + n * sx_n + ih * sx_h + iw * sx_w)[:, None] + ks[None, :],
        mask=inside[:, None] & k_ok[None, :],
        other=0.0,
    )
    b = tl.load(
        w_c + kh * sw_kh + kw * sw_kw + ks[:, None] * sw_k + cols[None, :] * sw_n,
        mask=k_ok[:, None] & col_ok[None, :],
        other=0.0,
    )
    return acc + tl.dot(a, b)


@triton.jit
def _output_tile(N, H, W, C_OUT, BM: tl.constexpr, BN: tl.constexpr):
    """The output rows (n, h, w flattened) and channels of this program's tile, the
    rows' n, h and w, and which rows and channels exist."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    n = rows // (H * W)
    h = (rows // W) % H
    w = rows % W
    return rows, cols, n, h, w, rows < N * H * W, cols < C_OUT


@triton.jit
def _store_output(
    acc, b_ptr, y_ptr, c, rows, cols, row_ok, col_ok, N, H, W, C_OUT,
    HAS_BIAS: tl.constexpr,
):  # fmt: skip
    """y[c, n, h, w, cols] = acc (+ b[c, cols])."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + c * C_OUT + cols, mask=col_ok, other=0.0)[None, :]
    out = y_ptr + c * N * H * W * C_OUT + rows[:, None] * C_OUT + cols[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _conv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, H, W, C_OUT,
    sx_c, sx_n, sx_h, sx_w,
    sw_c, sw_kh, sw_kw, sw_k, sw_n,
    K: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, PAD: tl.constexpr,
    SIGN: tl.constexpr, HAS_BIAS: tl.constexpr, FLAT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, K_BLOCKS: tl.constexpr,
):  # fmt: skip
    """y[c, n, h, w, :] = sum over (kh, kw, k) of
    x[c, n, h + SIGN (kh - PAD), w + SIGN (kw - PAD), k] * w[c, kh, kw, k, :].

    The kernel offsets are unrolled (FLAT false), or one loop over (offset, channel
    block) that Triton's pipeliner can prefetch across (FLAT true)."""
    c = tl.program_id(2)
    rows, cols, n, h, w, row_ok, col_ok = _output_tile(N, H, W, C_OUT, BM, BN)
    x_c = x_ptr + c * sx_c
    w_c = w_ptr + c * sw_c
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    strides = (sx_n, sx_h, sx_w, sw_kh, sw_kw, sw_k, sw_n)
    if FLAT:  # K_BLOCKS = cdiv(K, BK)
        for t in range(KH * KW * K_BLOCKS):
            offset = t // K_BLOCKS
            k0 = (t % K_BLOCKS) * BK
            kh = offset // KW
            kw = offset % KW
            acc = _tap(
                acc, x_c, w_c, n, h, w, row_ok, cols, col_ok, kh, kw, k0, H, W,
                *strides, K, PAD, SIGN, BK,
            )  # fmt: skip
    else:
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                for k0 in range(0, K, BK):
                    acc = _tap(
                        acc, x_c, w_c, n, h, w, row_ok, cols, col_ok, kh, kw, k0,
                        H, W, *strides, K, PAD, SIGN, BK,
                    )  # fmt: skip
    _store_output(acc, b_ptr, y_ptr, c, rows, cols, row_ok, col_ok, N, H, W, C_OUT,
                  HAS_BIAS)  # fmt: skip


@triton.jit
def _weight_grad_kernel(
    x_ptr, dy_ptr, dw_ptr,
    H, W, C_IN, C_OUT,
    POSITIONS: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, PAD: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """dw[c, kh, kw, ci, co] = sum over (n, h, w) of
    x[c, n, h + kh - PAD, w + kw - PAD, ci] * dy[c, n, h, w, co]; POSITIONS = n h w.

    (Loop bounds are compile-time constants here: Triton 3.6's interpreter cannot
    take a run-time integer argument as a ``range`` bound under NumPy 2.)"""
    offset, pid, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    kh = offset // KW
    kw = offset % KW
    blocks_n = tl.cdiv(C_OUT, BN)
    cis = (pid // blocks_n) * BM + tl.arange(0, BM)
    cos = (pid % blocks_n) * BN + tl.arange(0, BN)
    ci_ok = cis < C_IN
    co_ok = cos < C_OUT
    x_c = x_ptr + c * POSITIONS * C_IN
    dy_c = dy_ptr + c * POSITIONS * C_OUT
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for p0 in range(0, POSITIONS, BK):
        ps = p0 + tl.arange(0, BK)  # (n, h, w) of the output gradient
        n = ps // (H * W)
        h = (ps // W) % H
        w = ps % W
        ih = h + kh - PAD
        iw = w + kw - PAD
        inside = (ps < POSITIONS) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(
            x_c + ((n * H + ih) * W + iw)[None, :] * C_IN + cis[:, None],
            mask=ci_ok[:, None] & inside[None, :],
            other=0.0,
        )  # [BM (ci), BK (positions)]
        b = tl.load(
            dy_c + ps[:, None] * C_OUT + cos[None, :],
            mask=(ps < POSITIONS)[:, None] & co_ok[None, :],
            other=0.0,
        )  # [BK (positions), BN (co)]
        acc += tl.dot(a, b)
    out = dw_ptr + (((c * KH + kh) * KW + kw) * C_IN + cis[:, None]) * C_OUT
    tl.store(out + cos[None, :], acc, mask=ci_ok[:, None] & co_ok[None, :])


@triton.jit
def _conv_taps_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, H, W, C_OUT,
    K: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    """:func:`_conv_kernel`'s forward for few input channels (K, contiguous x and
    w): one product over all KH * KW * K taps (BT of them, padded), each row's
    gathered from x, instead of one a kernel offset whose K channels fill a tile
    of at least 16 (``tl.dot``'s least) with padding."""
    c = tl.program_id(2)
    rows, cols, n, h, w, row_ok, col_ok = _output_tile(N, H, W, C_OUT, BM, BN)
    taps = tl.arange(0, BT)  # (kh, kw, k) flattened, as w's rows lie
    tap_ok = taps < KH * KW * K
    ih = h[:, None] + (taps // (KW * K))[None, :] - PAD
    iw = w[:, None] + ((taps // K) % KW)[None, :] - PAD
    inside = row_ok[:, None] & tap_ok[None, :]
    inside = inside & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    a = tl.load(
        x_ptr + (((c * N + n[:, None]) * H + ih) * W + iw) * K + (taps % K)[None, :],
        mask=inside,
        other=0.0,
    )
    b = tl.load(
        w_ptr + (c * KH * KW * K + taps[:, None]) * C_OUT + cols[None, :],
        mask=tap_ok[:, None] & col_ok[None, :],
        other=0.0,
    )
    acc = tl.dot(a, b)
    _store_output(acc, b_ptr, y_ptr, c, rows, cols, row_ok, col_ok, N, H, W, C_OUT,
                  HAS_BIAS)  # fmt: skip


@triton.jit
def _weight_grad_taps_kernel(
    x_ptr, dy_ptr, part_ptr,
    H, W, C_IN, C_OUT, POSITIONS, SPLIT,
    CHUNK: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, PAD: tl.constexpr,
    BT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """:func:`_weight_grad_kernel` for few input channels: all KH * KW * C_IN taps
    (BT, padded) as the rows of one tile, so that dy is read once rather than once
    a kernel offset; the positions cut into SPLIT chunks of CHUNK, a program each,
    whose partial sums part[c, split, tap, co] the caller adds up."""
    pid_n, split, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cos = pid_n * BN + tl.arange(0, BN)
    co_ok = cos < C_OUT
    taps = tl.arange(0, BT)
    tap_ok = taps < KH * KW * C_IN
    kh = taps // (KW * C_IN)
    kw = (taps // C_IN) % KW
    ci = taps % C_IN
    x_c = x_ptr + c * POSITIONS * C_IN
    dy_c = dy_ptr + c * POSITIONS * C_OUT
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for p0 in range(0, CHUNK, BK):
        local = p0 + tl.arange(0, BK)
        ps = split * CHUNK + local  # (n, h, w) of the output gradient
        p_ok = (local < CHUNK) & (ps < POSITIONS)
        n = ps // (H * W)
        h = (ps // W) % H
        w = ps % W
        ih = h[None, :] + kh[:, None] - PAD
        iw = w[None, :] + kw[:, None] - PAD
        inside = tap_ok[:, None] & p_ok[None, :]
        inside = inside & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(
            x_c + ((n[None, :] * H + ih) * W + iw) * C_IN + ci[:, None],
            mask=inside,
            other=0.0,
        )  # [BT (taps), BK (positions)]
        b = tl.load(
            dy_c + ps[:, None] * C_OUT + cos[None, :],
            mask=p_ok[:, None] & co_ok[None, :],
            other=0.0,
        )  # [BK (positions), BN (co)]
        acc += tl.dot(a, b)
    out = part_ptr + ((c * SPLIT + split) * KH * KW * C_IN + taps[:, None]) * C_OUT
    tl.store(out + cos[None, :], acc, mask=tap_ok[:, None] & co_ok[None, :])


MAX_TAPS = 64
"""The most taps (kernel offsets x input channels) that the few-channel kernels
take in one tile: the CNN's first convolution has 25 (5 x 5, one channel)."""

FEW_CHANNELS = 16
"""Input channels under which those kernels run (``tl.dot``'s least tile side)."""


def _few_channels(taps: int, channels: int) -> bool:
    return channels < FEW_CHANNELS and taps <= MAX_TAPS


def _check_layout(x: torch.Tensor, w: torch.Tensor, channels: int) -> None:
    """``x[c, n, h, w, :]`` against ``w[c, kh, kw, ci, co]``'s dim ``channels``."""
    if x.dim() != 5 or w.dim() != 5:
        raise ValueError("x is [clients, n, h, w, ci], w is [clients, kh, kw, ci, co]")
    if x.shape[0] != w.shape[0] or x.shape[4] != w.shape[channels]:
        raise ValueError(f"{tuple(x.shape)} and weights {tuple(w.shape)} do not match")
    if w.shape[1] % 2 == 0 or w.shape[1] != w.shape[2]:
        raise ValueError("square odd kernels only (same-size output, stride 1)")
    if not (x.is_contiguous() and w.is_contiguous()):
        raise ValueError("contiguous tensors only")
    if x.dtype != torch.float32 or w.dtype != torch.float32:
        raise ValueError(f"float32 only, got {x.dtype} and {w.dtype}")


def _output(out: torch.Tensor | None, *shape: int, like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(*shape, device=like.device, dtype=torch.float32)
    if tuple(out.shape) != shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {shape}, got {tuple(out.shape)}")
    return out


def _fit(block: int, size: int) -> int:
    """A tile side no longer than ``size`` needs (a power of two, and at least 16,
    ``tl.dot``'s least): the first convolution's single input channel would
    otherwise fill a reduction tile of 32 with padding."""
    return max(16, min(block, triton.next_power_of_2(size)))


def forward(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    *,
    out: torch.Tensor | None = None,
    tiling: Tiling = DEFAULT,
) -> torch.Tensor:
    """Every client's ``conv(x[c], w[c]) + b[c]``, same-size output."""
    _check_layout(x, w, channels=3)
    clients, n, h, width, _ = x.shape
    c_out = w.shape[4]
    if b is not None and not (
        b.shape == (clients, c_out) and b.is_contiguous() and b.dtype == x.dtype
    ):
        raise ValueError(f"b must be a contiguous float32 {(clients, c_out)}")
    y = _output(out, clients, n, h, width, c_out, like=x)
    c_in, kernel = x.shape[4], w.shape[1]
    if _few_channels(kernel * kernel * c_in, c_in):
        bm, bn = tiling.rows, _fit(tiling.columns, c_out)
        grid = (triton.cdiv(n * h * width, bm), triton.cdiv(c_out, bn), clients)
        _conv_taps_kernel[grid](
            x, w, b if b is not None else w, y, n, h, width, c_out,
            K=c_in, KH=kernel, KW=kernel, PAD=kernel // 2, HAS_BIAS=b is not None,
            BM=bm, BN=bn, BT=_fit(MAX_TAPS, kernel * kernel * c_in),
            num_warps=tiling.warps,
        )  # fmt: skip
        return y
    _convolve(x, w, b, y, sign=1, tiling=tiling)
    return y


def input_grad(
    dy: torch.Tensor,
    w: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    tiling: Tiling = DEFAULT,
) -> torch.Tensor:
    """``dx`` of :func:`forward`: ``dy`` convolved with the mirrored kernel, the
    weights read with input and output channels swapped."""
    _check_layout(dy, w, channels=4)
    clients, n, h, width, _ = dy.shape
    dx = _output(out, clients, n, h, width, w.shape[3], like=dy)
    _convolve(dy, w.transpose(3, 4), None, dx, sign=-1, tiling=tiling)
    return dx


def _convolve(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    y: torch.Tensor,
    sign: int,
    tiling: Tiling,
) -> None:
    """``_conv_kernel`` over ``x[c, n, h, w, k]`` and weights indexed
    ``w[c, kh, kw, k, j]`` (any strides) into ``y[c, n, h, w, j]``."""
    clients, n, h, width, k = x.shape
    kh, kw, c_out = w.shape[1], w.shape[2], w.shape[4]
    bm, bn, bk = tiling.rows, _fit(tiling.columns, c_out), _fit(tiling.step, k)
    grid = (triton.cdiv(n * h * width, bm), triton.cdiv(c_out, bn), clients)
    _conv_kernel[grid](
        x, w, b if b is not None else w, y,
        n, h, width, c_out,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        w.stride(0), w.stride(1), w.stride(2), w.stride(3), w.stride(4),
        K=k, KH=kh, KW=kw, PAD=kh // 2, SIGN=sign, HAS_BIAS=b is not None,
        FLAT=tiling.flat, BM=bm, BN=bn, BK=bk, K_BLOCKS=triton.cdiv(k, bk),
        num_warps=tiling.warps,
    )  # fmt: skip


def weight_grad(
    x: torch.Tensor,
    dy: torch.Tensor,
    kernel: int,
    *,
    out: torch.Tensor | None = None,
    tiling: Tiling = DEFAULT,
) -> torch.Tensor:
    """``dw`` of :func:`forward` for a ``kernel`` x ``kernel`` convolution."""
    if x.shape[:4] != dy.shape[:4] or not (x.is_contiguous() and dy.is_contiguous()):
        raise ValueError(f"x {tuple(x.shape)}, dy {tuple(dy.shape)}: not one layout")
    if x.dtype != torch.float32 or dy.dtype != torch.float32:
        raise ValueError(f"float32 only, got {x.dtype} and {dy.dtype}")
    clients, n, h, width, c_in = x.shape
    c_out = dy.shape[4]
    dw = _output(out, clients, kernel, kernel, c_in, c_out, like=x)
    taps = kernel * kernel * c_in
    if _few_channels(taps, c_in):
        _weight_grad_taps(x, dy, dw, kernel, tiling)
        return dw
    bm, bn, bk = _fit(tiling.rows, c_in), _fit(tiling.columns, c_out), tiling.step
    tiles = triton.cdiv(c_in, bm) * triton.cdiv(c_out, bn)
    _weight_grad_kernel[(kernel * kernel, tiles, clients)](
        x, dy, dw,
        h, width, c_in, c_out,
        POSITIONS=n * h * width, KH=kernel, KW=kernel, PAD=kernel // 2,
        BM=bm, BN=bn, BK=bk, num_warps=tiling.warps,
    )  # fmt: skip
    return dw


def _weight_grad_taps(
    x: torch.Tensor, dy: torch.Tensor, dw: torch.Tensor, kernel: int, tiling: Tiling
) -> None:
    """:func:`_weight_grad_taps_kernel` into ``dw``: enough position chunks for
    some 512 programs in all, their partial sums then added."""
    clients, n, h, width, c_in = x.shape
    c_out, positions = dy.shape[4], n * h * width
    taps, bk = kernel * kernel * c_in, tiling.step
    bn = _fit(tiling.columns, c_out)
    tiles = triton.cdiv(c_out, bn)
    split = max(1, min(triton.cdiv(512, clients * tiles), triton.cdiv(positions, bk)))
    chunk = triton.cdiv(triton.cdiv(positions, split), bk) * bk
    split = triton.cdiv(positions, chunk)
    part = torch.empty(clients, split, taps, c_out, device=x.device, dtype=x.dtype)
    _weight_grad_taps_kernel[(tiles, split, clients)](
        x, dy, part, h, width, c_in, c_out, positions, split,
        CHUNK=chunk, KH=kernel, KW=kernel, PAD=kernel // 2,
        BT=_fit(MAX_TAPS, taps), BN=bn, BK=bk, num_warps=tiling.warps,
    )  # fmt: skip
    torch.sum(part, dim=1, out=dw.view(clients, taps, c_out))


def reference(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dy: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """(y, dx, dw) in float64, client by client, through ``F.conv2d`` (NCHW)."""
    ys, dxs, dws = [], [], []
    for c in range(x.shape[0]):
        xc = x[c].double().permute(0, 3, 1, 2).requires_grad_()
        wc = w[c].double().permute(3, 2, 0, 1).requires_grad_()  # [co, ci, kh, kw]
        y = F.conv2d(xc, wc, b[c].double(), padding=w.shape[1] // 2)
        dx, dw = torch.autograd.grad(y, (xc, wc), dy[c].double().permute(0, 3, 1, 2))
        ys.append(y.detach().permute(0, 2, 3, 1))
        dxs.append(dx.permute(0, 2, 3, 1))
        dws.append(dw.permute(2, 3, 1, 0))
    return torch.stack(ys), torch.stack(dxs), torch.stack(dws)


CHECKED = [
    (3, 2, 14, 32, 64, 5),
    (2, 3, 9, 1, 32, 5),
    (2, 2, 7, 20, 70, 3),
    (2, 2, 7, 3, 20, 3),
    (2, 2, 6, 2, 16, 5),
    (3, 8, 8, 1, 32, 5),
    (3, 8, 4, 32, 64, 5),
]
"""(clients, examples, side, in channels, out channels, kernel) of :func:`check`:
the CNN's second and first convolutions, tiles that do not divide the sizes, two
more of few input channels (27 and 50 kernel offsets x channels), and the CNN's
two on 8 x 8 digits as ``compiled_client_conv.py`` trains them (the second on 4 x 4
images, smaller than its kernel)."""


def check(
    device: torch.device,
    tilings: Sequence[Tiling] = (DEFAULT, Tiling(32, 32, 16, flat=True)),
    seed: int = 0,
) -> dict[str, float]:
    """Relative errors ||out - ref|| / ||ref|| of the three kernels on random
    shapes like the McMahan CNN's two convolutions (fewer clients and examples)."""
    generator = torch.Generator().manual_seed(seed)
    errors: dict[str, float] = {}
    for clients, n, side, c_in, c_out, kernel in CHECKED:

        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator).to(device)

        x = draw(clients, n, side, side, c_in)
        w = draw(clients, kernel, kernel, c_in, c_out) / kernel
        b = draw(clients, c_out)
        dy = draw(clients, n, side, side, c_out)
        expected = reference(x.cpu(), w.cpu(), b.cpu(), dy.cpu())
        for tiling in tilings:
            # outputs poisoned first: an element left unwritten stays NaN
            def nan(like: torch.Tensor) -> torch.Tensor:
                return torch.full_like(like, float("nan"), device=device)

            y, dx, dw = (nan(ref).float() for ref in expected)
            forward(x, w, b, out=y, tiling=tiling)
            input_grad(dy, w, out=dx, tiling=tiling)
            weight_grad(x, dy, kernel, out=dw, tiling=tiling)
            for name, out, ref in zip(
                ["y", "dx", "dw"], (y, dx, dw), expected, strict=True
            ):
                got = out.cpu().double()
                error = float((got - ref).norm() / ref.norm())
                key = f"{name} {c_in}->{c_out} k{kernel} {side}x{side} {tiling}"
                errors[key] = error if bool(got.isfinite().all()) else float("nan")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu needs TRITON_INTERPRET=1")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("on the CPU only Triton's interpreter runs: TRITON_INTERPRET=1")
    # float32 lands far under 1e-4; TF32 (tl.dot's default on a GPU) near 3e-4
    tolerance = 1e-4 if device.type == "cpu" else 2e-3
    errors = check(device)
    for key, error in errors.items():
        print(f"{key:<38} relative error {error:.2e}")
    bad = [key for key, error in errors.items() if not error <= tolerance]
    if bad:
        print(f"FAILED (tolerance {tolerance:g}): {', '.join(bad)}")
        return 1
    print(f"all within {tolerance:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
