"""The prediction dock widget: predict the whole image out of core into an NGFF zarr (progress in napari's
activity dock, the result appearing as a multiscale Labels layer as blocks finish, cancellable), accept
the prediction into the label store for a correction round, and save / load / export the model."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from .layers import add_then_show, current_view, overlaps, source_from_layer, units_of, view_at_level0
from .qt_helpers import path_row
from .quiet_gc import freeze_long_lived
from .session import session_for
from .settings import load_settings, save_settings
from .workers import show_error, show_info, start_generator_worker

log = logging.getLogger(__name__)
RESULT_SUFFIX = " prediction"
REFRESH_S = 2.0  # the growing result layer is redrawn at most this often, and only for blocks in view


@dataclass
class ResultLayers:
    """The output's napari layer data, opened in the worker thread (zarr and dask setup stay off the
    main thread); the main thread only adds the layers."""

    layers: list[tuple[Any, dict[str, Any], str]]


class OverviewLevel:
    """The coarsest level of the growing result as a numpy array that the worker thread refills from the
    output (in place, at most every ``REFRESH_S``). napari materialises a multiscale layer's coarsest level
    on the main thread when the layer is added and whenever its overview is reset; from a dask array over
    the zarr that waits for dask's pool while prediction holds the cores (0.5-1.2 s stalls measured)."""

    def __init__(self, lazy: Any) -> None:
        from ..io.lazy import compute

        self.lazy = lazy
        self.array = np.array(compute(lazy))
        self._last = time.monotonic()

    def refill(self, force: bool = False) -> None:
        from ..io.lazy import compute

        now = time.monotonic()
        if force or now - self._last >= REFRESH_S:
            self._last = now
            self.array[...] = compute(self.lazy)


def _with_overview(layers: list[tuple[Any, dict[str, Any], str]]) -> tuple[list[Any], list[OverviewLevel]]:
    """``layers`` with each multiscale Labels layer's coarsest level swapped for an ``OverviewLevel``."""
    out, overviews = [], []
    for data, kw, kind in layers:
        if kind == "labels" and isinstance(data, (list, tuple)) and len(data) > 1:
            ov = OverviewLevel(data[-1])
            overviews.append(ov)
            data = [*data[:-1], ov.array]
        out.append((data, kw, kind))
    return out, overviews


def predict_and_open(*args: Any, in_process: bool = False, **kwargs: Any) -> Generator[Any, None, Any]:
    """``inference.predict``'s events, plus ``ResultLayers`` once the output exists (worker thread).

    ``in_process``: the prediction itself runs in a child process (``inference.process``), so its threads
    never hold the viewer's GIL; this thread relays the events and refills the result's overview level."""
    from ..inference import predict, prediction_layer_data

    if in_process:
        from ..inference.process import predict_in_process as predict
    gen = predict(*args, **kwargs)
    overviews: list[OverviewLevel] = []
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            kind = type(ev).__name__
            if overviews and kind in ("BlockDone", "PredictDone"):
                try:
                    for ov in overviews:
                        ov.refill(force=kind == "PredictDone")
                except Exception as e:  # a stale overview is no reason to stop the prediction
                    log.debug("could not refill the overview: %s", e)
            yield ev
            if kind == "PredictStart":
                try:
                    layers, overviews = _with_overview(prediction_layer_data(ev.out))
                    yield ResultLayers(layers)
                except Exception as e:  # the widget opens it at the end instead
                    log.debug("prediction not openable yet: %s", e)
    finally:
        gen.close()  # a worker stopped early still closes the output (predict's own cleanup)


