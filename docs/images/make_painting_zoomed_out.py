"""Regenerate docs/images/painting_zoomed_out.png: painting the sample slide zoomed out, in a real window.

    xvfb-run -a python docs/images/make_painting_zoomed_out.py [--out PATH]

The sample slide (8192 px) is opened through the plugin manifest and the Annotate widget docked as napari
docks it (its viewer is napari's ``PublicOnlyProxy``, as for a user); a label store is created in a temporary
folder, the whole slide is put in view, strokes are drawn with real Qt mouse events on the canvas, and
``viewer.screenshot(canvas_only=False)`` is saved. The script fails if napari warned about private
attribute access or if a stroke did not reach the store at full resolution.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import warnings
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).resolve().parent
PLUGIN = "napari-medseg"
MAX_BYTES = 300_000


def _wait(ms: int) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def _send(widget, typ, pos, button, buttons) -> None:
    glob = QPointF(widget.mapToGlobal(QPoint(int(pos[0]), int(pos[1]))))
    QApplication.sendEvent(widget, QMouseEvent(typ, QPointF(*pos), glob, button, buttons,
                                               Qt.KeyboardModifier.NoModifier))


def stroke(viewer, ctl, pixels) -> None:
    """A mouse stroke over store pixels [(y, x), ...], as real Qt events on the canvas."""
    native = viewer.window._qt_viewer.canvas.native  # the script drives the canvas like a hand; the plugin does not
    cam = viewer.camera
    h, w = viewer.canvas.size
    pts = []
    for y, x in pixels:
        wy, wx = (t + v * s for t, v, s in zip(ctl._translate, (y, x), ctl._scale))
        pts.append(((wx - cam.center[-1]) * cam.zoom + w / 2, (wy - cam.center[-2]) * cam.zoom + h / 2))
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _send(native, QEvent.Type.MouseButtonPress, pts[0], left, left)
    for p in pts[1:]:
        _wait(8)
        _send(native, QEvent.Type.MouseMove, p, none, left)
    _send(native, QEvent.Type.MouseButtonRelease, pts[-1], left, none)
    _wait(30)


def blob(cy: float, cx: float, r: float, n: int = 70) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n)
    rr = r * (1 + 0.18 * np.sin(3 * t) + 0.08 * np.cos(5 * t))
    return list(zip((cy + rr * np.sin(t)).tolist(), (cx + rr * np.cos(t)).tolist()))


def main(out: Path) -> None:
    viewer = napari.Viewer(title="napari-medseg")
    viewer.window.resize(1500, 950)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        viewer.open_sample(PLUGIN, "slide")  # File > Open Sample
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name="Annotate")
        gt = [ly for ly in viewer.layers if ly.name == "ground truth"]
        for ly in gt:
            ly.visible = False
        folder = Path(tempfile.mkdtemp(prefix="medseg-shot-"))
        assert widget.open_store(folder / "slide.labels.zarr"), "could not open the label store"
        ctl = widget.controller
        viewer.reset_view()  # the whole 8192 px slide in view: the editable window is at 1/2 resolution
        _wait(500)
        ctl.follow_view()
        layer = ctl.layer
        layer.mode, layer.brush_size = "paint", 12
        for label, (cy, cx, r) in ((2, (1700, 2300, 420)), (3, (5600, 6200, 520)), (2, (6900, 1500, 300))):
            layer.selected_label = label
            stroke(viewer, ctl, blob(cy, cx, r))
        layer.mode = "fill"
        layer.selected_label = 2
        stroke(viewer, ctl, [(1700, 2300)])
        layer.selected_label = 3
        stroke(viewer, ctl, [(5600, 6200)])
        layer.mode = "paint"
        ctl.flush(wait=True)
        store = ctl.store
        assert store.class_counts().get(2, 0) > 100_000 and store.class_counts().get(3, 0) > 100_000, store.class_counts()
        f = ctl.factor[0]
        print("level", ctl.level, "factor", f, "window", ctl.window, "counts", store.class_counts())
        for _ in range(20):
            QApplication.processEvents()
    private = [str(w.message) for w in record if "Private attribute access" in str(w.message)]
    assert not private, private
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    if out.stat().st_size > MAX_BYTES:
        from PIL import Image

        rgb = Image.open(out).convert("RGB")
        for colors, scale in ((192, 1.0), (128, 1.0), (128, 0.85), (96, 0.75)):
            im = rgb if scale == 1.0 else rgb.resize((int(rgb.width * scale), int(rgb.height * scale)), Image.LANCZOS)
            im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
            if out.stat().st_size <= MAX_BYTES:
                break
    print(out, out.stat().st_size)
    widget.close_store()
    viewer.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "painting_zoomed_out.png")
    main(ap.parse_args().out)
