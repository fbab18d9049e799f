"""The JSON record a benchmark script writes: its command, the machine, its
arguments and its measurements."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch


def write_record(path: Path, args: argparse.Namespace, **measured: Any) -> None:
    """Write ``measured`` to ``path`` (its folders made), with the command line,
    the machine and ``args`` (as ``workload``)."""
    record = {
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "workload": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
        **measured,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
