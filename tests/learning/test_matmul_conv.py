"""Convolutions as matrix products compute what ``nn.Conv2d`` computes."""

import pytest
import torch
from torch import nn
from torch.func import vmap

from fedloom.core import CohortOptions
from fedloom.learning import build_model
from fedloom.learning._matmul_conv import (
    MatmulConv2d,
    cohort_model,
    matmul_convolutions,
)

CONVS = {
    "mcmahan": dict(kernel_size=5, padding=2),
    "strided": dict(kernel_size=3, stride=2, padding=1),
    "dilated": dict(kernel_size=3, dilation=2, padding=(2, 1)),
    "rectangular-no-bias": dict(kernel_size=(3, 2), bias=False),
}


@pytest.mark.parametrize("name", CONVS)
def test_matches_conv2d_in_float64(name):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, **CONVS[name]).double()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(MatmulConv2d(conv)(x), conv(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(MatmulConv2d(conv)(x[0]), conv(x[0]))  # unbatched


def test_gradients_match_under_vmap_over_clients():
    model = build_model("cnn", (1, 12, 12), 5, seed=0)
    matmul = matmul_convolutions(model)
    assert list(matmul.init()) == list(model.init())  # same names, same order
    generator = torch.Generator().manual_seed(1)
    params = {
        k: v.double() + 0.01 * torch.randn(3, *v.shape, generator=generator).double()
        for k, v in model.init().items()
    }
    x = torch.randn(3, 4, 1, 12, 12, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 5, (3, 4), generator=generator)

    def grads(m):
        double = type(m)(m.module.double())
        return vmap(torch.func.grad(double.loss))(params, x, y)

    expected, got = grads(model), grads(matmul)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-12)


def test_only_supported_convolutions_are_replaced():
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten())
    model = build_model("2nn", (1, 4, 4), 3, seed=0)
    assert matmul_convolutions(model) is model  # nothing to replace
    wrapped = type(model)(grouped)
    assert matmul_convolutions(wrapped) is wrapped
    with pytest.raises(ValueError, match="matrix product"):
        MatmulConv2d(grouped[0])
    cnn = build_model("cnn", (1, 8, 8), 3, seed=0)
    assert cohort_model(cnn, CohortOptions()) is cnn
    replaced = cohort_model(cnn, CohortOptions(conv_as_matmul=True)).module
    assert [type(m).__name__ for m in replaced][:4] == [
        "MatmulConv2d",
        "ReLU",
        "MaxPool2d",
        "MatmulConv2d",
    ]
    assert isinstance(cnn.module[0], nn.Conv2d)  # the original is left alone
