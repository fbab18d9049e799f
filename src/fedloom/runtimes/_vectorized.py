"""The ``vectorized`` runtime: a cohort's client work runs as one batched computation.

A clients value is held stacked along a leading client axis (:class:`Stacked`), as a
broadcast held once (:class:`Replicated`), or as a list of members when the values
cannot be stacked (datasets of unequal size). ``map`` runs a function on the whole
cohort at once, chunk by chunk to bound memory (clients of like size together,
where the function tells their sizes):

1. a :class:`CohortFunction` (FedAvg's local training, FedSGD's gradient, evaluation)
   runs its own batched implementation (``torch.func.vmap`` over padded, masked data);
2. a getter (``operator.attrgetter``, ``operator.itemgetter``) that picks a part of
   a stacked value, such as one field of the clients' results, picks it from the
   stacked value itself: picking commutes with stacking;
3. any other function of stacked tensors is vmapped, chunk by chunk (so, as with
   ``jax.vmap``, it must be a pure function of its tensors: PyTorch's random
   numbers are detected and sent to 4., NumPy's or Python's would be drawn once a
   chunk);
4. a function that cannot be vmapped, or a cohort function that cannot batch
   this cohort (:class:`NotBatchable`: a model with dropout or batch
   normalization), runs client by client, exactly as on the local runtime: slower,
   never different (``fallbacks`` counts these maps; a cohort function's also
   warns).

A cohort function that computes a cohort fastest unbatched (``clients_at_once``
0: the McMahan CNN's training, eager on the CPU) runs client by client too, and
where it can give another thread a copy of itself (``for_thread``), on as many
threads as torch has, one torch thread and one copy each (:meth:`_in_threads`).
"""

from __future__ import annotations

import operator
import queue
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast, final

import torch
from torch.func import vmap

from fedloom.core import (
    Aggregator,
    CohortFunction,
    CohortOptions,
    NotBatchable,
    Replicated,
    Stacked,
    StackedAggregator,
    folds_stacked,
    longest_first,
    stack,
    tensor_versions,
    tree_flatten,
    tree_map,
    unstack,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "VectorizedRuntime"]

DEFAULT_CHUNK_SIZE = 256
"""Clients computed at once, at most, unless ``chunk_size`` says otherwise."""

Payload = Stacked | Replicated | list[Any]


def _members(payload: Payload) -> list[Any]:
    if isinstance(payload, Stacked):
        return unstack(payload)
    if isinstance(payload, Replicated):
        return [payload.value] * payload.size
    return list(payload)


def _size(payload: Payload) -> int:
    return payload.size if isinstance(payload, Stacked | Replicated) else len(payload)


def _chunk(payload: Payload, clients: range | list[int]) -> Payload:
    """The ``clients`` of ``payload`` (a range: views of a stacked value)."""
    if isinstance(payload, Replicated):
        return Replicated(payload.value, len(clients))
    if isinstance(clients, range):
        part = slice(clients.start, clients.stop)
        if isinstance(payload, Stacked):
            return Stacked(
                tree_map(lambda leaf: leaf[part], payload.tree), len(clients)
            )
        return payload[part]
    if isinstance(payload, Stacked):
        picks = torch.tensor(clients)
        tree = tree_map(lambda leaf: leaf[picks.to(leaf.device)], payload.tree)
        return Stacked(tree, len(clients))
    return [payload[c] for c in clients]


Chunks = list[range] | list[list[int]]


def _chunks(
    fn: CohortFunction, payloads: Sequence[Payload], size: int, chunk: int
) -> Chunks:
    """The cohort's clients cut into chunks of at most ``chunk``: in the cohort's
    order, or, where ``fn`` tells each client's size (``client_sizes``) and there is
    more than one chunk, largest first, so each chunk holds clients of like size
    and is padded only to its own largest."""
    starts = range(0, size, chunk)
    sizes = getattr(fn, "client_sizes", None)  # optional (CohortFunction)
    if size > chunk and sizes is not None:
        order = longest_first(sizes(payloads))
        if order is not None:
            return [order[start : start + chunk] for start in starts]
    return [range(start, min(start + chunk, size)) for start in starts]


def _concat(chunks: list[Stacked], clients: Chunks) -> Stacked:
    """The chunks' results as one stacked value, in the cohort's order."""
    if len(chunks) == 1:
        return chunks[0]
    if all(isinstance(c, range) for c in clients):
        tree = tree_map(lambda *leaves: torch.cat(leaves), *(c.tree for c in chunks))
        return Stacked(tree, sum(c.size for c in chunks))
    size = sum(c.size for c in chunks)

    def put(*leaves: torch.Tensor) -> torch.Tensor:
        out = leaves[0].new_empty((size, *leaves[0].shape[1:]))
        for leaf, picks in zip(leaves, clients, strict=True):
            out.index_copy_(0, torch.tensor(picks, device=out.device), leaf)
        return out

    return Stacked(tree_map(put, *(c.tree for c in chunks)), size)


