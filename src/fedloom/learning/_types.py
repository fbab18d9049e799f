"""The vocabulary of the learning API."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["OptState", "Params", "tree_bytes"]

Params = dict[str, torch.Tensor]
"""A model's parameters by name (the names of ``nn.Module.named_parameters``)."""

OptState = dict[str, Any]
"""An optimizer's state: nested dicts whose leaves are tensors."""


def tree_bytes(tree: Any) -> int:
    """The bytes a nested dict of tensors occupies on a wire (raw tensor bytes)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tree_bytes(v) for v in tree.values())
    raise TypeError(f"not a tensor tree leaf: {type(tree).__name__}")
