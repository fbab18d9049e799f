"""A reader for the IDX format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), then one big-endian uint32 per dimension, then the values in
row-major order, big-endian (http://yann.lecun.com/exdb/mnist/).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataFileError(ValueError):
    """A dataset's file is corrupt, truncated or not what it should be.

    An error about the data on disk, not about how it was asked for.

    Example:
        >>> issubclass(DataFileError, ValueError)
        True
    """


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into a read-only array.

    Raises DataFileError naming ``source`` on a bad magic number, an unknown type
    code, or a payload shorter or longer than the header announces.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])).tolist()
        [7, 8, 9]
    """
    if len(data) < 4:
        raise DataFileError(f"{source}: not an IDX file (only {len(data)} bytes)")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _TYPES:
        raise DataFileError(
            f"{source}: not an IDX file (bad magic number 0x{data[:4].hex()}; "
            "expected 0x0000 followed by a type code in "
            + ", ".join(f"0x{t:02x}" for t in _TYPES)
            + ")"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(
            f"{source}: truncated IDX header ({len(data)} bytes, need {header} "
            f"for {ndim} dimensions)"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    dtype = _TYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataFileError(
            f"{source}: IDX file {problem}: header announces shape {shape} "
            f"({expected} bytes in all) but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def gunzip(data: bytes, *, source: str = "<bytes>", limit: int | None = None) -> bytes:
    """Decompress gzip ``data``; a corrupt or truncated archive is a DataFileError,
    and so is one that would decompress to more than ``limit`` bytes (checked as
    it decompresses, so a small file cannot fill the memory).

    Example:
        >>> import gzip
        >>> gunzip(gzip.compress(b"idx"))
        b'idx'
    """
    parts: list[bytes] = []
    size = 0
    try:
        while data:  # a gzip file may hold several members, one after another
            member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            room = 0 if limit is None else limit + 1 - size  # 0: no bound
            parts.append(member.decompress(data, room))
            size += len(parts[-1])
            if limit is not None and size > limit:
                raise DataFileError(
                    f"{source}: decompresses to more than the {limit:,} bytes "
                    "expected; not the file it should be"
                )
            if not member.eof:
                raise EOFError("compressed file ended before the end-of-stream marker")
            data = member.unused_data
    except (EOFError, zlib.error) as error:
        message = f"{source}: corrupt or truncated gzip file ({error})"
        raise DataFileError(message) from None
    return b"".join(parts)


def read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it if its name ends in ``.gz``."""
    raw = path.read_bytes()
    return gunzip(raw, source=str(path)) if path.suffix == ".gz" else raw


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, plain or gzipped, into a read-only array.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 4, 2]))
        >>> read_idx(path).tolist()
        [4, 2]
    """
    return parse_idx(read_bytes(path), source=str(path))
