"""A client's local training computes, bit for bit, what steps of
``functional_call`` with each step's new parameters compute: with SGD (its linear
layers' update unfolded, see test_linear_fold.py) and momentum (updated in place),
Adam, and an optimizer that keeps the parameters it started from in its state; for
tied weights and under ``autocast`` too."""

import pytest
import torch

from fedloom.data import ClientData, Examples, load_dataset
from fedloom.learning import (
    ClientInput,
    FunctionalModel,
    Optimizer,
    adam,
    build_model,
    momentum,
    sgd,
)
from fedloom.learning._client_work import LocalTraining, _gradient_and_loss


def _anchored(learning_rate: float, mu: float) -> Optimizer:
    """FedProx's proximal step as a pure optimizer: its state holds the
    parameters it started from, which the steps must leave alone."""

    def init(params):
        return {"anchor": params}

    def update(grads, state, params):
        anchor = state["anchor"]
        return {
            k: params[k] - learning_rate * (grads[k] + mu * (params[k] - anchor[k]))
            for k in params
        }, state

    return Optimizer(init, update)


def _functional_steps(model, optimizer, params, client, epochs, batch):
    """The update of ``epochs`` of steps, each by ``functional_call`` on the
    optimizer's new parameters (the local training before it kept the
    parameters in the module)."""
    x, y = client.examples.x, client.examples.y
    generator = torch.Generator().manual_seed(client.seed)
    step, current = _gradient_and_loss(model), params
    state = optimizer.init(current)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            index = order[start : start + batch]
            grads, _ = step(current, x[index], y[index])
            current, state = optimizer.update(grads, state, current)
    return {k: current[k] - params[k] for k in params}


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(64, 64)
        self.second = torch.nn.Linear(64, 64)
        self.second.weight = self.first.weight
        self.out = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.first(x.flatten(1)))
        return self.out(torch.relu(self.second(hidden)))


MODELS = {
    "2nn": lambda: build_model("2nn", (1, 8, 8), 10, seed=0),
    "tied": lambda: FunctionalModel(_Tied()),
    "cnn, bfloat16": lambda: build_model(
        "cnn", (1, 8, 8), 10, seed=0, autocast=torch.bfloat16
    ),
}
OPTIMIZERS = {  # SGD unfolded: its fold rounds otherwise (test_linear_fold.py)
    "sgd": lambda: sgd(0.1)._replace(fold_alpha=None),
    "momentum": lambda: momentum(0.05),
    "adam": lambda: adam(0.01),
    "anchored": lambda: _anchored(0.1, 1.0),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("model", MODELS)
def test_local_training_is_functional_steps_bit_for_bit(model, optimizer):
    digits = load_dataset("digits")
    net = MODELS[model]()
    clients = ClientData.from_dataset(digits, "iid", 20, seed=3)
    client = ClientInput(clients.client(5), 7)
    params = {k: v + 0.01 for k, v in net.init().items()}  # not the module's own
    before = {k: v.clone() for k, v in params.items()}
    got = LocalTraining(net, OPTIMIZERS[optimizer](), epochs=2, batch_size=8)
    result = got(params, client)
    want = _functional_steps(net, OPTIMIZERS[optimizer](), params, client, 2, 8)
    for k, v in want.items():
        torch.testing.assert_close(result.update[k], v, rtol=0, atol=0)
        assert v.abs().max() > 0
        torch.testing.assert_close(params[k], before[k], rtol=0, atol=0)  # untouched


@pytest.mark.parametrize(
    "make", [lambda: sgd(0.1)._replace(fold_alpha=None), lambda: momentum(0.05)]
)
def test_local_training_in_place_is_the_functional_update_bit_for_bit(make):
    digits = load_dataset("digits")
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    clients = ClientData.from_dataset(digits, "iid", 20, seed=3)
    client = ClientInput(clients.client(5), 7)
    params = model.init()
    optimizer = make()
    assert optimizer.update_in_place is not None
    functional = optimizer._replace(update_in_place=None)
    got = LocalTraining(model, optimizer, epochs=2, batch_size=8)(params, client)
    want = LocalTraining(model, functional, epochs=2, batch_size=8)(params, client)
    for k, v in want.update.items():
        torch.testing.assert_close(got.update[k], v, rtol=0, atol=0)
    torch.testing.assert_close(got.metrics, want.metrics, rtol=0, atol=0)
    torch.testing.assert_close(got.weight, want.weight, rtol=0, atol=0)


def test_an_optimizers_state_holds_no_graph_and_no_leaf():
    seen = []

    def init(params):
        state = {"start": {k: v.clone() for k, v in params.items()}}
        seen.append(state["start"])
        return state

    def update(grads, state, params):
        return {k: params[k] - 0.1 * grads[k] for k in params}, state

    model = build_model("logistic", (4,), 3, seed=0)
    examples = Examples(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    LocalTraining(model, Optimizer(init, update), 1, 4)(
        model.init(), ClientInput(examples, 0)
    )
    (start,) = seen
    assert all(not v.requires_grad and v.grad_fn is None for v in start.values())
