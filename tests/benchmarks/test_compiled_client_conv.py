"""benchmarks/compiled_client_conv.py: the compiled step with its grouped
convolutions routed to client_conv_op's cohort functions equals the eager step.

Without Triton (as in CI) the cohort functions are the grouped-convolution
fallback; this checks the plumbing (the pass, the custom operators' layouts and
gradients) in float64, which the GPU's ``graphs compiled triton-conv*`` rows rest on.
With Triton's kernels (in its interpreter, or on a GPU) the script itself checks
the step: ``TRITON_INTERPRET=1 python benchmarks/compiled_client_conv.py``.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import compiled_client_conv as routed
from fedloom.learning import build_model, sgd
from fedloom.learning._cohort_work import CohortStep


@pytest.mark.parametrize(
    ("min_in_channels", "nodes"),
    # each convolution's forward and gradient; with 16, only the second's
    [(1, 4), (16, 2)],
)
def test_the_routed_compiled_step_matches_the_eager_step(
    compiled_afresh, float64_eager_steps, min_in_channels, nodes
):
    model = build_model("cnn", (1, 8, 8), 10, seed=0)  # digits' images
    plan, index, mask, want = float64_eager_steps(model, 3)
    routed.RoutingFold.routed = 0
    with routed.routing(min_in_channels):
        step = CohortStep(model, sgd(0.1), compile=True)
    # compiled at its first call, after the context: with the context's settings
    params, state = step.begin(plan.start)
    for s in range(3):
        params, state, _ = step(
            plan.data, params, state, index[:, s], mask[:, s], False
        )
    assert isinstance(step.fold, routed.RoutingFold)
    assert step.fold.folded == 2  # the runtime's own pass ran after it
    assert (routed.RoutingFold.routed, routed.RoutingFold.skipped) == (nodes, 0)
    for k, v in want.items():
        torch.testing.assert_close(params[k], v, rtol=1e-10, atol=1e-12)
        assert not torch.equal(v, plan.start[k])  # every parameter trained


def test_routing_restores_the_runtimes_pass():
    from fedloom.learning import _gemm_update

    before = _gemm_update.FoldUpdateIntoGemm
    with routed.routing(16):
        assert _gemm_update.FoldUpdateIntoGemm is routed.RoutingFold
    assert _gemm_update.FoldUpdateIntoGemm is before


def test_comparing_ops_measures_each_routed_call_against_aten(
    compiled_afresh, float64_eager_steps
):
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    plan, index, mask, _ = float64_eager_steps(model, 1)
    with routed.routing(1):
        step = CohortStep(model, sgd(0.1), compile=True)
    with routed.comparing_ops() as errors:
        params, state = step.begin(plan.start)
        step(plan.data, params, state, index[:, 0], mask[:, 0], False)
    # both forwards; the gradients of both weights, and of the second's input
    assert sorted({what for what, _ in errors}) == [
        "dw (in 1)", "dw (in 32)", "dx (in 32)", "y (in 1)", "y (in 32)"
    ]  # fmt: skip
    # here the operators are the grouped convolutions they replaced
    assert max(error for _, error in errors) < 1e-12
    assert routed._op_errors is None  # collected inside the context only
