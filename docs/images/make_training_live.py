"""Regenerate ``docs/images/training_live.png``: the Train widget after two short rounds on the sample CT.

    xvfb-run -a python docs/images/make_training_live.py [--steps 150]

Opens the sample CT (File > Open Sample), scribbles on three slices taken from its ground truth (sparse
points, as a quick annotator would leave), trains 2D (slice-wise) through the Train widget for ``--steps``
steps, presses Resume for a second round of the same length, and near its end saves
``viewer.screenshot(canvas_only=False)`` with the live preview over the current slice, the plot (two rounds,
validation Dice from the first steps), the status line (step k / total, steps/s, ETA) and the message area. Takes 1-3 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_medseg._napari.launch import _close_notifications
from napari_medseg._napari.widgets.train import PREVIEW_LAYER, TrainWidget

HERE = Path(__file__).resolve().parent


def _wait(cond, timeout: float) -> None:
    t0 = time.perf_counter()
    while not cond():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("timed out")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=HERE / "training_live.png")
    args = ap.parse_args()
    viewer = napari.Viewer(title="napari-medseg")
    viewer.window.resize(1400, 900)
    image, gt = viewer.open_sample("napari-medseg", "ct")
    truth = np.asarray(gt.data)
    scribbles = np.zeros_like(truth)
    rng = np.random.default_rng(0)
    for z in (18, 30, 42):
        keep = rng.random(truth[z].shape) < 0.01
        scribbles[z][keep] = truth[z][keep]
    lab = viewer.add_labels(scribbles, name="scribbles", scale=gt.scale, units=gt.units, metadata=dict(gt.metadata),
                            colormap=gt.colormap)
    gt.visible = False
    viewer.dims.set_current_step(0, 30)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train", area="right")
    w.image_combo.setCurrentText(image.name)
    w.labels_combo.setCurrentText(lab.name)
    w.dims_combo.setCurrentText("2D")
    w.patch_spin.setValue(128)
    w.steps_spin.setValue(args.steps)
    w.threads_spin.setValue(1)
    w.preview_every.setValue(2.0)
    w.out_edit.setText(tempfile.mkdtemp(prefix="medseg-shot-"))
    viewer.layers.selection.active = image
    w.start()
    _wait(lambda: w._worker is None, 900)
    w.start(resume=True)  # round 2: the picture is taken while it runs (the status shows its progress)
    _wait(lambda: w.feedback.last_step >= args.steps * 1.8, 900)
    _wait(lambda: PREVIEW_LAYER in viewer.layers, 60)
    _close_notifications(viewer)
    for _ in range(40):
        QApplication.processEvents()
    viewer.screenshot(str(args.out), canvas_only=False)
    print(args.out, args.out.stat().st_size, w.status.text())
    w.stop()
    _wait(lambda: w._worker is None, 120)
    viewer.close()


if __name__ == "__main__":
    main()