class PredictWidget(QWidget):
    SETTINGS = "predict"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._worker: Any = None
        self._cancel = threading.Event()
        self._result_layer: Any = None
        self._mask_layer: Any = None  # the tissue mask of the run (hidden), added when the run ends
        self._opened: list[tuple[Any, dict[str, Any], str]] | None = None  # the output's layer data
        self._last_refresh = 0.0
        self._dirty: list[tuple[slice, ...]] = []  # blocks finished since the last redraw (output pixels)
        self._progress: Any = None
        self._build()
        self._load_settings()
        self._refresh_layers()
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        freeze_long_lived()  # the libraries, the viewer and this widget live for the session (quiet_gc)
        quiet_zoom_events(napari_viewer)  # the layer list ignores zoom steps (layer_list_events)

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        box = QGroupBox("Predict whole image")
        f = QFormLayout(box)
        self.image_combo = QComboBox()
        ck, self.ckpt_edit = path_row("the last trained checkpoint", self._pick_ckpt)
        out, self.out_edit = path_row("beside the image: <name>.prediction.zarr", self._pick_out)
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
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setValue(4)
        self.blend_combo = QComboBox()
        self.blend_combo.addItems(["gaussian", "crop"])
        self.tissue_check = QCheckBox("skip background (tissue mask)")
        self.tissue_check.setChecked(True)
        self.tta_check = QCheckBox("flip test-time augmentation")
        self.probs_check = QCheckBox("write class probabilities")
        self.process_check = QCheckBox("run in a separate process (finishes sooner)")
        self.process_check.setToolTip("The model, tile reads and writes run in their own process at a lower "
                                      "priority, not sharing the viewer's Python lock: the image is predicted "
                                      "15-28 % sooner, after a few seconds to start.")
        self.process_check.setChecked(False)
        f.addRow("image", self.image_combo)
        f.addRow("checkpoint", ck)
        f.addRow("output", out)
        f.addRow("pyramid level", self.level_spin)
        f.addRow("window", self.window_spin)
        f.addRow("overlap", self.overlap_spin)
        f.addRow("batch", self.batch_spin)
        f.addRow("blending", self.blend_combo)
        f.addRow(self.tissue_check)
        f.addRow(self.tta_check)
        f.addRow(self.probs_check)
        f.addRow(self.process_check)
        row = QHBoxLayout()
        self.predict_btn = QPushButton("Predict whole image")
        self.cancel_btn = QPushButton("Cancel")
        self.predict_btn.clicked.connect(self.predict)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.predict_btn)
        row.addWidget(self.cancel_btn)
        f.addRow(row)
        lay.addWidget(box)

        corr = QGroupBox("Correction round")
        g = QVBoxLayout(corr)
        self.accept_btn = QPushButton("Accept prediction in view into the labels")
        self.accept_btn.setToolTip("Writes the prediction of the current view into the label store where nothing "
                                   "is painted yet; your own strokes are never overwritten. Correct, then train again.")
        self.accept_btn.clicked.connect(self.accept_view)
        g.addWidget(self.accept_btn)
        lay.addWidget(corr)

        mdl = QGroupBox("Model")
        h = QHBoxLayout(mdl)
        for text, fn in (("Save as…", self.save_model), ("Export TorchScript…", lambda: self.export_model("torchscript")),
                         ("Export ONNX…", lambda: self.export_model("onnx"))):
            btn = QPushButton(text)
            btn.clicked.connect(fn)
            h.addWidget(btn)
        lay.addWidget(mdl)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.predict_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)

    def _pick_ckpt(self) -> None:
        p, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "Checkpoints (*.pt)")
        if p:
            self.ckpt_edit.setText(p)

    def _pick_out(self) -> None:
        p, _ = QFileDialog.getSaveFileName(self, "Prediction output", "", "NGFF zarr (*.zarr)")
        if p:
            self.out_edit.setText(p if p.endswith(".zarr") else p + ".zarr")

    def _values(self) -> dict[str, Any]:
        return {"window": self.window_spin.value(), "overlap": self.overlap_spin.value(),
                "batch": self.batch_spin.value(), "blend": self.blend_combo.currentText(),
                "tissue": self.tissue_check.isChecked(), "tta": self.tta_check.isChecked(),
                "probs": self.probs_check.isChecked(), "process": self.process_check.isChecked()}

    def _load_settings(self) -> None:
        s = load_settings(self.SETTINGS)
        self.window_spin.setValue(int(s.get("window", 512)))
        self.overlap_spin.setValue(float(s.get("overlap", 0.25)))
        self.batch_spin.setValue(int(s.get("batch", 4)))
        self.blend_combo.setCurrentText(str(s.get("blend", "gaussian")))
        self.tissue_check.setChecked(bool(s.get("tissue", True)))
        self.tta_check.setChecked(bool(s.get("tta", False)))
        self.probs_check.setChecked(bool(s.get("probs", False)))
        self.process_check.setChecked(bool(s.get("process", False)))

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image

        cur = self.image_combo.currentText()
        self.image_combo.clear()
        self.image_combo.addItems([lay.name for lay in self.viewer.layers if isinstance(lay, Image)
                                   and not lay.name.startswith("medseg ")])
        if cur:
            self.image_combo.setCurrentText(cur)

    def _checkpoint(self) -> Path:
        txt = self.ckpt_edit.text().strip()
        ck = Path(txt) if txt else (self.session.best_checkpoint or self.session.last_checkpoint)
        if ck is None:
            raise MedsegError("No checkpoint yet: train a model in the Train widget or pick a checkpoint file.")
        if not Path(ck).is_file():
            raise MedsegError(f"Checkpoint {ck} does not exist; pick another file.")
        return Path(ck)

    def _image_layer(self) -> Any:
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise MedsegError("Choose an image layer to predict (open an image or a sample first).")
        return self.viewer.layers[name]

    def _default_out(self, layer: Any, source: Any) -> Path:
        if source.path:
            p = Path(source.path)
            return p.with_name(p.name.split(".")[0] + ".prediction.zarr")
        from platformdirs import user_data_dir

        from ..io.label_store import _safe_name

        return Path(user_data_dir("napari-medseg")) / "predictions" / f"{_safe_name(layer.name)}.prediction.zarr"

    # -- whole-image prediction ---------------------------------------------------------------------
    def predict(self) -> None:
        if self._worker is not None:
            show_info("A prediction is already running; cancel it first.")
            return
        try:
            layer = self._image_layer()
            source = source_from_layer(layer)
            ckpt = self._checkpoint()
            out = Path(self.out_edit.text().strip()) if self.out_edit.text().strip() else self._default_out(layer, source)
        except MedsegError as e:
            show_error(str(e))
            return
        except Exception as e:
            log.exception("could not start prediction")
            show_error(f"Could not start the prediction: {e}")
            return
        v = self._values()
        save_settings(self.SETTINGS, v)
        self._cancel.clear()
        self._out = out
        self._image = layer
        self._result_layer = self._mask_layer = self._opened = None
        self._dirty = []
        self._set_running(True)
        self.status.setText(f"predicting into {out}…")
        from napari.utils import progress

        self._progress = progress(total=0, desc="napari-medseg: predicting")
        window = (v["window"],) * source.spatial_dims
        self._worker = start_generator_worker(
            predict_and_open, source, str(ckpt), str(out), level=self.level_spin.value(), window=window,
            overlap=v["overlap"], batch_size=v["batch"], blend=v["blend"], tta=v["tta"],
            tissue_mask="auto" if v["tissue"] else False, write_probs="uint8" if v["probs"] else None,
            cancel=self._cancel, resume=True, in_process=v["process"],
            on_event=self._on_event, on_finished=self._on_finished,
        )

    def cancel(self) -> None:
        if self._worker is not None:
            self._cancel.set()
            self.status.setText("cancelling; the output stays consistent and can be resumed…")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _on_event(self, ev: Any) -> None:
        kind = type(ev).__name__
        try:
            if kind == "PredictStart":
                if self._progress is not None:
                    self._progress.total = int(ev.total_blocks)
            elif kind == "ResultLayers":
                self._show_result(ev.layers)
            elif kind == "BlockDone":
                if self._progress is not None:
                    self._progress.n = int(ev.done)
                    self._progress.refresh()
                self.status.setText(f"{ev.done}/{ev.total} blocks, {ev.mpix_s:.1f} MPix/s, eta {ev.eta_s:.0f} s")
                self._dirty.append(tuple(ev.region))
                now = time.monotonic()
                # a redraw re-slices the layer and re-uploads its textures: at most every REFRESH_S
                if self._result_layer is not None and now - self._last_refresh >= REFRESH_S:
                    self._last_refresh = now
                    self._refresh_in_view()
            elif kind == "PredictWarning":
                show_info(ev.message)
            elif kind == "PredictDone":
                self.status.setText(("cancelled" if ev.cancelled else "done") + f": {ev.out} "
                                    f"({ev.blocks_done} blocks, {ev.seconds:.1f} s, {ev.mpix_s:.1f} MPix/s)")
                self._show_result(final=True)
                self._refresh_result()
        except Exception:
            log.exception("could not show a prediction event")

    def _refresh_in_view(self) -> None:
        """Redraw the result only if a block finished since the last redraw lies in the view (elsewhere
        napari reads the finished chunks when the user pans there: the layer has no cache)."""
        layer = self._result_layer
        if layer is None or layer not in self.viewer.layers or not layer.visible:
            return
        view = view_at_level0(self.viewer, layer)
        dirty, self._dirty = self._dirty, []
        if view is None:
            self._refresh_result()
            return
        region, zoomed_out = view
        if any(overlaps(b, region) for b in dirty):
            self._refresh_result(overview=zoomed_out)

    def _refresh_result(self, overview: bool = True) -> None:
        """Redraw the growing result layer with the blocks finished so far."""
        layer = self._result_layer
        if layer is None or layer not in self.viewer.layers:
            return
        # napari keeps a multiscale layer's coarsest level (drawn when zoomed out, and its thumbnail) in
        # memory from the first draw; drop it so the overview shows the finished blocks too (private API).
        # Reading it again happens on the main thread: only when it is what the view shows, and at the end.
        reset = getattr(layer, "_reset_thumbnail_level_data", None)
        if overview and callable(reset):
            reset()
        layer.refresh()

    def _show_result(self, layers: list[tuple[Any, dict[str, Any], str]] | None = None, *, final: bool = False
                     ) -> None:
        """Show the output as a multiscale Labels layer over the image (once), colored like the classes.
        The tissue mask the run used comes with ``final`` (hidden), so the user can see what was skipped:
        adding a layer stalls the viewer for a moment, and while blocks arrive only the result is worth it.
        ``layers``: the layer data opened by the worker (kept for ``final``); None opens it here."""
        if layers is None:
            layers = self._opened
        self._opened = layers
        if layers is None and (final or self._result_layer is None or self._result_layer not in self.viewer.layers):
            from ..inference import prediction_layer_data

            try:
                layers = self._opened = prediction_layer_data(self._out)
            except Exception as e:
                log.debug("prediction not openable: %s", e)
                layers = []
        offset = tuple(self._image.translate)
        for data, kw, kind in layers or []:
            if kind != "labels":
                continue
            is_mask = "tissue" in str(kw.get("name", ""))
            name = self._image.name + (" tissue mask" if is_mask else RESULT_SUFFIX)
            shown = self._mask_layer if is_mask else self._result_layer
            if (is_mask and not final) or (shown is not None and shown in self.viewer.layers):
                continue
            kw = {**kw, "name": name}  # a copy: the opened layer data may serve again at the end
            nd = len(kw.get("translate", ()))
            kw["translate"] = tuple(a + b for a, b in zip(kw.get("translate", (0.0,) * nd), offset[-nd:]))
            kw.update(units_of(self._image, nd))
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            # cache=False: napari's dask cache would keep serving the chunks read before their blocks finished
            layer = add_then_show(self.viewer, "labels", data, cache=False, visible=not is_mask, **kw)
            if is_mask:
                self._mask_layer = layer
            else:
                self._result_layer = layer

    # -- correction round ---------------------------------------------------------------------------
    def accept_view(self) -> None:
        """Copy the prediction of the current view into the label store where nothing is painted."""
        try:
            layer = self._image_layer()
            res = self._result_layer
            if res is None or res not in self.viewer.layers:
                raise MedsegError("Predict the image first; then accept the prediction of the view into the labels.")
            store = self.session.label_stores.get(layer.name)
            if store is None:
                raise MedsegError("Open or create a label store for this image in the Annotate widget first.")
            view = current_view(self.viewer, layer, max_px=4096)
            if view is None:
                raise MedsegError("Could not tell which region is in view; zoom in on the region to accept.")
            from ..io.accept_prediction import accept_prediction

            source = source_from_layer(layer)
            n = accept_prediction(store, self._out, source, view.level, view.region)
        except MedsegError as e:
            show_error(str(e))
            return
        show_info(f"accepted {n} pixels of prediction into the labels; correct them and train again")
        self.viewer.layers.events.changed() if hasattr(self.viewer.layers.events, "changed") else None

    # -- model --------------------------------------------------------------------------------------
    def save_model(self) -> None:
        try:
            ck = self._checkpoint()
        except MedsegError as e:
            show_error(str(e))
            return
        p, _ = QFileDialog.getSaveFileName(self, "Save model as", ck.name, "Checkpoints (*.pt)")
        if not p:
            return
        try:
            from ..models import load_checkpoint, save_checkpoint

            save_checkpoint(p, load_checkpoint(ck))
            show_info(f"saved {p}")
        except MedsegError as e:
            show_error(str(e))

    def export_model(self, fmt: str) -> None:
        try:
            ck = self._checkpoint()
        except MedsegError as e:
            show_error(str(e))
            return
        ext = ".ts" if fmt == "torchscript" else ".onnx"
        p, _ = QFileDialog.getSaveFileName(self, f"Export {fmt}", ck.with_suffix(ext).name, f"*{ext}")
        if not p:
            return
        try:
            from ..models.export import export_checkpoint

            export_checkpoint(ck, p, fmt)
            show_info(f"exported {p} (checked against PyTorch on random input)")
        except MedsegError as e:
            show_error(str(e))
        except Exception as e:
            log.exception("export failed")
            show_error(f"Export failed: {e}")

    def closeEvent(self, event) -> None:  # noqa: N802
        self.cancel()
        super().closeEvent(event)
