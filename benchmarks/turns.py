"""Timing forms of one computation against each other in one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_per_step(
    runs: dict[str, Callable[[], Any]], steps: int, repeats: int
) -> dict[str, float]:
    """Seconds a step of each run (a call that runs ``steps`` steps), the best of
    ``repeats`` calls. The runs take turns, so a slow spell of a shared machine
    falls on all of them; noise only adds time, so the best is kept."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], (time.perf_counter() - started) / steps)
    return best
