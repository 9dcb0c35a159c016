"""The training loop: a generator of typed events that a thread worker (GUI) or the CLI drives.

``train(cfg, data, stop=..., init=..., preview_hook=...)`` yields ``StartEvent``, then per step a
``StepEvent``, every ``val_every`` steps a ``ValidationEvent`` and ``CheckpointEvent``\\ s, ``PreviewEvent``\\ s
every ``preview_every_s`` seconds, ``WarningEvent``\\ s, and finally a ``DoneEvent``; it returns a
``TrainResult``. Validation also runs early, at ``val_first`` x 1, 2, 4 ... steps (``validation_due``). The
stop flag is checked between steps, while waiting for a batch, and between the layers of every forward and
backward pass, preview and validation (``guard.StepGuard``, which also treats RAM running out as an
out-of-memory error); stopping saves the last checkpoint. Patches are ``(N, C, *P)`` with ``P`` = ``YX`` or
``ZYX``; labels ``(N, *P)`` store values. With ``cfg.library`` the final model (best, else last) is added to
the model library (``sharing.library``) before the ``DoneEvent``, which names it (``library_name``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from napari_medseg.core.courtesy import Courtesy
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.events import drive
from napari_medseg.core.heap import reuse_freed_memory
from napari_medseg.models.checkpoint import Checkpoint, load_state_dict_report
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.devices import DeviceSetup, free_memory, is_oom, select_device
from napari_medseg.models.normalization import NormConfig
from napari_medseg.models.registry import build_model, check_input_size
from napari_medseg.training.config import TrainConfig
from napari_medseg.training.data import TrainingData
from napari_medseg.training.distill import load_teacher
from napari_medseg.training.ema import WeightEMA
from napari_medseg.training.events import (
    CheckpointEvent,
    DoneEvent,
    PreviewEvent,
    StartEvent,
    StepEvent,
    TrainEvent,
    TrainResult,
    ValidationEvent,
    WarningEvent,
)
from napari_medseg.training.finetune import (
    check_class_weights,
    next_batches,
    prepare_model,
    reestimate_run_stats,
    release_model,
)
from napari_medseg.training.guard import HostOutOfMemory, StepGuard, StopRequested
from napari_medseg.training.prefetch import Prefetcher
from napari_medseg.training.rounds import adopt_architecture, check_architecture, resolve_init, run_dir
from napari_medseg.training.run_state import Run, run_progress
from napari_medseg.training.sampler import PatchSampler
from napari_medseg.training.stain import check_stain_channels

log = logging.getLogger(__name__)

# Test hook: called with the step number inside the guarded step (e.g. to raise a simulated OOM once).
_fault_hook: Callable[[int], None] | None = None

PreviewHook = Callable[[nn.Module, "nn.Module | None", int], Any]
#: an early validation (``val_first``) runs only while validating took at most this share of the training time
EARLY_VAL_MAX_SHARE = 0.5


def validation_due(cfg: TrainConfig, step: int) -> bool:
    """Whether ``step`` is a validation step: every ``val_every`` steps, and before that at ``val_first`` x 1, 2,
    4, 8 ... (an *early* one: the loop skips it while validating costs too much, ``EARLY_VAL_MAX_SHARE``)."""
    if step % cfg.val_every == 0:
        return True
    f = cfg.val_first
    if f <= 0 or step >= cfg.val_every or step % f:
        return False
    k = step // f
    return k & (k - 1) == 0


def resolve_norm(cfg: TrainConfig, data: TrainingData, sampler: PatchSampler) -> tuple[NormConfig, list[str]]:
    """The input normalisation for ``data`` (CT window in HU for CT, else per-channel percentiles)."""
    warnings: list[str] = []
    c = data.n_channels
    modalities = {it.image.modality for it in data.items}
    floats = any(it.image.dtype.kind == "f" for it in data.items)
    sample, nonfinite = sampler.norm_samples() if (cfg.norm in ("auto", "percentile") or floats) else (None, False)
    if nonfinite:
        names = [it.key for it in data.items if it.image.dtype.kind == "f"]
        warnings.append(f"image(s) {names[:3]} hold NaN or infinite values; they are read as the lowest (NaN, "
                        "-inf) or highest (+inf) intensity")
    mode = cfg.norm
    if mode == "auto":
        mode = "ct_window" if modalities == {"CT"} else "percentile"
    if mode == "ct_window":
        centre, width = cfg.ct_window
        n = NormConfig.ct_window(centre, width)
        return (n if c == 1 else NormConfig("ct_window", n.low * c, n.high * c)), warnings
    if mode == "range":
        dt = data.items[0].image.dtype
        if dt.kind not in "ui":
            raise MedsegError(f"norm 'range' needs integer images, these are {dt}; use 'percentile'")
        info = np.iinfo(dt)
        return NormConfig("range", (float(info.min),) * c, (float(info.max),) * c), warnings
    assert sample is not None
    return NormConfig.from_percentiles(sample, channel_axis=0), warnings


def _fit_model_config(cfg: TrainConfig, data: TrainingData) -> ModelConfig:
    m = cfg.model
    fit = m.replace(in_channels=data.n_channels, out_channels=data.classes.n_classes)
    if fit != m:
        log.info("model channels set from the data: in %d, out %d", fit.in_channels, fit.out_channels)
    if fit.spatial_dims > data.spatial_dims:
        raise MedsegError(f"a {fit.spatial_dims}D model needs {fit.spatial_dims}D images; these are "
                          f"{data.spatial_dims}D ({data.items[0].image.axes})")
    return fit


def _preview(run: Run, hook: PreviewHook, step: int) -> Generator[TrainEvent, None, None]:
    model = run.model
    model.eval()
    try:
        with torch.inference_mode():
            average = run.eval_model() if run.eval_model() is not model else None
            payload = hook(model, average, step)
    except StopRequested:  # Stop pressed during the preview: the loop ends at its next check
        return
    except Exception as e:  # a failing preview must not end the run
        log.exception("preview failed")
        yield WarningEvent(f"live preview failed ({type(e).__name__}: {e}); training goes on")
        return
    finally:
        model.train()
    yield PreviewEvent(step, payload)


def train(cfg: TrainConfig, data: TrainingData, *, stop: threading.Event | None = None,
          init: str | Path | Checkpoint | dict | None = None, preview_hook: PreviewHook | None = None,
          preview_every_s: float = 3.0, courtesy: Courtesy | None = None) -> Generator[TrainEvent, None, TrainResult]:
    """Fine-tune a model on ``data``; see the module docstring for the events. Raises ``MedsegError`` on bad
    input before the first event (no painted pixels, labels beyond the classes, geometry mismatch, a refused
    or mismatched checkpoint). ``courtesy``: the steps give way to the user between layers (``core.courtesy``)."""
    t_start = time.perf_counter()
    setup = select_device(cfg.device, cfg.amp, cfg.channels_last)
    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with reuse_freed_memory():  # the step's activations are reused, not mapped afresh (core.heap)
            result = yield from _train(cfg, data, setup, stop, init, preview_hook, preview_every_s, t_start, courtesy)
    finally:
        if cfg.threads:
            torch.set_num_threads(prev_threads)
    return result


def _train(cfg: TrainConfig, data: TrainingData, setup: DeviceSetup, stop: threading.Event | None, init: Any,
           preview_hook: PreviewHook | None, preview_every_s: float, t_start: float, courtesy: Courtesy | None = None
           ) -> Generator[TrainEvent, None, TrainResult]:
    warnings: list[str] = []
    if setup.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    iw = resolve_init(init)
    model_cfg = _fit_model_config(cfg, data)
    check_class_weights(cfg.class_weights, data.classes.names)
    check_stain_channels(cfg.stain_jitter, data.n_channels, "these images have")
    if iw is not None:
        model_cfg, note = adopt_architecture(iw, model_cfg)
        warnings += [note] if note else []
        check_architecture(iw, model_cfg)
    patch = cfg.patch_for(model_cfg.spatial_dims)
    check_input_size(model_cfg, patch)
    meta = iw.meta if iw is not None else {}
    sampler = PatchSampler(data, patch, model_cfg.spatial_dims, level=cfg.level, pixel_size=cfg.pixel_size,
                           val_fraction=cfg.val_fraction, max_val_patches=cfg.max_val_patches, seed=cfg.seed,
                           val_seed=meta.get("val_seed"), val_block=meta.get("val_block"))
    warnings += sampler.warnings
    cfg, semi_reason = cfg.resolve_semi(sampler.paint_extent, sampler.paint_share, model_cfg.spatial_dims)
    kd = None
    if cfg.distill_from is not None:  # the teacher first: a teacher that cannot teach this data fails early
        kd = load_teacher(cfg.distill_from, n_channels=data.n_channels, n_classes=data.classes.n_classes,
                          spatial_dims=model_cfg.spatial_dims, device=setup.device,
                          memory_format=setup.memory_format(model_cfg.spatial_dims),
                          class_names=tuple(data.classes.names))
        try:  # the teacher sees the student's patches: its own size rule too (a Swin teacher: multiples of 32)
            check_input_size(kd.checkpoint.model_config, patch)
        except MedsegError as e:
            raise MedsegError(f"the teacher {kd.label}: {e}") from None
    # the input pipeline: the starting checkpoint's (kept across rounds), else the teacher's (the student sees
    # the numbers the teacher was trained on), else one made for this data
    given = iw.norm if iw is not None and iw.norm is not None and iw.norm.channels in (1, data.n_channels) else None
    if kd is not None and given is not None and given != kd.checkpoint.norm:
        raise MedsegError(f"the starting weights ({iw.label}) normalise the images differently from the teacher "
                          f"({kd.label}); both see the same numbers, so start the student from scratch or from a "
                          "checkpoint with the teacher's normalisation")
    given = given or (kd.checkpoint.norm if kd is not None else None)
    if given is not None:
        norm = given.resolved(sampler.norm_samples()[0]) if given.needs_data else given  # a package's statistics:
        # fixed once, over the training images
    else:
        norm, w = resolve_norm(cfg, data, sampler)
        warnings += w
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    report = None
    if iw is not None:
        report = load_state_dict_report(model, iw.state_dict)
        if not report.matched:
            few = ", ".join(list(iw.state_dict)[:3])
            raise MedsegError(f"none of the {len(iw.state_dict)} tensors in {iw.label} fit a '{model_cfg.name}' "
                              f"model (its keys look like {few}); it is another architecture")
        if report.missing or report.unexpected or report.shape_mismatch:
            warnings.append(f"starting weights from {iw.label} only partly fit: {report.summary()} "
                            f"(e.g. {(report.shape_mismatch + report.missing + report.unexpected)[:2]}); "
                            "the rest starts fresh")
    model = model.to(setup.device).to(memory_format=setup.memory_format(model_cfg.spatial_dims)).train()
    ema = None
    if cfg.keeps_ema:
        ema = WeightEMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)
        if iw is not None and iw.teacher_state_dict is not None and report is not None and not report.shape_mismatch:
            try:
                ema.load_state_dict(iw.teacher_state_dict)
            except RuntimeError:
                log.info("checkpoint teacher does not fit; the weight average starts as a copy of the student")
    # freezing and checkpointing, after the weight average's copy
    warnings += prepare_model(model, cfg, from_scratch=iw is None)
    out_dir = run_dir(cfg.checkpoint_dir)
    run = Run(cfg, data, setup, model_cfg, sampler, norm, model, ema, out_dir, (iw.round if iw else 0) + 1)
    run.kd = kd
    run.parent = init_parent(init, iw, out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    val_patches = sampler.validation_patches()
    yield StartEvent(
        device=setup.describe(),
        model_summary=f"{model_cfg.spatial_dims}D {model_cfg.name} {list(model_cfg.channels)}"
        f" ({n_params / 1e6:.2f} M parameters), {model_cfg.in_channels} -> {model_cfg.out_channels} channels",
        n_labelled=len(sampler.labelled_items), n_unlabelled=len(sampler.unlabelled_items),
        init_report=None if report is None else report.summary(), n_params=n_params, patch_size=patch,
        batch=(run.n_l, run.n_u), n_val_patches=len(val_patches), round=run.round, amp=setup.amp_name, norm=norm,
        semi=cfg.semi, semi_reason=semi_reason, crf_weight=cfg.crf_weight or 0.0,
        contact_weight=run.contact.weight if run.contact is not None else 0.0)
    for w in warnings:
        yield WarningEvent(w)
    if cfg.bn_reestimate:
        reestimate_run_stats(run, cfg.bn_reestimate)

    history: list[dict[str, Any]] = []
    step, reason = 0, "steps"
    best, best_path, last_path = -math.inf, None, None
    t_loop = time.perf_counter()
    last_preview = -math.inf if preview_hook is not None else math.inf
    previewed_at_val = False
    bad_steps = 0
    val_end, val_cost = t_loop, 0.0  # when the last validation ended, and what it cost
    guard = StepGuard(stop, courtesy=courtesy)  # Stop, the RAM floor (and the user), checked between layers
    guard.attach(model)
    guard.attach(None if ema is None else ema.module)
    loader = Prefetcher(run.make_batch, cfg.prefetch, cfg.num_workers)
    try:
        while step < cfg.steps:
            if stop is not None and stop.is_set():
                reason = "stopped"
                break
            if cfg.time_budget_s is not None and time.perf_counter() - t_loop >= cfg.time_budget_s:
                reason = "time"
                break
            t0 = time.perf_counter()
            batch, wait = next_batches(loader, stop, cfg.accumulate)  # accumulate micro-batches per step
            if batch is None:  # stopped while the batch was being read
                reason = "stopped"
                break
            progress = run_progress(cfg, step, t0 - t_loop)
            try:
                if _fault_hook is not None:
                    _fault_hook(step)
                loss, sup, cons, w, ratio = run.step(batch, step, progress)
            except StopRequested:  # Stop pressed mid-step: the weights are those of the last whole step
                del batch
                run.opt.zero_grad(set_to_none=True)
                reason = "stopped"
                break
            except Exception as e:
                if not is_oom(e):
                    raise
                del batch
                run.opt.zero_grad(set_to_none=True)
                free_memory(setup.device)
                msg = run.halve_batch()
                if isinstance(e, HostOutOfMemory):
                    msg = f"RAM ran low ({e}): {msg}"
                loader.reset()
                log.warning(msg)
                yield WarningEvent(msg)
                continue
            if not math.isfinite(loss):
                bad_steps += 1
                if bad_steps >= 5:
                    raise MedsegError(f"the loss was not finite ({loss}) for 5 steps in a row at step {step}; lower "
                                      f"the learning rate (now {cfg.lr}) or check the image for extreme values")
                yield WarningEvent(f"step {step + 1} skipped: the loss was {loss}")
                continue
            bad_steps = 0
            step += 1
            now = time.perf_counter()
            ev = StepEvent(step, loss, sup, cons, w, run.lr_now, (run.n_l + run.n_u) * cfg.accumulate, now - t0,
                           wait, run_progress(cfg, step, now - t_loop), ratio, run.grad_norm)
            history.append({"event": "step", **ev.__dict__})
            yield ev
            if preview_hook is not None and time.perf_counter() - last_preview >= preview_every_s:
                yield from _preview(run, preview_hook, step)
                last_preview = time.perf_counter()
            early = step % cfg.val_every != 0
            if (validation_due(cfg, step) and step < cfg.steps and not (
                    early and val_cost > EARLY_VAL_MAX_SHARE * (time.perf_counter() - val_end))):
                t_val = time.perf_counter()
                for e in _validate_and_save(run, step, stop, history):
                    if isinstance(e, CheckpointEvent):
                        last_path = e.path if e.kind == "last" else last_path
                        best_path = e.path if e.kind == "best" else best_path
                    if isinstance(e, ValidationEvent) and e.mean_dice > best:
                        best = e.mean_dice
                    yield e
                val_end = time.perf_counter()
                val_cost = val_end - t_val
                if preview_hook is not None and not previewed_at_val:
                    previewed_at_val = True
                    yield from _preview(run, preview_hook, step)
                    last_preview = time.perf_counter()
        # the end: validate (unless stopped) and save
        if step > 0 or reason == "stopped":
            for e in _validate_and_save(run, step, stop if reason != "stopped" else None, history,
                                        validate=reason != "stopped"):
                if isinstance(e, CheckpointEvent):
                    last_path = e.path if e.kind == "last" else last_path
                    best_path = e.path if e.kind == "best" else best_path
                if isinstance(e, ValidationEvent) and e.mean_dice > best:
                    best = e.mean_dice
                yield e
    except Exception:
        if step > 0:  # keep what was learnt before the failure
            try:
                last_path = run.save("last", step)
                log.error("training failed at step %d; the last state is in %s", step, last_path)
            except Exception:  # pragma: no cover - the original error matters more
                log.exception("could not save a checkpoint after the failure")
        raise
    finally:
        loader.close()
        guard.detach()
        release_model(model)  # no checkpoint wrappers or frozen flags on the model handed back
        if run.da is not None:  # the domain adaptation's bottleneck hook (training/domain.py)
            run.da.close()
    if best_path is None:
        best_path = last_path
    # a run stopped before its first step learnt nothing: no library entry for it
    lib_name, lib_path, lib_warning = land_in_library(cfg, best_path if step > 0 else None, run.images(), run.parent)
    if lib_warning:
        yield WarningEvent(lib_warning)
    yield DoneEvent(reason, last_path, best_path, step, lib_name, lib_path)  # type: ignore[arg-type]
    model.eval()
    return TrainResult(reason, step, last_path, best_path, None if best == -math.inf else best, model,
                       None if ema is None else ema.module, norm, history, time.perf_counter() - t_start,
                       lib_name, lib_path)


def init_parent(init: Any, iw: Any, out_dir: Path) -> str | None:
    """What a run starts from, for its checkpoints' ``meta["parent"]``: a library model's name, else the file;
    a run that continues its own ``last.pt`` (a resumed run) keeps that checkpoint's parent."""
    if iw is None or not isinstance(init, (str, os.PathLike)):  # from scratch, or weights given in memory
        return None
    p = Path(init)
    try:
        if p.resolve().parent == out_dir.resolve():
            return iw.meta.get("parent")
    except OSError:  # pragma: no cover - a loop of symlinks
        pass
    from napari_medseg.sharing.library import name_of

    return name_of(p) or str(p)


