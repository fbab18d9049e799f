"""Regenerate ``deploy_pb2.py``, ``deploy_pb2.pyi`` and ``deploy_pb2_grpc.py``.

The generated modules are committed, so users need no code generation; after
editing ``deploy.proto`` run (with the ``dev`` extra installed)::

    python -m fedloom.deploy._proto._generate
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    """Run ``grpc_tools.protoc`` on ``deploy.proto``; returns its exit status."""
    from grpc_tools import protoc  # a dev-only dependency (grpcio-tools)

    source_root = Path(__file__).resolve().parents[3]  # the directory holding fedloom/
    proto = Path(__file__).with_name("deploy.proto").relative_to(source_root)
    return int(
        protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{source_root}",
                f"--python_out={source_root}",
                f"--pyi_out={source_root}",
                f"--grpc_python_out={source_root}",
                str(proto),
            ]
        )
    )


if __name__ == "__main__":
    sys.exit(main())
