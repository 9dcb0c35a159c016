"""The training job behind the Train widget.

``prepare_job`` runs on the main thread: it reads the widget's choices and the layers once (a consistent
snapshot of the labels), plans the patch from the image (``training.planning``: the widget's *patch size* is
the in-plane edge; a 3D patch spans the same millimetres in Z and no axis exceeds the image) and checks the
step's memory against what the machine has free, reducing batch and patch (``job["plan"]`` says what and
why) or refusing with a ``MedsegError``; it returns plain values. ``run_job`` runs in a napari thread worker: it drives
``training.train`` and yields its events; between steps it makes the live preview of the view the user is
looking at; when the user has painted more (a new snapshot arrives), it refreshes: the run continues from
its last checkpoint on the new labels (same validation subset, so Dice stays comparable).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Generator
from typing import Any

from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg._napari.layers import LatestValue, ViewRequest
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import GeometryMismatchError, MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.labels.snapshot import LabelSnapshot
from napari_medseg.training.config import AUTO_CONTACT_WEIGHT

log = logging.getLogger(__name__)
MIN_CONFIDENCE = 0.8  # the live preview draws a class where the model gives it at least this probability


def device_name(choice: str) -> str:
    """The engine's device for a widget choice: 'cuda:0 (NVIDIA H200)' -> 'cuda', 'cpu' -> 'cpu'.

    A GPU index is applied by ``select_gpu`` before training starts."""
    return choice.split(" ", 1)[0].split(":", 1)[0] if choice else "auto"


def gpu_index(choice: str) -> int | None:
    head = choice.split(" ", 1)[0] if choice else ""
    return int(head.split(":", 1)[1]) if head.startswith("cuda:") and head[5:].isdigit() else None


def classes_for_layer(layer: Any, n_max: int) -> ClassSchema:
    meta = medseg_meta(layer)
    if isinstance(meta.get("classes"), dict):
        return ClassSchema.from_dict(meta["classes"])
    n = max(2, n_max)  # store values 1..n -> background + n - 1 classes
    return ClassSchema.default(n)


def snapshot_labels(session: Any, viewer: Any, image_layer: Any, labels_choice: str, store_choice: str,
                    since: LabelSnapshot | None = None) -> tuple[LabelSnapshot, str]:
    """(snapshot, description) of the chosen labels; main thread.

    With ``since`` (the snapshot the run has), a label store that was not written since is answered with
    ``since`` itself (nothing read, nothing hashed), and a changed one looks up only its changed chunks."""
    if labels_choice == store_choice:
        store = session.store_for(image_layer)
        if store is None:
            raise MedsegError("No label store is open for this image: open or create one in the Annotate widget "
                              "and paint some labels, or choose a Labels layer.")
        ctrl = session.painter_for(image_layer)
        if ctrl is not None:
            ctrl.flush(wait=True)
        if since is not None and since.is_current(store):
            return since, f"label store {store.path}"
        return LabelSnapshot.of_store(store, since), f"label store {store.path}"
    if labels_choice not in viewer.layers:
        raise MedsegError(f"The labels layer {labels_choice!r} no longer exists; choose another.")
    layer = viewer.layers[labels_choice]
    if layer._type_string != "labels":
        raise MedsegError(f"{labels_choice!r} is not a Labels layer; choose the labels to train on.")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    import numpy as np

    arr = np.asarray(data)
    classes = classes_for_layer(layer, int(arr.max(initial=0)))
    return LabelSnapshot.of_array(arr, classes), f"labels layer {labels_choice!r}"


def model_config(settings: dict[str, Any], n_channels: int = 1, n_classes: int = 2) -> Any:
    from napari_medseg.models import preset

    dims = 3 if settings.get("dims") == "3D" else 2  # each architecture from its own "small" preset
    return preset(settings.get("arch", "unet"), spatial_dims=dims, in_channels=n_channels,
                  out_channels=max(2, n_classes))


def device_type(choice: str) -> str:
    """``cpu``, ``cuda`` or ``mps`` for a widget device choice (``auto``: what torch would pick)."""
    name = device_name(choice)
    if name != "auto":
        return name
    import torch

    from napari_medseg.models.devices import mps_available

    return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"


def planned_patch(settings: dict[str, Any], source: ImageSource | None, model_cfg: Any) -> tuple[int, ...]:
    """The patch the widget's *patch size* (the in-plane edge) gives for ``source`` (see ``patch_for_edge``)."""
    from napari_medseg.training.planning import image_geometry, patch_for_edge

    shape, spacing = image_geometry(source) if source is not None else (None, None)
    return patch_for_edge(int(settings.get("patch", 256)), model_cfg, shape, spacing)


