"""How a batched runtime holds a cohort's values, and the protocol of functions that
can run on a whole cohort at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ._tree import tree_flatten, tree_map, tree_unflatten

__all__ = [
    "CohortFunction",
    "CohortOptions",
    "NotBatchable",
    "Replicated",
    "Stacked",
    "StackedAggregator",
    "folds_stacked",
    "longest_first",
    "stack",
    "tensor_versions",
    "unstack",
]


@dataclass(frozen=True)
class Stacked:
    """One value per client, every leaf stacked along a leading client axis."""

    tree: Any
    size: int


@dataclass(frozen=True)
class Replicated:
    """The same value at every client (a broadcast), held once."""

    value: Any
    size: int


@dataclass(frozen=True)
class CohortOptions:
    """How a batched runtime asks a :class:`CohortFunction` to compute.

    None changes what is computed, only how (up to floating-point rounding).
    """

    capture: bool = False
    """Capture fixed-shape loops as CUDA graphs, keep them, and replay them on later
    cohorts of the same shape (only ever true on a CUDA device)."""

    compile: bool = False
    """Compile the batched step with ``torch.compile`` and keep it for later cohorts
    (the vectorized runtime allows it on the CPU and on CUDA, where a capture replays
    the compiled step's kernels)."""

    steps_per_call: int = 1
    """With ``compile`` (the vectorized runtime: on the CPU): how many local steps
    one compiled call runs (unrolled into one graph), where every client has a
    batch in each."""

    def __post_init__(self) -> None:
        if self.steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {self.steps_per_call}")
        if self.steps_per_call > 1 and not self.compile:
            raise ValueError("steps_per_call > 1 needs compile=True")


class NotBatchable(Exception):
    """A :class:`CohortFunction` cannot compute this cohort as one batch without
    changing what it computes; the message says why."""


@runtime_checkable
class CohortFunction(Protocol):
    """A client function that can also run on a whole cohort in one computation.

    ``map_cohort`` receives, for each argument, a :class:`Stacked`, a
    :class:`Replicated` or a list of per-client members (values that cannot be
    stacked, such as datasets of unequal size), all on the same clients, and returns
    a :class:`Stacked` of what calling the function at every client would return.
    The sequential call remains the reference: both must agree up to floating-point
    rounding. ``options`` say how to compute (see :class:`CohortOptions`). Where
    this cohort cannot be one batch computation with that meaning, ``map_cohort``
    raises :class:`NotBatchable` before computing anything, and the runtime calls
    the function client by client instead. It may also have a method
    ``clients_at_once(args, device, options) -> int | None``: how many of these
    clients it computes fastest at once, where fewer than the runtime would take
    (asked before the cohort is cut into chunks, unless the runtime was given a
    chunk size); 0 where it computes them fastest unbatched, the function called
    client by client. And a method ``client_sizes(args) -> Sequence[int]``: each
    client's size (its number of examples), by which a runtime that cuts the
    cohort into chunks puts clients of like size together, largest first (the
    results stay in the cohort's order). And a method ``for_thread() -> Callable
    | None``: a copy of the function that another thread may call while this one
    runs, computing what it computes, by which a runtime may call it client by
    client on several threads at once; ``None`` where the results would then
    depend on the threads' timing (random numbers from a global stream).
    """

    def map_cohort(
        self, args: Sequence[Any], device: torch.device, options: CohortOptions
    ) -> Stacked:
        """The stacked results of the function at every client of the cohort."""
        ...


@runtime_checkable
class StackedAggregator(Protocol):
    """An aggregator that can also fold in a whole :class:`Stacked` chunk at once."""

    def accumulate_stacked(
        self, accumulator: Any, values: Stacked, weights: Stacked | None
    ) -> Any:
        """Fold in every client of the chunk (weights stacked the same way)."""
        ...


def longest_first(sizes: Sequence[int]) -> list[int] | None:
    """The clients' order by ``sizes``, largest first (equal ones in their own
    order): client i of the sorted cohort is client ``order[i]``; ``None`` where
    they are in that order already.

    >>> longest_first([3, 9, 3, 5]), longest_first([9, 5, 5])
    ([1, 3, 0, 2], None)
    """
    order = sorted(range(len(sizes)), key=[-n for n in sizes].__getitem__)
    return None if order == sorted(order) else order


def stack(members: Sequence[Any]) -> Stacked | None:
    """Stack per-client trees of tensors; ``None`` if they cannot be stacked (other
    leaf types, such as Python numbers, other structures, or other shapes)."""
    if not members:
        return None
    flat = [tree_flatten(member) for member in members]
    spec = flat[0][1]
    if any(other != spec for _, other in flat):
        return None
    columns = []
    for column in zip(*(leaves for leaves, _ in flat), strict=True):
        if not all(isinstance(v, torch.Tensor) for v in column):
            return None
        if len({(v.shape, v.dtype, v.device) for v in column}) != 1:
            return None
        columns.append(torch.stack(column))
    return Stacked(tree_unflatten(columns, spec), len(members))


def unstack(stacked: Stacked) -> list[Any]:
    """The per-client trees of a :class:`Stacked`."""
    return [
        tree_map(lambda leaf, i=i: leaf[i], stacked.tree) for i in range(stacked.size)
    ]


def folds_stacked(aggregator: Any) -> bool:
    """Whether a runtime may fold a stacked chunk through ``aggregator``'s
    ``accumulate_stacked``: it has one, defined where its ``accumulate`` is or
    further down (a subclass that overrides ``accumulate`` alone, to clip each
    update say, must see every client through it)."""
    if not isinstance(aggregator, StackedAggregator):
        return False
    mro = type(aggregator).__mro__

    def owner(name: str) -> type:
        return next(k for k in mro if name in vars(k))

    return issubclass(owner("accumulate_stacked"), owner("accumulate"))


def tensor_versions(payloads: Sequence[Any]) -> list[int]:
    """The version counters of every tensor in ``payloads`` (runtime payloads:
    lists of members, :class:`Stacked`, :class:`Replicated`): an in-place change
    of one, or of a view of one, changes its count."""
    versions = []
    for payload in payloads:
        if isinstance(payload, Stacked):
            payload = payload.tree
        elif isinstance(payload, Replicated):
            payload = payload.value
        for leaf in tree_flatten(payload)[0]:
            if isinstance(leaf, torch.Tensor) and not leaf.is_inference():
                versions.append(leaf._version)
    return versions
