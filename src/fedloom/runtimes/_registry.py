"""Runtimes by name, for configuration files."""

from __future__ import annotations

from collections.abc import Callable

from fedloom.core import LocalRuntime, Runtime

from ._vectorized import VectorizedRuntime

__all__ = ["RUNTIMES", "get_runtime"]

RUNTIMES: dict[str, Callable[[], Runtime]] = {
    "local": LocalRuntime,
    "vectorized": VectorizedRuntime,
}


def get_runtime(name: str) -> Runtime:
    """A new runtime by name ("local", "vectorized").

    >>> get_runtime("local").name
    'local'
    """
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose one of {sorted(RUNTIMES)}")
    return RUNTIMES[name]()
