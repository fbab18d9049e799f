"""A functional model's calls from several threads each run with their own
parameters."""

import threading

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
