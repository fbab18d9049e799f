"""The ``Runtime`` protocol: what a runtime implements to run computations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Aggregator", "Runtime"]

Acc = TypeVar("Acc")


@runtime_checkable
class Aggregator(Protocol):
    """Streaming aggregation of client values: ``init``, ``accumulate``, ``finalize``.

    A runtime folds the cohort's values into an accumulator one client (or one stacked
    chunk of clients) at a time, so a server holds O(model) memory, not O(cohort).
    ``init`` receives a trusted ``template`` (the structure, shapes and dtypes each
    client value must have), or ``None`` when the caller has none to give.
    """

    def init(self, template: Any) -> Any:
        """A fresh accumulator."""
        ...

    def accumulate(self, accumulator: Any, value: Any, weight: Any) -> Any:
        """Fold one client's value (with its weight) into the accumulator."""
        ...

    def finalize(self, accumulator: Any) -> Any:
        """The aggregate of everything accumulated."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """Where the intrinsics execute.

    A runtime decides how a value placed at ``CLIENTS`` is held (a list of member
    values for ``local``, stacked tensors for a vectorized runtime, connected devices
    for deployment); the intrinsics in :mod:`fedloom.core` check placements and then
    call these methods with the runtime's own payloads.
    """

    name: str

    def from_members(self, members: Sequence[Any]) -> Any:
        """The clients payload holding one value per client."""
        ...

    def to_members(self, payload: Any) -> list[Any]:
        """One value per client, in cohort order."""
        ...

    def broadcast(self, value: Any, num_clients: int) -> Any:
        """The clients payload in which every client holds ``value``."""
        ...

    def map(self, fn: Callable[..., Any], payloads: Sequence[Any]) -> Any:
        """``fn`` applied at every client to its members of ``payloads``."""
        ...

    def aggregate(
        self, aggregator: Aggregator, payload: Any, weights: Any | None, template: Any
    ) -> Any:
        """Stream the clients' values (and weights) through ``aggregator``."""
        ...
