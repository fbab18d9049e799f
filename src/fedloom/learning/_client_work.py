"""Client work: what a client does with the model it receives.

Each is a pure function ``(params, client input) -> ClientResult``; the same function
runs in simulation and on a device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, final

import torch

from fedloom.core import CohortOptions, Stacked, register_dataclass
from fedloom.data import Examples

from ._cohort_graphs import GraphCache, captured_local_training
from ._cohort_work import (
    CohortStep,
    check_batchable,
    clients_at_once_compiled,
    cohort_gradient,
    cohort_local_training,
    plan_training,
)
from ._functional import FunctionalModel
from ._linear_fold import LinearFold, foldable_linears
from ._optimizers import Optimizer, count
from ._types import Params

__all__ = ["ClientInput", "ClientResult", "FullBatchGradient", "LocalTraining"]


@dataclass(frozen=True)
class ClientInput:
    """One client's examples and the seed of its randomness for this round."""

    examples: Examples
    seed: int


@register_dataclass  # a tree node, so a cohort's results stack and vmap
@dataclass(frozen=True)
class ClientResult:
    """What a client sends back: its ``update``, its ``weight`` and its ``metrics``."""

    update: Params
    weight: torch.Tensor
    metrics: dict[str, torch.Tensor]


def _inputs(payload: Any) -> tuple[list[Examples], list[int]]:
    if not isinstance(payload, list):
        raise TypeError(f"expected a list of ClientInput, got {type(payload).__name__}")
    for member in payload:
        _check_input(member)
    return [i.examples for i in payload], [i.seed for i in payload]


def _input_sizes(args: Sequence[Any]) -> list[int]:
    """Each client's number of examples, of a cohort function's ``(params,
    inputs)`` arguments."""
    return [len(e) for e in _inputs(args[1])[0]]


def _check_input(data: Any) -> None:
    if not isinstance(data, ClientInput):
        raise TypeError(
            f"a cohort member is {type(data).__name__}, not ClientInput: give each "
            "client's examples with the seed of its shuffling, ClientInput(examples, "
            "seed)"
        )


