"""FoldUpdateIntoGemm: SGD's update accumulated into the gradient's matrix product.

The pass is checked on small hand-built post-grad graphs (what it rewrites, what it
must leave alone, and that the rewritten graph computes the float64 reference), then
end to end: the compiled cohort step, which uses it, against the eager step.
"""

import dataclasses

import pytest
import torch
from torch import fx

from fedloom.core import Replicated
from fedloom.data import ClientData, Examples, load_dataset
from fedloom.learning import ClientInput, build_model, fed_avg, momentum, sgd
from fedloom.learning._cohort_work import (
    CohortStep,
    cohort_local_training,
    plan_training,
)
from fedloom.learning._gemm_update import FoldUpdateIntoGemm
from fedloom.runtimes import LocalRuntime, VectorizedRuntime

aten = torch.ops.aten
ALPHA = -0.1


def _inputs(product=aten.bmm.default):
    generator = torch.Generator().manual_seed(0)
    if product is aten.bmm.default:
        shapes = [(3, 4, 5), (3, 4, 2), (3, 2, 5)]
    else:
        shapes = [(4, 5), (4, 2), (2, 5)]
    return [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]


class _Builder:
    """An FX graph built by hand: placeholders for ``inputs``, and each node made
    with the value it stands for (``meta["val"]``, what the pass reads)."""

    def __init__(self, **inputs):
        self.graph = fx.Graph()
        self.nodes = {}
        for name, val in inputs.items():
            self.nodes[name] = self.graph.placeholder(name)
            self.nodes[name].meta["val"] = val

    def call(self, op, args, val=None, kwargs=None):
        node = self.graph.call_function(op, args, kwargs or {})
        if val is not None:
            node.meta["val"] = val
        return node


def _graph(product=aten.bmm.default, *, weight_shape=None, extra=None, velocity=False):
    """``w.copy_(w + ALPHA * product(a, b))`` as AOT leaves an in-place update.

    ``extra(graph, nodes)`` may add nodes before the copy and return extra outputs.
    """
    w_val, a_val, b_val = _inputs(product)
    if weight_shape is not None:
        w_val = torch.zeros(weight_shape, dtype=torch.float64)
    built = _Builder(w=w_val, a=a_val, b=b_val)
    graph, nodes = built.graph, built.nodes
    nodes["product"] = built.call(
        product, (nodes["a"], nodes["b"]), product(a_val, b_val)
    )
    # velocity: momentum's ``g + beta * v`` (the product first) instead of SGD's
    summands = (
        (nodes["product"], nodes["w"]) if velocity else (nodes["w"], nodes["product"])
    )
    nodes["total"] = graph.call_function(aten.add.Tensor, summands, {"alpha": ALPHA})
    outputs = list(extra(graph, nodes)) if extra else []
    graph.call_function(aten.copy_.default, (nodes["w"], nodes["total"]))
    graph.output(tuple(outputs))
    return graph


def _targets(graph):
    return [n.target for n in graph.nodes if n.op == "call_function"]


def _fold(graph):
    fold = FoldUpdateIntoGemm()
    fold(graph)
    return fold.folded


@pytest.mark.parametrize(
    ("product", "in_place"),
    [(aten.bmm.default, aten.baddbmm_.default), (aten.mm.default, aten.addmm_.default)],
)
def test_an_sgd_update_becomes_one_accumulating_product(product, in_place):
    graph = _graph(product)
    assert _fold(graph) == 1
    assert _targets(graph) == [in_place]
    w, a, b = _inputs(product)
    expected = w + ALPHA * (a @ b)
    fx.GraphModule(torch.nn.Module(), graph)(w, a, b)
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=1e-12)


def test_a_momentum_velocity_becomes_one_accumulating_product():
    graph = _graph(velocity=True)
    assert _fold(graph) == 1
    assert _targets(graph) == [aten.baddbmm_.default]
    w, a, b = _inputs()
    expected = (a @ b) + ALPHA * w
    fx.GraphModule(torch.nn.Module(), graph)(w, a, b)
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=1e-12)


def _product_also_returned(graph, nodes):
    return [nodes["product"]]


def _weight_read_after_the_copy(graph, nodes):
    return [nodes["w"]]  # the output reads w after its update: nothing to fold


def _factor_is_a_view_of_the_weight(graph, nodes):
    view = graph.call_function(aten.permute.default, (nodes["w"], [0, 2, 1]))
    nodes["product"].args = (nodes["a"], view)
    return []


