"""A compiler pass that folds SGD's update into the matrix product of the gradient.

A linear layer's weight gradient is a matrix product of two small factors (the
layer's inputs and the gradient at its outputs), and SGD's update of the weight is
``w + alpha * (a @ b)`` with ``alpha = -lr``. Inductor, compiling the vectorized
runtime's cohort step (which updates the stacked parameters in place), calls the
product as a library kernel that writes the whole gradient, then runs a loop that
reads the weight and that gradient and writes the weight. For a cohort of the 2NN
the first layer's weights are 10 x 784 x 200 floats (6 MB), and weight-sized memory
is streamed five times a step that way (read for the forward pass; the gradient
written, then read with the weight; the weight written), three times with the fold.
:class:`FoldUpdateIntoGemm` rewrites the pattern::

    w.copy_(aten.add(w, aten.bmm(a, b), alpha=alpha))   # how an in-place update
                                                       # reaches the post-grad graph
into::

    w.baddbmm_(a, b, alpha=alpha)                       # (aten.mm: w.addmm_)

one library call that accumulates the product into the weight where it lies, so the
gradient is never stored: a 10-client 2NN step (B = 10) runs 1.4-1.9x faster on a
2-core CPU (``benchmarks/gemm_update.py``; ``simulation_speed.py`` times rounds).
It only rewrites what it can prove is the same computation: ``w`` is a graph input
whose other users all come before the copy, the product and the sum feed nothing
else, shapes and dtypes agree, and neither factor is a view of ``w``. Anything else
(momentum, Adam, masked updates) compiles as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.lowering import lowerings, make_fallback
from torch.fx.experimental.symbolic_shapes import statically_known_true, sym_eq

__all__ = ["FoldUpdateIntoGemm"]

_aten = torch.ops.aten
_IN_PLACE = {
    _aten.bmm.default: _aten.baddbmm_.default,
    _aten.mm.default: _aten.addmm_.default,
}

# Inductor has no lowering of its own for these in-place products and would call the
# library kernel anyway (an "implicit fallback"), but where the environment sets CI
# (as GitHub Actions and most CI services do) it refuses to, because a decomposition
# of them exists. Registering the fallback explicitly says the library call is meant.
# (A custom operator calling them instead costs 25 us a call: 8-20 % of the step.)
for _op in _IN_PLACE.values():
    if _op not in lowerings:
        make_fallback(_op, warn=False)


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _views_of(node: Any, target: torch.fx.Node) -> bool:
    """Whether ``node`` may share memory with ``target`` (a chain of view ops)."""
    while isinstance(node, torch.fx.Node):
        if node is target:
            return True
        op = node.target
        if node.op != "call_function" or not getattr(op, "is_view", False):
            return False
        node = node.args[0]
    return False


def _fold(copy: torch.fx.Node, order: dict[torch.fx.Node, int]) -> bool:
    """Rewrite one ``w.copy_(w + alpha * (a @ b))``; False if it does not match."""
    weight, total = copy.args[0], copy.args[1]
    if not (
        isinstance(weight, torch.fx.Node)
        and weight.op == "placeholder"
        and isinstance(total, torch.fx.Node)
        and total.target is _aten.add.Tensor
        and len(total.args) == 2
        and total.args[0] is weight
        and set(total.kwargs) <= {"alpha"}
        and len(total.users) == 1
    ):
        return False
    product = total.args[1]
    if not (
        isinstance(product, torch.fx.Node)
        and product.target in _IN_PLACE
        and len(product.users) == 1
        and not any(_views_of(factor, weight) for factor in product.args)
    ):
        return False
    w, p = _val(weight), _val(product)
    if w is None or p is None or w.dtype != p.dtype:
        return False
    if not statically_known_true(sym_eq(tuple(w.shape), tuple(p.shape))):
        return False
    after = len(order)  # a node added by an earlier rewrite counts as after
    if any(order.get(u, after) > order[copy] for u in weight.users if u is not copy):
        return False
    graph = copy.graph
    with graph.inserting_before(copy):
        folded = graph.call_function(
            _IN_PLACE[product.target],
            (weight, *product.args),
            {"alpha": total.kwargs.get("alpha", 1)},
        )
    folded.meta.update(copy.meta)
    copy.replace_all_uses_with(weight)
    for node in (copy, total, product):
        graph.erase_node(node)
    return True


class FoldUpdateIntoGemm(CustomGraphPass):
    """Inductor post-grad pass: ``w.copy_(w + alpha * bmm(a, b))`` becomes
    ``w.baddbmm_(a, b, alpha=alpha)`` (and ``mm`` becomes ``addmm_``).

    Pass it as ``torch.compile(..., options={"post_grad_custom_post_pass":
    FoldUpdateIntoGemm()})``. ``folded`` counts the rewrites in the graphs it was
    run on: a graph that inductor finds in its on-disk cache is not compiled again,
    and the pass does not see it (the cache keys on :meth:`uuid`).
    """

    def __init__(self) -> None:
        self.folded = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        order = {node: i for i, node in enumerate(graph.nodes)}
        copies = [n for n in graph.nodes if n.target is _aten.copy_.default]
        self.folded += sum(_fold(copy, order) for copy in copies)

    def uuid(self) -> Any:
        # Inductor's cache keys compiled graphs on this: it changes with this file.
        return get_hash_for_files((__file__,))
