"""Runtimes by name, for configuration files."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedloom.core import LocalRuntime, Runtime

from ._vectorized import VectorizedRuntime

__all__ = ["RUNTIMES", "get_runtime"]

RUNTIMES: dict[str, Callable[[], Runtime]] = {
    "local": LocalRuntime,
    "vectorized": VectorizedRuntime,
}


def get_runtime(
    name: str, *, device: str = "cpu", chunk_size: int | None = None
) -> Runtime:
    """A new runtime by name ("local", "vectorized"), computing on ``device``.

    Only ``vectorized`` computes on another device than the CPU ("cuda", "cuda:1")
    and in chunks of ``chunk_size`` clients (its default when None).

    >>> get_runtime("local").name
    'local'
    """
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose one of {sorted(RUNTIMES)}")
    where = torch.device(device)
    if name == "vectorized":
        if where.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here")
        if chunk_size is None:
            return VectorizedRuntime(where)
        return VectorizedRuntime(where, chunk_size=chunk_size)
    if chunk_size is not None:
        raise ValueError(f"runtime {name!r} does not compute clients in chunks")
    if where.type != "cpu":
        raise ValueError(
            f"runtime {name!r} computes on the CPU; use runtime 'vectorized' for "
            f"device {device!r}"
        )
    return RUNTIMES[name]()
