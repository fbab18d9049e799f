"""A cohort of dense networks stepped by plain SGD or heavy-ball momentum as batched
products, each weight's update (or velocity) folded into its gradient's product,
without ``vmap``.

:class:`CohortStep`'s eager step computes every client's gradients by
``vmap(grad(loss))`` and then updates the stacked parameters. For a network of
linear layers (the McMahan 2NN, logistic regression) on the CPU, most of that
step is not arithmetic: the transforms' dispatch, and each weight gradient
``dY^T X`` written whole (ten 2NN clients' first layer: 6.3 MB, beyond the
caches) to be read back by the update. :class:`DenseCohortStep` runs the same
network on the stacked parameters, a linear layer as one batched product for all
clients (``torch.baddbmm``), and takes the backward pass itself, layer by layer
from the loss's gradient at the logits (``softmax - onehot(y)``, each example's
times its share of its client's mean): a linear layer's input gradient is ``dY
W``, a ReLU's is ``dY`` where its output is positive, another activation's comes
from autograd on that layer alone. No autograd graph of the step is built: for
ten 2NN clients that took its speed over the ``vmap`` step from 1.91x to 2.03x on
one thread and from 1.78x to 2.38x on two. Each weight then takes SGD's step in
the product that makes its gradient, ``w.baddbmm_(dY^T, X, alpha=-lr)``, as
:mod:`._linear_fold` does for one client. ``benchmarks/dense_cohort_step.py``
times it against the ``vmap`` step; ``tests/learning/test_dense_cohort.py`` holds
it to the ``vmap`` step in float64.

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

Under SGD, :meth:`DenseCohortStep.steps` takes several such steps of the same
clients at once, the first linear layer's updates deferred to their end (its
input is the data, known for them all: the same algebra as ``_defer_update.py``
applies to the compiled graph), where :func:`deferred_steps` says it pays: the
2NN on Fashion-MNIST at B = 10, five steps at once, 1.10x faster a step for a
cohort of 10 and 1.28-1.33x for 100 (``benchmarks/deferred_dense_steps.py``).
The first layer's bias is deferred with its weight (a constant input of 1: each
correction's Gram matrix ``X_s X_{<s}^T + 1``), and what a call's steps share is
made once for them: the weights' transposes, each step's rows of the data, the
loss's one-hot targets, the loss itself from every step's logits at the end. A step
is then some 30 operators where it was 54; of ten 2NN clients' step at B = 10, five
at once, 83 % is the matrix products (two threads), and it took 1.035 ms against
1.133 ms before (two threads; the same 1.69 ms on one).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ._defer_update import correction_share
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


DEFERRED_STEPS = 5
"""The most steps :meth:`DenseCohortStep.steps` takes at once: for a cohort of 100
2NN clients at B = 10, five were 1.28-1.33x faster a step than one at a time, three
1.25-1.32x, two 1.20-1.24x (``benchmarks/deferred_dense_steps.py``)."""

MAX_EXTRA = 0.07
"""The most the deferral's corrections may add to the first layer's arithmetic
(:func:`correction_share`) for eager steps to be deferred: unlike the compiled
step (``_defer_update.MAX_EXTRA``, 0.2), the eager one computes each step's
correction in two more products of their own, which pay only where the layer's
own products are small."""


def deferred_steps(rows: int, inputs: int, outputs: int) -> int:
    """How many eager SGD steps of ``rows`` rows to defer a linear layer's
    updates over: the most, up to :data:`DEFERRED_STEPS`, whose corrections add
    at most :data:`MAX_EXTRA`; 1 (none deferred) where even two would add more."""
    steps = DEFERRED_STEPS
    while steps > 1 and correction_share(rows, steps, inputs, outputs) > MAX_EXTRA:
        steps -= 1
    return steps


def _client_dim(dim: int) -> int:
    """A client's dimension ``dim`` in the cohort's tensors (one axis before)."""
    return dim + 1 if dim >= 0 else dim


class DenseCohortStep:
    """Steps of plain SGD or of heavy-ball momentum for every client at once on
    :func:`dense_layers`' networks.

    ``steps(params, x, y, mask, state)`` takes ``x.shape[1]`` steps, updating the
    stacked ``params`` (and, under momentum, the stacked velocities of the
    optimizer's ``state``) in place, and returns each client's summed loss over
    its batches, as unmasked steps of :class:`CohortStep` do: ``x[c, s]``,
    ``y[c, s]`` are client c's batch at step s and ``mask[c, s]`` its real examples
    (every client needs one at every step: a client without any would get the zero
    update, not keep its parameters through a non-finite loss). Under momentum
    (``beta`` not ``None``) each weight's velocity takes the gradient in its
    product, ``v.baddbmm_(dY^T, X, beta=beta)``, and the weight ``w += alpha v``,
    one step a call; under SGD several steps of a call defer the first linear
    layer's updates to their end.
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
        self._first = next(
            i for i, (_, layer) in enumerate(layers) if type(layer) is nn.Linear
        )
        """Where the first linear layer is: every layer before it is free of
        parameters, so its input is the data's (:meth:`steps`)."""

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

    def steps_at_once(self, example: torch.Size, batch: int) -> int:
        """How many steps of ``batch`` examples of shape ``example`` :meth:`steps`
        should take at once (:func:`deferred_steps`; under momentum 1)."""
        if self.beta is not None:
            return 1
        layer = cast(nn.Linear, self.layers[self._first][1])
        data = torch.empty((1, batch, *example), device="meta")
        rows = self._before_first(data).shape[1:-1].numel()
        return deferred_steps(rows, layer.in_features, layer.out_features)

    def steps(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        state: Any = None,
    ) -> torch.Tensor:
        """``x.shape[1]`` steps, step s on ``x[:, s]``, ``y[:, s]``, ``mask[:, s]``;
        each client's summed loss over them.

        The first linear layer's input is the data, known for every step before
        the first, and under SGD its weight after s steps is ``w_0 + alpha *
        dY_{<s}^T X_{<s}`` (the layer's output gradients and inputs of the steps
        before, stacked), its bias ``b_0 + alpha * 1^T dY_{<s}``. So its every
        step's product is one, ``X_all w_0^T + b_0``; step s adds ``alpha * (X_s
        X_{<s}^T + 1) dY_{<s}`` (the 1 the bias's, where it has one); and its
        updates are one of rank ``steps * B`` at the end, ``w.baddbmm_(dY_all^T,
        X_all, alpha=alpha)``, and the bias's sum of ``dY_all``: the weight is
        read twice and written once for all the steps, not at each (as
        ``_defer_update.py`` rewrites the compiled graph). Only SGD (momentum's
        velocity would enter every correction): under momentum one step at a
        time.
        """
        steps = x.shape[1]
        if steps > 1 and self.beta is not None:
            raise ValueError("deferred steps are SGD's: momentum takes one at a time")
        with torch.no_grad():  # the gradients are written out, not traced
            name = self.layers[self._first][0]
            data = self._before_first(x.flatten(1, 2))  # [clients, steps * B, ..., in]
            flat = data.reshape(data.shape[0], -1, data.shape[-1])
            rows = flat.shape[1] // steps
            weight, bias = f"{name}.weight", f"{name}.bias"
            linears = _Linears(params)
            ahead = linears.product(name, flat)  # every step's, with w_0 and b_0
            outputs = torch.empty_like(ahead)  # dY of every step, in its rows
            shape = (data.shape[0], x.shape[2], *data.shape[2:-1], ahead.shape[-1])
            loss = _Loss(y, mask, ahead.dtype)
            gram = (
                functools.partial(torch.baddbmm, flat.new_ones(()))
                if bias in params
                else torch.bmm
            )
            inputs = flat.mT
            split = (t.split(rows, dim=1) for t in (ahead, flat, outputs))
            firsts = zip(*split, strict=True)  # each step's rows
            for s, (product, now, into) in enumerate(firsts):
                if s:
                    before = s * rows
                    grams = gram(now, inputs[..., :before])
                    earlier = outputs[:, :before]
                    product = torch.baddbmm(product, grams, earlier, alpha=self.alpha)
                if len(shape) != 3:
                    product = product.view(shape)
                self._step(params, state, linears, product, loss, into)
            biases, grads = (
                ([bias], [outputs.sum(dim=1)]) if bias in params else ((), ())
            )
            self._update(params, state, [(weight, flat, outputs)], biases, grads)
            return loss.total()

    def _before_first(self, x: torch.Tensor) -> torch.Tensor:
        """The layers before the first linear one (without parameters) on ``x``,
        which stays as it is."""
        h = x
        for _, layer in self.layers[: self._first]:
            if type(layer) is nn.Flatten:
                h = _flatten(cast(nn.Flatten, layer), h)
            else:
                inplace = getattr(layer, "inplace", False)
                h = layer(h.clone() if inplace else h)
        return h

    def _step(
        self,
        params: Params,
        state: Any,
        linears: _Linears,
        h: torch.Tensor,
        loss: _Loss,
        first_output: torch.Tensor,
    ) -> None:
        """The next of ``loss``'s steps from the first linear layer's output ``h``
        (the step may overwrite it): every parameter but that layer's takes it,
        and the gradient at ``h`` goes into ``first_output`` (as ``[clients, rows,
        features]``)."""
        logits, tape = self._forward(linears, h)
        grad = loss.gradient(logits)
        products: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        biases: list[str] = []
        grads: list[torch.Tensor] = []
        for i in range(len(tape) - 1, -1, -1):
            if not i and type(tape[0]) is _ReLU and grad.dim() == 3:
                tape[0].backward_into(grad, first_output)  # no copy
                break
            grad = tape[i].backward(params, grad, products, biases, grads)
        else:
            first_output.copy_(grad.reshape(first_output.shape))
        self._update(params, state, products, biases, grads)

    def _update(
        self,
        params: Params,
        state: Any,
        products: list[tuple[str, torch.Tensor, torch.Tensor]],
        biases: Sequence[str] = (),
        grads: Sequence[torch.Tensor] = (),
    ) -> None:
        """SGD's or heavy-ball momentum's update of each weight of ``products``
        (name, the layer's input ``X`` and output gradient ``dY``, as ``[clients,
        rows, features]``) in the product that makes its gradient, and of each of
        ``biases`` by its gradient in ``grads``."""
        if self.beta is None:
            for weight, flat, dy in products:
                params[weight].baddbmm_(dy.mT, flat, alpha=self.alpha)
            if biases:  # _foreach_add_ refuses empty lists
                torch._foreach_add_(
                    [params[k] for k in biases], list(grads), alpha=self.alpha
                )
            return
        # Heavy-ball momentum: each weight's velocity beta v + dY^T X in one
        # product, each bias's beta v + g, then w += alpha v (as momentum's
        # update_in_place).
        velocity = state["velocity"]
        for weight, flat, dy in products:
            velocity[weight].baddbmm_(dy.mT, flat, beta=self.beta)
            params[weight].add_(velocity[weight], alpha=self.alpha)
        if biases:
            own, moving = [params[k] for k in biases], [velocity[k] for k in biases]
            for v, g in zip(moving, grads, strict=True):
                torch.add(g, v, alpha=self.beta, out=v)
            torch._foreach_add_(own, moving, alpha=self.alpha)

    def _forward(
        self, linears: _Linears, h: torch.Tensor
    ) -> tuple[torch.Tensor, list[Any]]:
        """The layers after the first linear one on its output ``h`` (which they
        may overwrite), without autograd: the logits, and what each layer keeps
        for the backward pass, in order."""
        tape: list[Any] = []
        for name, layer in self.layers[self._first + 1 :]:
            if type(layer) is nn.Linear:
                tape.append(_Linear(name, h))
                h = tape[-1].forward(linears)
            elif type(layer) is nn.Flatten:
                tape.append(_Flatten(h.shape))
                h = _flatten(cast(nn.Flatten, layer), h)
            elif type(layer) is nn.ReLU:
                h = torch.relu_(h)  # its own output says where it passed the gradient
                tape.append(_ReLU(h))
            elif type(layer) is not nn.Identity:
                tape.append(_Activation(layer, h))
                h = layer(h.clone() if getattr(layer, "inplace", False) else h)
        return h, tape


def _flatten(layer: nn.Flatten, h: torch.Tensor) -> torch.Tensor:
    """``layer`` on every client's ``h`` (``[clients, ...]``)."""
    return h.flatten(_client_dim(layer.start_dim), _client_dim(layer.end_dim))


class _Loss:
    """The loss of :meth:`DenseCohortStep.steps`' steps, ``y`` and ``mask`` as
    ``[clients, steps, B]``: each client's mean cross-entropy over the real examples
    of its batch at each step (as ``_cohort_loss.masked_loss`` takes it). What
    every step needs of the labels and masks is computed once for them all, and
    the loss itself from every step's logits at the end."""

    def __init__(self, y: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype):
        self.y = y
        self.weights = mask.to(dtype)
        count = self.weights.sum(dim=-1, keepdim=True).clamp(min=1)
        self.share = (self.weights / count).unsqueeze(-1)  # in a client's mean
        self.shares = self.share.unbind(1)
        self.minus_shares: Sequence[torch.Tensor] = ()  # -onehot(y) times it
        self.logits: list[torch.Tensor] = []  # each step's, [clients, B, classes]

    def gradient(self, logits: torch.Tensor) -> torch.Tensor:
        """The next step's gradient of the sum of the clients' losses at its
        ``logits``: each example's ``softmax - onehot(y)`` times its share of its
        client's mean."""
        s = len(self.logits)
        z = logits if logits.dim() == 3 else logits.reshape(*self.y.shape[::2], -1)
        if not s:
            onehot = nn.functional.one_hot(self.y, z.shape[-1]).to(z.dtype)
            self.minus_shares = onehot.mul_(self.share).neg_().unbind(1)
        self.logits.append(z)
        grad = torch.addcmul(self.minus_shares[s], torch.softmax(z, -1), self.shares[s])
        return grad if z is logits else grad.view_as(logits)

    def total(self) -> torch.Tensor:
        """Each client's summed loss over the real examples of the steps so far,
        in float64."""
        steps = len(self.logits)
        log_probs = torch.log_softmax(torch.stack(self.logits, dim=1), dim=-1)
        picked = log_probs.gather(-1, self.y[:, :steps, :, None]).squeeze(-1)
        return -(picked * self.weights[:, :steps]).sum(dim=(1, 2)).double()


class _Linears:
    """The linear layers' products of a call of :meth:`DenseCohortStep.steps`,
    ``X w^T + b``: each weight's transpose and bias's row are views made once for
    all of the call's steps (the parameters change in place)."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.views: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def product(self, name: str, flat: torch.Tensor) -> torch.Tensor:
        """Layer ``name`` on ``flat`` (``[clients, rows, features]``)."""
        views = self.views.get(name)
        if views is None:
            bias = self.params.get(f"{name}.bias")
            row = None if bias is None else bias.unsqueeze(1)
            views = self.views[name] = (self.params[f"{name}.weight"].mT, row)
        transposed, row = views
        if row is None:
            return torch.bmm(flat, transposed)
        return torch.baddbmm(row, flat, transposed)


class _Linear:
    """A linear layer of every client's in the forward pass, with its input ``h``
    (its shape, and as ``[clients, rows, features]``)."""

    def __init__(self, name: str, h: torch.Tensor) -> None:
        self.name, self.shape = name, h.shape
        self.flat = h if h.dim() == 3 else h.reshape(h.shape[0], -1, h.shape[-1])

    def forward(self, linears: _Linears) -> torch.Tensor:
        out = linears.product(self.name, self.flat)
        return out if len(self.shape) == 3 else out.view(*self.shape[:-1], -1)

    def backward(
        self,
        params: Params,
        grad: torch.Tensor,
        products: list[tuple[str, torch.Tensor, torch.Tensor]],
        biases: list[str],
        grads: list[torch.Tensor],
    ) -> torch.Tensor:
        """The gradient at the layer's input; the weight's product (name, input,
        output gradient) goes into ``products``, the bias's gradient into
        ``grads`` (its name into ``biases``), for :meth:`DenseCohortStep._update`
        after the whole pass (the input's gradient takes the weight before it)."""
        weight = f"{self.name}.weight"
        dy = grad if grad.dim() == 3 else grad.reshape(*self.flat.shape[:2], -1)
        products.append((weight, self.flat, dy))
        if f"{self.name}.bias" in params:
            biases.append(f"{self.name}.bias")
            grads.append(dy.sum(dim=1))
        dx = torch.bmm(dy, params[weight])
        return dx if len(self.shape) == 3 else dx.view(self.shape)


class _Flatten:
    """A flattening in the forward pass, with the shape it flattened."""

    def __init__(self, shape: torch.Size) -> None:
        self.shape = shape

    def backward(self, params: Params, grad: torch.Tensor, *_: Any) -> torch.Tensor:
        return grad.reshape(self.shape)


class _ReLU:
    """A ReLU in the forward pass, with its output."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    def backward(self, params: Params, grad: torch.Tensor, *_: Any) -> torch.Tensor:
        return torch.ops.aten.threshold_backward(grad, self.out, 0)

    def backward_into(self, grad: torch.Tensor, into: torch.Tensor) -> None:
        """:meth:`backward`, written into ``into``."""
        torch.ops.aten.threshold_backward.grad_input(grad, self.out, 0, grad_input=into)


class _Activation:
    """Another of :data:`ELEMENTWISE` in the forward pass, with its input: its
    backward pass asks autograd for this layer alone, run again on the input."""

    def __init__(self, layer: nn.Module, h: torch.Tensor) -> None:
        self.layer, self.h = layer, h

    def backward(self, params: Params, grad: torch.Tensor, *_: Any) -> torch.Tensor:
        with torch.enable_grad():
            h = self.h.detach().requires_grad_()
            inplace = getattr(self.layer, "inplace", False)
            out = self.layer(h.clone() if inplace else h)
            return torch.autograd.grad(out, h, grad)[0]
