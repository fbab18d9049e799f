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
gradient is never stored: a 10-client 2NN step (B = 10) runs 1.4-1.7x faster on a
2-core CPU (``benchmarks/compiled_step.py``; ``simulation_speed.py`` times rounds).
Several steps compiled into one graph update the weight in a chain,
``w.copy_(((w + p1) + p2) + p3)``; each sum becomes ``w.baddbmm_`` in turn.
It only rewrites what it can prove is the same computation: ``w`` is a graph input,
nothing reads it (or a view of it) after the first sum, nor a sum after the next,
the products feed nothing else, shapes and dtypes agree, and no factor is a view of
``w``. Anything else (momentum, Adam, masked updates) compiles as before.
"""

from __future__ import annotations

import logging
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


class _NoShimExpected(logging.Filter):
    """Drops inductor's warning, at each compilation with ``cpp_wrapper``, that
    these products have no C shim: they are called through the dispatcher (from
    C++, no Python), which is what the fold wants."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            str(record.msg).startswith("%s is missing a c-shim")
            and bool(record.args)
            and isinstance(record.args, tuple)
            and record.args[0] in _IN_PLACE.values()
        )


logging.getLogger("torch._inductor.ir").addFilter(_NoShimExpected())


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


def _read_before(
    node: torch.fx.Node,
    limit: torch.fx.Node,
    order: dict[torch.fx.Node, int],
    exclude: set[torch.fx.Node],
) -> bool:
    """Whether every reader of ``node`` but ``exclude`` comes before ``limit``,
    following views (a view read later would read the overwritten memory)."""
    after = len(order)  # a node added by an earlier rewrite counts as after
    readers = [u for u in node.users if u not in exclude]
    while readers:
        reader = readers.pop()
        if order.get(reader, after) >= order[limit]:
            return False
        if reader.op == "call_function" and getattr(reader.target, "is_view", False):
            readers.extend(reader.users)
    return True


def _update_chain(copy: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The sums ``w + alpha * p`` from ``copy``'s input to its new value, in order
    (one for a single step; one a step when several steps are compiled together)."""
    weight: Any = copy.args[0]
    node: Any = copy.args[1]
    if not (isinstance(weight, torch.fx.Node) and weight.op == "placeholder"):
        return None
    chain = []
    while node is not weight:
        if not (
            isinstance(node, torch.fx.Node)
            and node.target is _aten.add.Tensor
            and len(node.args) == 2
            and set(node.kwargs) <= {"alpha"}
        ):
            return None
        chain.append(node)
        node = node.args[0]
    return chain[::-1] or None


def _foldable(
    total: torch.fx.Node,
    weight: torch.fx.Node,
    copy: torch.fx.Node,
    order: dict[torch.fx.Node, int],
) -> bool:
    """Whether ``total = w + alpha * (a @ b)`` may accumulate into ``weight``'s
    memory: ``w`` (the weight or the previous sum) is read by nothing after it."""
    w: Any = total.args[0]
    product: Any = total.args[1]
    if not (
        isinstance(product, torch.fx.Node)
        and product.target in _IN_PLACE
        and len(product.users) == 1
        and not any(_views_of(f, w) or _views_of(f, weight) for f in product.args)
    ):
        return False
    w_val, p_val = _val(w), _val(product)
    if w_val is None or p_val is None or w_val.dtype != p_val.dtype:
        return False
    if not statically_known_true(sym_eq(tuple(w_val.shape), tuple(p_val.shape))):
        return False
    return _read_before(w, total, order, {total, copy})


def _fold(copy: torch.fx.Node, order: dict[torch.fx.Node, int]) -> int:
    """Rewrite the updates that ``copy`` writes back; how many (0: no match)."""
    chain = _update_chain(copy)
    weight: Any = copy.args[0]
    if chain is None or not all(_foldable(t, weight, copy, order) for t in chain):
        return 0
    graph = copy.graph
    for total in chain:
        product: Any = total.args[1]
        with graph.inserting_before(total):
            folded = graph.call_function(
                _IN_PLACE[product.target],
                (weight, *product.args),
                {"alpha": total.kwargs.get("alpha", 1)},
            )
        folded.meta.update(total.meta)
        total.replace_all_uses_with(weight)  # the next step reads the weight
        graph.erase_node(total)
        graph.erase_node(product)
    copy.replace_all_uses_with(weight)
    graph.erase_node(copy)  # now w.copy_(w)
    return len(chain)


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
