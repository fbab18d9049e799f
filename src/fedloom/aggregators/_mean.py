"""Mean and sum aggregators, validated."""

from __future__ import annotations

from fedloom.core import Mean, Sum

from ._checked import Checked

__all__ = ["sum", "weighted_mean"]


def weighted_mean() -> Checked:
    """``sum_k w_k x_k / sum_k w_k`` over the cohort, every value validated.

    FedAvg's aggregator (McMahan et al. 2017, Algorithm 1): the weight of client k is
    its number of examples n_k. Without weights, every client counts once.
    Accumulates in float64.

    >>> from fedloom.aggregators import weighted_mean
    >>> from fedloom.core import CLIENTS, aggregate, computation
    >>> agg = weighted_mean()
    >>> computation(CLIENTS, CLIENTS)(lambda v, w: aggregate(agg, v, w))(
    ...     [1.0, 4.0], [3, 1])
    1.75
    """
    return Checked(Mean())


def sum() -> Checked:
    """The sum over the cohort, every value validated."""
    return Checked(Sum())
