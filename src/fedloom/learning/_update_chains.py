"""Reading an in-place update out of a post-grad graph, and adding nodes to one,
for the compiler passes.

AOT autograd leaves a compiled step's in-place update of a tensor ``w`` (a graph
input) as ``w.copy_(new)``, where ``new`` is reached from ``w`` through one sum a
step: ``w + alpha * product`` for SGD's update of a linear layer's weight, or an
elementwise sum. :func:`update_chain` reads those sums back, in order.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_map

__all__ = [
    "PRODUCTS",
    "Sum",
    "as_sum",
    "is_product",
    "new_node",
    "update_chain",
    "val",
]

_aten = torch.ops.aten

PRODUCTS = (_aten.bmm.default, _aten.mm.default)
"""The matrix products an update's sum may add (a linear layer's weight gradient)."""


def val(node: Any) -> Any:
    """The value (a fake tensor) that ``node`` stands for, if it has one."""
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def new_node(
    graph: torch.fx.Graph, op: Any, *args: Any, **kwargs: Any
) -> torch.fx.Node:
    """A new node ``op(*args, **kwargs)`` where ``graph`` inserts, with the value it
    stands for (computed on the fake tensors of its inputs)."""
    node = graph.call_function(op, args, kwargs)
    fake_args, fake_kwargs = tree_map(
        lambda a: val(a) if isinstance(a, torch.fx.Node) else a, (args, kwargs)
    )
    mode = torch._guards.detect_fake_mode(fake_args)
    with mode if mode is not None else contextlib.nullcontext():
        node.meta["val"] = op(*fake_args, **fake_kwargs)
    return node


class Sum(NamedTuple):
    """One update of a chain: ``total = beta * previous + alpha * product``, or,
    with ``product`` None, the elementwise ``total = previous + alpha * other``."""

    total: torch.fx.Node
    previous: Any
    product: Any
    beta: Any
    alpha: Any


def as_sum(node: Any) -> Sum | None:
    """``node`` as ``previous + alpha * product`` (SGD: ``w - lr * g``), as
    ``product + beta * previous`` (momentum's velocity: ``g + beta * v``), or as an
    elementwise ``previous + alpha * other`` (momentum's weight: ``w - lr * v``)."""
    if not (
        isinstance(node, torch.fx.Node)
        and node.target is _aten.add.Tensor
        and len(node.args) == 2
        and set(node.kwargs) <= {"alpha"}
    ):
        return None
    first, second = node.args
    scale = node.kwargs.get("alpha", 1)
    if is_product(second):
        return Sum(node, first, second, 1, scale)
    if is_product(first):
        return Sum(node, second, first, scale, 1)
    return Sum(node, first, None, 1, scale)


def is_product(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and node.target in PRODUCTS


def update_chain(copy: torch.fx.Node) -> list[Sum] | None:
    """The sums from ``copy``'s input to its new value, in order (one for a single
    step; one a step when several steps are compiled together)."""
    weight: Any = copy.args[0]
    node: Any = copy.args[1]
    if not (isinstance(weight, torch.fx.Node) and weight.op == "placeholder"):
        return None
    chain = []
    while node is not weight:
        step = as_sum(node)
        if step is None:
            return None
        chain.append(step)
        node = step.previous
    return chain[::-1] or None
