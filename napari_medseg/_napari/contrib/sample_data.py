"""File > Open Sample > napari-medseg: the H&E-like slide and the CT-like volume, each with ground truth.

Each function returns napari LayerData (``layerdata.to_layer_data``): the image (the slide as a 5-level multiscale RGB pyramid at
0.5 um/px; the CT as a ZYX volume in mm with the soft-tissue window W400/L40), then its ground truth as a
Labels layer named "ground truth" in the label-store values (1 background, 2.. classes) with the class
colours of ``sample_data/*_classes.json`` (background drawn transparent, as in predictions). The ground
truth starts hidden on the slide (so it does not give away the answer while annotating) and at low opacity
on the CT; tick its eye to compare. It is reference labels (role ``"reference"``, ``reference_layers``): not editable, and the
image, not the ground truth, is the layer selected after the sample opens.
First use generates the files into the cache (slide about 20-40 s, CT a few seconds); later uses are
instant. The labels a user paints on a sample are kept in the user data folder, never in the cache
(``labels.location``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from napari_medseg._napari.layerdata import LayerData, to_layer_data
from napari_medseg._napari.reference_layers import guard_reference_layers

logger = logging.getLogger(__name__)


def _guard_current_viewer() -> None:
    """napari adds the layers a sample function returns to the current viewer: guard its reference labels
    (a no-op without a viewer, or where the plugin's widgets already did)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # pragma: no cover - napari without a current viewer API
        viewer = None
    if viewer is not None:
        guard_reference_layers(viewer)


def sample_slide() -> list[LayerData]:
    """The sample slide (multiscale RGB) and its ground truth (multiscale labels, hidden). On first use it
    is generated (20-40 s): a progress dialog says so, instead of a frozen window."""
    from napari_medseg.samples.slide import load_sample_slide, sample_slide_cached, slide_classes

    if sample_slide_cached():
        img, gt = load_sample_slide()
    else:
        with first_use_progress("Preparing the sample slide (first use only; later it opens at once)…") as report:
            img, gt = load_sample_slide(progress=report)
    _guard_current_viewer()
    return [to_layer_data(img), to_layer_data(gt, "reference", classes=slide_classes(), visible=False, opacity=0.5)]


@contextlib.contextmanager
def first_use_progress(text: str) -> Iterator[Callable[[float], None]]:
    """A modal progress dialog while the main thread generates sample data (napari calls sample functions
    on it and waits). Yields ``report(fraction)``, which updates the bar and lets Qt draw it; the dialog is
    application-modal, so the half-built viewer takes no input meanwhile. Without a QApplication the
    reports do nothing."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication, QProgressDialog

    app = QApplication.instance()
    if app is None:
        yield lambda _f: None
        return
    dialog = QProgressDialog(text, "", 0, 100)
    dialog.setWindowTitle("napari-medseg")
    dialog.setCancelButton(None)  # generation cannot stop half-way; it takes well under a minute
    dialog.setWindowModality(Qt.ApplicationModal)
    dialog.setMinimumDuration(0)
    dialog.setMinimumWidth(420)
    dialog.setValue(0)
    dialog.show()
    app.processEvents()
    last = [0]

    def report(fraction: float) -> None:
        value = max(0, min(100, int(round(fraction * 100))))
        if value != last[0]:
            last[0] = value
            dialog.setValue(value)
            app.processEvents()

    try:
        yield report
    finally:
        dialog.close()
        dialog.deleteLater()


def sample_ct() -> list[LayerData]:
    """The sample CT (ZYX, HU, soft-tissue window) and its ground truth (labels at opacity 0.35)."""
    from napari_medseg.samples.ct import ct_classes, load_sample_ct

    img, gt = load_sample_ct()
    _guard_current_viewer()
    return [to_layer_data(img), to_layer_data(gt, "reference", classes=ct_classes(), visible=True, opacity=0.35)]
