"""The training dock widget: data, model, training settings (``train_form``), Start / Stop / Resume, a live
plot of the losses and validation Dice with a status line (``train_feedback``), a live preview of the current
view while the model trains, and a message area (``messages.MessageLog``) that keeps what the widget said.
"Start from" takes a checkpoint, a bioimage.io package of a napari-medseg architecture or a library model
(``model_library``); "Export…" writes the trained model as a bioimage.io package (``export_dialog``).

Start checks the step's memory against what the machine has free (``jobs.train_job.prepare_job``): it reduces
batch and patch, saying what changed and why, or refuses. Stop interrupts a step between layers, a wait for
data and a preview (``training.guard``). Torch runs only in a napari thread worker; layers are touched only
in main-thread event handlers.
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
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medseg._napari.dock_layout import TabsOnFirstShow, VerticalScroll
from napari_medseg._napari.jobs.train_job import MIN_CONFIDENCE
from napari_medseg._napari.jobs.workers import start_generator_worker
from napari_medseg._napari.layer_list_events import quiet_zoom_events
from napari_medseg._napari.layerdata import medseg_meta, prediction_colormap, units_of
from napari_medseg._napari.layers import LatestValue, camera_of, current_view, on_layer_renamed, upsert_layer
from napari_medseg._napari.quiet_gc import freeze_long_lived
from napari_medseg._napari.session import session_for
from napari_medseg._napari.widgets.guidance_parts import is_heatmap_layer
from napari_medseg._napari.widgets.messages import MessageLog
from napari_medseg._napari.widgets.model_library import model_path
from napari_medseg._napari.widgets.plot import LivePlot
from napari_medseg._napari.widgets.qt_helpers import combo_layer, fill_layer_combo
from napari_medseg._napari.widgets.settings import confirm, drop_unconfirmed, save_unconfirmed
from napari_medseg._napari.widgets.train_feedback import RunFeedback
from napari_medseg._napari.widgets.train_form import (
    SEMI_CHOICES,
    SEMI_TOOLTIP,
    TrainForm,
    _spin,
    available_devices,
)
from napari_medseg.core.errors import MedsegError
from napari_medseg.training import (
    CheckpointEvent,
    DoneEvent,
    PreviewEvent,
    StartEvent,
    StepEvent,
    ValidationEvent,
    WarningEvent,
)

log = logging.getLogger(__name__)
PREVIEW_LAYER = "medseg preview"
UNCERTAINTY_LAYER = "medseg uncertainty"
PREVIEW_OPACITY = 0.5  # the live preview over the image: the tissue under it stays readable
CONFIDENCE_TOOLTIP = ("The preview draws a class only where the model gives it at least this probability; elsewhere "
                      "the image shows through. Early in a run the model calls most of the view something, unsure: "
                      "on the sample CT the first 50 steps drew 25-84 % of the slice, mostly wrong; at 0.8, at most "
                      "2 %. After 300 steps 0.8 drew 60-71 % of the organs, 78-92 % of it right (docs/gui-loop.md). "
                      "0 draws every pixel.")
STORE_CHOICE = "label store (Annotate widget)"
DISTIL_STUDENT = "light_unet"  # "Distil for deployment" trains this architecture (its small preset)


__all__ = ["PREVIEW_LAYER", "SEMI_CHOICES", "SEMI_TOOLTIP", "STORE_CHOICE", "TrainWidget", "_spin",
           "available_devices", "show_prediction"]


class TrainWidget(TabsOnFirstShow, TrainForm, QWidget):
    """Dock widget: fine-tune a model on the painted labels of an image, with a live preview."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._worker: Any = None
        self._stop = threading.Event()
        self._view = LatestValue()
        self._preview_opts = LatestValue({})
        self._labels_box = LatestValue()
        self._labels_snap: Any = None  # the labels the run trains on (a newer snapshot replaces it)
        self._labels_fp: str | None = None  # of a Labels layer's snapshot (a label store has a version instead)
        # Labels painted while training runs are picked up at the next refresh (a new consistent snapshot).
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setInterval(20_000)
        self._refresh_timer.timeout.connect(self._maybe_refresh_labels)
        self._started_at = 0.0
        self._distilling = False  # the running job is "Distil for deployment"
        self._first_preview_s: float | None = None
        self._last_preview_t: float | None = None
        self._preview_intervals: list[float] = []
        self._job: dict[str, Any] | None = None
        self._confirmed = False  # the run's settings are saved for the next session once a step finished
        self._build()
        self._load_settings()
        self._refresh_layers()
        self._connect_form()
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        on_layer_renamed(napari_viewer, self._refresh_layers)  # the choices follow the layers, not their names
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
        # the settings scroll when the window is short; the buttons, the plot and the status stay in view
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        content = QWidget()
        lay = QVBoxLayout(content)
        lay.setContentsMargins(6, 6, 2, 2)  # the scroll bar is on the right
        outer.addWidget(VerticalScroll(content), 1)
        run = QVBoxLayout()
        run.setContentsMargins(6, 2, 6, 6)
        outer.addLayout(run)
        self.messages = MessageLog()  # first: loading the settings may have something to say
        self._build_form(lay)

        pv = QHBoxLayout()  # three short rows: one would set the dock's width
        self.preview_check = QCheckBox("live preview")
        self.preview_check.setChecked(True)
        self.uncert_check = QCheckBox("uncertainty")
        self.preview_every = _spin(0.5, 120.0, 3.0, 0.5, decimals=1)
        self.preview_every.setSuffix(" s")
        self.preview_confidence = _spin(0.0, 0.99, MIN_CONFIDENCE, 0.05, decimals=2)
        self.preview_confidence.setToolTip(CONFIDENCE_TOOLTIP)
        pv.addWidget(self.preview_check)
        pv.addWidget(self.uncert_check)
        pv.addStretch(1)
        lay.addLayout(pv)
        pf = QFormLayout()
        pf.addRow("every", self.preview_every)
        pf.addRow("min confidence", self.preview_confidence)
        lay.addLayout(pf)
        lay.addStretch(1)
        for sig in (self.preview_check.toggled, self.uncert_check.toggled, self.preview_every.valueChanged,
                    self.preview_confidence.valueChanged):
            sig.connect(self._sync_preview_opts)

        btns = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop")
        self.resume_btn = QPushButton("Resume")
        self.start_btn.clicked.connect(lambda: self.start(resume=False))
        self.resume_btn.clicked.connect(lambda: self.start(resume=True))
        self.stop_btn.clicked.connect(self.stop)
        self.export_dialog: Any = None  # the bioimage.io export dialog (the button is in the Model group)
        for b in (self.start_btn, self.stop_btn, self.resume_btn):
            btns.addWidget(b)
        run.addLayout(btns)
        self.plot = LivePlot()
        run.addWidget(self.plot)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        run.addWidget(self.status)
        self.scores = QLabel("")  # the last validation's Dice, IoU, sensitivity, specificity (surface Dice, HD95)
        self.scores.setWordWrap(True)
        self.scores.setToolTip("On the held-out painted pixels (and on dense masks where the images have them)")
        run.addWidget(self.scores)
        run.addWidget(self.messages)
        self.feedback = RunFeedback(self.plot, self.status, self.scores)
        self._set_running(False)

    # -- layers -------------------------------------------------------------------------------------
    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        fill_layer_combo(self.image_combo, [lay for lay in self.viewer.layers if isinstance(lay, Image)
                                            and lay.name != UNCERTAINTY_LAYER and not is_heatmap_layer(lay)])
        fill_layer_combo(self.labels_combo, [lay for lay in self.viewer.layers if isinstance(lay, Labels)
                                             and lay.name != PREVIEW_LAYER and not medseg_meta(lay).get("read_only")],
                         head=[STORE_CHOICE])

    def _image_layer(self):
        layer = combo_layer(self.image_combo, self.viewer.layers)
        if layer is None:
            raise MedsegError("Choose an image layer to train on (open an image or a sample first).")
        return layer

    def _update_view(self) -> None:
        try:
            layer = self._image_layer()
        except MedsegError:
            return
        depth = 1
        if self.dims_combo.currentText() == "3D":  # the planned patch's slices (Z follows the spacing)
            try:
                depth = int(self._planned()[2][0])
            except Exception:
                depth = self.patch_spin.value()
        self._view.set(current_view(self.viewer, layer, depth=min(depth, 64)))

    # -- run ----------------------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self.start_btn.setEnabled(not running)
        self.resume_btn.setEnabled(not running and self.session.last_checkpoint is not None)
        self.stop_btn.setEnabled(running)
        self._update_export()

    def _trained_checkpoint(self) -> Path | None:
        """The checkpoint this session trained (best, else last) if its file exists."""
        for ck in (self.session.best_checkpoint, self.session.last_checkpoint):
            if ck is not None and Path(ck).is_file():
                return Path(ck)
        return None

    def _update_export(self) -> None:
        for b in (self.export_btn, self.distil_btn):
            b.setEnabled(self._trained_checkpoint() is not None)

    def distil(self) -> None:
        """Distil the trained checkpoint into a light student on this image and its labels (``training.distill``),
        as a training run of its own (the form's other settings apply; a fresh student, not the start-from model)."""
        ck = self._trained_checkpoint()
        if ck is None:
            self.messages.error("No trained model yet: train one first, then distil it for deployment.")
            return
        self.start(resume=False, distil=ck)

    def export_bioimageio(self) -> Any:
        """Open the bioimage.io export dialog for the trained checkpoint (``export_dialog``)."""
        from napari_medseg._napari.widgets.export_dialog import open_export_dialog, open_image

        ck = self._trained_checkpoint()
        if ck is None:
            self.messages.error("No checkpoint yet: train a model first, then export it.")
            return None
        layer = combo_layer(self.image_combo, self.viewer.layers)
        image = None if layer is None else open_image(lambda: (layer.name, self.session.source_for(layer)))
        return open_export_dialog(self, ck, image, self.messages)

    def _gather(self, resume: bool, distil: Path | None = None) -> dict[str, Any]:
        """Everything the worker needs, gathered on the main thread (layers are not touched later)."""
        from napari_medseg._napari.jobs.train_job import prepare_job

        image_layer = self._image_layer()
        source = self.session.source_for(image_layer)
        labels_choice = self.labels_combo.currentText()
        text = self.init_edit.text().strip()
        settings = self._settings_values()
        if distil is not None:  # a light student from scratch, taught by the trained model
            init = None
            settings = {**settings, "arch": DISTIL_STUDENT, "distill_from": str(distil)}
        elif resume:
            init = str(self.session.last_checkpoint)
        else:  # a file, a package folder or a library name
            init = str(model_path(text)) if text else None
        out = self.out_edit.text().strip() or None
        return prepare_job(self.viewer, self.session, source, image_layer, labels_choice, settings,
                           init=init, out=out, store_choice=STORE_CHOICE)

    def start(self, resume: bool = False, distil: Path | None = None) -> None:
        if self._worker is not None:
            self.messages.info("Training is already running; press Stop first.")
            return
        self._distilling = distil is not None
        self._semi_said: tuple[str, float] | None = None  # each Start says again what "auto" chose
        self._contact_said = 0.0  # each Start says again which separation weight it uses
        try:
            job = self._gather(resume, distil)
        except MedsegError as e:
            self.messages.error(str(e))
            return
        except Exception as e:  # bad layer data and the like: a message, never a crash
            log.exception("could not start training")
            self.messages.error(f"Could not start training: {e}")
            return
        plan = job.get("plan")
        if plan is not None and plan.changed:  # the fields show what runs
            for w, v in ((self.patch_spin, int(plan.cfg.patch_size[-1])), (self.batch_spin, plan.cfg.batch_size)):
                w.setValue(v)
            self.messages.warning(plan.message)
        for note in job.get("notes", []):
            self.messages.info(note)
        # kept for the next session only once a step has finished (a run that kills napari is not reloaded)
        save_unconfirmed(self.SETTINGS, self._settings_values())
        self._confirmed = False
        from napari_medseg._napari.jobs.train_job import run_job

        self._stop.clear()
        cfg = job["cfg"]
        self.feedback.begin(resume=resume, steps=cfg.steps, budget_s=cfg.time_budget_s)
        self._started_at = time.perf_counter()
        self._first_preview_s = None
        self._last_preview_t = None
        self._preview_intervals = []
        self._warned: set[str] = set()
        self._update_view()
        self._sync_preview_opts()
        from napari_medseg._napari.user_activity import courtesy_for

        job["courtesy"] = courtesy_for(self.viewer)  # the steps pause while the user pans, zooms or paints
        self._job = job
        self.status.setText(f"starting on {job['device']}…")
        self._set_running(True)
        self._labels_box.set(None)
        self._labels_snap = job["snapshot"]
        self._labels_fp = None
        self._refresh_timer.start()
        self._worker = start_generator_worker(
            run_job, job, self._stop, self._view, self._preview_opts, self._labels_box,
            on_event=self._on_event, on_finished=self._on_finished, notify=self.messages.error,
        )

    def _sync_preview_opts(self, *_: Any) -> None:
        # The worker reads these through a lock-protected box, never from the Qt widgets.
        self._preview_opts.set({"enabled": self.preview_check.isChecked(), "uncertainty": self.uncert_check.isChecked(),
                                "every_s": float(self.preview_every.value()),
                                "min_confidence": float(self.preview_confidence.value())})

    def stop(self) -> None:
        if self._worker is not None:
            self._stop.set()
            self.status.setText("stopping: saving a checkpoint…")

    def _maybe_refresh_labels(self) -> None:
        """Main thread: if the labels changed since the run's snapshot, hand the worker a new snapshot."""
        if self._worker is None:
            return
        from napari_medseg._napari.jobs.train_job import snapshot_labels

        try:
            snap, _ = snapshot_labels(self.session, self.viewer, self._image_layer(), self.labels_combo.currentText(),
                                      STORE_CHOICE, since=self._labels_snap)
        except MedsegError as e:  # e.g. the labels layer was deleted: keep training on the last snapshot
            self.messages.warning(f"Labels not refreshed: {e} Training goes on with the labels it has.")
            return
        if snap is self._labels_snap or not snap.painted_chunks():  # a label store not written since
            return
        if snap.version is None:  # a Labels layer has no version: compare its contents
            if self._labels_fp is None and self._labels_snap is not None:
                self._labels_fp = self._labels_snap.fingerprint()
            fp = snap.fingerprint()
            if fp == self._labels_fp:
                return
            self._labels_fp = fp
        elif self._labels_snap is not None and snap.same_blocks(self._labels_snap):
            self._labels_snap = snap  # written back to the same labels (a stroke undone): nothing new to train on
            return
        self._labels_snap = snap
        self._labels_box.set(snap)

    def _on_finished(self) -> None:
        self._worker = None
        self._refresh_timer.stop()
        self._set_running(False)
        if not self._confirmed:  # ended (error, Stop) before a step: these settings are not kept
            drop_unconfirmed(self.SETTINGS)

    # -- events (main thread) -----------------------------------------------------------------------
    def _on_event(self, ev: Any) -> None:
        try:
            match ev:
                case StepEvent():
                    if not self._confirmed:  # the settings ran a step: remember them for the next session
                        self._confirmed = True
                        confirm(self.SETTINGS)
                    self.feedback.step(ev)
                case ValidationEvent():
                    self.feedback.validation(ev)
                case PreviewEvent():
                    self._show_preview(ev.payload)
                case CheckpointEvent():
                    if not self._distilling:  # a distilled student does not replace the model it learns from
                        self.session.last_checkpoint = Path(ev.path)
                    self._update_export()
                case WarningEvent():
                    if ev.message not in self._warned:  # a repeated warning is shown once per run
                        self._warned.add(ev.message)
                        self.messages.warning(ev.message)
                case StartEvent():
                    self.status.setText(f"training on {getattr(ev, 'device', '?')}")
                    choice = (ev.semi, ev.crf_weight) if ev.semi_reason else None  # what "auto" chose
                    if choice and choice != self._semi_said:  # said when it changes
                        self._semi_said = choice
                        self.messages.say("info", f"unpainted pixels: {ev.semi_reason}", toast=False)
                    if ev.contact_weight and ev.contact_weight != self._contact_said:
                        self._contact_said = ev.contact_weight
                        self.messages.say("info", f"objects: the pixels between close objects weigh "
                                          f"{1 + ev.contact_weight:g}x in the loss ('object gaps', Advanced)",
                                          toast=False)
                case DoneEvent() if self._distilling:
                    ck = ev.best_checkpoint or ev.last_checkpoint
                    self.session.distilled_checkpoint = Path(ck) if ck else None
                    self.feedback.done(ev, ev.last_checkpoint)
                    if ck:
                        self.messages.info(f"The light model distilled for deployment is {ck}: predict with it "
                                           "like any checkpoint (the trained model stays this session's model).")
                    self.init_library.refresh()
                case DoneEvent():
                    ck = getattr(ev, "last_checkpoint", None)
                    if ck:
                        self.session.last_checkpoint = Path(ck)
                    if getattr(ev, "best_checkpoint", None):
                        self.session.best_checkpoint = Path(ev.best_checkpoint)
                    if getattr(ev, "best_checkpoint", None) or ck:  # e.g. "Where to paint next" ranks again
                        self.session.checkpoint_trained(Path(ev.best_checkpoint or ck))
                    self.feedback.done(ev, ck)
                    self._update_export()
                    self.init_library.refresh()  # the model just trained is in the library now
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
            if not self._confirmed:  # closed before a step finished: not a crash, nothing to keep or report
                drop_unconfirmed(self.SETTINGS)


