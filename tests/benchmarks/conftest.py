"""Fixtures of the tests of the benchmarks' convolution prototypes."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedloom.learning import FunctionalModel, build_model


@pytest.fixture
def cnn() -> FunctionalModel:
    return build_model("cnn", (1, 28, 28), 10, seed=0)


def _gradients(module: nn.Module, params, x, y):
    def loss(p, x, y):
        logits = functional_call(module, p, (x,))
        return nn.functional.cross_entropy(logits, y)

    return vmap(grad(loss))(params, x, y)


@pytest.fixture
def vmap_gradients():
    """``vmap(grad(cross-entropy of module))(params, x, y)``: each client's
    gradients, with the clients along the first axis."""
    return _gradients


@pytest.fixture
def gradient_errors(cnn):
    """For a module with the CNN's parameter names: each parameter's relative error
    of its ``vmap(grad)`` gradients (3 clients of 4 examples, float64) against the
    CNN's."""

    def errors(swapped: nn.Module) -> dict[str, float]:
        generator = torch.Generator().manual_seed(0)
        clients, n = 3, 4
        params = {
            k: v.double() + 0.01 * torch.randn(clients, *v.shape, generator=generator)
            for k, v in cnn.init().items()
        }
        shape = (clients, n, 1, 28, 28)
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 10, (clients, n), generator=generator)
        expected = _gradients(cnn.module.double(), params, x, y)
        got = _gradients(swapped.double(), params, x, y)
        return {
            name: float((got[name] - value).norm() / value.norm())
            for name, value in expected.items()
        }

    return errors
