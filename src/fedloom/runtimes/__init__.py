"""Runtimes: where client work runs.

``local`` runs clients one after another and is the reference semantics (it lives in
:mod:`fedloom.core` beside the intrinsics it defines). Every runtime is chosen by name
here or passed explicitly as ``runtime=`` to a computation.
"""

from fedloom.core import LocalRuntime as LocalRuntime
from fedloom.core import Runtime as Runtime

from ._cpu_memory import reuse_cpu_memory as reuse_cpu_memory
from ._registry import RUNTIMES as RUNTIMES
from ._registry import get_runtime as get_runtime
from ._vectorized import VectorizedRuntime as VectorizedRuntime

__all__ = [
    "RUNTIMES",
    "LocalRuntime",
    "Runtime",
    "VectorizedRuntime",
    "get_runtime",
    "reuse_cpu_memory",
]
