"""The Annotate widget's "Where to paint next" box: which regions of the image the model is least sure of, as
a heat map over the image and a list, and a button that jumps to the best region nobody has painted yet.

"Rank regions" runs ``guidance.rank_regions`` (a few windows of the model per region, their predictive
entropy; see docs/annotation.md) in a worker thread at background priority, never on the main thread; the
labels painted a moment ago are saved first so they count. The result is one Image layer, "where to paint
next" (a cell per region, drawn over the image's pixels, ``heatmap_colormap``: the least sure regions in
colour, the others and the unscored cells clear), updated in place on every new ranking, and the top ``TOP``
regions in a list. "Next region to paint" takes the best region after the one shown whose painted fraction
is still below ``guidance.PAINTED_MAX`` *now* (``guidance.painted_fraction``: a region painted after the
ranking is skipped) and moves the camera there (``PaintingController.show_region``); a row's click too.
With "re-rank after each training run" (on by default) the box ranks again, in the background, each time the
Train widget finishes a run (``Session.on_checkpoint``), with the model just trained.

Every failure (no model yet, a file that is not a model, no tissue, labels of another image) is a message in
the Annotate widget's message log; the box stays usable.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_medseg._napari.jobs.predict_job import result_shown_over
from napari_medseg._napari.layerdata import units_of
from napari_medseg._napari.layers import upsert_layer
from napari_medseg._napari.napari_compat_layers import unwrap
from napari_medseg._napari.widget_lifetime import when_destroyed
from napari_medseg._napari.widgets.guidance_parts import (
    HEATMAP_ROLE,
    Note,
    OneLine,
    heatmap_colormap,
    heatmap_geometry,
    is_heatmap_layer,
    rank_job,
    region_text,
    say_error,
)
from napari_medseg._napari.widgets.model_library import model_path, model_path_row
from napari_medseg.core.errors import MedsegError
from napari_medseg.guidance import painted_fraction

__all__ = ["HEATMAP_LAYER", "NO_MODEL", "NextRegionBox", "heatmap_geometry", "is_heatmap_layer",
           "region_text"]

log = logging.getLogger(__name__)

HEATMAP_LAYER = "where to paint next"
HEATMAP_OPACITY = 0.45
TOP = 20  # regions in the list
LIST_ROWS = 3  # rows the list shows without scrolling (the dock does not scroll: the box stays short)
REGION_SIZE = 256  # level pixels per region side (the engine's default)
RANK_TOOLTIP = ("Rank the image's regions by how unsure the model is there (its predictive entropy on a few "
                "windows per region, in the background): the heat map and the list show where painting "
                "teaches it most. Press again to stop (the regions ranked so far are kept).")
REGION_TOOLTIP = ("Side of a ranked region, in pixels of the level the model was trained at: 'Next region to "
                  "paint' shows one region at a time. Many regions on a big slide make it grow by itself.")
NO_MODEL = ("No model yet: train one in the Train widget (this box then ranks by itself), or choose a checkpoint "
            "or bioimage.io package with '…'.")


class NextRegionBox(QGroupBox):
    """The "Where to paint next" group of the Annotate widget (see module). ``image_layer()`` gives the image
    whose labels are open there; its store and painter come from ``session``; messages go to ``messages``."""

    def __init__(self, viewer: Any, session: Any, messages: Any, image_layer: Callable[[], Any]) -> None:
        super().__init__("Where to paint next")
        self.viewer, self.session, self.messages = viewer, session, messages
        self._image_layer = image_layer
        self.ranking: Any = None  # the RegionRanking shown
        self._ranked: weakref.ref | None = None  # the image layer it ranks
        self._current = -1  # index into ranking.regions of the region shown last
        self._worker: Any = None
        self._layer_ref: Callable[[], Any] = lambda: None  # the image ranked by the pass under way
        self._stop = threading.Event()
        self._pending: Path | None = None  # a model trained while ranking: ranked with next
        self._quiet = False  # the run was started by a training run, not by a click: no toasts
        self._told_hidden = False  # said once that a jump hides the heat map
        self._build()
        self._forget = session.on_checkpoint(self._on_trained)
        when_destroyed(self, self._stop.set)  # a closed viewer stops the pass (widget_lifetime: never a lambda)

    # -- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        # compact: it sits under the Annotate widget's other groups, in a dock that does not scroll
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 4)
        lay.setSpacing(4)
        row, self.model_edit = model_path_row("model: the one trained last (Train widget)", self, title="Model")
        lay.addLayout(row)
        run = QHBoxLayout()
        self.rank_button = QPushButton("Rank regions")
        self.rank_button.setToolTip(RANK_TOOLTIP)
        self.rank_button.clicked.connect(self._on_rank_clicked)
        self.region_spin = QSpinBox()
        self.region_spin.setRange(16, 8192)
        self.region_spin.setSingleStep(64)
        self.region_spin.setValue(REGION_SIZE)
        self.region_spin.setSuffix(" px")
        self.region_spin.setToolTip(REGION_TOOLTIP)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("not ranked")
        self.progress.setMinimumWidth(60)
        run.addWidget(self.rank_button)
        run.addWidget(self.region_spin)
        run.addWidget(self.progress, 1)
        lay.addLayout(run)
        self.list = QListWidget()
        self.list.setToolTip("The regions the model is least sure of, best first: score, centre (pixels), how "
                             "much is painted (grey: painted). Click one to go there.")
        self.list.setUniformItemSizes(True)
        self.list.addItem("#20  0.99  (x 99999, y 99999)  painted 0 %")
        rows = self.list.sizeHintForRow(0)
        self.list.clear()
        self.list.setFixedHeight(rows * LIST_ROWS + 2 * self.list.frameWidth())  # never squeezed to one row
        self.list.itemClicked.connect(self._on_row)
        self.list.itemActivated.connect(self._on_row)
        lay.addWidget(self.list)
        nxt = QHBoxLayout()
        self.next_button = QPushButton("Next region to paint")
        self.next_button.setToolTip("Go to the best ranked region that is not painted yet (as painted now)")
        self.next_button.clicked.connect(self.next_region)
        self.rerank_check = QCheckBox("auto re-rank")
        self.rerank_check.setChecked(True)
        self.rerank_check.setToolTip("Re-rank after training: each time the Train widget finishes a run, rank "
                                     "again with the model it trained (in the background)")
        nxt.addWidget(self.next_button)
        nxt.addWidget(self.rerank_check)
        nxt.addStretch(1)
        lay.addLayout(nxt)
        self.status = OneLine("Rank the regions once a model is trained.")
        lay.addWidget(self.status)

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _set_running(self, running: bool) -> None:
        self.rank_button.setText("Stop ranking" if running else "Rank regions")
        self.region_spin.setEnabled(not running)
        if running:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("starting…")

    # -- ranking ------------------------------------------------------------------------------------
    def _on_rank_clicked(self) -> None:
        if self.running:
            self._pending = None
            self._stop.set()
            self.progress.setFormat("stopping…")
        else:
            self.rank()

    def _model(self) -> Path:
        """The model of the model line (a file, package or library name), else the one trained last."""
        text = self.model_edit.text().strip()
        if text:
            return model_path(text)
        for ck in (self.session.best_checkpoint, self.session.last_checkpoint):
            if ck is not None and Path(ck).exists():
                return Path(ck)
        raise MedsegError(NO_MODEL)

    def rank(self, model: str | Path | None = None, *, quiet: bool = False) -> bool:
        """Rank the regions of the Annotate widget's image with ``model`` (default: the model line's, else
        the session's last trained) in a worker. Returns whether the pass started."""
        if self.running:
            self.messages.info("The regions are being ranked already; press 'Stop ranking' first.")
            return False
        layer = self._image_layer()
        if layer is None:
            self.messages.error("Open an image first: its regions are ranked against its labels.")
            return False
        try:
            ck = Path(model) if model is not None else self._model()
            painter = self.session.painter_for(layer)
            if painter is not None:
                try:
                    painter.flush(wait=True)  # what was painted a moment ago counts as painted
                except MedsegError as e:
                    self.messages.warning(str(e))
            store = self.session.store_for(layer)
            source = self.session.source_for(layer)
        except Exception as e:  # a bad file name, an image that cannot be read: a message, never a traceback
            if not isinstance(e, MedsegError):
                log.exception("could not start ranking")
            self.messages.error(say_error(e))
            return False
        from napari_medseg._napari.jobs.workers import start_generator_worker

        self._stop.clear()
        self._quiet = quiet
        self._set_running(True)
        self.status.setText(f"Ranking with {ck.name}…")
        self._layer_ref = weakref.ref(unwrap(layer))
        try:
            # bound methods only: Qt disconnects them when this widget is deleted (a lambda would outlive it and
            # be called on a deleted widget by a pass still running: a crash)
            self._worker = start_generator_worker(
                rank_job, source, str(ck), store, self._stop, self.region_spin.value(),
                on_event=self._on_event, on_finished=self._on_finished,
                on_error=self._on_error, notify=self.messages.error)
        except Exception as e:  # pragma: no cover - the thread pool refused
            log.exception("could not start ranking")
            self.messages.error(say_error(e))
            self._worker = None
            self._set_running(False)
            return False
        return True

    def _on_event(self, ev: Any) -> None:
        try:
            if hasattr(ev, "regions") and hasattr(ev, "heatmap"):  # the RegionRanking, last
                self._show(ev, self._layer_ref())
            elif isinstance(ev, Note):
                self.messages.say("warning", ev.text, toast=not self._quiet)
            elif hasattr(ev, "done") and hasattr(ev, "total"):  # RankProgress (windows computed)
                total = max(int(ev.total), 1)
                self.progress.setRange(0, total)
                self.progress.setValue(min(int(ev.done), total))
                self.progress.setFormat("ranking %p %")
        except Exception as e:  # showing must never break the widget
            log.exception("could not show a ranking event")
            self.messages.error(say_error(e))

    def _on_error(self, _exc: BaseException) -> None:  # the message is in the log already (notify)
        self.progress.setFormat("failed")
        self.status.setText("Ranking failed (see the messages below).")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
        if self.ranking is not None and self.progress.format() in ("starting…", "stopping…"):
            self.progress.setFormat(f"{len(self.ranking.regions)} regions")
        pending, self._pending = self._pending, None
        if pending is not None:
            self.rank(pending, quiet=True)

    def _show(self, ranking: Any, layer: Any) -> None:
        """The ranking of image ``layer`` in the viewer: the heat map (updated in place), the list."""
        if layer is None or layer not in self.viewer.layers:
            self.messages.warning("The ranked image was closed before the ranking ended; nothing to show.")
            return
        self.ranking, self._ranked, self._current = ranking, weakref.ref(unwrap(layer)), -1
        self.show_heatmap(ranking, layer)
        self._fill_list()
        n = len(ranking.regions)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat(f"{n} regions")
        cost = f"{ranking.seconds:.1f} s, {ranking.windows} windows"
        head = f"{n} regions of {layer.name} ranked with {Path(ranking.checkpoint).name} ({cost})"
        if not ranking.complete:
            self.messages.say("warning", f"Ranking stopped: {head}; 'Rank regions' ranks them all.",
                              toast=not self._quiet)
        elif n == 0:
            self.messages.say("warning", f"No region of {layer.name} could be ranked.", toast=not self._quiet)
        else:
            self.messages.say("info", f"{head}: 'Next region to paint' goes to the best one not painted yet.",
                              toast=not self._quiet)
        self.status.setText(f"{n} regions ranked ({ranking.seconds:.1f} s, {ranking.windows} windows)."
                            if n else "Nothing ranked.")

    def show_heatmap(self, ranking: Any, layer: Any) -> Any:
        """Draw ``ranking``'s heat map over image ``layer`` as the ``HEATMAP_LAYER`` Image layer: added once,
        its data, geometry and contrast replaced in place afterwards (the user's opacity and colormap stay)."""
        scores = [float(r.score) for r in ranking.regions]
        lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
        lo = lo if hi - lo > 1e-3 * max(hi, 1e-6) else 0.0  # the spread of the scores, not 0..1: the ranks
        limits = (lo, hi if hi > lo else lo + 1.0)  # show even when an unsure model is unsure everywhere
        data = np.nan_to_num(np.asarray(ranking.heatmap, np.float32), nan=limits[0])  # not scored: clear
        scale, translate = heatmap_geometry(ranking, layer)
        old = next((ly for ly in self.viewer.layers if ly.name == HEATMAP_LAYER), None)
        if old is not None and is_heatmap_layer(old) and old.ndim != data.ndim:  # a volume after a slide or back
            self.viewer.layers.remove(old)
        if HEATMAP_LAYER in self.viewer.layers and is_heatmap_layer(self.viewer.layers[HEATMAP_LAYER]):
            heat = self.viewer.layers[HEATMAP_LAYER]
            if tuple(heat.scale) != scale:
                heat.scale = scale
            if tuple(heat.translate) != translate:
                heat.translate = translate
            heat.data = data
            heat.contrast_limits = limits
            if not self._quiet:  # asked for: shown (a re-rank after training leaves it as the user has it)
                heat.visible = True
            return heat
        meta = {"napari_medseg": {"role": HEATMAP_ROLE}}
        # a ranking nobody asked for just now (after training) does not cover a whole-image result being watched
        hidden = self._quiet and result_shown_over(self.viewer, layer)
        if hidden:
            self.messages.say("info", f"The heat map '{HEATMAP_LAYER}' comes hidden under the whole-image prediction "
                                      f"of {layer.name}; its eye in the layer list shows it.", toast=False)
        heat = upsert_layer(self.viewer, HEATMAP_LAYER, "image", data, scale=scale, translate=translate,
                            contrast_limits=limits, metadata=meta, colormap=heatmap_colormap(), visible=not hidden,
                            opacity=HEATMAP_OPACITY, blending="translucent", **units_of(layer, data.ndim))
        layers = self.viewer.layers
        at, over = layers.index(heat), layers.index(layer) + 1
        if at > over:  # right above the image, under the labels: what is painted is drawn as it is
            layers.move(at, over)
        return heat

    def _fill_list(self) -> None:
        self.list.clear()
        for i, region in enumerate(self.ranking.regions[:TOP]):
            self.list.addItem(QListWidgetItem(region_text(i + 1, region)))
        self._mark_painted()

    def _mark_painted(self) -> None:
        """The rows' painted fractions as the labels are now; painted regions greyed."""
        if self.ranking is None:
            return
        top = self.ranking.regions[:TOP]
        store = self._store()
        if store is None or not top:
            return
        from napari_medseg.guidance import PAINTED_MAX

        try:
            painted = painted_fraction(store, [r.box for r in top])
        except MedsegError:  # labels of another image: the list keeps the fractions of the ranking
            return
        grey = QColor(Qt.GlobalColor.gray)
        for i, (region, p) in enumerate(zip(top, painted)):
            item = self.list.item(i)
            if item is None:
                continue
            item.setText(region_text(i + 1, region, float(p)))
            item.setForeground(grey if p >= PAINTED_MAX else self.list.palette().text())

    # -- jumping ------------------------------------------------------------------------------------
    def _store(self) -> Any:
        return self.session.store_for(self._image_layer())

    def _ready(self) -> Any:
        """The painter of the ranked image if it is the Annotate widget's image and a ranking exists; else
        None, with a message."""
        if self.ranking is None:
            self.messages.info("Rank the regions first ('Rank regions').")
            return None
        layer = self._image_layer()
        painter = self.session.painter_for(layer)
        if layer is None or painter is None:
            self.messages.error("Open the image's labels first: the regions are shown in the labels' window.")
            return None
        if self._ranked is None or self._ranked() is not unwrap(layer):
            self.messages.error(f"The ranking is of another image than {layer.name}: press 'Rank regions'.")
            return None
        return painter

    def next_region(self) -> int | None:
        """Go to the best ranked region after the one shown that is not painted now; returns its index into
        ``ranking.regions`` (None if there is none: a message says so)."""
        painter = self._ready()
        if painter is None:
            return None
        try:
            painter.flush(wait=True)  # the stroke just made counts
            i = self._next_after(self._current)
            if i is None and self._current >= 0:
                i = self._next_after(-1)
                if i is not None:
                    self.messages.info(f"No unpainted region is ranked below #{self._current + 1}: back to the "
                                       "best one not painted yet.")
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        if i is None:
            self.messages.info(f"All {len(self.ranking.regions)} ranked regions are painted: train again, then "
                               "rank again to find where the model is unsure now.")
            self._mark_painted()
            return None
        self.go_to(i, painter)
        return i

    def _next_after(self, after: int) -> int | None:
        """The best region after ``after`` not painted now, or None: ``RegionRanking.next_unpainted`` with
        the painted fractions of ``guidance.painted_fraction``."""
        from napari_medseg.guidance import PAINTED_MAX

        store, ranking = self._store(), self.ranking
        if ranking.image_shape and tuple(store.shape) != tuple(ranking.image_shape):
            raise MedsegError(f"the labels have shape {tuple(store.shape)} but the ranked image has "
                              f"{tuple(ranking.image_shape)}: press 'Rank regions' for this image")
        regions = ranking.regions
        i: int | None = after + 1 if after + 1 < len(regions) else None
        while i is not None:
            j = min(len(regions), i + 64)  # a block of candidates: the counts say which must be read
            painted = painted_fraction(store, [r.box for r in regions[i:j]])
            hits = np.flatnonzero(painted < PAINTED_MAX)
            if hits.size:
                return int(i + hits[0])
            i = j if j < len(regions) else None
        return None

    def _on_row(self, item: QListWidgetItem) -> None:
        painter = self._ready()
        if painter is not None:
            self.go_to(self.list.row(item), painter)

    def go_to(self, i: int, painter: Any = None) -> None:
        """Show region ``i`` of the ranking (camera and the labels' window there) and select its row."""
        painter = painter or self._ready()
        if painter is None:
            return
        region = self.ranking.regions[i]
        try:
            painter.show_region(tuple(slice(a, b) for a, b in region.box))
        except MedsegError as e:
            self.messages.warning(str(e))
            return
        self._current = i
        self.list.blockSignals(True)
        if i < self.list.count():
            self.list.setCurrentRow(i)
            self.list.scrollToItem(self.list.item(i))
        else:
            self.list.clearSelection()
        self.list.blockSignals(False)
        self._mark_painted()
        n = len(self.ranking.regions)
        self.status.setText(f"#{i + 1} of {n}: uncertainty {region.uncertainty:.2f}"
                            + (f", novelty {region.novelty:.2f}" if region.novelty else "")
                            + f", {region.tissue:.0%} tissue.")
        self._hide_heatmap()

    def _hide_heatmap(self) -> None:
        """Hide the heat map once the camera is on a region: it is an overview, and over the region it tints
        what is to be painted. Its eye in the layer list (or 'Rank regions') shows it again."""
        heat = next((ly for ly in self.viewer.layers if ly.name == HEATMAP_LAYER), None)  # a LayerList has no get
        if heat is None or not is_heatmap_layer(heat) or not heat.visible:
            return
        heat.visible = False
        if not self._told_hidden:
            self._told_hidden = True
            self.messages.say("info", f"The heat map '{HEATMAP_LAYER}' is hidden while you paint a region; its eye "
                                      "in the layer list shows it again.", toast=False)

    # -- training runs ------------------------------------------------------------------------------
    def _on_trained(self, path: Path) -> None:
        """A training run ended with the model at ``path`` (``Session.checkpoint_trained``)."""
        if self.model_edit.text().strip():  # the line shows the model that ranks
            self.model_edit.setText(str(path))
        if not self.rerank_check.isChecked() or self._image_layer() is None:
            return
        if self.running:  # the pass under way uses an older model: stop it, rank with the new one
            self._pending = Path(path)
            self._stop.set()
            return
        self.rank(path, quiet=True)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop a pass under way and wait for it (the viewer is closing)."""
        self._pending = None
        self._forget()
        if self._worker is not None:
            self._stop.set()
            try:
                self._worker.await_workers(msecs=int(timeout_s * 1000))
            except Exception:  # pragma: no cover - already gone
                log.debug("ranking worker already gone", exc_info=True)
