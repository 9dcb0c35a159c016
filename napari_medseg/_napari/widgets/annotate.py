"""The Annotate dock widget: paint at once, see where the labels are saved, edit the classes, jump between
annotated regions, see painted-pixel counts per class, know how much a crash could lose, and go where the
model is least sure ("Where to paint next": ``guidance.NextRegionBox``).

When an image is in the viewer its labels open by themselves (``labels_opening``): beside the image when
its folder can be written, else in the user data folder, never in a cache folder; the editable labels
layer is selected, ready for the brush. "Labels file..." chooses another labels file or a project folder.
Every error a user can cause (a read-only folder, labels made for another image, labels open in another
viewer, a bad class name) becomes a message in the widget's message log and a napari notification; the
widget stays usable and nothing painted is dropped (labels that cannot be saved where they are stay in
memory until "Save a copy elsewhere..."). Class counts follow every change of the labels, including
predictions accepted from the Predict widget (the store's change listener).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medseg._napari.labels_opening import open_labels, rescue, rescue_dir
from napari_medseg._napari.layer_list_events import quiet_zoom_events
from napari_medseg._napari.layers import on_layer_renamed
from napari_medseg._napari.napari_compat_layers import is_image_layer, same_layer, unwrap
from napari_medseg._napari.painting.controller import AUTOSAVE_NOTE, PaintingController
from napari_medseg._napari.quiet_gc import freeze_long_lived
from napari_medseg._napari.session import session_for
from napari_medseg._napari.widget_lifetime import when_destroyed
from napari_medseg._napari.widgets.class_table import ClassTableMixin
from napari_medseg._napari.widgets.guidance import NextRegionBox, is_heatmap_layer
from napari_medseg._napari.widgets.messages import MessageLog
from napari_medseg._napari.widgets.qt_helpers import combo_layer, fill_layer_combo
from napari_medseg.core.errors import MedsegError
from napari_medseg.labels import ops
from napari_medseg.labels.store import LabelStore

__all__ = ["AnnotateWidget", "rescue_dir"]

log = logging.getLogger(__name__)

COUNTS_DELAY_MS = 150  # a burst of writes (an accepted prediction is many chunks) refreshes the counts once


class AnnotateWidget(ClassTableMixin, QWidget):
    """Dock widget: the image's labels, classes, annotated regions (see module docstring)."""

    _store_written = Signal(object)  # a write batch by someone else than the brush (any thread)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)  # reference labels stay unpaintable, volumes get the LPS camera
        self.why = ""  # why the labels are where they are, in plain words
        self._image_layer: Any = None  # the image whose labels are open (the session holds store and painter)
        self._regions: list[tuple[slice, ...]] = []
        self._region_i = -1
        self._opened_for: weakref.WeakSet = weakref.WeakSet()  # images whose labels opened by themselves once
        self._image_switched = False
        self._outside_writes = False
        self._own_write = False  # the widget itself rewrites the store (removing a class)
        self._painted_before = 0
        self._open_timer = QTimer(self)  # opening waits until the layers of a sample are all in
        self._open_timer.setSingleShot(True)
        self._open_timer.setInterval(0)
        self._open_timer.timeout.connect(self._open_for_current)
        self._counts_timer = QTimer(self)
        self._counts_timer.setSingleShot(True)
        self._counts_timer.setInterval(COUNTS_DELAY_MS)
        self._counts_timer.timeout.connect(self.refresh_counts)
        self._store_written.connect(self._after_outside_write)
        self._build()
        self._refresh_images()
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        on_layer_renamed(self.viewer, self._refresh_images)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.close_store)
        when_destroyed(self, self.close_store)  # a closed viewer saves the labels (widget_lifetime: never a lambda)
        freeze_long_lived()  # the libraries, the viewer and this widget live for the session (quiet_gc)
        quiet_zoom_events(napari_viewer)  # the layer list ignores zoom steps (layer_list_events)

    @property
    def store(self) -> LabelStore | None:
        """The open labels (of ``_image_layer``, as the session has them), or None."""
        return self.session.store_for(self._image_layer)

    @property
    def controller(self) -> PaintingController | None:
        """The painter of the open labels (the session's), or None."""
        return self.session.painter_for(self._image_layer)  # type: ignore[return-value]

    # -- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)
        box = QGroupBox("Labels")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        form.addRow("Image", self.image_combo)
        self.status_label = QLabel("Open an image: its labels open here, ready to paint.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        form.addRow(self.status_label)
        grid = QGridLayout()  # two buttons a row: the dock stays narrow (tests/gui/test_dock_layout.py)
        self.labels_file_button = QPushButton("Labels file...")
        self.labels_file_button.setToolTip("Open other labels for this image (a .labels.zarr folder), or "
                                           "choose a project folder to keep them in")
        self.labels_file_button.clicked.connect(self.choose_labels_file)
        self.view_only_check = QCheckBox("view only")
        self.view_only_check.setToolTip("Look at labels someone else is editing, without changing them")
        self.view_only_check.toggled.connect(self._on_view_only_toggled)
        self.paint_here_button = QPushButton("Paint here")
        self.paint_here_button.setToolTip("Move the editable window to the current view")
        self.paint_here_button.clicked.connect(self.paint_here)
        self.save_button = QPushButton("Save now")
        self.save_button.clicked.connect(self.save_now)
        self.save_as_button = QPushButton("Save a copy elsewhere...")
        self.save_as_button.setToolTip("Write the labels to another folder and keep painting there")
        self.save_as_button.clicked.connect(lambda: self.save_as())
        grid.addWidget(self.labels_file_button, 0, 0)
        grid.addWidget(self.view_only_check, 0, 1)
        grid.addWidget(self.paint_here_button, 1, 0)
        grid.addWidget(self.save_button, 1, 1)
        grid.addWidget(self.save_as_button, 2, 0, 1, 2)
        form.addRow(grid)
        root.addWidget(box)
        root.addWidget(self._build_class_box())

        rbox = QGroupBox("Annotated regions")
        rl = QHBoxLayout(rbox)
        self.prev_button = QPushButton("< Previous")
        self.prev_button.clicked.connect(self.previous_region)
        self.next_button = QPushButton("Next >")
        self.next_button.clicked.connect(self.next_region)
        self.region_label = QLabel("none")
        rl.addWidget(self.prev_button)
        rl.addWidget(self.region_label, 1, Qt.AlignCenter)
        rl.addWidget(self.next_button)
        root.addWidget(rbox)
        self.messages = MessageLog()  # the "Where to paint next" box speaks through it too
        self.guidance = NextRegionBox(self.viewer, self.session, self.messages, lambda: self._image_layer)
        root.addWidget(self.guidance)

        self.autosave_label = QLabel(AUTOSAVE_NOTE)
        self.autosave_label.setWordWrap(True)
        root.addWidget(self.autosave_label)
        root.addWidget(self.messages)
        root.addStretch(1)
        self._update_enabled()

    def _update_enabled(self) -> None:
        has = self.store is not None
        editable = has and self.store.writable
        for w in (self.paint_here_button, self.prev_button, self.next_button):
            w.setEnabled(has)
        for w in (self.save_button, self.add_class_button, self.remove_class_button):
            w.setEnabled(bool(editable))
        self.save_as_button.setEnabled(has)
        unsaved = has and not self.store.persistent and self.store.writable
        self.save_as_button.setStyleSheet("font-weight: bold; color: #d55e00;" if unsaved else "")

    # -- image choice -------------------------------------------------------------------------------
    def _image_layers(self) -> list[Any]:
        return [ly for ly in self.viewer.layers if is_image_layer(ly) and not is_heatmap_layer(ly)]

    def _refresh_images(self, *_: Any) -> None:
        current = self._current_layer()
        self.image_combo.blockSignals(True)
        fill_layer_combo(self.image_combo, self._image_layers())  # a renamed image stays the one chosen
        self.image_combo.blockSignals(False)
        if not same_layer(self._current_layer(), current):
            self._image_switched = True  # the image was removed, or this is the first one
        if self.store is None:
            self._open_timer.start()  # its labels open by themselves

    def _on_image_changed(self, name: str) -> None:
        if name and not same_layer(self._current_layer(), self._image_layer):
            self._image_switched = True  # the user chose this image: open its labels even if opened before
            self._open_timer.start()

    def _current_layer(self) -> Any:
        return combo_layer(self.image_combo, self.viewer.layers)

    def _open_for_current(self) -> None:
        switched, self._image_switched = self._image_switched, False
        layer = self._current_layer()
        if layer is None or (self.store is not None and same_layer(layer, self._image_layer)):
            return
        if not switched and (self.store is not None or unwrap(layer) in self._opened_for):
            return
        self._opened_for.add(unwrap(layer))
        self.open_store()

    def _on_layer_removed(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        ctl = self.controller
        if same_layer(layer, self._image_layer) or (ctl is not None and same_layer(layer, ctl.layer)):
            self.close_store()  # saves the window's edits first (the layer object still holds them)
        self._refresh_images()

    # -- labels -------------------------------------------------------------------------------------
    def open_store(self, path: str | Path | None = None, *, read_only: bool | None = None) -> bool:
        """Open the labels of the chosen image: at ``path`` (labels, a project folder for them, or a new
        labels file), else where they belong (``labels_opening``), creating them if there are none.
        Returns True on success; on failure the labels open before stay open."""
        if read_only is not None:
            self._show_view_only(read_only)
        layer = self._current_layer()
        if layer is None:
            self.messages.error("Open an image first: the labels take the image's geometry.")
            return False
        previous = None
        if self.store is not None and same_layer(layer, self._image_layer):
            previous = (self.store.path, self.store.mode == "r", self.why)  # the same labels: release them
            self.close_store()
        try:
            opened = open_labels(layer, self.viewer, path, read_only=self.view_only_check.isChecked())
        except MedsegError as e:
            self.messages.error(str(e))
            if previous is not None and previous[0] is not None:
                self._show_view_only(previous[1])
                self._reopen(layer, *previous)
            return False
        self.close_store()
        same_place = previous is not None and opened.store.path == previous[0]
        self._attach(opened.store, layer, opened.why or (previous[2] if same_place else ""))
        for level, text in opened.notes:
            self.messages.say(level, text)
        return True

    def _show_view_only(self, checked: bool) -> None:
        self.view_only_check.blockSignals(True)
        self.view_only_check.setChecked(checked)
        self.view_only_check.blockSignals(False)

    def _reopen(self, layer: Any, path: Path, read_only: bool, why: str) -> None:
        """Open again the labels that were open before a failed attempt to open others."""
        try:
            opened = open_labels(layer, self.viewer, path, read_only=read_only)
        except MedsegError as e:  # pragma: no cover - they were open a moment ago
            self.messages.error(str(e))
            return
        self._attach(opened.store, layer, why)

    def choose_labels_file(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Choose labels (a .labels.zarr folder) or a project folder to keep them in")
        if folder:
            self.open_store(folder)

    def _on_view_only_toggled(self, checked: bool) -> None:
        if self.store is not None and self.store.path is not None:
            self.open_store(self.store.path, read_only=checked)

    def _attach(self, store: LabelStore, layer: Any, why: str = "") -> None:
        self._image_layer, self.why = layer, why
        self._opened_for.add(unwrap(layer))
        self.session.attach_labels(layer, store)  # the other widgets find them there, by layer
        try:
            controller = PaintingController(self.viewer, store, layer, notify=self.messages.warning,
                                            inform=self.messages.info)
        except Exception:
            self.session.detach_labels(layer)
            self._image_layer = None
            store.close()
            raise
        self.session.attach_labels(layer, store, controller)
        controller.flushed.connect(lambda *_: self.refresh_counts())
        controller.flush_failed.connect(self._on_flush_failed)
        store.add_listener(self._on_store_write)
        self.viewer.layers.selection.active = controller.layer
        self._fill_table()
        self._painted_before = -1
        self.refresh_counts()
        self._update_enabled()

    def close_store(self) -> None:
        """Save and close the open labels (their layers are removed). Labels that could not be saved where
        they are are written to a rescue folder first (see ``rescue_dir``), never dropped."""
        layer, ctl, store = self._image_layer, self.controller, self.store
        self.session.detach_labels(layer)
        self._image_layer = None
        try:
            if store is not None:
                store.remove_listener(self._on_store_write)
            if ctl is not None:
                try:
                    ctl.close(remove_layers=True)
                except RuntimeError:  # the viewer is already gone
                    ctl.close(remove_layers=False)
        finally:
            if store is not None:
                if store.writable and store.unsaved_chunks:
                    self._say(*rescue(store, layer.name if layer is not None else "labels"))
                store.close()
            self._regions, self._region_i = [], -1
            try:
                self._update_enabled()
                self.status_label.setText("No labels open: 'Labels file...' opens some.")
                self.class_table.setRowCount(0)
            except RuntimeError:  # widgets already deleted at shutdown
                pass

    def _say(self, level: str, text: str) -> None:
        try:
            self.messages.say(level, text)
        except RuntimeError:  # the widget is gone (shutdown): napari's notifications still have it
            from napari_medseg._napari.widgets.messages import _SHOW

            _SHOW[level](text)

    def _on_store_write(self, chunks: list[Any], origin: Any) -> None:
        """A store listener (in the writing thread): writes by anyone but the brush (an accepted
        prediction) refresh the counts on the main thread."""
        if not self._own_write and (origin is None or origin is not self.controller):
            with contextlib.suppress(RuntimeError):  # the widget is gone
                self._store_written.emit(origin)

    def _after_outside_write(self, _origin: Any) -> None:
        self._outside_writes = True
        self._counts_timer.start()

    def _on_flush_failed(self, message: str) -> None:
        self.messages.warning(message)
        self._update_enabled()
        self._update_status()

    def save_now(self) -> None:
        if self.controller is None or self.store is None:
            return
        try:
            self.controller.flush(wait=True, full=True)
            self.store.flush()
        except MedsegError as e:
            self.messages.warning(str(e))
        self.refresh_counts()

    def save_as(self, path: str | Path | None = None) -> bool:
        """Write the labels (saved and in memory) to a new place and keep painting there."""
        if self.store is None or self.controller is None:
            return False
        if path is None:
            folder = QFileDialog.getExistingDirectory(self, "Choose a folder for a copy of the labels")
            if not folder:
                return False
            path = Path(folder) / (self.store.path.name if self.store.path else
                                   f"{self._image_layer.name}.labels.zarr")
        try:
            self.controller.flush(wait=True, full=True)
        except MedsegError as e:
            self.messages.warning(str(e))
        try:
            ops.save_as(self.store, path)
        except MedsegError as e:
            self.messages.error(str(e))
            return False
        self.why = ""
        self.messages.info(f"Labels saved to {path}; painting continues there.")
        self._update_enabled()
        self._update_status()
        return True

    def paint_here(self) -> None:
        if self.controller is not None:
            self.controller.move_window(self.controller.window_for_view())

    # -- counts and regions -------------------------------------------------------------------------
    def refresh_counts(self) -> None:
        """Per-class painted-pixel counts and the annotated regions, from the store's index."""
        if self.store is None:
            return
        counts = self.store.class_counts()
        self._show_counts(counts)
        painted = sum(counts.values())
        if self._outside_writes and self._painted_before >= 0 and painted != self._painted_before:
            self.messages.say("info", f"{painted - self._painted_before:+,} painted pixels from outside the "
                                      "brush (e.g. an accepted prediction); the counts are up to date.",
                              toast=False)  # the Predict widget says it too
        self._outside_writes, self._painted_before = False, painted
        self._regions = ops.painted_regions(self.store)
        if self._region_i >= len(self._regions):
            self._region_i = len(self._regions) - 1
        self._update_region_label()
        self._update_status()

    def _update_status(self) -> None:
        s = self.store
        if s is None:
            return
        where = _shown(s.path) if s.path else "memory only"
        n = len(s.painted_chunks())
        size = " x ".join(str(v) for v in s.shape)
        detail = (f"Painted in {n} chunk{'s' if n != 1 else ''} of the {size} px image." if n else
                  "Nothing painted yet: click a class below, then paint with napari's brush.")
        if not s.writable:
            head = f"View only: these labels ({where}) cannot be changed here."
        elif s.persistent:
            head = f"Your labels are saved automatically to {where}" + (f" ({self.why})." if self.why else ".")
        else:
            head = (f"Your labels are NOT SAVED yet ({s.unsaved_chunks} chunks in memory): click 'Save a copy "
                    "elsewhere...' to choose a folder.")
        self.status_label.setText(f"{head}\n{detail}")

    def _update_region_label(self) -> None:
        n = len(self._regions)
        self.region_label.setText("none" if n == 0 else
                                  f"{self._region_i + 1 if self._region_i >= 0 else '-'} / {n}")

    def next_region(self) -> None:
        self._jump(+1)

    def previous_region(self) -> None:
        self._jump(-1)

    def _jump(self, step: int) -> None:
        if self.controller is None:
            return
        self.controller.flush()
        self._regions = ops.painted_regions(self.store)
        if not self._regions:
            self.messages.info("Nothing painted yet.")
            self._update_region_label()
            return
        self._region_i = (self._region_i + step) % len(self._regions)
        try:
            self.controller.show_region(self._regions[self._region_i])
        except MedsegError as e:
            self.messages.warning(str(e))
        self._update_region_label()


def _shown(path: Path) -> str:
    """``path`` as a user reads it: ``~/...`` inside the home folder."""
    try:
        return str(Path("~") / Path(path).relative_to(Path.home()))
    except (ValueError, RuntimeError):  # outside the home folder, or no home folder
        return str(path)
