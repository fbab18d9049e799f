"""Tensors on the wire: chunked, rebuilt, and checked against what is expected."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.deploy._proto import deploy_pb2 as pb
from fedloom.deploy._wire import (
    DTYPES,
    TensorAssembler,
    WireError,
    count_chunks,
    dtype_name,
    tensor_chunks,
)

TEMPLATE = {"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.float64)}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_dtype_round_trips_bit_for_bit(dtype: str) -> None:
    tensor = (torch.arange(12) - 5).reshape(3, 4).to(DTYPES[dtype])
    assembler = TensorAssembler({"t": tensor})
    for chunk in tensor_chunks({"t": tensor}, chunk_bytes=5):
        assembler.add(chunk)
    assert torch.equal(assembler.finish()["t"], tensor)


@given(st.integers(1, 100))
@settings(max_examples=30, deadline=None)
def test_any_chunk_size_round_trips(chunk_bytes: int) -> None:
    tensors = {"w": torch.randn(3, 4), "b": torch.randn(4, dtype=torch.float64)}
    chunks = list(tensor_chunks(tensors, chunk_bytes))
    assert len(chunks) == count_chunks(tensors, chunk_bytes)
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    assembler = TensorAssembler(tensors)
    for chunk in chunks:
        assembler.add(chunk)
    got = assembler.finish()
    assert all(torch.equal(got[k], v) for k, v in tensors.items())


def test_empty_tensors_travel_as_one_empty_chunk() -> None:
    tensors = {"e": torch.zeros(0, 3)}
    (chunk,) = tensor_chunks(tensors, 8)
    assembler = TensorAssembler(tensors)
    assembler.add(chunk)
    assert assembler.finish()["e"].shape == (0, 3)


def _chunk(**fields: object) -> pb.TensorChunk:
    base: dict[str, object] = {"name": "w", "dtype": "float32", "shape": [3, 4]}
    return pb.TensorChunk(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (_chunk(name="x"), "unexpected tensor 'x'"),
        (_chunk(dtype="float64"), "expected 'float32'"),
        (_chunk(shape=[4, 3]), "shape (4, 3)"),
        (_chunk(offset=4, data=bytes(4)), "offset 4, expected 0"),
        (_chunk(data=bytes(49)), "49 bytes, more than its 48"),
    ],
)
def test_a_chunk_that_does_not_fit_is_refused(
    chunk: pb.TensorChunk, message: str
) -> None:
    with pytest.raises(WireError) as caught:
        TensorAssembler(TEMPLATE).add(chunk)
    assert message in str(caught.value)


def test_missing_and_incomplete_tensors_are_refused() -> None:
    assembler = TensorAssembler(TEMPLATE)
    assembler.add(_chunk(data=bytes(40)))
    with pytest.raises(WireError, match="'w' is incomplete: 40 of 48 bytes"):
        assembler.finish()


def test_nan_and_infinity_are_refused() -> None:
    for bad in (float("nan"), float("inf")):
        tensors = {"w": torch.tensor([1.0, bad])}
        assembler = TensorAssembler(tensors)
        for chunk in tensor_chunks(tensors, 64):
            assembler.add(chunk)
        with pytest.raises(WireError, match="NaN or infinity"):
            assembler.finish()


def test_unsupported_dtypes_are_named() -> None:
    with pytest.raises(WireError, match="complex64 cannot be sent"):
        dtype_name(torch.complex64)
