"""glibc's heap during long runs: freed memory given back to the OS (``trim``), or kept for reuse while
training (``reuse_freed_memory``). Elsewhere (macOS, Windows, musl) both do nothing.

**Giving back.** glibc keeps freed blocks in per-thread arenas for reuse. A tiled prediction frees a block's
buffers in a writer thread, the next block's input in the prefetch thread and the model's activations in the
main thread, so each arena keeps its own high-water mark of free memory and the process's resident size
settles well above what it holds (about 120 MB on an 8k x 8k slide, ``benchmarks/bench_tiled_predict.py``).
``trim`` calls ``malloc_trim(0)`` (which also returns unused pages in the middle of the heaps), at most once
per ``min_interval`` seconds.

**Keeping for reuse.** glibc serves every request above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it on ``free``. A training step on the CPU allocates and frees activations of 64 MiB and
more (a batch of 8 x 32 channels x 256^2 float32), so every step maps them afresh and the kernel zeroes each
4 KiB page on its first touch: about 50,000 page faults a step of the default UNet, the kernel's time a fifth
of the user time. ``reuse_freed_memory`` lifts the mmap path (``M_MMAP_MAX`` = 0, a 1 GiB trim threshold)
while training runs, so freed activations are reused by the next step; when the last run ends, glibc's
steady-state thresholds are set back (mmap above 32 MiB, trim above 64 MiB: the values its dynamic rule reaches
in a PyTorch process; glibc's dynamic rule stays off from the first run on, as it does once any threshold is
set) and the heap is trimmed. A thread other than the main one keeps mapping requests above
64 MiB (its arena's heaps are at most 64 MiB), so the Train widget's worker gains next to nothing; PyTorch's
own huge pages (``THP_MEM_ALLOC_ENABLE=1``) would help it, but slowed whole-slide prediction in the same
process, so they are left to the user. Measured side by side: docs/training.md
(``benchmarks/bench_step_cost.py --thp-compare``). ``NAPARI_MEDSEG_HEAP=system`` leaves glibc's settings
alone (read at each run's start), and so does a user's own tuning of them (``MALLOC_MMAP_MAX_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or ``glibc.malloc`` tunables).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
#: glibc's defaults and the steady state of its dynamic thresholds (DEFAULT_MMAP_THRESHOLD_MAX, twice that)
MMAP_MAX_DEFAULT, MMAP_THRESHOLD_STEADY, TRIM_THRESHOLD_STEADY = 65536, 32 << 20, 64 << 20
#: while training: freed memory up to this much at the heap's top is kept
TRIM_THRESHOLD_TRAINING = 1 << 30
#: ``NAPARI_MEDSEG_HEAP=system``: glibc's settings are left alone
ENV = "NAPARI_MEDSEG_HEAP"
#: a user's own tuning of glibc's allocator, which is left as it is
USER_TUNING = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_lock = threading.RLock()  # reentrant: a run abandoned unclosed may be finalised by the GC in a thread holding it
_last = 0.0
_libc = None
_looked = False
_holders = 0
_applied = False


def _glibc():
    """glibc with ``malloc_trim`` and ``mallopt`` typed, or None (not Linux, or a libc without them)."""
    global _libc, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if not hasattr(libc, "gnu_get_libc_version"):  # glibc itself, not look-alike stubs (gcompat)
                    raise AttributeError("not glibc")
                libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):
                log.debug("no glibc malloc_trim / mallopt", exc_info=True)
    return _libc


def trim(min_interval: float = 0.0) -> bool:
    """Return free heap memory to the OS (glibc only); returns whether a trim ran."""
    global _last
    libc = _glibc()
    if libc is None:
        return False
    now = time.monotonic()
    with _lock:
        if min_interval and now - _last < min_interval:
            return False
        _last = now
    libc.malloc_trim(0)
    return True


def reusing() -> bool:
    """Whether a ``reuse_freed_memory`` block holds glibc's settings now."""
    return _applied


def _left_alone() -> bool:
    """The user asked for glibc's own settings, or tuned them themselves."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        return True
    return any(k in os.environ for k in USER_TUNING) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Keep freed memory for reuse instead of unmapping it, for the duration of the block (see the module
    docstring); blocks may nest and overlap across threads: the settings hold until the last one ends. Yields
    whether they are in force (False: not glibc, ``NAPARI_MEDSEG_HEAP=system``, the user's own tuning, or
    ``mallopt`` refused)."""
    global _holders, _applied
    libc = _glibc()
    if libc is None or _left_alone():
        yield False
        return
    with _lock:
        _holders += 1
        if _holders == 1:
            _applied = libc.mallopt(M_MMAP_MAX, 0) == 1
            _applied = _applied and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_TRAINING) == 1
            if not _applied:
                log.debug("mallopt refused: the heap keeps glibc's settings")
        applied = _applied
    try:
        yield applied
    finally:
        with _lock:
            _holders -= 1
            last = _holders == 0
            if last:
                _applied = False
                libc.mallopt(M_MMAP_MAX, MMAP_MAX_DEFAULT)
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_STEADY)
                libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_STEADY)
        if last:
            trim()
