"""Tests for the metrics.jsonl log: append, read, truncate, NaN handling."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedloom.experiments._metrics_log import MetricsLog, MetricsLogError


def test_append_and_read(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    assert log.read() == []
    records: list[dict[str, Any]] = [
        {"round": 1, "train_loss": 2.5, "bytes_up": 1024, "note": "a"},
        {"round": 2, "train_loss": 1.25, "test_accuracy": 0.5, "ok": True},
    ]
    for record in records:
        log.append(record)
    assert log.read() == records
    lines = log.path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == records


def test_non_finite_floats_are_written_as_null(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(
        {"round": 1, "loss": math.nan, "up": math.inf, "down": -math.inf, "x": [1.0]}
    )
    text = log.path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert log.read() == [
        {"round": 1, "loss": None, "up": None, "down": None, "x": [1.0]}
    ]


def test_numpy_and_torch_scalars(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(
        {
            "round": np.int64(3),
            "acc": np.float32(0.5),
            "loss": torch.tensor(0.25),
            "nan": np.float64("nan"),
        }
    )
    assert log.read() == [{"round": 3, "acc": 0.5, "loss": 0.25, "nan": None}]
    with pytest.raises(TypeError, match=r"record\.bad"):
        log.append({"bad": torch.ones(2)})
    with pytest.raises(TypeError, match=r"record\.obj"):
        log.append({"obj": object()})
    assert len(log.read()) == 1


def test_truncate_after(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for round_number in range(1, 6):
        log.append({"round": round_number, "loss": 1.0 / round_number})
    assert log.truncate_after(3) == 2
    assert [record["round"] for record in log.read()] == [1, 2, 3]
    assert log.truncate_after(3) == 0
    log.append({"round": 4})
    assert [record["round"] for record in log.read()] == [1, 2, 3, 4]
    assert log.truncate_after(0) == 4
    assert log.read() == []
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_truncate_missing_file(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.truncate_after(3) == 0
    assert not log.path.exists()


def test_torn_last_line_is_ignored_and_repaired(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"round": 1})
    with open(log.path, "a") as file:
        file.write('{"round": 2, "lo')  # a crash in the middle of a write
    assert log.read() == [{"round": 1}]
    log.append({"round": 2})
    assert log.read() == [{"round": 1}, {"round": 2}]
    with open(log.path, "a") as file:
        file.write('{"round": 3, "lo')
    assert log.truncate_after(5) == 0
    assert log.path.read_text() == '{"round": 1}\n{"round": 2}\n'


def test_corrupt_middle_line_raises(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\nnot json\n{"round": 3}\n')
    with pytest.raises(MetricsLogError, match=r"metrics\.jsonl:2"):
        MetricsLog(path).read()
    path.write_text('{"round": 1}\n[1, 2]\n')
    with pytest.raises(MetricsLogError, match="not a JSON object"):
        MetricsLog(path).read()
