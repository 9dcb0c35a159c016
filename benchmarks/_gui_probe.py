"""Shared helpers of the GUI benchmarks (``bench_ui_latency.py``, ``bench_loop.py``).

- ``StallProbe``: a 10 ms ``QTimer`` on the main thread; a stall is the actual interval minus the nominal
  one. A watchdog thread samples the main thread's Python stack while a tick is overdue, so a stall can be
  attributed (a Python handler, or "inside the Qt event loop": C++ drawing, or waiting for the GIL).
- ``CameraScript``: pans and zooms the canvas like a user (smooth moves at 30 Hz, short pauses) from a
  ``QTimer``, so it runs on the main thread between other events.
- ``wait_until`` / ``run_for``: spin the Qt event loop (a nested ``QEventLoop``, never ``sleep``).
- ``scribble_strokes`` / ``paint_strokes``: a simulated annotator. Strokes are sampled from a dense mask
  (skeletons of the class regions, eroded so the brush stays inside) and painted through a napari Labels
  layer's own brush (``layer.paint``), point by point, as a mouse drag would.
- ``save_line_plot``: a PNG line chart drawn with ``QPainter`` (no plotting dependency).

Arrays are ``YX`` (masks, labels) or ``YXC`` (RGB images); coordinates are (y, x) in layer data pixels.
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# event-loop stall probe
# --------------------------------------------------------------------------------------------------------
@dataclass
class PhaseStats:
    """Stalls of one phase in ms (actual tick interval minus the nominal interval, floored at 0)."""

    name: str
    stalls_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stack_samples: Counter = field(default_factory=Counter)  # "file:function" -> samples while stalled
    full_stacks: Counter = field(default_factory=Counter)  # innermost frames joined -> samples
    plugin_sites: Counter = field(default_factory=Counter)  # innermost napari_medseg frame -> samples
    n_samples: int = 0
    long_stalls: list[tuple[float, list[tuple[str, int]], str]] = field(default_factory=list)  # > 250 ms: culprits
    gc_ms: dict[int, list[float]] = field(default_factory=dict)  # generation -> pauses of Python's cyclic GC (ms)

    def summary(self) -> dict[str, Any]:
        a = np.asarray(self.stalls_ms or [0.0])
        return {"phase": self.name, "seconds": round(self.seconds, 1), "ticks": int(a.size),
                "p50_ms": round(float(np.percentile(a, 50)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1),
                "max_ms": round(float(a.max()), 1), "n_over_50ms": int((a > 50).sum()),
                "n_over_250ms": int((a > 250).sum()), "stall_samples": self.n_samples,
                "plugin_samples": int(sum(self.plugin_sites.values())),
                "gc": {f"gen{g}": {"n": len(v), "total_ms": round(sum(v), 1), "max_ms": round(max(v), 1)}
                       for g, v in sorted(self.gc_ms.items())}}

    def top_sites(self, n: int = 8) -> list[tuple[str, int]]:
        return self.stack_samples.most_common(n)


_GENERIC = ("threading.py", "qt_event_loop", "_qapp", "__init__.py:wrapper", "_gui_probe.py")


def _frame_sites(frame: Any, depth: int = 40) -> list[str]:
    """'file:function' of a stack, innermost first."""
    out = []
    while frame is not None and len(out) < depth:
        code = frame.f_code
        fn = code.co_filename.replace("\\", "/")
        parts = fn.split("/")
        if "napari_medseg" in parts:
            short = "/".join(parts[len(parts) - 1 - parts[::-1].index("napari_medseg"):])
        else:
            short = "/".join(parts[-2:]) if len(parts) > 1 else fn
        out.append(f"{short}:{code.co_name}")
        frame = frame.f_back
    return out


def _culprit(sites: list[str]) -> str:
    """The innermost frame worth naming: the probe's own waiting frames mean 'in the Qt event loop'."""
    if not sites:
        return "<no Python frame>"
    inner = sites[0]
    if "_gui_probe.py" in inner and ("wait_until" in inner or "run_for" in inner or "_spin" in inner):
        return "<inside the Qt event loop: C++ (drawing, GL) or waiting for the GIL>"
    # name the innermost frame and the first napari_medseg/napari/vispy frame above it
    for s in sites:
        if any(k in s for k in ("napari_medseg", "_napari/", "napari/", "vispy/")):
            return inner if s == inner else f"{inner} <- {s}"
    return inner


