"""A prefetching loader: worker threads build the next batches while the model trains on this one.

Batch ``i`` is always built from the same random stream (``make(i)``), whatever thread builds it and in
whatever order, so runs are reproducible. Reading slides (zarr/tifffile decoding, numpy) releases the GIL,
so threads overlap with the model's step. Tensors are pinned on CUDA for asynchronous copies.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def to_tensors(batch: dict[str, np.ndarray], pin: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.pin_memory() if pin else t
    return out


class Prefetcher:
    """``get()`` returns ``(batch, wait_s)``; ``reset()`` drops queued batches (e.g. after a batch-size change)."""

    def __init__(self, make: Callable[[int], Any], depth: int = 4, workers: int = 2, start: int = 0) -> None:
        self.make = make
        self.depth = max(1, depth)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="medseg-data") if workers > 0 else None
        self.queue: deque[Future] = deque()
        self.next_index = start
        self.closed = False

    def _fill(self) -> None:
        assert self.pool is not None
        while len(self.queue) < self.depth:
            self.queue.append(self.pool.submit(self.make, self.next_index))
            self.next_index += 1

    def get(self, stop: Any = None, poll_s: float = 0.05) -> tuple[Any, float]:
        """The next batch and the seconds waited for it; ``(None, wait)`` if ``stop`` (a ``threading.Event``)
        was set while waiting (the batch being built is dropped: a slow read never holds up Stop)."""
        t0 = time.perf_counter()
        if self.pool is None:
            batch = self.make(self.next_index)
            self.next_index += 1
            return batch, time.perf_counter() - t0
        self._fill()
        fut = self.queue[0]
        while True:
            try:
                batch = fut.result(timeout=poll_s if stop is not None else None)
                break
            except FutureTimeout:
                if stop.is_set():
                    return None, time.perf_counter() - t0
        self.queue.popleft()
        wait = time.perf_counter() - t0
        self._fill()
        return batch, wait

    def reset(self) -> None:
        for f in self.queue:
            f.cancel()
        self.queue.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reset()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
