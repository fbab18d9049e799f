"""Fixtures for the deployment tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


@pytest.fixture(autouse=True)
def collected() -> Iterator[None]:
    """Collect garbage after each test, so an event loop, socket or channel a test
    left open warns (an error here) in that test, not in whichever later test the
    collector happens to run in."""
    yield
    gc.collect()
