"""FedAvg and FedSGD against plain, centralized references."""

import pytest
import torch
from torch import nn

from fedloom.data import Examples
from fedloom.learning import (
    ClientInput,
    FunctionalModel,
    build_model,
    evaluate,
    fed_avg,
    fed_sgd,
    momentum,
)
from fedloom.learning._evaluation import ClientEvaluation
from fedloom.runtimes import LocalRuntime, VectorizedRuntime


def _examples(n, seed, features=6, classes=3):
    g = torch.Generator().manual_seed(seed)
    return Examples(
        torch.randn(n, features, generator=g),
        torch.randint(0, classes, (n,), generator=g),
    )


def _model():
    return build_model("2nn", (6,), 3, seed=0)


def test_fedavg_one_client_one_epoch_equals_centralized_sgd():
    data = _examples(53, seed=1)
    model = _model()
    process = fed_avg(model, client_learning_rate=0.1, local_epochs=1, batch_size=10)
    state = process.init()
    new_state, _ = process.next(state, [ClientInput(data, seed=123)])

    # Plain PyTorch: an nn.Module and torch.optim.SGD over the same batches.
    reference = build_model("2nn", (6,), 3, seed=0).module
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    order = torch.randperm(53, generator=torch.Generator().manual_seed(123))
    for start in range(0, 53, 10):
        index = order[start : start + 10]
        optimizer.zero_grad()
        nn.functional.cross_entropy(reference(data.x[index]), data.y[index]).backward()
        optimizer.step()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(
            new_state.params[name], param.detach(), rtol=1e-5, atol=1e-6
        )


def test_fedsgd_with_all_clients_is_one_full_batch_step_on_their_union():
    clients = [_examples(n, seed=s) for s, n in enumerate([5, 17, 40])]
    model = _model()
    process = fed_sgd(model, learning_rate=0.3)
    state = process.init()
    new_state, metrics = process.next(
        state, [ClientInput(c, seed=i) for i, c in enumerate(clients)]
    )

    union_x = torch.cat([c.x for c in clients]).double()
    union_y = torch.cat([c.y for c in clients])
    params64 = {k: v.double().requires_grad_() for k, v in state.params.items()}
    module64 = build_model("2nn", (6,), 3, seed=0).module.double()
    loss = nn.functional.cross_entropy(
        torch.func.functional_call(module64, params64, (union_x,)), union_y
    )
    grads = torch.autograd.grad(loss, list(params64.values()))
    for (name, p), g in zip(params64.items(), grads, strict=True):
        expected = (p - 0.3 * g).detach().float()
        torch.testing.assert_close(
            new_state.params[name], expected, rtol=1e-5, atol=1e-6
        )
    assert metrics["num_examples"] == 62
    assert metrics["train_loss"] == pytest.approx(float(loss.detach()), rel=1e-5)


def test_fedavg_weighted_mean_of_client_deltas():
    clients = [_examples(n, seed=10 + n) for n in (8, 24)]
    model = _model()
    process = fed_avg(model, client_learning_rate=0.05, local_epochs=2, batch_size=4)
    state = process.init()
    new_state, _ = process.next(
        state, [ClientInput(c, seed=7 + i) for i, c in enumerate(clients)]
    )
    deltas = [
        process.client_work(state.params, ClientInput(c, seed=7 + i)).update
        for i, c in enumerate(clients)
    ]
    for name in state.params:
        expected = (
            state.params[name].double()
            + (8 * deltas[0][name].double() + 24 * deltas[1][name].double()) / 32
        )
        torch.testing.assert_close(
            new_state.params[name].double(), expected, rtol=1e-5, atol=1e-6
        )


def test_fedavg_with_server_momentum_is_fedavgm():
    data = _examples(20, seed=3)
    model = _model()
    process = fed_avg(
        model,
        client_learning_rate=0.1,
        local_epochs=1,
        batch_size=5,
        server_optimizer=momentum(1.0, beta=0.5),
    )
    state = process.init()
    state1, _ = process.next(state, [ClientInput(data, seed=1)])
    delta0 = {k: state1.params[k] - state.params[k] for k in state.params}
    state2, _ = process.next(state1, [ClientInput(data, seed=2)])
    delta1 = process.client_work(state1.params, ClientInput(data, seed=2)).update
    for k in state.params:
        # v1 = -delta0, v2 = 0.5 v1 - delta1, w2 = w1 - v2
        expected = state1.params[k] + 0.5 * delta0[k] + delta1[k]
        torch.testing.assert_close(state2.params[k], expected, rtol=1e-5, atol=1e-6)


