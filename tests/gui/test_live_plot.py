"""The training plot as drawn: the legend never lands on the curves' area, rounds are marked."""

from __future__ import annotations

import numpy as np

from napari_medseg._napari.widgets.plot import SERIES_COLORS, LivePlot, nice_ticks


def _pixels(widget) -> np.ndarray:
    from qtpy.QtGui import QImage

    img = widget.grab().toImage().convertToFormat(QImage.Format_RGB32)
    w, h = img.width(), img.height()
    ptr = img.constBits()
    ptr.setsize(img.bytesPerLine() * h)
    a = np.frombuffer(ptr, np.uint8).reshape(h, img.bytesPerLine() // 4, 4)[:, :w, :3]
    return a[..., ::-1].astype(int)  # BGRA -> RGB


def _near(px: np.ndarray, hex_color: str, tol: int = 40) -> np.ndarray:
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return np.abs(px - rgb).sum(-1) < tol


def _frame(px: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the plot frame: the rows and columns mostly drawn in its grey."""
    grey = (np.ptp(px, axis=-1) < 20) & (px.mean(-1) > 55) & (px.mean(-1) < 120)  # antialiased frame lines
    rows = np.flatnonzero(grey.sum(1) > 0.6 * px.shape[1])
    cols = np.flatnonzero(grey.sum(0) > 0.5 * px.shape[0])
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_the_legend_is_drawn_outside_the_frame(qtbot):
    plot = LivePlot()
    qtbot.addWidget(plot)
    plot.resize(360, 200)
    for s in range(1, 101):
        plot.add_point("loss", s, 1.0 / s)
    plot.add_point("val_dice", 100, 0.0)  # the only Dice point: at the bottom right
    px = _pixels(plot)
    top, bottom, left, right = _frame(px)
    green = _near(px, SERIES_COLORS["val_dice"], 60)
    inside = green[top + 1:bottom, left + 1:right]
    ys, xs = np.nonzero(inside)
    # green inside the frame only around the Dice dot at the bottom right, never the legend's text
    assert ys.size and ys.min() > 0.7 * (bottom - top) and xs.min() > 0.8 * (right - left)
    assert green[:top].any()  # the legend is there, above the frame


def test_rounds_are_marked_and_axes_labelled(qtbot):
    plot = LivePlot()
    qtbot.addWidget(plot)
    plot.resize(360, 200)
    for s in range(1, 6):
        plot.add_point("loss", s, 1.0)
    plot.add_marker(5, "round 2")
    for s in range(6, 11):
        plot.add_point("loss", s, 0.5)
    assert {seg for *_, seg in plot.series["loss"]} == {0, 1}  # the curve breaks where round 2 starts
    lay = plot.layout_for(360, 200)
    assert lay.data.top() > lay.plot.top()  # a band for the markers' labels that no curve enters
    assert sorted(t for _, t, _ in lay.axis_labels) == ["Dice", "loss", "step"]
    plot.clear()
    assert plot.markers == [] and plot.series == {}


def test_nice_ticks():
    assert nice_ticks(1, 100, 5) == [25, 50, 75, 100]
    assert nice_ticks(0, 1, 3) == [0, 0.5, 1.0]
    assert nice_ticks(1, 8, 5) == [2, 4, 6, 8]
