"""The two reductions every runtime needs: a (weighted) sum and a (weighted) mean.

Sums of floating-point values are accumulated in float64 whatever the inputs' dtype
and cast back at the end, so the local runtime doubles as a float64 reference for
faster runtimes. Integer values with whole weights (counts, histograms) are summed
exactly, in int64 (Python ints for Python ints); a mean of them is a float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    w = torch.as_tensor(weights.tree)
    if w.numel() != size:
        raise ValueError(
            f"a weight must be a scalar, got shape {tuple(w.shape[1:])} a client"
        )
    w = w.reshape(size).to(torch.float64)
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        client = int(bad.nonzero()[0])
        raise ValueError(
            f"a weight must be finite and >= 0, got {float(w[client])} "
            f"(client {client} of the chunk)"
        )
    return w


def _integral(leaf: Any) -> bool:
    if isinstance(leaf, torch.Tensor):
        return not (leaf.is_floating_point() or leaf.is_complex())
    if isinstance(leaf, np.ndarray | np.generic):
        return bool(np.issubdtype(np.asarray(leaf).dtype, np.integer))
    return isinstance(leaf, int)


def _scaled(leaf: Any, weight: float) -> Any:
    """``leaf * weight`` in the accumulator's type: exact for integers times a
    whole weight (int64, or a Python int), float64 otherwise."""
    if isinstance(leaf, bool) or not isinstance(
        leaf, torch.Tensor | np.ndarray | np.generic | int | float
    ):
        raise TypeError(
            f"cannot sum a leaf of type {type(leaf).__name__}; "
            "expected a tensor, a numpy array or a number"
        )
    if _integral(leaf) and float(weight).is_integer():
        if isinstance(leaf, torch.Tensor):
            return leaf.detach().to(torch.int64) * int(weight)
        if isinstance(leaf, int):
            return leaf * int(weight)
        return np.asarray(leaf, dtype=np.int64) * int(weight)
    if isinstance(leaf, torch.Tensor):
        return leaf.detach().to(torch.float64) * weight
    if isinstance(leaf, np.ndarray | np.generic):
        return np.asarray(leaf, dtype=np.float64) * weight
    return float(leaf) * weight


def _whole_sum(weights: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """Integer values times whole weights, summed over the client axis, in int64
    (elementwise: no integer matrix product on every device)."""
    w = weights.to(leaf.device, torch.int64).view(-1, *[1] * (leaf.dim() - 1))
    return (leaf.to(torch.int64) * w).sum(dim=0)


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(np.shape(leaf)) if not isinstance(leaf, torch.Tensor) else leaf.shape


def _check_shapes(
    leaves: Sequence[Any], like: Sequence[Any], who: str, client_axis: bool = False
) -> None:
    """Every leaf shaped as the first client's (a sum must not broadcast)."""
    for i, (leaf, first) in enumerate(zip(leaves, like, strict=True)):
        shape = tuple(_shape(leaf))[1:] if client_axis else tuple(_shape(leaf))
        if shape != tuple(_shape(first)):
            raise ValueError(
                f"{who} sent entry {i} of shape {shape}, expected "
                f"{tuple(_shape(first))} (as the first client's)"
            )


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
        scaled = tuple(_scaled(leaf, weight) for leaf in leaves)
        if self.leaves is None or self.like is None:
            return SumAccumulator(scaled, tuple(leaves), spec, weight, 1)
        if spec != self.spec:
            raise ValueError(
                f"client {self.count} sent a value of structure {spec}, "
                f"expected {self.spec}"
            )
        _check_shapes(leaves, self.like, f"client {self.count}")
        summed = tuple(a + b for a, b in zip(self.leaves, scaled, strict=True))
        return SumAccumulator(
            summed, self.like, spec, self.total_weight + weight, self.count + 1
        )

    def add_stacked(self, values: Any, weights: torch.Tensor) -> SumAccumulator:
        """Fold in a chunk of clients at once: leaves with a leading client axis."""
        leaves, spec = tree_flatten(values)
        w = weights.to(torch.float64)
        whole = bool((w == w.round()).all())
        scaled = tuple(
            _whole_sum(w, leaf)
            if whole and _integral(leaf)
            else torch.tensordot(w.to(leaf.device), leaf.to(torch.float64), dims=1)
            for leaf in leaves
        )
        total = float(w.sum())
        if self.leaves is None or self.like is None:
            like = tuple(leaf[0] for leaf in leaves)
            return SumAccumulator(scaled, like, spec, total, len(w))
        if spec != self.spec:
            raise ValueError(
                f"clients sent values of structure {spec}, expected {self.spec}"
            )
        _check_shapes(leaves, self.like, f"clients {self.count}..", client_axis=True)
        summed = tuple(a + b for a, b in zip(self.leaves, scaled, strict=True))
        return SumAccumulator(
            summed, self.like, spec, self.total_weight + total, self.count + len(w)
        )

    def result(self, divisor: float | None = None) -> Any:
        """The sum, or the sum divided by ``divisor`` (a float64 then)."""
        if self.leaves is None or self.like is None:
            raise ValueError("cannot reduce an empty cohort: no client values")
        leaves = [
            _cast_like(leaf if divisor is None else _float64(leaf) / divisor, like)
            for leaf, like in zip(self.leaves, self.like, strict=True)
        ]
        return tree_unflatten(leaves, self.spec)


def _float64(total: Any) -> Any:
    if isinstance(total, torch.Tensor):
        return total.to(torch.float64)
    if isinstance(total, np.ndarray | np.generic):
        return np.asarray(total, dtype=np.float64)
    return float(total)


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
        return accumulator.result(accumulator.total_weight)
