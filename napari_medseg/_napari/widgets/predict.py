"""The prediction dock widget: predict the whole image out of core into an NGFF zarr (progress in napari's
activity dock, the result appearing as a multiscale Labels layer as blocks finish, cancellable), preview
the model on the view, accept the prediction into the image's labels for a correction round, and save /
export the model (``export_dialog.ModelBox``: TorchScript, ONNX, a bioimage.io package). The model is any file
napari-medseg opens (a checkpoint, a bioimage.io package .zip or folder, an .onnx / .ts file), a library name,
or a model of the library that fits the image (``model_library``). With no output chosen the prediction goes beside the image, or into the predictions
folder of the user data folder when the image has no writable folder of its own or is in a cache folder
(``default_output``).

The whole-image run's worker generator and result layers live in ``jobs.predict_job``, the preview in
``predict_preview``. Whatever fails (at start, in the worker, or as an engine event) leaves the widget idle,
says what failed in one sentence on the status line, keeps the full message in the widget's message log
(``messages.MessageLog``) and leaves no empty result layer behind.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medseg._napari.jobs import predict_job
from napari_medseg._napari.jobs.predict_job import (
    ResultLayers,
    RunLayers,
    failure_sentence,
    remove_output_layers,
    widget_hint,
)
from napari_medseg._napari.jobs.workers import start_generator_worker, user_message
from napari_medseg._napari.layer_list_events import quiet_zoom_events
from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg._napari.layers import current_view, on_layer_renamed
from napari_medseg._napari.quiet_gc import freeze_long_lived
from napari_medseg._napari.session import session_for
from napari_medseg._napari.widgets.export_dialog import ModelBox
from napari_medseg._napari.widgets.guidance_parts import is_heatmap_layer
from napari_medseg._napari.widgets.messages import MessageLog
from napari_medseg._napari.widgets.model_library import (
    ModelLibraryCombo,
    image_fit,
    model_path,
    model_path_row,
)
from napari_medseg._napari.widgets.predict_preview import PreviewBox
from napari_medseg._napari.widgets.predict_texts import (
    ACCEPT_HELP,
    CRF_HELP,
    OVERWRITE_HELP,
    PROCESS_HELP,
    ZOOM_HELP,
)
from napari_medseg._napari.widgets.qt_helpers import button_row, combo_layer, fill_layer_combo, path_row
from napari_medseg._napari.widgets.settings import load_settings, save_settings
from napari_medseg.core.errors import MedsegError
from napari_medseg.inference import BlockDone, PredictDone, PredictFailed, PredictStart, PredictWarning
from napari_medseg.inference.events import Refining

log = logging.getLogger(__name__)

OUT_PLACEHOLDER = "beside the image, or in your napari-medseg data folder: <name>.prediction.zarr"


def default_output(image_path: str | None, name: str) -> tuple[Path, str]:
    """Where the prediction of an image goes when the user chose no output, and why, in plain words.

    Beside the image (``<stem>.prediction.zarr``) when the image is a file or folder on disk, outside a
    cache folder, in a folder that can be written; otherwise in the predictions folder of the user data
    folder (``core.user_folders.predictions_folder``): never in a cache folder, which cleaning tools empty.
    ``name`` (the layer's name, made a plain file name) names the output of an image without a file."""
    from napari_medseg.core import user_folders
    from napari_medseg.labels.format import safe_name, writable_dir

    p = Path(image_path) if image_path else None
    stem = (p.name.split(".")[0] if p is not None else "") or safe_name(name)  # a file's own name is safe
    file = f"{stem}.prediction.zarr"
    if p is None or not p.exists():
        why = "the image has no folder of its own"
    elif user_folders.in_cache(p):
        why = "the image is in a cache folder, which cleaning tools empty"
    elif not writable_dir(p.parent):
        why = "the image's folder cannot be written"
    else:
        return p.parent / file, "beside the image"
    return user_folders.predictions_folder() / file, f"in your napari-medseg data folder: {why}"


class PredictWidget(QWidget):
    SETTINGS = "predict"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._worker: Any = None
        self._cancel = threading.Event()
        self._out: Path | None = None
        self._run: RunLayers | None = None  # the layers of the current (or last) whole-image run
        self._ended: str | None = None  # how the current run ended ("done", "failed"), None while it runs
        self._warned: set[str] = set()  # the engine's warnings of this run (each said once)
        self._progress: Any = None
        self._build()
        self._load_settings()
        self._refresh_layers()
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        on_layer_renamed(napari_viewer, self._refresh_layers)  # the choice follows the layer, not its name
        freeze_long_lived()  # the libraries, the viewer and this widget live for the session (quiet_gc)
        quiet_zoom_events(napari_viewer)  # the layer list ignores zoom steps (layer_list_events)

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        self.status = QLabel("idle")  # one line: what the widget is doing, or what failed
        self.status.setWordWrap(True)
        self.messages = MessageLog(lines=6)  # the last messages in full
        box = QGroupBox("Predict whole image")
        f = QFormLayout(box)
        f.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # a field under its label when narrow
        self.image_combo = QComboBox()
        self.image_combo.currentTextChanged.connect(self._show_default_out)
        ck, self.ckpt_edit = model_path_row("the last trained checkpoint", self, title="Model")
        self.library = ModelLibraryCombo()  # the library's models that fit the image fill the field
        self.library.chosen.connect(self.ckpt_edit.setText)
        self.image_combo.currentIndexChanged.connect(self._fit_library)
        out, self.out_edit = path_row(OUT_PLACEHOLDER, self._pick_out)
        self.level_spin = QSpinBox()
        self.level_spin.setRange(0, 16)
        self.window_spin = QSpinBox()
        self.window_spin.setRange(32, 4096)
        self.window_spin.setSingleStep(32)
        self.window_spin.setValue(512)
        self.overlap_spin = QDoubleSpinBox()
        self.overlap_spin.setRange(0.0, 0.9)
        self.overlap_spin.setSingleStep(0.05)
        self.overlap_spin.setValue(0.25)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 256)
        self.batch_spin.setSpecialValueText("auto")  # 0: 4 on a CPU, from free memory on a GPU (batching.py)
        self.batch_spin.setValue(0)
        self.batch_spin.setToolTip("Windows per forward pass. auto: 4 on a CPU (as before); on a GPU as many as "
                                   "half its free memory holds, measured with one window.")
        self.blend_combo = QComboBox()
        self.blend_combo.addItems(["gaussian", "crop"])
        self.backend_combo = QComboBox()
        self.backend_combo.addItems(["torch", "torch-bf16", "onnxruntime", "onnxruntime-int8"])
        self.backend_combo.setToolTip(
            "What runs the model (docs/deployment.md has the measured trade-offs).\n"
            "torch: the checkpoint as trained.\ntorch-bf16: the same in bfloat16 on the CPU, about 2x faster on "
            "CPUs with AMX or AVX512-BF16 (recent Xeon, Zen 4); labels differ on a fraction of a percent of "
            "pixels.\nonnxruntime: exported to ONNX once (cached), same result.\n"
            "onnxruntime-int8: quantised, calibrated on this image's tissue; faster on CPUs with VNNI, "
            "labels differ on a few pixels. Checkpoints only.")
        self.tissue_check = QCheckBox("skip background (tissue mask)")
        self.tissue_check.setChecked(True)
        self.tta_combo = QComboBox()
        self.tta_combo.addItems(["none", "flips", "dihedral", "multiscale"])
        self.tta_combo.setToolTip("Test-time augmentation: average the prediction over transformed windows.\n"
                                  "flips: mirrored along each axis (3 passes in 2D); dihedral: 4 rotations x "
                                  "mirror (8 passes, 2D only); multiscale: the window at 0.75, 1 and 1.25 of its "
                                  "size (3 passes).\nMeasured on ISBI: flips +0.6 Dice for 2.2-2.6x the time, "
                                  "multiscale +0.4 for 2.5x (docs/deployment.md).")
        self.zoom_spin = QDoubleSpinBox()
        self.zoom_spin.setRange(0.0, 4.0)  # 0 reads "auto"; 0.25 is the least number
        self.zoom_spin.setSpecialValueText("auto")
        self.zoom_spin.setSingleStep(0.25)
        self.zoom_spin.setValue(1.0)
        self.zoom_spin.setToolTip(ZOOM_HELP)
        self.crf_check = QCheckBox("refine edges (CRF)")
        self.crf_check.setToolTip(CRF_HELP)
        self.probs_check = QCheckBox("write class probabilities")
        self.process_check = QCheckBox("run in its own process")
        self.process_check.setToolTip(PROCESS_HELP)
        self.process_check.setChecked(False)
        self.skip_check = QCheckBox("predict around unreadable tiles")
        self.skip_check.setToolTip("A tile of the image that cannot be decoded is reported and the windows "
                                   "over it are left out; otherwise the prediction stops there.")
        self.overwrite_check = QCheckBox("replace another run's output")
        self.overwrite_check.setToolTip(OVERWRITE_HELP)
        f.addRow("image", self.image_combo)
        f.addRow("model", ck)
        f.addRow("from library", self.library)
        f.addRow("output", out)
        f.addRow("pyramid level", self.level_spin)
        f.addRow("window", self.window_spin)
        f.addRow("overlap", self.overlap_spin)
        f.addRow("batch", self.batch_spin)
        f.addRow("blending", self.blend_combo)
        f.addRow("runs on", self.backend_combo)
        f.addRow("test-time aug.", self.tta_combo)
        f.addRow("zoom", self.zoom_spin)
        f.addRow(self.tissue_check)
        f.addRow(self.crf_check)
        f.addRow(self.probs_check)
        f.addRow(self.process_check)
        f.addRow(self.skip_check)
        f.addRow(self.overwrite_check)
        row, (self.predict_btn, self.cancel_btn) = button_row(("Predict whole image", self.predict),
                                                              ("Cancel", self.cancel))
        f.addRow(row)
        lay.addWidget(box)

        self.preview_box = PreviewBox(self.viewer, image_layer=self._image_layer, checkpoint=self._checkpoint,
                                      level=self.level_spin.value, status=self.status, messages=self.messages)
        lay.addWidget(self.preview_box)

        corr = QGroupBox("Correction round")
        g = QVBoxLayout(corr)
        self.accept_btn = QPushButton("Accept view into labels")
        self.accept_btn.setToolTip(ACCEPT_HELP)
        self.accept_btn.clicked.connect(self.accept_view)
        g.addWidget(self.accept_btn)
        lay.addWidget(corr)

        self.model_box = ModelBox(checkpoint=self._checkpoint, image=self._open_image, messages=self.messages)
        lay.addWidget(self.model_box)
        lay.addWidget(self.status)
        lay.addWidget(self.messages)
        lay.addStretch(1)
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.predict_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)

    def _pick_out(self) -> None:
        p, _ = QFileDialog.getSaveFileName(self, "Prediction output", "", "NGFF zarr (*.zarr)")
        if p:
            self.out_edit.setText(p if p.endswith(".zarr") else p + ".zarr")

    def _values(self) -> dict[str, Any]:
        return {"window": self.window_spin.value(), "overlap": self.overlap_spin.value(),
                "batch": self.batch_spin.value(), "blend": self.blend_combo.currentText(),
                "tissue": self.tissue_check.isChecked(), "tta": self.tta_combo.currentText(),
                "probs": self.probs_check.isChecked(), "process": self.process_check.isChecked(),
                "skip_corrupt": self.skip_check.isChecked(), "overwrite": self.overwrite_check.isChecked(),
                "backend": self.backend_combo.currentText(), "crf": self.crf_check.isChecked(),
                "zoom": "auto" if self.zoom_spin.value() < 0.25 else self.zoom_spin.value()}

    def _load_settings(self) -> None:
        s = load_settings(self.SETTINGS)
        self.window_spin.setValue(int(s.get("window", 512)))
        self.overlap_spin.setValue(float(s.get("overlap", 0.25)))
        self.batch_spin.setValue(int(s.get("batch", 0)))
        self.blend_combo.setCurrentText(str(s.get("blend", "gaussian")))
        self.backend_combo.setCurrentText(str(s.get("backend", "torch")))
        self.tissue_check.setChecked(bool(s.get("tissue", True)))
        tta = s.get("tta", "none")  # settings of older versions hold True / False
        self.tta_combo.setCurrentText(("flips" if tta else "none") if isinstance(tta, bool) else str(tta))
        self.zoom_spin.setValue(0.0 if s.get("zoom") == "auto" else float(s.get("zoom", 1.0)))
        self.probs_check.setChecked(bool(s.get("probs", False)))
        self.crf_check.setChecked(bool(s.get("crf", False)))
        self.process_check.setChecked(bool(s.get("process", False)))
        self.skip_check.setChecked(bool(s.get("skip_corrupt", False)))

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image

        fill_layer_combo(self.image_combo, [lay for lay in self.viewer.layers if isinstance(lay, Image)
                                            and not lay.name.startswith("medseg ") and not is_heatmap_layer(lay)])

    def _checkpoint(self) -> Path:
        """The model: the field's file, package folder or library name (``model_library.model_path``), else
        the checkpoint trained last in this session."""
        txt = self.ckpt_edit.text().strip()
        if txt:
            return model_path(txt)
        ck = self.session.best_checkpoint or self.session.last_checkpoint
        if ck is None:
            raise MedsegError("No checkpoint yet: train a model in the Train widget, pick a model file or choose "
                              "one from the library.")
        if not Path(ck).is_file():
            raise MedsegError(f"Checkpoint {ck} does not exist; pick another file.")
        return Path(ck)

    def _fit_library(self, *_: Any) -> None:
        """The library lists the models that fit the chosen image (channels, dimensions)."""
        self.library.set_fit(*image_fit(combo_layer(self.image_combo, self.viewer.layers)))

    def _open_image(self) -> tuple[str, Any] | None:
        """The chosen image (name, source) for an export's test input, or None."""
        layer = combo_layer(self.image_combo, self.viewer.layers)
        return None if layer is None else (layer.name, self.session.source_for(layer))

    def _image_layer(self) -> Any:
        layer = combo_layer(self.image_combo, self.viewer.layers)
        if layer is None:
            raise MedsegError("Choose an image layer to predict (open an image or a sample first).")
        return layer

    def _default_out(self, layer: Any, source: Any) -> Path:
        """Where the prediction goes when the output field is empty (``default_output``)."""
        return default_output(source.path, layer.name)[0]

    def _show_default_out(self, *_: Any) -> None:
        """The empty output field shows where the prediction of the chosen image will go, and why."""
        layer = combo_layer(self.image_combo, self.viewer.layers)
        text, tip = OUT_PLACEHOLDER, "Empty: " + OUT_PLACEHOLDER
        if layer is not None:
            path = medseg_meta(layer).get("path") or getattr(getattr(layer, "source", None), "path", None)
            try:
                out, why = default_output(str(path) if path else None, layer.name)
                text, tip = str(out), f"Empty: {out} ({why})"
            except Exception:  # a placeholder is never worth an error
                log.debug("could not tell the default output of %r", layer.name, exc_info=True)
        self.out_edit.setPlaceholderText(text)
        self.out_edit.setToolTip(tip + ". The … button chooses another place.")

    # -- whole-image prediction ---------------------------------------------------------------------
    def predict(self) -> None:
        if self._worker is not None:
            self.messages.info("A prediction is already running; cancel it first.")
            return
        try:
            layer = self._image_layer()
            source = self.session.source_for(layer)
            ckpt = self._checkpoint()
            out = Path(self.out_edit.text().strip()) if self.out_edit.text().strip() else self._default_out(layer, source)
            v = self._values()
            save_settings(self.SETTINGS, {k: x for k, x in v.items() if k != "overwrite"})  # never kept on
        except Exception as e:
            if not isinstance(e, MedsegError):
                log.exception("could not start prediction")
            self._failed(e, run=None)  # nothing of this run exists; the last run's layers stay
            return
        self._cancel.clear()
        self._out = out
        self._ended = None
        self._warned = set()
        if v["overwrite"]:  # the output's content is deleted when the run starts: so goes what showed it
            remove_output_layers(self.viewer, out, layer.name)
        self._run = RunLayers(self.viewer, layer, out,
                              on_shown=lambda _: self.preview_box.covered_by_result(layer))
        self._set_running(True)
        self.status.setText(f"predicting into {out}…")
        try:
            from napari.utils import progress

            from napari_medseg._napari.user_activity import courtesy_for
            from napari_medseg.core.courtesy import CourteousStop

            self._progress = progress(total=0, desc="napari-medseg: predicting")
            window = (v["window"],) * source.spatial_dims
            self._worker = start_generator_worker(
                predict_job.predict_and_open, source, str(ckpt), str(out), level=self.level_spin.value(),
                window=window, overlap=v["overlap"], batch_size=v["batch"] or "auto", blend=v["blend"],
                tta=None if v["tta"] == "none" else v["tta"], zoom=v["zoom"],
                tissue_mask="auto" if v["tissue"] else False, write_probs="uint8" if v["probs"] else None,
                on_corrupt="skip" if v["skip_corrupt"] else "stop", overwrite=v["overwrite"],
                # in this process the work pauses while the user moves the view; a child process runs on
                cancel=self._cancel if v["process"] else CourteousStop(self._cancel, courtesy_for(self.viewer)),
                resume=True, in_process=v["process"],
                backend="torch" if v["backend"] == "torch-bf16" else v["backend"],
                precision="bf16" if v["backend"] == "torch-bf16" else "auto",
                crf=True if v["crf"] else None,
                # a child process has the cores to itself: two model streams of one thread each (faster on a
                # CPU, docs/prediction.md); in the viewer's process one stream, as torch's thread count is
                # process-wide and a training run may be going on beside it
                streams="auto" if v["process"] else 1,
                on_event=self._on_event, on_finished=self._on_finished, on_error=self._on_error,
                notify=self.messages.error,
            )
        except Exception as e:
            log.exception("could not start prediction")
            self._failed(e, run=self._run)
            self._on_finished()

    def cancel(self) -> None:
        if self._worker is not None:
            self._cancel.set()
            self.status.setText("cancelling; the output stays consistent and can be resumed…")

    def _failed(self, cause: BaseException | str, *, run: RunLayers | None, notified: bool = False) -> None:
        """Any failure of a run: one sentence on the status line, the full message in the log, the layers
        ``run`` added removed; the Predict button comes back with ``_on_finished``."""
        self._ended = "failed"
        self.status.setText(failure_sentence(cause))
        if not notified:
            self.messages.error(cause if isinstance(cause, str) else user_message(cause))
        notes = []
        if run is not None:
            gone = run.discard()
            if gone:
                log.info("removed the layers of the failed run: %s", gone)
            if run.blocks:
                n = run.blocks
                notes.append(f"{n} finished block{' is' if n == 1 else 's are'} kept in {run.out}; predicting "
                             "again resumes there.")
        hint = widget_hint(cause)
        if hint:
            notes.append(hint)
        if notes:  # what to do next, in one line of the log (no toast)
            self.messages.say("info", " ".join(notes), toast=False)

    def _on_error(self, exc: BaseException) -> None:
        self._failed(exc, run=self._run, notified=True)  # start_generator_worker said it in the log (notify)

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._ended is None:  # neither done nor failed: the worker ended without saying why
            self._ended = "stopped"
            self.status.setText(f"stopped before the end; predicting into {self._out} again resumes it.")

    def _on_event(self, ev: Any) -> None:
        run = self._run
        try:
            match ev:
                case PredictStart():
                    if self._progress is not None:
                        self._progress.total = int(ev.total_blocks)
                    if run is not None:
                        run.started(int(getattr(ev, "resumed_blocks", 0) or 0))
                case ResultLayers():
                    if run is not None:
                        run.layers_opened(ev.layers)
                case BlockDone():
                    if self._progress is not None:
                        self._progress.n = int(ev.done)
                        self._progress.refresh()
                    self.status.setText(f"{ev.done}/{ev.total} blocks, {ev.mpix_s:.1f} MPix/s, eta {ev.eta_s:.0f} s")
                    if run is not None:
                        run.block_done(tuple(ev.region))
                case Refining():
                    self.status.setText(f"refining edges (CRF): {ev.done}/{ev.total} blocks")
                case PredictWarning():
                    if ev.message not in self._warned:  # e.g. one per unreadable tile: each said once
                        self._warned.add(ev.message)
                        self.messages.warning(ev.message)
                case PredictFailed():
                    self._failed(f"{ev.source}: {ev.message}" if getattr(ev, "source", "") else ev.message, run=run)
                case PredictDone():
                    self._ended = "done"
                    self.status.setText(("cancelled" if ev.cancelled else "done") + f": {ev.out} "
                                        f"({ev.blocks_done} blocks, {ev.seconds:.1f} s, {ev.mpix_s:.1f} MPix/s)")
                    if run is not None:
                        run.finished(int(ev.blocks_done))
        except Exception:
            log.exception("could not show a prediction event")

    @property
    def _result_layer(self) -> Any:
        """The result layer on the canvas (of the last run that showed one), or None."""
        return self._run.result if self._run is not None and self._run.shown else None

    # -- correction round ---------------------------------------------------------------------------
    def accept_view(self) -> None:
        """Copy the prediction of the current view into the image's labels where nothing is painted."""
        try:
            layer = self._image_layer()
            res = self._result_layer
            if res is None or res not in self.viewer.layers:
                raise MedsegError("Predict the image first; then accept the prediction of the view into the labels.")
            store = self.session.store_for(layer)
            if store is None:
                raise MedsegError(f"The labels of {layer.name!r} are not open: open the Annotate widget and "
                                  "choose this image there; its labels open by themselves.")
            view = current_view(self.viewer, layer, max_px=4096)
            if view is None:
                raise MedsegError("Could not tell which region is in view; zoom in on the region to accept.")
            from napari_medseg.inference import open_prediction
            from napari_medseg.labels.accept import accept_prediction

            labels = [s for s in open_prediction(self._run.out) if s.kind == "labels"]
            if not labels:
                raise MedsegError(f"{self._run.out} holds no prediction labels; run the prediction first.")
            n = accept_prediction(store, labels[0], self.session.source_for(layer), view.level, view.region)
        except MedsegError as e:
            self.messages.error(str(e))
            return
        self.messages.info(f"accepted {n} pixels of prediction into the labels; correct them and train again")
        self.viewer.layers.events.changed() if hasattr(self.viewer.layers.events, "changed") else None

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        self.library.refresh()  # a model trained or added since the tab was last shown

    def closeEvent(self, event) -> None:  # noqa: N802
        self.cancel()
        super().closeEvent(event)