def class_weights(text: Any, classes: ClassSchema) -> tuple[float, ...] | None:
    """The Advanced part's class weights ("1, 3": background first, one per class), or None when empty."""
    text = str(text or "").strip()
    if not text:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v)
    except ValueError:
        raise MedsegError(f"class weights {text!r}: give numbers, one per class, background first "
                          f"(e.g. 1, 3)") from None
    if len(vals) != classes.n_classes:
        raise MedsegError(f"class weights {text!r}: {len(vals)} numbers for {classes.n_classes} classes "
                          f"({', '.join(classes.names)}); give one per class, background first")
    return vals


def build_config(settings: dict[str, Any], source: ImageSource, classes: ClassSchema, out: str | None) -> Any:
    from napari_medseg.training import TrainConfig
    from napari_medseg.training.stain import check_stain_channels

    dims = 3 if settings.get("dims") == "3D" else 2
    if dims > source.spatial_dims:
        raise MedsegError(f"a 3D model needs a volume; {source.name!r} is 2D. Choose 2D.")
    mcfg = model_config(settings, source.n_channels, classes.n_classes)
    budget = float(settings.get("budget") or 0)
    stain = float(settings.get("stain_jitter") or 0.0)
    check_stain_channels(stain, source.n_channels, f"{source.name!r} has")  # before the run starts, in the form
    # 'object gaps' (separation weights) apply to object classes only; the field's default is the CLI's auto value
    contact = float(settings.get("contact_weight", AUTO_CONTACT_WEIGHT) or 0.0) if classes.objects else 0.0
    distil = settings.get("distill_from")  # "Distil for deployment": plain supervised + the teacher, all trainable
    return TrainConfig(
        model=mcfg, patch_size=planned_patch(settings, source, mcfg), batch_size=int(settings.get("batch", 4)),
        lr=float(settings.get("lr", 1e-3)), steps=int(settings.get("steps", 2000)),
        time_budget_s=budget if budget > 0 else None, semi="none" if distil else str(settings.get("semi", "auto")),
        eval_model="ema" if settings.get("ema", True) else "student", device=device_name(settings.get("device", "")),
        amp=not str(settings.get("device", "")).endswith("(float32)"),  # the form's "cpu (float32)"
        threads=int(settings.get("threads") or 1), checkpoint_dir=out, num_workers=1,
        grad_checkpoint=bool(settings.get("grad_checkpoint", False)), accumulate=int(settings.get("accumulate", 1)),
        freeze="encoder" if settings.get("freeze_encoder") and not distil else "none",
        unfreeze_at=float(settings.get("unfreeze_at") or 0.0) if settings.get("freeze_encoder") and not distil else 0.0,
        freeze_bn=bool(settings.get("freeze_bn", False)) and not distil,
        deep_supervision=bool(settings.get("deep_supervision", False)), stain_jitter=stain,
        crf_weight=float(settings["crf_weight"]) if settings.get("crf_weight") else None,  # the field's "auto": unset
        bn_reestimate=int(settings.get("bn_reestimate") or 0) if settings.get("freeze_bn") and not distil else 0,
        encoder_lr_scale=float(settings.get("encoder_lr_scale") or 1.0), clip_grad=float(settings.get("clip_grad") or 0.0),
        label_smoothing=float(settings.get("label_smoothing") or 0.0),
        class_weights=class_weights(settings.get("class_weights"), classes),
        contact_weight=contact,
        # "Distil for deployment": the trained model teaches, on windows from anywhere too (training.distill)
        distill_from=distil, unlabelled_ratio=1.0 if distil else 0.0,
    )


