"""Functional optimizers against hand-computed float64 values."""

import math

import pytest
import torch
from torch.func import vmap
from torch.utils._pytree import tree_leaves, tree_map

from fedloom.learning import adam, momentum, sgd


def _run(optimizer, grads):
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    state = optimizer.init(params)
    for g in grads:
        params, state = optimizer.update(
            {"w": torch.tensor(g, dtype=torch.float64)}, state, params
        )
    return params["w"].tolist(), state


def test_sgd():
    w, _ = _run(sgd(0.5), [[1.0, 2.0], [2.0, -2.0]])
    assert w == pytest.approx([1.0 - 0.5 - 1.0, -2.0 - 1.0 + 1.0])


def test_momentum():
    w, state = _run(momentum(0.1, beta=0.9), [[1.0, 0.0], [1.0, 0.0]])
    # v1 = 1, w1 = 0.9; v2 = 1.9, w2 = 0.71
    assert w == pytest.approx([0.71, -2.0])
    assert state["velocity"]["w"].tolist() == pytest.approx([1.9, 0.0])


def test_adam_first_steps():
    lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-3
    w, state = _run(adam(lr, b1, b2, eps), [[0.5, -1.0], [0.25, -1.0]])
    expected = [1.0, -2.0]
    m = [0.0, 0.0]
    v = [0.0, 0.0]
    for t, g in enumerate([[0.5, -1.0], [0.25, -1.0]], start=1):
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            expected[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    assert w == pytest.approx(expected, rel=1e-12)
    assert int(state["step"]) == 2


def test_optimizers_do_not_mutate_inputs():
    params = {"w": torch.ones(3)}
    grads = {"w": torch.ones(3)}
    for optimizer in (sgd(0.1), momentum(0.1), adam(0.1)):
        state = optimizer.init(params)
        optimizer.update(grads, state, params)
        assert torch.equal(params["w"], torch.ones(3))


IN_PLACE = {
    "sgd": lambda: sgd(0.1),
    "momentum": lambda: momentum(0.1, beta=0.8),
    "adam": lambda: adam(0.1, beta2=0.99),
    "fedadam": lambda: adam(0.1, beta2=0.99, epsilon=1e-3, bias_correction=False),
}


def _assert_same_state(got, want):
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for k in want:
            _assert_same_state(got[k], want[k])
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("make", IN_PLACE.values(), ids=IN_PLACE.keys())
def test_update_in_place_is_update_bit_for_bit(make):
    optimizer = make()
    generator = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=generator), "b": torch.randn(3)}
    state = optimizer.init(params)
    own = {k: v.clone() for k, v in params.items()}
    own_state = optimizer.init(own)
    memory = {k: v.data_ptr() for k, v in own.items()}
    state_memory = [t.data_ptr() for t in tree_leaves(own_state)]
    for _ in range(3):
        grads = {k: torch.randn(v.shape, generator=generator) for k, v in own.items()}
        params, state = optimizer.update(grads, state, params)
        assert optimizer.update_in_place is not None
        optimizer.update_in_place(grads, own_state, own)
    for k, v in params.items():
        assert torch.equal(own[k], v)
        assert own[k].data_ptr() == memory[k]  # written where it was
    assert [t.data_ptr() for t in tree_leaves(own_state)] == state_memory
    _assert_same_state(own_state, state)


@pytest.mark.parametrize("make", IN_PLACE.values(), ids=IN_PLACE.keys())
def test_update_in_place_of_stacked_clients_is_each_clients_update(make):
    # Three clients' parameters and states stacked along a client axis, as the
    # vectorized runtime's eager step has them, after client 0 alone took two steps
    # and client 2 one (Adam's step counts differ, as a narrowed cohort's do); then
    # steps of every client in place against each client's own update.
    optimizer = make()
    assert optimizer.elementwise or optimizer.stacks_in_place
    generator = torch.Generator().manual_seed(1)

    def gradients(params):
        return {k: torch.randn(v.shape, generator=generator) for k, v in params.items()}

    clients = [{"w": torch.randn(4, 5), "b": torch.randn(5)} for _ in range(3)]
    states = [optimizer.init(p) for p in clients]
    for c, steps in ((0, 2), (2, 1)):
        for _ in range(steps):
            grads = gradients(clients[c])
            clients[c], states[c] = optimizer.update(grads, states[c], clients[c])
    stacked = {k: torch.stack([p[k] for p in clients]) for k in clients[0]}
    state = tree_map(lambda *t: torch.stack(t), *states)
    # the layout vmap(init) makes for stacked parameters
    assert tree_map(torch.Tensor.size, state) == tree_map(
        torch.Tensor.size, vmap(optimizer.init)(stacked)
    )
    memory = [t.data_ptr() for t in tree_leaves((stacked, state))]
    for _ in range(3):
        grads = gradients(stacked)
        optimizer.update_in_place(grads, state, stacked)
        for c in range(3):
            mine = {k: g[c] for k, g in grads.items()}
            clients[c], states[c] = optimizer.update(mine, states[c], clients[c])
    assert [t.data_ptr() for t in tree_leaves((stacked, state))] == memory
    for c in range(3):
        for k, v in clients[c].items():
            assert torch.equal(stacked[k][c], v)
        _assert_same_state(tree_map(lambda t, c=c: t[c], state), states[c])


@pytest.mark.parametrize(
    "make",
    [
        lambda: sgd(-1.0),
        lambda: momentum(0.1, beta=1.0),
        lambda: adam(0.1, epsilon=0.0),
    ],
)
def test_bad_hyperparameters(make):
    with pytest.raises(ValueError):
        make()


def test_adam_without_bias_correction_is_fedadam():
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-3
    w, _ = _run(adam(lr, b1, b2, eps, bias_correction=False), [[0.5, -1.0]])
    # m = 0.1 g, v = 0.01 g^2: w - lr * m / (sqrt(v) + eps)
    expected = [1.0 - lr * 0.05 / (0.05 + eps), -2.0 + lr * 0.1 / (0.1 + eps)]
    assert w == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_moves_float16_parameters_at_a_small_learning_rate(bias_correction):
    # its 1 / learning_rate would overflow float16: the denominator is float32
    optimizer = adam(1e-6, bias_correction=bias_correction)
    params = {"w": torch.full((3,), 1e-3, dtype=torch.float16)}
    grads = {"w": torch.full((3,), 1e-2, dtype=torch.float16)}
    new, _ = optimizer.update(grads, optimizer.init(params), params)
    own = {"w": params["w"].clone()}
    assert optimizer.update_in_place is not None
    optimizer.update_in_place(grads, optimizer.init(own), own)
    assert new["w"].dtype == torch.float16
    assert torch.equal(own["w"], new["w"])
    assert (new["w"] < params["w"]).all()
