"""Argument parsing and the subcommands of the ``fedloom`` command.

Everything heavy (torch, the runner, the data package) is imported inside the
subcommand that needs it, so ``fedloom --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

__all__ = ["build_parser", "default_out_dir", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _version() -> str:
    try:
        return metadata.version("fedloom")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from source
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``fedloom`` argument parser: ``run``, ``datasets``, and the deployment
    commands ``server``, ``client``, ``status`` and ``certs``."""
    parser = argparse.ArgumentParser(
        prog="fedloom",
        description="Federated learning experiments on PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    traceback = "show the full traceback instead of a one-line error"
    parser.add_argument("--traceback", action="store_true", help=traceback)
    # also after the command (fedloom run x.toml --traceback); SUPPRESS: a command
    # not given it leaves the value before it as it was
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--traceback", action="store_true", default=argparse.SUPPRESS, help=traceback
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run an experiment from a TOML configuration",
        description="Run an experiment from a TOML configuration.",
    )
    run.add_argument("config", type=Path, metavar="CONFIG.toml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration value, e.g. --set algorithm.local_epochs=1 "
        "(repeatable; VALUE is read as TOML, else as a string)",
    )
    place = run.add_mutually_exclusive_group()
    place.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="run directory (default: runs/<config name>-<YYYYmmdd-HHMMSS>)",
    )
    place.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint; CONFIG must match "
        "DIR/config.json",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    run.set_defaults(handler=_run)

    datasets = commands.add_parser(
        "datasets",
        parents=[common],
        help="list the built-in datasets",
        description="List the built-in datasets and where they are cached.",
    )
    datasets.set_defaults(handler=_datasets)
    _add_deploy_commands(commands, common)
    return parser


def _add_deploy_commands(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    server = commands.add_parser(
        "server",
        parents=[common],
        help="serve a run to real clients over gRPC",
        description="Run the server side of an experiment for clients that connect "
        "over gRPC. CONFIG is an experiment TOML with a [deploy] table. Started "
        "again on the same --out, it resumes after the last completed round.",
    )
    server.add_argument("config", type=Path, metavar="CONFIG.toml")
    server.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="state directory (default: runs/<config name>-server)",
    )
    server.add_argument("--quiet", action="store_true", help="no progress or summary")
    server.set_defaults(handler=_server)

    client = commands.add_parser(
        "client",
        parents=[common],
        help="take part in a served run with local data",
        description="Connect to a fedloom server and train on local data until the "
        "run ends. --data names a built-in dataset; --num-clients and "
        "--client-index pick this client's share, as in simulation.",
    )
    client.add_argument("--server", required=True, metavar="HOST:PORT")
    client.add_argument("--token-file", type=Path, required=True, metavar="FILE")
    trust = client.add_mutually_exclusive_group(required=True)
    trust.add_argument("--ca", type=Path, metavar="CA.pem", help="the server's CA")
    trust.add_argument(
        "--insecure", action="store_true", help="no TLS (tests on 127.0.0.1 only)"
    )
    client.add_argument("--data", required=True, metavar="DATASET")
    client.add_argument("--partition", default="iid")
    client.add_argument("--alpha", type=float, help="for --partition dirichlet")
    client.add_argument("--num-clients", type=int, default=1, metavar="N")
    client.add_argument("--client-index", type=int, default=0, metavar="I")
    client.add_argument("--seed", type=int, default=0)
    client.add_argument(
        "--max-backoff",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest wait between reconnection attempts (default: 10)",
    )
    client.add_argument(
        "--give-up-after",
        type=float,
        metavar="SECONDS",
        help="stop after this long without reaching the server (default: never)",
    )
    client.set_defaults(handler=_client)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="show a server's connected clients and round in progress",
        description="Show what the server with state directory DIR is doing.",
    )
    status.add_argument("dir", type=Path, metavar="DIR")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    certs = commands.add_parser(
        "certs",
        parents=[common],
        help="make a local CA, a server certificate and client tokens",
        description="Write ca.pem, ca.key, server.pem, server.key into DIR and, "
        "with --clients, tokens.json (hashes, for the server) and "
        "clients/<id>.token (one secret per client).",
    )
    certs.add_argument("dir", type=Path, metavar="DIR")
    certs.add_argument(
        "--host",
        action="append",
        metavar="NAME",
        help="a host name or IP the server certificate is for (repeatable; "
        "default: localhost and 127.0.0.1)",
    )
    certs.add_argument("--clients", type=int, default=0, metavar="N")
    certs.set_defaults(handler=_certs)


def default_out_dir(config_path: Path, now: datetime.datetime | None = None) -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>`` for a run of ``config_path``."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config_path.stem}-{stamp}"


