"""Blocks of examples as two tensors, and a dataset as two such blocks."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

ClientId = str
"""The name of a client in a population, e.g. ``"17"`` or a writer id."""


def as_index_tensor(index: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``index`` as a 1-D int64 tensor; a boolean mask becomes its positions."""
    if isinstance(index, np.ndarray):
        # A copy: ``torch.from_numpy`` on a read-only array (e.g. a Partition's
        # indices) would warn, and the caller's array must not be shared.
        index = torch.from_numpy(np.array(index, copy=True))
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
    if index.dtype == torch.bool:
        return index.nonzero().flatten()
    if index.dtype.is_floating_point or index.dtype.is_complex:
        raise TypeError(f"index must hold integers or booleans, got {index.dtype}")
    return index.to(torch.int64)


def _positions(index: torch.Tensor | np.ndarray, n: int) -> torch.Tensor:
    """``index`` (positions, negative ones from the end, or a boolean mask) as
    positions in ``0..n-1``; an ``IndexError`` for one out of range."""
    rows = as_index_tensor(index)
    if rows.numel() and (int(rows.min()) < -n or int(rows.max()) >= n):
        raise IndexError(f"index out of range for {n} examples")
    return torch.where(rows < 0, rows + n, rows)


@dataclass(frozen=True, eq=False)
class Examples:
    """A block of ``n`` examples: features ``x`` and integer labels ``y``.

    Examples are kept as two tensors, never one Python object per example, so a
    block of 60,000 images costs two allocations and selecting rows is one
    ``index_select``.

    Example:
        >>> import torch
        >>> block = Examples(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]))
        >>> len(block), block.select(torch.tensor([1, 2])).y.tolist()
        (4, [1, 1])
    """

    x: torch.Tensor
    """float32 features, shape ``(n, *input_shape)``."""
    y: torch.Tensor
    """int64 labels, shape ``(n,)``."""

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError("Examples.x and Examples.y must be torch.Tensor")
        if self.x.dtype != torch.float32:
            raise ValueError(f"Examples.x must be float32, got {self.x.dtype}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"Examples.y must be int64, got {self.y.dtype}")
        if self.y.dim() != 1:
            raise ValueError(f"Examples.y must be 1-D, got shape {tuple(self.y.shape)}")
        if self.x.dim() < 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"Examples.x has shape {tuple(self.x.shape)} but Examples.y has "
                f"{self.y.shape[0]} labels; the first dimensions must agree"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def select(self, index: torch.Tensor | np.ndarray) -> Examples:
        """Return the rows at ``index`` (integer positions or a boolean mask).

        Example:
            >>> import torch
            >>> block = Examples(torch.arange(3.0)[:, None], torch.tensor([5, 6, 7]))
            >>> block.select(torch.tensor([2, 0])).y.tolist()
            [7, 5]
        """
        rows = _positions(index, len(self)).to(self.y.device)
        return Examples(self.x.index_select(0, rows), self.y.index_select(0, rows))

    def to(self, device: torch.device | str) -> Examples:
        """The same examples on ``device`` (``self`` when they are there already)."""
        device = torch.device(device)
        if self.x.device == device and self.y.device == device:
            return self
        return Examples(self.x.to(device), self.y.to(device))


class ExampleRows(Examples):
    """Rows of a block of examples, gathered when ``x`` or ``y`` is first read.

    A client's examples as a population hands them out
    (:meth:`ClientData.client`): a runtime that trains a whole cohort gathers all
    its clients' rows from :attr:`source` straight into one padded tensor, one
    copy instead of a gather a client and then a copy (0.82 against 2.16 ms for
    ten Fashion-MNIST clients on a 2-core CPU); everything else reads ``x`` and
    ``y`` as from any :class:`Examples`.

    Example:
        >>> import torch
        >>> block = Examples(torch.arange(3.0)[:, None], torch.tensor([5, 6, 7]))
        >>> rows = ExampleRows(block, torch.tensor([2, 0]))
        >>> len(rows), rows.y.tolist(), rows.select(torch.tensor([1])).y.tolist()
        (2, [7, 5], [5])
    """

    def __init__(self, source: Examples, rows: torch.Tensor | np.ndarray) -> None:
        rows = as_index_tensor(rows)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(source)):
            raise IndexError(f"rows out of range for {len(source)} examples")
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "rows", rows)

    source: Examples
    """The block the rows are of."""
    rows: torch.Tensor
    """The positions in :attr:`source` (int64, on the CPU)."""

    @functools.cached_property
    def x(self) -> torch.Tensor:
        return self.source.x.index_select(0, self.rows.to(self.source.x.device))

    @functools.cached_property
    def y(self) -> torch.Tensor:
        return self.source.y.index_select(0, self.rows.to(self.source.y.device))

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __repr__(self) -> str:
        return f"ExampleRows({len(self)} of {len(self.source)} examples)"

    def select(self, index: torch.Tensor | np.ndarray) -> Examples:
        """The rows at ``index`` of these rows, gathered when read."""
        return ExampleRows(self.source, self.rows[_positions(index, len(self))])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset: train and test examples plus what a model needs to know.

    Example:
        >>> import torch
        >>> block = Examples(torch.zeros(2, 3), torch.tensor([0, 1]))
        >>> ds = Dataset("toy", block, block, num_classes=2, input_shape=(3,))
        >>> ds.client_keys is None
        True
    """

    name: str
    train: Examples
    test: Examples
    num_classes: int
    input_shape: tuple[int, ...]
    client_keys: np.ndarray | None = None
    """A natural client key per train example (writer, device...), or ``None``."""

    def __post_init__(self) -> None:
        for split, block in (("train", self.train), ("test", self.test)):
            if tuple(block.x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(
                    f"{self.name}: {split}.x has example shape "
                    f"{tuple(block.x.shape[1:])}, expected {tuple(self.input_shape)}"
                )
        if self.client_keys is not None and self.client_keys.shape != (
            len(self.train),
        ):
            raise ValueError(
                f"{self.name}: client_keys has shape {self.client_keys.shape}, "
                f"expected ({len(self.train)},), one key per train example"
            )
