"""Seeded cohort sampling and per-client seeds: pure functions of (seed, round).

Nothing here keeps random state between rounds, which is what makes a resumed run
follow exactly the trajectory of an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["client_seed", "sample_cohort"]


def sample_cohort(
    population: int, cohort_size: int, *, seed: int, round: int
) -> np.ndarray:
    """``cohort_size`` distinct client positions out of ``population``, sorted.

    >>> sample_cohort(100, 3, seed=0, round=0).tolist() == sample_cohort(
    ...     100, 3, seed=0, round=0).tolist()
    True
    """
    if not 1 <= cohort_size <= population:
        raise ValueError(
            f"cannot sample a cohort of {cohort_size} from a population of {population}"
        )
    rng = np.random.default_rng([seed, round, 0])
    return np.sort(rng.choice(population, size=cohort_size, replace=False))


def client_seed(seed: int, round: int, client: int) -> int:
    """The seed of one client's randomness (its shuffling) in one round."""
    state = np.random.SeedSequence([seed, round, client, 1]).generate_state(2)
    return int(state[0]) << 32 | int(state[1]) >> 1