def land_in_library(cfg: TrainConfig, checkpoint: str | None, images: list[str], parent: str | None
                    ) -> tuple[str | None, str | None, str | None]:
    """Add a run's final checkpoint to the model library (``cfg.library``) as ``cfg.model_name``: (its name,
    its entry folder, None), or (None, None, a warning) when it could not be added: a full or read-only disk
    never fails a run whose checkpoint is safe."""
    if not cfg.library or not checkpoint:
        return None, None, None
    try:
        from napari_medseg.sharing.library import add_checkpoint

        entry = add_checkpoint(checkpoint, cfg.model_name or None, training_data=images, parent=parent)
    except Exception as e:
        msg = f"the model was not added to the model library ({e}); it is in {checkpoint}"
        log.warning(msg)
        return None, None, msg
    log.info("model %r added to the model library: %s", entry.name, entry.folder)
    return entry.name, str(entry.folder), None


def _validate_and_save(run: Run, step: int, stop: threading.Event | None, history: list[dict[str, Any]],
                       validate: bool = True) -> Generator[TrainEvent, None, None]:
    ev = None
    if validate:
        try:
            ev = run.validate(step, stop)
        except StopRequested:  # Stop pressed during validation: no score this time
            ev = None
        except Exception as e:
            if not is_oom(e):
                raise
            free_memory(run.dev)
            yield WarningEvent(f"validation at step {step} skipped: out of memory ({e}); training goes on")
    if ev is not None:
        history.append({"event": "validation", **ev.__dict__})
        yield ev
    yield CheckpointEvent(run.save("last", step), "last", step)
    if ev is not None and ev.mean_dice > run.best_val:
        run.best_val = ev.mean_dice
        yield CheckpointEvent(run.save("best", step), "best", step)


def run_training(cfg: TrainConfig, data: TrainingData, on_event: Callable[[TrainEvent], None] | None = None,
                 **kw: Any) -> TrainResult:
    """Drive ``train`` to the end (``on_event`` sees every event) and return its ``TrainResult``."""
    return drive(train(cfg, data, **kw), on_event)
