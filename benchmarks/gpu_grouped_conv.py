"""Claim: which layout and precision make a cohort's per-client convolution fast.

Under ``vmap`` a convolution whose weights differ per client becomes one grouped
convolution, a group per client (``benchmarks/gpu_profile.py`` found cuDNN running
it as one small kernel per client, 65-75 % of a CNN step's GPU time on an H200).
This times that convolution alone, as the McMahan CNN's second layer has it
(B = 10 examples a client, 32 -> 64 channels, 14 x 14, 5 x 5 kernels, padding 2):
forward, input gradient and weight gradient, for each cohort size, in

- ``vmap``: the runtime's own path, ``vmap`` over clients of a convolution and its
  gradients (which lowers to the next row),
- ``grouped NCHW``: what vmap produces (float32, cuDNN's default TF32),
- ``grouped NHWC``: the same convolution in channels-last memory,
- ``grouped NCHW bf16`` / ``grouped NHWC bf16``: in bfloat16,
- ``per client``: a loop of plain convolutions, one client at a time,
- ``shared weights``: one ungrouped convolution over all clients' examples, the
  same FLOPs as the cohort's (the rate cuDNN reaches on this shape when the
  weights are shared; not a way to train, a ceiling to compare with),
- ``triton RxCxS unrolled|flat``: ``benchmarks/triton_client_conv.py``'s kernels,
  the whole cohort in one launch per pass, on per-client channels-last tensors, at
  a few tilings, the convolution's loop over kernel offsets unrolled or flat
  (where Triton imports and the device is a GPU; their correctness is checked
  first, against float64, and if that fails none is timed).

Each row is the median of ``--repeats`` timings of ``--iterations`` passes, in
milliseconds a pass, and its ratio to ``grouped NCHW`` in the same run.

    python benchmarks/gpu_grouped_conv.py [--cohort 10 100] [--device cuda]
        [--json benchmarks/results/gpu_grouped_conv.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

BATCH, IN, OUT, SIDE, KERNEL = 10, 32, 64, 14, 5


def flops(clients: int) -> float:
    """Multiply-adds x 2 of forward, input gradient and weight gradient."""
    forward = 2 * clients * BATCH * OUT * SIDE * SIDE * IN * KERNEL * KERNEL
    return 3.0 * forward


def grouped(
    clients: int, device: torch.device, dtype: torch.dtype, nhwc: bool
) -> Callable[[], None]:
    """One pass of the grouped convolution as vmap lowers it (clients' channels
    side by side in one tensor, groups = clients)."""
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    x = torch.randn(BATCH, clients * IN, SIDE, SIDE, device=device, dtype=dtype)
    x = x.contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(clients * OUT, IN, KERNEL, KERNEL, device=device, dtype=dtype)
    w = w.contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(BATCH, clients * OUT, SIDE, SIDE, device=device, dtype=dtype)
    grad = grad.contiguous(memory_format=fmt)

    def run() -> None:
        y = F.conv2d(x, w, padding=KERNEL // 2, groups=clients)
        torch.autograd.grad(y, (x, w), grad)

    return run


def vmapped(clients: int, device: torch.device) -> Callable[[], None]:
    x = torch.randn(clients, BATCH, IN, SIDE, SIDE, device=device)
    w = torch.randn(clients, OUT, IN, KERNEL, KERNEL, device=device)
    grad = torch.randn(clients, BATCH, OUT, SIDE, SIDE, device=device)

    def one(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (F.conv2d(x, w, padding=KERNEL // 2) * g).sum()

    both = torch.func.vmap(torch.func.grad(one, argnums=(0, 1)))

    def run() -> None:
        both(x, w, grad)

    return run


def per_client(clients: int, device: torch.device) -> Callable[[], None]:
    xs = [
        torch.randn(BATCH, IN, SIDE, SIDE, device=device, requires_grad=True)
        for _ in range(clients)
    ]
    ws = [
        torch.randn(OUT, IN, KERNEL, KERNEL, device=device, requires_grad=True)
        for _ in range(clients)
    ]
    grad = torch.randn(BATCH, OUT, SIDE, SIDE, device=device)

    def run() -> None:
        for x, w in zip(xs, ws, strict=True):
            y = F.conv2d(x, w, padding=KERNEL // 2)
            torch.autograd.grad(y, (x, w), grad)

    return run


def shared(clients: int, device: torch.device) -> Callable[[], None]:
    x = torch.randn(clients * BATCH, IN, SIDE, SIDE, device=device, requires_grad=True)
    w = torch.randn(OUT, IN, KERNEL, KERNEL, device=device, requires_grad=True)
    grad = torch.randn(clients * BATCH, OUT, SIDE, SIDE, device=device)

    def run() -> None:
        y = F.conv2d(x, w, padding=KERNEL // 2)
        torch.autograd.grad(y, (x, w), grad)

    return run


def triton_variants(device: torch.device, report: dict[str, Any]) -> dict[str, Any]:
    """The Triton prototype at four tilings, if it runs here and passes its check
    (whose relative errors go into ``report["triton_check"]``)."""
    if device.type != "cuda":
        return {}
    try:
        import triton_client_conv as tcc  # beside this file
    except ImportError as error:  # no Triton in this environment
        print(f"no triton rows: {error}")
        return {}
    tilings = [
        tcc.Tiling(64, 64, 32),
        tcc.Tiling(64, 64, 32, flat=True),
        tcc.Tiling(128, 64, 32, flat=True),
        tcc.Tiling(32, 64, 32, flat=True),
    ]
    errors = tcc.check(device, tilings)
    report["triton_check"] = errors
    bad = {k: e for k, e in errors.items() if not e <= 2e-3}  # TF32; NaN is bad
    if bad:
        print(f"no triton rows, the check failed: {bad}")
        return {}
    print(f"triton kernels against float64: worst {max(errors.values()):.2e}")

    def make(clients: int, tiling: Any) -> Callable[[], None]:
        x = torch.randn(clients, BATCH, SIDE, SIDE, IN, device=device)
        w = torch.randn(clients, KERNEL, KERNEL, IN, OUT, device=device)
        grad = torch.randn(clients, BATCH, SIDE, SIDE, OUT, device=device)

        def run() -> None:
            tcc.forward(x, w, None, tiling=tiling)
            tcc.input_grad(grad, w, tiling=tiling)
            tcc.weight_grad(x, grad, KERNEL, tiling=tiling)

        return run

    return {f"triton {t}": (lambda n, t=t: make(n, t)) for t in tilings}


def time_ms(
    run: Callable[[], None], device: torch.device, iterations: int, repeats: int
) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # cuDNN picks and caches its algorithms here
        run()
    sync()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            run()
        sync()
        samples.append((time.perf_counter() - started) * 1000 / iterations)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/gpu_grouped_conv.json")
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    f32, bf16 = torch.float32, torch.bfloat16
    variants: dict[str, Callable[[int], Callable[[], None]]] = {
        "grouped NCHW": lambda n: grouped(n, device, f32, nhwc=False),
        "vmap": lambda n: vmapped(n, device),
        "grouped NHWC": lambda n: grouped(n, device, f32, nhwc=True),
        "grouped NCHW bf16": lambda n: grouped(n, device, bf16, nhwc=False),
        "grouped NHWC bf16": lambda n: grouped(n, device, bf16, nhwc=True),
        "per client": lambda n: per_client(n, device),
        "shared weights": lambda n: shared(n, device),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "device": name,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "triton_check": None,
        "rows": [],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every row: a run cut off keeps what it measured
        args.json.write_text(json.dumps(report, indent=2) + "\n")

    variants.update(triton_variants(device, report))
    save()
    print(f"{name}: ms per pass (forward + both gradients), ratio to grouped NCHW")
    print("| clients | variant | ms | ratio | TFLOP/s |")
    print("| --- | --- | --- | --- | --- |")
    for clients in args.cohort:
        base = None
        for variant, make in variants.items():
            try:
                ms = time_ms(make(clients), device, args.iterations, args.repeats)
            except RuntimeError as error:  # e.g. bf16 convolution on an old CPU
                print(f"| {clients} | {variant} | failed: {error!s:.80} | | |")
                continue
            base = base or ms
            rate = flops(clients) / ms / 1e9
            report["rows"].append(
                {"clients": clients, "variant": variant, "ms": ms, "tflops": rate}
            )
            print(
                f"| {clients} | {variant} | {ms:.3f} | {base / ms:.2f}x | {rate:.2f} |"
            )
            save()
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
