"""The eager cohort step of dense networks under plain SGD or heavy-ball momentum
(``_dense_cohort.py``): the ``vmap`` step's parameters and losses in float64, for
every network its rule admits, and the ``vmap`` step wherever the rule does not
hold."""

import pytest
import torch
from torch import nn

from fedloom.core import Replicated
from fedloom.data import Examples
from fedloom.learning import FunctionalModel, adam, build_model, momentum, sgd
from fedloom.learning._cohort_work import CohortStep, plan_training
from fedloom.learning._dense_cohort import DenseCohortStep, dense_layers


def _networks():
    """Dense networks of 12 input features (flat or as 3 x 4) and 3 classes."""
    return {
        "2nn": build_model("2nn", (3, 4), 3, seed=0).module,
        "logistic": build_model("logistic", (3, 4), 3, seed=0).module,
        "nested, no bias, in-place ReLU, GELU": nn.Sequential(
            nn.Flatten(),
            nn.Sequential(nn.Linear(12, 9, bias=False), nn.ReLU(inplace=True)),
            nn.Linear(9, 7),
            nn.GELU(),
            nn.Linear(7, 3),
        ),
        "no bias at all": nn.Sequential(nn.Flatten(), nn.Linear(12, 3, bias=False)),
        "a linear layer before the flattening": nn.Sequential(
            nn.Linear(4, 5),
            nn.Tanh(),
            nn.Flatten(start_dim=1, end_dim=-1),
            nn.Linear(15, 3),
        ),
        "in-place activations before and after the linear layers": (
            nn.Sequential(
                nn.Hardtanh(-0.5, 0.5, inplace=True),
                nn.Flatten(),
                nn.Linear(12, 6),
                nn.ELU(inplace=True),
                nn.Identity(),
                nn.Linear(6, 3),
                nn.SiLU(inplace=True),  # on the logits
            )
        ),
    }


def _plan(module, sizes, batch, dtype=torch.float64, longest_first=False):
    """A cohort of ``sizes`` random clients' examples of ``module``'s shape, two
    epochs (with ``longest_first``, planned so: see ``plan_training``)."""
    generator = torch.Generator().manual_seed(4)
    examples = [
        Examples(
            torch.randn(n, 3, 4, generator=generator),
            torch.randint(0, 3, (n,), generator=generator),
        )
        for n in sizes
    ]
    model = FunctionalModel(module.to(dtype))
    start = Replicated(model.init(), len(sizes))
    seeds = list(range(len(sizes)))
    cpu = torch.device("cpu")
    plan = plan_training(
        start, examples, seeds, 2, batch, cpu, longest_first=longest_first
    )
    plan.data.x = plan.data.x.to(dtype)  # examples are float32
    return model, plan


def _train(step, plan):
    """Every step of ``plan``: (parameters, each step's losses)."""
    params, state = step.begin(plan.start)
    losses = []
    for e in range(plan.epochs):
        for s in range(plan.batch_index.shape[2]):
            batch = plan.batch_index[:, e, s], plan.batch_mask[:, e, s]
            params, state, loss = step(
                plan.data, params, state, *batch, not plan.everyone[e][s]
            )
            losses.append(loss)
    return params, torch.stack(losses)


OPTIMIZERS = {  # each with its unfolded twin, which keeps the vmap step
    "sgd": (sgd(0.2), sgd(0.2)._replace(fold_alpha=None)),
    "momentum": (momentum(0.1, 0.9), momentum(0.1, 0.9)._replace(heavy_ball=None)),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", list(_networks()))
def test_the_dense_step_is_the_vmap_step_in_float64(name, optimizer, dense_steps_taken):
    # clients of 13, 9 and 13 examples in batches of 4: the last batch of every
    # client is partly padding, and client 1 runs out of batches before the others
    # (its masked steps are vmap's, keeping its velocity under momentum)
    folded, unfolded = OPTIMIZERS[optimizer]
    model, plan = _plan(_networks()[name], [13, 9, 13], batch=4)
    want, want_losses = _train(CohortStep(model, unfolded), plan)
    assert not dense_steps_taken
    got, got_losses = _train(CohortStep(model, folded), plan)
    masked = sum(not every for epoch in plan.everyone for every in epoch)
    # the masked steps are vmap's, every other one a dense step
    assert masked and len(dense_steps_taken) == len(got_losses) - masked
    for k, v in want.items():
        change = (v - plan.start[k]).abs().max()
        assert change > 0.01
        assert (got[k] - v).abs().max() <= 1e-12 * change
    torch.testing.assert_close(got_losses, want_losses, rtol=1e-12, atol=0)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_in_float32_the_dense_step_rounds_like_the_vmap_step(
    optimizer, dense_steps_taken
):
    folded, unfolded = OPTIMIZERS[optimizer]
    model, plan = _plan(_networks()["2nn"], [16, 16], batch=4, dtype=torch.float32)
    got, _ = _train(CohortStep(model, folded), plan)
    assert len(dense_steps_taken) == 8
    want, _ = _train(CohortStep(model, unfolded), plan)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)


