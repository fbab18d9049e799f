"""Examples, Dataset and ClientData: row selection, lookup by id/position, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom.data import (
    ClientData,
    Dataset,
    ExampleRows,
    Examples,
    Partition,
    load_dataset,
)


def _block(n: int = 6) -> Examples:
    """Example i has features [i, 10 i] and label i % 3."""
    x = torch.stack([torch.arange(n, dtype=torch.float32), 10.0 * torch.arange(n)], 1)
    return Examples(x, torch.arange(n) % 3)


def _population() -> ClientData:
    return ClientData(
        _block(), Partition(("a", "b", "c"), [0, 2, 2, 6], [5, 1, 0, 2, 3, 4])
    )


# --- Examples and Dataset ----------------------------------------------------


def test_examples_select_by_tensor_array_and_mask() -> None:
    block = _block()
    assert len(block) == 6
    assert block.select(torch.tensor([4, 1])).x[:, 0].tolist() == [4.0, 1.0]
    assert block.select(np.array([3, 0])).y.tolist() == [0, 0]
    mask = np.array([True, False, False, True, False, True])
    assert block.select(mask).x[:, 0].tolist() == [0.0, 3.0, 5.0]
    assert block.select(torch.tensor([-1])).x[:, 0].tolist() == [5.0]
    assert len(block.select(np.zeros(0, dtype=np.int64))) == 0


def test_examples_select_rejects_bad_indices() -> None:
    with pytest.raises(IndexError, match="out of range for 6 examples"):
        _block().select(torch.tensor([6]))
    with pytest.raises(TypeError, match="integers or booleans"):
        _block().select(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="must be 1-D"):
        _block().select(torch.zeros(2, 2, dtype=torch.int64))


def test_examples_validate_dtypes_and_lengths() -> None:
    with pytest.raises(ValueError, match="must be float32"):
        Examples(
            torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.int64)
        )
    with pytest.raises(ValueError, match="must be int64"):
        Examples(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="first dimensions must agree"):
        Examples(torch.zeros(3, 3), torch.zeros(2, dtype=torch.int64))


def test_examples_to_a_device_keeps_them_and_is_free_when_there() -> None:
    block = _block()
    assert block.to("cpu") is block
    meta = block.to("meta")
    assert meta.x.device.type == meta.y.device.type == "meta"
    assert meta.x.shape == block.x.shape and meta.y.dtype == torch.int64


def test_dataset_validates_input_shape_and_keys() -> None:
    block = _block()
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        Dataset("toy", block, block, num_classes=3, input_shape=(3,))
    with pytest.raises(ValueError, match="one key per train example"):
        Dataset("toy", block, block, 3, (2,), client_keys=np.zeros(5))


# --- ClientData --------------------------------------------------------------


def test_client_by_id_and_position_returns_the_right_rows() -> None:
    data = _population()
    assert len(data) == 3
    assert data.client_ids == ("a", "b", "c")
    assert data.sizes.tolist() == [2, 0, 4]
    assert data.sizes.dtype == np.int64
    a = data.client("a")
    assert a.x[:, 0].tolist() == [5.0, 1.0] and a.y.tolist() == [2, 1]
    c_by_id, c_by_position = data.client("c"), data.client(2)
    assert torch.equal(c_by_id.x, c_by_position.x)
    assert torch.equal(c_by_id.y, c_by_position.y)
    assert c_by_id.x[:, 1].tolist() == [0.0, 20.0, 30.0, 40.0]
    assert len(data.client("b")) == 0
    assert torch.equal(data.client(-1).y, c_by_id.y)
    assert torch.equal(data.client(np.int64(0)).y, a.y)


def test_a_clients_rows_are_gathered_when_first_read() -> None:
    data = _population()
    c = data.client("c")
    assert isinstance(c, ExampleRows) and c.source is data.examples
    assert "x" not in vars(c) and "y" not in vars(c) and len(c) == 4
    expected = data.examples.select(torch.tensor([0, 2, 3, 4]))
    assert torch.equal(c.x, expected.x) and torch.equal(c.y, expected.y)
    assert "x" in vars(c)  # read once, kept
    picked = c.select(torch.tensor([-1, 1]))  # rows of rows: still of the block
    assert isinstance(picked, ExampleRows) and picked.rows.tolist() == [4, 2]
    assert torch.equal(picked.x, expected.select(torch.tensor([3, 1])).x)
    with pytest.raises(IndexError, match="out of range for 4 examples"):
        c.select(torch.tensor([4]))
    with pytest.raises(IndexError, match="rows out of range for 6 examples"):
        ExampleRows(data.examples, torch.tensor([6]))
    assert repr(c) == "ExampleRows(4 of 6 examples)"


def test_client_errors_are_clear() -> None:
    data = _population()
    with pytest.raises(KeyError, match=r"unknown client id 'z'.*3 clients"):
        data.client("z")
    with pytest.raises(IndexError, match="position 3 out of range for 3 clients"):
        data.client(3)
    with pytest.raises(TypeError, match="client id \\(str\\) or a position"):
        data.client(1.0)


def test_client_data_rejects_partition_beyond_examples() -> None:
    with pytest.raises(ValueError, match="refers to example 9 but there are only 6"):
        ClientData(_block(), Partition(("a",), [0, 1], [9]))


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


@pytest.mark.parametrize(
    ("partition", "options"),
    [
        ("iid", {}),
        ("shards", {"shards_per_client": 3}),
        ("dirichlet", {"alpha": 0.3}),
        ("quantity_skew", {"sigma": 0.5, "min_size": 4}),
    ],
)
def test_from_dataset_with_each_partitioner(
    digits: Dataset, partition: str, options: dict[str, float]
) -> None:
    data = ClientData.from_dataset(digits, partition, 12, seed=1, **options)
    assert len(data) == 12
    assert data.client_ids == tuple(str(i) for i in range(12))
    rows = data.partition.client_indices(5)
    assert torch.equal(
        data.client("5").x, digits.train.x[torch.from_numpy(rows.copy())]
    )
    again = ClientData.from_dataset(digits, partition, 12, seed=1, **options)
    assert np.array_equal(again.partition.indices, data.partition.indices)


def test_from_dataset_shards_per_client_reaches_the_partitioner(
    digits: Dataset,
) -> None:
    data = ClientData.from_dataset(digits, "shards", 10, seed=0, shards_per_client=3)
    per_shard = len(digits.train) // 30
    assert np.all(data.sizes == 3 * per_shard)


def test_from_dataset_unknown_partition_lists_valid_ones(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="unknown partition 'pathological'") as error:
        ClientData.from_dataset(digits, "pathological", 10, seed=0)
    for name in ("iid", "shards", "dirichlet", "quantity_skew", "natural"):
        assert repr(name) in str(error.value)


def test_from_dataset_unknown_option_is_a_type_error(digits: Dataset) -> None:
    with pytest.raises(TypeError, match="alpha"):
        ClientData.from_dataset(digits, "iid", 10, seed=0, alpha=0.1)


def test_from_dataset_natural(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="has no client_keys"):
        ClientData.from_dataset(digits, "natural", 10, seed=0)
    synthetic = load_dataset("synthetic", seed=0, num_clients=8)
    data = ClientData.from_dataset(synthetic, "natural", 8, seed=0)
    assert data.client_ids == tuple(str(k) for k in range(8))
    assert int(data.sizes.sum()) == len(synthetic.train)
    assert data.sizes.tolist() == np.bincount(synthetic.client_keys).tolist()
    subset = ClientData.from_dataset(synthetic, "natural", 3, seed=0)
    assert len(subset) == 3 and set(subset.client_ids) <= set(data.client_ids)
    for cid in subset.client_ids:
        assert torch.equal(subset.client(cid).x, data.client(cid).x)
    with pytest.raises(ValueError, match=r"num_clients must be in 1\.\.8"):
        ClientData.from_dataset(synthetic, "natural", 9, seed=0)
