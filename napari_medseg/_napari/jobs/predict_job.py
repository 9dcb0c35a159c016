"""The whole-image run of the Predict widget: the worker-side generator (``predict_and_open``) and, on the
main thread, the run's result layers (``RunLayers``) and its failure sentence (``failure_sentence``).

Layer rules (tested in ``tests/gui/test_predict_failures.py`` and ``test_predict_widget.py``):

- a run's result layer is put on the canvas only once the output holds something (a finished block, or
  blocks resumed from an earlier run), so a run that fails before its first block leaves no empty layer;
- the layer of the same output (found by output path, whatever the user renamed it to, or else by name)
  is replaced in its place in the layer list, never added a second time;
- a run that fails removes the layers it added (the finished blocks stay in the output: predicting again
  resumes there); one that took the place of an earlier run's layer of the same output stays (the output
  still holds that run's blocks);
- only public napari API is used (napari warns about private attribute access from a plugin widget).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg._napari.jobs.workers import user_message
from napari_medseg._napari.layerdata import LayerData, medseg_meta, prediction_layer_data, units_of
from napari_medseg._napari.layers import add_then_show, lies_over, overlaps, view_at_level0
from napari_medseg.inference import BlockDone, PredictDone, PredictStart
from napari_medseg.inference.blocks import CorruptTileError

log = logging.getLogger(__name__)
RESULT_SUFFIX = " prediction"
MASK_SUFFIX = " tissue mask"
REFRESH_S = 2.0  # the growing result layer is redrawn at most this often, and only for blocks in view

@dataclass
class ResultLayers:
    """The output's napari layer data, opened in the worker thread (zarr and dask setup stay off the
    main thread); the main thread only adds the layers."""

    layers: list[LayerData]


class OverviewLevel:
    """The coarsest level of the growing result as a numpy array that is refilled from the output in place
    (by the worker thread, at most every ``REFRESH_S``). napari materialises a multiscale layer's coarsest
    level on the main thread when the layer is added and keeps that array for its overview and thumbnail;
    from a dask array over the zarr that waits for dask's pool while prediction holds the cores (0.5-1.2 s
    stalls measured), and the kept copy would never show the blocks finished later. napari keeps this very
    array (``np.asarray`` of a numpy array is the array), so ``layer.refresh()`` draws what was refilled."""

    def __init__(self, lazy: Any) -> None:
        from napari_medseg.core.compute import compute

        self.lazy = lazy
        self.array = np.array(compute(lazy))
        self._last = time.monotonic()

    def refill(self, force: bool = False) -> None:
        from napari_medseg.core.compute import compute

        now = time.monotonic()
        if force or now - self._last >= REFRESH_S:
            self._last = now
            self.array[...] = compute(self.lazy)


def with_overview(layers: list[LayerData]) -> tuple[list[LayerData], list[OverviewLevel]]:
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
    from napari_medseg.inference import predict

    if in_process:
        from napari_medseg.inference.process import predict_in_process as predict
    gen = predict(*args, **kwargs)
    overviews: list[OverviewLevel] = []
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            if overviews and isinstance(ev, (BlockDone, PredictDone)):
                try:
                    for ov in overviews:
                        ov.refill(force=isinstance(ev, PredictDone))
                except Exception as e:  # a stale overview is no reason to stop the prediction
                    log.debug("could not refill the overview: %s", e)
            yield ev
            if isinstance(ev, PredictStart):
                try:
                    layers, overviews = with_overview(prediction_layer_data(ev.out))
                    yield ResultLayers(layers)
                except Exception as e:  # the widget opens it at the end instead
                    log.debug("prediction not openable yet: %s", e)
    finally:
        gen.close()  # a worker stopped early still closes the output (predict's own cleanup)


# -- what the user reads ----------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+(?=[A-Z])")


def failure_sentence(cause: BaseException | str, what: str = "Prediction") -> str:
    """One plain sentence for the status line: ``"<what> failed: <the first sentence of the cause>."``
    (the full message goes to the widget's message log)."""
    text = cause if isinstance(cause, str) else user_message(cause)
    if isinstance(cause, CorruptTileError):
        text = text.split("; repair or reconvert")[0]  # the widget's way around it goes to the log
    text = text.split("; choose another output path, or pass overwrite=True")[0]  # likewise
    first = _SENTENCE_END.split(" ".join(str(text).split()), maxsplit=1)[0].rstrip(" .;")
    return f"{what} failed: {first or 'unknown error'}."


def widget_hint(cause: BaseException | str) -> str | None:
    """What a widget user can do about a failure whose engine message names the API's way around it."""
    text = str(cause)
    if isinstance(cause, CorruptTileError) or "could not be decoded" in text:
        return ("Tick 'predict around unreadable tiles' to predict the rest of the image, or repair or "
                "reconvert the image file.")
    if "holds a different prediction run" in text:
        return "Tick 'replace another run's output', or choose another output."
    return None


# -- the run's layers (main thread) -----------------------------------------------------------------
def _same_path(a: Any, b: Path) -> bool:
    try:
        return a is not None and Path(str(a)).resolve() == b.resolve()
    except (OSError, ValueError):
        return False


def output_layer(viewer: Any, out: Path, part: str, name: str) -> Any:
    """The layer showing ``part`` (``labels/prediction``, ``labels/tissue``) of the output ``out``, or else
    the layer called ``name``; None when there is neither."""
    for lay in viewer.layers:
        meta = medseg_meta(lay)
        if meta.get("ngff_path") == part and _same_path(meta.get("path"), out):
            return lay
    return viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401 - a LayerList has no .get


class RunLayers:
    """The result (and tissue mask) layers of one whole-image run, on the main thread.

    ``opened``: the output's layer data, as the worker opened it (``ResultLayers``) or, failing that, as
    opened here when there is something to show. ``blocks``: finished blocks the output holds (resumed
    and done in this run); nothing is shown before the first. ``added``: the layers this run put on the
    canvas, each with whether it took the place of an earlier layer of the output (``discard``)."""

    def __init__(self, viewer: Any, image: Any, out: Path,
                 on_shown: Callable[[Any], None] | None = None) -> None:
        self.viewer, self.image, self.out = viewer, image, Path(out)
        self.on_shown = on_shown  # called with the result layer when this run puts it on the canvas shown
        self.opened: list[LayerData] | None = None
        self.overviews: list[OverviewLevel] = []  # overview levels opened on the main thread (refilled here)
        self.result: Any = None
        self.mask: Any = None
        self.added: list[tuple[Any, bool]] = []
        self.blocks = 0
        self.dirty: list[tuple[slice, ...]] = []  # blocks finished since the last redraw (output pixels)
        self.last_refresh = 0.0

    # events
    def started(self, resumed_blocks: int) -> None:
        self.blocks += int(resumed_blocks)

    def layers_opened(self, layers: list[LayerData]) -> None:
        self.opened = layers
        if self.blocks:
            self.show()

    def block_done(self, region: tuple[slice, ...]) -> None:
        self.blocks += 1
        self.dirty.append(tuple(region))
        if not self.shown:
            self.show()
            return
        now = time.monotonic()  # a redraw re-slices the layer and re-uploads its textures: at most every REFRESH_S
        if now - self.last_refresh >= REFRESH_S:
            self.last_refresh = now
            self.refresh_in_view()

    def finished(self, blocks_done: int) -> None:
        """The run ended (done or cancelled): the result and the run's tissue mask (hidden), if there is
        anything to show."""
        self.blocks = max(self.blocks, int(blocks_done))
        if self.blocks:
            self.show(final=True)
            self.refresh(overview=True, force=True)

    @property
    def shown(self) -> bool:
        return self.result is not None and self.result in self.viewer.layers

    # showing
    def _open_here(self) -> list[LayerData]:
        try:
            layers, self.overviews = with_overview(prediction_layer_data(self.out))
        except Exception as e:
            log.debug("prediction not openable: %s", e)
            return []
        return layers

    def show(self, *, final: bool = False) -> None:
        """Show the output as a multiscale Labels layer over the image (once), colored like the classes.
        The tissue mask the run used comes with ``final`` (hidden), so the user can see what was skipped:
        adding a layer stalls the viewer for a moment, and while blocks arrive only the result is worth it."""
        if self.opened is None:
            self.opened = self._open_here()
        offset = tuple(self.image.translate)
        for data, kw, kind in self.opened:
            if kind != "labels":
                continue
            part = (kw.get("metadata", {}).get("napari_medseg") or {}).get("ngff_path")
            is_mask = part == "labels/tissue" or "tissue" in str(kw.get("name", ""))
            if is_mask and not final:
                continue
            current = self.mask if is_mask else self.result
            if current is not None and current in self.viewer.layers:
                continue
            name = self.image.name + (MASK_SUFFIX if is_mask else RESULT_SUFFIX)
            kw = {**kw, "name": name}  # a copy: the opened layer data may serve again at the end
            nd = len(kw.get("translate", ()))
            kw["translate"] = tuple(a + b for a, b in zip(kw.get("translate", (0.0,) * nd), offset[-nd:]))
            kw.update(units_of(self.image, nd))
            layer = self._replace(output_layer(self.viewer, self.out, part or "", name), data, kw, not is_mask)
            if is_mask:
                self.mask = layer
            else:
                self.result = layer

    def _replace(self, old: Any, data: Any, kw: dict[str, Any], visible: bool) -> Any:
        """Add the layer, in place of ``old`` (same position in the layer list) when there is one."""
        index = None
        if old is not None and old in self.viewer.layers:  # its place, name and visibility are the user's
            index = self.viewer.layers.index(old)
            visible = visible and bool(old.visible)
            kw = {**kw, "name": old.name}
            self.viewer.layers.remove(old)
        # cache=False: napari's dask cache would keep serving the chunks read before their blocks finished
        layer = add_then_show(self.viewer, "labels", data, cache=False, visible=visible, **kw)
        if visible and self.on_shown is not None:  # a result (a tissue mask comes hidden), not hidden by the user
            self.on_shown(layer)
        if index is not None:
            at = self.viewer.layers.index(layer)
            if at != index:
                self.viewer.layers.move(at, index)
        self.added.append((layer, index is not None))
        return layer

    def refresh_in_view(self) -> None:
        """Redraw the result only if a block finished since the last redraw lies in the view (elsewhere
        napari reads the finished chunks when the user pans there: the layer has no cache)."""
        layer = self.result
        if layer is None or layer not in self.viewer.layers or not layer.visible:
            return
        view = view_at_level0(self.viewer, layer)
        dirty, self.dirty = self.dirty, []
        if view is None:
            self.refresh()
            return
        region, zoomed_out = view
        if any(overlaps(b, region) for b in dirty):
            self.refresh(overview=zoomed_out)

    def refresh(self, overview: bool = True, force: bool = False) -> None:
        """Redraw the result layer with the blocks finished so far (``layer.refresh()``: public API). Its
        coarsest level is an ``OverviewLevel`` napari keeps as it is: the worker refills it; one opened
        here is refilled here, only when it is what the view shows, and at the end."""
        layer = self.result
        if layer is None or layer not in self.viewer.layers:
            return
        if overview:
            for ov in self.overviews:
                try:
                    ov.refill(force=force)
                except Exception as e:  # a stale overview is no reason to stop showing the result
                    log.debug("could not refill the overview: %s", e)
        layer.refresh()

    def discard(self) -> list[str]:
        """The run failed: remove the layers it added (returns their names). One that took the place of an
        earlier run's layer of the same output stays: the output still holds that run's blocks."""
        gone = []
        for layer, replaced in self.added:
            if not replaced and layer in self.viewer.layers:
                gone.append(layer.name)
                self.viewer.layers.remove(layer)
        self.added = []
        self.result = self.result if self.shown else None
        self.mask = self.mask if self.mask is not None and self.mask in self.viewer.layers else None
        return gone


def result_shown_over(viewer: Any, image: Any) -> bool:
    """Whether a whole-image result (a run's prediction layer, by its metadata) is shown over ``image``."""
    return any(lay.visible and medseg_meta(lay).get("ngff_path") == "labels/prediction" and lies_over(lay, image)
               for lay in viewer.layers)


def remove_output_layers(viewer: Any, out: Path, image_name: str) -> None:
    """Remove the layers of ``out`` (result and tissue mask): its content is about to be replaced."""
    for part, suffix in (("labels/prediction", RESULT_SUFFIX), ("labels/tissue", MASK_SUFFIX)):
        layer = output_layer(viewer, out, part, image_name + suffix)
        if layer is not None:
            viewer.layers.remove(layer)


__all__ = ["MASK_SUFFIX", "REFRESH_S", "RESULT_SUFFIX", "OverviewLevel", "ResultLayers", "result_shown_over",
           "RunLayers", "failure_sentence", "output_layer", "predict_and_open",
           "remove_output_layers", "widget_hint", "with_overview"]


def confident_labels(labels: np.ndarray, probs: np.ndarray | None, min_confidence: float) -> np.ndarray:
    """``labels`` with 0 (background, drawn transparent) wherever the highest class probability in ``probs``
    (``(C, *spatial)``) is below ``min_confidence``; unchanged without ``probs`` or at threshold 0."""
    if probs is None or min_confidence <= 0:
        return labels
    sure = np.asarray(probs).max(axis=0) >= np.float16(min_confidence)
    return np.where(sure, labels, 0).astype(labels.dtype, copy=False)
