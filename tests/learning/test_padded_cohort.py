"""A cohort's examples padded to one shape, gathered from a population's block in
one go or copied client by client: the same tensors either way."""

import pytest
import torch

from fedloom.data import ExampleRows, Examples
from fedloom.learning._cohort_work import PaddedCohort

CPU = torch.device("cpu")


def _block(n=20):
    return Examples(
        torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(0)),
        torch.arange(n),
    )


def _copied_alike(examples):
    """The same examples as plain Examples, which PaddedCohort copies in."""
    return [Examples(e.x.clone(), e.y.clone()) for e in examples]


def _assert_same(got, expected):
    for name in ("x", "y", "mask", "sizes"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


def test_rows_of_one_block_are_gathered_at_once_and_padded_alike(monkeypatch):
    block = _block()
    parts = [[4, 1, 7], [], [9, 0, 2, 3, 5], [11]]  # a client without examples too
    rows = [ExampleRows(block, torch.tensor(p, dtype=torch.int64)) for p in parts]
    expected = PaddedCohort(_copied_alike(rows), CPU)

    def refuse(*args):
        raise AssertionError("rows of one block were copied client by client")

    monkeypatch.setattr(PaddedCohort, "_copied", refuse)
    got = PaddedCohort(rows, CPU)
    _assert_same(got, expected)
    assert got.x.shape == (4, 5, 2, 3)
    # padding repeats the client's first example, or the cohort's first for a
    # client without any
    assert got.y[0].tolist() == [4, 1, 7, 4, 4] and got.y[1].tolist() == [4] * 5


@pytest.mark.parametrize("mix", ["two blocks", "plain examples", "no examples"])
def test_other_cohorts_are_copied_client_by_client(mix):
    block = _block()
    rows = [ExampleRows(block, torch.tensor(r)) for r in ([3, 1], [5])]
    if mix == "two blocks":
        rows[1] = ExampleRows(_block(7), torch.tensor([6, 2, 0]))
    elif mix == "plain examples":
        rows[1] = Examples(torch.ones(3, 2, 3), torch.tensor([0, 1, 2]))
    else:
        rows = [ExampleRows(block, torch.zeros(0, dtype=torch.int64))] * 2
    got = PaddedCohort(rows, CPU)
    _assert_same(got, PaddedCohort(_copied_alike(rows), CPU))
    if mix == "no examples":
        assert got.x.shape == (2, 1, 2, 3) and not got.x.any()
