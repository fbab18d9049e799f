"""Tests for checkpoints: bit-exact round trips, corruption detection, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from fedloom.experiments import _checkpoint
from fedloom.experiments._checkpoint import (
    CHECKPOINT_INDEX,
    CheckpointError,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def sample_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "w32": torch.randn(3, 4, generator=generator),
        "w64": torch.randn(5, generator=generator, dtype=torch.float64),
        "steps": torch.tensor([2**62 + 1, -7, 0], dtype=torch.int64),
        "scalar": torch.tensor(1.0 / 3.0, dtype=torch.float64),
        "empty": torch.zeros(0, 2),
        "mask": torch.tensor([True, False]),
        "half": torch.randn(2, generator=generator).to(torch.bfloat16),
    }


def assert_bit_identical(
    loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name


def tensors_file(directory: Path) -> Path:
    index = json.loads((directory / CHECKPOINT_INDEX).read_text())
    return directory / index["tensors"]


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    tensors = sample_tensors()
    meta = {"round": 12, "seed": 3, "history": [0.5, 0.25], "name": "fedavg"}
    index_path = save_checkpoint(tmp_path / "run", tensors, meta)
    assert index_path == tmp_path / "run" / CHECKPOINT_INDEX
    assert has_checkpoint(tmp_path / "run")
    loaded, loaded_meta = load_checkpoint(tmp_path / "run")
    assert_bit_identical(loaded, tensors)
    assert loaded_meta == meta
    assert tensors_file(tmp_path / "run").name.startswith("checkpoint-000012-")


def test_non_contiguous_and_shared_tensors(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"t": base.t(), "view": base[1], "same": base}
    save_checkpoint(tmp_path, tensors, {})
    loaded, meta = load_checkpoint(tmp_path)
    assert meta == {}
    assert_bit_identical(loaded, {k: v.contiguous() for k, v in tensors.items()})


def test_saving_again_replaces_and_cleans_up(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, sample_tensors(0), {"round": 1})
    save_checkpoint(tmp_path, sample_tensors(1), {"round": 2})
    save_checkpoint(tmp_path, sample_tensors(1), {"round": 2})  # same round again
    loaded, meta = load_checkpoint(tmp_path)
    assert meta == {"round": 2}
    assert_bit_identical(loaded, sample_tensors(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [CHECKPOINT_INDEX, tensors_file(tmp_path).name]
    )


def test_missing_checkpoint(tmp_path: Path) -> None:
    assert not has_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=CHECKPOINT_INDEX):
        load_checkpoint(tmp_path)


def test_missing_tensors_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, sample_tensors(), {"round": 1})
    path = tensors_file(tmp_path)
    path.unlink()
    with pytest.raises(CheckpointError, match=path.name):
        load_checkpoint(tmp_path)


def test_flipped_byte_is_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, sample_tensors(), {"round": 1})
    path = tensors_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"SHA-256") as info:
        load_checkpoint(tmp_path)
    assert path.name in str(info.value)


def test_truncated_tensors_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, sample_tensors(), {"round": 1})
    path = tensors_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(tmp_path)
    assert path.name in str(info.value)


def test_valid_hash_of_invalid_safetensors(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, sample_tensors(), {"round": 1})
    path = tensors_file(tmp_path)
    garbage = b"not a safetensors file"
    path.write_bytes(garbage)
    index_path = tmp_path / CHECKPOINT_INDEX
    index = json.loads(index_path.read_text())
    index["size"] = len(garbage)
    index["sha256"] = _checkpoint.hashlib.sha256(garbage).hexdigest()
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text[: len(text) // 2],
        lambda text: "[]",
        lambda text: text.replace('"format": 1', '"format": 2'),
        lambda text: text.replace('"sha256": "', '"sha256": "0'),
        lambda text: text.replace('"size": ', '"size": 1'),
        lambda text: text.replace('"tensors": "', '"tensors": "../'),
        lambda text: text.replace('"meta"', '"metadata"'),
    ],
)
def test_edited_json_is_detected(tmp_path: Path, edit: Any) -> None:
    save_checkpoint(tmp_path, sample_tensors(), {"round": 1})
    index_path = tmp_path / CHECKPOINT_INDEX
    index_path.write_text(edit(index_path.read_text()))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_unserializable_meta_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, sample_tensors(), {"loss": float("nan")})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, sample_tensors(), {"x": object()})
    with pytest.raises(CheckpointError, match=r"not a torch\.Tensor"):
        save_checkpoint(tmp_path, {"x": [1.0]}, {})  # type: ignore[dict-item]
    assert not has_checkpoint(tmp_path)


def test_failure_while_writing_tensors_keeps_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, sample_tensors(0), {"round": 1})

    def crash(tensors: dict[str, torch.Tensor], filename: str) -> None:
        Path(filename).write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint, "_save_safetensors_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, sample_tensors(1), {"round": 2})
    loaded, meta = load_checkpoint(tmp_path)
    assert meta == {"round": 1}
    assert_bit_identical(loaded, sample_tensors(0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failure_before_json_replace_keeps_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, sample_tensors(0), {"round": 1})
    real_replace = os.replace

    def replace_then_crash_on_json(src: Any, dst: Any) -> None:
        if str(dst).endswith(CHECKPOINT_INDEX):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(_checkpoint.os, "replace", replace_then_crash_on_json)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(tmp_path, sample_tensors(1), {"round": 2})
    monkeypatch.undo()
    loaded, meta = load_checkpoint(tmp_path)
    assert meta == {"round": 1}
    assert_bit_identical(loaded, sample_tensors(0))
    # The next successful save cleans up the orphaned tensors file.
    save_checkpoint(tmp_path, sample_tensors(2), {"round": 2})
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert_bit_identical(load_checkpoint(tmp_path)[0], sample_tensors(2))
