"""Idle clients cost nothing beyond their rows in the partition's index arrays."""

import tracemalloc

import numpy as np
import pytest
import torch

from fedloom.data import ClientData, Examples, PositionalIds, iid, quantity_skew


def test_a_large_population_holds_only_its_index_arrays():
    clients, examples = 200_000, 400_000
    y = torch.zeros(examples, dtype=torch.int64)
    block = Examples(torch.zeros(examples, 2), y)
    ClientData(block, iid(y.numpy(), 2, seed=0))  # first-use imports, not measured
    tracemalloc.start()
    try:
        population = ClientData(block, iid(y.numpy(), clients, seed=0))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # offsets (8 bytes a client) + indices (8 bytes an example), and a little more
    assert held < 8 * (clients + 1) + 8 * examples + 64 * 1024
    assert len(population) == clients
    assert population.client("199999").y.shape == (2,)
    assert population.client_ids[-1] == "199999"


def test_positional_ids_behave_like_a_tuple_of_strings():
    ids = PositionalIds(4)
    assert ids == ("0", "1", "2", "3")
    assert list(ids[1:3]) == ["1", "2"]
    assert "3" in ids and "4" not in ids and "01" not in ids and "-1" not in ids
    assert "\u00b2" not in ids and "\u0663" not in ids  # other digits: ², ٣
    assert ids.index("2") == 2
    strings = tuple(ids)
    for start, stop in [(0, 0), (3, 99), (-2, 99), (0, -2), (1, 3)]:
        for client in strings:
            try:
                expected = strings.index(client, start, stop)
            except ValueError:
                with pytest.raises(ValueError, match="is not a client id"):
                    ids.index(client, start, stop)
            else:
                assert ids.index(client, start, stop) == expected


def test_dealt_partitions_sort_each_client_and_cover_everything():
    labels = np.zeros(1000, dtype=np.int64)
    for partition in (iid(labels, 7, seed=1), quantity_skew(labels, 7, seed=1)):
        assert sorted(partition.indices.tolist()) == list(range(1000))
        for c in range(7):
            rows = partition.client_indices(c)
            assert np.all(np.diff(rows) > 0)