def test_the_dense_step_updates_the_parameters_in_place(dense_steps_taken):
    model, plan = _plan(_networks()["2nn"], [8, 8], batch=4)
    step = CohortStep(model, sgd(0.2))
    params, state = step.begin(plan.start)
    before = {k: v.clone() for k, v in params.items()}
    batch = plan.batch_index[:, 0, 0], plan.batch_mask[:, 0, 0]
    got, _, _ = step(plan.data, params, state, *batch, False)
    assert dense_steps_taken == [(2, 1)]  # two clients, one step
    assert got is params
    assert all(not torch.equal(params[k], v) for k, v in before.items())
    assert not any(v.requires_grad for v in params.values())


class _OwnLinear(nn.Linear):
    pass


@pytest.mark.parametrize(
    "module",
    [
        build_model("cnn", (1, 8, 8), 3, seed=0).module,  # convolutions
        nn.Sequential(nn.Flatten(), _OwnLinear(12, 3)),  # a subclass
        nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Softmax(dim=1)),  # not
        nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.PReLU(), nn.Linear(4, 3)),
        nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(0.0)),
        nn.Sequential(nn.Flatten()),  # no linear layer
        nn.Sequential(nn.Flatten(0, 1), nn.Linear(12, 3)),  # the batch axis folded
    ],
    ids=["cnn", "subclass", "softmax", "prelu", "dropout", "no-linear", "flatten-0"],
)
def test_networks_of_other_layers_keep_the_vmap_step(module):
    assert dense_layers(module) is None
    assert DenseCohortStep.of(FunctionalModel(module), sgd(0.1)) is None


def test_tied_or_hooked_weights_and_other_parameters_keep_the_vmap_step():
    shared = nn.Linear(6, 6)
    assert dense_layers(nn.Sequential(shared, nn.ReLU(), shared)) is None
    tied = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    tied[2].bias = tied[0].bias
    assert dense_layers(tied) is None
    extra = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    extra.register_parameter("temperature", nn.Parameter(torch.ones(())))
    assert dense_layers(extra) is None
    hooked = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert dense_layers(hooked) is not None
    hooked[1].register_forward_hook(lambda layer, args, out: out * 2)
    assert dense_layers(hooked) is None
    # the step's own ReLU (torch.relu_) would skip a hook on the module
    relu = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))
    assert dense_layers(relu) is not None
    relu[2].register_forward_hook(lambda layer, args, out: out * 2)
    assert dense_layers(relu) is None


@pytest.mark.parametrize(
    "optimizer",
    [adam(0.01), *(unfolded for _, unfolded in OPTIMIZERS.values())],
    ids=["adam", *(f"{name}, unfolded" for name in OPTIMIZERS)],
)
def test_other_optimizers_and_autocast_keep_the_vmap_step(optimizer):
    model = build_model("2nn", (3, 4), 3, seed=0)
    assert CohortStep(model, optimizer).dense is None
    mixed = build_model("2nn", (3, 4), 3, seed=0, autocast=torch.bfloat16)
    for folded, _ in OPTIMIZERS.values():
        assert CohortStep(model, folded).dense is not None
        assert CohortStep(mixed, folded).dense is None


def test_a_compiled_steps_eager_steps_are_dense(dense_steps_taken):
    model, plan = _plan(_networks()["2nn"], [8, 8], batch=4)
    step = CohortStep(model, sgd(0.2), compile=True)
    assert step.dense is not None  # for its eager steps (narrowed cohorts)
    params, state = step.begin(plan.start)
    batch = plan.batch_index[:, 0, 0], plan.batch_mask[:, 0, 0]
    step.eager(plan.data, params, state, *batch, False)
    assert len(dense_steps_taken) == 1


def test_the_dense_step_trains_under_no_grad_as_the_vmap_step_does(dense_steps_taken):
    model, plan = _plan(_networks()["2nn"], [8, 8], batch=4)
    with torch.no_grad():
        got, _ = _train(CohortStep(model, sgd(0.2)), plan)
        assert dense_steps_taken
        want, _ = _train(CohortStep(model, sgd(0.2)._replace(fold_alpha=None)), plan)
    for k, v in want.items():
        assert not torch.equal(v, plan.start[k])
        torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-12)


def test_each_cohort_decides_again_on_the_module_as_it_is_then(dense_steps_taken):
    module = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    model, plan = _plan(module, [8, 8], batch=4)
    step = CohortStep(model, sgd(0.2))
    _train(step, plan)
    assert len(dense_steps_taken) == 4
    module[2] = nn.Softmax(dim=-1)  # not elementwise: the vmap step's from now on
    got, _ = _train(step, plan)
    assert len(dense_steps_taken) == 4 and step.dense is None
    want, _ = _train(CohortStep(model, sgd(0.2)._replace(fold_alpha=None)), plan)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_the_dense_step_leaves_the_batch_it_is_given_as_it_was():
    # an in-place activation before the first linear layer acts on a copy
    module = _networks()["in-place activations before and after the linear layers"]
    model = FunctionalModel(module.double())
    dense = DenseCohortStep.of(model, sgd(0.2))
    params = {k: v.expand(2, *v.shape).clone() for k, v in model.init().items()}
    x = torch.randn(
        2, 1, 4, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    before = x.clone()
    labels, mask = torch.zeros(2, 1, 4, dtype=torch.long), torch.ones(2, 1, 4) > 0
    dense.steps(params, x, labels, mask)  # one step
    assert torch.equal(x, before) and (x.abs() > 0.5).any()
