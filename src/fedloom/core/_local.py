"""The ``local`` runtime: clients run one after another. It defines the semantics.

It lives in the core, beside the intrinsics, because it *is* their meaning: every
other runtime is tested against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, final

from ._runtime import Aggregator

__all__ = ["LocalRuntime"]


@final
class LocalRuntime:
    """The sequential reference runtime: a clients value is a list of members.

    >>> from fedloom.core import CLIENTS, LocalRuntime, computation, sum
    >>> computation(CLIENTS)(sum)([1.0, 2.0], runtime=LocalRuntime())
    3.0
    """

    name = "local"

    def from_members(self, members: Sequence[Any]) -> list[Any]:
        return list(members)

    def to_members(self, payload: list[Any]) -> list[Any]:
        return list(payload)

    def broadcast(self, value: Any, num_clients: int) -> list[Any]:
        return [value] * num_clients

    def map(self, fn: Callable[..., Any], payloads: Sequence[list[Any]]) -> list[Any]:
        sizes = {len(p) for p in payloads}
        if len(sizes) != 1:
            raise ValueError(f"map over client values of different sizes: {sizes}")
        return [fn(*members) for members in zip(*payloads, strict=True)]

    def aggregate(
        self,
        aggregator: Aggregator,
        payload: list[Any],
        weights: list[Any] | None,
        template: Any,
    ) -> Any:
        accumulator = aggregator.init(template)
        for i, value in enumerate(payload):
            weight = None if weights is None else weights[i]
            accumulator = aggregator.accumulate(accumulator, value, weight)
        return aggregator.finalize(accumulator)