def new_run_dir(config_path: Path) -> Path:
    """Make and return a run directory of its own: :func:`default_out_dir`, or with
    "-2", "-3", ... appended where a run started in the same second has it."""
    base = default_out_dir(config_path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir()  # atomic: one process gets each name
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from fedloom.experiments import ConfigError, load_config, run_experiment

    config_path: Path = args.config
    try:
        config = load_config(config_path, args.overrides)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    if args.resume is not None:
        if not args.resume.is_dir():
            _error(f"--resume {args.resume}: no such run directory")
            return EXIT_USAGE
        out_dir, resume = args.resume, True
    else:
        out_dir = args.out if args.out is not None else new_run_dir(config_path)
        resume = False

    run_experiment(
        config,
        out_dir=out_dir,
        resume=resume,
        quiet=args.quiet,
        config_path=str(config_path),
    )
    return EXIT_OK


def _datasets(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fedloom.data import available_datasets

    table = Table(title="fedloom datasets")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("description")
    table.add_column("location", overflow="fold")
    for info in available_datasets():
        table.add_row(str(info.name), str(info.description), str(info.location))
    Console().print(table)
    return EXIT_OK


def _logging() -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )


def _server(args: argparse.Namespace) -> int:
    from fedloom.deploy import load_server_config, serve

    _logging()
    experiment, settings = load_server_config(args.config)
    out_dir = args.out or Path("runs") / f"{args.config.stem}-server"
    serve(experiment, settings, out_dir=out_dir, quiet=args.quiet)
    return EXIT_OK


def _client(args: argparse.Namespace) -> int:
    from collections.abc import Mapping
    from typing import Any

    from fedloom.data import ClientData, load_dataset
    from fedloom.deploy import ClientRefused, DeviceClient, task_model
    from fedloom.learning import FunctionalModel

    _logging()
    token = args.token_file.read_text(encoding="utf-8").strip()
    dataset = load_dataset(args.data, seed=args.seed)
    options = {} if args.alpha is None else {"alpha": args.alpha}
    population = ClientData.from_dataset(
        dataset, args.partition, args.num_clients, seed=args.seed, **options
    )
    if not 0 <= args.client_index < len(population):
        raise ValueError(
            f"--client-index {args.client_index}: must be in 0..{len(population) - 1}"
        )

    def model(config: Mapping[str, Any]) -> FunctionalModel:
        return task_model(config, dataset.input_shape, dataset.num_classes)

    client = DeviceClient(
        args.server,
        token=token,
        examples=population.client(args.client_index),
        model=model,
        root_certificates=None if args.ca is None else args.ca.read_bytes(),
        insecure=args.insecure,
        give_up_after=args.give_up_after,
        backoff=(min(0.2, args.max_backoff), args.max_backoff),
        name=f"{args.token_file.stem}",
    )
    try:
        client.run()
    except ClientRefused as error:
        _error(str(error))
        return EXIT_ERROR
    except ConnectionError as error:
        _error(str(error))
        return EXIT_ERROR
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    import json

    from fedloom.deploy import print_status, read_status

    status = read_status(args.dir)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print_status(status)
    return EXIT_OK


def _certs(args: argparse.Namespace) -> int:
    from fedloom.deploy import make_certificates, write_client_tokens

    hosts = args.host or ["localhost", "127.0.0.1"]
    files = make_certificates(args.dir, hosts)
    print(
        f"wrote {files.ca_certificate} (give it to clients), {files.ca_key}, "
        f"{files.server_certificate}, {files.server_key}"
    )
    if args.clients:
        tokens = write_client_tokens(args.dir, args.clients)
        print(
            f"wrote {args.dir / 'tokens.json'} (for the server) and "
            f"{len(tokens)} tokens in {args.dir / 'clients'} (one per client)"
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedloom`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 1 when a file cannot be read or
    written or a run diverges, 2 for a usage, configuration or checkpoint error
    (each printed as ``error: ...`` on standard error), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version and usage errors
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        _error("interrupted")
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as exc:  # ConfigError, CheckpointError among them
        if args.traceback:
            raise
        _error(str(exc) or type(exc).__name__)
        return EXIT_ERROR if _failed(exc) else EXIT_USAGE
    return status


def _failed(exc: Exception) -> bool:
    """Whether ``exc`` says the work failed (a file that cannot be read or
    written, or is corrupt; a run that diverged) rather than that it was asked
    for wrongly."""
    aggregators = sys.modules.get("fedloom.aggregators")  # loaded if a run ran
    data = sys.modules.get("fedloom.data")
    return (
        isinstance(exc, OSError)
        or (data is not None and isinstance(exc, data.DataFileError))
        or (aggregators is not None and isinstance(exc, aggregators.InvalidUpdateError))
    )
