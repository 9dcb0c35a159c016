"""Where napari-medseg's dock widgets go in the napari window, and the view once they are docked.

- The plugin's widgets share one tabbed dock (the area of the first one, the right by default), whether
  ``napari-medseg gui`` docks them or the user opens them from the Plugins menu: stacked one under the
  other, each would get a third of the height, and the area would be as wide as the widest of them.
- Their tabs read "Annotate", "Train", "Predict", "Objects": napari titles a plugin's dock "<widget> (<plugin>)",
  which a tab cuts to "Annotate (napari-..." (the dock's own title bar keeps napari's full name).
- The tabbed dock starts ``DOCK_WIDTH`` pixels wide (or as narrow as its widgets allow) and can be widened
  by hand to ``DOCK_MAX_WIDTH``: at a 1600 px window the canvas keeps about 60 % of the width, beside
  napari's layer controls and layer list, which are left as napari sizes them.
- ``VerticalScroll``: a widget taller than the dock scrolls instead of making the window taller.
- ``keep_view_fitted``: the image is fitted to the canvas again each time the canvas changes size (the
  docks settle after the window is shown), until the user moves or zooms the view.

Only public API: the Qt methods of the dock widgets napari creates (``QDockWidget``, ``QMainWindow``) and
napari's public viewer model (``viewer.canvas``, ``reset_view``, the camera).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QWidget

from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.manifest import manifest_widgets

PACKAGE = "napari_medseg"
PLUGIN_SUFFIX = " (napari-medseg)"
DOCK_WIDTH = 280       # px: the tabbed dock's starting width (its forms wrap to it)
DOCK_MAX_WIDTH = 520   # px: widening it by hand stops here, so the canvas is never squeezed out


def is_medseg_dock(dock: QDockWidget) -> bool:
    """A dock holding one of napari-medseg's widgets."""
    inner = dock.widget()
    return inner is not None and type(inner).__module__.startswith(PACKAGE + ".")


def short_title(title: str) -> str:
    """'Annotate (napari-medseg)' -> 'Annotate'; other titles unchanged."""
    return title[: -len(PLUGIN_SUFFIX)] if title.endswith(PLUGIN_SUFFIX) else title


def medseg_docks(window: QMainWindow) -> list[QDockWidget]:
    """napari-medseg's docked (not floating) widgets in ``window`` (in Qt's child order)."""
    return [d for d in window.findChildren(QDockWidget)
            if d.parent() is window and is_medseg_dock(d) and not d.isFloating()]


def workflow_rank(dock: QDockWidget) -> int:
    """Where a dock's tab goes: the order of the plugin's manifest (Annotate, Train, Predict, Objects),
    others last."""
    try:
        names = [name for name, _ in manifest_widgets()]
    except Exception:  # the manifest cannot be read: keep the order the docks came in
        names = []
    title = short_title(dock.windowTitle())
    return names.index(title) if title in names else len(names)


def arrange_docks(window: QMainWindow, show: QDockWidget | None = None, width: int = DOCK_WIDTH) -> list[QDockWidget]:
    """Tab napari-medseg's docks together, in the manifest's order, in the area of the first of them, with
    short tab titles; when a dock joins, the tabbed dock is set ``width`` px wide (or as narrow as its widgets
    allow; a width the user chose is kept otherwise). ``show`` becomes the shown tab. A dock the user moved
    to another area or floated stays where it is. Returns the tabbed docks.

    Run it once napari has placed the docks (its own ``tabifyDockWidget`` and ``resizeDocks`` run after
    adding one; ``QMainWindow.tabifiedDockWidgets`` only tells the truth after the layout is processed,
    so every dock of the group is tabbed again, in order: Qt appends a re-tabbed dock to its group)."""
    docks = sorted(medseg_docks(window), key=workflow_rank)
    if not docks:
        return []
    area = window.dockWidgetArea(docks[0])
    group = [d for d in docks if window.dockWidgetArea(d) == area]
    joined = [d for d in group if d not in _ARRANGED]
    if not joined:
        if show is not None and show in group:
            show.raise_()
        return group
    shown = show if show is not None else next((d for d in group if d in _ARRANGED and d.isVisible()), None)
    sideways = area in (Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea)
    for dock in joined:
        dock.setWindowTitle(short_title(dock.windowTitle()))
        if sideways:
            dock.setMaximumWidth(DOCK_MAX_WIDTH)
        _ARRANGED.add(dock)
    for dock in group[1:]:
        window.tabifyDockWidget(group[0], dock)
    if sideways:
        need = max(d.minimumSizeHint().width() for d in group)
        window.resizeDocks([group[0]], [max(int(width), need)], Qt.Orientation.Horizontal)
    front = shown or group[0]
    front.raise_()
    QTimer.singleShot(0, front.raise_)  # Qt updates the tab bar later, showing the last dock tabbed
    return group


_ARRANGED: weakref.WeakSet[QDockWidget] = weakref.WeakSet()


