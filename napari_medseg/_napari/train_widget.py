"""The training dock widget: data, model, training settings, Start / Stop / Resume, a live plot of the
losses and validation Dice, and a live preview of the current view while the model trains.

Torch runs only in a napari thread worker; layers are touched only in main-thread event handlers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..io.errors import MedsegError
from .layer_list_events import quiet_zoom_events
from .layers import (
    LatestValue,
    camera_of,
    current_view,
    medseg_meta,
    source_from_layer,
    units_of,
    upsert_layer,
)
from .plot import LivePlot
from .qt_helpers import path_row
from .quiet_gc import freeze_long_lived
from .session import session_for
from .settings import load_settings, save_settings
from .workers import show_error, show_info, show_warning, start_generator_worker

log = logging.getLogger(__name__)
PREVIEW_LAYER = "medseg preview"
UNCERTAINTY_LAYER = "medseg uncertainty"
STORE_CHOICE = "label store (Annotate widget)"


def available_devices() -> list[str]:
    import torch

    devs = []
    if torch.cuda.is_available():
        devs += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    devs.append("cpu")
    return devs


SEMI_CHOICES = (("labels only (supervised)", "none"), ("+ pseudo-labels (FixMatch-style)", "pseudo_label"),
                ("+ Mean Teacher consistency", "mean_teacher"))
SEMI_TOOLTIP = ("Learn also from the unpainted pixels. Costs one extra forward pass per step (1.4-1.5x the step "
                "time, so fewer steps fit a time budget). Measured at equal time on MoNuSeg nuclei "
                "(benchmarks/RESULTS.md, 3 seeds): pseudo-labels gave +4.3 Dice when the paint sits in a few "
                "windows of a few images, the rest unpainted, and -0.3 (no gain) with 1 % scribbles spread over "
                "every image. Off by default because it does not help in every setting; try it when you paint "
                "only some regions of a large image.")


def _spin(lo: float, hi: float, value: float, step: float | None = None, decimals: int | None = None):
    if decimals is None:
        w = QSpinBox()
    else:
        w = QDoubleSpinBox()
        w.setDecimals(decimals)
    w.setRange(lo, hi)
    if step:
        w.setSingleStep(step)
    w.setValue(value)
    return w


class TrainWidget(QWidget):
    """Dock widget: fine-tune a model on the painted labels of an image, with a live preview."""

    SETTINGS = "train"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._worker: Any = None
        self._stop = threading.Event()
        self._view = LatestValue()
        self._preview_opts = LatestValue({})
        self._labels_box = LatestValue()
        self._labels_fp: str | None = None
        # Labels painted while training runs are picked up at the next refresh (a new consistent snapshot).
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setInterval(20_000)
        self._refresh_timer.timeout.connect(self._maybe_refresh_labels)
        self._started_at = 0.0
        self._first_preview_s: float | None = None
        self._last_preview_t: float | None = None
        self._preview_intervals: list[float] = []
        self._build()
        self._load_settings()
        self._refresh_layers()
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        # The current view, sampled on the main thread for the worker (debounced on camera moves).
        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(150)
        self._view_timer.timeout.connect(self._update_view)
        camera_of(napari_viewer).events.connect(self._schedule_view_update)
        napari_viewer.dims.events.current_step.connect(self._schedule_view_update)
        freeze_long_lived()  # the libraries, the viewer and this widget live for the session (quiet_gc)
        quiet_zoom_events(napari_viewer)  # the layer list ignores zoom steps (layer_list_events)

    def _schedule_view_update(self, _event: Any = None) -> None:
        self._view_timer.start()

    # -- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        data = QGroupBox("Data")
        f = QFormLayout(data)
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        f.addRow("image", self.image_combo)
        f.addRow("labels", self.labels_combo)
        lay.addWidget(data)

        model = QGroupBox("Model")
        f = QFormLayout(model)
        self.arch_combo = QComboBox()
        self.dims_combo = QComboBox()
        self.dims_combo.addItems(["2D", "3D"])
        ck, self.init_edit = path_row("train from scratch, or pick a checkpoint", self._pick_init)
        self.device_combo = QComboBox()
        f.addRow("architecture", self.arch_combo)
        f.addRow("dimensions", self.dims_combo)
        f.addRow("start from", ck)
        f.addRow("device", self.device_combo)
        lay.addWidget(model)

        tr = QGroupBox("Training")
        f = QFormLayout(tr)
        self.patch_spin = _spin(32, 1024, 256, 32)
        self.batch_spin = _spin(1, 256, 4)
        self.lr_spin = _spin(1e-6, 1.0, 1e-3, 1e-4, decimals=5)
        self.steps_spin = _spin(1, 1_000_000, 2000, 100)
        self.budget_spin = _spin(0, 24 * 3600, 0, 60)
        self.budget_spin.setSuffix(" s (0 = none)")
        self.semi_combo = QComboBox()
        for label, value in SEMI_CHOICES:
            self.semi_combo.addItem(label, value)
        self.semi_combo.setToolTip(SEMI_TOOLTIP)
        self.ema_check = QCheckBox("predict with the weights' running average (EMA)")
        self.ema_check.setChecked(True)
        self.ema_check.setToolTip("An exponential moving average of the weights, kept at no extra forward pass. "
                                  "On the benchmark it scored +0.3 and +0.8 Dice over the last weights in short "
                                  "(100 s) runs and the same in 300 s runs (benchmarks/RESULTS.md); untick to "
                                  "predict with the last weights.")
        self.threads_spin = _spin(1, 256, 1)
        self.threads_spin.setToolTip("CPU threads for training; leave at least one core to the viewer")
        f.addRow("patch size", self.patch_spin)
        f.addRow("batch", self.batch_spin)
        f.addRow("learning rate", self.lr_spin)
        f.addRow("steps", self.steps_spin)
        f.addRow("time budget", self.budget_spin)
        f.addRow("unpainted pixels", self.semi_combo)
        f.addRow(self.ema_check)
        f.addRow("CPU threads", self.threads_spin)
        outrow, self.out_edit = path_row("default: a new run folder in the napari-medseg cache", self._pick_out)
        f.addRow("checkpoints in", outrow)
        lay.addWidget(tr)

        btns = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop")
        self.resume_btn = QPushButton("Resume")
        self.start_btn.clicked.connect(lambda: self.start(resume=False))
        self.resume_btn.clicked.connect(lambda: self.start(resume=True))
        self.stop_btn.clicked.connect(self.stop)
        for b in (self.start_btn, self.stop_btn, self.resume_btn):
            btns.addWidget(b)
        lay.addLayout(btns)

        pv = QHBoxLayout()
        self.preview_check = QCheckBox("live preview")
        self.preview_check.setChecked(True)
        self.uncert_check = QCheckBox("uncertainty")
        self.preview_every = _spin(0.5, 120.0, 3.0, 0.5, decimals=1)
        self.preview_every.setSuffix(" s")
        pv.addWidget(self.preview_check)
        pv.addWidget(self.uncert_check)
        pv.addWidget(QLabel("every"))
        pv.addWidget(self.preview_every)
        lay.addLayout(pv)
        for sig in (self.preview_check.toggled, self.uncert_check.toggled, self.preview_every.valueChanged):
            sig.connect(self._sync_preview_opts)

        self.plot = LivePlot()
        lay.addWidget(self.plot)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._set_running(False)

    def _pick_init(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Start from checkpoint", "", "Checkpoints (*.pt *.pth)")
        if path:
            self.init_edit.setText(path)

    def _pick_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Checkpoint folder")
        if path:
            self.out_edit.setText(path)

    # -- settings remembered between runs -----------------------------------------------------------
    def _settings_values(self) -> dict[str, Any]:
        return {"arch": self.arch_combo.currentText(), "dims": self.dims_combo.currentText(),
                "patch": self.patch_spin.value(), "batch": self.batch_spin.value(), "lr": self.lr_spin.value(),
                "steps": self.steps_spin.value(), "budget": self.budget_spin.value(),
                "semi": self.semi_combo.currentData(), "ema": self.ema_check.isChecked(),
                "threads": self.threads_spin.value(), "out": self.out_edit.text(),
                "preview": self.preview_check.isChecked(), "uncertainty": self.uncert_check.isChecked(),
                "preview_every": self.preview_every.value(), "device": self.device_combo.currentText()}

    def _load_settings(self) -> None:
        from ..models import available_models

        self.arch_combo.addItems(available_models())
        try:
            self.device_combo.addItems(available_devices())
        except Exception as e:  # a broken CUDA install must not stop the widget
            log.warning("device listing failed: %s", e)
            self.device_combo.addItems(["cpu"])
        import os

        self.threads_spin.setValue(max(1, (os.cpu_count() or 2) - 1))
        s = load_settings(self.SETTINGS)
        if not s:
            self.arch_combo.setCurrentText("unet")
            return
        self.arch_combo.setCurrentText(s.get("arch", "unet"))
        self.dims_combo.setCurrentText(s.get("dims", "2D"))
        for w, k in ((self.patch_spin, "patch"), (self.batch_spin, "batch"), (self.lr_spin, "lr"),
                     (self.steps_spin, "steps"), (self.budget_spin, "budget"),
                     (self.threads_spin, "threads"), (self.preview_every, "preview_every")):
            if k in s:
                with contextlib.suppress(TypeError, ValueError):
                    w.setValue(type(w.value())(s[k]))
        # the older "mean_teacher" setting (on by default then) is not carried over: off is the measured default
        i = self.semi_combo.findData(s.get("semi", "none"))
        self.semi_combo.setCurrentIndex(max(0, i))
        self.ema_check.setChecked(bool(s.get("ema", True)))
        self.preview_check.setChecked(bool(s.get("preview", True)))
        self.uncert_check.setChecked(bool(s.get("uncertainty", False)))
        self.out_edit.setText(str(s.get("out", "")))
        if s.get("device") in [self.device_combo.itemText(i) for i in range(self.device_combo.count())]:
            self.device_combo.setCurrentText(s["device"])

    # -- layers -------------------------------------------------------------------------------------
    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        img, lab = self.image_combo.currentText(), self.labels_combo.currentText()
        self.image_combo.clear()
        self.labels_combo.clear()
        self.image_combo.addItems([lay.name for lay in self.viewer.layers if isinstance(lay, Image)
                                   and lay.name != UNCERTAINTY_LAYER])
        self.labels_combo.addItem(STORE_CHOICE)
        self.labels_combo.addItems([lay.name for lay in self.viewer.layers if isinstance(lay, Labels)
                                    and lay.name != PREVIEW_LAYER and not medseg_meta(lay).get("read_only")])
        if img:
            self.image_combo.setCurrentText(img)
        if lab:
            self.labels_combo.setCurrentText(lab)

    def _image_layer(self):
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise MedsegError("Choose an image layer to train on (open an image or a sample first).")
        return self.viewer.layers[name]

    def _update_view(self) -> None:
        try:
            layer = self._image_layer()
        except MedsegError:
            return
        depth = self.patch_spin.value() if self.dims_combo.currentText() == "3D" else 1
        self._view.set(current_view(self.viewer, layer, depth=min(depth, 64)))

    # -- run ----------------------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self.start_btn.setEnabled(not running)
        self.resume_btn.setEnabled(not running and self.session.last_checkpoint is not None)
        self.stop_btn.setEnabled(running)

    def _gather(self, resume: bool) -> dict[str, Any]:
        """Everything the worker needs, gathered on the main thread (layers are not touched later)."""
        from .training_job import prepare_job

        image_layer = self._image_layer()
        source = source_from_layer(image_layer)
        labels_choice = self.labels_combo.currentText()
        init = self.init_edit.text().strip() or None
        if resume:
            init = str(self.session.last_checkpoint)
        out = self.out_edit.text().strip() or None
        return prepare_job(self.viewer, self.session, source, image_layer, labels_choice, self._settings_values(),
                           init=init, out=out, store_choice=STORE_CHOICE)

    def start(self, resume: bool = False) -> None:
        if self._worker is not None:
            show_info("Training is already running; press Stop first.")
            return
        try:
            job = self._gather(resume)
        except MedsegError as e:
            show_error(str(e))
            return
        except Exception as e:  # bad layer data and the like: a message, never a crash
            log.exception("could not start training")
            show_error(f"Could not start training: {e}")
            return
        save_settings(self.SETTINGS, self._settings_values())
        from .training_job import run_job

        self._stop.clear()
        self.plot.clear()
        self._started_at = time.perf_counter()
        self._first_preview_s = None
        self._last_preview_t = None
        self._preview_intervals = []
        self._warned: set[str] = set()
        self._update_view()
        self._sync_preview_opts()
        self._job = job
        self.status.setText(f"starting on {job['device']}…")
        self._set_running(True)
        self._labels_box.set(None)
        self._labels_fp = job["snapshot"].fingerprint()
        self._refresh_timer.start()
        self._worker = start_generator_worker(
            run_job, job, self._stop, self._view, self._preview_opts, self._labels_box,
            on_event=self._on_event, on_finished=self._on_finished,
        )

    def _sync_preview_opts(self, *_: Any) -> None:
        # The worker reads these through a lock-protected box, never from the Qt widgets.
        self._preview_opts.set({"enabled": self.preview_check.isChecked(), "uncertainty": self.uncert_check.isChecked(),
                                "every_s": float(self.preview_every.value())})

    def stop(self) -> None:
        if self._worker is not None:
            self._stop.set()
            self.status.setText("stopping: saving a checkpoint…")

    def _maybe_refresh_labels(self) -> None:
        """Main thread: if the labels changed since the run's snapshot, hand the worker a new snapshot."""
        if self._worker is None:
            return
        from .training_job import snapshot_labels

        try:
            snap, _ = snapshot_labels(self.session, self.viewer, self._image_layer(), self.labels_combo.currentText(),
                                      STORE_CHOICE)
        except MedsegError as e:  # e.g. the labels layer was deleted: keep training on the last snapshot
            show_warning(f"Labels not refreshed: {e} Training goes on with the labels it has.")
            return
        fp = snap.fingerprint()
        if fp != self._labels_fp and snap.painted_chunks():
            self._labels_fp = fp
            self._labels_box.set(snap)

    def _on_finished(self) -> None:
        self._worker = None
        self._refresh_timer.stop()
        self._set_running(False)

    # -- events (main thread) -----------------------------------------------------------------------
    def _on_event(self, ev: Any) -> None:
        kind = type(ev).__name__
        try:
            if kind == "StepEvent":
                self.plot.add_point("loss", ev.step, ev.loss)
                if getattr(ev, "loss_cons", None):
                    self.plot.add_point("loss_cons", ev.step, ev.loss_cons)
                self.status.setText(f"step {ev.step}  loss {ev.loss:.4f}  lr {ev.lr:.2e}  batch {ev.batch_size}"
                                    f"  {1.0 / max(ev.step_time_s, 1e-6):.1f} steps/s")
            elif kind == "ValidationEvent":
                self.plot.add_point("val_dice", ev.step, ev.mean_dice)
            elif kind == "PreviewEvent":
                self._show_preview(ev.payload)
            elif kind == "CheckpointEvent":
                self.session.last_checkpoint = Path(ev.path)
            elif kind == "WarningEvent":
                if ev.message not in self._warned:  # a repeated warning is shown once per run
                    self._warned.add(ev.message)
                    show_warning(ev.message)
            elif kind == "StartEvent":
                self.status.setText(f"training on {getattr(ev, 'device', '?')}")
            elif kind == "DoneEvent":
                ck = getattr(ev, "last_checkpoint", None)
                if ck:
                    self.session.last_checkpoint = Path(ck)
                if getattr(ev, "best_checkpoint", None):
                    self.session.best_checkpoint = Path(ev.best_checkpoint)
                self.status.setText(f"done ({ev.reason}) after {ev.steps} steps; checkpoint {ck}")
        except Exception:  # a display problem must never kill the run
            log.exception("could not show a training event")

    def _show_preview(self, pred: Any) -> None:
        if pred is None:
            return
        now = time.perf_counter()
        if self._first_preview_s is None:
            self._first_preview_s = now - self._started_at
        elif self._last_preview_t is not None:
            self._preview_intervals.append(now - self._last_preview_t)
        self._last_preview_t = now
        try:
            image = self._image_layer()
        except MedsegError:
            image = None
        show_prediction(self.viewer, pred, self._job["classes"], uncertainty=self.uncert_check.isChecked(),
                        image=image)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the worker cleanly (it saves a checkpoint) and wait for it."""
        if self._worker is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                self._worker.await_workers(msecs=int(timeout_s * 1000))


def show_prediction(viewer: Any, pred: Any, classes: Any, *, uncertainty: bool, image: Any = None) -> None:
    """Put a ``RegionPrediction`` on the canvas as the preview Labels layer (and the uncertainty layer),
    in the units of ``image`` (the layer it is drawn over)."""
    from napari.utils.colormaps import DirectLabelColormap

    cmap = DirectLabelColormap(color_dict=classes.prediction_colors(alpha=1.0))
    units = units_of(image, len(pred.scale))
    upsert_layer(viewer, PREVIEW_LAYER, "labels", pred.labels, translate=pred.translate, scale=pred.scale,
                 opacity=0.5, colormap=cmap, **units)
    unc = getattr(pred, "uncertainty", None)
    if uncertainty and unc is not None:
        upsert_layer(viewer, UNCERTAINTY_LAYER, "image", unc, translate=pred.translate, scale=pred.scale,
                     colormap="magma", opacity=0.5, contrast_limits=(0.0, 1.0), blending="additive", **units)
    elif UNCERTAINTY_LAYER in viewer.layers and not uncertainty:
        viewer.layers[UNCERTAINTY_LAYER].visible = False
