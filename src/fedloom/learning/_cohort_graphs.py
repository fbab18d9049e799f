"""A cohort's local training captured as a CUDA graph and replayed.

Eagerly, one step of a vmapped cohort is some hundred kernel launches issued from
Python, and a round of the McMahan CNN (E = 5, B = 10, 600 examples) takes 300 steps:
on a GPU the launches, not the arithmetic, set the time. Every step of an epoch has
the same shapes, so the epoch is captured once as a CUDA graph over fixed buffers
(the padded data, the stacked parameters and optimizer state, the epoch's batch
indices) and replayed: a round costs a few copies into the buffers and one replay
per epoch.

A capture is kept for the next cohorts of the same shape (clients, padded length,
steps, batch size, whether any client runs out of batches) and the same step (eager
or compiled: the client work keeps one of each), the few most recent in
an LRU cache, so a run of IID rounds captures once. The graph computes exactly what
:func:`cohort_local_training` computes; only the launches differ.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch

from fedloom.core import tree_map

from ._cohort_work import (
    CohortStep,
    PaddedCohort,
    TrainingPlan,
    copy_tree,
    training_result,
)
from ._types import Params

__all__ = ["EpochProgram", "GraphCache", "captured_local_training"]

WARMUP_STEPS = 2
"""Eager steps run on a side stream before a capture (library handles, workspaces)."""


class EpochProgram:
    """One epoch of a cohort's local training over fixed buffers.

    ``run()`` trains every client over the batches in ``index``/``mask`` and leaves
    the result in ``params``, ``state`` and ``loss_sum``, in place. After
    :meth:`capture` (CUDA only) ``run()`` replays the captured graph instead of
    issuing the steps one by one; both compute the same thing.
    """

    def __init__(
        self,
        step: CohortStep,
        data: PaddedCohort,
        start: Params,
        state: Any,
        index: torch.Tensor,
        mask: torch.Tensor,
        masked: bool,
    ) -> None:
        self.step = step
        self.masked = masked
        self.data = data
        # Buffers the graph reads and writes: their addresses never change.
        self.params = {k: v.clone() for k, v in start.items()}
        self.state = tree_map(torch.clone, state)
        self.index = index.clone()
        self.mask = mask.clone()
        self.loss_sum = torch.zeros(data.size, dtype=torch.float64, device=index.device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def load(self, data: PaddedCohort, start: Params, state: Any) -> None:
        """Copy a new cohort of the same shape into the buffers."""
        self.data.x.copy_(data.x)
        self.data.y.copy_(data.y)
        self.data.mask.copy_(data.mask)
        for k, v in start.items():
            self.params[k].copy_(v)
        copy_tree(self.state, state)
        self.loss_sum.zero_()

    def set_epoch(self, index: torch.Tensor, mask: torch.Tensor) -> None:
        """The batches of the next epoch: ``index[c, s, j]`` and ``mask[c, s, j]``."""
        self.index.copy_(index)
        self.mask.copy_(mask)

    def _steps(self, count: int) -> None:
        for s in range(count):
            params, state, loss = self.step(
                self.data,
                self.params,
                self.state,
                self.index[:, s],
                self.mask[:, s],
                self.masked,
            )
            for k, v in params.items():
                self.params[k].copy_(v)
            copy_tree(self.state, state)
            self.loss_sum += loss

    def run(self) -> None:
        """One epoch: a graph replay once captured, else the steps eagerly."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._steps(self.index.shape[1])

    def capture(self) -> None:
        """Capture the epoch as a CUDA graph (the buffers' contents are clobbered:
        :meth:`load` the cohort again before running)."""
        device = self.index.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._steps(min(WARMUP_STEPS, self.index.shape[1]))
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._steps(self.index.shape[1])
        except RuntimeError as error:
            raise RuntimeError(
                "the cohort's local training could not be captured as a CUDA graph "
                "(the model or optimizer may sync with the host or change shapes); "
                "run it eagerly with VectorizedRuntime(..., cuda_graphs=False)"
            ) from error
        self.graph = graph


class GraphCache:
    """The most recent ``capacity`` captured epochs, by cohort shape (LRU)."""

    def __init__(self, capacity: int = 4) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._programs: OrderedDict[Hashable, EpochProgram] = OrderedDict()
        self.captures = 0
        """How many epochs were captured (a new cohort shape each)."""

    def get(self, key: Hashable) -> EpochProgram | None:
        program = self._programs.get(key)
        if program is not None:
            self._programs.move_to_end(key)
        return program

    def put(self, key: Hashable, program: EpochProgram) -> None:
        self._programs[key] = program
        self._programs.move_to_end(key)
        while len(self._programs) > self.capacity:
            self._programs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._programs)


def captured_local_training(
    step: CohortStep,
    plan: TrainingPlan,
    cache: GraphCache,
    *,
    capture: bool = True,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """:func:`cohort_local_training` over an :class:`EpochProgram` from ``cache``.

    With ``capture`` (a CUDA device) each new cohort shape is captured as a graph;
    without, the program runs its steps eagerly over the same buffers (what the tests
    check on a CPU).
    """
    data, start = plan.data, plan.start
    index, mask = plan.batch_index, plan.batch_mask
    masked = not all(all(steps) for steps in plan.everyone)
    state = step.init(start)
    key = (
        step,  # a program replays its own step's kernels (eager or compiled)
        index.device,
        tuple(data.x.shape),
        data.x.dtype,
        tuple(index.shape[2:]),
        masked,
    )
    program = cache.get(key)
    if program is None:
        program = EpochProgram(
            step, data, start, state, index[:, 0], mask[:, 0], masked
        )
        if capture:
            program.capture()
            cache.captures += 1
        cache.put(key, program)
    program.load(data, start, state)
    for e in range(plan.epochs):
        program.set_epoch(index[:, e], mask[:, e])
        program.run()
    local = {k: v.clone() for k, v in program.params.items()}
    return training_result(plan, local, program.loss_sum.clone())