class StallProbe:
    """Measure event-loop stalls on the main thread (see module docstring). Create it on the main thread
    after the ``QApplication`` exists; ``start(name)`` begins a phase, ``stop()`` ends it and returns its
    ``PhaseStats``."""

    def __init__(self, interval_ms: int = 10, sample_after_ms: float = 40.0, sample_every_s: float = 0.004,
                 sample_stacks: bool = True) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.sample_after_s = sample_after_ms / 1000.0
        self.sample_every_s = sample_every_s
        self._timer = QTimer()
        self._timer.setTimerType(Qt.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None
        self._phase: PhaseStats | None = None
        self._pending: list[tuple[str, str, str]] = []  # (culprit, stack, plugin frame) of the overdue interval
        self._lock = threading.Lock()
        self._main_id = threading.main_thread().ident
        self._alive = True
        self._watch = threading.Thread(target=self._watchdog, name="stall-probe-watchdog", daemon=True)
        if sample_stacks:
            self._watch.start()
        self.phases: list[PhaseStats] = []
        self._gc_t0 = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, event: str, info: dict[str, Any]) -> None:
        # Python's cyclic garbage collector stops every thread (it holds the GIL), whichever thread set it off
        if event == "start":
            self._gc_t0 = time.perf_counter()
        elif self._phase is not None and self._gc_t0:
            self._phase.gc_ms.setdefault(info["generation"], []).append((time.perf_counter() - self._gc_t0) * 1000)

    def start(self, name: str) -> None:
        self._phase = PhaseStats(name)
        self._t0 = time.perf_counter()
        self._last = None
        self._timer.start()

    def stop(self) -> PhaseStats:
        self._timer.stop()
        ph = self._phase
        assert ph is not None, "start() first"
        ph.seconds = time.perf_counter() - self._t0
        self._phase = None
        self.phases.append(ph)
        return ph

    def close(self) -> None:
        self._alive = False
        self._timer.stop()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None and self._phase is not None:
            stall = (now - self._last) * 1000.0 - self.interval_ms
            self._phase.stalls_ms.append(max(0.0, stall))
            with self._lock:
                if self._pending:
                    ph = self._phase
                    ph.n_samples += len(self._pending)
                    ph.stack_samples.update(c for c, _, _ in self._pending)
                    ph.full_stacks.update(st for _, st, _ in self._pending)
                    ph.plugin_sites.update(p for _, _, p in self._pending if p)
                    if stall > 250:  # what the main thread did during each long stall
                        stacks = Counter(st for _, st, _ in self._pending)
                        ph.long_stalls.append((round(stall, 1), Counter(c for c, _, _ in self._pending).most_common(3),
                                               stacks.most_common(1)[0][0]))
                self._pending = []
        self._last = now

    def _watchdog(self) -> None:
        # Sleeps until a tick would be overdue (it wakes every ~30 ms while the loop is healthy, so it hardly
        # competes for the GIL), then samples every ``sample_every_s`` until the next tick.
        while self._alive:
            last, ph = self._last, self._phase
            if ph is None or last is None:
                time.sleep(0.05)
                continue
            due = last + self.sample_after_s - time.perf_counter()
            if due > 0:
                time.sleep(due)
                continue
            time.sleep(self.sample_every_s)
            if self._last != last or self._phase is None:
                continue
            frame = sys._current_frames().get(self._main_id)
            sites = _frame_sites(frame)
            del frame
            plugin = next((x for x in sites if x.startswith("napari_medseg/")), "")
            with self._lock:
                self._pending.append((_culprit(sites), " <- ".join(sites[:14]), plugin))


