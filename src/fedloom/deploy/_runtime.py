"""``DeploymentRuntime``: the Federated Core's intrinsics on connected devices.

The round a user simulates (``LearningProcess.next``: apply → broadcast → map →
aggregate → apply) runs here unchanged. A value at ``CLIENTS`` is held as:

* :class:`Cohort`: the ids of the clients taking part;
* :class:`~fedloom.core.Replicated`: one server value every client receives
  (a broadcast, held once);
* :class:`Remote`: the results of a client work the devices run, with server-side
  projections (``map(_update, results)``) applied lazily to each.

``map`` of a registered client work over ``(broadcast, cohort)`` sends nothing yet.
The first ``aggregate`` of its results sends the task to the cohort and folds each
result into the aggregator as it arrives (memory O(model), not O(cohort x model)),
then drops the update's tensors and keeps the small rest (weight, metrics) for the
aggregates that follow (the metrics' mean, the weights' sum).

A client function the runtime does not know as a registered client work is refused:
the server names work, it never ships code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast, final

import torch

from fedloom.core import Aggregator, Replicated, tree_flatten
from fedloom.learning import ClientResult, Params

from ._round import OpenRound, RoundFailed, TaskSpec

__all__ = ["Cohort", "DeploymentRuntime", "Remote"]

Dispatch = Callable[[TaskSpec, Params, tuple[str, ...]], OpenRound]


@dataclass(frozen=True)
class Cohort:
    """The clients of one round, by id."""

    clients: tuple[str, ...]


@dataclass(eq=False)
class _Call:
    spec: TaskSpec
    params: Params
    clients: tuple[str, ...]
    results: list[ClientResult] | None = None
    round: OpenRound | None = None


@dataclass(frozen=True)
class Remote:
    """The results of a client work on the cohort, seen through ``steps``."""

    call: _Call
    steps: tuple[Callable[[Any], Any], ...] = ()

    def then(self, fn: Callable[[Any], Any]) -> Remote:
        return Remote(self.call, (*self.steps, fn))

    def project(self, result: ClientResult) -> Any:
        value: Any = result
        for step in self.steps:
            value = step(value)
        return value


class _Streamed(Mapping[str, Any]):
    """Stands for an update already folded into the aggregate and dropped."""

    def _refuse(self) -> NoReturn:
        raise RuntimeError(
            "the deployment runtime streams client updates into one aggregate and "
            "keeps no copy; a round can aggregate the updates only once"
        )

    def __getitem__(self, key: str) -> Any:
        self._refuse()

    def __iter__(self) -> Iterator[str]:
        self._refuse()

    def __len__(self) -> int:
        self._refuse()


@final
@dataclass(eq=False)
class DeploymentRuntime:
    """Runs one round's client work on devices through ``dispatch``.

    ``client_works`` pairs each client function of the algorithm (e.g.
    ``process.client_work``) with the :class:`TaskSpec` that names it on the
    devices. ``min_results`` is the fewest accepted results a round may finish
    with; fewer raise :class:`RoundFailed`.
    """

    dispatch: Dispatch
    client_works: Sequence[tuple[Any, TaskSpec]]
    min_results: int
    metrics: frozenset[str] | None = None
    """The metric names every result must report (the server reads them); when
    ``None``, those of the round's first accepted result."""
    name: str = "deployment"
    rounds: list[OpenRound] = field(default_factory=list)

    def from_members(self, members: Sequence[Any]) -> Cohort:
        if not all(isinstance(m, str) for m in members):
            raise TypeError("a deployment cohort is a list of client ids (str)")
        return Cohort(tuple(members))

    def to_members(self, payload: Any) -> list[Any]:
        if isinstance(payload, Cohort):
            return list(payload.clients)
        if isinstance(payload, Replicated):
            return [payload.value] * payload.size
        if isinstance(payload, Remote):
            if payload.call.results is None:
                raise RuntimeError(
                    "client results are only known once a round has aggregated them"
                )
            return [payload.project(r) for r in payload.call.results]
        raise TypeError(f"not a deployment clients value: {type(payload).__name__}")

    def broadcast(self, value: Any, num_clients: int) -> Replicated:
        return Replicated(value, num_clients)

    def map(self, fn: Callable[..., Any], payloads: Sequence[Any]) -> Any:
        if len(payloads) == 1 and isinstance(payloads[0], Remote):
            return payloads[0].then(fn)  # a server-side projection of each result
        spec = next((s for work, s in self.client_works if work is fn), None)
        if spec is None:
            raise TypeError(
                f"the deployment runtime cannot run {fn!r} on devices: only "
                "registered client work is sent to clients (by name, never as code)"
            )
        if (
            len(payloads) != 2
            or not isinstance(payloads[0], Replicated)
            or not isinstance(payloads[1], Cohort)
        ):
            raise TypeError(
                f"client work {spec.client_work!r} takes (broadcast params, cohort)"
            )
        return Remote(_Call(spec, payloads[0].value, payloads[1].clients))

    def aggregate(
        self, aggregator: Aggregator, payload: Any, weights: Any | None, template: Any
    ) -> Any:
        if isinstance(payload, Remote) and payload.call.results is None:
            return self._stream(aggregator, payload, weights, template)
        values = self.to_members(payload)
        members = [None] * len(values) if weights is None else self.to_members(weights)
        accumulator = aggregator.init(template)
        for value, weight in zip(values, members, strict=True):
            accumulator = aggregator.accumulate(accumulator, value, weight)
        aggregate = aggregator.finalize(accumulator)
        if not _finite(aggregate):  # the round's metrics, say, summed past float64
            raise RoundFailed("an aggregate of the accepted results is not finite")
        return aggregate

    def _stream(
        self, aggregator: Aggregator, payload: Remote, weights: Any, template: Any
    ) -> Any:
        call = payload.call
        round = self.dispatch(call.spec, call.params, call.clients)
        self.rounds.append(round)
        accumulator = aggregator.init(template)
        kept: list[ClientResult] = []
        for submission in round.submissions():
            result = submission.result
            try:
                expected = self.metrics
                if expected is None and kept:
                    expected = frozenset(kept[0].metrics)
                if expected is not None and set(result.metrics) != expected:
                    raise ValueError(
                        f"metrics {sorted(result.metrics)[:8]} differ from the "
                        f"cohort's {sorted(expected)}"
                    )
                value = payload.project(result)
                weight = _weight(weights, result, call)
                _check_scaled(value, result.metrics, weight)
                accumulator = aggregator.accumulate(accumulator, value, weight)
            except (ValueError, TypeError) as error:
                round.settle(submission, f"{submission.client}: {error}")
                continue
            round.settle(submission, None)
            if value is result.update:
                result = dataclasses.replace(result, update=cast(Params, _Streamed()))
            kept.append(result)
        call.results, call.round = kept, round
        if len(kept) < self.min_results:
            raise RoundFailed(
                f"round {round.round + 1}: {len(kept)} of {len(call.clients)} "
                f"clients sent an accepted result, fewer than the "
                f"{self.min_results} needed"
            )
        try:
            aggregate = aggregator.finalize(accumulator)
        except ValueError as error:
            raise RoundFailed(f"round {round.round + 1}: {error}") from None
        if not _finite(aggregate):
            raise RoundFailed(
                f"round {round.round + 1}: the aggregate of the accepted results is "
                "not finite"
            )
        return aggregate


def _finite(tree: Any) -> bool:
    return all(
        bool(torch.isfinite(leaf).all())
        for leaf in tree_flatten(tree)[0]
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
    )


def _check_scaled(value: Any, metrics: Mapping[str, Any], weight: Any) -> None:
    """A ``ValueError`` unless ``weight`` times every entry of the update and of
    the metrics is finite in float64: each is finite, but a client could still
    overflow the aggregate (weight 1e300, update 1e30) with their product."""
    if weight is None:
        return
    w = float(weight)
    for leaf in [*tree_flatten(value)[0], *metrics.values()]:
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.numel():
            largest = float(leaf.double().abs().max())
            # (a value that is itself not finite is the aggregator's to name)
            if math.isfinite(largest) and not math.isfinite(largest * w):
                raise ValueError(f"weight {w:g} times its values is not finite")


def _weight(weights: Any, result: ClientResult, call: _Call) -> Any:
    if weights is None:
        return None
    if isinstance(weights, Replicated):
        return weights.value
    if isinstance(weights, Remote) and weights.call is call:
        return weights.project(result)
    raise TypeError("weights must come from the same client results or a broadcast")
