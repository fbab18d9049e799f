"""The ``fedloom`` command line: ``fedloom run``, ``fedloom datasets``."""

from fedloom.cli._main import build_parser as build_parser
from fedloom.cli._main import main as main

__all__ = ["build_parser", "main"]