def prepare_job(viewer: Any, session: Any, source: ImageSource, image_layer: Any, labels_choice: str,
                settings: dict[str, Any], *, init: str | None, out: str | None, store_choice: str) -> dict[str, Any]:
    snap, what = snapshot_labels(session, viewer, image_layer, labels_choice, store_choice)
    if tuple(snap.shape) != tuple(source.shape):
        raise GeometryMismatchError(f"the labels ({what}) have shape {tuple(snap.shape)} but the image "
                                    f"{source.name!r} is {tuple(source.shape)} at full resolution; paint on this "
                                    "image's label store or a Labels layer of its size")
    if not snap.painted_chunks():
        raise MedsegError(f"Nothing is painted in the {what}: paint at least one class and some background first.")
    cfg = build_config(settings, source, snap.classes, out)
    idx = gpu_index(settings.get("device", ""))
    if idx is not None:
        import torch

        if not torch.cuda.is_available() or idx >= torch.cuda.device_count():
            raise MedsegError(f"GPU cuda:{idx} is not available on this machine; choose another device or cpu.")
        torch.cuda.set_device(idx)
    plan = fit_job(cfg, source, settings)
    if plan.refused:
        raise MedsegError(plan.message)
    cfg = plan.cfg
    note = slow_step_note(cfg, source, device_type(settings.get("device", "")))
    return {"source": source, "snapshot": snap, "labels_what": what, "classes": snap.classes, "cfg": cfg,
            "init": init, "device": cfg.device, "refresh_s": float(settings.get("refresh_s", 20.0)),
            "extra_items": [], "plan": plan, "notes": [note] if note else []}


def slow_step_note(cfg: Any, source: ImageSource, dev: str) -> str | None:
    """A word when a 3D step is far larger than the planned default (it fits in memory, but each step takes
    long: the walkthrough's 64 x 256 x 256 x 4 took 31 s per step on one CPU thread)."""
    import math

    from napari_medseg.training import planning

    if cfg.model.spatial_dims != 3:
        return None
    patch = cfg.patch_for(3)
    n = cfg.split_batch()
    vox = math.prod(patch) * (n[0] + n[1])
    target = planning.STEP_VOXELS.get(dev, planning.STEP_VOXELS["cpu"])
    if vox <= 4 * target:
        return None
    shape, spacing = planning.image_geometry(source)
    edge = planning.default_edge(cfg.model, shape, spacing, 2, device_type=dev)
    default = planning.patch_for_edge(edge, cfg.model, shape, spacing)
    where = "on the CPU" if dev == "cpu" else f"on {dev}"
    return (f"Each step trains on {vox / 1e6:.1f} M voxels ({n[0] + n[1]} patches of {planning.size_text(patch)}), "
            f"{vox / (math.prod(default) * 2):.0f}x the planned 3D default for this volume (patch "
            f"{planning.size_text(default)}, batch 2): expect slow steps {where}. For the default, set patch size "
            f"{edge} and batch 2.")


def fit_job(cfg: Any, source: ImageSource, settings: dict[str, Any]) -> Any:
    """``planning.fit_to_memory`` for the widget's run: the edge is the *patch size* field, the patch follows
    the image; the memory is what is free now on the chosen device."""
    from napari_medseg.training import planning

    shape, spacing = planning.image_geometry(source)
    dev = device_type(settings.get("device", ""))
    if dev == "cuda":
        import torch

        if not torch.cuda.is_available():  # the engine says so when it starts; plan as for the CPU meanwhile
            dev = "cpu"
    return planning.fit_to_memory(
        cfg, cfg.model, int(settings.get("patch", 256)),
        lambda e: planning.patch_for_edge(e, cfg.model, shape, spacing), planning.available_memory(dev),
        n_channels=source.n_channels, itemsize=source.dtype.itemsize, device_type=dev)


