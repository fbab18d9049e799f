"""Helpers for the deployment tests: configs, certificates, real processes.

Imported by the tests as ``deploy_helpers`` (pytest puts this folder on the path)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedloom.deploy import make_certificates, read_status, write_client_tokens

SERVER_TEMPLATE = """\
seed = 0
rounds = {rounds}
[data]
dataset = "digits"
partition = "iid"
num_clients = {num_clients}
[model]
name = "2nn"
[algorithm]
name = "fedavg"
clients_per_round = {clients_per_round}
local_epochs = {local_epochs}
batch_size = 10
client_learning_rate = 0.1
[deploy]
listen = "127.0.0.1:{port}"
tokens = "certs/tokens.json"
{tls}
round_deadline = {round_deadline}
client_timeout = {client_timeout}
heartbeat_seconds = {heartbeat_seconds}
poll_seconds = 2.0
over_selection = {over_selection}
{extra}
"""

TLS = 'tls_certificate = "certs/server.pem"\ntls_private_key = "certs/server.key"'


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_server_config(
    directory: Path,
    *,
    rounds: int,
    num_clients: int,
    clients_per_round: int,
    local_epochs: int = 1,
    tls: bool = True,
    round_deadline: float = 30.0,
    client_timeout: float = 3.0,
    heartbeat_seconds: float = 0.5,
    over_selection: float = 0.0,
    extra: str = "",
) -> tuple[Path, int]:
    """A server TOML in ``directory`` with certificates and tokens beside it."""
    certs = directory / "certs"
    if not (certs / "tokens.json").exists():
        make_certificates(certs)
        write_client_tokens(certs, num_clients)
    port = free_port()
    path = directory / "server.toml"
    path.write_text(
        SERVER_TEMPLATE.format(
            rounds=rounds,
            num_clients=num_clients,
            clients_per_round=clients_per_round,
            local_epochs=local_epochs,
            port=port,
            tls=TLS if tls else "insecure = true",
            round_deadline=round_deadline,
            client_timeout=client_timeout,
            heartbeat_seconds=heartbeat_seconds,
            over_selection=over_selection,
            extra=extra,
        )
    )
    return path, port


class ForkedClient:
    """A client process forked by ``client_launcher.py``: its pid and exit file."""

    def __init__(self, directory: Path, name: str, pid: int) -> None:
        self.exit_file = directory / f"{name}.exit"
        self.pid = pid

    def poll(self) -> int | None:
        try:
            return int(self.exit_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def wait(self, timeout: float) -> int:
        wait_for(lambda: self.poll() is not None, timeout, f"client {self.pid}")
        code = self.poll()
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


class Processes:
    """Start ``fedloom`` processes; every one still running is killed at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []
        self.forked: list[ForkedClient] = []

    def fedloom(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            [sys.executable, "-m", "fedloom.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            env=env,
        )
        log.close()
        self.started.append(process)
        return process

    def server(self, config: Path, out: Path) -> subprocess.Popen[bytes]:
        return self.fedloom("server", "server", str(config), "--out", str(out))

    def client(
        self, port: int, index: int, num_clients: int
    ) -> subprocess.Popen[bytes]:
        """A ``fedloom client`` process of its own."""
        return self.fedloom(
            f"client-{index}", *self.client_argv(port, index, num_clients)
        )

    def client_argv(
        self, port: int, index: int, num_clients: int, name: str | None = None
    ) -> list[str]:
        certs = self.directory / "certs"
        token = certs / "clients" / f"{name or f'client-{index}'}.token"
        return [
            "client",
            "--server",
            f"localhost:{port}",
            "--token-file",
            str(token),
            "--ca",
            str(certs / "ca.pem"),
            "--data",
            "digits",
            "--num-clients",
            str(num_clients),
            "--client-index",
            str(index),
            "--give-up-after",
            "60",
            "--max-backoff",
            "0.5",
        ]

    def clients(
        self, port: int, num_clients: int, *groups: range | dict[str, int]
    ) -> list[ForkedClient]:
        """``fedloom client`` processes forked from one launcher, which imports
        torch once for all of them (seconds of CPU each). A group is a range of
        client indices or a map of names to indices (the name picks the token
        file); each starts once the group before it has ended."""
        named = [
            group if isinstance(group, dict) else {f"client-{i}": i for i in group}
            for group in groups
        ]
        argvs = [
            {
                name: self.client_argv(port, i, num_clients, name)
                for name, i in g.items()
            }
            for g in named
        ]
        launcher = Path(__file__).with_name("client_launcher.py")
        log = open(self.directory / "launcher.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, str(launcher), str(self.directory), json.dumps(argvs)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        self.started.append(process)
        launched = self.directory / f"launched-{process.pid}.json"
        names = [name for group in argvs for name in group]

        def pids() -> dict[str, int] | None:
            if not launched.exists():
                return None
            known = json.loads(launched.read_text())
            return known if set(names) <= set(known) else None

        known = wait_for(pids, 120, "the client launcher")
        forked = [ForkedClient(self.directory, name, known[name]) for name in names]
        self.forked.extend(forked)
        return forked

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for client in self.forked:
            if client.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(client.pid, signal.SIGKILL)
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, period: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def rounds_done(out: Path) -> int:
    """Rounds the server in ``out`` has committed (0 before its database exists)."""
    try:
        return len(read_status(out)["rounds"])
    except Exception:  # the database may not exist yet, or be mid-creation
        return 0
