"""Functional optimizers: ``init(params)`` and ``update(grads, state, params)``.

``torch.optim`` mutates parameters in place and cannot be vmapped or checkpointed as
plain tensors; these are pure functions of tensors, used on clients and at the server.
SGD, momentum and Adam also have ``update_in_place``, the same arithmetic written
into the parameters and state, which the vectorized runtime's eager step and the
local runtime's clients use: a cohort's stacked weights are tens of MB, and writing
them in place made that step 1.03-1.09x faster for the McMahan CNN and 1.09-1.15x
for the 2NN (10 clients, B = 10, SGD and momentum, a 2-core CPU), a local client's
step 1.03-1.07x; under Adam 1.11x and 1.25x, a local client's 1.10-1.15x
(``benchmarks/eager_update.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ._types import OptState, Params

__all__ = ["Optimizer", "adam", "momentum", "sgd"]

Step = tuple[Params, OptState]
"""What ``update`` returns: the new parameters and the new optimizer state."""
Scales = tuple[torch.Tensor, torch.Tensor]


class Optimizer(NamedTuple):
    """A pair of pure functions: ``init(params)`` and ``update(grads, state, params)``.

    ``update`` returns the new parameters and the new state; nothing is mutated.
    ``update_in_place``, where an optimizer has one, computes the same values
    (bit for bit) and writes them into ``params`` and ``state`` instead.

    >>> import torch
    >>> opt = sgd(0.5)
    >>> params = {"w": torch.tensor([1.0])}
    >>> new, state = opt.update({"w": torch.tensor([2.0])}, opt.init(params), params)
    >>> new["w"]
    tensor([0.])
    >>> opt.update_in_place({"w": torch.tensor([2.0])}, opt.init(params), params)
    >>> params["w"]
    tensor([0.])
    """

    init: Callable[[Params], OptState]
    update: Callable[[Params, OptState, Params], Step]
    elementwise: bool = False
    """Whether ``init`` and ``update`` act entry by entry with no scalar state, so
    they apply as they are to parameters stacked along a client axis (no ``vmap``)."""
    update_in_place: Callable[[Params, OptState, Params], None] | None = None
    """``update``'s arithmetic written into ``params`` and ``state`` (``None``: the
    optimizer has no such form)."""
    fold_alpha: float | None = None
    """Where ``update`` is ``w + fold_alpha * g`` and nothing else (plain SGD:
    ``-learning_rate``), so that a linear layer's weight may take its update
    straight from its gradient's matrix product (``w.addmm_(dY^T, X,
    alpha=fold_alpha)``, in a client's eager local training; ``baddbmm_`` for a
    cohort's stacked weights in the vectorized runtime's eager step of dense
    networks, ``DenseCohortStep``). ``_replace(fold_alpha=None)`` keeps the
    unfolded steps."""
    heavy_ball: tuple[float, float] | None = None
    """``(learning_rate, beta)`` where the optimizer is :func:`momentum`'s
    heavy-ball momentum and nothing else (state ``{"velocity": {name: v}}``, ``v
    <- beta v + g``, ``w <- w - learning_rate v``), so that a linear layer's
    velocity may take its gradient straight from the gradient's matrix product
    (``v.baddbmm_(dY^T, X, beta=beta)``, in the vectorized runtime's eager step of
    dense networks, ``DenseCohortStep``). ``_replace(heavy_ball=None)`` keeps the
    ``vmap`` step, and must go with any other ``update`` given to a momentum
    optimizer by ``_replace`` (as ``fold_alpha=None`` with SGD's): the dense step
    computes heavy-ball momentum whatever ``update`` says."""
    stacks_in_place: bool = False
    """Whether ``update_in_place`` also applies as it is to parameters stacked along
    a leading client axis, with the state ``vmap(init)`` makes for them copied into
    memory of its own (``vmap`` gives a state that does not depend on the
    parameters, as Adam's step count, as one value expanded over the clients), as
    the vectorized runtime's eager step has them: Adam's, whose step count is then
    one a client. An elementwise optimizer's ``update_in_place`` applies so
    anyway."""


def positive(name: str, value: float) -> float:
    """``value`` as a float; a ``ValueError`` naming ``name`` unless it is finite
    and > 0."""
    if not 0 < value < math.inf:  # NaN fails too
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return float(value)


def count(name: str, value: int) -> int:
    """``value``; a ``ValueError`` naming ``name`` unless it is an int >= 1.

    Example:
        >>> count("batch_size", 10)
        10
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _fraction(name: str, value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def sgd(learning_rate: float) -> Optimizer:
    """Plain gradient descent: ``w <- w - learning_rate * g``."""
    lr = positive("learning_rate", learning_rate)

    def init(params: Params) -> OptState:
        return {}

    def update(
        grads: Params, state: OptState, params: Params
    ) -> tuple[Params, OptState]:
        # One fused kernel (and one allocation) per tensor: w + (-lr) g.
        return {k: torch.add(params[k], grads[k], alpha=-lr) for k in params}, state

    def update_in_place(grads: Params, state: OptState, params: Params) -> None:
        for k in params:
            params[k].add_(grads[k], alpha=-lr)

    return Optimizer(
        init,
        update,
        elementwise=True,
        update_in_place=update_in_place,
        fold_alpha=-lr,
    )


def momentum(learning_rate: float, beta: float = 0.9) -> Optimizer:
    """Heavy-ball momentum: ``v <- beta v + g``, ``w <- w - learning_rate * v``.

    At the server this makes FedAvgM (Hsu, Qi and Brown 2019).
    """
    lr = positive("learning_rate", learning_rate)
    beta = _fraction("beta", beta)

    def init(params: Params) -> OptState:
        return {"velocity": {k: torch.zeros_like(v) for k, v in params.items()}}

    def update(
        grads: Params, state: OptState, params: Params
    ) -> tuple[Params, OptState]:
        velocity = {
            k: torch.add(grads[k], state["velocity"][k], alpha=beta) for k in params
        }
        new = {k: torch.add(params[k], velocity[k], alpha=-lr) for k in params}
        return new, {"velocity": velocity}

    def update_in_place(grads: Params, state: OptState, params: Params) -> None:
        for k in params:
            velocity = state["velocity"][k]
            torch.add(grads[k], velocity, alpha=beta, out=velocity)
            params[k].add_(velocity, alpha=-lr)

    return Optimizer(
        init,
        update,
        elementwise=True,
        update_in_place=update_in_place,
        heavy_ball=(lr, beta),
    )


def adam(
    learning_rate: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
    *,
    bias_correction: bool = True,
) -> Optimizer:
    """Adam (Kingma and Ba 2015), with its bias correction by default.

    At the server this makes FedAdam (Reddi et al. 2021, "Adaptive Federated
    Optimization", Algorithm 2), which has no bias correction
    (``bias_correction=False``) and recommends ``beta2 = 0.99``, ``epsilon = 1e-3``.
    """
    lr = positive("learning_rate", learning_rate)
    beta1 = _fraction("beta1", beta1)
    beta2 = _fraction("beta2", beta2)
    eps = positive("epsilon", epsilon)

    def init(params: Params) -> OptState:
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        device = next(iter(params.values())).device if params else None
        return {
            "step": torch.zeros((), dtype=torch.int64, device=device),
            "m": zeros,
            "v": {k: torch.zeros_like(v) for k, v in params.items()},
        }

    def corrections(step: torch.Tensor) -> Callable[[torch.Tensor], Scales]:
        """For a tensor ``p`` (a client's, or stacked clients' where ``step`` is one
        a client), ``(1 - beta1^t) / lr`` and ``1 - beta2^t`` at step count t, on
        ``p``'s device, shaped to broadcast over ``p`` (1 without bias correction),
        in ``p``'s dtype but at least float32 (in float16 ``1 / lr`` overflows where
        lr < 1.5e-5): a float16 or bfloat16 tensor's denominator is then float32."""
        t = step.to(torch.float64)
        if bias_correction:
            first, second = (1 - beta1**t) / lr, 1 - beta2**t
        else:
            first, second = torch.ones_like(t) / lr, torch.ones_like(t)
        made: dict[tuple[torch.dtype, torch.device, int], Scales] = {}

        def like(p: torch.Tensor) -> Scales:
            key = (p.dtype, p.device, p.dim())
            if key not in made:
                shape = (*t.shape, *[1] * (p.dim() - t.dim()))
                dtype = torch.promote_types(p.dtype, torch.float32)
                made[key] = (
                    first.to(p.device, dtype).view(shape),
                    second.to(p.device, dtype).view(shape),
                )
            return made[key]

        return like

    # update and update_in_place make the same operations, out of place and in
    # place, so the same values bit for bit: m <- beta1 m + (1 - beta1) g,
    # v <- beta2 v + (1 - beta2) g^2, w <- w - m / ((sqrt(v / c2) + eps) c1 / lr),
    # which is lr (m / c1) / (sqrt(v / c2) + eps) in a pass fewer.
    def update(
        grads: Params, state: OptState, params: Params
    ) -> tuple[Params, OptState]:
        step = state["step"] + 1
        scales = corrections(step)
        m, v, new = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            m[k] = torch.add(state["m"][k] * beta1, g, alpha=1 - beta1)
            v[k] = torch.addcmul(state["v"][k] * beta2, g, g, value=1 - beta2)
            first, second = scales(p)
            denominator = (v[k] / second).sqrt_().add_(eps).mul_(first)
            new[k] = torch.addcdiv(p, m[k], denominator, value=-1).to(p.dtype)
        return new, {"step": step, "m": m, "v": v}

    def update_in_place(grads: Params, state: OptState, params: Params) -> None:
        scales = corrections(state["step"].add_(1))
        for k, p in params.items():
            g, m, v = grads[k], state["m"][k], state["v"][k]
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            first, second = scales(p)
            denominator = (v / second).sqrt_().add_(eps).mul_(first)
            p.addcdiv_(m, denominator, value=-1)

    return Optimizer(
        init, update, update_in_place=update_in_place, stacks_in_place=True
    )
