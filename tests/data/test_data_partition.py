"""Partition and the partitioners: coverage, shapes of skew, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.data import Partition, dirichlet, iid, natural, quantity_skew, shards


def _labels(per_class: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Balanced labels in a shuffled order, so sorting by label matters."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def _assert_at_most_once(p: Partition, n: int) -> None:
    assert p.indices.dtype == np.int64 and p.offsets.dtype == np.int64
    assert len(np.unique(p.indices)) == len(p.indices)
    assert p.indices.min() >= 0 and p.indices.max() < n


def _assert_exactly_once(p: Partition, n: int) -> None:
    _assert_at_most_once(p, n)
    assert np.array_equal(np.sort(p.indices), np.arange(n))


def _same(a: Partition, b: Partition) -> bool:
    return (
        a.client_ids == b.client_ids
        and np.array_equal(a.offsets, b.offsets)
        and np.array_equal(a.indices, b.indices)
    )


def _label_shares(p: Partition, labels: np.ndarray, num_classes: int) -> np.ndarray:
    rows = [
        np.bincount(labels[p.client_indices(i)], minlength=num_classes)
        for i in range(len(p))
    ]
    counts = np.array(rows, dtype=np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


# --- Partition ---------------------------------------------------------------


def test_partition_layout_and_accessors() -> None:
    p = Partition(("a", "b", "c"), [0, 2, 2, 5], [9, 1, 4, 0, 3])
    assert len(p) == 3
    assert p.sizes().tolist() == [2, 0, 3]
    assert p.sizes().dtype == np.int64
    assert p.client_indices(2).tolist() == [4, 0, 3]
    assert p.client_indices(1).tolist() == []


def test_partition_copies_and_freezes_arrays() -> None:
    offsets = np.array([0, 1, 2])
    p = Partition(("0", "1"), offsets, np.array([1, 0]))
    offsets[1] = 2  # the caller's array stays writable and is not shared
    assert p.offsets.tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        p.indices[0] = 5


@pytest.mark.parametrize(
    ("ids", "offsets", "indices", "message"),
    [
        (("a",), [1, 2], [0, 1], r"offsets\[0\] must be 0"),
        (("a", "b"), [0, 2, 1], [0, 1], "non-decreasing"),
        (("a",), [0, 1], [0, 1], r"offsets\[-1\] is 1 but there are 2"),
        (("a", "a"), [0, 1, 2], [0, 1], "not unique.*'a'"),
        (("a", "b", "c"), [0, 1, 2], [0, 1], "3 client ids but 3 offsets"),
        (("a",), [0, 2], [3, 3], "at most once"),
        (("a",), [0, 1], [-1], "non-negative"),
        (("a",), [0, 1], [0.5], "integers"),
    ],
)
def test_partition_rejects_bad_layouts(
    ids: tuple[str, ...], offsets: list[int], indices: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Partition(ids, np.array(offsets), np.array(indices))


# --- iid ---------------------------------------------------------------------


def test_iid_equal_sizes_and_full_cover() -> None:
    labels = _labels(101)  # 1010 examples over 7 clients: sizes 145 or 144
    p = iid(labels, 7, seed=3)
    _assert_exactly_once(p, len(labels))
    assert p.client_ids == tuple(str(i) for i in range(7))
    assert p.sizes().max() - p.sizes().min() <= 1
    assert p.sizes().sum() == len(labels)


def test_iid_is_deterministic_in_seed() -> None:
    labels = _labels(50)
    assert _same(iid(labels, 5, seed=1), iid(labels, 5, seed=1))
    assert not _same(iid(labels, 5, seed=1), iid(labels, 5, seed=2))


# --- shards ------------------------------------------------------------------


def test_shards_mcmahan_layout() -> None:
    """60,000 examples, 100 clients: 200 shards of 300, two per client."""
    labels = _labels(6000)
    p = shards(labels, 100, shards_per_client=2, seed=0)
    _assert_exactly_once(p, 60_000)
    assert np.all(p.sizes() == 600)
    # Each client's examples are exactly two blocks of 300 of the label-sorted order.
    rank = np.empty(60_000, dtype=np.int64)
    rank[np.argsort(labels, kind="stable")] = np.arange(60_000)
    for i in range(len(p)):
        shard_ids, counts = np.unique(
            rank[p.client_indices(i)] // 300, return_counts=True
        )
        assert len(shard_ids) == 2 and counts.tolist() == [300, 300]
        assert len(np.unique(labels[p.client_indices(i)])) <= 2


def test_shards_drops_a_random_remainder() -> None:
    labels = _labels(101)[:1003]
    p = shards(labels, 10, shards_per_client=2, seed=5)  # 20 shards of 50, 3 dropped
    _assert_at_most_once(p, 1003)
    assert np.all(p.sizes() == 100)
    assert len(p.indices) == 1000


def test_shards_rejects_too_few_examples() -> None:
    with pytest.raises(ValueError, match="need at least 20 examples"):
        shards(_labels(1)[:15], 10, shards_per_client=2, seed=0)
    with pytest.raises(ValueError, match="shards_per_client must be positive"):
        shards(_labels(10), 2, shards_per_client=0, seed=0)


def test_shards_is_deterministic_in_seed() -> None:
    labels = _labels(100)
    assert _same(shards(labels, 10, seed=4), shards(labels, 10, seed=4))
    assert not _same(shards(labels, 10, seed=4), shards(labels, 10, seed=5))


# --- dirichlet ---------------------------------------------------------------


def test_dirichlet_large_alpha_is_close_to_iid() -> None:
    labels = _labels(1000)
    p = dirichlet(labels, 10, alpha=1e6, seed=0)
    _assert_exactly_once(p, len(labels))
    shares = _label_shares(p, labels, 10)
    total_variation = 0.5 * np.abs(shares - 0.1).sum(axis=1)
    assert total_variation.max() < 0.1


def test_dirichlet_small_alpha_is_concentrated() -> None:
    labels = _labels(500)
    p = dirichlet(labels, 20, alpha=0.05, seed=0)
    _assert_exactly_once(p, len(labels))
    assert p.sizes().min() >= 1
    assert _label_shares(p, labels, 10).max(axis=1).mean() > 0.6


def test_dirichlet_respects_min_size_and_is_deterministic() -> None:
    labels = _labels(200)
    p = dirichlet(labels, 10, alpha=0.5, seed=7, min_size=20)
    assert p.sizes().min() >= 20
    assert _same(p, dirichlet(labels, 10, alpha=0.5, seed=7, min_size=20))
    assert not _same(p, dirichlet(labels, 10, alpha=0.5, seed=8, min_size=20))


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    # Only an exactly equal split satisfies min_size; alpha=1e-3 never draws one.
    with pytest.raises(ValueError, match="no draw out of 1000"):
        dirichlet(np.zeros(100, dtype=np.int64), 10, alpha=1e-3, seed=0, min_size=10)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be a positive finite number"):
        dirichlet(_labels(10), 5, alpha=alpha, seed=0)


def test_dirichlet_rejects_impossible_min_size() -> None:
    with pytest.raises(ValueError, match="min_size=11 for 10 clients needs 110"):
        dirichlet(_labels(10), 10, alpha=1.0, seed=0, min_size=11)


# --- quantity_skew -----------------------------------------------------------


def test_quantity_skew_sizes_vary_and_cover() -> None:
    labels = _labels(500)
    p = quantity_skew(labels, 20, seed=0, sigma=1.0, min_size=5)
    _assert_exactly_once(p, len(labels))
    sizes = p.sizes()
    assert sizes.min() >= 5
    assert sizes.max() > 3 * sizes.min()
    assert _same(p, quantity_skew(labels, 20, seed=0, sigma=1.0, min_size=5))


def test_quantity_skew_sigma_zero_is_equal_sizes() -> None:
    p = quantity_skew(_labels(100), 7, seed=0, sigma=0.0)
    assert p.sizes().max() - p.sizes().min() <= 1


def test_quantity_skew_with_a_large_sigma_still_deals_every_example() -> None:
    # lognormal weights of sigma 1000 overflow float64; their shares must not
    labels = _labels(1000)
    p = quantity_skew(labels, 10, seed=0, sigma=1000.0)
    _assert_exactly_once(p, len(labels))
    assert p.sizes().min() >= 1 and p.sizes().max() > 0.9 * len(labels)


def test_quantity_skew_rejects_bad_sigma() -> None:
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        quantity_skew(_labels(10), 5, seed=0, sigma=-1.0)


# --- natural -----------------------------------------------------------------


def test_natural_groups_by_key_in_sorted_order() -> None:
    keys = np.array([10, 2, 10, 7, 2, 2])
    p = natural(keys)
    _assert_exactly_once(p, len(keys))
    assert p.client_ids == ("2", "7", "10")
    assert [p.client_indices(i).tolist() for i in range(3)] == [[1, 4, 5], [3], [0, 2]]


def test_natural_with_string_keys() -> None:
    p = natural(np.array(["bob", "al", "bob"]))
    assert p.client_ids == ("al", "bob")
    assert p.sizes().tolist() == [1, 2]


# --- common validation and properties ----------------------------------------

_PARTITIONERS = {
    "iid": lambda labels, k, seed: iid(labels, k, seed=seed),
    "shards": lambda labels, k, seed: shards(labels, k, seed=seed),
    "dirichlet": lambda labels, k, seed: dirichlet(labels, k, alpha=1.0, seed=seed),
    "quantity_skew": lambda labels, k, seed: quantity_skew(labels, k, seed=seed),
}


@pytest.mark.parametrize("name", sorted(_PARTITIONERS))
def test_bad_num_clients(name: str) -> None:
    partitioner = _PARTITIONERS[name]
    with pytest.raises(ValueError, match="num_clients must be positive, got 0"):
        partitioner(_labels(10), 0, 0)
    with pytest.raises(ValueError, match="num_clients must be positive, got -3"):
        partitioner(_labels(10), -3, 0)
    with pytest.raises(ValueError, match="num_clients=101 is more than the 100"):
        partitioner(_labels(10), 101, 0)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        partitioner(np.zeros((4, 4), dtype=np.int64), 2, 0)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 300),
    clients=st.integers(1, 20),
    classes=st.integers(1, 5),
    seed=st.integers(0, 2**31),
)
def test_every_partitioner_assigns_each_example_at_most_once(
    n: int, clients: int, classes: int, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, classes, n)
    clients = min(clients, n)
    for name, partitioner in _PARTITIONERS.items():
        if name == "shards" and n < 2 * clients:
            continue  # fewer examples than shards: an error, tested above
        if name == "dirichlet" and n < 10 * clients:
            continue  # a non-empty draw for every client would be too rare
        p = partitioner(labels, clients, seed)
        assert len(p) == clients
        if name == "shards":
            _assert_at_most_once(p, n)
            assert len(p.indices) == n - n % (2 * clients)
        else:
            _assert_exactly_once(p, n)
            assert p.sizes().min() >= 1
