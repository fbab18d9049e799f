"""Deferring a data-fed linear layer's updates to the end of a compiled call.

Checked on small hand-built post-grad graphs (the rewritten graph computes what the
original did, in float64; what it must leave alone), then end to end: the compiled
cohort step, several steps a call, against the eager step one step at a time.
"""

import pytest
import torch
from torch import fx, nn

from fedloom.data import load_dataset
from fedloom.learning import FunctionalModel, _defer_update, build_model, sgd
from fedloom.learning._cohort_work import CohortStep
from fedloom.learning._defer_update import defer_data_layer_updates

aten = torch.ops.aten
ALPHA = -0.1
CLIENTS, OUT, IN, ROWS = 2, 3, 4, 2


class _Steps:
    """``steps`` SGD steps of one linear layer, as AOT leaves them: at step s the
    forward ``y_s = bmm(x_s, permute(w_s))``, a stand-in gradient ``tanh(y_s)``
    and the update ``w_{s+1} = w_s + ALPHA * bmm(permute(d_s), x_s)``; then
    ``w.copy_(w_steps)``. Each node carries its value (``meta["val"]``)."""

    def __init__(
        self,
        steps=3,
        *,
        alphas=None,
        beta=None,
        reader=None,
        x_of=None,
        read_after_copy=False,
    ):
        generator = torch.Generator().manual_seed(0)
        self.inputs = {"w": torch.randn(CLIENTS, OUT, IN, generator=generator)}
        self.inputs["v"] = torch.randn(CLIENTS, generator=generator)  # updated too
        for s in range(steps):
            self.inputs[f"x{s}"] = torch.randn(CLIENTS, ROWS, IN, generator=generator)
        self.inputs = {k: v.double() for k, v in self.inputs.items()}
        self.graph = fx.Graph()
        nodes = {}
        for name, value in self.inputs.items():
            nodes[name] = self.graph.placeholder(name)
            nodes[name].meta["val"] = value
        w, outputs = nodes["w"], []
        self.v = nodes["v"]
        for s in range(steps):
            x = nodes[f"x{s}"]
            if x_of is not None:
                x = x_of(self, s, x, w)
            y = self._call(
                aten.bmm.default, x, self._call(aten.permute.default, w, [0, 2, 1])
            )
            d = self._call(aten.tanh.default, y)
            outputs.append(d)
            a = self._call(aten.permute.default, d, [0, 2, 1])
            update = self._call(aten.bmm.default, a, x)
            alpha = ALPHA if alphas is None else alphas[s]
            if beta is None:
                w = self._call(aten.add.Tensor, w, update, alpha=alpha)
            else:  # momentum's velocity: g + beta * v
                w = self._call(aten.add.Tensor, update, w, alpha=beta)
            if reader is not None:
                outputs.extend(reader(self, s, w))
        self._call(aten.copy_.default, nodes["w"], w)
        v = self._call(aten.add.Tensor, nodes["v"], 1.0)
        self._call(aten.copy_.default, nodes["v"], v)
        if read_after_copy:  # a forward product of w as the copy leaves it
            after = self._call(aten.permute.default, nodes["w"], [0, 2, 1])
            outputs.append(self._call(aten.bmm.default, nodes["x0"], after))
        self.graph.output(tuple(outputs))

    def _call(self, op, *args, **kwargs):
        node = self.graph.call_function(op, args, kwargs)
        values = torch.utils._pytree.tree_map(
            lambda a: a.meta["val"] if isinstance(a, fx.Node) else a, (args, kwargs)
        )
        with torch.no_grad():
            node.meta["val"] = op(
                *[v.clone() if isinstance(v, torch.Tensor) else v for v in values[0]],
                **values[1],
            )
        return node

    def run(self):
        """(outputs, w after the copy) on fresh copies of the inputs."""
        inputs = {k: v.clone() for k, v in self.inputs.items()}
        module = fx.GraphModule({}, self.graph)
        outputs = module(*inputs.values())
        return outputs, inputs["w"]


def _targets(graph):
    return [n.target for n in graph.nodes if n.op == "call_function"]


@pytest.fixture
def at_any_cost(monkeypatch):
    """Defer these small layers too, whatever the corrections cost."""
    monkeypatch.setattr(_defer_update, "MAX_EXTRA", float("inf"))