# --------------------------------------------------------------------------------------------------------
# driving the event loop and the camera
# --------------------------------------------------------------------------------------------------------
def run_for(seconds: float) -> None:
    """Run the Qt event loop for ``seconds`` (a nested loop: timers, workers' signals, drawing all run)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def wait_until(cond: Callable[[], bool], timeout_s: float, poll_ms: int = 50) -> bool:
    """Run the event loop until ``cond()`` is true (checked every ``poll_ms``) or ``timeout_s`` passes."""
    from qtpy.QtCore import QEventLoop, QTimer

    if cond():
        return True
    loop = QEventLoop()
    t_end = time.perf_counter() + timeout_s
    state = {"ok": False}

    def check() -> None:
        try:
            ok = bool(cond())
        except Exception:  # a condition on a half-built object: try again
            log.debug("wait_until condition raised", exc_info=True)
            ok = False
        if ok or time.perf_counter() >= t_end:
            state["ok"] = ok
            poll.stop()
            loop.quit()

    poll = QTimer()
    poll.setInterval(poll_ms)
    poll.timeout.connect(check)
    poll.start()
    loop.exec_()
    return state["ok"]


def camera_of(viewer: Any) -> Any:
    from napari_medseg._napari.layers import camera_of as _cam

    return _cam(viewer)


class CameraScript:
    """Pan and zoom like a user: smooth moves between keyframes (``(center_yx, zoom)`` in world units), each
    ``move_s`` long at ``fps``, with ``pause_s`` of rest after each (the view settles, tiles load, the
    preview follows). Loops over the keyframes until ``stop()``."""

    def __init__(self, viewer: Any, keyframes: Sequence[tuple[tuple[float, float], float]], *, move_s: float = 1.0,
                 pause_s: float = 0.6, fps: float = 30.0) -> None:
        from qtpy.QtCore import QTimer

        self.viewer = viewer
        self.cam = camera_of(viewer)
        self.keys = list(keyframes)
        self.move_s, self.pause_s = move_s, pause_s
        self._timer = QTimer()
        self._timer.setInterval(max(1, int(1000 / fps)))
        self._timer.timeout.connect(self._step)
        self._i = 0
        self._t0 = 0.0
        self.moves = 0
        self.frames = 0

    def start(self) -> None:
        c, z = self.keys[0]
        self._set(c, z)
        self._i, self._t0 = 0, time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _set(self, center: Sequence[float], zoom: float) -> None:
        cur = tuple(self.cam.center)
        self.cam.center = tuple(cur[:-2]) + (float(center[0]), float(center[1]))
        self.cam.zoom = float(zoom)
        self.frames += 1

    def _step(self) -> None:
        t = time.perf_counter() - self._t0
        a, b = self.keys[self._i % len(self.keys)], self.keys[(self._i + 1) % len(self.keys)]
        if t >= self.move_s + self.pause_s:
            self._i += 1
            self.moves += 1
            self._t0 = time.perf_counter()
            return
        if t > self.move_s:
            return  # resting
        u = 0.5 - 0.5 * math.cos(math.pi * t / self.move_s)  # ease in and out
        center = [pa + u * (pb - pa) for pa, pb in zip(a[0], b[0])]
        zoom = math.exp(math.log(a[1]) + u * (math.log(b[1]) - math.log(a[1])))
        self._set(center, zoom)


def screenshot(viewer: Any, path: Any, size: tuple[int, int] = (1400, 900), max_kb: int = 290) -> dict[str, Any]:
    """Save the whole window (``canvas_only=False``) as PNG; if it is over ``max_kb``, save it smaller
    (fewer colours, then a smaller size) so it stays light for a README."""
    from pathlib import Path

    from qtpy.QtCore import Qt
    from qtpy.QtGui import QImage

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    win = viewer.window._qt_window
    try:  # notification toasts would cover the canvas
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in win.findChildren(NapariQtNotification):
            toast.close()
    except ImportError:
        pass
    if (win.width(), win.height()) != size:
        win.resize(*size)
        run_for(0.5)
    viewer.screenshot(str(path), canvas_only=False)
    kb = path.stat().st_size / 1024
    if kb > max_kb:
        img = QImage(str(path)).convertToFormat(QImage.Format_Indexed8, Qt.ThresholdDither)
        img.save(str(path), "PNG", 9)
        kb = path.stat().st_size / 1024
        scale = 0.85
        while kb > max_kb and scale > 0.4:
            small = QImage(str(path)).convertToFormat(QImage.Format_RGB888)
            small = small.scaledToWidth(int(size[0] * scale), Qt.SmoothTransformation)
            small.convertToFormat(QImage.Format_Indexed8, Qt.ThresholdDither).save(str(path), "PNG", 9)
            kb = path.stat().st_size / 1024
            scale -= 0.1
    return {"path": str(path), "kb": round(kb, 1)}


# --------------------------------------------------------------------------------------------------------
# a simulated annotator
# --------------------------------------------------------------------------------------------------------
def _ordered_segment(pts: np.ndarray, seed_i: int, length: int) -> np.ndarray:
    """Up to ``length`` skeleton points ``(N, 2)`` walked from ``pts[seed_i]`` to nearest neighbours (a
    stroke follows the skeleton like a hand-drawn line)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(pts)
    used = np.zeros(len(pts), bool)
    path = [seed_i]
    used[seed_i] = True
    cur = seed_i
    for _ in range(length - 1):
        dist, idx = tree.query(pts[cur], k=min(9, len(pts)))
        nxt = next((int(j) for d, j in zip(np.atleast_1d(dist), np.atleast_1d(idx))
                    if not used[j] and d <= 1.5), None)
        if nxt is None:
            break
        used[nxt] = True
        path.append(nxt)
        cur = nxt
    return pts[path]