class _StopEither(threading.Event):
    """Set when either the user's Stop or an internal refresh asks the current run to end."""

    def __init__(self, outer: threading.Event) -> None:
        super().__init__()
        self.outer = outer

    def is_set(self) -> bool:
        return self.outer.is_set() or super().is_set()


def make_preview_hook(source: ImageSource, view: LatestValue, opts: LatestValue, norm_box: dict[str, Any],
                      device: str, max_share: float = 0.3, window: tuple[int, ...] | None = None) -> Any:
    """A ``preview_hook`` for ``train``: predicts the current view when it changed or every ``every_s``,
    keeping only the pixels predicted with at least ``opts["min_confidence"]`` (``MIN_CONFIDENCE``;
    ``confident_only``), but never spends more than ``max_share`` of the worker's time on previews (a slow
    preview on a small machine must not starve training, nor hold the GIL against the viewer). A view of more than 4 training
    patches (``window``, 3D) is predicted window by window, so a preview never needs more memory than a few
    patches."""
    state = {"t": 0.0, "key": None, "cost": 0.0}

    def hook(model: Any, teacher: Any, step: int) -> Any:
        o = opts.get() or {}
        if not o.get("enabled", True):
            return None
        req: ViewRequest | None = view.get()
        norm = norm_box.get("norm")
        if req is None or norm is None:
            return None
        since = time.perf_counter() - state["t"]
        if since < state["cost"] * (1.0 - max_share) / max_share:  # previews take at most max_share of the time
            return None
        if req.key == state["key"] and since < float(o.get("every_s", 3.0)):
            return None
        from napari_medseg.inference import predict_region

        net = teacher if teacher is not None else model
        t0 = time.perf_counter()
        big = window is not None and _voxels(req.region) > 4 * _voxels(window)
        pred = predict_region(net, source, req.level, req.region, norm, device=device, window=window if big else None,
                              with_probs=True, uncertainty_model=net if o.get("uncertainty") else None)
        pred = confident_only(pred, float(o.get("min_confidence", MIN_CONFIDENCE)))
        now = time.perf_counter()
        state["t"], state["key"], state["cost"] = now, req.key, now - t0
        return pred

    return hook


def confident_only(pred: Any, min_confidence: float) -> Any:
    """The preview's labels with 0 (drawn transparent) where the model is unsure: its highest class
    probability is below ``min_confidence``; the probabilities are dropped (the preview does not need them).

    The Predict widget's preview rule (``predict_job.confident_labels``): early in a run the model calls
    most pixels something, unsure, which drew a noisy layer over the whole view; the pixels it is sure of
    appear as it learns. The training preview's default, 0.8, is lower than the Predict preview's 0.9: at
    0.9 a short run shows little (it predicts with the weights' running average, which lags). Measured on the
    sample CT (2D, patch 128, 1 % scribbles on 3 slices; 3 seeds on a painted slice, 2 on an unpainted one;
    ``docs/gui-loop.md``): unfiltered, the first 50 steps draw 25-84 % of the slice as a class, 2-47 % of it
    right; at 0.8 at most 2 % of the slice. After 300 steps 0.8 draws 60-71 % of the organs, 78-92 % of what
    it draws right (unfiltered 77-82 %, 52-86 % right; 0.9: 13-65 %, 91-98 % right)."""
    probs = getattr(pred, "probs", None)
    if probs is None:
        return pred
    from napari_medseg._napari.jobs.predict_job import confident_labels

    return dataclasses.replace(pred, labels=confident_labels(pred.labels, probs, min_confidence), probs=None)