def _update_of_another_tensor(graph, nodes):
    other = graph.placeholder("other")
    other.meta["val"] = nodes["w"].meta["val"]
    nodes["total"].args = (other, nodes["product"])
    return []


@pytest.mark.parametrize(
    "extra",
    [
        _product_also_returned,
        _weight_read_after_the_copy,
        _factor_is_a_view_of_the_weight,
        _update_of_another_tensor,
    ],
)
def test_what_is_not_the_pattern_is_left_alone(extra):
    graph = _graph(extra=extra)
    before = _targets(graph)
    assert _fold(graph) == 0
    assert _targets(graph) == before


def test_a_product_reading_another_updated_weight_is_not_moved_past_its_update():
    """Q's gradient product reads a view of P, which the graph also updates, and
    comes before P's update (as AOT traces it: gradients, then updates). Folded,
    Q's product would run at Q's update, after P's folded one: reading the new P."""
    generator = torch.Generator().manual_seed(0)
    p0, q0, a, b, c = (
        torch.randn(shape, generator=generator, dtype=torch.float64)
        for shape in [(2, 3, 3), (2, 3, 4), (2, 3, 5), (2, 5, 3), (2, 3, 4)]
    )
    built = _Builder(p=p0, q=q0, a=a, b=b, c=c)
    graph, nodes, call = built.graph, built.nodes, built.call
    pt = call(aten.permute.default, (nodes["p"], [0, 2, 1]), p0.transpose(1, 2))
    q_product = call(aten.bmm.default, (pt, nodes["c"]), p0.transpose(1, 2) @ c)
    p_product = call(aten.bmm.default, (nodes["a"], nodes["b"]), a @ b)
    p_total = call(aten.add.Tensor, (nodes["p"], p_product), p0, {"alpha": ALPHA})
    q_total = call(aten.add.Tensor, (nodes["q"], q_product), q0, {"alpha": ALPHA})
    call(aten.copy_.default, (nodes["p"], p_total), p0)
    call(aten.copy_.default, (nodes["q"], q_total), q0)
    graph.output(())
    assert _fold(graph) == 1  # P's update only
    p, q = p0.clone(), q0.clone()
    fx.GraphModule(torch.nn.Module(), graph)(p, q, a, b, c)
    torch.testing.assert_close(p, p0 + ALPHA * (a @ b), rtol=1e-12, atol=1e-12)
    expected_q = q0 + ALPHA * (p0.transpose(1, 2) @ c)
    torch.testing.assert_close(q, expected_q, rtol=1e-12, atol=1e-12)


def test_a_broadcast_product_is_left_alone():
    graph = _graph(weight_shape=(2, 3, 4, 5))  # w + (a @ b) broadcasts
    assert _fold(graph) == 0


def _chain_graph(reader_after=False, view_reader=False):
    """Two steps' updates, ``w.copy_((w + ALPHA * a1 @ b1) + ALPHA * a2 @ b2)``, and
    ``r = 2 * (w + ALPHA * a1 @ b1)`` returned: read before the second update, or
    (``reader_after``) after it; with ``view_reader`` a view of ``w`` made before the
    first update is read after it."""
    w, a1, b1 = _inputs()
    _, a2, b2 = (t.flip(0) for t in _inputs())
    built = _Builder(w=w, a1=a1, b1=b1, a2=a2, b2=b2)
    graph, n, call = built.graph, built.nodes, built.call
    if view_reader:
        view = call(aten.permute.default, (n["w"], [0, 2, 1]), w.permute(0, 2, 1))
    t1_val = w + ALPHA * (a1 @ b1)
    p1 = call(aten.bmm.default, (n["a1"], n["b1"]), a1 @ b1)
    t1 = call(aten.add.Tensor, (n["w"], p1), t1_val, {"alpha": ALPHA})
    outputs = []
    if view_reader:
        outputs.append(call(aten.mul.Tensor, (view, 2.0), 2 * w.permute(0, 2, 1)))
    if not reader_after:
        outputs.append(call(aten.mul.Tensor, (t1, 2.0), 2 * t1_val))
    p2 = call(aten.bmm.default, (n["a2"], n["b2"]), a2 @ b2)
    t2 = call(aten.add.Tensor, (t1, p2), t1_val + ALPHA * (a2 @ b2), {"alpha": ALPHA})
    if reader_after:
        outputs.append(call(aten.mul.Tensor, (t1, 2.0), 2 * t1_val))
    graph.call_function(aten.copy_.default, (n["w"], t2))
    graph.output(tuple(outputs))
    return graph, (w, a1, b1, a2, b2)


