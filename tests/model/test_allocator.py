"""minivit.allocator: freed activation memory stays in the process (no page
faults from one step to the next), and user MALLOC_* settings win."""
import resource

import numpy as np

import minivit
from minivit.allocator import release_freed_memory, retain_freed_memory


def test_user_malloc_settings_win():
    assert retain_freed_memory({"MALLOC_TRIM_THRESHOLD_": "0"}) is False
    assert retain_freed_memory({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False


def test_reallocating_a_freed_activation_takes_no_page_faults():
    assert minivit.RETAINS_FREED_MEMORY       # set at import (glibc: the CI machine)
    shape = (1024, 2048)                      # 8 MiB, above glibc's default mmap threshold

    def step():
        a = np.ones(shape, np.float32)        # touches every page
        b = np.ones(shape, np.float32)
        return float(a[0, 0] + b[-1, -1])
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # with the pages going back to the OS: 3,096 faults (measured, MALLOC_MMAP_THRESHOLD_=65536)
    assert faults < 500, faults
    release_freed_memory()                    # callable at any time, no error
