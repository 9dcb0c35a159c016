"""``predict``: tiled prediction of a whole slide or volume into an NGFF zarr, out of core.

A generator of progress events (``events.py``) that checks ``cancel`` between batches and returns a
``PredictResult``. Memory stays bounded by the block size (plus a strip of partial sums one window deep
across the image), never by the image: the source is read block by block from its pyramid level, windows
are blended on the device, and finished blocks go to disk with their pyramid levels.

``run_predict`` exhausts the generator and returns the result (for scripts and tests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from pathlib import Path

import torch.nn as nn

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.engine import FinishedBlock
from napari_medseg.inference.events import (
    BlockDone,
    PredictDone,
    PredictEvent,
    PredictResult,
    PredictStart,
    PredictWarning,
    TissueMaskReady,
)
from napari_medseg.inference.job import Job, make_job
from napari_medseg.inference.memory import trim
from napari_medseg.inference.output import OutputStore, prepare_out, remove_partial_writes
from napari_medseg.models.normalization import NormConfig

log = logging.getLogger(__name__)


def open_output(job: Job, out: str | Path, *, resume: bool, overwrite: bool) -> tuple[OutputStore, set[str]]:
    """Create or reopen the output for ``job`` (refusing another run's output); returns it and the blocks
    already finished."""
    action = prepare_out(out, job.identity, resume=resume, overwrite=overwrite)
    if action == "create":
        store = OutputStore.create(out, job.layout, job.identity, job.classes, name=job.source.name,
                                   extra_attrs={"source": job.identity["source"]["path"], "level": job.level})
        if job.tissue is not None:
            tm = job.tissue
            p0 = job.source.pixel_size
            store.write_tissue(tm.mask, tm.scale, [(d - 1) / 2 * p for d, p in zip(tm.downsample, p0)],
                               job.source.unit)
        return store, set()
    store = OutputStore.open(out)
    remove_partial_writes(store.path)
    return store, store.done_blocks()


def predict(source: ImageSource | str | Path, model: nn.Module | str | Path, out: str | Path, *,
            norm: NormConfig | None = None, classes: ClassSchema | None = None, level: int = 0,
            pixel_size: float | None = None, window=(512, 512), overlap: float = 0.25, batch_size: int = 4,
            blend: str = "gaussian", tta: bool = False, tissue_mask: bool | str = "auto",
            write_probs: str | None = None, device: str = "auto", amp: bool = True,
            cancel: threading.Event | None = None, resume: bool = True, overwrite: bool = False,
            on_corrupt: str = "stop", block: tuple[int, ...] | None = None,
            sigma_scale: float = 0.125) -> Generator[PredictEvent, None, PredictResult]:
    """Predict ``source`` with ``model`` into the NGFF zarr ``out``; yields events, returns the result.

    ``source``: an ``ImageSource`` (``YX``/``YXC`` slide, ``ZYX``/``CZYX`` volume) or a path.
    ``model``: an ``nn.Module`` or a checkpoint path (its ``norm`` and ``classes`` are then used).
    ``level`` (or ``pixel_size``, which picks the coarsest level at least that fine) is predicted; the
    output has that level's geometry. ``window``: spatial window (a 2D window over a volume runs slice by
    slice). ``blend``: ``"gaussian"`` (MONAI's importance map; equal to ``sliding_window_inference``) or
    ``"crop"``. ``tissue_mask``: ``"auto"`` (on for RGB/brightfield slides), True/False, a method name or
    a ``TissueMask``. ``write_probs``: None, ``"uint8"`` or ``"float16"``. ``resume``: continue an
    interrupted run of the same job; ``overwrite``: replace another run's output. ``on_corrupt``:
    ``"stop"`` or ``"skip"`` (predict around unreadable source tiles, with a warning). Raises
    ``MedsegError`` on bad input before anything is written.
    """
    t_start = time.perf_counter()
    job = make_job(source, model, norm=norm, classes=classes, level=level, pixel_size=pixel_size, window=window,
                   overlap=overlap, batch_size=batch_size, blend=blend, tta=tta, tissue_mask=tissue_mask,
                   write_probs=write_probs, device=device, amp=amp, on_corrupt=on_corrupt, block=block,
                   sigma_scale=sigma_scale)
    out = Path(out)
    store, done = open_output(job, out, resume=resume, overwrite=overwrite)
    name = job.source.name
    tissue = job.tissue_blocks
    resumed = [b for b in tissue if job.blocks.key(b) in done]
    todo = [b for b in tissue if job.blocks.key(b) not in done]
    if job.tissue is not None:
        yield TissueMaskReady(job.tissue, out)
    total = len(tissue)
    yield PredictStart(total_blocks=total, skipped_blocks=job.blocks.n_blocks - total, out=out, level=job.level,
                       shape=job.shape, resumed_blocks=len(resumed), name=name)
    n_done = len(resumed)
    warnings: list[str] = []
    pixels = 0.0
    t0 = time.perf_counter()
    cancelled = False
    try:
        if todo:
            store.update_manifest(status="running")
        for item in job.run_blocks(store, todo, cancel):
            if isinstance(item, str):
                warnings.append(item)
                yield PredictWarning(item, name=name)
                continue
            assert isinstance(item, FinishedBlock)
            n_done += 1
            pixels += float(item.probs[0].numel())
            dt = time.perf_counter() - t0
            rate = pixels / 1e6 / dt if dt > 0 else 0.0
            left = total - n_done
            eta = dt / max(1, n_done - len(resumed)) * left
            yield BlockDone(done=n_done, total=total, region=tuple(slice(a, b) for a, b in item.box),
                            mpix_s=rate, eta_s=eta, name=name)
        cancelled = cancel is not None and cancel.is_set() and n_done < total
        store.flush()
        if cancelled:
            store.update_manifest(status="cancelled")
        else:
            store.finalize()
            store.update_manifest(status="complete", warnings=warnings[:100])
    except BaseException:
        try:
            store.close()
            store.update_manifest(status="interrupted")
        except Exception:  # the disk may be full; the journal alone drives resuming
            log.debug("could not mark %s interrupted", out, exc_info=True)
        raise
    finally:
        store._pool.shutdown(wait=True)
        trim()
    seconds = time.perf_counter() - t_start
    mpix_s = pixels / 1e6 / max(1e-9, time.perf_counter() - t0)
    yield PredictDone(out=out, blocks_done=n_done, seconds=seconds, mpix_s=mpix_s, cancelled=cancelled, name=name)
    return PredictResult(out=out, level=job.level, shape=job.shape, blocks_total=total, blocks_done=n_done,
                         blocks_skipped=job.blocks.n_blocks - total, blocks_resumed=len(resumed), seconds=seconds,
                         mpix_s=mpix_s, cancelled=cancelled, windows_computed=int(job.stats.get("windows", 0)),
                         warnings=warnings, stats=dict(job.stats))


def run_predict(*args, on_event=None, **kwargs) -> PredictResult:
    """Run ``predict`` to the end (``on_event(event)`` sees each event) and return its result."""
    gen = predict(*args, **kwargs)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(ev)
