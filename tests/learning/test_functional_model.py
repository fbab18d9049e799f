"""A functional model's calls from several threads each run with their own
parameters; with ``autocast`` it computes in bfloat16 and answers in float32."""

import threading

import pytest
import torch

from fedloom.learning import build_model


def test_calls_from_two_threads_do_not_swap_their_parameters():
    model = build_model("2nn", (1, 28, 28), 10, seed=0)
    first = model.init()
    second = {k: v + 1.0 for k, v in first.items()}
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    want = {
        "apply": model.apply(first, x),
        "predict": model.predict(second, x),
    }
    wrong = []

    def call(name, params):
        method = getattr(model, name)
        for _ in range(300):
            if not torch.equal(method(params, x), want[name]):
                wrong.append(name)

    threads = [
        threading.Thread(target=call, args=("apply", first)),
        threading.Thread(target=call, args=("predict", second)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert model.module.training  # predict left the module in its mode


def test_autocast_computes_in_bfloat16_and_returns_float32():
    plain = build_model("cnn", (1, 28, 28), 10, seed=0)
    mixed = build_model("cnn", (1, 28, 28), 10, seed=0, autocast=torch.bfloat16)
    params = plain.init()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for call in ("apply", "predict"):
        want = getattr(plain, call)(params, x)
        got = getattr(mixed, call)(params, x)
        assert got.dtype == torch.float32
        apart = float((got - want).norm() / want.norm())
        assert 1e-4 < apart < 3e-2, (call, apart)  # bfloat16's rounding: 4e-3 here
    loss = mixed.loss(params, x, torch.tensor([0, 1, 2, 3]))
    assert loss.dtype == torch.float32


def test_autocast_is_bfloat16_only():
    for wrong in (torch.float16, torch.float64, "bfloat16"):
        with pytest.raises(ValueError, match=r"must be None or torch\.bfloat16"):
            build_model("2nn", (1, 8, 8), 10, autocast=wrong)  # type: ignore[arg-type]
