"""A cohort of dense networks stepped by plain SGD or heavy-ball momentum as batched
products, each weight's update (or velocity) folded into its gradient's product,
without ``vmap``.

:class:`CohortStep`'s eager step computes every client's gradients by
``vmap(grad(loss))`` and then updates the stacked parameters. For a network of
linear layers (the McMahan 2NN, logistic regression) on the CPU, most of that
step is not arithmetic: the transforms' dispatch, and each weight gradient
``dY^T X`` written whole (ten 2NN clients' first layer: 6.3 MB, beyond the
caches) to be read back by the update. :class:`DenseCohortStep` runs the same
network on the stacked parameters with plain autograd, a linear layer as one
batched product for all clients (``torch.baddbmm``), and asks autograd for the
gradients at the layers' outputs rather than at their weights; each weight then
takes SGD's step in the product that makes its gradient, ``w.baddbmm_(dY^T, X,
alpha=-lr)``, as :mod:`._linear_fold` does for one client. The clients' losses
are summed into one, whose gradient is each client's own (their parameters are
separate rows). ``benchmarks/dense_cohort_step.py`` times it against the
``vmap`` step; ``tests/learning/test_dense_cohort.py`` holds it to the ``vmap``
step in float64.

It applies where the computation is the same by construction
(:func:`dense_layers`): an ``nn.Sequential`` tree of PyTorch's own layers whose
every leaf is ``nn.Linear`` (foldable: see :func:`foldable_linears`),
``nn.Flatten`` keeping the batch axis or a parameter-free elementwise activation,
every parameter one linear layer's own, trained by plain SGD or heavy-ball momentum
(``Optimizer.heavy_ball``: the velocity ``v.baddbmm_(dY^T, X, beta=beta)``, then
``w -= lr v``) without autocast;
:class:`CohortStep` uses it eagerly on the CPU at unmasked steps: where every
client has a batch, and for the clients that have one at a longest-first
cohort's other steps (it has not run on a GPU, where the ``vmap`` step stays).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from ._cohort_loss import cross_entropy, masked_mean
from ._linear_fold import foldable_linears
from ._types import Params

if TYPE_CHECKING:
    from ._functional import FunctionalModel
    from ._optimizers import Optimizer

__all__ = ["DenseCohortStep", "dense_layers"]

ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.CELU,
    nn.ELU,
    nn.GELU,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Identity,
    nn.LeakyReLU,
    nn.Mish,
    nn.ReLU,
    nn.ReLU6,
    nn.SELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Softplus,
    nn.Tanh,
)
"""Layers without parameters that act on each element alone, so on a cohort's
``[clients, batch, ...]`` tensors as on each client's ``[batch, ...]`` ones."""


