"""Federated SGD (McMahan et al. 2017, the FedSGD baseline)."""

from __future__ import annotations

from fedloom.aggregators import weighted_mean

from ._client_work import FullBatchGradient
from ._functional import FunctionalModel
from ._optimizers import Optimizer, positive, sgd
from ._process import LearningProcess, ServerOptimizer, distribute_params

__all__ = ["fed_sgd"]


def fed_sgd(
    model: FunctionalModel,
    *,
    learning_rate: float,
    server_optimizer: Optimizer | None = None,
) -> LearningProcess:
    """FedSGD: each client sends the gradient on all its data; the server steps.

    ``w <- w - learning_rate * sum_k n_k g_k / sum_k n_k``: with every client in the
    cohort this is one full-batch gradient step on the union of their data.
    ``server_optimizer`` replaces plain SGD (and then ``learning_rate`` is unused).

    >>> from fedloom.learning import build_model, fed_sgd
    >>> fed_sgd(build_model("logistic", (4,), 3), learning_rate=0.1).init().round
    0
    """
    positive("learning_rate", learning_rate)
    return LearningProcess(
        model=model,
        distributor=distribute_params,
        client_work=FullBatchGradient(model),
        aggregator=weighted_mean(),
        finalizer=ServerOptimizer(
            server_optimizer or sgd(learning_rate), updates_are_deltas=False
        ),
    )
