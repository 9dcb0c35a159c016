"""A small live line plot (losses and validation Dice) drawn with QPainter: no plotting dependency,
cheap to repaint on every event so it never stalls the viewer.

The x axis is the training step, continued across rounds (Resume); each round after the first starts at a
dashed vertical marker, and curves break there. Losses use the left scale (log if they span decades),
validation Dice (0..1) the right one; both axes are labelled. The legend sits in its own row above the plot
and the markers' labels in a band at the top of the frame that no curve enters, so neither covers a curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

SERIES_COLORS = {"loss": "#e69f00", "loss_sup": "#56b4e9", "loss_cons": "#cc79a7", "val_dice": "#009e73"}
SERIES_LABELS = {"loss": "loss", "loss_sup": "supervised loss", "loss_cons": "unpainted-pixel loss",
                 "val_dice": "validation Dice"}
BACKGROUND, FRAME, TEXT, MARKER = "#262930", "#5a5f6a", "#c8cbd0", "#9a9ea6"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2g}"


@dataclass
class PlotLayout:
    """Where everything goes for a widget size (what ``paintEvent`` draws; tests check it)."""

    plot: QRectF  # the frame
    data: QRectF  # the part of the frame the curves use (below the markers' band)
    legend: list[tuple[QRectF, str]] = field(default_factory=list)  # (rect, series name)
    axis_labels: list[tuple[QRectF, str, bool]] = field(default_factory=list)  # (rect, text, rotated)

    @property
    def legend_rect(self) -> QRectF:
        r = QRectF()
        for rect, _ in self.legend:
            r = r.united(rect)
        return r


class LivePlot(QWidget):
    """Series share the x axis (training step); ``add_marker`` starts a new round."""

    def __init__(self, parent: QWidget | None = None, max_points: int = 2000) -> None:
        super().__init__(parent)
        self.setMinimumHeight(190)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.max_points = max_points
        self.series: dict[str, list[tuple[float, float, int]]] = {}  # name -> (step, value, segment)
        self.markers: list[tuple[float, str]] = []  # (step, label): where a round started
        self._segment = 0

    def clear(self) -> None:
        self.series.clear()
        self.markers.clear()
        self._segment = 0
        self.update()

    def add_point(self, name: str, x: float, y: float) -> None:
        if y is None or not math.isfinite(y):
            return
        pts = self.series.setdefault(name, [])
        pts.append((float(x), float(y), self._segment))
        if len(pts) > self.max_points:  # keep every other point of the older half
            half = len(pts) // 2
            pts[:half] = pts[:half:2]
        self.update()

    def add_marker(self, x: float, label: str) -> None:
        """A dashed vertical line at step ``x`` (e.g. "round 2"); curves break there."""
        self.markers.append((float(x), label))
        self._segment += 1
        self.update()

    def points(self, name: str) -> list[tuple[float, float]]:
        return [(x, y) for x, y, _ in self.series.get(name, [])]

    # -- layout ---------------------------------------------------------------------------------------
    def layout_for(self, w: int, h: int) -> PlotLayout:
        fm = self.fontMetrics()
        fh = fm.height()
        legend_h = fh + 6
        left = fh + 6 + max(fm.horizontalAdvance("0.0000"), fm.horizontalAdvance("1e-04")) + 4
        right = fh + 6 + fm.horizontalAdvance("1.0") + 4
        bottom = 2 * fh + 6
        plot = QRectF(left, legend_h + 2, max(w - left - right, 10), max(h - legend_h - 2 - bottom, 10))
        band = fh + 2 if self.markers else 4
        data = QRectF(plot.left(), plot.top() + band, plot.width(), max(plot.height() - band - 2, 4))
        lay = PlotLayout(plot, data)
        x = plot.left()
        for name in self.series:
            label = SERIES_LABELS.get(name, name)
            rect = QRectF(x, 2, 18 + fm.horizontalAdvance(label), fh)
            lay.legend.append((rect, name))
            x = rect.right() + 14
        lay.axis_labels = [
            (QRectF(plot.left(), h - fh - 2, plot.width(), fh), "step", False),
            (QRectF(0, plot.top(), fh + 2, plot.height()), "loss", True),
            (QRectF(w - fh - 4, plot.top(), fh + 2, plot.height()), "Dice", True),
        ]
        return lay

    # -- painting -------------------------------------------------------------------------------------
    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        try:
            self._paint(p)
        finally:
            p.end()

    def _paint(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(BACKGROUND))
        lay = self.layout_for(w, h)
        plot, data = lay.plot, lay.data
        p.setPen(QPen(QColor(FRAME)))
        p.drawRect(plot)
        self._paint_axis_labels(p, lay)
        xs = [x for s in self.series.values() for x, _, _ in s]
        if not xs:
            p.setPen(QColor(MARKER))
            p.drawText(plot.adjusted(8, 4, -4, -4), Qt.AlignLeft | Qt.AlignTop,
                       "losses and validation Dice appear here")
            return
        x0 = min(xs + [m for m, _ in self.markers])
        x1 = max(max(xs), x0 + 1)
        loss_vals = [y for n, s in self.series.items() if n != "val_dice" for _, y, _ in s if y > 0]
        lo, hi = (min(loss_vals), max(loss_vals)) if loss_vals else (0.1, 1.0)
        use_log = hi / max(lo, 1e-12) > 20
        a, b = (math.log10(max(lo, 1e-6)), math.log10(hi)) if use_log else (0.0, hi * 1.05)

        def ly(y: float) -> float:
            v = math.log10(max(y, 1e-6)) if use_log else y
            return data.bottom() - (v - a) / max(b - a, 1e-9) * data.height()

        def dy(y: float) -> float:
            return data.bottom() - y * data.height()

        def px(x: float) -> float:
            return data.left() + (x - x0) / (x1 - x0) * data.width()

        fh = self.fontMetrics().height()
        # ticks: steps below, loss left, Dice right
        p.setPen(QColor(TEXT))
        for t in nice_ticks(x0, x1, 5):
            x = px(t)
            p.setPen(QPen(QColor(FRAME)))
            p.drawLine(QPointF(x, plot.bottom()), QPointF(x, plot.bottom() + 3))
            p.setPen(QColor(TEXT))
            p.drawText(QRectF(x - 40, plot.bottom() + 3, 80, fh), Qt.AlignHCenter | Qt.AlignTop, _fmt(t))
        if use_log:
            loss_ticks = [10.0 ** k for k in range(math.ceil(a - 1e-9), math.floor(b + 1e-9) + 1)] or [lo, hi]
        else:
            loss_ticks = [t for t in nice_ticks(0.0, hi, 4) if t <= b]
        for t in loss_ticks:
            y = ly(t)
            p.drawText(QRectF(0, y - fh / 2, plot.left() - 4, fh), Qt.AlignRight | Qt.AlignVCenter,
                       f"{t:.0e}" if use_log and (t < 0.01 or t >= 1000) else _fmt(t))
        for t in (0.0, 0.5, 1.0):
            y = dy(t)
            p.drawText(QRectF(plot.right() + 4, y - fh / 2, 40, fh), Qt.AlignLeft | Qt.AlignVCenter, f"{t:.1f}")
            if t == 0.5:
                pen = QPen(QColor(FRAME))
                pen.setStyle(Qt.DotLine)
                p.setPen(pen)
                p.drawLine(QPointF(data.left(), y), QPointF(data.right(), y))
                p.setPen(QColor(TEXT))
        # round markers, their labels in the band above the curves
        for mx, label in self.markers:
            x = px(mx)
            pen = QPen(QColor(MARKER))
            pen.setStyle(Qt.DashLine)
            p.setPen(pen)
            p.drawLine(QPointF(x, plot.top() + 1), QPointF(x, plot.bottom() - 1))
            p.setPen(QColor(MARKER))
            p.drawText(QRectF(x + 3, plot.top() + 1, 120, fh), Qt.AlignLeft | Qt.AlignTop, label)
        # curves (broken at each round), validation as dots too
        for name, pts in self.series.items():
            yf = dy if name == "val_dice" else ly
            pen = QPen(QColor(SERIES_COLORS.get(name, "#dddddd")))
            pen.setWidthF(2.0 if name == "val_dice" else 1.3)
            segments: dict[int, list[QPointF]] = {}
            for x, y, seg in pts:
                segments.setdefault(seg, []).append(QPointF(px(x), yf(y)))
            for poly in segments.values():
                p.setPen(pen)
                p.drawPolyline(QPolygonF(poly))
                if name == "val_dice":  # few points: dots, so a single validation shows
                    p.setBrush(QColor(SERIES_COLORS["val_dice"]))
                    for pt in poly:
                        p.drawEllipse(pt, 3.0, 3.0)
                    p.setBrush(Qt.NoBrush)
        self._paint_legend(p, lay)

    def _paint_axis_labels(self, p: QPainter, lay: PlotLayout) -> None:
        p.setPen(QColor(TEXT))
        for rect, text, rotated in lay.axis_labels:
            if not rotated:
                p.drawText(rect, Qt.AlignHCenter | Qt.AlignVCenter, text)
                continue
            p.save()
            p.translate(rect.center())
            p.rotate(-90)
            p.drawText(QRectF(-rect.height() / 2, -rect.width() / 2, rect.height(), rect.width()),
                       Qt.AlignCenter, text)
            p.restore()

    def _paint_legend(self, p: QPainter, lay: PlotLayout) -> None:
        for rect, name in lay.legend:
            color = QColor(SERIES_COLORS.get(name, "#dddddd"))
            pen = QPen(color)
            pen.setWidthF(2.0)
            p.setPen(pen)
            y = rect.center().y()
            p.drawLine(QPointF(rect.left(), y), QPointF(rect.left() + 14, y))
            p.setPen(color)
            p.drawText(QRectF(rect.left() + 18, rect.top(), rect.width() - 18, rect.height()),
                       Qt.AlignLeft | Qt.AlignVCenter, SERIES_LABELS.get(name, name))
