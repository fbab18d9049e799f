"""Tensors on the wire: raw bytes in bounded chunks, rebuilt and checked on arrival.

A tensor travels as its C-contiguous little-endian bytes, cut into
:class:`TensorChunk` messages of at most ``chunk_bytes`` bytes, each naming the
tensor, its dtype and shape. The receiver knows what it expects (a *template*:
the model's parameters) and rebuilds tensors with a :class:`TensorAssembler`, which
refuses an unknown name, another dtype or shape, a chunk out of order or past the
end, and, at the end, a missing tensor or a NaN or infinity. No pickle, no code.

Example:
    >>> import torch
    >>> params = {"w": torch.arange(6.0).reshape(2, 3)}
    >>> assembler = TensorAssembler(params)
    >>> for chunk in tensor_chunks(params, chunk_bytes=8):
    ...     assembler.add(chunk)
    >>> assembler.finish()["w"].tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping

import torch

from ._proto import deploy_pb2 as pb

__all__ = [
    "DTYPES",
    "TensorAssembler",
    "WireError",
    "count_chunks",
    "dtype_name",
    "tensor_chunks",
]

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships on
    raise ImportError("fedloom.deploy sends raw little-endian tensor bytes")

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class WireError(ValueError):
    """A message that does not match what the receiver expects."""


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of ``dtype`` (``"float32"``...); other dtypes are refused."""
    if dtype not in _NAMES:
        raise WireError(f"dtype {dtype} cannot be sent; use one of {sorted(DTYPES)}")
    return _NAMES[dtype]


def _raw(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def count_chunks(tensors: Mapping[str, torch.Tensor], chunk_bytes: int) -> int:
    """How many chunks :func:`tensor_chunks` yields for ``tensors``."""
    return sum(
        max(1, math.ceil(t.numel() * t.element_size() / chunk_bytes))
        for t in tensors.values()
    )


def tensor_chunks(
    tensors: Mapping[str, torch.Tensor], chunk_bytes: int
) -> Iterator[pb.TensorChunk]:
    """``tensors`` as chunks of at most ``chunk_bytes`` bytes of data each."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    for name, tensor in tensors.items():
        data = _raw(tensor)
        dtype, shape = dtype_name(tensor.dtype), list(tensor.shape)
        for offset in range(0, max(len(data), 1), chunk_bytes):
            piece = data[offset : offset + chunk_bytes]
            yield pb.TensorChunk(
                name=name, dtype=dtype, shape=shape, offset=offset, data=piece
            )


class TensorAssembler:
    """Rebuild the tensors of ``template`` from chunks, checking every chunk.

    ``template`` names every tensor expected, with the dtype and shape each must
    have. :meth:`add` raises :class:`WireError` on the first chunk that does not
    fit; :meth:`finish` returns the tensors once all have arrived, whole and finite.
    At most the template's size is ever buffered.
    """

    def __init__(self, template: Mapping[str, torch.Tensor]) -> None:
        self._expected = {
            name: (dtype_name(t.dtype), tuple(t.shape), t.numel() * t.element_size())
            for name, t in template.items()
        }
        self._buffers: dict[str, bytearray] = {}
        self.bytes_received = 0

    def add(self, chunk: pb.TensorChunk) -> None:
        """Append one chunk; it must continue its tensor where the last one ended."""
        expected = self._expected.get(chunk.name)
        if expected is None:
            raise WireError(f"unexpected tensor {chunk.name[:100]!r}")
        dtype, shape, size = expected
        if chunk.dtype != dtype or tuple(chunk.shape) != shape:
            raise WireError(
                f"tensor {chunk.name!r} has dtype {chunk.dtype[:20]!r} and shape "
                f"{tuple(chunk.shape)[:8]}, expected {dtype!r} and {shape}"
            )
        buffer = self._buffers.setdefault(chunk.name, bytearray())
        if chunk.offset != len(buffer):
            raise WireError(
                f"tensor {chunk.name!r}: chunk at offset {chunk.offset}, "
                f"expected {len(buffer)}"
            )
        if len(buffer) + len(chunk.data) > size:
            raise WireError(
                f"tensor {chunk.name!r}: {len(buffer) + len(chunk.data)} bytes, "
                f"more than its {size}"
            )
        buffer.extend(chunk.data)
        self.bytes_received += len(chunk.data)

    def finish(self) -> dict[str, torch.Tensor]:
        """The tensors, once every one is complete and holds no NaN or infinity."""
        tensors: dict[str, torch.Tensor] = {}
        for name, (dtype, shape, size) in self._expected.items():
            buffer = self._buffers.get(name, bytearray())
            if len(buffer) != size:
                raise WireError(
                    f"tensor {name!r} is incomplete: {len(buffer)} of {size} bytes"
                )
            if size == 0:
                tensor = torch.empty(shape, dtype=DTYPES[dtype])
            else:
                tensor = torch.frombuffer(buffer, dtype=DTYPES[dtype]).reshape(shape)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise WireError(f"tensor {name!r} contains NaN or infinity")
            tensors[name] = tensor
        self._buffers.clear()
        return tensors
