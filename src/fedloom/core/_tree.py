"""Nested containers of tensors and numbers ("trees"), as used by every runtime.

This module is the one place that touches PyTorch's private pytree module, so that a
future public replacement changes one import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.utils._pytree as _pytree

__all__ = [
    "register_dataclass",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "tree_unflatten",
]

TreeSpec = _pytree.TreeSpec


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` to the leaves of ``tree`` (and the matching leaves of ``rest``)."""
    return _pytree.tree_map(fn, tree, *rest)


def tree_leaves(tree: Any) -> list[Any]:
    """The leaves of ``tree`` in a fixed order."""
    return list(_pytree.tree_leaves(tree))


def tree_flatten(tree: Any) -> tuple[list[Any], TreeSpec]:
    """The leaves of ``tree`` and the structure to rebuild it."""
    leaves, spec = _pytree.tree_flatten(tree)
    return list(leaves), spec


def tree_unflatten(leaves: list[Any], spec: TreeSpec) -> Any:
    """Rebuild a tree from its leaves and structure."""
    return _pytree.tree_unflatten(leaves, spec)


def register_dataclass(cls: type) -> type:
    """Make a dataclass a tree node (its fields are children), e.g. for ``vmap``."""
    _pytree.register_dataclass(cls)
    return cls
