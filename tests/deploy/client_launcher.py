"""Start several ``fedloom client`` processes cheaply: import once, then fork.

Each child is a real process with its own connection; it runs the CLI's ``main``
with the arguments ``fedloom client`` would get, its output in ``NAME.log``. The
launcher writes the children's pids to ``launched-<its pid>.json`` and each one's
exit status to ``NAME.exit`` when it ends. Usage: ``python client_launcher.py DIR
JSON`` where JSON is a list of groups, each mapping names to argument lists; a
group is started once every client of the group before it has ended.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import sklearn.datasets  # noqa: F401 - imported before the fork, once for all

import fedloom.deploy  # noqa: F401
from fedloom.cli._main import main


def _fork(directory: Path, name: str, argv: list[str]) -> int:
    pid = os.fork()
    if pid:
        return pid
    log = os.open(directory / f"{name}.log", os.O_WRONLY | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    status = 1
    try:
        status = main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def launch(directory: Path, groups: list[dict[str, list[str]]]) -> None:
    # Nothing may run before a fork: a thread pool started here (OpenMP, by the
    # first torch operation) would hang the children.
    pids: dict[str, int] = {}
    for group in groups:
        names = {_fork(directory, name, argv): name for name, argv in group.items()}
        pids.update({name: pid for pid, name in names.items()})
        temporary = directory / f"launched-{os.getpid()}.json.tmp"
        temporary.write_text(json.dumps(pids))
        os.replace(temporary, directory / f"launched-{os.getpid()}.json")
        while names:
            pid, status = os.wait()
            code = os.waitstatus_to_exitcode(status)
            (directory / f"{names.pop(pid)}.exit").write_text(str(code))


if __name__ == "__main__":
    launch(Path(sys.argv[1]), json.loads(sys.argv[2]))
