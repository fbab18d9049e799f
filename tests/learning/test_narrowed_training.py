"""A cohort planned longest first (``plan_training(..., longest_first=True)``):
the eager local training steps only the clients that have a batch, and its results
are the masked cohort's, in the cohort's order of clients."""

import pytest
import torch

from fedloom.core import Replicated, Stacked
from fedloom.data import Examples
from fedloom.learning import (
    FunctionalModel,
    Optimizer,
    adam,
    build_model,
    momentum,
    sgd,
)
from fedloom.learning._cohort_graphs import GraphCache, captured_local_training
from fedloom.learning._cohort_work import (
    CohortStep,
    cohort_local_training,
    plan_training,
)

SIZES = [5, 13, 0, 9, 13, 2]  # in batches of 4: unequal, one client without any


def _cohort(sizes=SIZES):
    generator = torch.Generator().manual_seed(3)
    return [
        Examples(
            torch.randn(n, 3, 4, generator=generator),
            torch.randint(0, 3, (n,), generator=generator),
        )
        for n in sizes
    ]


def _model():
    return FunctionalModel(build_model("2nn", (3, 4), 3, seed=0).module.double())


def _stacked_start(model, count):
    """Every client its own starting parameters (the plan must reorder them)."""
    generator = torch.Generator().manual_seed(5)
    noise = {
        k: torch.randn(count, *v.shape, generator=generator, dtype=v.dtype)
        for k, v in model.init().items()
    }
    return Stacked({k: v + 0.1 * noise[k] for k, v in model.init().items()}, count)


def _plan(start, longest_first, epochs=2, sizes=SIZES):
    seeds = [7 * c + 1 for c in range(len(sizes))]
    cpu = torch.device("cpu")
    plan = plan_training(
        start, _cohort(sizes), seeds, epochs, 4, cpu, longest_first=longest_first
    )
    plan.data.x = plan.data.x.double()  # examples are float32
    return plan


def test_the_plan_puts_the_longest_first_and_counts_the_clients_with_a_batch():
    start = Replicated(_model().init(), len(SIZES))
    plan = _plan(start, longest_first=True)
    assert plan.order == [1, 4, 3, 0, 5, 2]
    assert plan.data.sizes.tolist() == [13, 13, 9, 5, 2, 0]
    assert plan.active == [[5, 4, 3, 2]] * 2
    for e, steps in enumerate(plan.active):  # the clients with a batch: a prefix
        for s, k in enumerate(steps):
            has = plan.batch_mask[:, e, s].any(dim=1)
            assert has[:k].all() and not has[k:].any()
    assert plan.everyone == [[False] * 4] * 2
    unordered = _plan(start, longest_first=False)
    assert unordered.order is None and not unordered.longest_first
    assert unordered.active == plan.active


def test_a_cohort_already_longest_first_is_not_reordered():
    examples = _cohort([9, 9, 4])
    start = Replicated(_model().init(), 3)
    cpu = torch.device("cpu")
    plan = plan_training(start, examples, [1, 2, 3], 1, 4, cpu, longest_first=True)
    assert plan.order is None and plan.longest_first
    assert plan.active == [[3, 2, 2]]


@pytest.fixture
def client_counts(monkeypatch):
    """For every eager step, (clients it computed, masked)."""
    calls = []
    original = CohortStep.eager

    def counted(self, data, params, state, index, mask, masked):
        calls.append((data.size, masked))
        assert data.x.shape[0] == index.shape[0] == data.size
        return original(self, data, params, state, index, mask, masked)

    monkeypatch.setattr(CohortStep, "eager", counted)
    return calls


def _adam_with_its_state_reordered():
    """Adam whose ``update`` returns its state's keys in another order than
    ``init`` made them: the narrowed step copies them back by key."""
    plain = adam(0.01)

    def update(grads, state, params):
        new, state = plain.update(grads, state, params)
        return new, dict(reversed(list(state.items())))

    return Optimizer(plain.init, update)


@pytest.mark.parametrize(
    "optimizer",
    [sgd(0.3), momentum(0.1, 0.9), adam(0.01), _adam_with_its_state_reordered()],
    ids=[
        "sgd (dense step)",
        "momentum (dense step)",
        "adam (new tensors)",
        "adam, state keys reordered",
    ],
)
def test_narrowed_training_is_the_masked_cohorts_in_float64(optimizer, client_counts):
    model = _model()
    start = _stacked_start(model, len(SIZES))
    step = CohortStep(model, optimizer)
    want = cohort_local_training(step, _plan(start, longest_first=False))
    assert [n for n, _ in client_counts] == [6] * 8  # every client, every step
    assert all(masked for _, masked in client_counts)
    client_counts.clear()
    got = cohort_local_training(step, _plan(start, longest_first=True))
    # only the clients with a batch, never masked (client 2 has none)
    assert client_counts == [(5, False), (4, False), (3, False), (2, False)] * 2
    want_deltas, want_weights, want_losses = want
    got_deltas, got_weights, got_losses = got
    for k, v in want_deltas.items():
        assert v[2].abs().max() == 0  # the client without examples: no change
        assert (got_deltas[k] - v).abs().max() <= 1e-12 * v.abs().max()
    assert torch.equal(got_weights, want_weights)
    assert torch.equal(got_weights, torch.tensor(SIZES, dtype=torch.float64))
    torch.testing.assert_close(got_losses, want_losses, rtol=1e-12, atol=0)


def test_the_captured_epochs_give_results_in_the_cohorts_order():
    # the graph runner steps every client (masked) and puts the results back too
    model = _model()
    start = _stacked_start(model, len(SIZES))
    step = CohortStep(model, sgd(0.3))
    want = cohort_local_training(step, _plan(start, longest_first=False))
    got = captured_local_training(
        step, _plan(start, longest_first=True), GraphCache(), capture=False
    )
    for k, v in want[0].items():
        assert (got[0][k] - v).abs().max() <= 1e-12 * v.abs().max()
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2], rtol=1e-12, atol=0)


def test_a_cohort_without_any_example_takes_no_step(client_counts):
    model = _model()
    empty = Examples(torch.zeros(0, 3, 4), torch.zeros(0, dtype=torch.int64))
    examples = [empty, empty]
    start = Replicated(model.init(), 2)
    cpu = torch.device("cpu")
    plan = plan_training(start, examples, [1, 2], 1, 4, cpu, longest_first=True)
    plan.data.x = plan.data.x.double()
    deltas, weights, losses = cohort_local_training(CohortStep(model, sgd(0.3)), plan)
    assert not client_counts
    assert all(v.abs().max() == 0 for v in deltas.values())
    assert weights.tolist() == [0.0, 0.0] and losses.tolist() == [0.0, 0.0]


def test_a_compiled_step_trains_a_narrowed_cohort_eagerly(client_counts):
    # the steps where every client has a batch run compiled, the others eagerly
    model, sizes = _model(), [5, 13, 9, 13, 2]
    start = _stacked_start(model, len(sizes))
    want = cohort_local_training(
        CohortStep(model, sgd(0.3)), _plan(start, False, epochs=1, sizes=sizes)
    )
    client_counts.clear()
    step = CohortStep(model, sgd(0.3), compile=True)
    got = cohort_local_training(step, _plan(start, True, epochs=1, sizes=sizes))
    assert client_counts == [(4, False), (3, False), (2, False)]
    for k, v in want[0].items():
        assert (got[0][k] - v).abs().max() <= 1e-9 * v.abs().max()
