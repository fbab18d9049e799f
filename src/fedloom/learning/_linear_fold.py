"""SGD's update of a linear layer's weight, accumulated into the weight by the
weight-gradient's own matrix product, in a client's eager local training.

A linear layer's weight gradient is ``dY^T X`` (the gradient at its outputs and its
inputs, as matrices); plain SGD then computes ``w + alpha * g`` with ``alpha = -lr``.
Written so, the product stores the whole gradient and the update reads it back with
the weight: weight-sized memory streamed three more times than by ``w.addmm_(dY^T,
X, alpha=alpha)``, one library call that adds the product into the weight where it
lies. For the McMahan CNN's first dense layer (3,136 x 512) the product and the
update took 810 µs at one thread, the one call 332 µs (``benchmarks/local_step.py``
times whole steps). The compiled runtimes do the same by a compiler pass
(``_gemm_update.py``); this is the eager client's form.

:func:`foldable_linears` picks the layers for which it is the same computation,
from the module's structure alone: ``nn.Linear`` layers (the class itself, its
weight a parameter of its own) inside a tree of ``nn.Sequential`` containers of
PyTorch's own layers, with no hooks on any of them nor global ones, each weight in
one place only, so that the layer's one call is the weight's only use.
:class:`LinearFold` records each such layer's input and the gradient edge of its
output during a step (the edge, not the tensor: an in-place activation after the
layer overwrites the tensor); the step asks autograd for the gradients at those
edges instead of the weights'. A layer that ran other than once that step, or in
another dtype than its weight's (autocast), has its weight's gradient computed as
usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.nn.modules import module as module_hooks

__all__ = ["LinearFold", "foldable_linears"]


def _torch_layer(layer: nn.Module) -> bool:
    """One of PyTorch's own layers, whose forward uses only its own parameters."""
    return type(layer).__module__.startswith("torch.nn.modules.")


_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _hooked(layers: list[nn.Module]) -> bool:
    """Whether any of ``layers``, or every module (global hooks), has a hook: a
    hook may change a layer's output or use a weight a second time."""
    if any(getattr(module_hooks, name) for name in _GLOBAL_HOOKS):
        return True
    return any(getattr(layer, name) for layer in layers for name in _HOOKS)


def foldable_linears(module: nn.Module) -> dict[str, nn.Linear]:
    """The weights (by parameter name) of ``module``'s linear layers whose update
    can be folded into their gradient's product, with their layers; none unless
    ``module`` is a tree of ``nn.Sequential`` containers of PyTorch's own layers
    without hooks."""
    layers = [layer for _, layer in module.named_modules(remove_duplicate=False)]
    if type(module) is not nn.Sequential or _hooked(layers):
        return {}
    for layer in layers:  # PyTorch's own layers, containers only inside containers
        if not _torch_layer(layer) or (
            type(layer) is not nn.Sequential and any(True for _ in layer.children())
        ):
            return {}
    places: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        places[id(p)] = places.get(id(p), 0) + 1
    return {
        f"{name}.weight": layer
        for name, layer in module.named_modules(remove_duplicate=False)
        if type(layer) is nn.Linear
        and "weight" in layer._parameters  # not computed (old-style weight_norm)
        and places.get(id(layer.weight)) == 1
    }


_Call = tuple[torch.Tensor, torch.dtype, GradientEdge | None]
"""A layer's call: its input, its output's dtype and its output's gradient edge
(``None`` where the output needs no gradient)."""


class LinearFold:
    """Folds SGD's update of :func:`foldable_linears`'s weights into their
    gradients' products, one step at a time, while the leaves are bound in the
    module (:meth:`FunctionalModel.training`).

    Within :meth:`recording`, a step's forward pass records each layer's input,
    its output's dtype and its output's gradient edge. :meth:`folded` gives the
    weights whose update the step folds with those edges, for which the step asks
    autograd instead of the weights; :meth:`apply` folds them from the gradients
    at the edges.
    """

    def __init__(self, layers: dict[str, nn.Linear], alpha: float) -> None:
        self.layers = layers
        self.alpha = alpha
        self._calls: dict[str, list[_Call]] = {name: [] for name in layers}

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Forward hooks on the layers for a block of steps."""
        handles = [
            layer.register_forward_hook(self._hook(self._calls[name]))
            for name, layer in self.layers.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._clear()

    @staticmethod
    def _hook(calls: list[_Call]) -> Any:
        def record(layer: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            edge = get_gradient_edge(output) if output.requires_grad else None
            calls.append((args[0], output.dtype, edge))

        return record

    def folded(self) -> dict[str, GradientEdge]:
        """The weights whose update this step folds, with their outputs' gradient
        edges: each layer that ran once, on an input and to an output of its
        weight's dtype (not under autocast)."""
        folded = {}
        for name, layer in self.layers.items():
            calls, dtype = self._calls[name], layer.weight.dtype
            if len(calls) == 1:
                x, out_dtype, edge = calls[0]
                if edge is not None and x.dtype == out_dtype == dtype:
                    folded[name] = edge
        return folded

    def apply(self, output_grads: dict[str, torch.Tensor]) -> None:
        """``w.addmm_(dY^T, X, alpha=alpha)`` for each weight of ``output_grads``
        (its ``dY``), then forget the step's records."""
        for name, dy in output_grads.items():
            x = self._calls[name][0][0]
            self.layers[name].weight.addmm_(
                dy.reshape(-1, dy.shape[-1]).mT,
                x.reshape(-1, x.shape[-1]),
                alpha=self.alpha,
            )
        self._clear()

    def _clear(self) -> None:
        for calls in self._calls.values():
            calls.clear()
