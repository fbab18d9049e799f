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
    name: str,
    *,
    device: str = "cpu",
    chunk_size: int | None = None,
    compile: bool = False,
    steps_per_call: int = 1,
) -> Runtime:
    """A new runtime by name ("local", "vectorized"), computing on ``device``.

    Only ``vectorized`` computes on another device than the CPU ("cuda", "cuda:1"),
    in chunks of ``chunk_size`` clients (chosen by the runtime when None), and with
    ``compile`` (on the CPU) compiles its step, ``steps_per_call`` local steps a
    call.

    >>> get_runtime("local").name
    'local'
    """
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose one of {sorted(RUNTIMES)}")
    where = torch.device(device)
    if name == "vectorized":
        return VectorizedRuntime(
            where, chunk_size=chunk_size, compile=compile, steps_per_call=steps_per_call
        )
    if chunk_size is not None or compile or steps_per_call != 1:
        raise ValueError(
            f"runtime {name!r} neither computes clients in chunks nor compiles"
        )
    if where.type != "cpu":
        raise ValueError(
            f"runtime {name!r} computes on the CPU; use runtime 'vectorized' for "
            f"device {device!r}"
        )
    return RUNTIMES[name]()
