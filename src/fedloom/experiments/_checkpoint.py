"""Checkpoints as safetensors + JSON, written atomically, verified on load.

A checkpoint directory holds two files:

* ``checkpoint-<round>-<hash>.safetensors``: the tensors (no pickle);
* ``checkpoint.json``: ``{"format": 1, "tensors": <file name>, "sha256": ...,
  "size": ..., "meta": {...}}``.

Each file is written to a temporary file in the same directory, fsynced, and moved
into place with ``os.replace``. The tensors file has a new name each time and is
moved first; ``checkpoint.json``, which names it, is replaced last and older tensor
files are deleted only after that. A crash at any point therefore leaves either the
old checkpoint or the new one, never a JSON that points at the wrong tensors.

Example:
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = save_checkpoint(Path(tmp), {"w": torch.ones(2)}, {"round": 3})
    ...     tensors, meta = load_checkpoint(Path(tmp))
    >>> meta, tensors["w"].tolist()
    ({'round': 3}, [1.0, 1.0])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _load_safetensors
from safetensors.torch import save_file as _save_safetensors_file

from ._files import file_mode, fsync_directory, temporary_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_INDEX",
    "CheckpointError",
    "has_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1
"""The version of the ``checkpoint.json`` layout written by :func:`save_checkpoint`."""

CHECKPOINT_INDEX = "checkpoint.json"
"""The name of the JSON file that names and describes the current checkpoint."""

_TENSORS_PATTERN = re.compile(r"^checkpoint(-\d+)?-[0-9a-f]{16}\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or cannot be written."""


def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a ``checkpoint.json`` (it may still be corrupt)."""
    return (Path(directory) / CHECKPOINT_INDEX).is_file()


@contextlib.contextmanager
def _temporary_path(directory: Path, suffix: str) -> Iterator[Path]:
    """A fresh temporary file name in ``directory``, removed unless moved away."""
    handle, name = temporary_file(directory, ".checkpoint-", suffix)
    os.close(handle)
    path = Path(name)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies that share no memory (as safetensors needs)."""
    prepared: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise CheckpointError(f"tensor names must be strings (got {name!r})")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor"
            )
        prepared[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return prepared


def save_checkpoint(
    directory: str | Path,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> Path:
    """Atomically write ``tensors`` and JSON-compatible ``meta`` into ``directory``.

    ``meta`` holds everything that is not a tensor (round, RNG seeds, optimizer
    step counts, ...); if it has an integer ``"round"`` that round is part of the
    tensors file name. Non-finite floats in ``meta`` are rejected. Returns the path
    of ``checkpoint.json``. Older tensor files in ``directory`` are deleted.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(tensors)
    try:
        meta_text = json.dumps(dict(meta), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint meta is not JSON-compatible: {exc}"
        ) from None
    round_number = meta.get("round")
    round_part = (
        f"-{round_number:06d}"
        if isinstance(round_number, int)
        and not isinstance(round_number, bool)
        and round_number >= 0
        else ""
    )
    index_path = directory / CHECKPOINT_INDEX

    with _temporary_path(directory, ".safetensors") as temporary:
        _save_safetensors_file(prepared, str(temporary))  # made anew, owner-only
        os.chmod(temporary, file_mode())
        _fsync_file(temporary)
        sha256 = _sha256(temporary)
        size = temporary.stat().st_size
        tensors_name = f"checkpoint{round_part}-{sha256[:16]}.safetensors"
        os.replace(temporary, directory / tensors_name)
    # The tensors file must be durable before the index that names it.
    fsync_directory(directory)

    index = {
        "format": CHECKPOINT_FORMAT,
        "tensors": tensors_name,
        "sha256": sha256,
        "size": size,
        "meta": json.loads(meta_text),
    }
    with _temporary_path(directory, ".json") as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(index, file, indent=2, sort_keys=True, allow_nan=False)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, index_path)
    fsync_directory(directory)

    for old in directory.iterdir():
        if old.name != tensors_name and _TENSORS_PATTERN.match(old.name):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    return index_path


def _read_index(index_path: Path) -> dict[str, Any]:
    try:
        text = index_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{index_path}: no checkpoint (file not found)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index_path}: cannot read checkpoint: {exc}") from None
    try:
        index = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index_path}: corrupt checkpoint JSON: {exc}") from None
    if not isinstance(index, dict):
        raise CheckpointError(f"{index_path}: corrupt checkpoint JSON: not an object")
    if index.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{index_path}: unsupported checkpoint format {index.get('format')!r} "
            f"(expected {CHECKPOINT_FORMAT})"
        )
    expected_types = {"tensors": str, "sha256": str, "size": int, "meta": dict}
    for key, kind in expected_types.items():
        if not isinstance(index.get(key), kind):
            raise CheckpointError(
                f"{index_path}: corrupt checkpoint JSON: {key!r} is missing or not "
                f"a {kind.__name__}"
            )
    if not _TENSORS_PATTERN.match(index["tensors"]):
        raise CheckpointError(
            f"{index_path}: corrupt checkpoint JSON: bad tensors file name "
            f"{index['tensors']!r}"
        )
    return index


def load_checkpoint(
    directory: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify the checkpoint in ``directory``: ``(tensors, meta)``.

    Tensors come back on the CPU, bit-identical to those saved, dtype included.
    Raises :class:`CheckpointError` naming the file if anything is missing,
    truncated, altered or unreadable.
    """
    directory = Path(directory)
    index = _read_index(directory / CHECKPOINT_INDEX)
    tensors_path = directory / index["tensors"]
    try:
        data = tensors_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"{tensors_path}: checkpoint tensors file not found"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{tensors_path}: cannot read: {exc}") from None
    if len(data) != index["size"]:
        raise CheckpointError(
            f"{tensors_path}: truncated or altered checkpoint "
            f"({len(data)} bytes, expected {index['size']})"
        )
    if hashlib.sha256(data).hexdigest() != index["sha256"]:
        raise CheckpointError(
            f"{tensors_path}: corrupt checkpoint (SHA-256 does not match "
            f"{CHECKPOINT_INDEX})"
        )
    try:
        tensors = _load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f"{tensors_path}: unreadable safetensors: {exc}"
        ) from None
    return tensors, index["meta"]
