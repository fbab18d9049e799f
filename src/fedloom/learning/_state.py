"""Nested dicts of tensors to and from flat ``/``-separated names (for safetensors)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["flatten_tensors", "unflatten_tensors"]


def flatten_tensors(tree: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """``{"a": {"b": t}}`` -> ``{"a/b": t}``; every leaf must be a tensor."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"a state key may not contain '/': {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_tensors(value, name + "/"))
        elif isinstance(value, torch.Tensor):
            flat[name] = value
        else:
            raise TypeError(f"state entry {name!r} is a {type(value).__name__}")
    return flat


def unflatten_tensors(
    flat: dict[str, torch.Tensor], template: dict[str, Any]
) -> dict[str, Any]:
    """Rebuild ``template``'s structure from ``flat``, checking every entry.

    A missing, extra, misshapen or mistyped entry is a ``ValueError`` naming it.
    """
    expected = flatten_tensors(template)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(f"state entries missing: {missing}; unexpected: {extra}")
    for name, like in expected.items():
        got = flat[name]
        if got.shape != like.shape or got.dtype != like.dtype:
            raise ValueError(
                f"state entry {name!r} has shape {tuple(got.shape)} and dtype "
                f"{got.dtype}, expected {tuple(like.shape)} and {like.dtype}"
            )

    def build(node: dict[str, Any], prefix: str) -> dict[str, Any]:
        return {
            k: build(v, f"{prefix}{k}/") if isinstance(v, dict) else flat[prefix + k]
            for k, v in node.items()
        }

    return build(template, "")
