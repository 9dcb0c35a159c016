"""Keep Python's cyclic garbage collector from freezing the viewer while training or prediction runs.

A full (generation 2) collection walks every object the process holds. With napari, Qt, torch, dask and
MONAI loaded that is about half a million tracked objects: 0.2-0.3 s on the 2-core VM, during which every thread, the
viewer's main thread included, stops (the collector holds the GIL). Training and prediction allocate many
short-lived objects, so such collections come every minute or so while they run, and each is one long
stall of the viewer (``benchmarks/bench_ui_latency.py`` prints the collector's pauses per phase).

``freeze_long_lived`` moves every object alive now into the collector's permanent generation
(``gc.freeze``), which later collections skip: the objects of the loaded libraries, the viewer and its
layers stay alive for the session anyway. Objects made afterwards are collected as before. The first call
collects everything first (one full collection, when the user opens a widget), so no garbage is frozen;
later calls collect the young generations only (milliseconds) and freeze what survived.

``NAPARI_MEDSEG_GC_FREEZE=0`` turns it off.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state = {"full_done": False}


def enabled() -> bool:
    return os.environ.get("NAPARI_MEDSEG_GC_FREEZE", "1").strip().lower() not in ("0", "false", "no", "off")


def freeze_long_lived(full: bool | None = None) -> bool:
    """Collect, then move every surviving object to the permanent generation. ``full``: a full collection
    first (default: only the first time in this process; otherwise generations 0 and 1, which is cheap).
    Returns whether it froze (False when turned off)."""
    if not enabled():
        return False
    with _lock:
        full = (not _state["full_done"]) if full is None else full
        t0 = time.perf_counter()
        gc.collect(2 if full else 1)
        gc.freeze()
        _state["full_done"] = _state["full_done"] or full
    if log.isEnabledFor(logging.DEBUG):  # counting walks every frozen object: 10-40 ms on the main thread
        log.debug("gc: %s collection, %d objects frozen, %.0f ms", "full" if full else "young",
                  gc.get_freeze_count(), (time.perf_counter() - t0) * 1000)
    return True
