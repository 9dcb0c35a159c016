"""The training job behind the Train widget.

``prepare_job`` runs on the main thread: it reads the widget's choices and the layers once (a consistent
snapshot of the labels) and returns plain values. ``run_job`` runs in a napari thread worker: it drives
``training.train`` and yields its events; between steps it makes the live preview of the view the user is
looking at; when the user has painted more (a new snapshot arrives), it refreshes: the run continues from
its last checkpoint on the new labels (same validation subset, so Dice stays comparable).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Generator
from typing import Any

from ..io.classes import ClassSchema
from ..io.errors import GeometryMismatchError, MedsegError
from ..io.label_snapshot import LabelSnapshot
from ..io.source import ImageSource
from .layers import LatestValue, ViewRequest, medseg_meta

log = logging.getLogger(__name__)


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
    return ClassSchema(names=("background",) + tuple(f"class {i}" for i in range(1, n)))


def snapshot_labels(session: Any, viewer: Any, image_layer: Any, labels_choice: str, store_choice: str
                    ) -> tuple[LabelSnapshot, str]:
    """(snapshot, description) of the chosen labels; main thread."""
    if labels_choice == store_choice:
        store = session.label_stores.get(image_layer.name)
        if store is None:
            raise MedsegError("No label store is open for this image: open or create one in the Annotate widget "
                              "and paint some labels, or choose a Labels layer.")
        ctrl = session.painters.get(image_layer.name) if hasattr(session, "painters") else None
        if ctrl is not None:
            ctrl.flush(wait=True)
        return LabelSnapshot.of_store(store), f"label store {store.path}"
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


def build_config(settings: dict[str, Any], source: ImageSource, classes: ClassSchema, out: str | None) -> Any:
    from ..models import ModelConfig
    from ..training import TrainConfig

    dims = 3 if settings.get("dims") == "3D" else 2
    if dims > source.spatial_dims:
        raise MedsegError(f"a 3D model needs a volume; {source.name!r} is 2D. Choose 2D.")
    mcfg = ModelConfig(name=settings.get("arch", "unet"), spatial_dims=dims, in_channels=source.n_channels,
                       out_channels=classes.n_classes)
    budget = float(settings.get("budget") or 0)
    return TrainConfig(
        model=mcfg, patch_size=(int(settings.get("patch", 256)),), batch_size=int(settings.get("batch", 4)),
        lr=float(settings.get("lr", 1e-3)), steps=int(settings.get("steps", 2000)),
        time_budget_s=budget if budget > 0 else None, semi=str(settings.get("semi", "none")),
        eval_model="ema" if settings.get("ema", True) else "student", device=device_name(settings.get("device", "")),
        threads=int(settings.get("threads") or 1), checkpoint_dir=out, num_workers=1,
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
    return {"source": source, "snapshot": snap, "labels_what": what, "classes": snap.classes, "cfg": cfg,
            "init": init, "device": cfg.device, "refresh_s": float(settings.get("refresh_s", 20.0)),
            "extra_items": []}


class _StopEither(threading.Event):
    """Set when either the user's Stop or an internal refresh asks the current run to end."""

    def __init__(self, outer: threading.Event) -> None:
        super().__init__()
        self.outer = outer

    def is_set(self) -> bool:
        return self.outer.is_set() or super().is_set()


def make_preview_hook(source: ImageSource, view: LatestValue, opts: LatestValue, norm_box: dict[str, Any],
                      device: str, max_share: float = 0.3) -> Any:
    """A ``preview_hook`` for ``train``: predicts the current view when it changed or every ``every_s``,
    but never spends more than ``max_share`` of the worker's time on previews (a slow preview on a small
    machine must not starve training, nor hold the GIL against the viewer)."""
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
        from ..inference import predict_region

        net = teacher if teacher is not None else model
        t0 = time.perf_counter()
        pred = predict_region(net, source, req.level, req.region, norm, device=device,
                              uncertainty_model=net if o.get("uncertainty") else None)
        now = time.perf_counter()
        state["t"], state["key"], state["cost"] = now, req.key, now - t0
        return pred

    return hook


def run_job(job: dict[str, Any], stop: threading.Event, view: LatestValue, preview_opts: LatestValue,
            labels_box: LatestValue | None = None) -> Generator[Any, None, None]:
    """Worker-thread generator: the training events, with step numbers continuing across refreshes."""
    from ..training import (
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
    hook = make_preview_hook(source, view, preview_opts, norm_box, job["device"] if job["device"] != "auto" else "cpu")
    steps_done, t0 = 0, time.perf_counter()
    while True:
        inner = _StopEither(stop)
        # the viewed image first (its labels refresh while training), then any further (image, labels) pairs
        items = [TrainingItem(image=source, labels=snap, name=source.path or source.name)]
        items += [TrainingItem(image=src, labels=lab, name=src.path or src.name) for src, lab in job.get("extra_items", [])]
        data = TrainingData(items=items, classes=snap.classes)
        remaining_t = None if cfg.time_budget_s is None else cfg.time_budget_s - (time.perf_counter() - t0)
        run_cfg = cfg.replace(steps=max(1, cfg.steps - steps_done), time_budget_s=remaining_t)
        refreshed = False
        done: Any = None
        for ev in train(run_cfg, data, stop=inner, init=init, preview_hook=hook, preview_every_s=0.5):
            if isinstance(ev, StartEvent):
                norm_box["norm"] = getattr(ev, "norm", None)
            if isinstance(ev, (StepEvent, ValidationEvent)) and steps_done:
                ev = dataclasses.replace(ev, step=ev.step + steps_done)
            if isinstance(ev, DoneEvent):
                done = ev
                if not refreshed:
                    ev = dataclasses.replace(ev, steps=ev.steps + steps_done)
                    yield ev
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
        from ..training import WarningEvent

        yield WarningEvent(f"new labels picked up ({snap.n_painted} painted pixels); training continues "
                           f"from step {steps_done}")