def _voxels(region: Any) -> int:
    n = 1
    for r in region:
        n *= (r.stop - r.start) if isinstance(r, slice) and r.stop is not None and r.start is not None else int(r)
    return n


def _land(cfg: Any, done: Any) -> Generator[Any, None, None]:
    """The final DoneEvent, after the run's model is added to the model library (``cfg.library``); its
    images and parent come from the checkpoint's meta."""
    from napari_medseg.training import WarningEvent
    from napari_medseg.training.loop import land_in_library

    ckpt = done.best_checkpoint or done.last_checkpoint
    name, folder, warning = land_in_library(cfg, ckpt if done.steps > 0 else None, [], None)
    if warning:
        yield WarningEvent(warning)
    yield dataclasses.replace(done, library_name=name, library_path=folder)


def run_job(job: dict[str, Any], stop: threading.Event, view: LatestValue, preview_opts: LatestValue,
            labels_box: LatestValue | None = None) -> Generator[Any, None, None]:
    """Worker-thread generator: the training events, with step numbers continuing across refreshes."""
    from napari_medseg.training import (
        DoneEvent,
        StartEvent,
        StepEvent,
        TrainingData,
        TrainingItem,
        ValidationEvent,
        train,
    )

    source: ImageSource = job["source"]
    snap: LabelSnapshot = job["snapshot"]
    cfg = job["cfg"]
    init = job["init"]
    norm_box: dict[str, Any] = {}
    window = tuple(cfg.patch_for(cfg.model.spatial_dims)) if cfg.model.spatial_dims == 3 else None
    hook = make_preview_hook(source, view, preview_opts, norm_box, job["device"] if job["device"] != "auto" else "cpu",
                             window=window)
    steps_done, t0 = 0, time.perf_counter()
    while True:
        inner = _StopEither(stop)
        # the viewed image first (its labels refresh while training), then any further (image, labels) pairs
        items = [TrainingItem(image=source, labels=snap, name=source.path or source.name)]
        items += [TrainingItem(image=src, labels=lab, name=src.path or src.name) for src, lab in job.get("extra_items", [])]
        data = TrainingData(items=items, classes=snap.classes)
        remaining_t = None if cfg.time_budget_s is None else cfg.time_budget_s - (time.perf_counter() - t0)
        # a refresh restarts train(): the model lands in the library once, from the last run (below)
        run_cfg = cfg.replace(steps=max(1, cfg.steps - steps_done), time_budget_s=remaining_t, library=False)
        refreshed = False
        done: Any = None
        # closed on the way out: the run gives back what it holds (core.heap) even if a traceback keeps this frame
        with contextlib.closing(train(run_cfg, data, stop=inner, init=init, preview_hook=hook, preview_every_s=0.5,
                                     courtesy=job.get("courtesy"))) as run_events:
            for ev in run_events:
                if isinstance(ev, StartEvent):
                    norm_box["norm"] = getattr(ev, "norm", None)
                if isinstance(ev, (StepEvent, ValidationEvent)) and steps_done:
                    ev = dataclasses.replace(ev, step=ev.step + steps_done)
                if isinstance(ev, DoneEvent):
                    done = ev
                    if not refreshed:
                        yield from _land(cfg, dataclasses.replace(ev, steps=ev.steps + steps_done))
                    continue
                yield ev
                if labels_box is not None and not refreshed and not stop.is_set():
                    new = labels_box.get()
                    if new is not None and new is not snap:
                        snap, refreshed = new, True
                        inner.set()
        if not refreshed or stop.is_set() or done is None:
            return
        steps_done += done.steps
        init = done.last_checkpoint or init
        if steps_done >= cfg.steps or (remaining_t is not None and remaining_t <= 0):
            return
        from napari_medseg.training import WarningEvent

        yield WarningEvent(f"new labels picked up ({snap.n_painted} painted pixels); training continues "
                           f"from step {steps_done}")