def test_same_seed_same_result_and_shuffling_depends_on_seed():
    data = _examples(30, seed=4)
    process = fed_avg(_model(), client_learning_rate=0.1, local_epochs=1, batch_size=7)
    state = process.init()
    a = process.client_work(state.params, ClientInput(data, seed=5)).update
    b = process.client_work(state.params, ClientInput(data, seed=5)).update
    c = process.client_work(state.params, ClientInput(data, seed=6)).update
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_client_with_no_examples_contributes_nothing():
    data = _examples(12, seed=5)
    empty = Examples(torch.zeros(0, 6), torch.zeros(0, dtype=torch.int64))
    process = fed_avg(_model(), client_learning_rate=0.1, local_epochs=1, batch_size=4)
    state = process.init()
    alone, _ = process.next(state, [ClientInput(data, seed=1)])
    with_empty, metrics = process.next(
        state, [ClientInput(data, seed=1), ClientInput(empty, seed=2)]
    )
    for k in state.params:
        torch.testing.assert_close(alone.params[k], with_empty.params[k])
    assert metrics["clients"] == 2
    with pytest.raises(ValueError, match="none of the cohort's 1 clients has an"):
        process.next(state, [ClientInput(empty, seed=2)])


def test_paper_parameter_counts():
    assert (
        sum(p.numel() for p in build_model("2nn", (1, 28, 28), 10).init().values())
        == 199_210
    )
    assert (
        sum(p.numel() for p in build_model("cnn", (1, 28, 28), 10).init().values())
        == 1_663_370
    )


def test_model_init_depends_only_on_seed():
    a, b = (
        build_model("cnn", (1, 8, 8), 10, seed=3).init(),
        build_model("cnn", (1, 8, 8), 10, seed=3).init(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: build_model("resnet", (1, 8, 8), 10), "unknown model 'resnet'"),
        (lambda: build_model("cnn", (64,), 10), "needs image inputs"),
        (lambda: FunctionalModel(nn.BatchNorm1d(3)), "BatchNorm"),
        (
            lambda: fed_avg(_model(), client_learning_rate=-0.1),
            "learning_rate must be finite and > 0",
        ),
        (
            lambda: fed_avg(_model(), client_learning_rate=float("inf")),
            "learning_rate must be finite and > 0",
        ),
        (
            lambda: fed_avg(_model(), client_learning_rate=0.1, local_epochs=0),
            "epochs must be an int >= 1",
        ),
        (
            lambda: fed_avg(_model(), client_learning_rate=0.1, local_epochs=2.5),
            "epochs must be an int >= 1, got 2.5",
        ),
        (
            lambda: fed_avg(_model(), client_learning_rate=0.1, batch_size=0),
            r"batch_size \(or None: the whole client\) must be an int >= 1",
        ),
        (
            lambda: fed_avg(_model(), client_learning_rate=0.1, batch_size=True),
            "batch_size .* must be an int >= 1, got True",
        ),
        (
            lambda: fed_sgd(_model(), learning_rate=0.0),
            "learning_rate must be finite and > 0",
        ),
        (
            lambda: ClientEvaluation(_model(), batch_size=-1),
            "batch_size must be an int >= 1, got -1",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_evaluate_refuses_a_batch_size_that_reads_nothing():
    examples = _examples(4, seed=0)
    model = _model()
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got -1"):
        evaluate(model, model.init(), examples, batch_size=-1)


@pytest.mark.parametrize("runtime", [LocalRuntime(), VectorizedRuntime()])
def test_a_cohort_of_examples_not_client_inputs_is_named(runtime):
    examples = _examples(4, seed=0)
    process = fed_avg(_model(), client_learning_rate=0.1)
    with pytest.raises(TypeError, match="is Examples, not ClientInput"):
        process.next(process.init(), [examples], runtime=runtime)


def test_empty_cohort_is_an_error():
    process = fed_sgd(_model(), learning_rate=0.1)
    with pytest.raises(ValueError, match="at least one client"):
        process.next(process.init(), [])
