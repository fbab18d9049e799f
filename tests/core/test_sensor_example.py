"""The sensor example runs and agrees with numpy (it asserts so itself)."""

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "sensor_mean.py"


def test_sensor_mean_example(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "match:              yes" in capsys.readouterr().out