def dense_layers(module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``module``'s leaf layers in the order they run, with their names, if every
    one is a foldable ``nn.Linear``, an ``nn.Flatten`` that keeps the batch axis
    (``start_dim`` >= 1) or one of :data:`ELEMENTWISE` (by exact type: a subclass
    may compute otherwise), at least one a linear layer, and every parameter a
    linear layer's weight or bias, each in one place only (no tied biases, no
    parameters of containers or activations); ``None`` otherwise."""
    linears = foldable_linears(module)  # {} unless a Sequential tree, no hooks
    if not linears:
        return None
    leaves = [
        (name, layer)
        for name, layer in module.named_modules(remove_duplicate=False)
        if type(layer) is not nn.Sequential
    ]
    owned = set()
    for name, layer in leaves:
        if type(layer) is nn.Linear:
            if f"{name}.weight" not in linears:
                return None
            owned |= {f"{name}.{kind}" for kind in layer._parameters}
        elif type(layer) is nn.Flatten:
            if cast(nn.Flatten, layer).start_dim < 1:  # would fold the batch axis
                return None
        elif type(layer) not in ELEMENTWISE:
            return None
    places = [name for name, _ in module.named_parameters(remove_duplicate=False)]
    if len(places) != len({id(p) for p in module.parameters()}):
        return None  # a parameter in two places
    return leaves if set(places) <= owned else None


def _client_dim(dim: int) -> int:
    """A client's dimension ``dim`` in the cohort's tensors (one axis before)."""
    return dim + 1 if dim >= 0 else dim


class DenseCohortStep:
    """One step of plain SGD or of heavy-ball momentum for every client at once on
    :func:`dense_layers`' networks.

    ``step(params, x, y, mask, state)`` updates the stacked ``params`` (and, under
    momentum, the stacked velocities of the optimizer's ``state``) in place and
    returns each client's summed loss over its batch, as an unmasked
    :class:`CohortStep` does: ``x[c]``, ``y[c]`` are client c's batch and
    ``mask[c]`` its real examples (every client needs one: a client without any
    would get the zero update, not keep its parameters through a non-finite loss).
    Under momentum (``beta`` not ``None``) each weight's velocity takes the
    gradient in its product, ``v.baddbmm_(dY^T, X, beta=beta)``, and the weight
    ``w += alpha v``.
    """

    def __init__(
        self,
        layers: list[tuple[str, nn.Module]],
        alpha: float,
        beta: float | None = None,
    ) -> None:
        self.layers = layers
        self.alpha = alpha
        self.beta = beta

    @classmethod
    def of(cls, model: FunctionalModel, optimizer: Optimizer) -> DenseCohortStep | None:
        """The step for ``model`` and ``optimizer``, or ``None`` where it is not the
        same computation as the ``vmap`` step's (neither plain SGD nor heavy-ball
        momentum, autocast, other layers)."""
        if model.autocast is not None:
            return None
        if optimizer.fold_alpha is not None:
            alpha, beta = optimizer.fold_alpha, None
        elif optimizer.heavy_ball is not None:
            learning_rate, beta = optimizer.heavy_ball
            alpha = -learning_rate
        else:
            return None
        layers = dense_layers(model.module)
        return None if layers is None else cls(layers, alpha, beta)

    def __call__(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        state: Any = None,
    ) -> torch.Tensor:
        with torch.enable_grad():  # as vmap(grad) computes, under no_grad too
            leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
            logits, folds = self._forward(leaves, x)
            per_example = cross_entropy(logits.flatten(0, 1), y.flatten()).view_as(y)
            loss = masked_mean(per_example, mask)  # each client's, as masked_loss's
            biases = [k for k in leaves if k not in folds]
            inputs: list[Any] = [leaves[k] for k in biases]  # tensors, then edges
            inputs += [edge for _, edge in folds.values()]
            grads = torch.autograd.grad(loss.sum(), inputs)
        with torch.no_grad():
            products = zip(folds.items(), grads[len(biases) :], strict=True)
            if self.beta is None:
                for (weight, (flat, _)), dy in products:
                    params[weight].baddbmm_(dy.mT, flat, alpha=self.alpha)
                if biases:  # _foreach_add_ refuses empty lists
                    own = [params[k] for k in biases]
                    torch._foreach_add_(
                        own, list(grads[: len(biases)]), alpha=self.alpha
                    )
            else:
                self._momentum(params, state["velocity"], products, biases, grads)
        return loss.detach().double() * mask.sum(dim=1)

    def _momentum(
        self,
        params: Params,
        velocity: Params,
        products: Any,
        biases: list[str],
        grads: tuple[torch.Tensor, ...],
    ) -> None:
        """Heavy-ball momentum's update from the layers' output gradients: each
        weight's velocity ``beta v + dY^T X`` in one product, each bias's ``beta v +
        g``, then ``w += alpha v`` (as :func:`momentum`'s ``update_in_place``)."""
        beta = cast(float, self.beta)
        for (weight, (flat, _)), dy in products:
            velocity[weight].baddbmm_(dy.mT, flat, beta=beta)
            params[weight].add_(velocity[weight], alpha=self.alpha)
        if biases:
            own, moving = [params[k] for k in biases], [velocity[k] for k in biases]
            for v, g in zip(moving, grads[: len(biases)], strict=True):
                torch.add(g, v, alpha=beta, out=v)
            torch._foreach_add_(own, moving, alpha=self.alpha)

    def _forward(
        self, leaves: Params, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, GradientEdge]]]:
        """Every client's logits, and for each weight (by name) its layer's input
        as ``[clients, rows, features]`` and its output's gradient edge."""
        folds = {}
        h = x
        for name, layer in self.layers:
            if type(layer) is nn.Linear:
                h, folds[f"{name}.weight"] = self._linear(h, leaves, name)
            elif type(layer) is nn.Flatten:
                layer = cast(nn.Flatten, layer)
                start, end = _client_dim(layer.start_dim), _client_dim(layer.end_dim)
                h = h.flatten(start, end)
            else:
                h = layer(h)
        return h, folds

    @staticmethod
    def _linear(
        h: torch.Tensor, leaves: Params, name: str
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, GradientEdge]]:
        """Every client's linear layer ``name`` on ``h``: its output, and its
        input as ``[clients, rows, features]`` with the output's gradient edge."""
        weight, bias = leaves[f"{name}.weight"], leaves.get(f"{name}.bias")
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        if bias is None:
            out = torch.bmm(flat, weight.mT)
        else:
            out = torch.baddbmm(bias.unsqueeze(1), flat, weight.mT)
        edge = get_gradient_edge(out)
        return out.view(*h.shape[:-1], out.shape[-1]), (flat, edge)
