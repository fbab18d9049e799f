"""Centralized and federated evaluation against a direct computation."""

import pytest
import torch
from torch import nn

from fedloom.data import Examples
from fedloom.learning import FunctionalModel, build_model, evaluate, federated_evaluate


def _examples(n, seed):
    g = torch.Generator().manual_seed(seed)
    return Examples(
        torch.randn(n, 5, generator=g), torch.randint(0, 4, (n,), generator=g)
    )


def test_evaluate_matches_direct_computation_across_batches():
    model = build_model("logistic", (5,), 4, seed=1)
    params = model.init()
    data = _examples(37, seed=2)
    result = evaluate(model, params, data, batch_size=8)
    logits = model.apply(params, data.x).double()
    expected_loss = torch.nn.functional.cross_entropy(logits, data.y).item()
    expected_accuracy = (logits.argmax(1) == data.y).double().mean().item()
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert result["accuracy"] == pytest.approx(expected_accuracy)


def test_federated_evaluation_is_the_example_weighted_mean():
    model = build_model("logistic", (5,), 4, seed=1)
    params = model.init()
    clients = [_examples(n, seed=n) for n in (3, 10, 21)]
    federated = federated_evaluate(model, params, clients)
    union = Examples(
        torch.cat([c.x for c in clients]), torch.cat([c.y for c in clients])
    )
    central = evaluate(model, params, union)
    assert federated["loss"] == pytest.approx(central["loss"], rel=1e-6)
    assert federated["accuracy"] == pytest.approx(central["accuracy"])


def test_evaluation_runs_the_model_in_eval_mode():
    # Dropout passes everything in evaluation (the same loss every time, that of
    # the model without it) and is left to drop in training.
    torch.manual_seed(0)
    layers = [nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4)]
    model = FunctionalModel(nn.Sequential(*layers))
    params = model.init()
    data = _examples(40, seed=3)
    without = FunctionalModel(nn.Sequential(*layers[:2], layers[3]))
    expected = evaluate(
        without, {k.replace("3", "2"): v for k, v in params.items()}, data
    )
    for _ in range(2):
        assert evaluate(model, params, data) == pytest.approx(expected)
        assert federated_evaluate(model, params, [data]) == pytest.approx(expected)
    assert model.module.training
    assert not torch.equal(model.apply(params, data.x), model.apply(params, data.x))


def test_evaluate_on_nothing_is_an_error():
    model = build_model("logistic", (5,), 4)
    with pytest.raises(ValueError, match="empty"):
        evaluate(
            model,
            model.init(),
            Examples(torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64)),
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("no_tf32")
def test_evaluate_runs_where_the_examples_are():
    model = build_model("cnn", (1, 28, 28), 10, seed=1)
    params = model.init()  # on the CPU: copied to the examples' device
    g = torch.Generator().manual_seed(3)
    data = Examples(
        torch.rand(50, 1, 28, 28, generator=g), torch.randint(0, 10, (50,), generator=g)
    )
    on_cpu = evaluate(model, params, data, batch_size=16)
    on_gpu = evaluate(model, params, data.to("cuda"), batch_size=16)
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-5)
    assert on_gpu["accuracy"] == on_cpu["accuracy"]
