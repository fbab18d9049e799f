"""Federated Averaging (McMahan et al. 2017) and its server-optimizer variants."""

from __future__ import annotations

from fedloom.aggregators import weighted_mean

from ._client_work import LocalTraining
from ._functional import FunctionalModel
from ._optimizers import Optimizer, positive, sgd
from ._process import LearningProcess, ServerOptimizer, distribute_params

__all__ = ["fed_avg"]


def fed_avg(
    model: FunctionalModel,
    *,
    client_learning_rate: float,
    local_epochs: int = 1,
    batch_size: int | None = 10,
    server_optimizer: Optimizer | None = None,
    client_optimizer: Optimizer | None = None,
) -> LearningProcess:
    """FedAvg: clients run ``local_epochs`` of minibatch SGD, the server averages.

    Each round the server broadcasts ``w``; client k runs E epochs of SGD with batch
    size B from ``w`` and returns ``delta_k = w_k - w`` with weight ``n_k``; the server
    takes ``delta = sum_k n_k delta_k / sum_k n_k`` and applies its optimizer to the
    pseudo-gradient ``-delta``. With the default server optimizer, SGD at learning
    rate 1, this is Algorithm 1 of McMahan et al. 2017 (``w <- w + delta``); momentum
    gives FedAvgM, Adam gives FedAdam (Reddi et al. 2021).

    ``client_optimizer`` replaces the clients' SGD at ``client_learning_rate``:
    given one, its own learning rate is the one used (``client_learning_rate``
    is then only checked to be valid).

    >>> from fedloom.learning import build_model, fed_avg
    >>> process = fed_avg(build_model("logistic", (4,), 3), client_learning_rate=0.1)
    >>> process.init().round
    0
    """
    # Checked even when a client optimizer is given, so a bad value never passes.
    client_optimizer = client_optimizer or sgd(client_learning_rate)
    positive("learning_rate", client_learning_rate)
    return LearningProcess(
        model=model,
        distributor=distribute_params,
        client_work=LocalTraining(model, client_optimizer, local_epochs, batch_size),
        aggregator=weighted_mean(),
        finalizer=ServerOptimizer(
            server_optimizer or sgd(1.0), updates_are_deltas=True
        ),
    )