def test_updates_of_several_steps_fold_in_a_chain():
    graph, (w, a1, b1, a2, b2) = _chain_graph()
    assert _fold(graph) == 2
    assert _targets(graph).count(aten.baddbmm_.default) == 2
    assert aten.add.Tensor not in _targets(graph)
    first = w + ALPHA * (a1 @ b1)
    expected = first + ALPHA * (a2 @ b2)
    (read,) = fx.GraphModule(torch.nn.Module(), graph)(w, a1, b1, a2, b2)
    torch.testing.assert_close(read, 2 * first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=1e-12)


def test_elementwise_updates_of_several_steps_are_written_back_at_once():
    # momentum's w - lr * v, step after step: each sum goes into w as it is made,
    # not into a new buffer a step, copied once at the end
    generator = torch.Generator().manual_seed(1)
    w, x1, x2 = (torch.randn(4, 5, generator=generator).double() for _ in range(3))
    built = _Builder(w=w, x1=x1, x2=x2)
    graph, n = built.graph, built.nodes
    t1 = built.call(
        aten.add.Tensor, (n["w"], n["x1"]), w + ALPHA * x1, {"alpha": ALPHA}
    )
    read = built.call(aten.mul.Tensor, (t1, 2.0))
    t2_val = t1.meta["val"] + ALPHA * x2
    t2 = built.call(aten.add.Tensor, (t1, n["x2"]), t2_val, {"alpha": ALPHA})
    graph.call_function(aten.copy_.default, (n["w"], t2))
    graph.output((read,))
    fold = FoldUpdateIntoGemm()
    fold(graph)
    assert (fold.folded, fold.written_back) == (0, 2)
    assert _targets(graph).count(aten.copy_.default) == 2
    first = w + ALPHA * x1
    expected = first + ALPHA * x2
    (got,) = fx.GraphModule(torch.nn.Module(), graph)(w, x1, x2)
    torch.testing.assert_close(got, 2 * first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["reader_after", "view_reader"])
def test_a_chain_read_after_its_update_is_left_alone(how):
    # the first step's weights (or a view of the weights) still read after the
    # update: accumulating in place would hand the reader the wrong values
    graph, _ = _chain_graph(**{how: True})
    before = _targets(graph)
    assert _fold(graph) == 0
    assert _targets(graph) == before


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _steps(digits, optimizer, compile, count=3):
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    clients = ClientData.from_dataset(digits, "quantity_skew", 30, seed=3)
    examples = [clients.client(i) for i in range(4)]
    params = Replicated(model.init(), 4)
    plan = plan_training(params, examples, [1, 2, 3, 4], 1, 8, torch.device("cpu"))
    step = CohortStep(model, optimizer, compile=compile)
    params, state = step.begin(plan.start)
    start = {k: v.clone() for k, v in plan.start.items()}
    losses = []
    assert plan.everyone[0][0] and not plan.everyone[0][-1]
    for s in [*range(count - 1), -1]:  # the last step is masked: clients ran out
        masked = not plan.everyone[0][s]
        index, mask = plan.batch_index[:, 0, s], plan.batch_mask[:, 0, s]
        params, state, loss = step(plan.data, params, state, index, mask, masked)
        losses.append(loss)
    for k, v in plan.start.items():
        torch.testing.assert_close(v, start[k], rtol=0, atol=0)  # begin() copied
    return step, params, state, torch.stack(losses)


@pytest.mark.parametrize(
    ("optimizer", "folded"), [(lambda: sgd(0.1), 3), (lambda: momentum(0.05), 3)]
)
def test_the_compiled_step_folds_the_update_and_matches_the_eager_step(
    digits, optimizer, folded, compiled_afresh
):
    step, params, state, losses = _steps(digits, optimizer(), compile=True)
    _, expected_params, expected_state, expected_losses = _steps(
        digits, optimizer(), compile=False
    )
    # the 2NN's three weights (SGD) or their velocities (momentum: v = g + beta v
    # becomes v.baddbmm_(a, b, beta=beta)), not the biases, in the unmasked step's
    # graph; the masked step's update is a torch.where of old and new, left as is
    assert step.fold is not None and step.fold.folded == folded
    for k, v in expected_params.items():
        torch.testing.assert_close(params[k], v, rtol=1e-5, atol=1e-6)
    for got, want in zip(
        torch.utils._pytree.tree_leaves(state),
        torch.utils._pytree.tree_leaves(expected_state),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-6)


