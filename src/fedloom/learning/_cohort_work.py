"""Client work on a whole cohort at once: padded data, masks and ``vmap``.

The batched twins of the sequential client work in ``_client_work.py``, for the
vectorized runtime. Clients of unequal size are padded to the largest; a mask marks
real examples, so a padded example adds nothing to a loss or a gradient, and a client
whose batches have run out keeps its parameters (and optimizer state) unchanged, as
in fedjax's padded ``for_each_client``: FedAvg's training plans the cohort longest
first and steps only the clients that still have a batch (a prefix of the cohort);
a step of every client that masks the finished ones remains for the captured CUDA
epochs. Each client shuffles with its own seed exactly as the sequential code does,
so both visit the same batches.
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch.func import grad_and_value, vmap

from fedloom.core import (
    CohortOptions,
    NotBatchable,
    Replicated,
    Stacked,
    tree_map,
)
from fedloom.core import longest_first as order_by_size
from fedloom.data import ExampleRows, Examples

from ._cohort_loss import masked_loss
from ._dense_cohort import DenseCohortStep
from ._functional import FunctionalModel
from ._optimizers import Optimizer
from ._types import Params

if TYPE_CHECKING:
    from ._gemm_update import FoldUpdateIntoGemm

__all__ = [
    "CohortStep",
    "PaddedCohort",
    "TrainingPlan",
    "batch_schedule",
    "check_batchable",
    "clients_at_once_compiled",
    "cohort_gradient",
    "cohort_evaluation",
    "cohort_local_training",
    "copy_tree",
    "plan_training",
    "stacked_params",
    "training_result",
]


class PaddedCohort:
    """A cohort's examples padded to one shape: ``x[c, i]``, ``y[c, i]``, sizes.

    Padding repeats a real example (the client's first; for a client without any,
    the cohort's first), never zeros: masks keep padding out of every loss, gradient
    and metric, and a model that is finite on real inputs, though perhaps not on an
    all-zero one (one that normalises its input), stays finite on the padding too,
    so that multiplying by a zero weight does leave it out (NaN * 0 would not).
    """

    def __init__(self, examples: Sequence[Examples], device: torch.device) -> None:
        self.sizes = torch.tensor([len(e) for e in examples], dtype=torch.int64)
        self.size = len(examples)
        longest = max(int(self.sizes.max()), 1)
        self.x, self.y = _gathered(examples, longest) or self._copied(examples, longest)
        self.x, self.y = self.x.to(device), self.y.to(device)
        positions = torch.arange(longest)
        self.mask = (positions[None, :] < self.sizes[:, None]).to(device)

    def first(self, count: int) -> PaddedCohort:
        """The cohort's first ``count`` clients (views of this one's tensors)."""
        part = copy.copy(self)
        part.size = count
        part.sizes, part.x, part.y = self.sizes[:count], self.x[:count], self.y[:count]
        part.mask = self.mask[:count]
        return part

    def _copied(
        self, examples: Sequence[Examples], longest: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each client's examples copied into place, then its padding."""
        first = examples[0]
        filler = next((e for e in examples if len(e)), None)
        # every row below is written (examples, then padding), unless no client
        # has an example: then zeros. Not filling first made this 1.2-1.9x faster
        # on a 2-core CPU (100 Fashion-MNIST clients: 30.6 -> 18.8 ms with
        # reuse_cpu_memory, 61 -> 52 without; benchmarks/padded_cohort.py)
        new = torch.empty if filler is not None else torch.zeros
        x = new((self.size, longest, *first.x.shape[1:]), dtype=first.x.dtype)
        y = new((self.size, longest), dtype=first.y.dtype)
        for c, e in enumerate(examples):
            x[c, : len(e)] = e.x
            y[c, : len(e)] = e.y
            source = e if len(e) else filler
            if source is not None and len(e) < longest:
                x[c, len(e) :] = source.x[0]
                y[c, len(e) :] = source.y[0]
        return x, y