def _gradient_and_loss(
    model: FunctionalModel,
) -> Callable[[Params, torch.Tensor, torch.Tensor], tuple[Params, torch.Tensor]]:
    """The gradient and value of the loss by plain autograd.

    One client at a time, plain ``torch.autograd.grad`` costs less per step than the
    ``torch.func.grad`` transform (measured in ``benchmarks/simulation_speed.py``);
    the batched twin in ``_cohort_work.py`` uses the transform under ``vmap``.
    """

    def step(
        params: Params, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
            loss = model.loss(leaves, x, y)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return dict(zip(leaves, grads, strict=True)), loss.detach()

    return step


def _zero_result(params: Params) -> ClientResult:
    zero = torch.zeros((), dtype=torch.float64)
    return ClientResult(
        {k: torch.zeros_like(v) for k, v in params.items()}, zero, {"train_loss": zero}
    )


THREADED_BATCH_SIZE = 50
"""The largest batch of :meth:`LocalTraining.for_thread`: two CPU threads training
a McMahan CNN client each, one torch thread apiece, took their steps 1.31x (B =
10), 1.20x (20) and 1.12x (50) as fast as one client at a time on two torch
threads, and 0.95x for batches of 600 (a 2-core CPU; a one-off script, not kept).
FedSGD's rounds of full-batch gradients ran 0.89-0.92x as fast so
(``benchmarks/fedsgd_rounds.py``): they stay in one thread."""


EAGER_BATCHED_FROM = 3
"""Eager on the CPU, FedAvg's clients train batched where the compiled step would
train at least this many at once (:func:`clients_at_once_compiled`: the McMahan
2NN's ten at one thread), else client by client (the CNN's: one or two)."""


def _clients_at_once_on_cpu(
    params: Any, device: torch.device, compiled: bool
) -> int | None:
    """On the CPU: compiled, :func:`clients_at_once_compiled`; eager, 0 (client by
    client, unbatched) for a model of which the compiled step would train fewer
    than :data:`EAGER_BATCHED_FROM` clients at once. Elsewhere, or eager for a
    smaller model, no preference (the whole cohort batched)."""
    if device.type != "cpu":
        return None
    at_once = clients_at_once_compiled(params)
    if compiled:
        return at_once
    return 0 if at_once < EAGER_BATCHED_FROM else None


@final
@dataclass(frozen=True, eq=False)
class LocalTraining:
    """``epochs`` passes of minibatch training over the client's examples.

    FedAvg's ClientUpdate (McMahan et al. 2017, Algorithm 1): each epoch shuffles the
    client's examples (from the client's own seed) and takes one optimizer step per
    batch of ``batch_size``; ``batch_size=None`` is the full batch, one step per epoch.
    The update is the change of the parameters, ``w_local - w``; the weight is the
    number of examples; ``train_loss`` averages the minibatch losses over all examples
    seen. The client trains a copy of the parameters of its own, which an optimizer
    with ``update_in_place`` (SGD, momentum, Adam) updates in place: the same values,
    bit for bit, as its ``update``.
    """

    model: FunctionalModel
    optimizer: Optimizer
    epochs: int
    batch_size: int | None
    graphs: GraphCache = field(
        default_factory=GraphCache, init=False, repr=False, compare=False
    )
    """Captured epochs for the vectorized runtime on CUDA, kept between rounds."""
    steps: dict[tuple[bool, int, str], CohortStep] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """The batched step, eager and compiled (by steps a call and device type), kept
    between rounds (a compiled one is not compiled again)."""

    def __post_init__(self) -> None:
        count("epochs", self.epochs)
        if self.batch_size is not None:
            count("batch_size (or None: the whole client)", self.batch_size)

    def __call__(self, params: Params, data: ClientInput) -> ClientResult:
        _check_input(data)
        x, y = data.examples.x, data.examples.y
        n = len(y)
        if n == 0:
            return _zero_result(params)
        batch = n if self.batch_size is None else min(self.batch_size, n)
        generator = torch.Generator().manual_seed(data.seed)
        steps = self._batches(n, batch, generator)
        local, losses = self._train(params, x, y, steps)
        # Each batch's mean loss, weighted by its size at the end: three small
        # operations a step fewer (a 2NN client's step 1.06x faster at 1 and 2
        # threads, benchmarks/local_step.py).
        sizes = [min(batch, n - start) for start in range(0, n, batch)] * self.epochs
        weights = torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
        loss_sum = (torch.stack(losses).to(torch.float64) * weights).sum()
        with torch.no_grad():
            update = {k: local[k] - params[k] for k in params}
        metrics = {"train_loss": loss_sum / (self.epochs * n)}
        weight = torch.tensor(float(n), dtype=torch.float64)
        return ClientResult(update, weight, metrics)

    def _batches(
        self, n: int, batch: int, generator: torch.Generator
    ) -> Iterator[torch.Tensor]:
        """Each step's indices: ``epochs`` shuffles of ``range(n)``, in batches."""
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch):
                yield order[start : start + batch]

    def _train(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: Iterator[torch.Tensor],
    ) -> tuple[Params, list[torch.Tensor]]:
        """The trained parameters and each step's mean loss.

        The client trains a copy of the parameters of its own, which sits in the
        module for all its steps (:meth:`FunctionalModel.training`). An optimizer
        with ``update_in_place`` (SGD, momentum, Adam) updates it in place. Another's
        ``init`` and ``update`` see the parameters as its pure functions would
        (``params``, then each step's new ones, which it may keep in its state),
        never the leaves; its new parameters are copied into the leaves. The same
        values, bit for bit, as a step of ``functional_call`` with the new
        parameters, without a swap of parameters a step
        (``benchmarks/local_step.py``, ``tests/learning/test_local_training.py``);
        except that plain SGD (``fold_alpha``) updates the dense layers' weights
        that :class:`LinearFold` may fold by their gradients' products, which
        round otherwise (``tests/learning/test_linear_fold.py``).
        """
        in_place, losses = self.optimizer.update_in_place, []
        with self.model.training(params) as (local, batch_loss):
            current = local if in_place is not None else params
            with torch.no_grad():
                state = self.optimizer.init(current)
            fold = self._fold()
            with fold.recording() if fold else contextlib.nullcontext():
                for index in steps:
                    with torch.enable_grad():
                        loss = batch_loss(x[index], y[index])
                        folded = fold.folded() if fold else {}
                        names = [k for k in local if k not in folded]
                        wanted: list[Any] = [local[k] for k in names]
                        wanted += folded.values()  # the folded layers' outputs
                        grads = torch.autograd.grad(loss, wanted)
                    grads_by_name = dict(zip(names, grads, strict=False))
                    with torch.no_grad():
                        if fold:
                            dy = grads[len(names) :]
                            fold.apply(dict(zip(folded, dy, strict=True)))
                        if in_place is not None:
                            in_place(grads_by_name, state, {k: local[k] for k in names})
                        else:
                            current, state = self.optimizer.update(
                                grads_by_name, state, current
                            )
                            for name, leaf in local.items():
                                leaf.copy_(current[name])
                    losses.append(loss.detach())
        return current, losses

    def _fold(self) -> LinearFold | None:
        """Plain SGD's update of the linear layers' weights, folded into their
        gradients' products (``_linear_fold.py``), where the model allows it."""
        alpha = self.optimizer.fold_alpha
        if alpha is None or self.optimizer.update_in_place is None:
            return None
        layers = foldable_linears(self.model.module)
        return LinearFold(layers, alpha) if layers else None

    def map_cohort(
        self, args: Sequence[Any], device: torch.device, options: CohortOptions
    ) -> Stacked:
        """The same training for a whole cohort at once (vectorized runtime).

        With ``options.capture`` (CUDA) each epoch runs as a captured CUDA graph,
        kept in :attr:`graphs` for the next cohorts of the same shape; with
        ``options.compile`` too, the graph replays the compiled step's kernels.
        """
        check_batchable(self.model, training=True)
        params, inputs = args
        examples, seeds = _inputs(inputs)
        key = (options.compile, options.steps_per_call, device.type)
        if key not in self.steps:
            self.steps[key] = CohortStep(
                self.model,
                self.optimizer,
                compile=options.compile,
                steps_per_call=options.steps_per_call,
                cpp_wrapper=device.type == "cpu",
            )
        step = self.steps[key]
        plan = plan_training(
            params,
            examples,
            seeds,
            self.epochs,
            self.batch_size,
            device,
            longest_first=True,
        )
        if options.capture:
            deltas, weights, losses = captured_local_training(step, plan, self.graphs)
        else:
            deltas, weights, losses = cohort_local_training(step, plan)
        result = ClientResult(deltas, weights, {"train_loss": losses})
        return Stacked(result, len(seeds))

    def clients_at_once(
        self, args: Sequence[Any], device: torch.device, options: CohortOptions
    ) -> int | None:
        """On the CPU: compiled, as many as :func:`clients_at_once_compiled`
        says; eager, 0 (client by client, unbatched) where that is at most
        :data:`EAGER_BATCHED_FROM` - 1, else no preference. :class:`NotBatchable`
        for parameters that could not be stacked, as from :meth:`map_cohort`: the
        runtime then trains client by client too, with a warning.

        Eager, batching saves the per-step dispatch of each client (most of a
        small model's step) but makes every operation stream the whole cohort's
        parameters, which a large model's do not keep in cache: the McMahan CNN's
        vectorized round ran at 0.70-0.80x a plain PyTorch loop's on a 2-core CPU,
        the local runtime's at 0.94-0.99x, while the 2NN's ran 1.44-1.96x the
        loop's (``benchmarks/simulation_speed.py``; in chunks of 5 or 2 clients the
        CNN's was slower still). Client by client, the CNN's ran 1.07-1.14x as fast
        as batched (``benchmarks/results/simulation_speed_cnn_eager_choice.json``)."""
        return _clients_at_once_on_cpu(args[0], device, options.compile)

    def client_sizes(self, args: Sequence[Any]) -> list[int]:
        """Each client's number of examples (a chunk of clients trains as many
        steps as its largest has batches)."""
        return _input_sizes(args)

    def for_thread(self) -> LocalTraining | None:
        """This training with a model of its own (:meth:`FunctionalModel.copy`),
        for another thread to train clients at the same time, where its batches
        are at most :data:`THREADED_BATCH_SIZE`; ``None`` for larger ones, which
        share out among a step's torch threads better, or where the model draws
        random numbers in training (dropout), which would then come from the one
        global stream in whichever order the threads ran."""
        if self.batch_size is None or self.batch_size > THREADED_BATCH_SIZE:
            return None
        if self.model.unbatchable_layers(training=True):
            return None
        return replace(self, model=self.model.copy())


