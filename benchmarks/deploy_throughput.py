"""Claim: a deployed run is practical on one small machine, and a restart is quick.

Runs ``fedloom server`` (TLS, token auth) with the 2NN on digits, FedAvg E = 1,
B = 10, every connected client in every round, and loopback clients:

* rounds per minute with 10 and with 100 clients (rounds after the first, from the
  server's commit times in ``state.db``);
* the server's peak resident memory (``VmHWM``) with 100 clients;
* the time from starting a server again after ``SIGKILL`` mid-run to its next
  completed round (10 clients, reconnecting by themselves with backoff).

Clients are real gRPC clients, each with its own connection and token; to keep
100 of them within this machine's memory they run 25 to a process (an asyncio
event loop each, training in a worker thread), not one process each.

Each figure is the median of ``--repeats`` runs (with their minimum and maximum).

    python benchmarks/deploy_throughput.py [--rounds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedloom.data import ClientData, load_dataset
from fedloom.deploy import DeviceClient, make_certificates, write_client_tokens
from fedloom.learning import build_model

CONFIG = """\
seed = 0
rounds = {rounds}
[data]
dataset = "digits"
num_clients = {clients}
[model]
name = "2nn"
[algorithm]
clients_per_round = {clients}
local_epochs = 1
batch_size = 10
client_learning_rate = 0.1
[deploy]
listen = "127.0.0.1:{port}"
tokens = "certs/tokens.json"
tls_certificate = "certs/server.pem"
tls_private_key = "certs/server.key"
rate_limit = 100.0
rate_burst = 200
"""
PER_PROCESS = 25


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clients_worker(args: argparse.Namespace) -> None:
    """Run clients ``first`` .. ``first + count - 1`` in this process."""
    torch.set_num_threads(1)
    dataset = load_dataset("digits", seed=0)
    population = ClientData.from_dataset(dataset, "iid", args.population, seed=0)
    certs = args.dir / "certs"
    clients = [
        DeviceClient(
            f"localhost:{args.port}",
            token=(certs / "clients" / f"client-{i}.token").read_text().strip(),
            examples=population.client(i),
            # One model each: training threads must not share a module, as
            # functional_call swaps its parameters while it runs.
            model=build_model("2nn", dataset.input_shape, dataset.num_classes),
            root_certificates=(certs / "ca.pem").read_bytes(),
            give_up_after=120,
            name=f"client-{i}",
        )
        for i in range(args.first, args.first + args.count)
    ]

    async def run_all() -> None:
        await asyncio.gather(*(client.run_async() for client in clients))

    asyncio.run(run_all())


def _launch(
    directory: Path, clients: int, rounds: int
) -> tuple[list[str], subprocess.Popen, float | None, list[subprocess.Popen]]:
    """Start the server, note its memory before any client, start the clients."""
    certs = directory / "certs"
    if not certs.exists():
        make_certificates(certs)
        write_client_tokens(certs, clients)
    port = _free_port()
    text = CONFIG.format(rounds=rounds, clients=clients, port=port)
    (directory / "server.toml").write_text(text)
    command = [sys.executable, "-m", "fedloom.cli", "server", "server.toml"]
    command += ["--out", "run", "--quiet"]
    server = subprocess.Popen(command, cwd=directory, stderr=subprocess.DEVNULL)
    while not _listening(directory):
        time.sleep(0.05)
    idle = _rss_mib(server.pid, "VmRSS:")
    return command, server, idle, _spawn_clients(directory, port, clients)


def _query(directory: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` on the server's state database ([] before it exists)."""
    path = directory / "run" / "state.db"
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:  # the server is creating it
        return []


def _listening(directory: Path) -> bool:
    return bool(_query(directory, "SELECT 1 FROM meta WHERE key = 'address'"))


def _spawn_clients(directory: Path, port: int, clients: int) -> list[subprocess.Popen]:
    started = []
    for first in range(0, clients, PER_PROCESS):
        count = min(PER_PROCESS, clients - first)
        command = [sys.executable, __file__, "--worker", "--dir", str(directory)]
        command += ["--port", str(port), "--population", str(clients)]
        command += ["--first", str(first), "--count", str(count)]
        started.append(
            subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    return started


def _commit_times(directory: Path) -> list[float]:
    rows = _query(directory, "SELECT finished_at FROM rounds ORDER BY round")
    return [float(row[0]) for row in rows]


def _rss_mib(pid: int, key: str = "VmHWM:") -> float | None:
    """The process's peak (``VmHWM``) or current (``VmRSS``) resident memory."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def throughput(clients: int, rounds: int) -> dict[str, float | None]:
    """Rounds per minute and the server's memory with ``clients`` clients."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _, server, idle, workers = _launch(directory, clients, rounds)
        peak = 0.0
        while server.poll() is None:
            peak = max(peak, _rss_mib(server.pid) or 0.0)
            time.sleep(0.2)
        for worker in workers:
            worker.wait(timeout=60)
        if server.returncode != 0:
            raise RuntimeError(f"the server exited with {server.returncode}")
        times = _commit_times(directory)
    return {
        "rounds_per_minute": 60 * (len(times) - 1) / (times[-1] - times[0]),
        "server_rss_before_clients_mib": idle,
        "server_peak_rss_mib": peak,
    }


def restart(clients: int, rounds: int) -> dict[str, float | None]:
    """Seconds from starting a SIGKILLed server again to its next round."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        command, server, _, workers = _launch(directory, clients, rounds)
        while len(_commit_times(directory)) < 3:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait()
        done = len(_commit_times(directory))
        started = time.monotonic()
        server = subprocess.Popen(command, cwd=directory, stderr=subprocess.DEVNULL)
        while not _listening_again(directory, started):
            time.sleep(0.02)
        listening = time.monotonic() - started
        while len(_commit_times(directory)) <= done:
            time.sleep(0.02)
        seconds = time.monotonic() - started
        server.wait(timeout=300)
        for worker in workers:
            worker.wait(timeout=60)
    return {
        "restart_to_next_round_seconds": seconds,
        "restart_to_listening_seconds": listening,
        "rounds_before_kill": done,
    }


def _listening_again(directory: Path, since: float) -> bool:
    """Whether the restarted server writes its live status again."""
    wall = time.time() - (time.monotonic() - since)
    rows = _query(directory, "SELECT value FROM meta WHERE key = 'live'")
    return bool(rows) and json.loads(rows[0][0]).get("updated", 0) > wall


def repeated(
    measure: Callable[[], dict[str, float | None]], repeats: int
) -> dict[str, float | None]:
    """The median of each figure over ``repeats`` runs, with its minimum and maximum
    (``*_min``, ``*_max``): the machine may be shared, and one run can mislead."""
    runs = [measure() for _ in range(repeats)]
    row: dict[str, float | None] = {}
    for key in runs[0]:
        values = sorted(v for run in runs if (v := run[key]) is not None)
        if not values:
            row[key] = None
            continue
        row[key] = statistics.median(values)
        if repeats > 1:
            row[f"{key}_min"], row[f"{key}_max"] = values[0], values[-1]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/deploy_throughput.json")
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--population", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _clients_worker(args)
        return
    rows = {
        "10_clients": repeated(lambda: throughput(10, args.rounds), args.repeats),
        "100_clients": repeated(lambda: throughput(100, args.rounds), args.repeats),
        "restart_10_clients": repeated(lambda: restart(10, 8), args.repeats),
    }
    for name, row in rows.items():
        for key, value in row.items():
            shown = "n/a" if value is None else f"{value:>10.2f}"
            print(f"{name:<20}{key:<34}{shown:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "benchmarks/deploy_throughput.py",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "result": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