def _gathered(
    examples: Sequence[Examples], longest: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Where every client's examples are rows of one block (a population's
    clients, :class:`ExampleRows`): the padded cohort gathered from that block in
    one ``index_select``, padded as :class:`PaddedCohort` pads (with the row it
    would copy), rather than each client's rows gathered and then copied (ten
    Fashion-MNIST clients: 0.82 against 2.16 ms on a 2-core CPU). ``None``
    otherwise, or where no client has an example."""
    rows = _rows_of_one_block(examples)
    filler = next((e.rows[0] for e in rows if len(e)), None) if rows else None
    if rows is None or filler is None:
        return None
    index = torch.empty((len(rows), longest), dtype=torch.int64)
    for c, e in enumerate(rows):
        index[c, : len(e)] = e.rows
        index[c, len(e) :] = e.rows[0] if len(e) else filler
    x, y = _select(rows[0].source, index.flatten())
    return x.view(len(rows), longest, *x.shape[1:]), y.view(len(rows), longest)


def _rows_of_one_block(examples: Sequence[Examples]) -> list[ExampleRows] | None:
    """``examples`` where every client's are rows of one block (a population's
    clients, :class:`ExampleRows`); ``None`` otherwise or for no clients."""
    if not examples or not all(isinstance(e, ExampleRows) for e in examples):
        return None
    rows = cast(list[ExampleRows], examples)
    block = rows[0].source
    return rows if all(e.source is block for e in rows) else None


def _select(block: Examples, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``index`` of ``block``, each of x and y in one ``index_select``."""
    x = block.x.index_select(0, index.to(block.x.device))
    return x, block.y.index_select(0, index.to(block.y.device))


def check_batchable(model: FunctionalModel, *, training: bool) -> None:
    """:class:`NotBatchable` if ``model`` has layers that keep a cohort from
    running as one padded batch (see :meth:`FunctionalModel.unbatchable_layers`)."""
    layers = model.unbatchable_layers(training=training)
    if layers:
        raise NotBatchable(
            "the cohort runs client by client (slower, the same results): the "
            f"model's layers {', '.join(layers)} keep it from running as one "
            "padded batch with the sequential meaning"
        )


