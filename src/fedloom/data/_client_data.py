"""A population of client datasets: one block of examples and a Partition."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _partitioners
from ._examples import ClientId, Dataset, ExampleRows, Examples
from ._partition import Partition, PositionalIds

_PARTITIONERS: dict[str, Callable[..., Partition]] = {
    "iid": _partitioners.iid,
    "shards": _partitioners.shards,
    "dirichlet": _partitioners.dirichlet,
    "quantity_skew": _partitioners.quantity_skew,
}
_PARTITION_NAMES = (*_PARTITIONERS, "natural")


def _natural_subset(keys: np.ndarray, num_clients: int, seed: int) -> Partition:
    full = _partitioners.natural(keys)
    if num_clients <= 0 or num_clients > len(full):
        raise ValueError(
            f"natural partition: num_clients must be in 1..{len(full)} "
            f"(the number of distinct client keys), got {num_clients}"
        )
    if num_clients == len(full):
        return full
    chosen = np.sort(np.random.default_rng(seed).permutation(len(full))[:num_clients])
    sizes = full.sizes()[chosen]
    return Partition(
        tuple(full.client_ids[i] for i in chosen),
        np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)]),
        np.concatenate([full.client_indices(int(i)) for i in chosen]),
    )


class ClientData:
    """A population of client datasets, materialised one client at a time.

    Holds the examples of the whole population once, as two tensors, and a
    :class:`Partition`; ``client(...)`` hands out a client's rows, gathered with one
    ``index_select`` when first read (a batched runtime gathers a whole cohort's
    at once).

    Example:
        >>> import torch
        >>> block = Examples(torch.arange(6.0)[:, None], torch.tensor([0, 1] * 3))
        >>> parts = Partition(("a", "b"), [0, 2, 6], [4, 0, 1, 2, 3, 5])
        >>> data = ClientData(block, parts)
        >>> data.client("a").y.tolist(), data.client(1).x.flatten().tolist()
        ([0, 0], [1.0, 2.0, 3.0, 5.0])
    """

    def __init__(self, examples: Examples, partition: Partition) -> None:
        if len(partition.indices) and int(partition.indices.max()) >= len(examples):
            raise ValueError(
                f"partition refers to example {int(partition.indices.max())} but "
                f"there are only {len(examples)} examples"
            )
        self._examples = examples
        self._partition = partition
        self._position: dict[ClientId, int] | None = None  # built on first use

    def _position_of(self, client: ClientId) -> int | None:
        ids = self._partition.client_ids
        if isinstance(ids, PositionalIds):
            return ids.position(client)
        if self._position is None:
            self._position = {c: i for i, c in enumerate(ids)}
        return self._position.get(client)

    @property
    def examples(self) -> Examples:
        """All examples of the population (clients own subsets of these rows)."""
        return self._examples

    @property
    def partition(self) -> Partition:
        """Which rows of :attr:`examples` each client owns."""
        return self._partition

    @property
    def client_ids(self) -> Sequence[ClientId]:
        """The ids of all clients, in partition order."""
        return self._partition.client_ids

    @property
    def sizes(self) -> np.ndarray:
        """The number of examples of each client (int64), in partition order."""
        return self._partition.sizes()

    def __len__(self) -> int:
        return len(self._partition)

    def __repr__(self) -> str:
        return (
            f"ClientData({len(self)} clients, {int(self.sizes.sum())} of "
            f"{len(self._examples)} examples)"
        )

    def client(self, client: ClientId | int) -> Examples:
        """Return one client's examples, by id (``str``) or by position (``int``):
        its rows of :attr:`examples`, gathered when first read (:class:`ExampleRows`).

        Example:
            >>> import torch
            >>> block = Examples(torch.zeros(3, 1), torch.tensor([0, 1, 2]))
            >>> data = ClientData(block, Partition(("x",), [0, 2], [2, 0]))
            >>> data.client("x").y.tolist() == data.client(0).y.tolist() == [2, 0]
            True
        """
        if isinstance(client, str):
            found = self._position_of(client)
            if found is None:
                shown = ", ".join(repr(c) for c in self.client_ids[:5])
                more = ", ..." if len(self) > 5 else ""
                raise KeyError(
                    f"unknown client id {client!r}; this population has "
                    f"{len(self)} clients ({shown}{more})"
                )
            position = found
        else:
            try:
                position = operator.index(client)
            except TypeError:
                raise TypeError(
                    "client must be a client id (str) or a position (int), got "
                    f"{type(client).__name__}"
                ) from None
            if isinstance(client, bool):
                raise TypeError("client must be a client id (str) or a position (int)")
            if not -len(self) <= position < len(self):
                raise IndexError(
                    f"client position {position} out of range for {len(self)} clients"
                )
            position %= len(self)
        return ExampleRows(self._examples, self._partition.client_indices(position))

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        partition: str,
        num_clients: int,
        *,
        seed: int,
        **options: Any,
    ) -> ClientData:
        """Partition ``dataset.train`` into ``num_clients`` clients.

        ``partition`` is one of ``"iid"``, ``"shards"``, ``"dirichlet"``,
        ``"quantity_skew"``, ``"natural"``; ``options`` are that partitioner's
        keyword arguments (``alpha``, ``shards_per_client``, ``sigma``,
        ``min_size``). ``"natural"`` uses ``dataset.client_keys``, one client per
        key; if ``num_clients`` is smaller than the number of keys, a seeded
        random subset of ``num_clients`` of them is kept.

        Example:
            >>> from fedloom.data import load_dataset
            >>> digits = load_dataset("digits")
            >>> data = ClientData.from_dataset(digits, "dirichlet", 10, seed=0, alpha=1)
            >>> len(data)
            10
        """
        if partition == "natural":
            if options:
                raise TypeError(
                    f"natural partition takes no options, got {sorted(options)}"
                )
            if dataset.client_keys is None:
                raise ValueError(
                    f"dataset {dataset.name!r} has no client_keys, so it has no "
                    "natural partition; use one of "
                    + ", ".join(repr(p) for p in _PARTITIONERS)
                )
            parts = _natural_subset(dataset.client_keys, num_clients, seed)
        elif partition in _PARTITIONERS:
            labels = dataset.train.y.cpu().numpy()
            parts = _PARTITIONERS[partition](labels, num_clients, seed=seed, **options)
        else:
            raise ValueError(
                f"unknown partition {partition!r}; valid partitions are "
                + ", ".join(repr(p) for p in _PARTITION_NAMES)
            )
        return cls(dataset.train, parts)
