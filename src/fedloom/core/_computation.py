"""``@computation``: a Python function over placed values, runnable on any runtime."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar

import numpy as np
import torch

from ._local import LocalRuntime
from ._placements import CLIENTS, SERVER, Placement
from ._runtime import Runtime
from ._tree import tree_map
from ._values import Execution, Placed

__all__ = ["Computation", "computation"]

P = ParamSpec("P")
R = TypeVar("R")


class Computation(Generic[R]):
    """A function whose arguments are placed before it runs and unwrapped after.

    Called with plain Python values, it places each argument where its declaration
    says (``SERVER``, ``CLIENTS``: a sequence with one member per client, or ``None``:
    left as it is), runs on ``runtime`` (the sequential ``LocalRuntime`` by default),
    and returns server results as values and client results as lists. Called from
    inside another computation with placed values, it simply composes.
    """

    def __init__(
        self, fn: Callable[..., R], placements: tuple[Placement | None, ...]
    ) -> None:
        parameters = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        required = [p for p in parameters if p.default is p.empty]
        if not len(required) <= len(placements) <= len(parameters):
            raise TypeError(
                f"@computation on {fn.__qualname__} declares {len(placements)} "
                f"placement(s) for {len(parameters)} positional parameter(s)"
            )
        for placement in placements:
            if placement is not None and placement not in (SERVER, CLIENTS):
                raise TypeError(f"not a placement: {placement!r}")
        self.fn = fn
        self.placements = placements
        functools.update_wrapper(self, fn)

    def __call__(
        self,
        *args: Any,
        runtime: Runtime | None = None,
        num_clients: int | None = None,
    ) -> Any:
        if len(args) != len(self.placements):
            raise TypeError(
                f"{self.fn.__qualname__} takes {len(self.placements)} argument(s), "
                f"got {len(args)}"
            )
        if any(isinstance(a, Placed) for a in args):
            return self._compose(args)
        if runtime is not None and not isinstance(runtime, Runtime):
            raise TypeError(
                f"runtime must be a runtime object (LocalRuntime(), "
                f"VectorizedRuntime(), ...), got {runtime!r}"
            )
        for i, (arg, placement) in enumerate(zip(args, self.placements, strict=True)):
            if placement == CLIENTS:
                _check_members(self.fn.__qualname__, i, arg)
        runtime = LocalRuntime() if runtime is None else runtime
        execution = Execution(runtime, self._cardinality(args, num_clients))
        placed = [
            self._place(arg, placement, execution)
            for arg, placement in zip(args, self.placements, strict=True)
        ]
        return _unwrap(self.fn(*placed), runtime)

    def _cardinality(
        self, args: tuple[Any, ...], num_clients: int | None
    ) -> int | None:
        sizes = {
            len(arg)
            for arg, p in zip(args, self.placements, strict=True)
            if p == CLIENTS
        }
        if num_clients is not None:
            sizes.add(num_clients)
        if len(sizes) > 1:
            raise ValueError(
                f"{self.fn.__qualname__}: client arguments disagree on the number of "
                f"clients: {sorted(sizes)}"
            )
        if not sizes:
            return None  # no clients yet: ``broadcast`` will ask for num_clients
        (size,) = sizes
        if size < 1:
            raise ValueError(f"{self.fn.__qualname__}: a cohort needs >= 1 client")
        return size

    def _place(self, arg: Any, placement: Placement | None, ex: Execution) -> Any:
        if placement is None:
            return arg
        if placement == SERVER:
            return Placed(arg, SERVER, ex)
        return Placed(ex.runtime.from_members(list(arg)), CLIENTS, ex)

    def _compose(self, args: tuple[Any, ...]) -> Any:
        for i, (arg, placement) in enumerate(zip(args, self.placements, strict=True)):
            if placement is not None and (
                not isinstance(arg, Placed) or arg.placement != placement
            ):
                got = arg.placement if isinstance(arg, Placed) else "an unplaced value"
                raise TypeError(
                    f"{self.fn.__qualname__} argument {i} must be placed at "
                    f"{placement}, got {got}"
                )
        return self.fn(*args)


def _check_members(name: str, index: int, arg: Any) -> None:
    """A CLIENTS argument is a sequence (a list, a tuple, a tensor or an array
    along its first axis) with one member per client."""
    if (
        isinstance(arg, Mapping | str | bytes)
        or not (hasattr(arg, "__len__") and hasattr(arg, "__getitem__"))
        or (isinstance(arg, torch.Tensor | np.ndarray) and arg.ndim == 0)
    ):
        raise TypeError(
            f"{name} argument {index} is placed at CLIENTS: it must be a sequence "
            f"with one member per client, got {type(arg).__name__}"
        )


def _unwrap(result: Any, runtime: Runtime) -> Any:
    """The result with every placed value in it (in tuples, lists, dicts, named
    tuples, ...) replaced by its value: a server value as it is, a clients value as
    the list of its members."""

    def value(leaf: Any) -> Any:
        if not isinstance(leaf, Placed):
            return leaf
        if leaf.placement == SERVER:
            return leaf.payload
        return runtime.to_members(leaf.payload)

    return tree_map(value, result)


def computation(
    *placements: Placement | None,
) -> Callable[[Callable[..., R]], Computation[R]]:
    """Declare a federated computation and where each of its arguments is placed.

    >>> from fedloom.core import CLIENTS, computation, mean
    >>> @computation(CLIENTS, CLIENTS)
    ... def mean_temperature(readings, counts):
    ...     return mean(readings, weight=counts)
    >>> mean_temperature([20.0, 22.0], [1, 3])
    21.5
    """

    if any(callable(p) and not isinstance(p, Placement) for p in placements):
        raise TypeError(
            "@computation takes the placements of the arguments: write "
            "@computation(CLIENTS, ...) or @computation() for none"
        )

    def wrap(fn: Callable[..., R]) -> Computation[R]:
        return Computation(fn, placements)

    return wrap