def _gather(
    x: torch.Tensor, y: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each client's examples at ``index[c, :]`` (positions in its own data)."""
    rows = torch.arange(x.shape[0], device=index.device)[:, None]
    return x[rows, index], y[rows, index]


def _take(
    x: torch.Tensor, y: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_gather` for ``index`` of any shape ``[clients, ...]``, as one
    ``index_select`` of the clients' rows laid end to end: eager, where advanced
    indexing took three times as long (ten Fashion-MNIST clients' five batches of
    10 on a 2-core CPU: 145 against 45 us)."""
    clients, longest = x.shape[:2]
    start = torch.arange(0, clients * longest, longest, device=index.device)
    rows = (index + start.view(-1, *[1] * (index.dim() - 1))).flatten()
    picked = x.reshape(clients * longest, *x.shape[2:]).index_select(0, rows)
    labels = y.flatten().index_select(0, rows).view_as(index)
    return picked.view(*index.shape, *x.shape[2:]), labels


def stacked_params(payload: Any, size: int, device: torch.device) -> Params:
    """Parameters with a leading client axis, from a broadcast or a stacked value;
    :class:`NotBatchable` (the runtime then trains client by client) for the list a
    runtime keeps of values it could not stack."""
    if isinstance(payload, Replicated):
        return {
            k: v.to(device).expand(size, *v.shape) for k, v in payload.value.items()
        }
    if isinstance(payload, Stacked):
        return {k: v.to(device) for k, v in payload.tree.items()}
    raise NotBatchable(
        "the clients' parameters could not be stacked (they differ in structure, "
        f"shape or dtype: got a {type(payload).__name__}), so they are computed "
        "client by client"
    )


COMPILED_CPU_PARAMETER_BYTES = 8 * 2**20
"""Parameter bytes a torch thread's share of a compiled CPU chunk may hold."""


def clients_at_once_compiled(payload: Any) -> int:
    """How many clients FedAvg's compiled step trains at once on the CPU: as many
    as hold :data:`COMPILED_CPU_PARAMETER_BYTES` of parameters a torch thread, at
    least one (``payload``: the broadcast or stacked parameters).

    Compiled, the step's cost a client grows with the clients computed together
    once their parameters outgrow the caches, and on one thread also for
    convolutions, which ``vmap`` makes grouped ones
    (``benchmarks/compiled_chunk_cost.py``). The budget was fitted on a 2-core
    machine (``benchmarks/chunk_size.py --compile``): the McMahan CNN (6.7 MB of
    parameters) trains 10 clients fastest one at a time on one thread and two at
    a time on two; the 2NN (0.8 MB) all ten at once.

    >>> params = {"w": torch.zeros(1024, 1024)}  # 4 MiB a client
    >>> clients_at_once_compiled(Replicated(params, 10)) == 2 * torch.get_num_threads()
    True
    """
    one = stacked_params(payload, 1, torch.device("cpu"))  # no copy on the CPU
    per_client = sum(v[0].nbytes for v in one.values())
    budget = COMPILED_CPU_PARAMETER_BYTES * torch.get_num_threads()
    return max(1, int(budget // max(per_client, 1)))


def batch_schedule(
    sizes: Sequence[int],
    seeds: Sequence[int],
    epochs: int,
    batch_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every client's minibatches, padded: ``index[c, e, s, j]`` and its mask.

    Client c in epoch e takes, at step s, the examples ``order[s*B : (s+1)*B]`` of a
    permutation drawn from its own generator, as the sequential client work does.
    """
    longest = max(max(sizes), 1)
    batch = longest if batch_size is None else min(batch_size, longest)
    steps = math.ceil(longest / batch)
    index = torch.zeros((len(sizes), epochs, steps * batch), dtype=torch.int64)
    mask = torch.zeros((len(sizes), epochs, steps * batch), dtype=torch.bool)
    for c, (n, seed) in enumerate(zip(sizes, seeds, strict=True)):
        generator = torch.Generator().manual_seed(seed)
        for e in range(epochs):
            if n:
                index[c, e, :n] = torch.randperm(n, generator=generator)
                mask[c, e, :n] = True
    shape = (len(sizes), epochs, steps, batch)
    return index.reshape(shape), mask.reshape(shape)


def _keep_where(active: torch.Tensor, new: Any, old: Any) -> Any:
    def pick(n: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return torch.where(active.view(-1, *[1] * (n.dim() - 1)), n, o)

    return tree_map(pick, new, old)


def own_copy(tree: Any) -> Any:
    """A copy of ``tree`` whose leaves are contiguous and have memory of their own
    (to update in place: broadcast or expanded values share theirs)."""
    return tree_map(
        lambda v: v.detach().clone(memory_format=torch.contiguous_format), tree
    )


def copy_tree(into: Any, values: Any) -> None:
    """Copy each leaf of ``values`` into the tensor at its place in ``into`` (a
    dict's entries by key, whatever their order: an optimizer's ``update`` may
    return its state's keys in another order than ``init`` made them)."""
    tree_map(lambda target, source: target.copy_(source), into, values)


def _own_code(method: Any) -> Any:
    """``method`` bound to a copy of its function with a code object of its own
    (torch.compile keeps its compilations, and counts them, per code object)."""
    function = method.__func__
    copy = types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    return types.MethodType(copy, method.__self__)


COMPILE_OPTIONS: dict[str, Any] = {"cpp_wrapper": True, "layout_optimization": False}
"""Inductor's options for :func:`compile_step` (see there;
``benchmarks/step_profile.py`` turns ``cpp_wrapper`` off to see the kernels in a
profile)."""


def compile_step(method: Any, fold: Any = None, *, cpp_wrapper: bool = True) -> Any:
    """``torch.compile`` of a cohort step method (a copy of its code, see
    :func:`_own_code`), as the vectorized runtime compiles it.

    Shapes start static: a dimension that changes later (the padded length of a new
    cohort, a smaller last chunk) is made dynamic by one recompilation. A 10-client
    2NN step ran about 5 % faster so than with every dimension symbolic from the
    start (fewer guards to check before each call, and sizes known to the generated
    code), and 2-3 % faster again with ``cpp_wrapper`` (the calls between kernels
    made from C++, not Python), which can cost seconds more at compilation
    (``benchmarks/compiled_step.py``, at 1 and 2 threads). ``fold``, if given, is
    the post-grad pass. ``cpp_wrapper=False`` leaves the calls in Python, as the
    vectorized runtime compiles for CUDA: replayed from a CUDA graph (its default
    there), the step's kernels are launched without those calls, and the C++
    wrapper would only lengthen compilation; without graphs the calls cost what
    they cost in Python.

    Tensors keep their PyTorch layouts (``layout_optimization`` off). Inductor
    would otherwise lay a graph with convolutions out channels-last; a cohort's
    convolutions are the grouped ones ``vmap`` makes (a group per client), and the
    bias, ReLU and pooling between them then ran as loops that read one layout
    and write the other (one of them 6.4 ms of the McMahan CNN's 50 ms step). Kept
    as they are, that step ran 1.07-1.08x faster at 2 threads and 1.12-1.19x at 1
    (``compiled_step.py --model cnn``); a model without convolutions compiles the
    same either way.
    """
    options: dict[str, Any] = dict(COMPILE_OPTIONS)
    options["cpp_wrapper"] = options["cpp_wrapper"] and cpp_wrapper
    if fold is not None:
        options["post_grad_custom_post_pass"] = fold
    return torch.compile(_own_code(method), options=options)


class CohortStep:
    """One minibatch step of every client at once: gradients by ``vmap(grad)``, then
    the optimizer; clients without a batch in this step keep what they had.

    With ``compile`` the step runs through :func:`compile_step` (masked and
    unmasked steps compile once each, and once more each when a shape changes),
    kept as long as this object is; ``steps_per_call`` > 1 also compiles
    :meth:`steps`, which :func:`cohort_local_training` then runs where it can.
    Torch keeps at most ``torch._dynamo.config.recompile_limit`` (8) compilations
    of one function and then runs it eagerly; each step therefore compiles its own
    copy of the code, so that a sweep of learning rates (constants of the
    optimizer, one compilation each) in one process does not use up one shared
    allowance.

    Compiled, the step updates the parameters and optimizer state in place (start
    from :meth:`begin`), which lets :class:`FoldUpdateIntoGemm` accumulate SGD's
    update of a linear layer straight into its weights (momentum's, into its
    velocity); in :meth:`steps`, SGD's updates of a layer fed by the data are
    first deferred to the end of the call (``_defer_update.py``). Eager, the
    unmasked steps of SGD, momentum and Adam update in place too
    (``Optimizer.update_in_place``); a masked step returns new tensors. Eager on
    the CPU, the unmasked steps of plain SGD or heavy-ball momentum on a network
    of dense layers run without ``vmap``, their updates (or velocities) folded
    into the weight gradients' products (:class:`DenseCohortStep`; an optimizer
    ``_replace``d with ``fold_alpha=None`` or ``heavy_ball=None`` keeps the
    ``vmap`` step). :meth:`eager` is the eager step, which a compiled
    step's :func:`cohort_local_training` runs for the clients that have a batch at
    a step where others have none. Where the dense step's SGD pays for it
    (:meth:`steps_at_once`), :func:`cohort_local_training` takes the steps at which
    the same clients have a batch several at once (:meth:`eager_steps`).
    """

    def __init__(
        self,
        model: FunctionalModel,
        optimizer: Optimizer,
        *,
        compile: bool = False,
        steps_per_call: int = 1,
        cpp_wrapper: bool = True,
    ) -> None:
        CohortOptions(compile=compile, steps_per_call=steps_per_call)  # checks them
        self.steps_per_call = steps_per_call
        """Steps a compiled call runs where every client has a batch (see
        :meth:`steps`)."""
        self.grad = vmap(grad_and_value(masked_loss(model)))
        self.optimizer = optimizer
        # Elementwise optimizers apply to stacked parameters as they are; Adam's
        # update in place too (its step count one a client).
        self._update = optimizer.update if optimizer.elementwise else None
        stacks = optimizer.elementwise or optimizer.stacks_in_place
        self._update_in_place = optimizer.update_in_place if stacks else None
        self.compiled = compile
        self._model = model
        self.dense = DenseCohortStep.of(model, optimizer)
        """The eager step of a dense network under plain SGD or heavy-ball momentum,
        on the CPU, without ``vmap`` (:class:`DenseCohortStep`); ``None`` where it
        does not apply.
        Decided again by :meth:`init` at every cohort's start, for the module as it
        is then (a layer swapped or a hook added between rounds)."""
        self.fold: FoldUpdateIntoGemm | None = None
        """The compiler pass of the compiled step (its ``folded`` counts rewrites)."""
        if compile:
            # torch._inductor takes seconds to import: only when compiling
            from ._gemm_update import FoldUpdateIntoGemm

            self.fold = FoldUpdateIntoGemm()
            self._run = compile_step(
                self._step_in_place, self.fold, cpp_wrapper=cpp_wrapper
            )
            # its own code object, so its own compilations and recompile_limit
            self._run_steps = compile_step(
                self._steps_in_place, self.fold, cpp_wrapper=cpp_wrapper
            )

    def init(self, params: Params) -> Any:
        """The optimizer state of every client, from stacked parameters (at a
        cohort's start: the eager step also decides again on :attr:`dense`)."""
        self.dense = DenseCohortStep.of(self._model, self.optimizer)
        if self.optimizer.elementwise:
            return self.optimizer.init(params)
        return vmap(self.optimizer.init)(params)

    def begin(self, start: Params) -> tuple[Params, Any]:
        """Parameters and optimizer state to train from: a copy of ``start`` (left
        as it is) and fresh state, both the step's own to update in place (so
        every leaf has memory of its own: ``vmap`` of an optimizer's ``init``
        returns a state that does not depend on the parameters, such as Adam's
        step count, as one value expanded over the clients)."""
        params = own_copy(start)
        return params, own_copy(self.init(params))

    def __call__(
        self,
        data: PaddedCohort,
        params: Params,
        state: Any,
        index: torch.Tensor,
        batch_mask: torch.Tensor,
        masked: bool,
    ) -> tuple[Params, Any, torch.Tensor]:
        """(new params, new state, each client's summed loss in this step).

        ``masked=False`` promises that every client has a batch (no masking needed).
        The new params and state may be ``params`` and ``state`` themselves, updated
        in place (so they must be the step's own, from :meth:`begin`): compiled,
        always; eager, at unmasked steps of an optimizer with ``update_in_place``
        (SGD, momentum, Adam).
        """
        if not self.compiled:
            return self.eager(data, params, state, index, batch_mask, masked)
        # Same strides every step, so an epoch's index slices do not each cost a
        # recompilation (a no-op on contiguous tensors).
        index, batch_mask = index.contiguous(), batch_mask.contiguous()
        loss = self._run(data.x, data.y, params, state, index, batch_mask, masked)
        return params, state, loss

    def eager(
        self,
        data: PaddedCohort,
        params: Params,
        state: Any,
        index: torch.Tensor,
        batch_mask: torch.Tensor,
        masked: bool,
    ) -> tuple[Params, Any, torch.Tensor]:
        """:meth:`__call__`'s eager step, compiled or not (a compiled step's own
        calls run it for a cohort's clients that have a batch: see
        :func:`cohort_local_training`)."""
        if self.dense is not None and not masked and data.x.device.type == "cpu":
            steps = index[:, None], batch_mask[:, None]
            return params, state, self.eager_steps(data, params, state, *steps)
        return self._step(
            data.x, data.y, params, state, index, batch_mask, masked, in_place=True
        )

    def steps_at_once(self, plan: TrainingPlan, clients: int) -> int:
        """How many of ``plan``'s steps at which its first ``clients`` clients
        (and no others) have a batch to take in one call: compiled, where every
        client has, ``steps_per_call`` (:meth:`steps`); eager on the CPU, where
        those clients can step alone (all of them, or a longest-first plan's
        first), the dense SGD step's deferred steps (:meth:`eager_steps`); else 1.
        """
        data = plan.data
        if self.compiled and clients == data.size:
            return self.steps_per_call
        if self.dense is None or data.x.device.type != "cpu":
            return 1
        if clients < data.size and not plan.longest_first:
            return 1  # a masked step
        return self.dense.steps_at_once(data.x.shape[2:], plan.batch_index.shape[3])

    def eager_steps(
        self,
        data: PaddedCohort,
        params: Params,
        state: Any,
        index: torch.Tensor,
        batch_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``index.shape[1]`` eager steps of the dense network's SGD, the first
        linear layer's updates deferred to their end (:meth:`DenseCohortStep.steps`),
        updating ``params`` in place; each client's summed loss over them. Takes
        what :meth:`steps` does; every client must have a batch at every step."""
        if self.dense is None:
            raise RuntimeError("eager_steps() runs the dense network's step")
        x, y = _take(data.x, data.y, index)
        return self.dense.steps(params, x, y, batch_mask, state)

    def steps(
        self,
        data: PaddedCohort,
        params: Params,
        state: Any,
        index: torch.Tensor,
        batch_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``index.shape[1]`` steps in one compiled call, updating ``params`` and
        ``state`` in place (the step's own, from :meth:`begin`); each client's
        summed loss over them.

        ``index[:, j]`` and ``batch_mask[:, j]`` are step j's, as :meth:`__call__`
        takes them, and every client must have a batch at every step. The steps are
        unrolled into one graph: one call's overhead (guards, wrappers, about 0.1 ms
        on a CPU) is paid once for them all, and compiling takes as many times
        longer. With SGD, the forward products of a layer fed by the data (whose
        inputs of every step are known before the first) become one product, and
        its updates one at the end (``_defer_update.py``). Each distinct count
        compiles once.
        """
        if not self.compiled:
            raise RuntimeError("steps() runs the compiled step (compile=True)")
        if not bool(batch_mask.any(dim=2).all()):  # on the CPU: no device sync
            raise ValueError("steps() needs a batch for every client at every step")
        index, batch_mask = index.contiguous(), batch_mask.contiguous()
        loss: torch.Tensor = self._run_steps(
            data.x, data.y, params, state, index, batch_mask
        )
        return loss

    def _steps_in_place(
        self,
        x_all: torch.Tensor,
        y_all: torch.Tensor,
        params: Params,
        state: Any,
        index: torch.Tensor,
        batch_mask: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`_step_in_place` for each of ``index.shape[1]`` steps."""
        losses = [
            self._step_in_place(
                x_all, y_all, params, state, index[:, j], batch_mask[:, j], False
            )
            for j in range(index.shape[1])
        ]
        return torch.stack(losses).sum(dim=0)

    def _step_in_place(
        self,
        x_all: torch.Tensor,
        y_all: torch.Tensor,
        params: Params,
        state: Any,
        *batch: Any,
    ) -> torch.Tensor:
        """:meth:`_step`, its results written into ``params`` and ``state``."""
        new_params, new_state, loss = self._step(x_all, y_all, params, state, *batch)
        copy_tree(params, new_params)
        copy_tree(state, new_state)
        return loss

    def _step(
        self,
        x_all: torch.Tensor,
        y_all: torch.Tensor,
        params: Params,
        state: Any,
        index: torch.Tensor,
        batch_mask: torch.Tensor,
        masked: bool,
        in_place: bool = False,
    ) -> tuple[Params, Any, torch.Tensor]:
        """The step; with ``in_place`` (eager only: the compiled step's graph is
        functional until its pass folds the update), an unmasked step of an
        optimizer with ``update_in_place`` writes into ``params`` and ``state``."""
        x, y = _gather(x_all, y_all, index)
        grads, loss = self.grad(params, x, y, batch_mask)
        loss = loss.detach().double() * batch_mask.sum(dim=1)
        if in_place and not masked and self._update_in_place is not None:
            self._update_in_place(grads, state, params)
            return params, state, loss
        update = self._update or vmap(self.optimizer.update)
        new_params, new_state = update(grads, state, params)
        if masked:
            active = batch_mask.any(dim=1)
            new_params = _keep_where(active, new_params, params)
            new_state = _keep_where(active, new_state, state)
        return new_params, new_state, loss


class TrainingPlan(NamedTuple):
    """A cohort's local training laid out: its padded data, its starting parameters
    and every client's minibatches."""

    data: PaddedCohort
    start: Params
    batch_index: torch.Tensor
    """``batch_index[c, e, s, j]``: client c's j-th example at step s of epoch e."""
    batch_mask: torch.Tensor
    """Which entries of ``batch_index`` are real examples (the rest is padding)."""
    active: list[list[int]]
    """``active[e][s]``: how many clients have a batch at that step."""
    longest_first: bool = False
    """The clients are in order of size, largest first (:func:`plan_training`), so
    the ones with a batch at step s of epoch e are the first ``active[e][s]``."""
    order: list[int] | None = None
    """The plan's client i is the cohort's client ``order[i]``; ``None``: the
    cohort's order."""

    @property
    def epochs(self) -> int:
        return self.batch_index.shape[1]

    @property
    def everyone(self) -> list[list[bool]]:
        """``everyone[e][s]``: every client has a batch at that step (no masking)."""
        return [[k == self.data.size for k in steps] for steps in self.active]


def plan_training(
    params: Any,
    examples: Sequence[Examples],
    seeds: Sequence[int],
    epochs: int,
    batch_size: int | None,
    device: torch.device,
    *,
    longest_first: bool = False,
) -> TrainingPlan:
    """Lay out a cohort's local training on ``device``.

    With ``longest_first`` the plan orders the clients by size, largest first (of
    equal ones, in the cohort's order; :attr:`TrainingPlan.order`), and
    :func:`training_result` puts them back in the cohort's order. A client's
    batches come at an epoch's first steps, so the clients with a batch at a step
    are then a prefix of the cohort, which the eager step can train alone
    (:func:`cohort_local_training`).
    """
    # None where already longest first (IID clients): nothing to reorder
    order = order_by_size([len(e) for e in examples]) if longest_first else None
    if order is not None:
        examples = [examples[c] for c in order]
        seeds = [seeds[c] for c in order]
    data = PaddedCohort(examples, device)
    start = stacked_params(params, data.size, device)
    if order is not None and isinstance(params, Stacked):  # a broadcast needs none
        picks = torch.tensor(order, device=device)
        start = {k: v.index_select(0, picks) for k, v in start.items()}
    index, mask = batch_schedule(data.sizes.tolist(), seeds, epochs, batch_size)
    # Known before the loop, on the CPU: how many clients have a batch at each
    # step (where all do, no masking of the update; no device sync in the loop).
    active = mask.any(dim=3).sum(dim=0).tolist()
    index, mask = index.to(device), mask.to(device)
    return TrainingPlan(data, start, index, mask, active, longest_first, order)


def cohort_local_training(
    step: CohortStep, plan: TrainingPlan
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """FedAvg's local training for every client at once: (deltas, weights, losses)."""
    data, index, mask = plan.data, plan.batch_index, plan.batch_mask
    local, state = step.begin(plan.start)
    loss_sum = torch.zeros(data.size, dtype=torch.float64, device=index.device)
    for e in range(index.shape[1]):
        s = 0
        while s < index.shape[2]:
            clients = plan.active[e][s]
            together = _steps_together(step, plan, e, s)
            if 0 < clients < data.size and plan.longest_first:
                # only the clients with a batch (a prefix), by the eager step:
                # compiled, each number of them would compile anew
                _narrowed_steps(step, plan, local, state, loss_sum, e, s, together)
            elif together > 1:
                run = step.steps if step.compiled else step.eager_steps
                loss_sum += run(
                    data,
                    local,
                    state,
                    index[:, e, s : s + together],
                    mask[:, e, s : s + together],
                )
            elif clients:
                masked = clients < data.size
                local, state, loss = step(
                    data, local, state, index[:, e, s], mask[:, e, s], masked
                )
                loss_sum += loss
            s += together
    return training_result(plan, local, loss_sum)


def _steps_together(step: CohortStep, plan: TrainingPlan, e: int, s: int) -> int:
    """How many steps from step s of epoch e to take in one call: those at which
    the same clients have a batch, up to :meth:`CohortStep.steps_at_once` (for a
    compiled step of every client exactly that many or one: another count would
    compile anew)."""
    active = plan.active[e]
    clients = active[s]
    most = step.steps_at_once(plan, clients) if clients else 1
    same = 1
    while same < most and s + same < len(active) and active[s + same] == clients:
        same += 1
    if step.compiled and clients == plan.data.size and same < most:
        return 1
    return same


def _narrowed_steps(
    step: CohortStep,
    plan: TrainingPlan,
    local: Params,
    state: Any,
    loss_sum: torch.Tensor,
    e: int,
    s: int,
    count: int = 1,
) -> None:
    """``count`` steps from step s of epoch e for the plan's first
    ``plan.active[e][s]`` clients alone, the ones with a batch (the plan is
    longest first), on views of their rows of ``local``, ``state`` and
    ``loss_sum``, updated in place: unmasked steps, where a masked one would
    compute every client and keep the finished ones' parameters
    (``benchmarks/unequal_clients.py``)."""
    k = plan.active[e][s]
    params, opt_state = tree_map(lambda v: v[:k], (local, state))
    data, index, mask = (
        plan.data.first(k),
        plan.batch_index[:k, e],
        plan.batch_mask[:k, e],
    )
    if count > 1:
        span = slice(s, s + count)
        loss_sum[:k] += step.eager_steps(
            data, params, opt_state, index[:, span], mask[:, span]
        )
        return
    new_params, new_state, loss = step.eager(
        data, params, opt_state, index[:, s], mask[:, s], False
    )
    if new_params is not params:  # an optimizer without an in-place update
        copy_tree(params, new_params)
    if new_state is not opt_state:
        copy_tree(opt_state, new_state)
    loss_sum[:k] += loss


def training_result(
    plan: TrainingPlan, local: Params, loss_sum: torch.Tensor
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """(deltas, weights, mean losses) of a cohort's local training, in the
    cohort's order of clients."""
    deltas = {k: (local[k] - plan.start[k]).detach() for k in plan.start}
    sizes = plan.data.sizes.to(device=loss_sum.device, dtype=torch.float64)
    losses = loss_sum / (plan.epochs * sizes).clamp(min=1)
    if plan.order is None:
        return deltas, sizes, losses
    back = torch.argsort(torch.tensor(plan.order, device=loss_sum.device))
    deltas = {k: v.index_select(0, back) for k, v in deltas.items()}
    return deltas, sizes[back], losses[back]


def cohort_gradient(
    model: FunctionalModel,
    params: Any,
    examples: Sequence[Examples],
    device: torch.device,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """FedSGD's full-batch gradient for every client at once.

    Returns (gradients, weights, losses), each with a leading client axis.
    """
    data = PaddedCohort(examples, device)
    start = stacked_params(params, data.size, device)
    grads, loss = vmap(grad_and_value(masked_loss(model)))(
        start, data.x, data.y, data.mask
    )
    detached = {k: v.detach() for k, v in grads.items()}
    sizes = data.sizes.to(device=device, dtype=torch.float64)
    return detached, sizes, loss.detach().double()


def cohort_evaluation(
    model: FunctionalModel,
    params: Any,
    examples: Sequence[Examples],
    batch_size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Every client's mean loss and accuracy on its own examples, at once: of a
    broadcast model on all their examples in a row (:func:`_one_model_evaluation`),
    of each client's own model by ``vmap`` over the padded cohort."""
    if isinstance(params, Replicated):
        return _one_model_evaluation(model, params.value, examples, batch_size, device)
    data = PaddedCohort(examples, device)
    start = stacked_params(params, data.size, device)
    apply = vmap(model.predict)
    loss = torch.zeros(data.size, dtype=torch.float64, device=device)
    correct = torch.zeros(data.size, dtype=torch.float64, device=device)
    with torch.no_grad():
        for begin in range(0, data.x.shape[1], batch_size):
            x = data.x[:, begin : begin + batch_size]
            y = data.y[:, begin : begin + batch_size]
            valid = data.mask[:, begin : begin + batch_size].double()
            logits = apply(start, x)
            per_example = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), y.flatten(), reduction="none"
            ).view_as(valid)
            loss += (per_example.double() * valid).sum(dim=1)
            correct += ((logits.argmax(dim=-1) == y).double() * valid).sum(dim=1)
    n = data.sizes.to(device=device, dtype=torch.float64).clamp(min=1)
    return {"loss": loss / n, "accuracy": correct / n}


def _one_model_evaluation(
    model: FunctionalModel,
    params: Params,
    examples: Sequence[Examples],
    batch_size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """:func:`cohort_evaluation` of one model for every client: the clients'
    examples one after another, in batches of ``batch_size`` as one client's would
    be, with neither padding nor ``vmap``, each example's loss and hit summed
    into its client's. Padded under ``vmap``, a cohort of 10 lognormal clients
    took 4.8-5.2x as long as the local runtime's evaluation for the McMahan CNN
    and 2.2-2.5x for the 2NN; so, 0.98-1.16x its speed
    (``benchmarks/cohort_evaluation.py``)."""
    sizes = torch.tensor([len(e) for e in examples], dtype=torch.int64, device=device)
    owner = torch.repeat_interleave(torch.arange(len(examples), device=device), sizes)
    x, y = _in_a_row(examples, device)
    params = {k: v.to(device) for k, v in params.items()}
    loss = torch.zeros(len(examples), dtype=torch.float64, device=device)
    correct = torch.zeros(len(examples), dtype=torch.float64, device=device)
    with torch.no_grad():
        for begin in range(0, len(y), batch_size):
            rows = slice(begin, begin + batch_size)
            logits = model.predict(params, x[rows])
            per_example = torch.nn.functional.cross_entropy(
                logits, y[rows], reduction="none"
            )
            loss.index_add_(0, owner[rows], per_example.double())
            hits = (logits.argmax(dim=-1) == y[rows]).double()
            correct.index_add_(0, owner[rows], hits)
    n = sizes.to(torch.float64).clamp(min=1)
    return {"loss": loss / n, "accuracy": correct / n}


def _in_a_row(
    examples: Sequence[Examples], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clients' examples one after another, on ``device``: where all are rows
    of one block (:class:`ExampleRows`), gathered from it in one ``index_select``
    (as :func:`_gathered` does), else copied client by client."""
    rows = _rows_of_one_block(examples)
    if rows is not None:
        x, y = _select(rows[0].source, torch.cat([e.rows for e in rows]))
        return x.to(device), y.to(device)
    x = torch.cat([e.x.to(device) for e in examples])
    return x, torch.cat([e.y.to(device) for e in examples])