@final
class VectorizedRuntime:
    """Runs a cohort's client work as one batched computation on ``device``.

    ``chunk_size`` is how many clients are computed at once; a round on a cohort
    larger than that runs chunk after chunk, each chunk still batched and padded
    to its largest client; where the client work tells each client's size
    (FedAvg's training, FedSGD's gradients, evaluation: ``client_sizes``), the
    chunks hold clients of like size, largest first (the results in the cohort's
    order; ``benchmarks/chunk_order.py``). By default
    (None) it is :data:`DEFAULT_CHUNK_SIZE`, or fewer where a cohort function
    computes faster in smaller chunks (``CohortFunction.clients_at_once``):
    FedAvg's compiled step on the CPU trains as many clients at once as hold 8 MiB
    of parameters a torch thread (the McMahan CNN's rounds at B = 10 1.12-1.24x as
    fast as in one chunk of ten, ``benchmarks/chunk_size.py --compile``), and its
    eager training on the CPU, where that is at most two, trains client by client,
    unbatched (see ``LocalTraining.clients_at_once``). A number given is used as
    it is, for every map.
    On a CUDA device, ``cuda_graphs`` (the default) lets client work capture its
    fixed-shape loops as CUDA graphs and replay them in later rounds (FedAvg's local
    training captures an epoch); ``cuda_graphs=False`` runs everything eagerly.
    ``compile=True`` compiles FedAvg's batched step with ``torch.compile`` (seconds
    to tens of seconds, once for steps where every client has a batch and once for
    masked ones, and once more each when a shape changes). On the CPU the 2NN's
    step then runs several times as fast (``benchmarks/simulation_speed.py``);
    compiling there needs a C++ compiler, and without one ``compile=True`` is a
    ``ValueError`` here rather than an error in the first round. On CUDA the
    captured epochs replay inductor's kernels instead of the eager ones (a McMahan
    CNN round 1.34x as fast at 10 clients and 1.15x at 100 on an H200,
    ``benchmarks/gpu_speed.py``); compiling there needs Triton, checked here too.
    ``steps_per_call`` > 1 (the CPU only) unrolls that many of FedAvg's local steps
    (where every client has a batch) into one compiled call, which saves the
    overhead of the calls (about 0.1 ms each; the 2NN's step runs 1.07-1.2x as fast
    with 5, ``benchmarks/compiled_step.py``) and compiles as many times as long; a
    captured epoch has no calls to save.

    >>> from fedloom.core import CLIENTS, computation, map, mean
    >>> import torch
    >>> rt = VectorizedRuntime()
    >>> double_mean = computation(CLIENTS)(lambda x: mean(map(lambda v: 2 * v, x)))
    >>> double_mean([torch.tensor(1.0), torch.tensor(3.0)], runtime=rt)
    tensor(4.)
    """

    name = "vectorized"

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        chunk_size: int | None = None,
        cuda_graphs: bool = True,
        compile: bool = False,
        steps_per_call: int = 1,
    ) -> None:
        if chunk_size is not None:
            if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
                raise TypeError(
                    f"chunk_size must be an int or None, got {chunk_size!r}"
                )
            if chunk_size < 1:
                raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.device = torch.device(device)
        self.options = CohortOptions(  # checks steps_per_call against compile
            capture=cuda_graphs and self.device.type == "cuda",
            compile=compile,
            steps_per_call=steps_per_call,
        )
        """How cohort functions are asked to compute (graphs on CUDA only)."""
        if compile and self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"compile=True is for 'cpu' and 'cuda', not {device!r}")
        if steps_per_call > 1 and self.device.type != "cpu":
            raise ValueError(
                "steps_per_call > 1 is for the CPU, where it saves the calls between "
                f"compiled steps; on {device!r} an epoch is captured as one CUDA "
                "graph instead: leave steps_per_call at 1 there"
            )
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here")
        if compile and self.device.type == "cpu":
            _check_cpp_compiler()
        elif compile:
            _check_triton()
        self.chunk_size = chunk_size
        """Clients computed at once (None: chosen as the class says)."""
        self.fallbacks = 0
        """How many maps of stacked values could not be vmapped and ran in sequence."""

    def from_members(self, members: Sequence[Any]) -> Payload:
        stacked = stack(members)
        return list(members) if stacked is None else stacked

    def to_members(self, payload: Payload) -> list[Any]:
        return _members(payload)

    def broadcast(self, value: Any, num_clients: int) -> Replicated:
        return Replicated(value, num_clients)

    def map(self, fn: Callable[..., Any], payloads: Sequence[Payload]) -> Payload:
        sizes = {_size(p) for p in payloads}
        if len(sizes) != 1:
            raise ValueError(f"map over client values of different sizes: {sizes}")
        (size,) = sizes
        if isinstance(fn, CohortFunction):
            try:
                return self._map_cohort(fn, payloads, size)
            except NotBatchable as reason:  # raised before any work is done
                warnings.warn(str(reason), RuntimeWarning, stacklevel=2)
                self.fallbacks += 1
        elif (picked := _picked(fn, payloads)) is not None:
            return picked
        elif all(isinstance(p, Stacked | Replicated) for p in payloads):
            versions = tensor_versions(payloads)
            try:
                return self._vmap(fn, payloads, size)
            except Exception as error:  # not vmappable: run it client by client
                if tensor_versions(payloads) != versions:
                    raise ValueError(
                        f"map: {getattr(fn, '__qualname__', fn)!r} modified its "
                        "arguments in place before it failed under vmap, so it "
                        "cannot be run again client by client; it must return new "
                        "values"
                    ) from error
                self.fallbacks += 1
        return self._in_sequence(fn, payloads)

    def _in_sequence(
        self, fn: Callable[..., Any], payloads: Sequence[Payload]
    ) -> Payload:
        """``fn`` called client by client: the local meaning."""
        members = zip(*map(_members, payloads), strict=True)
        return self.from_members([fn(*args) for args in members])

    def _in_threads(
        self, fn: CohortFunction, payloads: Sequence[Payload], size: int
    ) -> Payload:
        """:meth:`_in_sequence`, the clients shared out among as many threads as
        torch has (one torch thread each, the largest clients first), each
        calling a copy of its own of ``fn`` (``fn.for_thread()``); in sequence
        where ``fn`` has no such copy, off the CPU, or for fewer than two threads
        or clients. A client's result does not depend on which thread trained it
        or when.

        Small operations do not share out well among a torch step's threads: ten
        McMahan CNN clients' first 30 steps took 2.31-2.42 s on two Python
        threads of one torch thread each, against 3.02 s in sequence on two
        torch threads and 4.58-4.69 s on one (a 2-core CPU), as Flower's actors,
        processes of one thread each, train clients side by side."""
        threads = torch.get_num_threads()
        workers = min(threads, size)
        for_thread = getattr(fn, "for_thread", None)  # optional (CohortFunction)
        own = []
        if self.device.type == "cpu" and workers > 1 and for_thread is not None:
            own = [for_thread() for _ in range(workers)]
        if not own or any(f is None for f in own):
            return self._in_sequence(cast(Callable[..., Any], fn), payloads)
        members = list(zip(*map(_members, payloads), strict=True))
        free: queue.SimpleQueue[Callable[..., Any]] = queue.SimpleQueue()
        for f in own:
            free.put(f)

        def train(args: tuple[Any, ...]) -> Any:
            work = free.get()  # a copy no other thread is calling
            try:
                torch.set_num_threads(1)
                return work(*args)
            finally:
                free.put(work)

        sizes = getattr(fn, "client_sizes", None)
        order = longest_first(sizes(payloads)) if sizes else None
        order = order or list(range(len(members)))
        results: list[Any] = [None] * len(members)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="fedloom")
        try:
            done = pool.map(train, [members[i] for i in order])
            for i, result in zip(order, done, strict=True):
                results[i] = result
        finally:
            pool.shutdown(cancel_futures=True)  # after an error, no client starts
            torch.set_num_threads(threads)  # workers set the default of new threads
        return self.from_members(results)

    def _map_cohort(
        self, fn: CohortFunction, payloads: Sequence[Payload], size: int
    ) -> Payload:
        chunk = self.chunk_size
        if chunk is None:
            asks = getattr(fn, "clients_at_once", None)  # optional (CohortFunction)
            preferred = asks and asks(payloads, self.device, self.options)
            if preferred == 0:  # fastest unbatched: client by client, by choice
                return self._in_threads(fn, payloads, size)
            chunk = min(DEFAULT_CHUNK_SIZE, preferred or DEFAULT_CHUNK_SIZE)
        clients = _chunks(fn, payloads, size, chunk)
        results = [
            fn.map_cohort([_chunk(p, c) for p in payloads], self.device, self.options)
            for c in clients
        ]
        return _concat(results, clients)

    def _vmap(
        self, fn: Callable[..., Any], payloads: Sequence[Payload], size: int
    ) -> Stacked:
        in_dims = tuple(0 if isinstance(p, Stacked) else None for p in payloads)
        args = [p.tree if isinstance(p, Stacked) else _replicated(p) for p in payloads]
        chunk = self.chunk_size or DEFAULT_CHUNK_SIZE
        out = vmap(fn, in_dims=in_dims, randomness="error", chunk_size=chunk)(*args)
        return Stacked(out, size)

    def aggregate(
        self,
        aggregator: Aggregator,
        payload: Payload,
        weights: Payload | None,
        template: Any,
    ) -> Any:
        accumulator = aggregator.init(template)
        if (
            isinstance(payload, Stacked)
            and isinstance(aggregator, StackedAggregator)
            and folds_stacked(aggregator)
        ):
            stacked_weights = weights
            if weights is not None and not isinstance(weights, Stacked):
                stacked_weights = stack(_members(weights))
            if weights is None or stacked_weights is not None:
                assert stacked_weights is None or isinstance(stacked_weights, Stacked)
                accumulator = aggregator.accumulate_stacked(
                    accumulator, payload, stacked_weights
                )
                return _to_cpu(aggregator.finalize(accumulator))
        members = _members(payload)
        weight_members = [None] * len(members) if weights is None else _members(weights)
        for value, weight in zip(members, weight_members, strict=True):
            accumulator = aggregator.accumulate(accumulator, value, weight)
        return _to_cpu(aggregator.finalize(accumulator))


