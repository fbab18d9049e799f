"""Built-in datasets by name: ``load_dataset`` and ``available_datasets``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import _idx_datasets
from ._examples import Dataset, Examples
from ._synthetic import synthetic

_SYNTHETIC_OPTIONS = ("alpha", "beta", "num_clients", "test_fraction")


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in dataset is and where it would be loaded from right now.

    Example:
        >>> info = DatasetInfo("digits", "8x8 digits", "embedded in scikit-learn")
        >>> info.location
        'embedded in scikit-learn'
    """

    name: str
    description: str
    location: str
    """``"embedded in scikit-learn"``, ``"generated on demand"``, a directory, or
    ``"not found (download from <url>)"``."""


def _digits(seed: int) -> Dataset:
    """scikit-learn's 1,797 8x8 digits; a seeded, stratified 80/20 split."""
    from sklearn.datasets import load_digits  # heavy import, only when used

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test_parts.append(members[: round(0.2 * len(members))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_parts)] = True
    x = torch.from_numpy(images.reshape(-1, 1, 8, 8).copy())
    y = torch.from_numpy(labels)
    test_rows = torch.from_numpy(np.flatnonzero(is_test))
    train_rows = torch.from_numpy(np.flatnonzero(~is_test))
    every = Examples(x, y)
    return Dataset(
        name="digits",
        train=every.select(train_rows),
        test=every.select(test_rows),
        num_classes=10,
        input_shape=(1, 8, 8),
    )


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise TypeError(
            f"load_dataset({name!r}) takes no options, got "
            + ", ".join(repr(o) for o in sorted(options))
        )


def _load_digits(seed: int, options: dict[str, Any]) -> Dataset:
    _no_options("digits", options)
    return _digits(seed)


def _load_idx(name: str) -> Callable[[int, dict[str, Any]], Dataset]:
    def load(seed: int, options: dict[str, Any]) -> Dataset:
        del seed  # the official train/test split is fixed
        _no_options(name, options)
        return _idx_datasets.load_idx_dataset(name)

    return load


def _load_synthetic(seed: int, options: dict[str, Any]) -> Dataset:
    unknown = sorted(set(options) - set(_SYNTHETIC_OPTIONS))
    if unknown:
        raise TypeError(
            "load_dataset('synthetic') got unknown option(s) "
            + ", ".join(repr(o) for o in unknown)
            + "; valid options are "
            + ", ".join(repr(o) for o in _SYNTHETIC_OPTIONS)
        )
    return synthetic(seed=seed, **options)


_LOADERS: dict[str, Callable[[int, dict[str, Any]], Dataset]] = {
    "digits": _load_digits,
    "fashion_mnist": _load_idx("fashion_mnist"),
    "mnist": _load_idx("mnist"),
    "synthetic": _load_synthetic,
}


def load_dataset(name: str, *, seed: int = 0, **options: Any) -> Dataset:
    """Load a built-in dataset by name.

    Names: ``"digits"`` (scikit-learn's 8x8 digits, split 80/20 by ``seed``),
    ``"fashion_mnist"`` and ``"mnist"`` (IDX files found locally or downloaded,
    checksummed and cached; ``seed`` is unused), ``"synthetic"`` (FedProx's
    Synthetic(alpha, beta); options ``alpha``, ``beta``, ``num_clients``,
    ``test_fraction``). Features are float32 in ``(n, *input_shape)``, labels
    int64.

    Example:
        >>> digits = load_dataset("digits", seed=0)
        >>> digits.input_shape, digits.num_classes, len(digits.train) > 1000
        ((1, 8, 8), 10, True)
    """
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; available datasets are "
            + ", ".join(repr(n) for n in _LOADERS)
        ) from None
    return loader(seed, options)


def available_datasets() -> list[DatasetInfo]:
    """List the built-in datasets and where each is found now, loading none.

    Example:
        >>> [info.name for info in available_datasets()]
        ['digits', 'fashion_mnist', 'mnist', 'synthetic']
    """
    sources = _idx_datasets.SOURCES
    return [
        DatasetInfo(
            "digits",
            "scikit-learn's 1,797 8x8 grey images of handwritten digits, 10 classes",
            "embedded in scikit-learn",
        ),
        *(
            DatasetInfo(name, sources[name].description, _idx_datasets.location(name))
            for name in ("fashion_mnist", "mnist")
        ),
        DatasetInfo(
            "synthetic",
            "Synthetic(alpha, beta) of FedProx (Li et al. 2020): 60 features, "
            "10 classes, one logistic model per client",
            "generated on demand",
        ),
    ]
