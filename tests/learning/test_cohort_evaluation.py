"""The vectorized runtime's evaluation of a cohort: of one broadcast model, on the
clients' examples in a row; of each client's own model, by ``vmap`` over the padded
cohort. Both are every client's own evaluation, checked against one in float64."""

import copy
import itertools

import pytest
import torch

from fedloom.core import Replicated, Stacked
from fedloom.data import ExampleRows, Examples
from fedloom.learning import FunctionalModel, build_model
from fedloom.learning._cohort_work import cohort_evaluation

SIZES = [7, 0, 12, 3, 5]  # in batches of 4: a client's batches cross the others'


def _setup():
    model = build_model("2nn", (3, 4), 3, seed=0)
    generator = torch.Generator().manual_seed(2)
    examples = [
        Examples(
            torch.randn(n, 3, 4, generator=generator),
            torch.randint(0, 3, (n,), generator=generator),
        )
        for n in SIZES
    ]
    return model, examples


def _own(model, params, examples):
    """Each client's evaluation in float64: its mean loss and accuracy."""
    double = FunctionalModel(copy.deepcopy(model.module).double())
    loss, accuracy = [], []
    for p, e in zip(params, examples, strict=True):
        logits = double.predict({k: v.double() for k, v in p.items()}, e.x.double())
        n = max(len(e), 1)
        loss.append(torch.nn.functional.cross_entropy(logits, e.y, reduction="sum") / n)
        accuracy.append((logits.argmax(dim=1) == e.y).sum().double() / n)
    return {"loss": torch.stack(loss), "accuracy": torch.stack(accuracy)}


@pytest.mark.parametrize("stacked", [False, True], ids=["broadcast", "own models"])
def test_every_client_gets_its_own_evaluation(stacked):
    model, examples = _setup()
    cpu = torch.device("cpu")
    if stacked:  # every client a model of its own
        generator = torch.Generator().manual_seed(3)
        params = [
            {
                k: v + 0.3 * torch.randn(v.shape, generator=generator, dtype=v.dtype)
                for k, v in model.init().items()
            }
            for _ in SIZES
        ]
        payload = Stacked(
            {k: torch.stack([p[k] for p in params]) for k in params[0]}, len(SIZES)
        )
    else:
        params = [model.init()] * len(SIZES)
        payload = Replicated(model.init(), len(SIZES))
    got = cohort_evaluation(model, payload, examples, 4, cpu)
    want = _own(model, params, examples)
    for k in ("loss", "accuracy"):
        assert got[k].dtype == torch.float64 and got[k].shape == (len(SIZES),)
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    assert got["loss"][1] == 0 and got["accuracy"][1] == 0  # no examples
    assert (got["loss"][[0, 2, 3, 4]] > 0).all()


def test_one_models_evaluation_does_not_vmap(monkeypatch):
    model, examples = _setup()
    calls = []
    original = FunctionalModel.predict

    def counted(self, params, x):
        calls.append(x.shape[0])
        return original(self, params, x)

    monkeypatch.setattr(FunctionalModel, "predict", counted)
    payload = Replicated(model.init(), len(SIZES))
    cohort_evaluation(model, payload, examples, 4, torch.device("cpu"))
    assert calls == [4, 4, 4, 4, 4, 4, 3]  # 27 examples in a row, no padding


def test_a_populations_clients_are_gathered_from_their_block():
    model, examples = _setup()
    block = Examples(
        torch.cat([e.x for e in examples]), torch.cat([e.y for e in examples])
    )
    order = torch.randperm(len(block), generator=torch.Generator().manual_seed(5))
    starts = [0, *torch.tensor(SIZES).cumsum(0).tolist()]
    rows, copies = [], []
    for begin, end in itertools.pairwise(starts):
        picks = order[begin:end]
        rows.append(ExampleRows(block, picks))
        copies.append(Examples(block.x[picks], block.y[picks]))
    payload = Replicated(model.init(), len(SIZES))
    cpu = torch.device("cpu")
    got = cohort_evaluation(model, payload, rows, 4, cpu)
    want = cohort_evaluation(model, payload, copies, 4, cpu)
    for k in ("loss", "accuracy"):
        assert torch.equal(got[k], want[k])
