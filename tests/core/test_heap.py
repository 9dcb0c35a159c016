import ctypes
import gc
import threading

import numpy as np
import pytest

from napari_medseg.core import heap


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's malloc_trim")
def test_trim_returns_freed_heap_memory_and_is_rate_limited():
    # many small-ish arrays (under glibc's mmap threshold) come from the heap; freed, they stay resident
    arrays = [np.ones(8 * 1024, dtype=np.float64) for _ in range(8000)]  # ~500 MB in 64 kB pieces
    keep = arrays[-1]
    del arrays
    before = _rss_mb()
    assert heap.trim() is True
    after = _rss_mb()
    assert before - after > 100, (before, after)
    assert heap.trim(min_interval=60) is False  # just ran: skipped
    assert keep.sum() == 8 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mapped_afresh(mb: int = 96) -> bool:
    """Whether glibc serves a request of ``mb`` MiB more than all the heap's free memory with a fresh mmap (its
    count of mapped bytes grows by as much), rather than from memory the heap keeps; a kernel's huge pages do not
    change the answer. The request is larger than the heap's free chunks together, so that what earlier tests left
    free inside the heap (e.g. the trim test's 500 MB, fragmented below live objects) cannot serve it."""
    libc = heap._glibc()
    libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
    libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    size = (mb << 20) + info.fordblks
    before = info.hblkhd
    p = libc.malloc(size)
    mapped = libc.mallinfo2().hblkhd - before >= size
    libc.free(p)
    return mapped


@pytest.fixture(autouse=True)
def _no_run_left_open(monkeypatch):
    for k in (heap.ENV, *heap.USER_TUNING, "GLIBC_TUNABLES"):
        monkeypatch.delenv(k, raising=False)
    gc.collect()  # a generator dropped without close() is finalised here
    assert heap._holders == 0, "a training run elsewhere in this process was left open (not closed)"


needs_mallinfo2 = pytest.mark.skipif(heap._glibc() is None or not hasattr(heap._glibc(), "mallinfo2"),
                                     reason="glibc >= 2.33 (mallinfo2)")


@needs_mallinfo2
def test_freed_big_blocks_are_kept_while_the_block_holds_and_mapped_afresh_after():
    assert _mapped_afresh()  # glibc maps anything above 32 MiB afresh
    with heap.reuse_freed_memory() as on:
        assert on and heap.reusing()
        assert not _mapped_afresh()  # served from the heap, which keeps it when freed
    assert not heap.reusing()
    assert _mapped_afresh()  # glibc's behaviour is back


@needs_mallinfo2
def test_blocks_nest_across_threads_and_the_last_one_restores():
    entered, release = threading.Event(), threading.Event()

    def other():
        with heap.reuse_freed_memory():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with heap.reuse_freed_memory():
        t.start()
        assert entered.wait(10)
    assert heap.reusing()  # the other thread's block still holds
    assert not _mapped_afresh()
    release.set()
    t.join(10)
    assert not heap.reusing()
    assert _mapped_afresh()


@pytest.mark.parametrize("env", [{heap.ENV: "system"}, {"MALLOC_TRIM_THRESHOLD_": "65536"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}])
def test_the_users_choice_leaves_glibc_alone(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with heap.reuse_freed_memory() as on:
        assert on is False and not heap.reusing()
