"""The Predict widget's preview: the chosen checkpoint on the region in view, in a few seconds, before a
whole-image run (``inference.predict_region``, in a worker thread).

What the preview layer shows, and why:

- it is semi-transparent (opacity ``PREVIEW_OPACITY`` = 0.5 when added; the user's later setting is
  kept), so the tissue under it stays readable;
- it shows only the pixels the model is sure of: a pixel whose highest class probability is below
  ``MIN_CONFIDENCE`` (0.9 by default, 0 shows every pixel) is drawn as background. A confidence threshold,
  not a number of training steps: a checkpoint picked here may come from anywhere and its step count
  does not say whether the model has learnt, while its probabilities do, pixel by pixel. Measured on the
  development machine (untrained default UNet, 2 or 3 classes, 3 seeds each): the untrained model calls
  31-83 % of the pixels foreground, of which 0.1-4 % remain at >= 0.9; a small UNet trained on a
  synthetic disc task keeps 55 % of the true foreground after 10 steps, 89 % after 50 and 94 % after 300,
  with at most 0.2 % false foreground (``docs/prediction.md``, "Preview of the view");
- a second preview of the same image replaces the data of its preview layer (one layer per image,
  ``<image> preview``), never adds another.
- a whole-image result of the image, once shown, hides it, and the Train widget's live preview and the heat
  map where they lie over the image (``hide_covered_overlays``: eyes unticked, said once in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QPushButton,
    QSpinBox,
)

from napari_medseg._napari.jobs.predict_job import confident_labels, failure_sentence
from napari_medseg._napari.jobs.workers import start_generator_worker, user_message
from napari_medseg._napari.layerdata import medseg_meta, prediction_colormap, units_of
from napari_medseg._napari.layers import add_then_show, lies_over, view_at_level0
from napari_medseg._napari.session import session_for
from napari_medseg._napari.widgets.settings import load_settings, save_settings
from napari_medseg.core.errors import MedsegError
from napari_medseg.models.explain_kinds import KINDS as EXPLAIN_KINDS

log = logging.getLogger(__name__)
PREVIEW_SUFFIX = " preview"
PREVIEW_OPACITY = 0.5
MIN_CONFIDENCE = 0.9
PREVIEW_MAX_PX = 1024  # the preview covers at most this many pixels per in-plane axis around the view's centre
_KIND = "predict preview"
_MODELS: dict[tuple[str, int, int, str], Any] = {}  # the last checkpoint loaded for a preview (worker thread)


@dataclass
class PreviewResult:
    """A preview of one region: ``pred`` (a ``RegionPrediction``) with the unsure pixels set to 0."""

    pred: Any
    classes: Any
    min_confidence: float
    shown_fraction: float  # of the region's pixels: a class other than background, confidently


def region_at_level(region0: tuple[slice, ...], source: Any, level: int, max_px: int = 1024) -> tuple[slice, ...]:
    """``region0`` (level-0 pixels over the spatial axes) in pixels of ``level``, clipped to the image and
    cut to at most ``max_px`` per in-plane axis around its centre (a preview stays quick)."""
    from napari_medseg.core.errors import MedsegError

    if not 0 <= level < len(source.levels):
        raise MedsegError(f"pyramid level {level} does not exist; this image has levels 0 to {len(source.levels) - 1}")
    shape, ds = source.level_shape(level), source.level_downsample(level)
    nd = len(shape)
    out = []
    for ax, (s, n, d) in enumerate(zip(region0[-nd:], shape, ds)):
        lo, hi = max(0, int(s.start // d)), min(n, int(np.ceil(s.stop / d)))
        if hi <= lo:
            raise MedsegError("the view shows none of the image; pan or zoom onto it and preview again")
        if ax >= nd - 2 and hi - lo > max_px:  # in-plane axes (a volume's Z keeps the slices in view)
            c = (lo + hi) // 2
            lo = max(0, min(c - max_px // 2, n - max_px))
            hi = lo + max_px
        out.append(slice(lo, hi))
    return tuple(out)


def _load(checkpoint: str | Path, device: str) -> Any:
    from napari_medseg.inference.modelrun import resolve_model
    from napari_medseg.models.devices import resolve_device

    p = Path(checkpoint)
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, device)
    if key not in _MODELS:
        _MODELS.clear()
        loaded = resolve_model(p, hash_weights=False)
        loaded.module.to(resolve_device(device))
        _MODELS[key] = loaded
    return _MODELS[key]


def preview_view(checkpoint: str | Path, source: Any, level: int, region: tuple[slice, ...], *,
                 min_confidence: float = MIN_CONFIDENCE, device: str = "auto") -> Generator[PreviewResult, None, None]:
    """Worker thread: predict ``region`` of ``level`` with the checkpoint; yields one ``PreviewResult``."""
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.inference import predict_region
    from napari_medseg.inference.modelrun import default_norm, model_window

    loaded = _load(checkpoint, device)
    model_window(loaded, source, (64,))  # refuses a 3D model on a 2D image, in the engine's words
    norm = loaded.norm or default_norm(source)
    pred = predict_region(loaded.module, source, level, region, norm, with_probs=True)
    labels = confident_labels(pred.labels, pred.probs, min_confidence)
    classes = loaded.classes or ClassSchema.default(int(pred.probs.shape[0]))
    pred.labels, pred.probs = labels, None  # the probabilities are not shown: no need to carry them over
    yield PreviewResult(pred, classes, float(min_confidence), float(np.count_nonzero(labels)) / max(labels.size, 1))


def explain_view(checkpoint: str | Path, source: Any, level: int, region: tuple[slice, ...], kind: str,
                 class_index: int, device: str = "auto") -> Generator[Any, None, None]:
    """Worker thread: Grad-CAM of a class, or the attention gates, over ``region`` (``inference.explain_region``)."""
    from napari_medseg.inference.explain_region import explain_region

    loaded = _load(checkpoint, device)
    yield explain_region(loaded.module, source, level, region, loaded.norm, kind=kind, class_index=class_index,
                         device=device)


def show_explanation(viewer: Any, image: Any, res: Any) -> list[Any]:
    """One image layer per map over ``image`` ('<image> Grad-CAM class k', '<image> attention gate i'), inferno,
    semi-transparent; a new explanation of the same kind replaces the data of its layers."""
    nd = len(res.scale)
    offset = tuple(image.translate)[-nd:]
    translate = tuple(float(a) + float(b) for a, b in zip(res.translate, offset))
    if res.kind == "gradcam":
        names = [f"{image.name} Grad-CAM class {res.class_index}"]
    elif res.kind == "transformer":
        names = [f"{image.name} transformer attention"]
    else:
        names = [f"{image.name} attention gate {i + 1}" for i in range(len(res.maps))]
    out = []
    for name, m in zip(names, res.maps):
        if name in viewer.layers and medseg_meta(viewer.layers[name]).get("kind") == "explanation":
            lay = viewer.layers[name]
            lay.data, lay.scale, lay.translate = m, res.scale, translate
        else:
            meta = {"napari_medseg": {"kind": "explanation", "image": image.name, "read_only": True}}
            lay = add_then_show(viewer, "image", m, name=name, scale=res.scale, translate=translate,
                                colormap="inferno", contrast_limits=(0.0, 1.0), opacity=0.6, blending="additive",
                                metadata=meta, **units_of(image, nd))
        out.append(lay)
    return out


def preview_layer(viewer: Any, image: Any) -> Any:
    """The preview layer of ``image`` (by its tag, whatever the user renamed it to, or by its name)."""
    for lay in viewer.layers:
        meta = medseg_meta(lay)
        if meta.get("kind") == _KIND and meta.get("image") == image.name:
            return lay
    name = image.name + PREVIEW_SUFFIX
    if name in viewer.layers and medseg_meta(viewer.layers[name]).get("kind") == _KIND:
        return viewer.layers[name]
    return None


def hide_covered_overlays(viewer: Any, image: Any) -> list[str]:
    """Untick the eyes of the overlays that a whole-image result of ``image`` now covers: this widget's
    preview of ``image``, and the Train widget's live preview and the "where to paint next" heat map where
    they lie over ``image``. Half-transparent layers over the same pixels mix their colours (the previewed
    region looks unlike the rest of the result, the heat map's cells tint it); and on a software-OpenGL
    machine every visible layer over the canvas costs napari about a fifth of its frame time
    (``benchmarks/RESULTS.md``, issue 23). Nothing is removed: ticking an eye brings an overlay back.
    Returns the names of the layers hidden."""
    from napari_medseg._napari.widgets.guidance_parts import is_heatmap_layer
    from napari_medseg._napari.widgets.train import PREVIEW_LAYER

    ours = preview_layer(viewer, image)
    others = [lay for lay in viewer.layers if (lay.name == PREVIEW_LAYER or is_heatmap_layer(lay))
              and lay is not ours and lies_over(lay, image)]
    hidden = []
    for lay in [ours, *others]:
        if lay is not None and lay.visible:
            lay.visible = False
            hidden.append(lay.name)
    return hidden


def show_preview(viewer: Any, image: Any, result: PreviewResult) -> Any:
    """Put the preview over ``image``: the existing preview layer gets the new data in place, else a Labels
    layer is added (semi-transparent, read-only for the Train widget). Returns the layer."""
    from napari.layers import Labels

    pred = result.pred
    nd = len(pred.scale)
    offset = tuple(image.translate)[-nd:]
    translate = tuple(float(a) + float(b) for a, b in zip(pred.translate, offset))
    colormap = prediction_colormap(result.classes, alpha=1.0)
    layer = preview_layer(viewer, image)
    if layer is not None and isinstance(layer, Labels) and layer.ndim == nd:
        layer.data = pred.labels
        layer.scale = pred.scale
        layer.translate = translate
        layer.colormap = colormap
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    meta = {"napari_medseg": {"kind": _KIND, "image": image.name, "read_only": True,
                              "min_confidence": result.min_confidence}}
    return add_then_show(viewer, "labels", pred.labels, name=image.name + PREVIEW_SUFFIX, scale=pred.scale,
                         translate=translate, colormap=colormap, opacity=PREVIEW_OPACITY, metadata=meta,
                         **units_of(image, nd))


# -- the widget's part (main thread) ----------------------------------------------------------------
class PreviewBox(QGroupBox):
    """'Preview the view': a button and the confidence threshold, in the Predict widget. It takes the
    widget's image, checkpoint and pyramid level through the callables given, and says what happened on
    its ``status`` line and in its ``messages`` (a ``MessageLog``)."""

    SETTINGS = "predict_preview"

    def __init__(self, viewer: Any, *, image_layer: Callable[[], Any], checkpoint: Callable[[], Path],
                 level: Callable[[], int], status: Any, messages: Any) -> None:
        super().__init__("Preview and explain the view")
        self.viewer, self._image_layer, self._checkpoint, self._level = viewer, image_layer, checkpoint, level
        self.status, self.messages = status, messages
        self._worker: Any = None
        self._image: Any = None
        self._what = "Preview"  # what runs: the word a failure starts with
        self._told_hidden = False  # said once that a whole-image result hid the overlays
        grid = QGridLayout(self)  # buttons on the left, their settings on the right: the dock stays narrow
        self.preview_btn = QPushButton("Preview view")
        self.preview_btn.setToolTip(f"Predicts the region in view (at most {PREVIEW_MAX_PX} x {PREVIEW_MAX_PX} "
                                    "pixels of the pyramid level above) with the checkpoint, in a few seconds, "
                                    "as a semi-transparent layer '<image> preview'; a second preview replaces it.")
        self.preview_btn.clicked.connect(self.preview)
        self.confidence_spin = QDoubleSpinBox()
        self.confidence_spin.setRange(0.0, 0.99)
        self.confidence_spin.setSingleStep(0.05)
        self.confidence_spin.setValue(float(load_settings(self.SETTINGS).get("min_confidence", MIN_CONFIDENCE)))
        self.confidence_spin.setToolTip("Min confidence: pixels the model is less sure of are not drawn (an "
                                        "untrained model's noise stays hidden); 0 draws every pixel.")
        self.confidence_spin.setPrefix("min ")  # "min 0.90": the minimum confidence, in few pixels
        grid.addWidget(self.preview_btn, 0, 0)
        grid.addWidget(self.confidence_spin, 0, 1)
        self.explain_btn = QPushButton("Explain view")
        self.explain_btn.setToolTip("Where the model looks in the region in view: Grad-CAM of the class (the class's "
                                    "score over the pixels predicted as it, traced back to the bottleneck) or the "
                                    "attention gates' coefficients (attention_unet) or the transformer's attention "
                                    "(unetr, transunet, nnformer, swin models), as image layers in [0, 1].")
        self.explain_btn.clicked.connect(self.explain)
        self.kind_combo = QComboBox()
        self.kind_combo.addItems(list(EXPLAIN_KINDS))
        self.kind_combo.setToolTip("gradcam: any model; attention: the attention gates (attention_unet); "
                                   "transformer: the attention the transformer's tokens receive (unetr, transunet, "
                                   "nnformer: rollout; swin models: within their windows)")
        self.class_spin = QSpinBox()
        self.class_spin.setRange(1, 255)
        self.class_spin.setToolTip("The class to explain (1 = the first class after background)")
        self.class_spin.setPrefix("class ")
        grid.addWidget(self.explain_btn, 1, 0)
        grid.addWidget(self.kind_combo, 1, 1)
        grid.addWidget(self.class_spin, 2, 1)

    @property
    def running(self) -> bool:
        return self._worker is not None

    def covered_by_result(self, image: Any) -> None:
        """A whole-image result of ``image`` is on the canvas: the previews and the heat map over it are
        hidden (``hide_covered_overlays``), said once in the log."""
        hidden = hide_covered_overlays(self.viewer, image)
        if hidden and not self._told_hidden:
            self._told_hidden = True
            self.messages.say("info", f"Hidden while the whole-image result is shown (it covers the same pixels): "
                              f"{', '.join(repr(n) for n in hidden)}; tick an eye to compare.", toast=False)

    def preview(self) -> None:
        """Predict the region in view with the checkpoint (``preview_view``), in a worker thread."""
        self._start("Preview", lambda ckpt, source, level, region: (
            preview_view, (str(ckpt), source, level, region), {"min_confidence": self.confidence_spin.value()},
            self._on_result))

    def explain(self) -> None:
        """Explain the region in view with the checkpoint (``explain_view``), in a worker thread."""
        self._start("Explanation", lambda ckpt, source, level, region: (
            explain_view, (str(ckpt), source, level, region, self.kind_combo.currentText(),
                           self.class_spin.value()), {}, self._on_explained))

    def _start(self, what: str, job: Callable[..., tuple]) -> None:
        """The region in view, then ``job(checkpoint, source, level, region) -> (function, args, kwargs,
        on_event)`` run in a worker thread; ``what`` names it in messages ("Preview", "Explanation")."""
        if self._worker is not None:
            self.messages.info("A preview or an explanation is already running.")
            return
        try:
            layer = self._image_layer()
            ckpt = self._checkpoint()
            source = session_for(self.viewer).source_for(layer)
            level = int(self._level())
            view = view_at_level0(self.viewer, layer)
            if view is None:
                raise MedsegError(f"Could not tell which region is in view; zoom in on the region ({what.lower()}).")
            region = region_at_level(view[0], source, level, PREVIEW_MAX_PX)
            save_settings(self.SETTINGS, {"min_confidence": self.confidence_spin.value()})
            fn, args, kwargs, on_event = job(ckpt, source, level, region)
            self._image, self._what = layer, what
            self.preview_btn.setEnabled(False)
            self.explain_btn.setEnabled(False)
            self.status.setText(f"{'previewing' if what == 'Preview' else 'explaining'} the view…")
            self._worker = start_generator_worker(fn, *args, **kwargs, on_event=on_event,
                                                  on_finished=self._on_finished, on_error=self._on_error,
                                                  notify=self.messages.error)
        except Exception as e:
            if not isinstance(e, MedsegError):
                log.exception("could not start the %s", what.lower())
            self._what = what
            self.messages.error(user_message(e))
            self._on_error(e)
            self._on_finished()

    def _shown(self, show: Callable[[], Any]) -> bool:
        """Run ``show`` (adds or updates layers); a failure is reported, never raised into Qt."""
        try:
            show()
            return True
        except Exception as e:
            log.exception("could not show the %s", self._what.lower())
            self.messages.error(user_message(e))
            self._on_error(e)
            return False

    def _on_explained(self, res: Any) -> None:
        if self._shown(lambda: show_explanation(self.viewer, self._image, res)):
            what = (f"Grad-CAM of class {res.class_index}" if res.kind == "gradcam"
                    else "the transformer's attention" if res.kind == "transformer"
                    else f"{len(res.maps)} attention gates")
            self.status.setText(f"{what} of the view at level {res.level} in {res.seconds:.1f} s")

    def _on_result(self, result: PreviewResult) -> None:
        if not self._shown(lambda: show_preview(self.viewer, self._image, result)):
            return
        p = result.pred
        size = " x ".join(str(s.stop - s.start) for s in p.region)
        self.status.setText(f"preview of {size} pixels at level {p.level} in {p.seconds:.1f} s: "
                            f"{100 * result.shown_fraction:.0f} % labelled with confidence >= {result.min_confidence:.2f}")

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(failure_sentence(exc, self._what))

    def _on_finished(self) -> None:
        self._worker = None
        self.preview_btn.setEnabled(True)
        self.explain_btn.setEnabled(True)