def scribble_strokes(region: np.ndarray, n_strokes: int, *, brush: int, length: int, rng: np.random.Generator,
                     components: bool = False, min_area: int = 0) -> list[np.ndarray]:
    """Strokes (each ``(N, 2)`` int YX points) inside the boolean ``region``: skeleton segments of the
    region eroded by the brush radius (so a brush of size ``brush`` painted along them stays inside).

    ``components``: one stroke per connected component (e.g. per nucleus), the ``n_strokes`` largest of
    those bigger than ``min_area`` pixels taken at random; else ``n_strokes`` segments of up to ``length``
    points from random places of the skeleton."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    # napari's brush of size b covers the pixels within b / 2 of the cursor: eroding by a b x b square keeps
    # every dab inside the region (a 1-pixel brush needs no erosion: the skeleton lies inside)
    inner = ndimage.binary_erosion(region, np.ones((brush, brush), bool)) if brush > 1 else region
    if not inner.any():
        return []
    if components:
        lab, n = ndimage.label(inner)
        if n == 0:
            return []
        areas = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        ok = np.flatnonzero(areas >= max(min_area, 1)) + 1
        if ok.size == 0:
            return []
        pick = rng.choice(ok, size=min(n_strokes, ok.size), replace=False)
        objs = ndimage.find_objects(lab)
        strokes = []
        for k in pick:
            sl = objs[k - 1]
            comp = lab[sl] == k
            sk = np.argwhere(skeletonize(comp))
            if len(sk) == 0:
                sk = np.argwhere(comp)[:1]
            seg = _ordered_segment(sk, 0 if len(sk) < 3 else int(np.argmin(sk.sum(1))), length)
            strokes.append(seg + np.array([sl[0].start, sl[1].start]))
        return strokes
    sk = np.argwhere(skeletonize(inner))
    if len(sk) == 0:
        return []
    return [_ordered_segment(sk, int(rng.integers(len(sk))), length) for _ in range(n_strokes)]


def paint_strokes(layer: Any, strokes: Sequence[np.ndarray], label: int, brush: int,
                  offset: Sequence[int] | None = None) -> int:
    """Paint ``strokes`` (YX, or ZYX, points in image pixels) with ``label`` through the Labels layer's brush, one
    ``layer.paint`` per point as a mouse drag would, then refresh once. ``offset`` is subtracted from the
    points (a layer that shows a window of the image). Returns the number of brush dabs."""
    layer.brush_size = brush
    layer.selected_label = label
    off = np.asarray(offset) if offset is not None else 0
    n = 0
    for s in strokes:
        for p in np.asarray(s) - off:
            layer.paint(tuple(float(v) for v in p), label, refresh=False)
            n += 1
    layer.refresh()
    return n


# --------------------------------------------------------------------------------------------------------
# a PNG line plot with QPainter
# --------------------------------------------------------------------------------------------------------
def save_line_plot(path: Any, series: dict[str, tuple[Sequence[float], Sequence[float], str]], *, title: str,
                   xlabel: str, ylabel: str, ylim: tuple[float, float] = (0.0, 1.0), hline: float | None = None,
                   xticks: Sequence[float] | None = None, xtick_labels: Sequence[str] | None = None, size: tuple[int, int] = (720, 440)) -> None:
    """``series``: name -> (x, y, colour). Draws axes, ticks, a legend and an optional dashed target line."""
    from qtpy.QtCore import QPointF, QRectF, Qt
    from qtpy.QtGui import QColor, QFont, QImage, QPainter, QPen

    w, h = size
    img = QImage(w, h, QImage.Format_RGB32)
    img.fill(QColor("white"))
    p = QPainter(img)
    p.setRenderHint(QPainter.Antialiasing)
    left, right, top, bottom = 70, 20, 40, 55
    pw, ph = w - left - right, h - top - bottom
    xs_all = [x for xs, _, _ in series.values() for x in xs]
    x0, x1 = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    pad = 0.05 * (x1 - x0)
    x0, x1 = x0 - pad, x1 + pad
    y0, y1 = ylim

    def tx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def ty(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    font = QFont()
    font.setPointSize(10)
    p.setFont(font)
    p.setPen(QPen(QColor("#dddddd"), 1))
    for k in range(6):
        yv = y0 + k * (y1 - y0) / 5
        p.drawLine(QPointF(left, ty(yv)), QPointF(left + pw, ty(yv)))
        p.setPen(QPen(QColor("black"), 1))
        p.drawText(QRectF(0, ty(yv) - 8, left - 8, 16), Qt.AlignRight | Qt.AlignVCenter, f"{yv:.2f}")
        p.setPen(QPen(QColor("#dddddd"), 1))
    p.setPen(QPen(QColor("black"), 1))
    p.drawRect(QRectF(left, top, pw, ph))
    ticks = list(xticks if xticks is not None else sorted(set(xs_all)))
    names = list(xtick_labels) if xtick_labels is not None else [f"{xv:g}" for xv in ticks]
    for xv, name in zip(ticks, names):
        p.drawLine(QPointF(tx(xv), top + ph), QPointF(tx(xv), top + ph + 5))
        p.drawText(QRectF(tx(xv) - 70, top + ph + 6, 140, 16), Qt.AlignCenter, name)
    p.drawText(QRectF(left, h - 24, pw, 18), Qt.AlignCenter, xlabel)
    p.save()
    p.translate(16, top + ph / 2)
    p.rotate(-90)
    p.drawText(QRectF(-ph / 2, -10, ph, 20), Qt.AlignCenter, ylabel)
    p.restore()
    bold = QFont(font)
    bold.setBold(True)
    bold.setPointSize(11)
    p.setFont(bold)
    p.drawText(QRectF(0, 8, w, 22), Qt.AlignCenter, title)
    p.setFont(font)
    if hline is not None:
        pen = QPen(QColor("#888888"), 1, Qt.DashLine)
        p.setPen(pen)
        p.drawLine(QPointF(left, ty(hline)), QPointF(left + pw, ty(hline)))
        p.drawText(QRectF(left + 6, ty(hline) + 2, 200, 16), Qt.AlignLeft, f"target {hline:g}")
    ly = top + 8
    for name, (xs, ys, colour) in series.items():
        pen = QPen(QColor(colour), 2.5)
        p.setPen(pen)
        pts = [QPointF(tx(x), ty(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        for a, b in zip(pts, pts[1:]):
            p.drawLine(a, b)
        p.setBrush(QColor(colour))
        for q in pts:
            p.drawEllipse(q, 4, 4)
        p.drawLine(QPointF(left + 12, ly + 6), QPointF(left + 37, ly + 6))
        p.setPen(QPen(QColor("black"), 1))
        p.drawText(QRectF(left + 42, ly - 2, pw - 50, 16), Qt.AlignLeft, name)
        ly += 18
    p.end()
    img.save(str(path), "PNG")
