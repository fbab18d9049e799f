"""A prototype: the compiled step's grouped convolutions routed to one launch a cohort.

``benchmarks/client_conv_op.py`` gives a model's convolutions a ``vmap`` rule that
calls its cohort functions (on a GPU, ``benchmarks/triton_client_conv.py``'s Triton
kernels: one launch a convolution or gradient for the whole cohort, where cuDNN
runs ``vmap``'s grouped convolution as a kernel a client). Compiled, that rule is
not reached (dynamo traces through it), so the Triton rows and
``VectorizedRuntime(compile=True)`` did not combine. This module reaches the
compiled step another way: a post-grad pass (:func:`route_client_convolutions`)
finds ``vmap``'s grouped convolutions and their gradients in the graph inductor
compiles and replaces each by a custom operator that calls the cohort functions.
The rest of the step keeps inductor's fused kernels.

:func:`routing` makes every ``CohortStep`` compiled inside it use the pass (it
stands in for the runtime's ``FoldUpdateIntoGemm``, which still runs after it).
``benchmarks/gpu_speed.py``'s ``graphs compiled triton-conv*`` rows time it. On
the CPU (as in the tests) the cohort functions are the same grouped convolutions,
so there the pass only checks the plumbing.

This is a measurement aid, not part of fedloom. Run as a script it checks, with
Triton's kernels, three SGD steps of the McMahan CNN on 8 x 8 digits (3 clients)
against float64 steps: each parameter's change, as a fraction of the largest change
in float64, for the steps compiled as the runtime compiles them (cuDNN's
convolutions on a GPU), eager with the Triton kernels through ``vmap``'s rule
(``client_conv_op``), compiled with both convolutions routed to them, and with the
second only; a last run of the routed step, inside :func:`comparing_ops`, also
compares each call of the routed operators with the ``aten`` operator it replaced,
on the same inputs. In the interpreter (float32) every row must be within 1e-4.
On a GPU ``tl.dot`` rounds its operands to TF32, and in these steps that alone moves
the changes by up to 14 % (ReLUs and pooling maxima flip:
``benchmarks/tf32_reference.py``), so a row with Triton's convolutions is compared
with float64 steps whose same convolutions round their operands alike (to nearest
and truncated; the closer counts), and every row must be within 1e-3. (On an H200
on 2026-11-27, before that reference, the routed step was up to 22 % off float64,
where cuDNN's, whose grouped forward convolution runs in float32, was 3.3e-4 off;
float32 steps with truncated TF32 operands give those 22 % to three digits.)::

    TRITON_INTERPRET=1 python benchmarks/compiled_client_conv.py   # CPU, interpreter
    python benchmarks/compiled_client_conv.py --device cuda        # on a GPU (TF32)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.fx import Graph

from fedloom.learning import _gemm_update
from fedloom.learning._types import Params
from fedloom.learning._update_chains import new_node, val

try:  # imported as benchmarks.compiled_client_conv (the tests)
    from benchmarks import client_conv_op as op
    from benchmarks.tf32_reference import tf32_convs
except ImportError:  # or from a script beside it (benchmarks/gpu_speed.py)
    import client_conv_op as op  # type: ignore[no-redef]
    from tf32_reference import tf32_convs  # type: ignore[no-redef]

__all__ = ["RoutingFold", "comparing_ops", "route_client_convolutions", "routing"]

_aten = torch.ops.aten
_ops = torch.ops.fedloom_bench
_settings: dict[str, Any] = {"min_in_channels": 1, "tiling": None}
"""What :func:`routing` sets for the passes made inside it."""
_op_errors: list[tuple[str, float]] | None = None
"""Where :func:`comparing_ops` collects each routed call's distance from aten's."""


@contextlib.contextmanager
def comparing_ops() -> Iterator[list[tuple[str, float]]]:
    """Inside, each call of the routed operators also runs the ``aten`` operator it
    replaced (cuDNN's grouped convolution on a GPU) on the same inputs, and the list
    yielded collects (what, largest difference / largest value of aten's): whether
    the operators get and give what the compiled step means, apart from it."""
    global _op_errors
    saved, _op_errors = _op_errors, []
    try:
        yield _op_errors
    finally:
        _op_errors = saved


def _compare(what: str, got: Tensor, want: Tensor) -> None:
    if _op_errors is not None and want.numel():
        scale = want.abs().max().clamp_min(torch.finfo(want.dtype).tiny)
        _op_errors.append((what, float((got - want).abs().max() / scale)))


def _tiling_values(tiling: Any) -> list[int]:
    """A Triton tiling as a custom operator's argument: (rows, columns, step, warps,
    flat), or [] for the kernels' default."""
    return [] if tiling is None else [*tiling[:4], int(tiling.flat)]


def _tiling(values: list[int]) -> Any:
    if not values or op.kernels is None:
        return None
    return op.kernels.Tiling(*values[:4], flat=bool(values[4]))


def _clients_view(t: Tensor, clients: int) -> Tensor:
    """[N, C * Ch, H, W] (the clients side by side in the channels, as ``vmap``
    groups them) -> a [C, N, Ch, H, W] view."""
    return t.unflatten(1, (clients, t.shape[1] // clients)).transpose(0, 1)


def _grouped(t: Tensor) -> Tensor:
    """[C, N, Ch, H, W] -> contiguous [N, C * Ch, H, W]."""
    return t.transpose(0, 1).flatten(1, 2).contiguous()


@torch.library.custom_op("fedloom_bench::cohort_conv", mutates_args=())
def cohort_conv(
    x: Tensor, w: Tensor, bias: Tensor | None, groups: int, tiling: list[int]
) -> Tensor:
    """``aten.convolution`` of ``x`` by ``w`` with ``groups`` clients (same size,
    stride 1), through :func:`client_conv_op.cohort_conv` (Triton's kernels with
    ``tiling``: :func:`_tiling_values`)."""
    outputs = w.shape[0] // groups
    if bias is None:
        bias = w.new_zeros(w.shape[0])
    y = _grouped(
        op.cohort_conv(
            _clients_view(x, groups),
            w.unflatten(0, (groups, outputs)),
            bias.unflatten(0, (groups, outputs)),
            _tiling(tiling),
        )
    )
    if _op_errors is not None:
        pad = [w.shape[-1] // 2] * 2
        want = _aten.convolution(x, w, bias, [1, 1], pad, [1, 1], False, [0, 0], groups)
        _compare(f"y (in {w.shape[1]})", y, want)
    return y


@cohort_conv.register_fake
def _(x, w, bias, groups, tiling):  # type: ignore[no-untyped-def]
    return x.new_empty(x.shape[0], w.shape[0], *x.shape[2:])


@torch.library.custom_op("fedloom_bench::cohort_conv_backward", mutates_args=())
def cohort_conv_backward(
    dy: Tensor, x: Tensor, w: Tensor, groups: int, mask: list[bool], tiling: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """``aten.convolution_backward``'s gradients of :func:`cohort_conv` (input,
    weight, bias; an empty tensor where ``mask`` says not wanted)."""
    outputs, kernel = w.shape[0] // groups, w.shape[-1]
    dys, ws = _clients_view(dy, groups), w.unflatten(0, (groups, outputs))
    tiling = _tiling(tiling)  # type: ignore[assignment]
    # an empty tensor where not wanted (a new one each: outputs may not alias)
    dx, dw, db = (dy.new_empty(0) for _ in range(3))
    if mask[0]:
        dx = _grouped(op.cohort_conv_input_grad(dys, ws, tiling))
    if mask[1]:
        xs = _clients_view(x, groups)
        dw = op.cohort_conv_weight_grad(xs, dys, kernel, tiling).flatten(0, 1)
    if mask[2]:
        db = dy.sum((0, 2, 3))
    if _op_errors is not None:
        pad = [kernel // 2] * 2
        wants = _aten.convolution_backward(
            dy, x, w, [w.shape[0]], [1, 1], pad, [1, 1], False, [0, 0], groups, mask
        )
        for what, got, want in zip(
            ("dx", "dw", "db"), (dx, dw, db), wants, strict=True
        ):
            if want is not None:
                _compare(f"{what} (in {w.shape[1]})", got, want)
    return dx, dw, db


@cohort_conv_backward.register_fake
def _(dy, x, w, groups, mask, tiling):  # type: ignore[no-untyped-def]
    shapes = (x.shape, w.shape, (w.shape[0],))
    return tuple(
        dy.new_empty(shape if wanted else (0,))
        for shape, wanted in zip(shapes, mask, strict=True)
    )


def _routable(x: Any, w: Any, args: tuple[Any, ...], groups: Any, min_in: int) -> bool:
    """Whether a convolution of ``x`` by ``w`` with ``args`` (stride, padding,
    dilation, transposed, output padding) is ``vmap``'s grouped form of a same-size
    stride-1 convolution that :mod:`client_conv_op` computes."""
    stride, padding, dilation, transposed, _ = args
    x_val, w_val = val(x), val(w)
    if x_val is None or w_val is None or not isinstance(groups, int) or groups < 2:
        return False
    kernel = w_val.shape[-1]
    return (
        not transposed
        and x_val.dim() == 4
        and w_val.shape[-2] == kernel
        and kernel % 2 == 1
        and list(stride) == [1, 1]
        and list(padding) == [kernel // 2] * 2
        and list(dilation) == [1, 1]
        and w_val.shape[1] >= min_in
    )


def route_client_convolutions(
    graph: Graph, min_in_channels: int = 1, tiling: Any = None
) -> tuple[int, int]:
    """Replace, in ``graph``, each grouped convolution (and convolution gradient)
    that :func:`_routable` accepts, whose groups read at least ``min_in_channels``
    channels each, by :func:`cohort_conv` (:func:`cohort_conv_backward`) with
    ``tiling``; returns how many nodes were replaced, and how many grouped ones were
    not because their group count is symbolic (a recompilation made it dynamic)."""
    routed = skipped = 0
    values = _tiling_values(tiling)
    for node in list(graph.nodes):
        args: Any = node.args
        if node.target is _aten.convolution.default:
            x, w, bias, *conv, groups = args
            new_args: tuple[Any, ...] = (x, w, bias, groups, values)
            target = _ops.cohort_conv.default
        elif node.target is _aten.convolution_backward.default:
            dy, x, w, _, *conv, groups, mask = args
            new_args = (dy, x, w, groups, mask, values)
            target = _ops.cohort_conv_backward.default
        else:
            continue
        if isinstance(groups, torch.SymInt):
            skipped += 1
            continue
        if not _routable(x, w, tuple(conv), groups, min_in_channels):
            continue
        with graph.inserting_before(node):
            routed_node = new_node(graph, target, *new_args)
        node.replace_all_uses_with(routed_node)  # a gradient's getitems too
        graph.erase_node(node)
        routed += 1
    return routed, skipped


class RoutingFold(_gemm_update.FoldUpdateIntoGemm):
    """The runtime's post-grad pass, after :func:`route_client_convolutions` with
    the settings of the :func:`routing` it was made in."""

    routed = 0
    """Nodes replaced in all the graphs compiled with the pass (a class total)."""
    skipped = 0
    """Grouped convolutions left to cuDNN for a symbolic group count (a total)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.min_in_channels: int = _settings["min_in_channels"]
        self.tiling: Any = _settings["tiling"]

    def __call__(self, graph: Graph) -> None:
        routed, skipped = route_client_convolutions(
            graph, self.min_in_channels, self.tiling
        )
        RoutingFold.routed += routed
        RoutingFold.skipped += skipped
        super().__call__(graph)

    def uuid(self) -> Any:
        here = Path(__file__).parent
        files = ("compiled_client_conv.py", "client_conv_op.py")
        own = tuple(str(here / name) for name in files)
        hashed = _gemm_update.get_hash_for_files(own)
        return super().uuid(), hashed, repr(self.tiling), self.min_in_channels


@contextlib.contextmanager
def routing(min_in_channels: int = 1, tiling: Any = None) -> Iterator[None]:
    """Compile every ``CohortStep`` made inside with :class:`RoutingFold`: the
    grouped convolutions whose groups read at least ``min_in_channels`` channels
    run through the cohort functions (with ``tiling`` where they are Triton's),
    in whichever later call compiles them."""
    saved = _gemm_update.FoldUpdateIntoGemm, dict(_settings)
    _settings.update(min_in_channels=min_in_channels, tiling=tiling)
    _gemm_update.FoldUpdateIntoGemm = RoutingFold  # type: ignore[misc]
    try:
        yield
    finally:
        _gemm_update.FoldUpdateIntoGemm = saved[0]  # type: ignore[misc]
        _settings.update(saved[1])


def digits_clients() -> list[Any]:
    """The three digits clients (of 10, IID) whose steps :func:`three_steps` takes."""
    from fedloom.data import ClientData, load_dataset

    clients = ClientData.from_dataset(load_dataset("digits"), "iid", 10, seed=0)
    return [clients.client(i) for i in range(3)]


def three_steps(
    model: Any,
    examples: list[Any],
    device: str,
    dtype: torch.dtype,
    compile: bool = False,
    min_in: int | None = None,
) -> Params:
    """Each parameter's change (float64, on the CPU) after three SGD steps (lr 0.1,
    B = 8) of three clients with ``examples``, in ``dtype`` on ``device``: compiled
    if asked, inside :func:`routing` with ``min_in`` if given."""
    from fedloom.core import Replicated
    from fedloom.learning import sgd
    from fedloom.learning._cohort_work import CohortStep, plan_training

    start = model.init()
    params = {k: v.to(device, dtype) for k, v in start.items()}
    on = torch.device(device)
    plan = plan_training(Replicated(params, 3), examples, [1, 2, 3], 1, 8, on)
    plan.data.x = plan.data.x.to(dtype)
    with contextlib.nullcontext() if min_in is None else routing(min_in):
        cpp_wrapper = on.type == "cpu"
        step = CohortStep(model, sgd(0.1), compile=compile, cpp_wrapper=cpp_wrapper)
        params, state = step.begin(plan.start)
        for s in range(3):
            index, mask = plan.batch_index[:, 0, s], plan.batch_mask[:, 0, s]
            params, state, _ = step(plan.data, params, state, index, mask, False)
    return {k: v.double().cpu() - start[k].double() for k, v in params.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="The routed step against float64.")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch._inductor.config

    from fedloom.data import load_dataset
    from fedloom.learning import FunctionalModel, build_model

    # compiled afresh (not from inductor's on-disk cache), so the pass counts
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    triton = op.uses_triton(torch.zeros(1, device=args.device))
    if not triton:
        sys.exit("Triton's kernels would not run: on a CPU set TRITON_INTERPRET=1")
    digits = load_dataset("digits")
    model = build_model("cnn", digits.input_shape, digits.num_classes, seed=0)
    examples = digits_clients()

    swapped, _ = op.swap_convs(model.module)
    rows = [  # name, model, compiled, routing's min_in_channels, nodes it routes,
        # and the least input channels of the convolutions Triton's kernels compute
        ("compiled, cuDNN", model, True, None, 0, None),
        ("eager, vmap rule", FunctionalModel(swapped), False, None, 0, 1),
        ("compiled, routed", model, True, 1, 4, 1),
        ("compiled, conv2 routed", model, True, 16, 2, 16),
        ("routed, ops compared", model, True, 1, 4, 1),
    ]
    device = args.device
    cuda = device.startswith("cuda")

    @functools.cache
    def references(triton_min_in: int | None) -> dict[str, Params]:
        """float64 steps; on a GPU, where tl.dot rounds its operands to TF32, with
        the Triton-computed convolutions rounding theirs so too (both ways)."""
        if not cuda or triton_min_in is None:
            return {"float64": three_steps(model, examples, device, torch.float64)}
        return {
            f"float64, TF32 {way}": three_steps(
                FunctionalModel(tf32_convs(model.module, triton_min_in, truncate)),
                examples,
                device,
                torch.float64,
            )
            for way, truncate in (("to nearest", False), ("truncated", True))
        }

    def off(got: Params, want: Params) -> dict[str, float]:
        return {
            k: float((got[k] - change).abs().max() / change.abs().max())
            for k, change in want.items()
        }

    # float32 (the interpreter), or on a GPU TF32, as tl.dot and cuDNN round
    torch.backends.cudnn.allow_tf32 = True
    errors: dict[str, dict[str, float]] = {}
    closest: dict[str, str] = {}
    failed = []
    for name, row_model, compile, min_in, nodes, triton_min_in in rows:
        RoutingFold.routed = RoutingFold.skipped = 0
        comparing = comparing_ops() if name == rows[-1][0] else contextlib.nullcontext()
        with comparing as op_errors:
            got = three_steps(
                row_model, examples, device, torch.float32, compile, min_in
            )
        offs = {ref: off(got, want) for ref, want in references(triton_min_in).items()}
        closest[name] = min(offs, key=lambda ref: max(offs[ref].values()))
        errors[name] = offs[closest[name]]
        if (RoutingFold.routed, RoutingFold.skipped) != (nodes, 0):
            failed.append(f"{name}: {RoutingFold.routed} nodes routed, not {nodes}")
    print("each parameter's change off by, as a fraction of the largest change:")
    print(f"{'':<10}" + "".join(f"{name:>26}" for name in errors))
    for k in next(iter(errors.values())):
        print(f"{k:<10}" + "".join(f"{e[k]:>26.2e}" for e in errors.values()))
    print(f"{'against':<10}" + "".join(f"{ref:>26}" for ref in closest.values()))
    worst_ops: dict[str, float] = {}
    for what, error in op_errors or []:
        worst_ops[what] = max(worst_ops.get(what, 0.0), error)
    print(
        "the routed operators against aten's on the same inputs (largest difference"
        f" over aten's largest value, {len(op_errors or [])} calls): "
        + ", ".join(f"{what} {error:.2e}" for what, error in worst_ops.items())
    )
    # float32 steps land some 1e-5 off (the parameters' own rounding); cuDNN's TF32
    # gradients 3.3e-4 on an H200 (2026-11-27)
    tolerance = 1e-3 if cuda else 1e-4
    for name, row in errors.items():
        if max(row.values()) > tolerance:
            failed.append(f"{name}: {max(row.values()):.2e} off")
    # one call's operands: TF32's rounding (to 2^-11 or 2^-10 of each, against
    # cuDNN's float32 forward and TF32 gradients) on a GPU; float32's here
    op_tolerance = 1e-2 if cuda else 1e-5
    if not worst_ops or max(worst_ops.values()) > op_tolerance:
        failed.append(f"routed operators against aten's: {worst_ops}")
    print(f"tolerance {tolerance:.0e} (the steps), {op_tolerance:.0e} (the operators)")
    if failed:
        sys.exit("FAILED: " + "; ".join(failed))
    print("all within it")


if __name__ == "__main__":
    main()
