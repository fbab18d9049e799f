"""A client's local training updates a copy of its own in place with SGD and
momentum, and computes what the functional update does."""

import pytest
import torch

from fedloom.data import ClientData, load_dataset
from fedloom.learning import ClientInput, build_model, momentum, sgd
from fedloom.learning._client_work import LocalTraining


@pytest.mark.parametrize("make", [lambda: sgd(0.1), lambda: momentum(0.05)])
def test_local_training_in_place_is_the_functional_update_bit_for_bit(make):
    digits = load_dataset("digits")
    model = build_model("2nn", digits.input_shape, digits.num_classes, seed=0)
    clients = ClientData.from_dataset(digits, "iid", 20, seed=3)
    client = ClientInput(clients.client(5), 7)
    params = model.init()
    before = {k: v.clone() for k, v in params.items()}
    optimizer = make()
    assert optimizer.update_in_place is not None
    functional = optimizer._replace(update_in_place=None)
    got = LocalTraining(model, optimizer, epochs=2, batch_size=8)(params, client)
    want = LocalTraining(model, functional, epochs=2, batch_size=8)(params, client)
    for k, v in want.update.items():
        torch.testing.assert_close(got.update[k], v, rtol=0, atol=0)
        assert v.abs().max() > 0
        torch.testing.assert_close(params[k], before[k], rtol=0, atol=0)  # untouched
    torch.testing.assert_close(got.metrics, want.metrics, rtol=0, atol=0)
    torch.testing.assert_close(got.weight, want.weight, rtol=0, atol=0)
