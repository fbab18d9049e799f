"""The models of McMahan et al. 2017 (2NN, CNN) and logistic regression."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MODELS", "cnn", "logistic_regression", "mlp_2nn"]


def mlp_2nn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al. 2017's "2NN": two hidden layers of 200 ReLU units.

    On 28x28 inputs it has 199,210 parameters, as in the paper.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al. 2017's CNN: 5x5 conv 32, pool, 5x5 conv 64, pool, 512 ReLU.

    On 28x28 inputs it has 1,663,370 parameters, as in the paper.
    """
    channels, height, width = input_shape
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def logistic_regression(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: one linear layer on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "2nn": mlp_2nn,
    "cnn": cnn,
    "logistic": logistic_regression,
}


def _check_shape(name: str, input_shape: tuple[int, ...]) -> None:
    if name == "cnn" and (len(input_shape) != 3 or min(input_shape[1:]) < 4):
        raise ValueError(
            f"model 'cnn' needs image inputs (channels, height >= 4, width >= 4), "
            f"got input shape {input_shape}"
        )


def build_module(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int
) -> nn.Module:
    """A model by name, its initial weights drawn from ``seed`` alone."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    _check_shape(name, input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](input_shape, num_classes)
