"""Giving freed memory back to the operating system during long runs.

glibc's allocator keeps freed blocks in per-thread arenas for reuse. A tiled prediction frees a block's
buffers in a writer thread, the next block's input in the prefetch thread and the model's activations in
the main thread, so each arena keeps its own high-water mark of free memory and the process's resident
size settles well above what it actually holds (about 120 MB on an 8k x 8k slide, measured with
``benchmarks/bench_tiled_predict.py``). ``trim`` calls ``malloc_trim(0)`` (which also returns unused pages
in the middle of the heaps), at most once per ``min_interval`` seconds. Elsewhere (macOS, Windows, musl) it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
import time

log = logging.getLogger(__name__)

_lock = threading.Lock()
_last = 0.0
_fn = None
_looked = False


def _malloc_trim():
    global _fn, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _fn = getattr(libc, "malloc_trim", None)
                if _fn is not None:
                    _fn.argtypes = [ctypes.c_size_t]
                    _fn.restype = ctypes.c_int
            except OSError:
                log.debug("no libc malloc_trim", exc_info=True)
    return _fn


def trim(min_interval: float = 0.0) -> bool:
    """Return free heap memory to the OS (glibc only); returns whether a trim ran."""
    global _last
    fn = _malloc_trim()
    if fn is None:
        return False
    now = time.monotonic()
    with _lock:
        if min_interval and now - _last < min_interval:
            return False
        _last = now
    fn(0)
    return True
