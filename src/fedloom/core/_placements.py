"""Placements: where a federated value lives."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLIENTS", "SERVER", "Placement", "PlacementError"]


class PlacementError(TypeError):
    """A value was given to an intrinsic at the wrong placement."""


@dataclass(frozen=True)
class Placement:
    """A place a value can live: the server, or every client of a cohort.

    There are exactly two, the module constants ``SERVER`` and ``CLIENTS``.

    >>> from fedloom.core import CLIENTS, SERVER
    >>> SERVER, CLIENTS
    (SERVER, CLIENTS)
    """

    name: str

    def __repr__(self) -> str:
        return self.name


SERVER = Placement("SERVER")
CLIENTS = Placement("CLIENTS")
