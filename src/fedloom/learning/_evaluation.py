"""Evaluation: centrally on a server test set, or federated on clients' data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

import torch

from fedloom.core import (
    CLIENTS,
    SERVER,
    CohortOptions,
    Placed,
    Runtime,
    Stacked,
    broadcast,
    computation,
    map,
    mean,
)
from fedloom.data import Examples

from ._cohort_work import check_batchable, cohort_evaluation
from ._functional import FunctionalModel
from ._optimizers import count
from ._types import Params

__all__ = ["ClientEvaluation", "evaluate", "federated_evaluate"]


def _sums(
    model: FunctionalModel, params: Params, examples: Examples, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    device = examples.x.device
    params = {name: value.to(device) for name, value in params.items()}
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            x = examples.x[start : start + batch_size]
            y = examples.y[start : start + batch_size]
            logits = model.predict(params, x)
            loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").to(
                torch.float64
            )
            correct += (logits.argmax(dim=1) == y).sum().to(torch.float64)
    return loss, correct


def evaluate(
    model: FunctionalModel,
    params: Params,
    examples: Examples,
    *,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and ``accuracy`` of ``params`` on ``examples``,
    computed where the examples are (``params`` are copied there when elsewhere)."""
    count("batch_size", batch_size)
    if len(examples) == 0:
        raise ValueError("cannot evaluate on an empty set of examples")
    loss, correct = _sums(model, params, examples, batch_size)
    n = len(examples)
    return {"loss": float(loss) / n, "accuracy": float(correct) / n}


@final
@dataclass(frozen=True, eq=False)
class ClientEvaluation:
    """A client's mean ``loss`` and ``accuracy`` on its own examples."""

    model: FunctionalModel
    batch_size: int = 1024

    def __post_init__(self) -> None:
        count("batch_size", self.batch_size)

    def __call__(self, params: Params, examples: Examples) -> dict[str, torch.Tensor]:
        n = max(len(examples), 1)
        loss, correct = _sums(self.model, params, examples, self.batch_size)
        return {"loss": loss / n, "accuracy": correct / n}

    def map_cohort(
        self, args: Sequence[Any], device: torch.device, options: CohortOptions
    ) -> Stacked:
        """The same evaluation for a whole cohort at once (vectorized runtime).

        Evaluation is one pass without gradients; it is never captured."""
        check_batchable(self.model, training=False)
        params, examples = args
        metrics = cohort_evaluation(
            self.model, params, list(examples), self.batch_size, device
        )
        return Stacked(metrics, len(examples))

    def client_sizes(self, args: Sequence[Any]) -> list[int]:
        """Each client's number of examples (a chunk is padded to its largest)."""
        return [len(e) for e in args[1]]


def _size(examples: Examples) -> torch.Tensor:
    return torch.tensor(float(len(examples)), dtype=torch.float64)


@computation(None, SERVER, CLIENTS)
def _federated_evaluation(
    evaluation: ClientEvaluation, params: Placed, cohort: Placed
) -> Placed:
    return mean(map(evaluation, broadcast(params), cohort), map(_size, cohort))


def federated_evaluate(
    model: FunctionalModel,
    params: Params,
    cohort: Sequence[Examples],
    *,
    runtime: Runtime | None = None,
) -> dict[str, float]:
    """Evaluate on each client's own data; the server sees only the example-weighted
    mean ``loss`` and ``accuracy``, never an example."""
    result = _federated_evaluation(
        ClientEvaluation(model), params, list(cohort), runtime=runtime
    )
    return {k: float(v) for k, v in result.items()}