def _check_cpp_compiler() -> None:
    """A ``ValueError`` now, rather than an inductor error in the first round, if
    ``torch.compile`` has no C++ compiler to build the CPU step's kernels with."""
    try:  # private API: where torch moves it, inductor's own error comes later
        # torch._inductor takes seconds to import: only when compiling, which needs it
        from torch._inductor import cpp_builder, exc

        find, missing = cpp_builder.get_cpp_compiler, exc.InvalidCxxCompiler
    except (ImportError, AttributeError):
        return
    try:
        find()
    except missing as error:  # its message names the compilers it tried
        raise ValueError(
            "compile=True needs a C++ compiler: torch.compile builds the step's "
            f"CPU kernels with one, and found none ({error}); install g++ or set "
            "CXX to a compiler, or leave compile off"
        ) from None


def _check_triton() -> None:
    """A ``ValueError`` now, rather than an inductor error in the first round, if
    ``torch.compile`` has no Triton to build the CUDA step's kernels with."""
    try:  # private API: where torch moves it, inductor's own error comes later
        from torch.utils._triton import has_triton_package
    except ImportError:
        return
    if not has_triton_package():
        raise ValueError(
            "compile=True on CUDA needs Triton: torch.compile builds the step's GPU "
            "kernels with it, and it is not installed (install the triton version "
            "your torch was built with), or leave compile off"
        )


