"""SGD's update of a linear layer's weight folded into its gradient's product
(``_linear_fold.py``): the same steps as unfolded (float64), only where the
model's structure makes the layer's call the weight's only use, never under
autocast, and without hooks left behind."""

import pytest
import torch
from torch import nn

from fedloom.learning import FunctionalModel, build_model, sgd
from fedloom.learning._client_work import LocalTraining
from fedloom.learning._linear_fold import LinearFold, foldable_linears


def _steps(model, optimizer, params, x, y, steps=12, batch=8):
    """The parameters after ``steps`` steps of local training on ``(x, y)``."""
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randperm(len(y), generator=generator)[:batch] for _ in range(steps)
    ]
    work = LocalTraining(model, optimizer, 1, batch)
    trained, _ = work._train(params, x, y, iter(batches))
    return {k: v.detach().clone() for k, v in trained.items()}


def _folded_and_unfolded(module, seed):
    """The parameters before, then after four SGD steps (lr 0.3, B = 5), folded and
    unfolded, of ``module`` in float64 on 20 random examples of 16 features, 3
    classes."""
    model = FunctionalModel(module.double())
    params = model.init()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 16, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=generator)
    got = _steps(model, sgd(0.3), params, x, y, steps=4, batch=5)
    want = _steps(model, sgd(0.3)._replace(fold_alpha=None), params, x, y, 4, 5)
    return params, got, want


def _off(got, want):
    return max(float((got[k] - v).abs().max() / v.abs().max()) for k, v in want.items())


@pytest.mark.parametrize("name", ["2nn", "cnn"])
def test_folded_steps_are_the_unfolded_ones_in_float64(name):
    model = build_model(name, (1, 8, 8), 10, seed=0)
    model.module.double()
    params = {k: v.double() for k, v in model.init().items()}
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (40,), generator=generator)
    folded = _steps(model, sgd(0.1), params, x, y)
    unfolded = _steps(model, sgd(0.1)._replace(fold_alpha=None), params, x, y)
    changes = {k: unfolded[k] - params[k] for k in params}
    assert min(float(c.abs().max()) for c in changes.values()) > 0
    assert _off({k: folded[k] - params[k] for k in params}, changes) < 1e-12
    # in float32, one product-and-sum rounds otherwise than a product and a sum
    model.module.float()
    params32 = {k: v.float() for k, v in params.items()}
    got = _steps(model, sgd(0.1), params32, x.float(), y, steps=3)
    want = _steps(model, sgd(0.1)._replace(fold_alpha=None), params32, x.float(), y, 3)
    assert _off(got, want) < 1e-5


def test_the_fold_runs_for_sequential_models_and_skips_their_weight_gradients(
    monkeypatch,
):
    applied, requested = [], []
    apply, grad = LinearFold.apply, torch.autograd.grad

    def spy_apply(self, output_grads):
        applied.append(sorted(output_grads))
        apply(self, output_grads)

    def spy_grad(outputs, inputs, *args, **kwargs):
        requested.append(len(inputs))
        return grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(LinearFold, "apply", spy_apply)
    monkeypatch.setattr(torch.autograd, "grad", spy_grad)
    model = build_model("2nn", (1, 8, 8), 10, seed=0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    _steps(model, sgd(0.1), model.init(), x, y, steps=2)
    weights = ["1.weight", "3.weight", "5.weight"]
    assert sorted(foldable_linears(model.module)) == weights
    assert applied == [weights, weights]
    assert requested == [6, 6]  # the biases and the three layers' outputs
    assert all(not layer._forward_hooks for layer in model.module.modules())


def test_autocast_leaves_the_update_unfolded():
    # under autocast the product runs in bfloat16: the weight's gradient is the
    # cast-back bfloat16 product, computed as usual
    model = build_model("2nn", (1, 8, 8), 10, seed=0, autocast=torch.bfloat16)
    params = model.init()
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 10, (24,))
    got = _steps(model, sgd(0.1), params, x, y, steps=3)
    want = _steps(model, sgd(0.1)._replace(fold_alpha=None), params, x, y, steps=3)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


