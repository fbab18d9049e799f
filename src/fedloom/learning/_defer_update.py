"""Deferring a data-fed linear layer's updates to the end of a compiled call.

With ``steps_per_call=K`` the vectorized runtime unrolls K SGD steps into one
compiled graph. A linear layer whose input is the data itself (the 2NN's first
layer: its input needs no gradient) then runs, at each step s,

    y_s = x_s @ w_s.T                       (the forward pass)
    w_{s+1} = w_s + alpha * a_s @ b_s       (SGD: a_s the gradient at the layer's
                                             outputs, transposed; b_s its input)

K products of B rows against the whole weight, and K updates of rank B, each
reading and writing all of it: for a cohort of the 2NN 10 x 200 x 784 floats
(6 MB) for little arithmetic. Since ``w_s = w_0 + alpha * a_{<s} @ b_{<s}``, with
``a_{<s}`` the a_r (r < s) side by side and ``b_{<s}`` the b_r stacked,

    y_s = x_s @ w_0.T + alpha * (x_s @ b_{<s}.T) @ a_{<s}.T

:func:`defer_data_layer_updates` rewrites the graph so: the data of all K steps is
known before the first, so the K products against ``w_0`` become one with K*B
rows; each later step adds a small correction (B x r*B products, r the steps
before it); and the K updates become one of rank K*B at the end,
``w_K = w_0 + alpha * a_{<K} @ b_{<K}``, which ``FoldUpdateIntoGemm`` then
accumulates into ``w`` where it lies. The arithmetic is the same, rounded
differently (in float64 equal to 1e-10, the tests). The weight is read twice a call
instead of 2K times, and the products have K times the rows: the 2NN's step, five
steps a call, 10 clients, B = 10, ran 1.18x faster on a 2-core CPU, at one thread
and at two (0.656 -> 0.557 ms, ``benchmarks/compiled_step.py``).

The corrections grow with B and K (B^2 K^2 against K B for the rest), so a layer is
deferred only where they add at most a fifth to its arithmetic (:data:`MAX_EXTRA`):
the 2NN at B = 10, not at B = 50 or with full batches, nor a layer with few
outputs such as logistic regression's. Only what it can prove is that computation is
rewritten: ``w`` is a graph input updated by a chain of sums
``w + alpha * bmm(a, b)`` (one alpha, static shapes); every other reader of ``w`` or
of a sum comes before the copy into ``w`` and is ``bmm(x, w_s.T)`` whose ``x``,
like every ``b``, depends on no tensor the graph updates (it is the data, or
computed from it), and what computes them can move before the first step (no
in-place or random op). Momentum, weight decay, a layer whose input needs a
gradient and a masked step are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.fx import Graph, Node

from ._update_chains import Sum, new_node, update_chain, val

__all__ = ["correction_share", "defer_data_layer_updates"]

_aten = torch.ops.aten

MAX_EXTRA = 0.2
"""The most the corrections may add to a layer's arithmetic for it to be deferred.
The 2NN's first layer (784 inputs, 200 outputs), B = 10: 6 % at five steps a call
(the step 1.18x faster) and 14 % at ten (1.24x, one-off); at B = 50 and five
steps 31 %, and in a one-off eager timing of that layer alone the rewrite was 1.7x
slower there."""


class _Forward(NamedTuple):
    """A forward product ``bmm(x, w_s.T)`` of the weight as it was after s steps."""

    version: int
    product: Node
    views: list[Node]
    """The nodes between ``w_s`` and the product: its transpose (and an expand)."""


def defer_data_layer_updates(graph: Graph) -> int:
    """Rewrite, in ``graph``, each data-fed linear layer updated in several steps
    as the module docstring says; returns how many were rewritten."""
    copies = [n for n in graph.nodes if n.target is _aten.copy_.default]
    written = {c.args[0] for c in copies if isinstance(c.args[0], Node)}
    # found again after each rewrite, which adds nodes that read the weight
    return sum(_defer(copy, _depending_on(graph, written)) for copy in copies)


def _depending_on(graph: Graph, sources: set[Any]) -> set[Node]:
    """Every node computed from one of ``sources`` (themselves included)."""
    found = set(sources)
    for node in graph.nodes:
        if any(i in found for i in node.all_input_nodes):
            found.add(node)
    return found


def _static(node: Any) -> bool:
    value = val(node)
    return isinstance(value, torch.Tensor) and all(
        isinstance(d, int) for d in value.shape
    )


def _transposed_reader(node: Node) -> tuple[Node, list[Node]] | None:
    """(the product, the views) if ``node`` is ``permute(w_s, [0, 2, 1])``, maybe
    expanded to its own shape, read only as the right factor of one ``bmm``."""
    dims: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dims")
    if node.target is not _aten.permute.default or dims is None:
        return None
    if list(dims) != [0, 2, 1] or val(node) is None:
        return None
    views = [node]
    while len(views[-1].users) == 1:
        user = next(iter(views[-1].users))
        size: Any = user.args[1] if len(user.args) > 1 else user.kwargs.get("size")
        if (
            user.target is _aten.expand.default
            and size is not None
            and list(size) == list(val(views[-1]).shape)
        ):
            views.append(user)
            continue
        if user.target is _aten.bmm.default and user.args == (user.args[0], views[-1]):
            return user, views
        return None
    return None


def _movable(node: Node) -> bool:
    """Whether ``node`` may run earlier: a pure, not random, operator."""
    op = node.target
    return (
        node.op == "call_function"
        and isinstance(op, torch._ops.OpOverload)
        and not op._schema.is_mutable
        and torch.Tag.nondeterministic_seeded not in op.tags
    )


def _ancestors_after(
    nodes: Sequence[Any], limit: Node, order: dict[Node, int]
) -> list[Node] | None:
    """What computes ``nodes`` and comes after ``limit``, in graph order; None if
    one of them may not move (see :func:`_movable`)."""
    found: set[Node] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node in found or node.op == "placeholder" or order[node] < order[limit]:
            continue
        if not _movable(node):
            return None
        found.add(node)
        stack.extend(node.all_input_nodes)
    return sorted(found, key=order.__getitem__)


def _cat(graph: Graph, nodes: list[Any], dim: int) -> Node:
    if len(nodes) == 1:
        return nodes[0]
    return new_node(graph, _aten.cat.default, nodes, dim)


def _transpose(graph: Graph, node: Any) -> Node:
    return new_node(graph, _aten.permute.default, node, [0, 2, 1])


def _rows(node: Any) -> int:
    return int(val(node).shape[1])


def _readers(
    chain: list[Sum], copy: Node, tainted: set[Node], order: dict[Node, int]
) -> list[_Forward] | None:
    """The forward products of the weight's versions; None if a version has a
    reader other than the next sum (the copy, for the last) and such products."""
    versions: list[Any] = [copy.args[0], *(s.total for s in chain)]
    nexts = [*(s.total for s in chain), copy]
    forwards = []
    for s, (version, following) in enumerate(zip(versions, nexts, strict=True)):
        for user in version.users:
            if user is following or user is copy:  # the copy writes into w
                continue
            if order[user] > order[copy]:  # reads w as the copy leaves it
                return None
            found = _transposed_reader(user)
            if found is None or found[0].args[0] in tainted:
                return None
            if not (_static(found[0]) and _static(found[0].args[0])):
                return None
            forwards.append(_Forward(s, *found))
    return forwards


def _matches(chain: list[Sum] | None, weight: Any, tainted: set[Node]) -> bool:
    """Whether ``chain`` is at least two SGD updates ``w + alpha * bmm(a, b)`` of
    a static weight, with one alpha and each ``b`` free of updated tensors."""
    if chain is None or len(chain) < 2 or not _static(weight):
        return False
    alpha = chain[0].alpha
    for step in chain:
        product = step.product
        if (
            product is None
            or product.target is not _aten.bmm.default
            or len(product.users) != 1
            or step.beta != 1
            or isinstance(step.alpha, Node)
            or step.alpha != alpha
            or product.args[1] in tainted
            or not all(_static(f) for f in product.args)
            or val(product).dtype != val(weight).dtype
        ):
            return False
    return True


def correction_share(rows: int, steps: int, inputs: int, outputs: int) -> float:
    """What the corrections add to a deferred layer's arithmetic: B^2 (I + O) K
    (K - 1) multiply-adds a client against 4 K B I O (forward products and
    updates), for K steps of B rows, I inputs, O outputs."""
    return rows * (steps - 1) * (inputs + outputs) / (4 * inputs * outputs)


def _pays(chain: list[Sum], weight: Any) -> bool:
    """Whether the corrections add at most :data:`MAX_EXTRA` to the layer's
    arithmetic (:func:`correction_share`)."""
    _, outputs, inputs = val(weight).shape
    rows = max(int(val(s.product.args[1]).shape[1]) for s in chain)
    return correction_share(rows, len(chain), inputs, outputs) <= MAX_EXTRA


def _defer(copy: Node, tainted: set[Node]) -> int:
    chain = update_chain(copy)
    weight = copy.args[0]
    if chain is None or not _matches(chain, weight, tainted):
        return 0
    if not _pays(chain, weight):
        return 0
    graph = copy.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    forwards = _readers(chain, copy, tainted, order)
    if forwards is None:
        return 0
    assert isinstance(weight, Node)
    first = min(weight.users, key=order.__getitem__)
    forwards.sort(key=lambda f: order[f.product])
    xs = [f.product.args[0] for f in forwards]
    bs = [s.product.args[1] for s in chain]
    a_s = [s.product.args[0] for s in chain]
    moving = _ancestors_after([*xs, *bs], first, order)
    if moving is None:
        return 0
    for node in moving:  # the data of every step, before the first
        first.prepend(node)
    alpha = chain[0].alpha
    with graph.inserting_before(first):
        b_all = _cat(graph, bs, 1)
        if forwards:
            y_all = new_node(
                graph, _aten.bmm.default, _cat(graph, xs, 1), _transpose(graph, weight)
            )
    offset = 0
    for forward, x in zip(forwards, xs, strict=True):
        product = forward.product
        with graph.inserting_before(product):
            y = new_node(graph, _aten.slice.Tensor, y_all, 1, offset, offset + _rows(x))
            offset += _rows(x)
            s = forward.version
            if s:
                done = sum(_rows(b) for b in bs[:s])
                b_before = new_node(graph, _aten.slice.Tensor, b_all, 1, 0, done)
                b_before_t = _transpose(graph, b_before)
                gram = new_node(graph, _aten.bmm.default, x, b_before_t)
                a_before = _cat(graph, [_transpose(graph, a) for a in a_s[:s]], 1)
                correction = new_node(graph, _aten.bmm.default, gram, a_before)
                y = new_node(graph, _aten.add.Tensor, y, correction, alpha=alpha)
        product.replace_all_uses_with(y)
        for node in [product, *reversed(forward.views)]:
            graph.erase_node(node)
    with graph.inserting_before(copy):
        update = new_node(graph, _aten.bmm.default, _cat(graph, a_s, 2), b_all)
        total = new_node(graph, _aten.add.Tensor, weight, update, alpha=alpha)
    copy.update_arg(1, total)
    for step in reversed(chain):
        graph.erase_node(step.total)
        graph.erase_node(step.product)
    return 1
