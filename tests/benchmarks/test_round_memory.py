"""benchmarks/round_memory.py: the heap in use counts live tensors, not memory
freed, and the sampler catches a peak that is gone by the time it stops."""

import sys
import time
from pathlib import Path

import pytest
import torch

if not sys.platform.startswith("linux"):
    pytest.skip("glibc's mallinfo2: Linux only", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from round_memory import PeakSampler, heap_in_use

MIB = 2**20


def test_the_heap_in_use_grows_by_a_live_tensor_and_shrinks_when_it_is_freed():
    before = heap_in_use()
    tensor = torch.ones(16 * MIB // 4)  # 16 MiB of float32
    held = heap_in_use()
    del tensor
    after = heap_in_use()
    assert held - before >= 16 * MIB
    assert held - after >= 16 * MIB


def test_the_sampler_keeps_a_peak_that_has_passed():
    sampler = PeakSampler()
    sampler.start()
    before = heap_in_use()
    tensor = torch.ones(32 * MIB // 4)
    time.sleep(0.05)  # some reads of the sampler's while it is held
    del tensor
    peak = sampler.stop()
    assert peak - before >= 32 * MIB
    assert peak - heap_in_use() >= 32 * MIB
