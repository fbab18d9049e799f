"""Experiment configuration: frozen pydantic models that a TOML file maps onto.

A TOML file maps one-to-one onto :class:`ExperimentConfig`: top-level keys are its
fields and the tables ``[data]``, ``[model]`` and ``[algorithm]`` are its sub-models.
Every problem is reported as a :class:`ConfigError` whose message names the source
and the bad field by its dotted path, e.g.
``examples/digits.toml: algorithm.client_learning_rate: must be > 0 (got -0.1)``.

Example:
    >>> cfg = config_from_dict({"algorithm": {"client_fraction": 0.1}})
    >>> cfg.algorithm.cohort_size(cfg.data.num_clients)
    10
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "MODELS",
    "PARTITIONS",
    "RUNTIMES",
    "SERVER_OPTIMIZERS",
    "AlgorithmConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "load_config",
    "parse_override",
]

DatasetName = Literal["digits", "fashion_mnist", "mnist", "synthetic"]
PartitionName = Literal["iid", "shards", "dirichlet", "quantity_skew", "natural"]
ModelName = Literal["2nn", "cnn", "logistic"]
AlgorithmName = Literal["fedavg", "fedsgd"]
ServerOptimizerName = Literal["sgd", "momentum", "adam"]
RuntimeName = Literal["local", "vectorized"]

DATASETS: tuple[str, ...] = typing.get_args(DatasetName)
PARTITIONS: tuple[str, ...] = typing.get_args(PartitionName)
MODELS: tuple[str, ...] = typing.get_args(ModelName)
ALGORITHMS: tuple[str, ...] = typing.get_args(AlgorithmName)
SERVER_OPTIMIZERS: tuple[str, ...] = typing.get_args(ServerOptimizerName)
RUNTIMES: tuple[str, ...] = typing.get_args(RuntimeName)


class ConfigError(ValueError):
    """An invalid experiment configuration; the message names source and field.

    ``problems`` holds ``(dotted_field, message)`` pairs, one per problem found.
    """

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)


class _FieldError(ValueError):
    """A validator's error about one named field of the model being validated."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_MODEL_CONFIG = ConfigDict(
    frozen=True, extra="forbid", strict=True, allow_inf_nan=False
)


class DataConfig(BaseModel):
    """Which dataset, and how it is split into a population of clients."""

    model_config = _MODEL_CONFIG

    dataset: DatasetName = "digits"
    partition: PartitionName = "iid"
    num_clients: int = Field(default=100, ge=1)
    alpha: float | None = Field(default=None, gt=0)
    """Dirichlet concentration; required when ``partition = "dirichlet"``."""
    shards_per_client: int = Field(default=2, ge=1)
    """Shards per client for ``partition = "shards"`` (McMahan et al. 2017 use 2)."""
    sigma: float = Field(default=1.0, gt=0)
    """Log-normal spread of client sizes for ``partition = "quantity_skew"``."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Free-form keyword arguments for the dataset loader (JSON-compatible values)."""

    @field_validator("options")
    @classmethod
    def _check_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            _check_json_value(item, key)
        return value

    @model_validator(mode="after")
    def _check_partition(self) -> DataConfig:
        if self.partition == "dirichlet" and self.alpha is None:
            raise _FieldError("alpha", 'required when partition = "dirichlet"')
        return self


class ModelConfig(BaseModel):
    """Which model architecture to train."""

    model_config = _MODEL_CONFIG

    name: ModelName = "cnn"
    autocast: Literal["bfloat16"] | None = None
    """Mixed precision: "bfloat16" runs the model's matrix products and
    convolutions in bfloat16, its parameters, gradients and loss staying float32
    (``FunctionalModel``'s ``autocast``). Faster where the hardware has bfloat16
    units (``benchmarks/mixed_precision.py``), and not what McMahan et al. ran."""


