"""Argument parsing and the subcommands of the ``fedloom`` command.

Everything heavy (torch, the runner, the data package) is imported inside the
subcommand that needs it, so ``fedloom --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime
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
    """The ``fedloom`` argument parser with its ``run`` and ``datasets`` commands."""
    parser = argparse.ArgumentParser(
        prog="fedloom",
        description="Federated learning experiments on PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the full traceback instead of a one-line error",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
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
        help="list the built-in datasets",
        description="List the built-in datasets and where they are cached.",
    )
    datasets.set_defaults(handler=_datasets)
    return parser


def default_out_dir(config_path: Path, now: datetime.datetime | None = None) -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>`` for a run of ``config_path``."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config_path.stem}-{stamp}"


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
        out_dir = args.out if args.out is not None else default_out_dir(config_path)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedloom`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 2 for a usage, configuration or
    checkpoint error (printed as ``error: ...`` on standard error), 130 when
    interrupted.
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
    except ValueError as exc:  # ConfigError and CheckpointError among them
        if args.traceback:
            raise
        _error(str(exc) or type(exc).__name__)
        return EXIT_USAGE
    return status
