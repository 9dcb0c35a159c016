"""``predict``: tiled prediction of a whole slide or volume into an NGFF zarr, out of core.

A generator of progress events (``events.py``) that checks ``cancel`` between batches and returns a
``PredictResult``. Memory stays bounded by the block size (plus a strip of partial sums one window deep
across the image), never by the image: the source is read block by block from its pyramid level, windows
are blended on the device, and finished blocks go to disk with their pyramid levels. The output's
lifecycle (create / resume / refuse, manifest status, start and done events) is ``run.PredictionRun``.

``run_predict`` exhausts the generator and returns the result (for scripts and tests).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.events import drive
from napari_medseg.core.heap import trim
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.engine import FinishedBlock
from napari_medseg.inference.events import PredictEvent, PredictResult, Refining
from napari_medseg.inference.job import make_job
from napari_medseg.inference.run import PredictionRun
from napari_medseg.models.normalization import NormConfig

if TYPE_CHECKING:
    from napari_medseg.inference.crf import CRFConfig


def predict(source: ImageSource | str | Path, model: nn.Module | str | Path, out: str | Path, *,
            norm: NormConfig | None = None, classes: ClassSchema | None = None, level: int = 0,
            pixel_size: float | None = None, window=(512, 512), overlap: float = 0.25,
            batch_size: int | str = "auto", blend: str = "gaussian", tta: bool | str = False, zoom: float | str = 1.0,
            tissue_mask: bool | str = "auto",
            write_probs: str | None = None, device: str = "auto", amp: bool = True,
            cancel: threading.Event | None = None, resume: bool = True, overwrite: bool = False,
            on_corrupt: str = "stop", block: tuple[int, ...] | None = None,
            sigma_scale: float = 0.125, backend: str = "torch", crf: CRFConfig | dict | bool | None = None,
            streams: int | str = 1, precision: str = "auto") -> Generator[PredictEvent, None, PredictResult]:
    """Predict ``source`` with ``model`` into the NGFF zarr ``out``; yields events, returns the result.

    ``source``: an ``ImageSource`` (``YX``/``YXC`` slide, ``ZYX``/``CZYX`` volume) or a path.
    ``model``: an ``nn.Module`` or a checkpoint path (its ``norm`` and ``classes`` are then used).
    ``level`` (or ``pixel_size``, which picks the coarsest level at least that fine) is predicted; the
    output has that level's geometry. ``window``: spatial window (a 2D window over a volume runs slice by
    slice). ``batch_size``: windows per forward pass, or ``"auto"`` (4 on a CPU; on a GPU as many as half its
    free memory holds, measured with one window: ``inference.batching``; the result's ``stats["batch_size"]``
    says which). ``blend``: ``"gaussian"`` (MONAI's importance map; equal to ``sliding_window_inference``) or
    ``"crop"``. ``tta``: test-time augmentation, ``False``, ``True``/``"flips"``, ``"dihedral"`` (2D square
    windows: 4 rotations x mirror) or ``"multiscale"`` (the window at 0.75 / 1 / 1.25 of its size). ``zoom``: the
    model sees each window resampled by this factor (0.25-4; 2 = objects twice as large as in the image) and its
    probabilities come back to the image's pixels: for objects smaller or larger than those the model learnt
    (docs/objects.md, "Objects of another size"); it costs about zoom^2 the model's time. ``"auto"`` (models with
    object classes whose checkpoint records their size): the zoom that brings the objects of a few sampled regions
    to that size (``inference.zoom_estimate``; the result's ``stats`` say it). ``tissue_mask``: ``"auto"`` (on for RGB/brightfield slides), True/False, a method name or
    a ``TissueMask``. ``write_probs``: None, ``"uint8"``, ``"float16"`` or ``"float32"``. ``resume``: continue an
    interrupted run of the same job; ``overwrite``: replace another run's output. ``on_corrupt``:
    ``"stop"`` or ``"skip"`` (predict around unreadable source tiles, with a warning). ``backend``:
    ``"torch"``, ``"onnxruntime"`` or ``"onnxruntime-int8"`` (``inference.backends``: a checkpoint converted
    once, INT8 calibrated on this image). ``crf``: refine the labels at the image's edges once every block is
    done (``inference.crf``: True for the defaults, or a ``CRFConfig`` / its dict); it needs the probabilities,
    so ``write_probs`` becomes ``"float16"`` when not given. ``streams`` (CPU): batches run through the model at
    once, each in its own thread with one torch thread (``"auto"``: as many as torch has threads; the torch
    thread count is 1 during the run and restored after it); 1 (default): one batch at a time on all of
    torch's threads. Which is faster depends on the model (docs/prediction.md); the probabilities agree to
    float rounding (models with reductions such as instance norm may differ by ~1e-6 between thread counts).
    ``precision``: ``"auto"`` (mixed precision on a GPU unless ``amp`` is False, float32 on the CPU),
    ``"fp32"``, or ``"bf16"`` (bfloat16 autocast on the CPU too: about twice as fast where the CPU computes
    bfloat16 natively, AMX or AVX512-BF16, with a warning where it does not; labels differ from float32 at a
    fraction of a percent of pixels, docs/deployment.md). Raises ``MedsegError`` on bad input before anything
    is written.
    """
    t_start = time.perf_counter()
    crf_cfg = _crf_config(crf)
    if crf_cfg is not None and write_probs is None:
        write_probs = "float16"
    job = make_job(source, model, norm=norm, classes=classes, level=level, pixel_size=pixel_size, window=window,
                   overlap=overlap, batch_size=batch_size, blend=blend, tta=tta, zoom=zoom, tissue_mask=tissue_mask,
                   write_probs=write_probs, device=device, amp=amp, on_corrupt=on_corrupt, block=block,
                   sigma_scale=sigma_scale, backend=backend, streams=streams, precision=precision)
    run = PredictionRun(job, out, resume=resume, overwrite=overwrite, t_start=t_start)
    try:
        yield from run.start()
        for item in job.run_blocks(run.store, run.todo, cancel):
            if isinstance(item, FinishedBlock):
                yield run.block_done(item.box)
            else:
                yield run.warning(item)
        done = run.finish(cancelled=cancel is not None and cancel.is_set())
    except BaseException:  # an error, or the generator closed: the output stays resumable
        run.abort()
        raise
    finally:
        trim()
    if not done.cancelled and (crf_cfg is not None or was_refined(run.out)):
        # crf off on an output refined before (the same job resumed): the model's own labels come back
        finished = yield from refine_events(run.out, job.source, crf_cfg, done.name, cancel)
        done = dataclasses.replace(done, seconds=time.perf_counter() - t_start, cancelled=not finished)
    yield done
    return run.result(done)


def _crf_config(crf: Any) -> Any:
    """``predict``'s ``crf`` argument as a ``CRFConfig`` (None: off)."""
    if crf is None or crf is False:
        return None
    from napari_medseg.inference.crf import CRFConfig

    if crf is True:
        return CRFConfig()
    if isinstance(crf, CRFConfig):
        return crf
    if isinstance(crf, dict):
        return CRFConfig.from_dict(crf)
    raise MedsegError(f"crf must be True, a CRFConfig or a dict of its settings, got {type(crf).__name__}")


def was_refined(out: Path) -> bool:
    """Whether the labels of the prediction ``out`` hold a CRF refinement (``crf_pass``)."""
    import zarr

    try:
        return bool(zarr.open_group(str(out), mode="r")["labels/prediction"].attrs.get("medseg_crf"))
    except (KeyError, FileNotFoundError, OSError):
        return False


def refine_events(out: Path, source: ImageSource, crf: Any, name: str, cancel: threading.Event | None
                  ) -> Generator[Refining, None, bool]:
    """The CRF pass over a finished output as ``Refining`` events (``crf`` None: the model's own labels back);
    returns whether it finished. ``cancel`` stops it before the next block: the blocks refined so far stay in
    its journal, the output's overview levels are not rebuilt yet, and a rerun goes on from there."""
    from napari_medseg.inference.crf_pass import refine_prediction

    gen = refine_prediction(out, source, _crf_config(crf), cancel=cancel)
    try:
        for ev in gen:
            yield Refining(ev.done, ev.total, name=name)
    finally:
        gen.close()
    return not (cancel is not None and cancel.is_set())


def run_predict(*args, on_event=None, **kwargs) -> PredictResult:
    """Run ``predict`` to the end (``on_event(event)`` sees each event) and return its result."""
    return drive(predict(*args, **kwargs), on_event)
