"""The federated intrinsics: the only operations that move values between placements.

Each intrinsic checks the placement of its arguments, then hands the runtime's payloads
to the runtime that made them. A misplaced value is a ``PlacementError`` naming the
intrinsic, the placement it expected and the one it got.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._cohort import tensor_versions
from ._placements import CLIENTS, SERVER, Placement, PlacementError
from ._reduce import Mean, Sum
from ._runtime import Aggregator
from ._tree import tree_flatten
from ._values import Execution, Placed

__all__ = ["PlacementError", "aggregate", "apply", "broadcast", "map", "mean", "sum"]


def _check(intrinsic: str, value: Any, expected: Placement, what: str = "") -> Placed:
    label = f"{intrinsic}{f' ({what})' if what else ''}"
    if not isinstance(value, Placed):
        raise PlacementError(
            f"{label} expects a value placed at {expected}, got an unplaced "
            f"{type(value).__name__}; place it by passing it to a @computation"
        )
    if value.placement != expected:
        raise PlacementError(
            f"{label} expects a value placed at {expected}, "
            f"got a value placed at {value.placement}"
        )
    return value


def _same_execution(intrinsic: str, values: list[Placed]) -> Execution:
    execution = values[0].execution
    for value in values[1:]:
        if value.execution is not execution:
            raise PlacementError(
                f"{intrinsic} got values from different computations or runtimes"
            )
    return execution


def broadcast(value: Placed) -> Placed:
    """Send a server value to every client: ``SERVER -> CLIENTS``.

    >>> from fedloom.core import SERVER, broadcast, computation
    >>> computation(SERVER)(broadcast)(3.0, num_clients=2)
    [3.0, 3.0]
    """
    value = _check("broadcast", value, SERVER)
    execution = value.execution
    if execution.num_clients is None:
        raise PlacementError(
            "broadcast: the computation has no argument placed at CLIENTS, so the "
            "cohort size is unknown; call it with num_clients="
        )
    payload = execution.runtime.broadcast(value.payload, execution.num_clients)
    return Placed(payload, CLIENTS, execution)


def map(fn: Callable[..., Any], *values: Placed) -> Placed:
    """Apply ``fn`` at every client to its members of ``values``: CLIENTS -> CLIENTS.

    ``fn`` is a plain function of one client's values; server values must be
    broadcast first.

    >>> from fedloom.core import CLIENTS, computation, map
    >>> computation(CLIENTS)(lambda x: map(lambda v: v * 2, x))([1, 2, 3])
    [2, 4, 6]
    """
    if not values:
        raise PlacementError("map needs at least one value placed at CLIENTS")
    checked = [_check("map", v, CLIENTS, f"argument {i}") for i, v in enumerate(values)]
    execution = _same_execution("map", checked)
    payloads = [v.payload for v in checked]
    versions = tensor_versions(payloads)
    payload = execution.runtime.map(fn, payloads)
    if tensor_versions(payloads) != versions:
        raise ValueError(
            f"map: {getattr(fn, '__qualname__', fn)!r} modified its arguments in "
            "place; a client's arguments may be the server's or the caller's own "
            "tensors (a broadcast is not copied), so it must return new values"
        )
    return Placed(payload, CLIENTS, execution)


def apply(fn: Callable[..., Any], *values: Placed) -> Placed:
    """Apply ``fn`` at the server: ``SERVER -> SERVER``.

    >>> from fedloom.core import SERVER, apply, computation
    >>> computation(SERVER)(lambda x: apply(lambda v: v + 1, x))(41)
    42
    """
    if not values:
        raise PlacementError("apply needs at least one value placed at SERVER")
    checked = [
        _check("apply", v, SERVER, f"argument {i}") for i, v in enumerate(values)
    ]
    execution = _same_execution("apply", checked)
    result = fn(*(v.payload for v in checked))
    if any(isinstance(leaf, Placed) for leaf in tree_flatten(result)[0]):
        raise PlacementError(
            "apply: the function returned a placed value; a value at CLIENTS "
            "reaches the server only through an aggregation (sum, mean, aggregate)"
        )
    return Placed(result, SERVER, execution)


def aggregate(
    aggregator: Aggregator,
    values: Placed,
    weight: Placed | None = None,
    *,
    template: Placed | None = None,
) -> Placed:
    """Reduce client values to one server value through ``aggregator``.

    ``weight`` (at CLIENTS) gives each client's weight; ``template`` (at SERVER), when
    given, is the trusted structure every client value must match: an aggregator uses
    it to reject a malformed update before it touches the aggregate.
    """
    values = _check("aggregate", values, CLIENTS, "values")
    placed = [values]
    if weight is not None:
        placed.append(_check("aggregate", weight, CLIENTS, "weight"))
    if template is not None:
        placed.append(_check("aggregate", template, SERVER, "template"))
    execution = _same_execution("aggregate", placed)
    result = execution.runtime.aggregate(
        aggregator,
        values.payload,
        None if weight is None else weight.payload,
        None if template is None else template.payload,
    )
    return Placed(result, SERVER, execution)


def sum(values: Placed, weight: Placed | None = None) -> Placed:
    """The sum of the clients' values (times their weights, if given) at the server.

    >>> from fedloom.core import CLIENTS, computation, sum
    >>> computation(CLIENTS)(sum)([1.0, 2.0, 3.5])
    6.5
    """
    _check("sum", values, CLIENTS)
    return aggregate(Sum(), values, weight)


def mean(values: Placed, weight: Placed | None = None) -> Placed:
    """The mean of the clients' values at the server, weighted if ``weight`` is given.

    >>> from fedloom.core import CLIENTS, computation, mean
    >>> computation(CLIENTS, CLIENTS)(mean)([1.0, 4.0], [3.0, 1.0])
    1.75
    """
    _check("mean", values, CLIENTS)
    if weight is not None:
        _check("mean", weight, CLIENTS, "weight")
    return aggregate(Mean(), values, weight)
