"""A compiler pass that folds an optimizer's update into the gradient's matrix product.

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
gradient is never stored: a 10-client 2NN step (B = 10) ran 1.3-1.7x faster on the
2-core CPUs it was measured on (``benchmarks/compiled_step.py``;
``simulation_speed.py`` times rounds). Momentum's velocity,
``v.copy_(aten.add(aten.bmm(a, b), v, alpha=beta))``, becomes
``v.baddbmm_(a, b, beta=beta)`` the same way (its step up to 1.4x faster; no faster
on the latest of those machines).

Several steps compiled into one graph update a tensor in a chain,
``w.copy_(((w + p1) + p2) + p3)``; each sum with a product becomes ``w.baddbmm_`` in
turn, and an elementwise sum (momentum's ``w - lr * v``, a bias's update) is written
into ``w`` as soon as it is made (``w.copy_(w + x)`` at once), rather than into a new
buffer each step copied into ``w`` at the end. First, though, the chain of a layer
fed by the data (the 2NN's first) is rewritten into one update at the end of the
call, its steps' forward products into one (``_defer_update.py``), and that one
update folds.
It only rewrites what it can prove is the same computation: ``w`` is a graph input,
nothing reads it (or a view of it) after the first sum, nor a sum after the next,
the products feed nothing else, shapes and dtypes agree, and no factor of a product
is a view of ``w`` or of any other tensor the graph updates in place (a folded
product is computed where the update is, after other tensors' updates it may have
come before: such a factor would be read overwritten; a layer's weight product has
activations and gradients for factors, not weights). Anything else (Adam, masked
updates) compiles as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.lowering import lowerings, make_fallback
from torch.fx.experimental.symbolic_shapes import statically_known_true, sym_eq

from ._defer_update import defer_data_layer_updates
from ._update_chains import Sum, update_chain, val

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
# (A custom operator calling them instead costs 25 us a call: the step 13-22 % slower.)
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


def _views_of(node: Any, targets: set[torch.fx.Node]) -> bool:
    """Whether ``node`` may share memory with one of ``targets`` (through a chain of
    view ops)."""
    while isinstance(node, torch.fx.Node):
        if node in targets:
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


def _foldable(
    step: Sum,
    weight: torch.fx.Node,
    copy: torch.fx.Node,
    order: dict[torch.fx.Node, int],
    updated: set[torch.fx.Node],
) -> bool:
    """Whether ``step`` may write into ``weight``'s memory: its previous value (the
    weight or the previous sum) is read by nothing after it; a product (computed
    where the sum is once folded) reads no tensor the graph updates in place
    (``updated``: their inputs and every sum of their chains)."""
    w, product = step.previous, step.product
    other = step.total.args[1] if product is None else product
    factors = [other] if product is None else product.args
    if any(_views_of(f, {w, weight}) for f in factors):
        return False
    if product is not None and any(_views_of(f, updated) for f in factors):
        return False
    if product is not None and len(product.users) != 1:
        return False
    w_val, p_val = val(w), val(other)
    if w_val is None or p_val is None or w_val.dtype != p_val.dtype:
        return False
    if not statically_known_true(sym_eq(tuple(w_val.shape), tuple(p_val.shape))):
        return False
    return _read_before(w, step.total, order, {step.total, copy})


def _fold(
    copy: torch.fx.Node, order: dict[torch.fx.Node, int], updated: set[torch.fx.Node]
) -> tuple[int, int]:
    """Rewrite the updates that ``copy`` writes back: (products folded, elementwise
    sums written back in place); (0, 0) if they do not match."""
    chain = update_chain(copy)
    weight: Any = copy.args[0]
    if chain is None or not all(
        _foldable(s, weight, copy, order, updated) for s in chain
    ):
        return 0, 0
    if len(chain) == 1 and chain[0].product is None:
        return 0, 0  # one elementwise update: the copy at the end is as good
    graph = copy.graph
    for step in chain:
        if step.product is None:  # the sum, then written into the weight at once
            with graph.inserting_after(step.total):
                written = graph.call_function(_aten.copy_.default, (weight, step.total))
            written.meta.update(copy.meta)
            for user in list(step.total.users):
                if user is not written:
                    user.replace_input_with(step.total, weight)
            continue
        with graph.inserting_before(step.total):
            folded = graph.call_function(
                _IN_PLACE[step.product.target],
                (weight, *step.product.args),
                {"beta": step.beta, "alpha": step.alpha},
            )
        folded.meta.update(step.total.meta)
        step.total.replace_all_uses_with(weight)  # later readers read the weight
        graph.erase_node(step.total)
        graph.erase_node(step.product)
    copy.replace_all_uses_with(weight)
    graph.erase_node(copy)  # now w.copy_(w)
    products = sum(step.product is not None for step in chain)
    return products, len(chain) - products


class FoldUpdateIntoGemm(CustomGraphPass):
    """Inductor post-grad pass: ``w.copy_(w + alpha * bmm(a, b))`` becomes
    ``w.baddbmm_(a, b, alpha=alpha)``, ``v.copy_(bmm(a, b) + beta * v)`` becomes
    ``v.baddbmm_(a, b, beta=beta)`` (and ``mm`` becomes ``addmm_``); in a chain of
    several steps' updates each is done in place in turn. With ``defer`` (the
    default) it first runs :func:`defer_data_layer_updates` on the graph.

    Pass it as ``torch.compile(..., options={"post_grad_custom_post_pass":
    FoldUpdateIntoGemm()})``. ``folded`` counts the rewrites in the graphs it was
    run on: a graph that inductor finds in its on-disk cache is not compiled again,
    and the pass does not see it (the cache keys on :meth:`uuid`).
    """

    def __init__(self, *, defer: bool = True) -> None:
        self.defer = defer
        """Whether to defer data-fed layers' updates first (``_defer_update.py``)."""
        self.deferred = 0
        """Data-fed linear layers whose steps' updates were deferred to the end
        of the call (``_defer_update.py``), before folding."""
        self.folded = 0
        """Products folded into the tensor they update."""
        self.written_back = 0
        """Elementwise updates in a chain written into their tensor at once."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        if self.defer:
            self.deferred += defer_data_layer_updates(graph)
        order = {node: i for i, node in enumerate(graph.nodes)}
        copies = [n for n in graph.nodes if n.target is _aten.copy_.default]
        # Every tensor written in place, and what stands for it once folds write
        # it earlier: the sums of its chain (replaced by the tensor itself).
        updated: set[torch.fx.Node] = set()
        for copy in copies:
            if isinstance(copy.args[0], torch.fx.Node):
                updated.add(copy.args[0])
            updated.update(step.total for step in update_chain(copy) or [])
        for copy in copies:
            folded, written_back = _fold(copy, order, updated)
            self.folded += folded
            self.written_back += written_back

    def uuid(self) -> Any:
        # Inductor's cache keys compiled graphs on this: it changes with this file.
        here = Path(__file__).parent
        passes = ("_gemm_update.py", "_defer_update.py", "_update_chains.py")
        files = get_hash_for_files(tuple(str(here / name) for name in passes))
        return files, self.defer
