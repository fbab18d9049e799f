"""A learning process composed of four parts: distributor, client work, aggregator,
finalizer. One round is written with the Federated Core intrinsics, so it runs on any
runtime that implements them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, final

import torch

from fedloom.core import (
    CLIENTS,
    SERVER,
    Aggregator,
    Runtime,
    aggregate,
    apply,
    broadcast,
    computation,
    map,
    mean,
)
from fedloom.core import sum as federated_sum

from ._client_work import ClientInput, ClientResult
from ._functional import FunctionalModel
from ._optimizers import Optimizer
from ._state import flatten_tensors, unflatten_tensors
from ._types import OptState, Params

__all__ = ["LearningProcess", "ServerOptimizer", "ServerState"]

ClientWork = Callable[[Params, ClientInput], ClientResult]


@dataclass(frozen=True)
class ServerState:
    """The server's state between rounds: the model, its optimizer state, the round."""

    params: Params
    optimizer_state: OptState
    round: int

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state under a flat ``/``-separated name (checkpoints)."""
        return flatten_tensors(
            {"params": self.params, "optimizer_state": self.optimizer_state}
        )


@final
@dataclass(frozen=True)
class ServerOptimizer:
    """The finalizer: a server optimizer applied to the aggregated client updates.

    With ``updates_are_deltas`` (FedAvg) the aggregate is the mean model change and
    the optimizer is fed the pseudo-gradient ``-delta`` (Reddi et al. 2021), so plain
    SGD with learning rate 1 is exactly McMahan's FedAvg. Otherwise (FedSGD) the
    aggregate is a gradient and is fed as it is.
    """

    optimizer: Optimizer
    updates_are_deltas: bool

    def init(self, params: Params) -> OptState:
        return self.optimizer.init(params)

    def next(self, state: ServerState, aggregated: Params) -> ServerState:
        if self.updates_are_deltas:
            gradient = {k: -v for k, v in aggregated.items()}
        else:
            gradient = aggregated
        params, optimizer_state = self.optimizer.update(
            gradient, state.optimizer_state, state.params
        )
        return ServerState(params, optimizer_state, state.round + 1)


def distribute_params(state: ServerState) -> Params:
    """The distributor of FedAvg and FedSGD: every client receives the model."""
    return state.params


# Getters rather than functions: a runtime that holds the results stacked picks
# the field from them as they are (the vectorized runtime: no vmap of a getter).
_update = attrgetter("update")
_weight = attrgetter("weight")
_metrics = attrgetter("metrics")


@computation(None, SERVER, CLIENTS)
def _round(process: LearningProcess, state: Any, cohort: Any) -> tuple[Any, Any, Any]:
    params = apply(process.distributor, state)
    results = map(process.client_work, broadcast(params), cohort)
    weights = map(_weight, results)
    aggregated = aggregate(
        process.aggregator, map(_update, results), weights, template=params
    )
    new_state = apply(process.finalizer.next, state, aggregated)
    metrics = mean(map(_metrics, results), weights)
    return new_state, metrics, federated_sum(weights)


@final
@dataclass(frozen=True, eq=False)
class LearningProcess:
    """An iterative process: ``init() -> state``, ``next(state, cohort) -> state``.

    One round (``next``): the distributor picks what to broadcast, every client of the
    cohort runs the client work on it, the aggregator reduces their updates weighted
    by their weights, and the finalizer turns the aggregate into the next state.
    """

    model: FunctionalModel
    distributor: Callable[[ServerState], Params]
    client_work: ClientWork
    aggregator: Aggregator
    finalizer: ServerOptimizer

    def init(self) -> ServerState:
        """The state before the first round."""
        params = self.model.init()
        return ServerState(params, self.finalizer.init(params), 0)

    def next(
        self,
        state: ServerState,
        cohort: Sequence[ClientInput],
        *,
        runtime: Runtime | None = None,
    ) -> tuple[ServerState, dict[str, float]]:
        """Run one round on ``cohort``; returns the new state and round metrics.

        The metrics are the cohort's example-weighted ``train_loss``, its
        ``num_examples`` and the number of ``clients``.
        """
        if not cohort:
            raise ValueError("a round needs a cohort of at least one client")
        if all(isinstance(c, ClientInput) and not len(c.examples) for c in cohort):
            raise ValueError(
                f"none of the cohort's {len(cohort)} clients has an example: the "
                "round has nothing to average"
            )
        new_state, metrics, total = _round(self, state, list(cohort), runtime=runtime)
        out = {k: float(v) for k, v in metrics.items()}
        out.update(num_examples=float(total), clients=float(len(cohort)))
        return new_state, out

    def state_from_tensors(
        self, tensors: dict[str, torch.Tensor], round: int
    ) -> ServerState:
        """Rebuild a state saved with :meth:`ServerState.to_tensors` (checks names,
        shapes and dtypes against a fresh ``init()``)."""
        template = self.init()
        tree = unflatten_tensors(
            tensors,
            {"params": template.params, "optimizer_state": template.optimizer_state},
        )
        return ServerState(tree["params"], tree["optimizer_state"], round)
