"""Eager SGD steps of a dense cohort taken several at once, the first linear
layer's updates deferred to their end (``DenseCohortStep.steps``): the steps one at
a time in float64, for every network the dense step admits, and FedAvg's local
training taking them where its rule says they pay."""

import pytest
import torch
from test_dense_cohort import _networks, _plan  # this folder, on sys.path

from fedloom.learning import FunctionalModel, build_model, momentum, sgd
from fedloom.learning._cohort_work import (
    CohortStep,
    cohort_local_training,
)
from fedloom.learning._dense_cohort import DenseCohortStep, deferred_steps


def _batches(plan, steps):
    """The first ``steps`` steps' data of ``plan``'s first epoch, as ``[clients,
    steps, B, ...]``."""
    index, mask = plan.batch_index[:, 0, :steps], plan.batch_mask[:, 0, :steps]
    rows = torch.arange(index.shape[0])[:, None, None]
    return plan.data.x[rows, index], plan.data.y[rows, index], mask


@pytest.mark.parametrize("name", list(_networks()))
def test_deferred_steps_are_the_steps_one_at_a_time_in_float64(name):
    model, plan = _plan(_networks()[name], [16, 16, 16], batch=4)
    dense = DenseCohortStep.of(model, sgd(0.2))
    x, y, mask = _batches(plan, 4)
    want = {k: v.clone() for k, v in plan.start.items()}
    one = [slice(s, s + 1) for s in range(4)]  # a step a call
    want_loss = sum(dense.steps(want, x[:, s], y[:, s], mask[:, s]) for s in one)
    got = {k: v.clone() for k, v in plan.start.items()}
    got_loss = dense.steps(got, x, y, mask)
    for k, v in want.items():
        change = (v - plan.start[k]).abs().max()
        assert change > 1e-3
        assert (got[k] - v).abs().max() <= 1e-12 * change
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-12, atol=0)


def test_momentum_takes_its_steps_one_at_a_time():
    model, plan = _plan(_networks()["2nn"], [8, 8], batch=4)
    dense = DenseCohortStep.of(model, momentum(0.1, 0.9))
    assert dense.steps_at_once(torch.Size([3, 4]), 1) == 1
    x, y, mask = _batches(plan, 2)
    params = {k: v.clone() for k, v in plan.start.items()}
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    with pytest.raises(ValueError, match="momentum takes one at a time"):
        dense.steps(params, x, y, mask, {"velocity": velocity})


def test_how_many_steps_are_taken_at_once():
    # The 2NN on Fashion-MNIST (784 -> 200): five at B = 10 (the corrections add
    # 6 %), three at 20, none at 50 (where two were slower than one at a time,
    # benchmarks/deferred_dense_steps.py); logistic regression's 10 outputs never.
    assert [deferred_steps(b, 784, 200) for b in (10, 20, 50)] == [5, 3, 1]
    assert deferred_steps(10, 784, 10) == 1
    two_nn = DenseCohortStep.of(build_model("2nn", (1, 28, 28), 10, seed=0), sgd(0.1))
    assert two_nn.steps_at_once(torch.Size([1, 28, 28]), 10) == 5
    # a linear layer before the flattening: each example gives it 3 rows
    before = FunctionalModel(_networks()["a linear layer before the flattening"])
    step = DenseCohortStep.of(before, sgd(0.1))
    assert step.steps_at_once(torch.Size([3, 4]), 1) == deferred_steps(3, 4, 5)


SIZES = [29, 7, 0, 18, 29, 3]  # in batches of 4: 8, 2, 0, 5, 8 and 1 of them


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_local_training_takes_steps_at_once_where_the_same_clients_have_a_batch(
    monkeypatch, dense_steps_taken, compile
):
    # Small networks defer nothing by the rule; here three steps at once pay.
    monkeypatch.setattr(DenseCohortStep, "steps_at_once", lambda self, *_: 3)
    model, plan = _plan(_networks()["2nn"], SIZES, batch=4, longest_first=True)
    step = CohortStep(model, sgd(0.2), compile=compile)
    got = cohort_local_training(step, plan)
    # (clients, steps) of each call: clients of 8, 5, 2 and 1 batches and one
    # without any, longest first; each run of steps of the same clients at once
    assert dense_steps_taken == [(5, 1), (4, 1), (3, 3), (2, 3)] * 2
    unfolded = CohortStep(model, sgd(0.2)._replace(fold_alpha=None))
    want = cohort_local_training(unfolded, _plan(_networks()["2nn"], SIZES, 4)[1])
    for k, v in want[0].items():
        assert v.abs().max() > 0.01
        torch.testing.assert_close(got[0][k], v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[2], want[2], rtol=1e-12, atol=0)


def test_equal_clients_take_their_steps_at_once(monkeypatch, dense_steps_taken):
    monkeypatch.setattr(DenseCohortStep, "steps_at_once", lambda self, *_: 3)
    model, plan = _plan(_networks()["2nn"], [16, 16, 16], batch=4)  # 4 steps
    got = cohort_local_training(CohortStep(model, sgd(0.2)), plan)
    assert [steps for _, steps in dense_steps_taken] == [3, 1, 3, 1]  # two epochs
    unfolded = CohortStep(model, sgd(0.2)._replace(fold_alpha=None))
    want = cohort_local_training(unfolded, plan)
    for k, v in want[0].items():
        torch.testing.assert_close(got[0][k], v, rtol=1e-12, atol=1e-14)
