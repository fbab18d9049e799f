"""A functional view of an ``nn.Module``: parameters in, predictions out."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field, replace
from typing import Any, final

import torch
from torch import nn
from torch.func import functional_call

from ._models import build_module
from ._pooling import WindowMaxima
from ._types import Params

__all__ = ["FunctionalModel", "build_model"]


AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16}
"""The mixed precisions a :class:`FunctionalModel` runs in, by the name a
configuration gives them (``[model] autocast``, a deployed task's ``autocast``)."""


@final
@dataclass(frozen=True, eq=False)
class FunctionalModel:
    """An ``nn.Module`` used as a pure function of its parameters.

    The module is only a template: training never changes its parameters, and
    ``apply(params, x)`` runs it with ``params`` in place of its own. To do so
    ``torch.func.functional_call`` puts ``params`` into the module for the call, so
    calls from several threads take turns (a lock: without it two threads' calls
    ran with each other's parameters, 512 of 600 in a test); compiled code has that
    swap traced away and takes no lock. :meth:`training` holds the module so for a
    block of steps, and gives it its own parameters back at the end.

    ``autocast=torch.bfloat16`` runs the module in mixed precision
    (``torch.autocast`` on the inputs' device): its matrix products and
    convolutions in bfloat16, while parameters, gradients, the optimizer and the
    loss stay float32 (the logits are returned as float32). That changes what is
    computed, by bfloat16's rounding (8 bits of mantissa), and buys speed where the
    hardware has bfloat16 units: ``benchmarks/mixed_precision.py``.

    >>> import torch
    >>> model = build_model("logistic", (4,), 3, seed=0)
    >>> params = model.init()
    >>> model.apply(params, torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    module: nn.Module
    autocast: torch.dtype | None = None
    _lock: threading.RLock = field(
        default_factory=threading.RLock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES.values():
            raise ValueError(
                f"autocast must be None or torch.bfloat16, got {self.autocast!r} "
                "(float16 would need loss scaling, which fedloom does not do)"
            )
        buffers = [name for name, _ in self.module.named_buffers()]
        if buffers:
            raise ValueError(
                "models with buffers (e.g. BatchNorm running statistics: "
                f"{buffers[:3]}) are not supported: their state would not be "
                "federated; use GroupNorm or LayerNorm instead"
            )

    @functools.cached_property
    def _pools(self) -> bool:
        return any(isinstance(m, nn.MaxPool2d) for m in self.module.modules())

    def copy(self) -> FunctionalModel:
        """The same model with a module of its own (a deep copy, with its own lock),
        whose calls need not wait for this one's: for another thread."""
        with self._lock:  # not while a call has put its parameters into the module
            module = deepcopy(self.module)
        return replace(self, module=module)

    def init(self) -> Params:
        """A copy of the module's initial parameters (waiting, as calls do, while a
        call or a :meth:`training` block in another thread has put its parameters
        into the module)."""
        with self._lock:
            named = self.module.named_parameters()
            return {name: p.detach().clone() for name, p in named}

    def apply(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for inputs ``x`` under ``params``, for training: the
        module runs in its own mode (``nn.Module``'s default, training: dropout
        drops)."""
        with self._turn(), self._precision(x):
            logits = functional_call(self.module, params, (x,))
        return self._float(logits)

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` for evaluation: the module runs in eval mode (dropout
        passes everything), and is left in the mode it had. Without gradients,
        max pooling of non-overlapping windows on the CPU runs as maxima of strided
        views (:class:`WindowMaxima`: the same values, faster; for a module with
        ``nn.MaxPool2d`` layers, as the mode costs every other call a little)."""
        pooling = WindowMaxima() if self._pools else contextlib.nullcontext()
        with self._turn(), self._precision(x), pooling:
            training = self.module.training
            self.module.train(False)
            try:
                logits = functional_call(self.module, params, (x,))
            finally:
                self.module.train(training)
        return self._float(logits)

    @contextlib.contextmanager
    def training(
        self, params: Params
    ) -> Iterator[tuple[Params, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]:
        """For a block of training steps that update parameters in place: leaves
        that require gradients, holding a copy of ``params``, and the loss under
        them (:meth:`loss` of the leaves, computed alike).

        The leaves go into the module once for the block, where a step by
        :meth:`apply` makes new leaves and swaps them in and out at every call
        (about a sixth of a McMahan 2NN client step, ``benchmarks/local_step.py``).
        The module gets its own parameters back when the block ends, also by an
        exception; a block takes the module as it is then, so a layer changed
        between blocks is the one the next block trains. Update the
        leaves under ``torch.no_grad()``; a new tensor in their place is not seen
        by the loss. The block holds the module, so blocks and calls in other
        threads wait for it (in the block's own thread they may run, swapping
        their parameters in and the leaves back; blocks opened there must end in
        the reverse order, as nested ``with`` statements do).

        >>> model = build_model("logistic", (4,), 3, seed=0)
        >>> with model.training(model.init()) as (leaves, loss):
        ...     value = loss(torch.zeros(2, 4), torch.tensor([0, 2]))
        >>> sorted(leaves), value.requires_grad
        (['1.bias', '1.weight'], True)
        """
        with self._lock:
            leaves, places = _bind(self.module, params)

            def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                with self._precision(x):
                    logits = self.module(x)
                return nn.functional.cross_entropy(self._float(logits), y)

            try:
                yield leaves, loss
            finally:
                _restore(places)

    def _float(self, logits: torch.Tensor) -> torch.Tensor:
        """The module's ``logits``, as float32 under :attr:`autocast`."""
        return logits if self.autocast is None else logits.float()

    def _precision(self, x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` on ``x``'s device with :attr:`autocast`, if set (its
        cache of cast weights off: a CUDA graph may capture the call)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=self.autocast, cache_enabled=False)

    def _turn(self) -> contextlib.AbstractContextManager[Any]:
        """The lock a call holds while the module has its parameters; none in
        compiled code, which has that swap traced away."""
        if torch.compiler.is_compiling():
            return contextlib.nullcontext()
        return self._lock

    def unbatchable_layers(self, *, training: bool) -> list[str]:
        """The layers that keep a cohort from running as one padded batch: batch
        normalization (its batch statistics would mix in the padding, and batches
        differ once padded) and, in ``training``, random layers (dropout: under
        ``vmap`` every client would need a random stream of its own, which the
        sequential runtime does not have). Each as "name (type)"."""
        found = []
        for name, layer in self.module.named_modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) or (
                training and _drops(layer)
            ):
                found.append(f"{name or 'the model'} ({type(layer).__name__})")
        return found

    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``params`` on the batch ``(x, y)``."""
        return nn.functional.cross_entropy(self.apply(params, x), y)


def _bind(
    module: nn.Module, params: Params
) -> tuple[Params, list[tuple[nn.Module, str, nn.Parameter]]]:
    """Put a copy of each of ``params`` into ``module`` as its parameter of that
    name, at every place that parameter is (tied weights stay tied). The copies by
    name, and each place with the parameter it had."""
    named = list(module.named_parameters())
    missing = [name for name, _ in named if name not in params]
    if missing:
        raise KeyError(f"params has no {missing[0]!r} (it has {sorted(params)[:5]})")
    if len(named) != len(params):
        extra = sorted(set(params) - {name for name, _ in named})
        aliases = {name for name, _ in module.named_parameters(remove_duplicate=False)}
        if set(extra) <= aliases:
            raise KeyError(
                f"params names tied parameters again: {extra[:5]}; give each once, "
                "by the name model.init() gives it"
            )
        raise KeyError(f"params has names the module lacks: {extra[:5]}")
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        path, _, attribute = name.rpartition(".")
        places.setdefault(id(p), []).append((module.get_submodule(path), attribute))
    leaves = {  # all made before the module changes (an int tensor fails)
        name: nn.Parameter(
            params[name].detach().clone(memory_format=torch.contiguous_format)
        )
        for name, _ in named
    }
    had: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for name, own in named:
            for owner, attribute in places[id(own)]:
                had.append((owner, attribute, own))
                owner.register_parameter(attribute, leaves[name])
    except BaseException:  # a registration hook's error, an interrupt: undo
        _restore(had)
        raise
    return dict(leaves), had


def _restore(had: list[tuple[nn.Module, str, nn.Parameter]]) -> None:
    """Give each place of ``had`` back the parameter it had."""
    for owner, attribute, own in had:
        owner.register_parameter(attribute, own)


def _drops(layer: nn.Module) -> bool:
    """Whether ``layer`` drops out at random in training."""
    if isinstance(layer, nn.modules.dropout._DropoutNd):
        return layer.p > 0
    if isinstance(layer, nn.RNNBase | nn.MultiheadAttention):
        return layer.dropout > 0
    return False


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int = 0,
    autocast: torch.dtype | None = None,
) -> FunctionalModel:
    """A built-in model ("2nn", "cnn", "logistic") as a :class:`FunctionalModel`
    (``autocast``: see there)."""
    module = build_module(name, input_shape, num_classes, seed=seed)
    return FunctionalModel(module, autocast=autocast)
