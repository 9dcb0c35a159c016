"""The parts of the Annotate widget's "Where to paint next" box (``guidance``) that are not the box itself: the
worker job (``rank_job``: ``guidance.rank_regions`` with a fallback for slides without tissue), the heat map's
geometry and colours, the list's rows, and a one-line label.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSizePolicy

from napari_medseg._napari.layerdata import medseg_meta
from napari_medseg.core.errors import MedsegError

HEATMAP_ROLE = "guidance heat map"  # metadata["napari_medseg"]["role"]: not an image to paint or train on
WINDOW = 128  # level pixels per sampled window side (the engine's default; at most the region)
NO_TISSUE = "no tissue found"  # how guidance.rank_regions starts the error of an image with no tissue


def is_heatmap_layer(layer: Any) -> bool:
    """Whether ``layer`` is the box's heat map (never an image to paint, train or predict on)."""
    return medseg_meta(layer).get("role") == HEATMAP_ROLE


def heatmap_colormap() -> Any:
    """inferno from dark purple to orange, fading out towards the low end: the best regions stand out in
    colour, the regions the model is sure of (and cells not scored, NaN, drawn as the low end) leave the
    image as it is. Drawn "translucent": napari's "additive" (and inferno's near-white top) would wash a
    brightfield slide out to white where the model is unsure, hiding what is to be painted."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    inferno = ensure_colormap("inferno")
    t = np.linspace(0.0, 1.0, 64)
    colors = np.asarray(inferno.map(0.25 + 0.6 * t), np.float32)  # purple .. orange, no black, no white
    colors[:, 3] = np.clip(t * 1.5, 0.0, 1.0) ** 0.8  # transparent at the low end, opaque from 2/3 up
    return Colormap(colors=colors, controls=t, name="inferno (fading)", interpolation="linear")


def heatmap_geometry(ranking: Any, image_layer: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """napari ``scale`` and ``translate`` of ``ranking``'s heat map drawn over ``image_layer``: cell ``i``
    covers the image's level-0 pixels ``i*c .. (i+1)*c - 1`` (``c``: ``cell_scale``). napari centres a pixel
    on its coordinate, so the cell's centre, level-0 pixel ``i*c + (c-1)/2``, lies at
    ``translate + (c-1)/2 * scale`` from the image's own."""
    nd = int(np.ndim(ranking.heatmap))
    img_scale = [float(s) for s in image_layer.scale[-nd:]]
    img_tr = [float(t) for t in image_layer.translate[-nd:]]
    cells = [float(c) for c in ranking.cell_scale]
    scale = tuple(c * s for c, s in zip(cells, img_scale))
    translate = tuple(t + (c - 1) / 2 * s for t, c, s in zip(img_tr, cells, img_scale))
    return scale, translate


def region_text(rank: int, region: Any, painted: float | None = None) -> str:
    """A list row: ``#1  0.61  (x 1234, y 567)  painted 0 %`` (the centre in level-0 pixels; z for a volume)."""
    c = [int(round(v)) for v in region.centre]
    where = f"x {c[-1]}, y {c[-2]}" + (f", z {c[-3]}" if len(c) == 3 else "")
    p = 100.0 * (region.painted if painted is None else painted)
    shown = "0" if p == 0 else ("<1" if p < 1 else f"{p:.0f}")
    return f"#{rank}  {region.score:.2f}  ({where})  painted {shown} %"


def say_error(exc: BaseException) -> str:
    """``jobs.workers.user_message``: one sentence for the user."""
    from napari_medseg._napari.jobs.workers import user_message  # napari's Qt threading: loaded on first use

    return user_message(exc)


def rank_job(source: Any, model: str, store: Any, stop: threading.Event, region_size: int
             ) -> Generator[Any, None, None]:
    """The worker: ``guidance.rank_regions``'s progress events, then the ``RegionRanking`` itself (yielded
    last, so it reaches the main thread like the events). An image where no tissue is found (a pale slide)
    is ranked whole, with a ``Note`` saying so."""
    import torch

    from napari_medseg.guidance import rank_regions

    kw = {"store": store, "region_size": int(region_size), "window": min(WINDOW, int(region_size)),
          "device": "cuda" if torch.cuda.is_available() else "cpu", "stop": stop}
    try:
        ranking = yield from rank_regions(source, model, **kw)
    except MedsegError as e:
        if not str(e).startswith(NO_TISSUE):
            raise
        yield Note("No tissue was found on the image, so every region is ranked (background too).")
        ranking = yield from rank_regions(source, model, tissue=False, **kw)
    yield ranking


@dataclass(frozen=True)
class Note:
    """Something the worker tells the user (a warning in the message log)."""

    text: str


class OneLine(QLabel):
    """A one-line label: a text too long for its width is cut with "…" (all of it in the tooltip), so the
    box stays one line high whatever the dock's width."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.setMinimumWidth(40)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt)
        self._full = text
        self.setToolTip(text)
        self._elide()

    def text(self) -> str:
        return self._full

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(self.width(), 40))
        super().setText(shown)