class _DockWatcher(QObject):
    """Arranges napari-medseg's docks again when one is added to the main window (Plugins menu)."""

    def __init__(self, window: QMainWindow, viewer: Any = None) -> None:
        super().__init__(window)
        self.window = window
        self.viewer = viewer
        self._pending: list[QDockWidget] = []

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt)
        if obj is self.window and event.type() == QEvent.Type.ChildAdded:
            child = event.child()
            if isinstance(child, QDockWidget):
                self._pending.append(child)
                QTimer.singleShot(0, self._arrange)  # once napari has placed it
        return False

    def _arrange(self) -> None:
        new = [d for d in self._pending if d.parent() is self.window and is_medseg_dock(d)]
        self._pending.clear()
        if new:
            if self.viewer is not None and all_in_view(self.viewer):  # a wider widget must not cut the image
                keep_view_fitted(self.viewer)
            arrange_docks(self.window, show=new[-1])


_WATCHED: weakref.WeakSet[QMainWindow] = weakref.WeakSet()


def watch_window(window: QMainWindow, viewer: Any = None) -> bool:
    """Keep napari-medseg's docks of ``window`` tabbed together as more are added (and, with ``viewer``, a
    whole image in view when one widens the dock); True the first time."""
    if window in _WATCHED:
        return False
    window.installEventFilter(_DockWatcher(window, viewer))
    _WATCHED.add(window)
    return True


def dock_into_tabs(widget: QWidget, viewer: Any = None) -> None:
    """Call from a napari-medseg widget when it is first shown (its dock is then in the main window): tab it
    with the plugin's other docks, and keep doing so for docks added later. With ``viewer``, if the whole
    image is in view, it stays so once the dock has taken its width (``keep_view_fitted``)."""
    window = widget.window()
    dock = widget.parent()
    if not isinstance(window, QMainWindow) or not isinstance(dock, QDockWidget):
        return  # floating, or not docked in a napari window
    watch_window(window, viewer)
    if dock in _ARRANGED:
        return
    if viewer is not None and all_in_view(viewer):  # the user sees the whole image: the dock must not cut it
        keep_view_fitted(viewer)
    QTimer.singleShot(0, lambda: arrange_docks(window, show=dock) if is_medseg_dock(dock) else None)


def all_in_view(viewer: Any) -> bool:
    """True when every layer's whole extent (pixel edges, displayed axes of a 2D view) is on the canvas."""
    import numpy as np

    from napari_medseg._napari.napari_compat import canvas_size

    if viewer.dims.ndisplay != 2 or not len(viewer.layers):
        return False
    extent = viewer.layers.extent
    axes = list(viewer.dims.displayed)
    step = np.asarray(extent.step, float)[axes] / 2
    lo, hi = np.asarray(extent.world[0], float)[axes] - step, np.asarray(extent.world[1], float)[axes] + step
    camera = camera_of(viewer)
    center = np.asarray(camera.center, float)[-2:]
    half = np.asarray(canvas_size(viewer), float) / float(camera.zoom) / 2
    tol = 1.0 / float(camera.zoom)  # a screen pixel
    return bool(np.all(lo >= center - half - tol) and np.all(hi <= center + half + tol))


def keep_view_fitted(viewer: Any) -> Callable[[], None]:
    """Fit the layers to the canvas now and each time the canvas changes size (the docks and the window
    settle after it is shown) until the view is zoomed or moved by anything else; returns ``stop``."""
    camera = camera_of(viewer)
    fitted: dict[str, Any] = {}

    def view() -> tuple[Any, ...]:
        return (*(round(float(c), 6) for c in tuple(camera.center)[-2:]), round(float(camera.zoom), 9),
                int(viewer.dims.ndisplay))

    def stop() -> None:
        viewer.canvas.events.size.disconnect(refit)

    def refit(event: Any = None) -> None:
        if "view" in fitted and view() != fitted["view"]:
            stop()  # the user zoomed or panned: their view stays
            return
        if len(viewer.layers):
            viewer.reset_view()
        fitted["view"] = view()

    viewer.canvas.events.size.connect(refit)
    refit()
    return stop


class VerticalScroll(QScrollArea):
    """Scrolls ``content`` up and down when the dock is shorter than it, never sideways: it is as wide as the
    dock and at least as wide as the content needs (the dock's width comes from the content's minimum)."""

    def __init__(self, content: QWidget) -> None:
        super().__init__()
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt)
        inner = self.widget().minimumSizeHint()
        return QSize(inner.width() + self.verticalScrollBar().sizeHint().width(), min(inner.height(), 160))

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt)
        inner = self.widget().sizeHint()
        return QSize(inner.width() + self.verticalScrollBar().sizeHint().width(), inner.height())


class TabsOnFirstShow:
    """Mixin for a plugin dock widget with a ``viewer``: the first time it is shown (opened from the Plugins
    menu, its dock now in the main window) it joins the plugin's other widgets' tabs (``dock_into_tabs``)."""

    _docked = False

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        super().showEvent(event)  # type: ignore[misc]
        if not self._docked:
            self._docked = True
            dock_into_tabs(self, self.viewer)  # type: ignore[arg-type, attr-defined]
