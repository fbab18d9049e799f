"""Built-in datasets: digits, Fashion-MNIST from the system dir, synthetic, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.data import Dataset, available_datasets, load_dataset

_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_digits_shapes_ranges_and_split() -> None:
    ds = load_dataset("digits", seed=0)
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.input_shape == (1, 8, 8) and ds.client_keys is None
    assert len(ds.train) + len(ds.test) == 1797
    assert ds.train.x.shape == (len(ds.train), 1, 8, 8)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0
    # Stratified 80/20: each class keeps about a fifth of its examples for test.
    train_counts = np.bincount(ds.train.y.numpy(), minlength=10)
    test_counts = np.bincount(ds.test.y.numpy(), minlength=10)
    share = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(share - 0.2) < 0.01)


def test_digits_split_is_deterministic_in_seed() -> None:
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'") as error:
        load_dataset("cifar10")
    for name in ("digits", "fashion_mnist", "mnist", "synthetic"):
        assert repr(name) in str(error.value)


def test_unknown_options_are_named() -> None:
    with pytest.raises(TypeError, match="'alpha'"):
        load_dataset("digits", alpha=1.0)
    with pytest.raises(TypeError, match=r"'gamma'.*valid options are 'alpha'"):
        load_dataset("synthetic", gamma=1.0)


# --- synthetic ---------------------------------------------------------------


def test_synthetic_shapes_and_keys() -> None:
    ds = load_dataset("synthetic", seed=3, alpha=0.5, beta=0.5, num_clients=10)
    assert ds.input_shape == (60,) and ds.num_classes == 10
    assert ds.train.x.shape == (len(ds.train), 60)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.client_keys is not None
    per_client = np.bincount(ds.client_keys)
    assert len(per_client) == 10
    assert per_client.min() >= 40  # at least 50 examples, 20% held out
    total = len(ds.train) + len(ds.test)
    assert abs(len(ds.test) / total - 0.2) < 0.01
    assert int(ds.train.y.min()) >= 0 and int(ds.train.y.max()) < 10


def test_synthetic_is_deterministic_in_seed() -> None:
    a, b, c = (load_dataset("synthetic", seed=s, num_clients=5) for s in (1, 1, 2))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert np.array_equal(a.client_keys, b.client_keys)
    assert len(a.train) != len(c.train) or not torch.equal(a.train.x, c.train.x)


def test_synthetic_clients_differ_more_with_larger_alpha_beta() -> None:
    """With alpha=beta=0 clients share one input mean; with 1, means spread out."""

    def spread(ds: Dataset) -> float:
        assert ds.client_keys is not None
        keys = torch.from_numpy(ds.client_keys)
        means = torch.stack([ds.train.x[keys == k].mean(0) for k in range(20)])
        return float(means.mean(1).std())

    iid_like = load_dataset("synthetic", seed=0, alpha=0.0, beta=0.0, num_clients=20)
    skewed = load_dataset("synthetic", seed=0, alpha=1.0, beta=1.0, num_clients=20)
    assert spread(skewed) > spread(iid_like)


def test_synthetic_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="num_clients must be positive"):
        load_dataset("synthetic", num_clients=0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha and beta must be finite and >= 0"):
            load_dataset("synthetic", alpha=bad)
        with pytest.raises(ValueError, match="alpha and beta must be finite and >= 0"):
            load_dataset("synthetic", beta=bad)


# --- Fashion-MNIST from the Debian package -----------------------------------


@pytest.fixture(scope="module")
def fashion() -> Iterator[Dataset]:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FEDLOOM_DATA", raising=False)
        patch.setenv("FEDLOOM_CACHE", "/nonexistent/fedloom-cache")
        yield load_dataset("fashion_mnist")


@pytest.mark.skipif(not _FASHION_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_fashion_mnist_from_the_system_directory(fashion: Dataset) -> None:
    assert fashion.name == "fashion_mnist" and fashion.num_classes == 10
    assert fashion.input_shape == (1, 28, 28)
    assert fashion.train.x.shape == (60_000, 1, 28, 28)
    assert fashion.test.x.shape == (10_000, 1, 28, 28)
    assert fashion.train.x.dtype == torch.float32
    assert fashion.train.y.dtype == torch.int64
    assert float(fashion.train.x.min()) == 0.0 and float(fashion.train.x.max()) == 1.0
    assert np.bincount(fashion.train.y.numpy()).tolist() == [6000] * 10
    assert np.bincount(fashion.test.y.numpy()).tolist() == [1000] * 10
    # The first labels of the official release: ankle boot, T-shirt, T-shirt, ...
    assert fashion.train.y[:5].tolist() == [9, 0, 0, 3, 0]
    assert fashion.test.y[:5].tolist() == [9, 2, 1, 1, 6]


@pytest.mark.skipif(not _FASHION_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_available_datasets_reports_the_system_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEDLOOM_DATA", raising=False)
    infos = {info.name: info for info in available_datasets()}
    assert list(infos) == ["digits", "fashion_mnist", "mnist", "synthetic"]
    assert infos["fashion_mnist"].location == str(_FASHION_DIR)
    assert infos["digits"].location == "embedded in scikit-learn"
    assert all(info.description for info in infos.values())


def test_importing_the_package_reads_no_dataset(tmp_path: Path) -> None:
    """Importing fedloom.data must not touch the data dirs nor load scikit-learn."""
    code = "import sys, fedloom.data; assert 'sklearn' not in sys.modules"
    env = {**os.environ, "FEDLOOM_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert not (tmp_path / "cache").exists()
