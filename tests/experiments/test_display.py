"""Tests for the progress display and the summary table."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from fedloom.experiments._display import (
    RoundDisplay,
    format_bytes,
    print_summary,
    summary_table,
)

RECORDS: list[dict[str, Any]] = [
    {"round": 1, "train_loss": 2.0, "seconds": 0.5, "bytes_up": 1024, "bytes_down": 10},
    {
        "round": 2,
        "train_loss": 1.5,
        "test_accuracy": 0.8,
        "test_loss": 0.7,
        "seconds": 0.75,
        "bytes_up": 1024,
        "bytes_down": 10,
    },
    {
        "round": 3,
        "train_loss": None,
        "test_accuracy": 0.91,
        "test_loss": 0.4,
        "seconds": 0.25,
        "bytes_up": 2048 * 1024,
        "bytes_down": 10,
    },
    {"round": 4, "test_accuracy": 0.9, "test_loss": 0.45, "seconds": 0.5},
]


def text_console(**kwargs: object) -> Console:
    return Console(file=io.StringIO(), width=120, **kwargs)  # type: ignore[arg-type]


def output(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_disabled_display_prints_nothing() -> None:
    console = text_console(force_terminal=True)
    with RoundDisplay(4, enabled=False, console=console) as display:
        for record in RECORDS:
            display.update(record)
    assert output(console) == ""


def test_disabled_display_default_console_is_silent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with RoundDisplay(4, enabled=False) as display:
        for record in RECORDS:
            display.update(record)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_non_terminal_prints_plain_lines_for_evaluated_rounds() -> None:
    console = text_console()
    with RoundDisplay(4, start_round=1, console=console) as display:
        for record in RECORDS[1:]:
            display.update(record)
    lines = output(console).splitlines()
    assert lines[0] == "round 2/4  acc 0.8000  test loss 0.7000  train loss 1.5000"
    assert lines[1].startswith("round 3/4  acc 0.9100") and "train loss nan" in lines[1]
    assert len(lines) == 3
    assert "\x1b" not in output(console)


def test_unevaluated_rounds_show_no_test_metrics() -> None:
    console = text_console()
    record = {"round": 1, "train_loss": 0.5, "test_loss": None, "test_accuracy": None}
    evaluated = {"round": 2, "train_loss": 0.4, "test_loss": None, "test_accuracy": 0.7}
    with RoundDisplay(2, console=console) as display:
        display.update(record)
        display.update(evaluated)
    assert output(console) == (
        "round 2/2  acc 0.7000  test loss nan  train loss 0.4000\n"
    )


def test_terminal_keeps_last_evaluation() -> None:
    console = text_console(force_terminal=True)
    with RoundDisplay(3, console=console) as display:
        display.update({"round": 1, "test_accuracy": 0.25, "train_loss": 1.0})
        display.update({"round": 2, "test_accuracy": None, "train_loss": 0.875})
    final = output(console).rsplit("\r", 1)[-1]
    assert "2/3" in final
    assert "acc 0.2500" in final and "train loss 0.8750" in final


def test_terminal_shows_progress_bar() -> None:
    console = text_console(force_terminal=True)
    with RoundDisplay(4, console=console) as display:
        for record in RECORDS:
            display.update(record)
    text = output(console)
    assert "4/4" in text and "acc 0.9000" in text


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
    assert format_bytes(2 * 1024**5) == "2048.0 TiB"


def test_summary_table() -> None:
    console = text_console()
    print_summary(
        RECORDS,
        {"dataset": "digits", "target_accuracy": 0.9, "alpha": None},
        console=console,
    )
    text = output(console)
    assert "digits" in text
    assert "alpha" not in text
    assert "0.9000 (round 4)" in text  # final
    assert "0.9100 (round 3)" in text  # best
    assert "reached at round 3" in text
    assert "2.0 KiB" not in text and "2.0 MiB" in text  # bytes up: 2 MiB + 2 KiB
    assert "30 B" in text  # bytes down
    assert "2.0" in text  # total seconds


def test_summary_without_evaluation_or_target() -> None:
    console = text_console()
    console.print(summary_table([{"round": 1}], {"target_accuracy": 0.99}))
    text = output(console)
    assert "n/a" in text and "not reached" in text
    console = text_console()
    console.print(summary_table([], {}))
    assert "target" not in output(console)


def test_print_summary_default_console(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary(RECORDS, {})
    assert "best accuracy" in capsys.readouterr().out
