"""Tests for the learning-curve plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedloom.experiments._plots import plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_png(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [
        {
            "round": r,
            "train_loss": 2.0 / r,
            **(
                {"test_accuracy": 1 - 1 / (r + 1), "test_loss": 2.5 / r}
                if r % 2
                else {}
            ),
        }
        for r in range(1, 11)
    ]
    records[3]["train_loss"] = math.nan
    records.append({"round": 11, "train_loss": None, "test_accuracy": None})
    path = tmp_path / "plots" / "curves.png"
    plot_curves(records, path, title="digits / fedavg")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]


def test_plot_without_data(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    plot_curves([], path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    plot_curves([{"round": 1}], path)  # overwrite in place
    assert path.read_bytes().startswith(PNG_SIGNATURE)
