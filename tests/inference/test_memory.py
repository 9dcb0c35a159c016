import sys

import numpy as np
import pytest

from napari_medseg.inference import memory


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_returns_freed_heap_memory_and_is_rate_limited():
    # many small-ish arrays (under glibc's mmap threshold) come from the heap; freed, they stay resident
    arrays = [np.ones(8 * 1024, dtype=np.float64) for _ in range(8000)]  # ~500 MB in 64 kB pieces
    keep = arrays[-1]
    del arrays
    before = _rss_mb()
    assert memory.trim() is True
    after = _rss_mb()
    assert before - after > 100, (before, after)
    assert memory.trim(min_interval=60) is False  # just ran: skipped
    assert keep.sum() == 8 * 1024