class AlgorithmConfig(BaseModel):
    """The federated algorithm, its cohort, client training and server optimizer.

    Exactly one of ``client_fraction`` (C) and ``clients_per_round`` is given.
    ``batch_size`` is ``None`` for full-batch training (``"all"`` in TOML).
    For FedSGD, ``local_epochs`` must be 1 (the default) and ``batch_size``
    defaults to full batch, as in McMahan et al. (2017). ``server_momentum`` is
    the momentum of ``"momentum"`` and beta1 of ``"adam"`` (FedAdam, Reddi et
    al. 2021, whose defaults are beta1 0.9, beta2 0.99, epsilon 1e-3).
    """

    model_config = _MODEL_CONFIG

    name: AlgorithmName = "fedavg"
    client_fraction: float | None = Field(default=None, gt=0, le=1)
    clients_per_round: int | None = Field(default=None, ge=1)
    local_epochs: int = Field(default=5, ge=1)
    batch_size: int | None = Field(default=10, ge=1)
    client_learning_rate: float = Field(default=0.05, gt=0)
    server_optimizer: ServerOptimizerName = "sgd"
    server_learning_rate: float = Field(default=1.0, gt=0)
    server_momentum: float = Field(default=0.9, ge=0, lt=1)
    server_beta2: float = Field(default=0.99, ge=0, lt=1)
    server_epsilon: float = Field(default=1e-3, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _algorithm_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("name") == "fedsgd":
            data = dict(data)
            data.setdefault("local_epochs", 1)
            data.setdefault("batch_size", None)
        return data

    @field_validator("batch_size", mode="before")
    @classmethod
    def _parse_batch_size(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value == "all":
                return None
            raise ValueError(f'must be an integer >= 1 or "all" (got {value!r})')
        return value

    @field_serializer("batch_size")
    def _serialize_batch_size(self, value: int | None) -> int | str:
        return "all" if value is None else value

    @model_validator(mode="after")
    def _check_algorithm(self) -> AlgorithmConfig:
        if self.client_fraction is None and self.clients_per_round is None:
            raise _FieldError(
                "client_fraction",
                "exactly one of client_fraction and clients_per_round is required "
                "(neither was given)",
            )
        if self.client_fraction is not None and self.clients_per_round is not None:
            raise _FieldError(
                "clients_per_round",
                "exactly one of client_fraction and clients_per_round is allowed "
                "(both were given)",
            )
        if self.name == "fedsgd" and self.local_epochs != 1:
            raise _FieldError(
                "local_epochs",
                f"fedsgd trains one epoch per round; must be 1 or absent "
                f"(got {self.local_epochs})",
            )
        if self.name == "fedsgd" and self.batch_size is not None:
            raise _FieldError(
                "batch_size",
                f'fedsgd computes full-batch gradients; must be "all" or absent '
                f"(got {self.batch_size})",
            )
        if self.name == "fedsgd" and "server_learning_rate" in self.model_fields_set:
            raise _FieldError(
                "server_learning_rate",
                "fedsgd steps with client_learning_rate (the paper's eta); "
                "server_learning_rate is not used, leave it out",
            )
        return self

    def cohort_size(self, num_clients: int) -> int:
        """The number of clients sampled per round from a population of ``num_clients``.

        ``max(1, round(C * K))`` for a fraction C, or ``clients_per_round``.

        Example:
            >>> AlgorithmConfig(client_fraction=0.1).cohort_size(100)
            10
        """
        if self.client_fraction is not None:
            return max(1, round(self.client_fraction * num_clients))
        assert self.clients_per_round is not None  # guaranteed by validation
        if self.clients_per_round > num_clients:
            message = (
                f"algorithm.clients_per_round: cohort of {self.clients_per_round} "
                f"clients is larger than the population of {num_clients}"
            )
            raise ConfigError(message, [("algorithm.clients_per_round", message)])
        return self.clients_per_round


class ExperimentConfig(BaseModel):
    """A whole experiment: seed, rounds, runtime, data, model and algorithm.

    ``eval_every`` is the period of centralized evaluation in rounds (the last round
    is always evaluated too); training stops early at the first of these periodic
    evaluations whose test accuracy reaches ``target_accuracy``, when it is set.
    """

    model_config = _MODEL_CONFIG

    seed: int = Field(default=0, ge=0, le=2**64 - 1)  # what torch.manual_seed takes
    rounds: int = Field(default=50, ge=1)
    runtime: RuntimeName = "local"
    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    eval_every: int = Field(default=1, ge=1)
    checkpoint_every: int = Field(default=1, ge=1)
    """Rounds between checkpoints (the last round is always saved). A checkpoint
    costs a copy of the state and a few fsyncs, tens of milliseconds for a CNN: on a
    GPU, where a round can take less, save every 10 or so; a crash then repeats at
    most that many rounds, on the same trajectory."""
    threads: int | None = Field(default=None, ge=1, le=1024)
    """PyTorch intra-op threads during the run. By default 1 with the ``local``
    runtime (a client's small batches ran 2.5-4x faster on one thread than on two
    on one 2-core machine, and up to 1.76x slower on another, for the Fashion-MNIST
    CNN: ``benchmarks/threads.py``) and every core the process may use with
    ``vectorized`` (a cohort's batched step has enough work a call for threads to
    pay: ``benchmarks/simulation_speed.py``). At most 1,024 (100,000 threads
    crashed the BLAS library)."""
    chunk_size: int | None = Field(default=None, ge=1)
    """``vectorized`` only: how many clients are computed at once. By default the
    runtime chooses: at most 256, and with ``compile`` on the CPU, as many as hold
    8 MiB of the model's parameters a torch thread (the McMahan CNN: one or two).
    Smaller chunks bound memory, and change the kernels: on a CPU, eager, clients
    with large local batches (B = all) train fastest one at a time,
    ``chunk_size = 1``; with small batches, the whole cohort at once
    (``benchmarks/chunk_size.py``)."""
    compile: bool = False
    """``vectorized`` only: compile FedAvg's batched step with ``torch.compile`` (in
    the first rounds, seconds to tens of seconds). On the CPU the 2NN's step then
    runs several times as fast (``benchmarks/simulation_speed.py``); on a GPU the
    captured epochs replay inductor's kernels, and a McMahan CNN round ran 1.15-1.34x
    as fast on an H200 (``benchmarks/gpu_speed.py``)."""
    steps_per_call: int = Field(default=1, ge=1)
    """With ``compile`` on the CPU: how many local steps one compiled call runs
    (unrolled into one graph where every client has a batch). More saves per-call
    overhead (the 2NN's step 1.07-1.2x faster with 5: ``benchmarks/compiled_step.py``)
    and compiles as many times as long; worth it for small models."""
    device: str = "cpu"
    """Where the ``vectorized`` runtime computes the cohort, and where the test set is
    evaluated: "cpu", "cuda", "cuda:N". The server's state stays on the CPU."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig

    def torch_threads(self) -> int:
        """The intra-op thread count the run uses (``threads`` or its default)."""
        if self.threads is not None:
            return self.threads
        if self.runtime == "local":
            return 1
        if hasattr(os, "sched_getaffinity"):  # the cores this process may run on
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if re.fullmatch(r"cpu|cuda(:[0-9]+)?", device) is None:
            raise ValueError(f"must be 'cpu', 'cuda' or 'cuda:N' (got {device!r})")
        return device

    @model_validator(mode="after")
    def _check_vectorized_options(self) -> ExperimentConfig:
        if self.chunk_size is not None and self.runtime != "vectorized":
            raise _FieldError(
                "chunk_size",
                f"only the 'vectorized' runtime computes clients in chunks "
                f"(runtime is {self.runtime!r})",
            )
        if self.steps_per_call > 1 and not self.compile:
            raise _FieldError(
                "steps_per_call", "more than one step a call needs compile = true"
            )
        if self.compile and self.runtime != "vectorized":
            raise _FieldError(
                "compile",
                f"only the 'vectorized' runtime compiles its step "
                f"(runtime is {self.runtime!r})",
            )
        if self.steps_per_call > 1 and self.device != "cpu":
            raise _FieldError(
                "steps_per_call",
                "more than one step a call is for device 'cpu': on "
                f"{self.device!r} an epoch is one CUDA graph replay, with no calls "
                "between steps to save",
            )
        return self

    @model_validator(mode="after")
    def _check_cohort(self) -> ExperimentConfig:
        count = self.algorithm.clients_per_round
        if count is not None and count > self.data.num_clients:
            raise _FieldError(
                "algorithm.clients_per_round",
                f"cohort of {count} clients is larger than the population of "
                f"data.num_clients = {self.data.num_clients}",
            )
        return self


def _check_json_value(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json_value(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise _FieldError(where, f"must be a finite number (got {value!r})")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise _FieldError(
            where,
            "must be a string, number, boolean, array or table "
            f"(got {type(value).__name__})",
        )


# --- error messages ---------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _describe(error: Mapping[str, Any]) -> tuple[tuple[str | int, ...], str]:
    """The location and a short message for one pydantic error."""
    loc: tuple[str | int, ...] = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = f" (got {error['input']!r})" if "input" in error else ""
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind == "extra_forbidden":
        return loc, "unknown field"
    if kind == "missing":
        return loc, "required field is missing"
    if kind in bounds:
        bound = ctx[{">": "gt", ">=": "ge", "<": "lt", "<=": "le"}[bounds[kind]]]
        return loc, f"must be {bounds[kind]} {_show(bound)}{got}"
    if kind == "literal_error":
        return loc, f"must be one of {ctx.get('expected', '?')}{got}"
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, _FieldError):
            extra = tuple(cause.field.split("."))
            return loc + extra, str(cause)
        return loc, str(cause) if cause is not None else error["msg"]
    if kind == "finite_number":
        return loc, f"must be a finite number{got}"
    if kind.endswith("_type"):
        expected = kind.removesuffix("_type").replace("_", " ")
        expected = {"dict": "table", "model": "table", "int": "integer"}.get(
            expected, expected
        )
        return loc, f"must be {'an' if expected[0] in 'aeiou' else 'a'} {expected}{got}"
    return loc, f"{error['msg']}{got}"


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _config_error(
    exc: ValidationError, source: str, overridden: Mapping[str, str] = {}
) -> ConfigError:
    problems: list[tuple[str, str]] = []
    lines: list[str] = []
    for error in exc.errors():
        loc, message = _describe(error)
        field = _dotted(loc)
        problems.append((field, message))
        origin = source
        for key, item in overridden.items():
            if field == key or field.startswith(key + "."):
                origin = f"--set {item}"
        lines.append(f"{origin}: {field}: {message}")
    return ConfigError("\n".join(lines), problems)


# --- loading ----------------------------------------------------------------------


def _validate(
    data: Mapping[str, Any], source: str, overridden: Mapping[str, str]
) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise _config_error(exc, source, overridden) from None


def parse_override(item: str) -> tuple[tuple[str, ...], Any]:
    """Split a ``key.sub=value`` override into its key path and parsed value.

    The value is read as a TOML value (``5``, ``0.1``, ``true``, ``"text"``,
    ``[1, 2]``); anything that is not valid TOML is taken as a bare string.

    Example:
        >>> parse_override("data.dataset=fashion_mnist")
        (('data', 'dataset'), 'fashion_mnist')
        >>> parse_override("algorithm.local_epochs=5")
        (('algorithm', 'local_epochs'), 5)
    """
    key, sep, raw = item.partition("=")
    keys = tuple(part.strip() for part in key.split("."))
    if not sep or not all(keys):
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. rounds=10")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return keys, value


def _check_override_path(keys: Sequence[str], item: str) -> None:
    """Raise unless ``keys`` names a value (not a table) of the configuration."""
    model: type[BaseModel] = ExperimentConfig
    for depth, key in enumerate(keys):
        dotted = ".".join(keys[: depth + 1])
        field = model.model_fields.get(key)
        if field is None:
            raise ConfigError(f"--set {item}: {dotted}: unknown field", [(dotted, "")])
        annotation = field.annotation
        last = depth == len(keys) - 1
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if last:
                example = next(iter(annotation.model_fields))
                raise ConfigError(
                    f"--set {item}: {dotted}: is a table; set one of its fields, "
                    f"e.g. {dotted}.{example}=...",
                    [(dotted, "")],
                )
            model = annotation
        elif typing.get_origin(annotation) is dict:
            return  # a free-form table: any key below it is allowed
        elif not last:
            raise ConfigError(
                f"--set {item}: {dotted}: is a value, not a table", [(dotted, "")]
            )


def apply_overrides(
    data: Mapping[str, Any], overrides: Sequence[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of ``data`` with ``key.sub=value`` overrides applied.

    Returns the new mapping and, for error messages, the dotted keys that were set
    together with the override text that set them.
    """
    result: dict[str, Any] = _deep_copy(data)
    overridden: dict[str, str] = {}
    for item in overrides:
        keys, value = parse_override(item)
        _check_override_path(keys, item)
        table = result
        for depth, key in enumerate(keys[:-1]):
            child = table.get(key)
            if child is None:
                child = table[key] = {}
            elif not isinstance(child, dict):
                dotted = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"--set {item}: {dotted}: is a value, not a table", [(dotted, "")]
                )
            table = child
        table[keys[-1]] = value
        overridden[".".join(keys)] = item
    return result, overridden


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _deep_copy(value) if isinstance(value, Mapping) else value
        for key, value in data.items()
    }


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment from a TOML file, apply ``--set`` overrides, validate it.

    Raises :class:`ConfigError` naming the file and the dotted field on any problem.
    """
    source = str(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    data, overridden = apply_overrides(data, overrides)
    return _validate(data, source, overridden)


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """A JSON-compatible dict of ``config`` (the inverse of :func:`config_from_dict`).

    Full-batch training is written as ``"batch_size": "all"``, as in TOML; FedSGD's
    unused ``server_learning_rate`` is left out, as :func:`config_from_dict` requires.
    """
    data = config.model_dump(mode="json")
    if config.algorithm.name == "fedsgd":
        del data["algorithm"]["server_learning_rate"]
    return data


def config_from_dict(
    data: Mapping[str, Any], source: str = "<config>"
) -> ExperimentConfig:
    """Validate a dict (e.g. a parsed ``config.json``) into an experiment config.

    Raises :class:`ConfigError` with ``source`` and the dotted field on any problem.
    """
    return _validate(data, source, {})
