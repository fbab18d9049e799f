"""A functional model's calls from several threads each run with their own
parameters; with ``autocast`` it computes in bfloat16 and answers in float32; a
``training`` block computes what its calls would, with the parameters in the
module, and gives the module its own back."""

import threading

import pytest
import torch

from fedloom.learning import FunctionalModel, build_model


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


class _Tied(torch.nn.Module):
    """Two layers sharing one weight (as a language model's embedding and output)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(6, 6)
        self.second = torch.nn.Linear(6, 6)
        self.second.weight = self.first.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


@pytest.mark.parametrize("make", [lambda: build_model("cnn", (1, 28, 28), 10), _Tied])
def test_training_loss_and_gradient_are_the_functional_ones(make):
    made = make()
    model = made if isinstance(made, FunctionalModel) else FunctionalModel(made)
    shape = (5, 1, 28, 28) if isinstance(made, FunctionalModel) else (5, 6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4])
    params = {k: v + 0.01 for k, v in model.init().items()}  # not the module's own
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    want = model.loss(leaves, x, y)
    want_grads = torch.autograd.grad(want, list(leaves.values()))
    template = dict(model.module.named_parameters())
    values = {k: v.clone() for k, v in template.items()}
    for _ in range(2):  # each block starts from params
        with model.training(params) as (bound, loss):
            assert list(bound) == list(params)
            got = loss(x, y)
            grads = torch.autograd.grad(got, list(bound.values()))
            with torch.no_grad():
                for leaf, grad in zip(bound.values(), grads, strict=True):
                    leaf.sub_(grad)
        assert torch.equal(got, want)
        for g, w in zip(grads, want_grads, strict=True):
            assert torch.equal(g, w)
    for k, v in model.module.named_parameters():  # the module has its own back
        assert v is template[k] and torch.equal(v, values[k])
    assert all(not torch.equal(bound[k], params[k]) for k in params)  # trained


def test_training_gives_the_module_its_parameters_back_after_an_error():
    model = FunctionalModel(_Tied())
    own = dict(model.module.named_parameters(remove_duplicate=False))
    with (
        pytest.raises(RuntimeError, match="shapes cannot be multiplied"),
        model.training(model.init()) as (_, loss),
    ):
        loss(torch.zeros(2, 5), torch.tensor([0, 1]))  # 5 features, not 6
    assert dict(model.module.named_parameters(remove_duplicate=False)) == own
    assert model.module.second.weight is model.module.first.weight  # still tied


def test_training_takes_the_module_as_it_is_now():
    model = build_model("2nn", (1, 28, 28), 10, seed=0)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3])
    with model.training(model.init()) as (_, loss):
        before = loss(x, y)
    for i, layer in enumerate(model.module):
        if isinstance(layer, torch.nn.ReLU):
            model.module[i] = torch.nn.Tanh()  # a change that moves no parameter
    with model.training(model.init()) as (_, loss):
        after = loss(x, y)
    assert torch.equal(after, model.loss(model.init(), x, y))
    assert not torch.equal(after, before)


def test_training_blocks_in_two_threads_each_train_their_own_parameters():
    model = build_model("2nn", (1, 28, 28), 10, seed=0)
    first = model.init()
    second = {k: v + 1.0 for k, v in first.items()}
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    want = {id(p): model.loss(p, x, y) for p in (first, second)}
    wrong = []

    def train(params):
        for _ in range(50):
            with model.training(params) as (_, loss):
                if not torch.equal(loss(x, y), want[id(params)]):
                    wrong.append("block")
                # a call in the block's own thread: its parameters, then the leaves
                if not torch.equal(model.loss(first, x, y), want[id(first)]):
                    wrong.append("call")
                if not torch.equal(loss(x, y), want[id(params)]):
                    wrong.append("block after the call")

    threads = [threading.Thread(target=train, args=(p,)) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_init_waits_for_a_training_block_in_another_thread():
    model = build_model("logistic", (4,), 3, seed=0)
    own = model.init()
    inside, done = threading.Event(), threading.Event()
    got = {}

    def init():
        inside.wait()
        got.update(model.init())
        done.set()

    thread = threading.Thread(target=init)
    thread.start()
    with model.training({k: torch.zeros_like(v) for k, v in own.items()}):
        inside.set()
        # Without the lock init() runs now and copies the block's zeros; with it,
        # init() waits for the block to end (the wait here then times out).
        assert not done.wait(timeout=0.5)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert (
        all(torch.equal(got[k], v) for k, v in own.items()) and got.keys() == own.keys()
    )


def test_training_names_parameters_that_do_not_match():
    model = build_model("logistic", (4,), 3)
    params = model.init()
    with (
        pytest.raises(KeyError, match=r"params has no '1\.bias'"),
        model.training({"1.weight": params["1.weight"]}),
    ):
        pass
    with (
        pytest.raises(KeyError, match=r"names the module lacks: \['extra'\]"),
        model.training({**params, "extra": torch.zeros(1)}),
    ):
        pass


def test_training_leaves_the_module_alone_when_params_cannot_be_leaves():
    model = build_model("2nn", (1, 28, 28), 10, seed=0)
    own = dict(model.module.named_parameters())
    params = model.init()
    last = list(params)[-1]
    params[last] = params[last].long()  # integers cannot require gradients
    with pytest.raises(RuntimeError, match="floating point"), model.training(params):
        pass
    assert dict(model.module.named_parameters()) == own


def test_training_undoes_a_binding_that_fails_halfway():
    model = build_model("2nn", (1, 28, 28), 10, seed=0)
    own = dict(model.module.named_parameters())
    calls = []

    def hook(module, name, param):
        calls.append(name)
        if len(calls) == 3:  # the third leaf of six
            raise RuntimeError("registration refused")

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(hook)
    try:
        with (
            pytest.raises(RuntimeError, match="registration refused"),
            model.training(model.init()),
        ):
            pass
    finally:
        handle.remove()
    assert dict(model.module.named_parameters()) == own


def test_training_names_a_tied_parameter_given_twice():
    model = FunctionalModel(_Tied())
    params = model.init()
    params["second.weight"] = params["first.weight"]
    with (
        pytest.raises(KeyError, match=r"tied parameters again: \['second\.weight'\]"),
        model.training(params),
    ):
        pass
