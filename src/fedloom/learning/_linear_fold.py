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
from the module's structure alone: ``nn.Linear`` layers (the class itself) inside a
tree of ``nn.Sequential`` containers of PyTorch's own layers, each layer in one
place and its weight in no other, so that the layer's call is the only use of the
weight. :class:`LinearFold` records each such layer's input and output gradient
during a step; a layer whose call differed from its weight's dtype (autocast) or
that ran other than once that step has its gradient computed as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["LinearFold", "foldable_linears"]


def _torch_layer(layer: nn.Module) -> bool:
    """One of PyTorch's own layers, whose forward uses only its own parameters."""
    return type(layer).__module__.startswith("torch.nn.modules.")


def foldable_linears(module: nn.Module) -> dict[str, nn.Linear]:
    """The weights (by parameter name) of ``module``'s linear layers whose update
    can be folded into their gradient's product, with their layers; none unless
    ``module`` is a tree of ``nn.Sequential`` containers of PyTorch's own layers."""
    places = list(module.named_modules(remove_duplicate=False))
    if type(module) is not nn.Sequential or not all(
        _torch_layer(layer) for _, layer in places
    ):
        return {}
    for _, layer in places:  # containers only inside containers
        if type(layer) is not nn.Sequential and any(True for _ in layer.children()):
            return {}
    layer_places: dict[int, int] = {}
    for _, layer in places:
        layer_places[id(layer)] = layer_places.get(id(layer), 0) + 1
    weight_places: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        weight_places[id(p)] = weight_places.get(id(p), 0) + 1
    return {
        f"{name}.weight": layer
        for name, layer in places
        if type(layer) is nn.Linear
        and layer_places[id(layer)] == 1
        and weight_places[id(layer.weight)] == 1
    }


class LinearFold:
    """Folds SGD's update of :func:`foldable_linears`'s weights into their
    gradients' products, one step at a time, while the leaves are bound in the
    module (:meth:`FunctionalModel.training`).

    Within :meth:`recording`, a step's forward pass records each layer's input, its
    output's dtype and (through a hook on the output) the gradient at its output.
    :meth:`folded` names the weights whose gradients the step need not compute,
    :meth:`apply` updates them from the records after the backward pass.
    """

    def __init__(self, layers: dict[str, nn.Linear], alpha: float) -> None:
        self.layers = layers
        self.alpha = alpha
        self._calls: dict[str, list[tuple[torch.Tensor, torch.dtype]]] = {
            name: [] for name in layers
        }
        self._output_grads: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Forward hooks on the layers for a block of steps."""
        handles = [
            layer.register_forward_hook(self._hook(name))
            for name, layer in self.layers.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._clear()

    def _hook(self, name: str) -> Any:
        calls, output_grads = self._calls[name], self._output_grads[name]

        def record(layer: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            calls.append((args[0], output.dtype))
            if output.requires_grad:
                output.register_hook(output_grads.append)

        return record

    def folded(self) -> set[str]:
        """The weights whose update this step folds: each layer that ran once, on
        an input and to an output of its weight's dtype (not under autocast)."""
        folded = set()
        for name, layer in self.layers.items():
            calls, dtype = self._calls[name], layer.weight.dtype
            if len(calls) == 1 and calls[0][0].dtype == calls[0][1] == dtype:
                folded.add(name)
        return folded

    def apply(self, names: set[str]) -> None:
        """``w.addmm_(dY^T, X, alpha=alpha)`` for each of ``names`` (nothing where
        no gradient reached the layer's output: its gradient is zero), then forget
        the step's records."""
        for name in names:
            if self._output_grads[name]:
                (x, _), dy = self._calls[name][0], self._output_grads[name][0]
                self.layers[name].weight.addmm_(
                    dy.reshape(-1, dy.shape[-1]).mT,
                    x.reshape(-1, x.shape[-1]),
                    alpha=self.alpha,
                )
        self._clear()

    def _clear(self) -> None:
        for calls in self._calls.values():
            calls.clear()
        for grads in self._output_grads.values():
            grads.clear()