def _unequal_cohort(digits, compile, steps_per_call=1, optimizer=None):
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    clients = ClientData.from_dataset(digits, "quantity_skew", 30, seed=1)
    examples = [clients.client(i) for i in (0, 1, 2, 4)]  # 56, 89, 55, 97 examples
    params = Replicated(model.init(), 4)
    plan = plan_training(params, examples, [1, 2, 3, 4], 2, 8, torch.device("cpu"))
    optimizer = optimizer or sgd(0.1)
    step = CohortStep(model, optimizer, compile=compile, steps_per_call=steps_per_call)
    return step, plan


def _local_training(digits, compile, steps_per_call=1, optimizer=None):
    step, plan = _unequal_cohort(digits, compile, steps_per_call, optimizer)
    return step, plan, cohort_local_training(step, plan)


@pytest.mark.parametrize(
    ("optimizer", "written_back", "folded", "deferred"),
    # SGD: the three biases' updates in the block of 4 steps are written back; the
    # first layer (fed by the data) has its 4 updates deferred into one product
    # (_defer_update.py), which folds, and the two others fold a step each.
    # Momentum: the weights' and biases' (w - lr v) are written back, while the
    # velocities of the weights fold a step each, none deferred.
    [
        (lambda: sgd(0.1), 3 * 4, 1 + 2 * 4, 1),
        (lambda: momentum(0.05), 6 * 4, 3 * 4, 0),
    ],
)
def test_several_steps_a_call_train_as_one_step_at_a_time(
    digits, compiled_afresh, optimizer, written_back, folded, deferred
):
    trained = _local_training(digits, True, 4, optimizer())
    step, plan, (deltas, weights, losses) = trained
    _, _, want = _local_training(digits, False, optimizer=optimizer())
    want_deltas, want_weights, want_losses = want
    # 13 steps an epoch, every client has a batch in the first 7: steps 0-3 run as
    # one call, 4-6 one by one, 7-12 one by one and masked (no fold there)
    assert plan.everyone[0] == [True] * 7 + [False] * 6 == plan.everyone[1]
    # and the unmasked single step's graph folds its three weights' updates
    assert step.fold is not None and step.fold.folded == folded + 3
    assert step.fold.written_back == written_back
    assert step.fold.deferred == deferred
    for k, v in want_deltas.items():
        torch.testing.assert_close(deltas[k], v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights, want_weights)
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-6)


def test_steps_per_call_needs_a_compiled_step(digits):
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    with pytest.raises(ValueError, match="compile=True"):
        CohortStep(model, sgd(0.1), steps_per_call=2)
    with pytest.raises(ValueError, match=">= 1"):
        CohortStep(model, sgd(0.1), compile=True, steps_per_call=0)


def test_several_steps_a_call_refuse_a_step_where_a_client_has_no_batch(digits):
    step, plan = _unequal_cohort(digits, True, 4)
    params, state = step.begin(plan.start)
    index, mask = plan.batch_index[:, 0, 5:9], plan.batch_mask[:, 0, 5:9]
    with pytest.raises(ValueError, match="a batch for every client"):
        step.steps(plan.data, params, state, index, mask)


def test_the_compiled_step_trains_parameters_that_require_grad():
    # a user's state whose tensors track gradients (straight from an nn.Module):
    # the compiled step updates its own copies in place, which autograd refused
    generator = torch.Generator().manual_seed(0)
    cohort = [
        ClientInput(
            Examples(
                torch.randn(9, 5, generator=generator),
                torch.randint(0, 3, (9,), generator=generator),
            ),
            seed,
        )
        for seed in range(3)
    ]
    process = fed_avg(build_model("2nn", (5,), 3, seed=0), client_learning_rate=0.5)
    start = process.init()
    start = dataclasses.replace(
        start, params={k: v.clone().requires_grad_() for k, v in start.params.items()}
    )
    expected, _ = process.next(start, cohort, runtime=LocalRuntime())
    got, _ = process.next(start, cohort, runtime=VectorizedRuntime(compile=True))
    for name, value in expected.params.items():
        torch.testing.assert_close(got.params[name], value, rtol=1e-5, atol=1e-6)
