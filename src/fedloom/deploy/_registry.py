"""The client works a device will run, by name: the server names one, never sends code.

A factory turns the device's model and the task's JSON configuration into client
work, the same ``(params, ClientInput) -> ClientResult`` function simulation runs.
FedAvg's local training and FedSGD's gradient are registered by default.

Example:
    >>> from fedloom.learning import build_model
    >>> model = build_model("logistic", (4,), 3)
    >>> work = client_work(
    ...     "fedavg/local_training", model,
    ...     {"learning_rate": 0.1, "epochs": 1, "batch_size": 10})
    >>> work.epochs
    1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedloom.learning import (
    AUTOCAST_DTYPES,
    ClientInput,
    ClientResult,
    FullBatchGradient,
    FunctionalModel,
    LocalTraining,
    Params,
    build_model,
    sgd,
)

__all__ = [
    "ClientWork",
    "ClientWorkFactory",
    "client_work",
    "register_client_work",
    "registered_client_works",
    "task_model",
]

ClientWork = Callable[[Params, ClientInput], ClientResult]
ClientWorkFactory = Callable[[FunctionalModel, Mapping[str, Any]], ClientWork]

_REGISTRY: dict[str, ClientWorkFactory] = {}


def task_model(
    config: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> FunctionalModel:
    """The built-in model a task's configuration names: its ``model`` and, where the
    server's run sets ``[model] autocast``, ``autocast`` ("bfloat16"), so that a
    device trains in the precision the server evaluates in.

    >>> task_model({"model": "2nn", "autocast": "bfloat16"}, (1, 8, 8), 10).autocast
    torch.bfloat16
    """
    autocast = config.get("autocast")
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        names = " or ".join(repr(name) for name in AUTOCAST_DTYPES)
        raise ValueError(
            f"task config: 'autocast' must be {names} if given, got {autocast!r}"
        )
    dtype = None if autocast is None else AUTOCAST_DTYPES[autocast]
    return build_model(
        str(config.get("model")), input_shape, num_classes, autocast=dtype
    )


def register_client_work(
    name: str, factory: ClientWorkFactory, *, replace: bool = False
) -> None:
    """Let this device run the client work ``name``, built by ``factory``.

    ``factory(model, config)`` receives the device's model and the task's JSON
    configuration. Registering a name twice is an error unless ``replace``.
    """
    if not name or len(name) > 200:
        raise ValueError(f"a client work name must be 1..200 characters: {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"client work {name!r} is already registered")
    _REGISTRY[name] = factory


def registered_client_works() -> list[str]:
    """The names of the client works this installation can run."""
    return sorted(_REGISTRY)


def client_work(
    name: str, model: FunctionalModel, config: Mapping[str, Any]
) -> ClientWork:
    """The client work ``name`` for ``model``, configured by ``config``.

    An unregistered name is a ``LookupError``; a bad configuration a ``ValueError``
    naming the key.
    """
    if name not in _REGISTRY:
        raise LookupError(
            f"client work {name[:200]!r} is not registered on this device; "
            f"it runs {registered_client_works()}"
        )
    return _REGISTRY[name](model, config)


def _number(config: Mapping[str, Any], key: str, integer: bool) -> Any:
    value = config.get(key)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        label = "an integer" if integer else "a number"
        raise ValueError(f"task config {key!r} must be {label}: {value!r}")
    return value


def _local_training(model: FunctionalModel, config: Mapping[str, Any]) -> ClientWork:
    learning_rate = float(_number(config, "learning_rate", integer=False))
    epochs = _number(config, "epochs", integer=True)
    batch_size = config.get("batch_size")
    if batch_size is not None:
        batch_size = _number(config, "batch_size", integer=True)
    if not learning_rate > 0:
        raise ValueError(f"task config 'learning_rate' must be > 0: {learning_rate}")
    return LocalTraining(model, sgd(learning_rate), epochs, batch_size)


def _full_batch_gradient(
    model: FunctionalModel, config: Mapping[str, Any]
) -> ClientWork:
    return FullBatchGradient(model)


register_client_work("fedavg/local_training", _local_training)
register_client_work("fedsgd/full_batch_gradient", _full_batch_gradient)