def _picked(fn: Callable[..., Any], payloads: Sequence[Payload]) -> Stacked | None:
    """``map`` of a getter over one stacked value, as the part it picks of the
    stacked value, where that part is made of the stacked value's own leaves (a
    field of a result, an entry of a dict): each client's pick, stacked. ``None``
    otherwise (a getter of a leaf's attribute or item, ``.T`` or ``[0]``, makes a
    new tensor, which is not each client's; it is then vmapped). Under ``vmap`` a
    pick costs about a millisecond (the 2NN's results, 10 clients), three a round.
    """
    if not isinstance(fn, operator.attrgetter | operator.itemgetter):
        return None
    if len(payloads) != 1 or not isinstance(payloads[0], Stacked):
        return None
    tree = payloads[0].tree
    try:
        part = fn(tree)
    except (AttributeError, KeyError, IndexError, TypeError):
        return None  # vmap raises the same error for one client
    own = {id(leaf) for leaf in tree_flatten(tree)[0]}
    leaves = tree_flatten(part)[0]
    if not leaves or any(id(leaf) not in own for leaf in leaves):
        return None
    return Stacked(part, payloads[0].size)


def _replicated(payload: Payload) -> Any:
    if not isinstance(payload, Replicated):
        raise TypeError(f"expected a stacked or replicated value, got {payload!r}")
    return payload.value


def _to_cpu(tree: Any) -> Any:
    """Server values live on the CPU, wherever the cohort was computed."""
    return tree_map(
        lambda leaf: leaf.cpu() if isinstance(leaf, torch.Tensor) else leaf, tree
    )
