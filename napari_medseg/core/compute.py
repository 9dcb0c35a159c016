"""Computing dask graphs safely from any thread: without dask's global callbacks (``compute``,
``compute_many``) and never on a distributed client from inside a task (``materialize``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def compute(x: Any, scheduler: str = "synchronous") -> Any:
    """``x.compute(scheduler=...)`` (any dask collection; anything else is returned as is) without dask's
    global callbacks.

    dask runs the callbacks in the process-wide ``Callback.active`` set and, for a compute that does not
    name its own, swaps that set out and back (``dask.local.local_callbacks``), which is not thread-safe.
    napari registers its tile cache there while it slices, in its own thread when asynchronous slicing is
    on; a training or prediction thread computing at the same moment then raised ``KeyError`` from the
    cache's bookkeeping (seen in ``bench_ui_latency``) or could unregister napari's cache. Naming an empty
    set of callbacks keeps our computes out of that set.
    """
    if not hasattr(x, "compute"):
        return x
    return x.compute(scheduler=scheduler, callbacks=())


def compute_many(xs: Sequence[Any], scheduler: str = "threads") -> tuple[Any, ...]:
    """``dask.compute(*xs)`` without dask's global callbacks (see ``compute``)."""
    import dask

    return dask.compute(*xs, scheduler=scheduler, callbacks=())


#: Target edge (pixels) of a dask chunk along Y/X: a multiple of the file's tile, near this size.


def materialize(a: Any) -> np.ndarray:
    """A numpy array from a numpy/zarr/dask array; dask graphs run on the local threaded scheduler, never
    on a distributed client (a task computing on its own cluster would deadlock it)."""
    if hasattr(a, "dask") and hasattr(a, "compute"):
        return np.asarray(compute(a, "threads"))
    return np.asarray(a)
