"""benchmarks/compiled_step.py counts a cohort step's convolution gradients right."""

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import compiled_step

aten = torch.ops.aten


def _counted(groups: int, mask: list[bool]) -> int:
    clients, batch = groups, 2
    x = torch.randn(batch, clients * 3, 6, 6)
    w = torch.randn(clients * 4, 3, 3, 3)
    grad_out = torch.randn(batch, clients * 4, 6, 6)
    corrected = {aten.convolution_backward: compiled_step._conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=corrected) as counter:
        aten.convolution_backward(
            grad_out, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], groups, mask
        )
    return int(counter.get_total_flops())


def test_each_gradient_of_a_grouped_convolution_costs_its_forward():
    groups = 5
    # by hand: each of the batch x groups x 4 x 6 x 6 outputs sums 3 x 3 x 3 products
    forward = 2 * 2 * groups * 4 * 6 * 6 * (3 * 3 * 3)
    assert _counted(groups, [True, False, False]) == forward
    assert _counted(groups, [False, True, False]) == forward
    assert _counted(groups, [True, True, False]) == 2 * forward
