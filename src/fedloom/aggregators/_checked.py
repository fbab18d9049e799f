"""``checked``: reject a malformed client value before it touches the aggregate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, final

import torch

from fedloom.core import Aggregator, tree_flatten

__all__ = ["Checked", "InvalidUpdateError", "checked"]


class InvalidUpdateError(ValueError):
    """A client value of the wrong structure, shape or dtype, or not finite."""


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
    return True


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
                    f"client {client}: value has structure {spec}, "
                    f"expected {accumulator.spec}"
                )
            assert accumulator.shapes is not None
            for i, (got, want) in enumerate(
                zip(signature, accumulator.shapes, strict=True)
            ):
                if got != want:
                    raise InvalidUpdateError(
                        f"client {client}: entry {i} has shape/dtype {got}, "
                        f"expected {want}"
                    )
        for i, leaf in enumerate(leaves):
            if not _finite(leaf):
                raise InvalidUpdateError(
                    f"client {client}: entry {i} (shape {_signature(leaf)[0]}) "
                    "contains NaN or infinity"
                )
        inner = self.inner.accumulate(accumulator.inner, value, weight)
        return _Accumulator(inner, spec, signature, client + 1)

    def finalize(self, accumulator: _Accumulator) -> Any:
        return self.inner.finalize(accumulator.inner)


def checked(inner: Aggregator) -> Checked:
    """Validate every client value before ``inner`` sees it."""
    return Checked(inner)
