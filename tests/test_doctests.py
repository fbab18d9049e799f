"""Every docstring example in the package runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fedloom

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(fedloom.__path__, prefix="fedloom.")
    if not info.name.endswith("__main__")
)


def test_every_module_is_collected() -> None:
    assert {"fedloom.core._intrinsics", "fedloom.learning.fed_avg"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), report=True)
    assert result.failed == 0
