"""The eager cohort step writes SGD's (unfolded: ``test_dense_cohort.py`` has the
folded), momentum's and Adam's update in place, and computes what the functional
update does; its loss is ``F.cross_entropy``'s."""

import pytest
import torch
from torch.utils._pytree import tree_leaves

from fedloom.core import Replicated
from fedloom.data import ClientData, load_dataset
from fedloom.learning import adam, build_model, momentum, sgd
from fedloom.learning._cohort_loss import cross_entropy
from fedloom.learning._cohort_work import CohortStep, plan_training


@pytest.mark.parametrize(
    "make",
    [
        lambda: sgd(0.1)._replace(fold_alpha=None),
        lambda: momentum(0.05),
        lambda: adam(0.01),
    ],
    ids=["sgd", "momentum", "adam"],
)
def test_the_eager_step_updates_in_place_as_the_functional_update_would(make):
    digits = load_dataset("digits")
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    clients = ClientData.from_dataset(digits, "quantity_skew", 30, seed=3)
    examples = [clients.client(i) for i in range(4)]
    start = Replicated(model.init(), 4)
    plan = plan_training(start, examples, [1, 2, 3, 4], 1, 8, torch.device("cpu"))
    # heavy_ball=None: the eager step's own in-place update, not momentum's dense step
    optimizer = make()._replace(heavy_ball=None)
    in_place = CohortStep(model, optimizer)
    functional = CohortStep(model, optimizer._replace(update_in_place=None))
    assert in_place.dense is None and functional.dense is None
    got, got_state = in_place.begin(plan.start)
    want, want_state = functional.begin(plan.start)
    steps = plan.batch_index.shape[2]
    assert plan.everyone[0][0] and not plan.everyone[0][-1]
    for s in [0, 1, steps - 1, 2]:  # a masked step (clients ran out) in between
        masked = not plan.everyone[0][s]
        batch = plan.batch_index[:, 0, s], plan.batch_mask[:, 0, s], masked
        before = got
        got, got_state, got_loss = in_place(plan.data, got, got_state, *batch)
        want, want_state, want_loss = functional(plan.data, want, want_state, *batch)
        assert (got is before) == (not masked)  # masked: new tensors, kept where idle
        torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=0)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
        assert not torch.equal(v, plan.start[k])
    # Adam's step counts differ by then: the masked step kept the idle clients'
    got_leaves, want_leaves = tree_leaves(got_state), tree_leaves(want_state)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    if "step" in want_state:
        assert want_state["step"].unique().numel() > 1


def test_the_steps_cross_entropy_is_torchs_bit_for_bit_under_vmap():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 10, generator=generator) * 5
    y = torch.randint(0, 10, (3, 7), generator=generator)
    weights = torch.rand(3, 7, generator=generator)

    def value_and_gradient(per_example):
        z = logits.clone().requires_grad_()
        value = torch.vmap(per_example)(z, y)
        (value * weights).sum().backward()
        return value, z.grad

    got = value_and_gradient(cross_entropy)
    want = value_and_gradient(
        lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none")
    )
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="out of bounds"):
        cross_entropy(logits[0], torch.full((7,), -100))