@final
@dataclass(frozen=True, eq=False)
class FullBatchGradient:
    """FedSGD's client work: the gradient of the mean loss on all the client's data.

    The update is the gradient itself (McMahan et al. 2017, Section 2: each client
    computes ``g_k = grad F_k(w)``); the weight is the number of examples.
    """

    model: FunctionalModel

    def __call__(self, params: Params, data: ClientInput) -> ClientResult:
        _check_input(data)
        x, y = data.examples.x, data.examples.y
        if len(y) == 0:
            return _zero_result(params)
        # The loss from the gradient's own forward pass, by plain autograd: 1.6x as
        # fast as torch.func.grad and a second forward pass for the loss (the same
        # values, bit for bit; the CNN and the 2NN on a 600-example client)
        gradient, loss = _gradient_and_loss(self.model)(params, x, y)
        weight = torch.tensor(float(len(y)), dtype=torch.float64)
        metrics = {"train_loss": loss.to(torch.float64)}
        return ClientResult(gradient, weight, metrics)

    def map_cohort(
        self, args: Sequence[Any], device: torch.device, options: CohortOptions
    ) -> Stacked:
        """The same gradients for a whole cohort at once (vectorized runtime).

        One step, nothing to replay: it is never captured."""
        check_batchable(self.model, training=True)
        params, inputs = args
        examples, seeds = _inputs(inputs)
        grads, weights, losses = cohort_gradient(self.model, params, examples, device)
        result = ClientResult(grads, weights, {"train_loss": losses})
        return Stacked(result, len(seeds))

    def clients_at_once(
        self, args: Sequence[Any], device: torch.device, options: CohortOptions
    ) -> int | None:
        """On the CPU, as :meth:`LocalTraining.clients_at_once` eager (the
        gradient is never compiled): client by client, unbatched, for a model such
        as the McMahan CNN, whose cohort's full-batch gradients ran 1.61x as fast
        one client at a time even under ``vmap`` (``benchmarks/chunk_size.py``)."""
        return _clients_at_once_on_cpu(args[0], device, compiled=False)

    def client_sizes(self, args: Sequence[Any]) -> list[int]:
        """Each client's number of examples (a chunk's gradients run over its
        largest's, padded)."""
        return _input_sizes(args)
