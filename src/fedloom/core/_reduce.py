"""The two reductions every runtime needs: a (weighted) sum and a (weighted) mean.

Sums are accumulated in float64 whatever the inputs' dtype and cast back at the end, so
the local runtime doubles as a float64 reference for faster runtimes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._cohort import Stacked
from ._tree import tree_flatten, tree_unflatten

__all__ = ["Mean", "Sum", "SumAccumulator", "stacked_weights", "weight_value"]


def weight_value(weight: Any) -> float:
    """A client weight as a float; rejects negative, NaN and infinite weights."""
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1:
            raise ValueError(
                f"a weight must be a scalar, got shape {tuple(weight.shape)}"
            )
        weight = weight.item()
    value = float(weight)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a weight must be finite and >= 0, got {value}")
    return value


def stacked_weights(weights: Stacked | None, size: int) -> torch.Tensor:
    """A chunk's weights as a float64 vector; rejects negative and non-finite ones."""
    if weights is None:
        return torch.ones(size, dtype=torch.float64)
    w = torch.as_tensor(weights.tree).reshape(size).to(torch.float64)
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        client = int(bad.nonzero()[0])
        raise ValueError(
            f"a weight must be finite and >= 0, got {float(w[client])} "
            f"(client {client} of the chunk)"
        )
    return w


def _to_float64(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return leaf.detach().to(torch.float64)
    if isinstance(leaf, np.ndarray | np.generic):
        return np.asarray(leaf, dtype=np.float64)
    if isinstance(leaf, bool) or not isinstance(leaf, int | float):
        raise TypeError(
            f"cannot sum a leaf of type {type(leaf).__name__}; "
            "expected a tensor, a numpy array or a number"
        )
    return float(leaf)


def _cast_like(total: Any, like: Any) -> Any:
    if isinstance(like, torch.Tensor) and like.is_floating_point():
        return total.to(like.dtype)
    if isinstance(like, np.ndarray) and np.issubdtype(like.dtype, np.floating):
        return total.astype(like.dtype)
    return total


@dataclass(frozen=True)
class SumAccumulator:
    """A running weighted sum of trees, in float64."""

    leaves: tuple[Any, ...] | None
    like: tuple[Any, ...] | None
    spec: Any
    total_weight: float
    count: int

    @staticmethod
    def empty() -> SumAccumulator:
        return SumAccumulator(None, None, None, 0.0, 0)

    def add(self, value: Any, weight: float) -> SumAccumulator:
        leaves, spec = tree_flatten(value)
        scaled = tuple(_to_float64(leaf) * weight for leaf in leaves)
        if self.leaves is None:
            return SumAccumulator(scaled, tuple(leaves), spec, weight, 1)
        if spec != self.spec:
            raise ValueError(
                f"client {self.count} sent a value of structure {spec}, "
                f"expected {self.spec}"
            )
        summed = tuple(a + b for a, b in zip(self.leaves, scaled, strict=True))
        return SumAccumulator(
            summed, self.like, spec, self.total_weight + weight, self.count + 1
        )

    def add_stacked(self, values: Any, weights: torch.Tensor) -> SumAccumulator:
        """Fold in a chunk of clients at once: leaves with a leading client axis."""
        leaves, spec = tree_flatten(values)
        w = weights.to(torch.float64)
        scaled = tuple(
            torch.tensordot(w.to(leaf.device), leaf.to(torch.float64), dims=1)
            for leaf in leaves
        )
        total = float(w.sum())
        if self.leaves is None:
            like = tuple(leaf[0] for leaf in leaves)
            return SumAccumulator(scaled, like, spec, total, len(w))
        if spec != self.spec:
            raise ValueError(
                f"clients sent values of structure {spec}, expected {self.spec}"
            )
        summed = tuple(a + b for a, b in zip(self.leaves, scaled, strict=True))
        return SumAccumulator(
            summed, self.like, spec, self.total_weight + total, self.count + len(w)
        )

    def result(self, scale: float = 1.0) -> Any:
        if self.leaves is None or self.like is None:
            raise ValueError("cannot reduce an empty cohort: no client values")
        leaves = [
            _cast_like(leaf * scale, like)
            for leaf, like in zip(self.leaves, self.like, strict=True)
        ]
        return tree_unflatten(leaves, self.spec)


@dataclass(frozen=True)
class Sum:
    """Aggregator: the sum of the clients' values (weights multiply, if given)."""

    def init(self, template: Any) -> SumAccumulator:
        return SumAccumulator.empty()

    def accumulate(self, accumulator: SumAccumulator, value: Any, weight: Any) -> Any:
        return accumulator.add(value, 1.0 if weight is None else weight_value(weight))

    def accumulate_stacked(
        self, accumulator: SumAccumulator, values: Stacked, weights: Stacked | None
    ) -> SumAccumulator:
        return accumulator.add_stacked(
            values.tree, stacked_weights(weights, values.size)
        )

    def finalize(self, accumulator: SumAccumulator) -> Any:
        return accumulator.result()


@dataclass(frozen=True)
class Mean(Sum):
    """Aggregator: the mean of the clients' values, weighted if weights are given.

    ``sum_i w_i x_i / sum_i w_i``; with no weights every client counts once. It
    accumulates exactly as :class:`Sum` does and only divides at the end.
    """

    def finalize(self, accumulator: SumAccumulator) -> Any:
        if accumulator.count and accumulator.total_weight <= 0:
            raise ValueError("cannot take a weighted mean: the weights sum to zero")
        return accumulator.result(1.0 / max(accumulator.total_weight, 1e-300))
