"""The server's configuration: an experiment (as for ``fedloom run``) plus ``[deploy]``.

A server TOML file is an experiment configuration — seed, rounds, ``[data]``,
``[model]``, ``[algorithm]`` exactly as :mod:`fedloom.experiments` reads them — with
one more table, ``[deploy]``, mapped onto :class:`DeployConfig`. Relative paths in
``[deploy]`` are relative to the file. Every problem is a ``ConfigError`` naming the
file and the dotted field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedloom.experiments import ConfigError, ExperimentConfig, config_from_dict

__all__ = ["DeployConfig", "load_server_config"]


class DeployConfig(BaseModel):
    """How the server meets its clients (the ``[deploy]`` table).

    Example:
        >>> DeployConfig(tokens="tokens.json", insecure=True).round_deadline
        60.0
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False
    )

    listen: str = "127.0.0.1:8765"
    """``HOST:PORT`` to listen on; port 0 picks a free one (written to the state)."""
    tokens: str
    """The ``tokens.json`` of client ids and token hashes (``fedloom certs``)."""
    tls_certificate: str | None = None
    tls_private_key: str | None = None
    insecure: bool = False
    """Serve without TLS; only for tests on 127.0.0.1."""
    min_clients: int | None = Field(default=None, ge=1)
    """Results a round needs to count (default: the cohort size of ``[algorithm]``)."""
    over_selection: float = Field(default=0.0, ge=0, le=10)
    """Select ``ceil(cohort * (1 + over_selection))`` clients; the round closes
    once ``cohort`` of them have reported (Bonawitz et al. 2019, Section 2)."""
    round_deadline: float = Field(default=60.0, gt=0)
    client_timeout: float = Field(default=15.0, gt=0)
    """A client not heard from for this long is taken as gone."""
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    poll_seconds: float = Field(default=10.0, gt=0)
    """How long a ``GetTask`` call waits for a task before answering "none yet"."""
    max_message_bytes: int = Field(default=4 << 20, ge=1 << 16)
    chunk_bytes: int = Field(default=1 << 20, ge=1024)
    rate_limit: float = Field(default=20.0, gt=0)
    """Requests a second one client may make (a token bucket of ``rate_burst``)."""
    rate_burst: int = Field(default=40, ge=1)
    max_concurrent_uploads: int = Field(default=4, ge=1)
    """Results received at once; server memory grows with it, not with clients."""

    @model_validator(mode="after")
    def _check(self) -> DeployConfig:
        if not self.insecure and not (self.tls_certificate and self.tls_private_key):
            raise ValueError(
                "tls_certificate and tls_private_key are required "
                "(or insecure = true, for tests on 127.0.0.1 only)"
            )
        if self.chunk_bytes > self.max_message_bytes - 4096:
            raise ValueError(
                f"chunk_bytes ({self.chunk_bytes}) must leave 4096 bytes of room "
                f"below max_message_bytes ({self.max_message_bytes})"
            )
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen must be HOST:PORT, got {self.listen!r}")
        return self

    def resolve(self, base: Path) -> DeployConfig:
        """A copy whose relative file paths are taken relative to ``base``."""
        paths = ("tokens", "tls_certificate", "tls_private_key")
        update = {
            key: str(base / value)
            for key in paths
            if (value := getattr(self, key)) is not None
        }
        return self.model_copy(update=update)


def _deploy_error(error: ValidationError, source: str) -> ConfigError:
    problems = []
    for item in error.errors():
        field = ".".join(["deploy", *(str(part) for part in item["loc"])])
        got = f" (got {item['input']!r})" if item["type"] != "missing" else ""
        message = item["msg"].removeprefix("Value error, ")
        problems.append((field, f"{message}{got}"))
    lines = [f"{source}: {field}: {message}" for field, message in problems]
    return ConfigError("\n".join(lines), problems)


def load_server_config(path: str | Path) -> tuple[ExperimentConfig, DeployConfig]:
    """Read a server TOML file: its experiment and its ``[deploy]`` table."""
    source = str(path)
    try:
        data: dict[str, Any] = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{source}: cannot read: {error}") from None
    deploy = data.pop("deploy", None)
    if not isinstance(deploy, dict):
        message = "a [deploy] table is required (at least its tokens key)"
        raise ConfigError(f"{source}: deploy: {message}", [("deploy", message)])
    experiment = config_from_dict(data, source)
    try:
        settings = DeployConfig.model_validate(deploy)
    except ValidationError as error:
        raise _deploy_error(error, source) from None
    return experiment, settings.resolve(Path(path).resolve().parent)
