"""The prediction batch size: ``batch_size="auto"`` (the default) picks it from the device.

On a CPU ``auto`` is 4, the predictor's batch before ``auto`` existed (what the CPU benchmarks in
``benchmarks/RESULTS.md`` ran). On a CUDA GPU a larger batch keeps the device busier, and the size that fits
depends on the model, the window, precision and what else holds the card:
``auto`` runs one window through the same ``WindowRunner`` the prediction uses (its precision, TTA and
layout), takes the peak memory that window needed over what was allocated before, and fits as many windows as
``AUTO_MEMORY_SHARE`` of the free memory holds, rounded down to a power of two and capped at ``AUTO_MAX_BATCH``.
The rest of the free memory stays for the blended blocks, the prefetched input and other programs. Should a
batch still run out of memory, the runner halves it and goes on (``WindowRunner.__call__``).
"""

from __future__ import annotations

from typing import Any

import torch

from napari_medseg.core.errors import MedsegError

AUTO_CPU_BATCH = 4
AUTO_MAX_BATCH = 64
AUTO_MEMORY_SHARE = 0.5


def check_batch_size(batch_size: Any) -> int | str:
    """``"auto"`` or an integer >= 1 (also given as text, e.g. from the command line); anything else is refused."""
    if isinstance(batch_size, str):
        if batch_size.strip().lower() == "auto":
            return "auto"
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise MedsegError(f"batch size must be 'auto' or an integer >= 1, got {batch_size!r}") from None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MedsegError(f"batch size must be 'auto' or an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def batch_for_memory(window_bytes: int, free_bytes: int, *, share: float = AUTO_MEMORY_SHARE,
                     cap: int = AUTO_MAX_BATCH) -> int:
    """The largest power of two <= ``cap`` whose windows (``window_bytes`` each) fit in ``share`` of
    ``free_bytes``; at least 1."""
    n = cap if window_bytes <= 0 else int(share * max(0, free_bytes) // window_bytes)
    n = max(1, min(int(cap), n))
    return 1 << (n.bit_length() - 1)


def window_bytes(runner: Any, window_shape: tuple[int, ...]) -> int:
    """Peak CUDA memory one window of ``window_shape`` (C, *window) needs through ``runner`` (a ``WindowRunner``
    on a CUDA device), above what was allocated before."""
    dev = runner.device
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    saved, runner.batch_size = runner.batch_size, 1
    try:
        with torch.inference_mode():
            runner(torch.zeros((1, *window_shape), device=dev))
        torch.cuda.synchronize(dev)
    finally:
        runner.batch_size = saved
    return max(1, int(torch.cuda.max_memory_allocated(dev)) - int(base))


def resolve_batch_size(batch_size: Any, runner: Any, window_shape: tuple[int, ...]) -> int:
    """The batch a prediction runs with: an integer as given; ``"auto"`` from the device (see module)."""
    b = check_batch_size(batch_size)
    if b != "auto":
        return int(b)
    if runner.device.type != "cuda":
        return AUTO_CPU_BATCH
    free, _total = torch.cuda.mem_get_info(runner.device)
    return batch_for_memory(window_bytes(runner, window_shape), free)