class _Custom(nn.Linear):
    """A subclass may use its weight otherwise."""


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + x @ self.inner.weight  # a second use of the weight


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
def test_only_a_layers_single_call_is_folded():
    shared = nn.Linear(4, 4)
    nested = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    assert sorted(foldable_linears(nested)) == ["0.weight", "1.1.weight"]
    assert foldable_linears(nn.Sequential(shared, nn.ReLU(), shared)) == {}
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    assert foldable_linears(tied) == {}
    assert foldable_linears(nn.Sequential(nn.Linear(4, 4), _Custom(4, 2))) == {}
    assert foldable_linears(nn.Sequential(_Block())) == {}
    # PyTorch's own layer with dense layers inside, whose fast path (not in
    # training) reads their weights directly
    encoder = nn.TransformerEncoderLayer(4, 1, 8)
    assert foldable_linears(nn.Sequential(encoder)) == {}
    # the weight computed from two parameters (the old weight_norm)
    normed = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(4, 4)), nn.Linear(4, 2))
    assert foldable_linears(normed) == {}
    hooked = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    assert sorted(foldable_linears(hooked)) == ["0.weight", "1.weight"]
    handle = hooked[0].register_forward_hook(lambda layer, args, out: out * 2)
    assert foldable_linears(hooked) == {}
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert foldable_linears(hooked) == {}
    finally:
        handle.remove()
    assert foldable_linears(FunctionalModel(nn.Linear(4, 2)).module) == {}


def test_a_layer_called_twice_in_a_step_is_not_folded():
    layer = nn.Linear(3, 3)
    fold = LinearFold({"0.weight": layer}, alpha=-0.1)
    with fold.recording():
        layer(layer(torch.randn(2, 3)))
        assert fold.folded() == {}
    with fold.recording():
        layer(torch.randn(2, 3))
        assert list(fold.folded()) == ["0.weight"]
    assert not layer._forward_hooks


def test_the_fold_takes_any_leading_dimensions():
    # a layer on sequences: (batch, time, features), its weight gradient summed
    # over both leading dimensions
    module = nn.Sequential(nn.Linear(5, 3), nn.Flatten(), nn.Linear(12, 4)).double()
    model = FunctionalModel(module)
    params = model.init()
    x = torch.randn(10, 4, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (10,))
    got = _steps(model, sgd(0.3), params, x, y, steps=4, batch=5)
    want = _steps(model, sgd(0.3)._replace(fold_alpha=None), params, x, y, 4, 5)
    assert _off(got, want) < 1e-12
    assert _off(got, params) > 1e-3


def test_hooks_are_removed_when_a_step_fails():
    model = build_model("2nn", (1, 8, 8), 10, seed=0)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    y[0] = 99  # not a class: the loss raises
    with pytest.raises(IndexError):
        _steps(model, sgd(0.1), model.init(), x, y, steps=1)
    assert all(not layer._forward_hooks for layer in model.module.modules())


def test_an_in_place_activation_after_the_layer_leaves_the_fold_exact():
    # the hook on the layer's output still gets the gradient at the output before
    # the activation overwrote it
    module = nn.Sequential(
        nn.Linear(16, 8),
        nn.ReLU(inplace=True),
        nn.Linear(8, 8),
        nn.Hardtanh(inplace=True),
        nn.Linear(8, 3),
    )
    params, got, want = _folded_and_unfolded(module, seed=2)
    assert _off(got, want) < 1e-12
    assert _off(got, params) > 1e-3


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [nn.Linear(16, 8, bias=False), nn.ReLU(), nn.Linear(8, 3)],
        lambda: [nn.Linear(16, 8, bias=False), nn.Linear(8, 3, bias=False)],
        lambda: [nn.Linear(16, 8, bias=False), nn.LayerNorm(8), nn.Linear(8, 3)],
    ],
)
def test_layers_without_bias_before_any_other_parameter_train_folded(layers):
    # nothing but the weight needs the gradient at such a layer's output: it is
    # asked for itself
    params, got, want = _folded_and_unfolded(nn.Sequential(*layers()), seed=3)
    assert _off(got, want) < 1e-12
    assert all(float((got[k] - params[k]).abs().max()) > 1e-4 for k in params)
