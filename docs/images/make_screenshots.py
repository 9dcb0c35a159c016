"""Regenerate the README/docs screenshots of the samples in a real napari window.

    xvfb-run -a python docs/images/make_screenshots.py            # all
    xvfb-run -a python docs/images/make_screenshots.py sample_ct  # one

Each view opens the sample through the plugin manifest (File > Open Sample), as a user would, then
saves ``viewer.screenshot(canvas_only=False)``; PNGs over ~300 KB are palette-quantised. The window views
are 1600 x 1000, the size ``tests/gui/test_dock_layout.py`` measures the layout at.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_medseg._napari.launch import _close_notifications, setup_viewer

HERE = Path(__file__).resolve().parent
MAX_BYTES = 300_000
WINDOW = (1600, 1000)
VIEW_3D = (-0.2, 1.0, -0.4)  # ZYX: from the front, a little above and to the patient's left


def _settle(viewer: napari.Viewer, rounds: int = 40) -> None:
    """Let the docks take their width and the view be fitted again (timers and layout events run)."""
    _close_notifications(viewer)
    for _ in range(rounds):
        QApplication.processEvents()
        time.sleep(0.02)
    _close_notifications(viewer)
    QApplication.processEvents()


def _save(viewer: napari.Viewer, name: str, canvas_only: bool = False) -> None:
    _settle(viewer)
    path = HERE / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=canvas_only)
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        rgb = Image.open(path).convert("RGB")
        for colors, scale in ((192, 1.0), (128, 1.0), (128, 0.85), (96, 0.75), (64, 0.65)):
            im = rgb if scale == 1.0 else rgb.resize((int(rgb.width * scale), int(rgb.height * scale)), Image.LANCZOS)
            im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
            if path.stat().st_size <= MAX_BYTES:
                break
    print(path, path.stat().st_size)


def sample_slide() -> None:
    viewer = napari.Viewer(title="napari-medseg")
    viewer.window.resize(*WINDOW)
    setup_viewer(viewer, sample="slide")  # as `napari-medseg gui --sample slide` does
    viewer.layers.selection.active = viewer.layers[0]
    _save(viewer, "sample_slide")
    # zoom into glands near full resolution, the ground truth as outlines; the canvas only (the
    # texture makes a full-window PNG large)
    viewer.window.remove_dock_widget("all")
    viewer.window.resize(1150, 700)
    gt = viewer.layers["ground truth"]
    gt.visible = True
    gt.opacity = 1.0
    gt.contour = 3
    viewer.camera.center = (2400.0, 1650.0)  # micrometers (y, x)
    viewer.camera.zoom = 0.9
    _save(viewer, "sample_slide_zoom", canvas_only=True)
    viewer.close()


def sample_ct() -> None:
    viewer = napari.Viewer(title="napari-medseg")
    viewer.window.resize(*WINDOW)
    setup_viewer(viewer, sample="ct")  # as `napari-medseg gui --sample ct` does (3D camera not mirrored)
    viewer.dims.set_current_step(0, 26)
    _settle(viewer)  # the docks take their width; the view is fitted to the canvas left
    viewer.layers.selection.active = viewer.layers[0]
    _save(viewer, "sample_ct")
    # 3D: the ground-truth organs seen from the front (superior up), no docked widgets
    viewer.window.remove_dock_widget("all")
    viewer.dims.ndisplay = 3
    viewer.layers["sample CT"].visible = False
    viewer.layers["ground truth"].opacity = 1.0
    viewer.reset_view()
    viewer.camera.set_view_direction(view_direction=VIEW_3D, up_direction=(1.0, 0.0, 0.0))
    viewer.camera.zoom *= 1.15
    _save(viewer, "sample_ct_3d")
    viewer.close()


if __name__ == "__main__":
    todo = sys.argv[1:] or ["sample_slide", "sample_ct"]
    for name in todo:
        globals()[name]()
