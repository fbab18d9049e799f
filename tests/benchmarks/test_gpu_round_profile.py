"""benchmarks/gpu_round_profile.py: the GPU's busy time counts only its own events,
overlapping ones once."""

import sys
from pathlib import Path
from types import SimpleNamespace

from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from gpu_round_profile import _gpu_busy_s


def _event(start: float, end: float, device: DeviceType) -> SimpleNamespace:
    span = SimpleNamespace(start=start, end=end)
    return SimpleNamespace(time_range=span, device_type=device)


def test_the_busy_time_is_the_union_of_the_gpu_events():
    cuda, cpu = DeviceType.CUDA, DeviceType.CPU
    events = [
        _event(0, 1_000_000, cpu),  # an operator's span: not the GPU's
        _event(300, 500, cuda),
        _event(100, 400, cuda),  # overlaps the one above by 100 µs
        _event(450, 480, cuda),  # inside it
        _event(600, 700, cuda),
    ]
    prof = SimpleNamespace(events=lambda: events)
    busy, summed, count = _gpu_busy_s(prof)
    assert count == 4
    assert abs(busy - 500e-6) < 1e-12  # 100..500 and 600..700
    assert abs(summed - 630e-6) < 1e-12