def show_prediction(viewer: Any, pred: Any, classes: Any, *, uncertainty: bool, image: Any = None) -> None:
    """Put a ``RegionPrediction`` on the canvas as the preview Labels layer (and the uncertainty layer),
    in the units of ``image`` (the layer it is drawn over). The preview is semi-transparent
    (``PREVIEW_OPACITY`` when it is added; an opacity the user sets later is kept) and shows only the
    pixels the model is sure of (``jobs.train_job.confident_only``: the others are 0, transparent)."""
    from napari.layers import Labels

    cmap = prediction_colormap(classes, alpha=1.0)
    units = units_of(image, len(pred.scale))
    keep = PREVIEW_LAYER in viewer.layers and isinstance(viewer.layers[PREVIEW_LAYER], Labels)
    upsert_layer(viewer, PREVIEW_LAYER, "labels", pred.labels, translate=pred.translate, scale=pred.scale,
                 colormap=cmap, **({} if keep else {"opacity": PREVIEW_OPACITY}), **units)
    unc = getattr(pred, "uncertainty", None)
    if uncertainty and unc is not None:
        upsert_layer(viewer, UNCERTAINTY_LAYER, "image", unc, translate=pred.translate, scale=pred.scale,
                     colormap="magma", opacity=0.5, contrast_limits=(0.0, 1.0), blending="additive", **units)
    elif UNCERTAINTY_LAYER in viewer.layers and not uncertainty:
        viewer.layers[UNCERTAINTY_LAYER].visible = False
