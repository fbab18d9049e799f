"""Validated aggregation: nothing malformed reaches the aggregate."""

import pytest
import torch

from fedloom.aggregators import InvalidUpdateError, sum, weighted_mean
from fedloom.core import CLIENTS, SERVER, aggregate, computation

TEMPLATE = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


@computation(CLIENTS, CLIENTS, SERVER)
def _aggregate(values, weights, template):
    return aggregate(weighted_mean(), values, weights, template=template)


def _update(scale=1.0):
    return {"w": torch.full((2, 3), scale), "b": torch.full((3,), scale)}


def test_weighted_mean_of_valid_updates():
    result = _aggregate([_update(1.0), _update(4.0)], [3.0, 1.0], TEMPLATE)
    torch.testing.assert_close(result["w"], torch.full((2, 3), 1.75))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_update_is_rejected(bad):
    poisoned = _update()
    poisoned["b"] = torch.tensor([0.0, bad, 0.0])
    with pytest.raises(InvalidUpdateError, match=r"client 1: .*NaN or infinity"):
        _aggregate([_update(), poisoned], [1.0, 1.0], TEMPLATE)


def test_wrong_shape_is_rejected():
    wrong = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}
    with pytest.raises(InvalidUpdateError, match=r"client 0: .*shape/dtype.*\(3, 2\)"):
        _aggregate([wrong], [1.0], TEMPLATE)


def test_wrong_dtype_is_rejected():
    wrong = {"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(3)}
    with pytest.raises(InvalidUpdateError, match="float64"):
        _aggregate([wrong], [1.0], TEMPLATE)


def test_wrong_structure_is_rejected():
    with pytest.raises(InvalidUpdateError, match="structure"):
        _aggregate([{"w": torch.zeros(2, 3)}], [1.0], TEMPLATE)


def test_without_template_first_value_fixes_the_shape():
    @computation(CLIENTS)
    def total(values):
        return aggregate(sum(), values)

    assert total([1.0, 2.5]) == 3.5
    with pytest.raises(InvalidUpdateError, match="client 1"):
        total([torch.zeros(2), torch.zeros(3)])
