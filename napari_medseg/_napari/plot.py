"""A small live line plot (losses and validation Dice) drawn with QPainter: no plotting dependency,
cheap to repaint on every event so it never stalls the viewer."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

SERIES_COLORS = {"loss": "#e69f00", "loss_sup": "#56b4e9", "loss_cons": "#cc79a7", "val_dice": "#009e73"}


class LivePlot(QWidget):
    """Series share the x axis (training step). Losses use the left scale (log if they span decades);
    ``val_dice`` (0..1) the right scale."""

    def __init__(self, parent: QWidget | None = None, max_points: int = 2000) -> None:
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.max_points = max_points
        self.series: dict[str, list[tuple[float, float]]] = {}

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def add_point(self, name: str, x: float, y: float) -> None:
        if y is None or not math.isfinite(y):
            return
        pts = self.series.setdefault(name, [])
        pts.append((float(x), float(y)))
        if len(pts) > self.max_points:  # keep every other point of the older half
            half = len(pts) // 2
            pts[:half] = pts[:half:2]
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#262930"))
        left, right, top, bottom = 40, 36, 8, 22
        pw, ph = max(w - left - right, 10), max(h - top - bottom, 10)
        p.setPen(QPen(QColor("#5a5f6a")))
        p.drawRect(left, top, pw, ph)
        xs = [x for s in self.series.values() for x, _ in s]
        if not xs:
            p.setPen(QColor("#9a9ea6"))
            p.drawText(left + 6, top + 18, "losses and validation Dice appear here")
            p.end()
            return
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        loss_vals = [y for n, s in self.series.items() if n != "val_dice" for _, y in s if y > 0]
        lo, hi = (min(loss_vals), max(loss_vals)) if loss_vals else (0.1, 1.0)
        use_log = hi / max(lo, 1e-12) > 20

        def ly(y: float) -> float:
            if use_log:
                a, b, v = math.log10(max(lo, 1e-6)), math.log10(hi), math.log10(max(y, 1e-6))
            else:
                a, b, v = 0.0, hi, y
            return top + ph - (v - a) / max(b - a, 1e-9) * ph

        def px(x: float) -> float:
            return left + (x - x0) / (x1 - x0) * pw

        for name, pts in self.series.items():
            if not pts:
                continue
            yf = (lambda y: top + ph - y * ph) if name == "val_dice" else ly
            poly = QPolygonF([QPointF(px(x), yf(y)) for x, y in pts])
            pen = QPen(QColor(SERIES_COLORS.get(name, "#dddddd")))
            pen.setWidthF(2.0 if name == "val_dice" else 1.3)
            p.setPen(pen)
            p.drawPolyline(poly)
            if name == "val_dice":  # few points: draw them as dots so a single validation shows
                p.setBrush(QColor(SERIES_COLORS["val_dice"]))
                for pt in poly:
                    p.drawEllipse(pt, 3.0, 3.0)
                p.setBrush(Qt.NoBrush)
        p.setPen(QColor("#c8cbd0"))
        p.drawText(2, top + 10, f"{hi:.3g}")
        p.drawText(2, top + ph, f"{lo if use_log else 0:.2g}")
        p.drawText(left + pw + 4, top + 10, "1.0")
        p.drawText(left + pw + 4, top + ph, "0.0")
        p.drawText(left, h - 6, f"step {int(x0)}")
        p.drawText(left + pw - 60, h - 6, f"{int(x1)}")
        # legend
        lx = left + 6
        for name in self.series:
            p.setPen(QColor(SERIES_COLORS.get(name, "#dddddd")))
            label = "val Dice" if name == "val_dice" else name
            p.drawText(lx, top + 14, label)
            lx += 8 * len(label) + 10
        p.setPen(Qt.NoPen)
        p.end()
