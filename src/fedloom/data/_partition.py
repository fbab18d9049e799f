"""The assignment of example indices to clients, in a compressed (CSR) layout."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._examples import ClientId


class PositionalIds(Sequence[ClientId]):
    """The ids ``"0"``, ``"1"``, ... of ``n`` clients, without a string per client.

    Partitioners that number their clients use this, so a population of a million
    idle clients costs its two index arrays and nothing per client.

    Example:
        >>> ids = PositionalIds(3)
        >>> list(ids), ids[-1], ids.index("2"), "3" in ids
        (['0', '1', '2'], '2', 2, False)
    """

    def __init__(self, n: int) -> None:
        self._n = int(n)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        if isinstance(i, slice):
            return [str(j) for j in range(*i.indices(self._n))]
        position = range(self._n)[i]  # IndexError and negative indices as usual
        return str(position)

    def position(self, client: ClientId) -> int | None:
        """The position of ``client``, or ``None`` when it is not one of the ids."""
        if (
            client.isascii()
            and client.isdigit()
            and str(int(client)) == client
            and int(client) < self._n
        ):
            return int(client)
        return None

    def __contains__(self, client: object) -> bool:
        return isinstance(client, str) and self.position(client) is not None

    def index(self, client: ClientId, start: int = 0, stop: int | None = None) -> int:
        position = self.position(client)
        if position is None or position not in range(self._n)[start:stop]:
            raise ValueError(f"{client!r} is not a client id")
        return position

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PositionalIds):
            return self._n == other._n
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == self._n and all(
                a == b for a, b in zip(self, other, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PositionalIds({self._n})"


def _frozen_int64(values: np.ndarray | Sequence[int], field: str) -> np.ndarray:
    array = np.array(values, copy=True)
    if array.size == 0:
        array = array.astype(np.int64)
    if array.ndim != 1:
        raise ValueError(f"Partition.{field} must be 1-D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Partition.{field} must hold integers, got {array.dtype}")
    array = array.astype(np.int64, copy=False)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Partition:
    """Which examples each client owns: client ``i`` owns ``indices[offsets[i]:
    offsets[i + 1]]``.

    One flat index array plus offsets (the CSR layout) instead of one array per
    client: a population of a million clients is two arrays. Each example index
    appears at most once. The arrays are copied and made read-only.

    Example:
        >>> p = Partition(("a", "b"), offsets=[0, 2, 3], indices=[4, 0, 2])
        >>> len(p), p.sizes().tolist(), p.client_indices(0).tolist()
        (2, [2, 1], [4, 0])
    """

    client_ids: Sequence[ClientId]
    offsets: np.ndarray
    indices: np.ndarray

    def __post_init__(self) -> None:
        positional = isinstance(self.client_ids, PositionalIds)
        ids = self.client_ids if positional else tuple(self.client_ids)
        if not positional and not all(isinstance(c, str) for c in ids):
            raise TypeError("Partition.client_ids must be strings")
        offsets = _frozen_int64(self.offsets, "offsets")
        indices = _frozen_int64(self.indices, "indices")
        if len(offsets) != len(ids) + 1:
            raise ValueError(
                f"Partition has {len(ids)} client ids but {len(offsets)} offsets; "
                f"expected {len(ids) + 1}"
            )
        if offsets[0] != 0:
            raise ValueError(f"Partition.offsets[0] must be 0, got {offsets[0]}")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("Partition.offsets must be non-decreasing")
        if offsets[-1] != len(indices):
            raise ValueError(
                f"Partition.offsets[-1] is {offsets[-1]} but there are "
                f"{len(indices)} indices"
            )
        if not positional and len(set(ids)) != len(ids):
            counts = Counter(ids)
            dupes = sorted(c for c, count in counts.items() if count > 1)
            raise ValueError(f"Partition.client_ids are not unique: {dupes[:5]}")
        if len(indices):
            if indices.min() < 0:
                raise ValueError("Partition.indices must be non-negative")
            if len(np.unique(indices)) != len(indices):
                raise ValueError(
                    "Partition.indices must list each example at most once"
                )
        object.__setattr__(self, "client_ids", ids)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "indices", indices)

    def sizes(self) -> np.ndarray:
        """Return the number of examples of each client (int64, one per client).

        Example:
            >>> Partition(("0", "1"), [0, 3, 4], [0, 1, 2, 3]).sizes().tolist()
            [3, 1]
        """
        return np.diff(self.offsets)

    def client_indices(self, position: int) -> np.ndarray:
        """Return the example indices of the client at ``position`` (a read-only view).

        Example:
            >>> Partition(("0", "1"), [0, 1, 3], [2, 0, 1]).client_indices(1).tolist()
            [0, 1]
        """
        return self.indices[self.offsets[position] : self.offsets[position + 1]]

    def __len__(self) -> int:
        return len(self.client_ids)


def from_groups(
    groups: Sequence[np.ndarray], client_ids: Sequence[ClientId] | None = None
) -> Partition:
    """Build a Partition from one index array per client (each sorted ascending).

    Sorting within a client makes ``index_select`` read memory in order; a
    client's training loop shuffles anyway.
    """
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)])
    parts = [np.sort(np.asarray(g, dtype=np.int64)) for g in groups]
    indices = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    ids = PositionalIds(len(groups)) if client_ids is None else tuple(client_ids)
    return Partition(ids, offsets, indices)