def test_a_layer_whose_corrections_cost_too_much_is_left_alone():
    # 4 inputs, 3 outputs, 2 rows, 3 steps: the corrections would add 58 %
    steps = _Steps(3)
    before = _targets(steps.graph)
    assert defer_data_layer_updates(steps.graph) == 0
    assert _targets(steps.graph) == before


def test_the_rewritten_steps_compute_what_the_steps_did(at_any_cost):
    steps = _Steps(3)
    want_outputs, want_w = steps.run()
    assert defer_data_layer_updates(steps.graph) == 1
    steps.graph.lint()
    targets = _targets(steps.graph)
    # one forward product against w for the three steps, a Gram product and a
    # correction for steps 1 and 2, one update product: 6 bmm instead of 6, but
    # w is read twice (the forward, the update) instead of six times
    assert targets.count(aten.bmm.default) == 1 + 2 * 2 + 1
    # corrections, the update, and v's own update
    assert targets.count(aten.add.Tensor) == 2 + 1 + 1
    outputs, w = steps.run()
    for got, want in zip(outputs, want_outputs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w, want_w, rtol=1e-12, atol=1e-12)
    assert not torch.equal(w, steps.inputs["w"])  # it did train


def _read_elementwise(steps, s, w):
    return [steps._call(aten.mul.Tensor, w, 2.0)] if s == 0 else []


def _x_from_weight(steps, s, x, w):
    # the next layer's input: computed from the weight, so not known in advance
    if s == 0:
        return x
    scale = steps._call(aten.sum.default, w)
    return steps._call(aten.mul.Tensor, x, scale)


def _x_from_another_updated_tensor(steps, s, x, w):
    # a forward product like the others, but its input reads v, which the graph
    # also updates in place: not known before the first step
    if s == 0:
        return x
    scale = steps._call(aten.sum.default, steps.v)
    return steps._call(aten.mul.Tensor, x, scale)


def _x_random_after_the_first_step(steps, s, x, w):
    if s == 0:
        return x
    noise = steps._call(aten.rand_like.default, x)
    return steps._call(aten.add.Tensor, x, noise)


@pytest.mark.parametrize(
    "how",
    [
        dict(steps=1),  # nothing to defer
        dict(alphas=[ALPHA, ALPHA / 2, ALPHA]),  # a learning rate that changes
        dict(beta=0.9),  # momentum's velocity
        dict(reader=_read_elementwise),  # a version of w read by something else
        dict(x_of=_x_from_weight),
        dict(x_of=_x_from_another_updated_tensor),
        dict(x_of=_x_random_after_the_first_step),  # cannot move earlier
        dict(read_after_copy=True),
    ],
    ids=[
        "one-step",
        "alphas",
        "momentum",
        "reader",
        "x-from-weight",
        "x-from-updated",
        "random-x",
        "read-after-copy",
    ],
)
def test_what_is_not_the_pattern_is_left_alone(how, at_any_cost):
    steps = _Steps(**how)
    before = _targets(steps.graph)
    assert defer_data_layer_updates(steps.graph) == 0
    assert _targets(steps.graph) == before


def _linear_stack(digits):
    # a second linear layer straight on the first's output: its input depends on
    # the first's weight, even once the first's forward products are rewritten
    torch.manual_seed(0)
    return FunctionalModel(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 256, bias=False), nn.Linear(256, 10))
    )


@pytest.mark.parametrize(
    ("make", "deferred"),
    [
        (lambda digits: build_model("2nn", digits.input_shape, 10, seed=0), 1),
        # ten outputs: the corrections would add 46 % to the layer's arithmetic
        (lambda digits: build_model("logistic", digits.input_shape, 10, seed=0), 0),
        (_linear_stack, 1),
    ],
    ids=["2nn", "logistic", "linear-stack"],
)
def test_several_steps_a_call_match_float64_steps_one_at_a_time(
    compiled_afresh, float64_eager_steps, make, deferred
):
    model = make(load_dataset("digits"))
    plan, index, mask, want = float64_eager_steps(model, 6)

    step = CohortStep(model, sgd(0.1), compile=True, steps_per_call=3)
    params, state = step.begin(plan.start)
    for s in (0, 3):
        step.steps(plan.data, params, state, index[:, s : s + 3], mask[:, s : s + 3])
    # the first layer's (fed by the data); the others' inputs depend on it
    assert step.fold is not None and step.fold.deferred == deferred
    for k, v in want.items():
        torch.testing.assert_close(params[k], v, rtol=1e-10, atol=1e-12)
        assert not torch.equal(v, plan.start[k])  # every parameter trained
