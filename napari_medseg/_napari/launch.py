"""``napari-medseg gui [PATH] [--sample {slide,ct}]``: a napari window with every napari-medseg widget.

Opens PATH (a slide, zarr, NIfTI or DICOM folder) with the napari-medseg reader and/or a sample, docks
every widget the plugin's manifest lists (tabbed on the right, "Annotate" shown, narrow enough that the
canvas keeps most of the window: ``dock_layout``; a widget that fails to import is skipped with a warning,
so one broken widget never blocks the others), fits the image to the canvas once the docks have settled
(and again when the window changes size, until the view is moved), and runs the Qt event loop.
``--screenshot PNG`` saves the whole window instead of running the loop (docs and smoke tests). The
Annotate widget opens the image's labels by itself, so the window is ready to paint.
napari's asynchronous slicing is on for the session (``NAPARI_ASYNC=0`` turns it off).
A PATH that cannot be read fails with a clear message before any window opens.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from napari_medseg._napari.dock_layout import arrange_docks, keep_view_fitted, watch_window
from napari_medseg._napari.layers import use_lps_camera
from napari_medseg._napari.manifest import PLUGIN, manifest_widgets
from napari_medseg._napari.napari_compat_layers import close_notifications
from napari_medseg._napari.reference_layers import guard_reference_layers
from napari_medseg.core.errors import MedsegError

logger = logging.getLogger(__name__)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", type=Path, help="slide, zarr, NIfTI file or DICOM folder to open")
    parser.add_argument("--sample", choices=["slide", "ct"], help="open a sample with its ground truth")
    parser.add_argument("--no-widgets", action="store_true", help="do not dock the napari-medseg widgets")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="save a screenshot of the window to PNG and exit (no event loop)")
    parser.add_argument("--size", default="1400x900", help="window size WxH (default 1400x900)")


#: widgets of the manifest opened from the Plugins menu only: occasional tools, not steps of the loop
ON_REQUEST = ("Stack channels",)


def dock_widgets(viewer: Any) -> tuple[list[str], list[str]]:
    """Dock every manifest widget but the occasional ones (``ON_REQUEST``), tabbed in one narrow dock
    (``dock_layout.arrange_docks``), the first one shown. Returns (docked names, skipped 'name: reason')."""
    docked: list[str] = []
    skipped: list[str] = []
    first = None
    for name, command in manifest_widgets():
        if name in ON_REQUEST:
            continue
        try:
            dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name=name, tabify=bool(docked))
            first = first or dock
            docked.append(name)
        except Exception as e:  # another engineer's widget may not import yet: keep the others
            reason = f"{name} ({command}): {type(e).__name__}: {e}"
            logger.warning("napari-medseg: skipped widget %s", reason)
            skipped.append(reason)
    if first is not None:
        from qtpy.QtCore import QTimer

        window = first.window()
        watch_window(window, viewer)  # a widget opened later from the Plugins menu joins the tabs
        arrange_docks(window, show=first)
        QTimer.singleShot(0, first.raise_)  # the first widget (the workflow's first step) is the shown tab
    return docked, skipped


def setup_viewer(viewer: Any, path: Path | None = None, sample: str | None = None, widgets: bool = True) -> dict[str, Any]:
    """Open ``sample`` and ``path`` in ``viewer`` and dock the widgets; returns what was done."""
    info: dict[str, Any] = {"layers": [], "docked": [], "skipped": []}
    guard_reference_layers(viewer)  # a sample's ground truth: not paintable, not the selected layer
    if sample:
        info["layers"] += [ly.name for ly in viewer.open_sample(PLUGIN, sample)]
    if path is not None:
        info["layers"] += [ly.name for ly in viewer.open(str(path), plugin=PLUGIN)]
    if any(medseg_volume(ly) for ly in viewer.layers):
        use_lps_camera(viewer)
        if viewer.dims.ndim == 3:
            viewer.dims.axis_labels = ("z", "y", "x")  # z: inferior -> superior (LPS+)
    if widgets:
        info["docked"], info["skipped"] = dock_widgets(viewer)
    # the whole image in view: now, and again as the docks and the window settle (the canvas shrinks when
    # the docks take their width), until the user moves the view
    info["stop_fitting"] = keep_view_fitted(viewer)
    return info


def medseg_volume(layer: Any) -> bool:
    """True for a layer napari-medseg opened as a ZYX/CZYX volume (LPS+ voxel order)."""
    meta = (getattr(layer, "metadata", None) or {}).get("napari_medseg") or {}
    return str(meta.get("axes", "")).endswith("ZYX") and meta.get("unit") == "millimeter"


def _check_path(path: Path) -> None:
    """Fail before the window opens if napari-medseg cannot read ``path``."""
    from napari_medseg.io.reader import open_path

    if not path.exists():
        raise MedsegError(f"{path}: no such file or folder.")
    open_path(path)  # lazy: reads headers only; raises UnreadableInputError with the reason


def _close_notifications(viewer: Any = None) -> None:
    """Close napari's toast notifications (``napari_compat_layers.close_notifications``; this name is kept
    for ``docs/images/make_screenshots.py``)."""
    close_notifications()


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError as e:
        raise MedsegError(f"--size {text!r} is not WIDTHxHEIGHT like 1400x900.") from e


def run(args: argparse.Namespace) -> int:
    path = getattr(args, "path", None)
    sample = getattr(args, "sample", None)
    width, height = _size(getattr(args, "size", "1400x900"))
    if path is not None:
        _check_path(path)
    # napari's asynchronous slicing: tiles of a slide are read off the main thread, so panning stays smooth
    # while training or prediction runs (bench_ui_latency). For this session only; NAPARI_ASYNC=0 turns it off.
    os.environ.setdefault("NAPARI_ASYNC", "1")
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-medseg")
    viewer.window.resize(width, height)
    info = setup_viewer(viewer, path, sample, widgets=not getattr(args, "no_widgets", False))
    for s in info["skipped"]:
        napari.utils.notifications.show_warning(f"napari-medseg: a widget could not be loaded: {s}")
    shot = getattr(args, "screenshot", None)
    if shot is not None:
        for _ in range(20):  # the widgets finish opening (the Annotate widget opens the labels)
            QApplication.processEvents()
        close_notifications()  # toasts (napari's own warnings among them) would hide the canvas
        QApplication.processEvents()
        shot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(shot), canvas_only=False)
        print(shot)
        viewer.close()
        return 0
    napari.run()
    return 0
