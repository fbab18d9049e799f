"""``checked``: reject a malformed client value before it touches the aggregate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, final

import numpy as np
import torch

from fedloom.core import (
    Aggregator,
    Stacked,
    StackedAggregator,
    folds_stacked,
    tree_flatten,
    unstack,
)

__all__ = ["Checked", "InvalidUpdateError", "checked"]


class InvalidUpdateError(ValueError):
    """A client value of the wrong structure, shape or dtype, or not finite.

    ``client`` is the position in the cohort of the client whose value it was,
    where it was one client's (the message then starts "client <position>: "), and
    ``reason`` the rest of the message.
    """

    def __init__(self, reason: str, client: int | None = None) -> None:
        super().__init__(reason if client is None else f"client {client}: {reason}")
        self.reason = reason
        self.client = client


@dataclass(frozen=True)
class _Accumulator:
    inner: Any
    spec: Any
    shapes: tuple[tuple[tuple[int, ...], Any], ...] | None
    count: int


def _signature(leaf: Any) -> tuple[tuple[int, ...], Any]:
    if isinstance(leaf, torch.Tensor):
        return tuple(leaf.shape), leaf.dtype
    return (), type(leaf)


def _finite(leaf: Any) -> bool:
    if isinstance(leaf, torch.Tensor):
        return not leaf.is_floating_point() or bool(torch.isfinite(leaf).all())
    if isinstance(leaf, int | float):
        return math.isfinite(leaf)
    if isinstance(leaf, np.ndarray | np.generic):
        array = np.asarray(leaf)
        return not np.issubdtype(array.dtype, np.inexact) or bool(
            np.isfinite(array).all()
        )
    return True


def _surely_finite(leaves: list[Any]) -> bool:
    """Whether the floating-point tensors among ``leaves`` are finite, as their sums
    say: ``True`` proves it; ``False`` leaves it to an element-wise look.

    A NaN or an infinity makes any sum it enters NaN or infinite, so a finite sum
    proves its tensor finite; a sum that overflows (huge finite values, in the
    tensor's own precision) proves nothing. On a CPU a sum of 2M floats took 0.14 ms
    against 3.4 ms for ``isfinite(...).all()``, which writes a boolean an element;
    on a GPU the sums cost one synchronization in all.
    """
    floats = [
        leaf
        for leaf in leaves
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
    ]
    if not floats:
        return True
    device = floats[0].device
    sums = torch.stack([f.sum().to(device, torch.float64) for f in floats])
    return bool(torch.isfinite(sums).all())


@final
@dataclass(frozen=True)
class Checked:
    """Wrap an aggregator so every client value is validated first.

    The template given to ``init`` fixes the structure, shapes and dtypes a value must
    have; without a template, the first client's value fixes them. A value with NaN or
    infinity, or of another shape, raises :class:`InvalidUpdateError` naming the
    client's position in the cohort and the offending entry.
    """

    inner: Aggregator

    def init(self, template: Any) -> _Accumulator:
        if template is None:
            return _Accumulator(self.inner.init(None), None, None, 0)
        leaves, spec = tree_flatten(template)
        signature = tuple(_signature(leaf) for leaf in leaves)
        return _Accumulator(self.inner.init(template), spec, signature, 0)

    def accumulate(
        self, accumulator: _Accumulator, value: Any, weight: Any
    ) -> _Accumulator:
        leaves, spec = tree_flatten(value)
        signature = tuple(_signature(leaf) for leaf in leaves)
        client = accumulator.count
        if accumulator.spec is not None:
            if spec != accumulator.spec:
                raise InvalidUpdateError(
                    f"value has structure {spec}, expected {accumulator.spec}", client
                )
            assert accumulator.shapes is not None
            for i, (got, want) in enumerate(
                zip(signature, accumulator.shapes, strict=True)
            ):
                if got != want:
                    raise InvalidUpdateError(
                        f"entry {i} has shape/dtype {got}, expected {want}", client
                    )
        proved = _surely_finite(leaves)
        for i, leaf in enumerate(leaves):
            if not (proved and isinstance(leaf, torch.Tensor)) and not _finite(leaf):
                raise InvalidUpdateError(
                    f"entry {i} (shape {_signature(leaf)[0]}) contains NaN or infinity",
                    client,
                )
        inner = self.inner.accumulate(accumulator.inner, value, weight)
        return _Accumulator(inner, spec, signature, client + 1)

    def accumulate_stacked(
        self, accumulator: _Accumulator, values: Stacked, weights: Stacked | None
    ) -> _Accumulator:
        """Validate and fold in a chunk of clients stacked along a leading axis."""
        leaves, spec = tree_flatten(values.tree)
        signature = tuple((tuple(leaf.shape[1:]), leaf.dtype) for leaf in leaves)
        first = accumulator.count
        expected = accumulator.shapes if accumulator.spec is not None else signature
        if accumulator.spec is not None and spec != accumulator.spec:
            raise InvalidUpdateError(
                f"clients {first}..{first + values.size - 1}: values have structure "
                f"{spec}, expected {accumulator.spec}"
            )
        for i, (got, want) in enumerate(zip(signature, expected or (), strict=True)):
            if got != want:
                raise InvalidUpdateError(
                    f"clients {first}..{first + values.size - 1}: entry {i} has "
                    f"shape/dtype {got}, expected {want}"
                )
        proved = _surely_finite(leaves)
        for i, leaf in enumerate(leaves):
            if not proved and leaf.is_floating_point():
                finite = torch.isfinite(leaf.reshape(values.size, -1)).all(dim=1)
                if not bool(finite.all()):
                    client = first + int((~finite).nonzero()[0])
                    raise InvalidUpdateError(
                        f"entry {i} (shape {signature[i][0]}) contains NaN or infinity",
                        client,
                    )
        if isinstance(self.inner, StackedAggregator) and folds_stacked(self.inner):
            inner = self.inner.accumulate_stacked(accumulator.inner, values, weights)
        else:
            inner = accumulator.inner
            members = [None] * values.size if weights is None else unstack(weights)
            for value, weight in zip(unstack(values), members, strict=True):
                inner = self.inner.accumulate(inner, value, weight)
        return _Accumulator(inner, spec, signature, first + values.size)

    def finalize(self, accumulator: _Accumulator) -> Any:
        return self.inner.finalize(accumulator.inner)


def checked(inner: Aggregator) -> Checked:
    """Validate every client value before ``inner`` sees it."""
    return Checked(inner)
