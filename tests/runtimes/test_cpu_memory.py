"""Large freed blocks are reused instead of faulting in fresh pages every step."""

import resource

import pytest
import torch

from fedloom.runtimes import reuse_cpu_memory

SIZE = 16 * 2**20  # float32: 64 MiB, over glibc's 32 MiB mmap threshold
PAGES = SIZE * 4 // resource.getpagesize()


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_a_step_that_replaces_a_large_tensor_faults_no_fresh_pages():
    if not reuse_cpu_memory():
        pytest.skip("not glibc: nothing to tune")
    params = torch.ones(SIZE)
    for _ in range(4):  # the heap settles
        params = params + 1
    before = _faults()
    for _ in range(3):  # like a functional optimizer step: new from old, old freed
        params = params + 1
    # glibc's default unmaps each freed block: 3 x 16,384 faults; here next to none.
    assert _faults() - before < PAGES // 10
    assert float(params[0]) == 8.0
    assert reuse_cpu_memory() is True  # once is enough; later calls are free
