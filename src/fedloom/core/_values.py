"""Placed values: a payload, where it lives, and the execution it belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._placements import CLIENTS, Placement, PlacementError
from ._runtime import Runtime

__all__ = ["Execution", "Placed"]


@dataclass(frozen=True, eq=False)
class Execution:
    """One invocation of a computation: the runtime and the cohort's size.

    ``num_clients`` is ``None`` for a computation with no client arguments that was
    not told a cohort size; such a computation cannot broadcast.
    """

    runtime: Runtime
    num_clients: int | None


@dataclass(frozen=True, eq=False)
class Placed:
    """A value at ``SERVER`` or at ``CLIENTS`` inside one execution.

    At ``SERVER`` the payload is the value itself; at ``CLIENTS`` it is whatever the
    runtime uses to hold one value per client. Users meet ``Placed`` values only inside
    a ``@computation``; the computation places its arguments and unwraps its result.
    """

    payload: Any
    placement: Placement
    execution: Execution

    def __bool__(self) -> bool:
        raise PlacementError(
            f"a value placed at {self.placement} has no truth value inside a "
            "computation: decide at the server with apply, or at each client "
            "with map"
        )

    def __repr__(self) -> str:
        where = self.placement.name
        if self.placement == CLIENTS:
            where += f"[{self.execution.num_clients}]"
        return f"Placed@{where}({type(self.payload).__name__})"
