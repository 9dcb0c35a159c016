"""The model fields of the Predict and Train widgets: a path field that takes any model file napari-medseg
opens, and a combo of the model library's models that fit the open image.

- ``model_path_row``: a path field with a "…" button that picks a model file (a checkpoint ``.pt``, a
  bioimage.io package ``.zip``, an ``.onnx`` or TorchScript ``.ts`` file) and, from its menu, a bioimage.io
  package *folder* (a folder holding ``rdf.yaml``); a typed folder path or a library name is accepted too.
- ``model_path``: the text of such a field as a path (an existing file or package folder, else a library
  name resolved with ``sharing.library.find``), or a ``MedsegError`` that says what to give instead.
- ``ModelLibraryCombo``: the library's models (``sharing.library.list_models``) that fit the image (its
  channels and dimensions: a 2D model fits a volume, slice by slice), newest first, each item showing the
  entry's ``summary()`` with its metrics, training data and file in the tooltip; a refresh button reads the
  library again (a model trained or added meanwhile). Choosing one emits ``chosen(model file path)``.

The library (``napari_medseg.sharing.library``) is read lazily: without it (or with an unreadable folder)
the combo says so and the widgets work with paths alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QMenu,
    QPushButton,
    QStyle,
    QStyleOptionComboBox,
    QStylePainter,
    QToolButton,
    QWidget,
)

from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)

#: file dialog filters: every model file the Predict widget runs, and those training can start from
MODEL_FILTER = ("Model files (*.pt *.pth *.zip *.onnx *.ts *.yaml);;Checkpoints (*.pt *.pth);;"
                "bioimage.io packages (*.zip *.yaml);;ONNX / TorchScript (*.onnx *.ts *.pt);;All files (*)")
TRAINABLE_FILTER = ("Checkpoints and bioimage.io packages (*.pt *.pth *.zip *.yaml);;Checkpoints (*.pt *.pth);;"
                    "bioimage.io packages (*.zip *.yaml);;All files (*)")
PACKAGE_FOLDER_HINT = "a folder holding rdf.yaml (or *.bioimageio.yaml)"
_METRIC_NAMES = {"val_dice": "validation Dice", "mean_dice": "mean Dice", "mean_iou": "mean IoU", "hd95": "HD95"}
_SHORT = Qt.ItemDataRole.UserRole + 1  # an item's text in the closed combo (its list shows the whole summary)


# -- the library, read lazily -------------------------------------------------------------------------------
def list_entries(channels: int | None = None, spatial_dims: int | None = None) -> list[Any]:
    """The library's entries that fit (``sharing.library.list_models``); [] without a library module."""
    try:
        from napari_medseg.sharing import library
    except ImportError:
        log.debug("no model library module", exc_info=True)
        return []
    return list(library.list_models(channels=channels, spatial_dims=spatial_dims))


def find_in_library(name: str) -> Path:
    """A library name's model file (``sharing.library.find``); MedsegError naming the closest names."""
    try:
        from napari_medseg.sharing import library
    except ImportError:
        raise MedsegError(f"{name} does not exist (no such file or folder); pick a model file.") from None
    return Path(library.find(name))


def model_path(text: str) -> Path:
    """The model a field's ``text`` names: an existing file, a bioimage.io package folder, or a library name."""
    text = text.strip()
    p = Path(text).expanduser()
    if p.is_dir():
        from napari_medseg.sharing.bioimageio_import import model_file_kind

        if model_file_kind(p) != "bioimageio":
            raise MedsegError(f"{p} is a folder but not a bioimage.io package ({PACKAGE_FOLDER_HINT}); pick a "
                              "model file or a package folder.")
        return p
    if p.exists():
        return p  # a file: opening it says what is wrong with it, if anything
    if "/" in text or "\\" in text or p.suffix.lower() in (".pt", ".pth", ".zip", ".onnx", ".ts", ".yaml"):
        raise MedsegError(f"Model file {p} does not exist; pick another file.")
    return find_in_library(text)


def trainable(entry: Any) -> bool:
    """Training can start from ``entry``: our checkpoint, or a package of a napari-medseg architecture."""
    kind = getattr(entry, "kind", "")
    if kind == "checkpoint":
        return True
    if kind != "bioimageio":
        return False
    from napari_medseg.models import available_models

    return getattr(entry, "architecture", "") in available_models()


def entry_tooltip(entry: Any) -> str:
    """Everything a user weighs before choosing a model: metrics, data, parent, file."""
    lines = [entry.summary()]
    desc = str(getattr(entry, "description", "") or "").strip()
    if desc:
        lines.append(desc)
    metrics = getattr(entry, "metrics", None) or {}
    if metrics:
        lines.append("metrics: " + ", ".join(f"{_METRIC_NAMES.get(k, k)} {float(v):.3g}" for k, v in metrics.items()))
    else:
        lines.append("metrics: none recorded")
    px = getattr(entry, "pixel_size", None)
    if px:
        lines.append(f"pixel size: {' x '.join(f'{float(v):g}' for v in px)} {getattr(entry, 'unit', '') or ''}".rstrip())
    data = tuple(getattr(entry, "training_data", ()) or ())
    if data:
        more = f" and {len(data) - 3} more" if len(data) > 3 else ""
        lines.append("trained on: " + ", ".join(str(d) for d in data[:3]) + more)
    if getattr(entry, "parent", None):
        lines.append(f"fine-tuned from: {entry.parent}")
    lines.append(f"file: {entry.model_file}")
    return "\n".join(lines)


def image_fit(layer: Any) -> tuple[int | None, int | None]:
    """(channels, spatial dims) of an Image layer, read without opening its file; (None, None) if unknown."""
    if layer is None:
        return None, None
    from napari_medseg._napari.layerdata import from_layer

    try:
        src = from_layer(layer, reopen=False)
        return int(src.n_channels), int(src.spatial_dims)
    except Exception:  # a hint for the list only
        log.debug("no channels / dims for %r", getattr(layer, "name", layer), exc_info=True)
        return None, None


# -- Qt ------------------------------------------------------------------------------------------------------
def model_path_row(placeholder: str, parent: QWidget, *, title: str = "Model file",
                   file_filter: str = MODEL_FILTER) -> tuple[QHBoxLayout, QLineEdit]:
    """A model path field with a "…" button: a click picks a file (``file_filter``), its menu offers
    "Package folder…" too (a bioimage.io package unpacked). Returns (row, field)."""
    row = QHBoxLayout()
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    edit.setToolTip("A checkpoint (.pt), a bioimage.io package (.zip or folder), an .onnx or TorchScript .ts "
                    "file, or the name of a model in the library.")

    def pick_file() -> None:
        p, _ = QFileDialog.getOpenFileName(parent, title, str(Path(edit.text()).parent) if edit.text() else "",
                                           file_filter)
        if p:
            edit.setText(p)

    def pick_folder() -> None:
        p = QFileDialog.getExistingDirectory(parent, f"{title}: bioimage.io package folder")
        if p:
            edit.setText(p)

    pick = QPushButton("…")  # like the other path fields' buttons; its menu: a file or a package folder
    pick.setMaximumWidth(28)
    pick.setStyleSheet("QPushButton::menu-indicator { image: none; width: 0px; }")
    pick.setToolTip("Pick a model file, or a bioimage.io package folder")
    menu = QMenu(pick)
    menu.addAction("Model file…", pick_file)
    menu.addAction("Package folder…", pick_folder)
    pick.setMenu(menu)
    row.addWidget(edit, 1)
    row.addWidget(pick)
    edit.pick_file, edit.pick_folder = pick_file, pick_folder  # for tests and keyboard users' shortcuts
    return row, edit


class _ShortCombo(QComboBox):
    """A combo box whose closed face shows the chosen item's short text (``_SHORT``: the model's name),
    elided to its width, while its list shows each item's whole text (the summary)."""

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        painter = QStylePainter(self)
        opt = QStyleOptionComboBox()
        self.initStyleOption(opt)
        short = self.currentData(_SHORT)
        text = short if isinstance(short, str) else opt.currentText
        room = self.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                           QStyle.SubControl.SC_ComboBoxEditField, self).width()
        opt.currentText = self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, max(room, 10))
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, opt)
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, opt)


class ModelLibraryCombo(QWidget):
    """The library's models that fit the image, and a refresh button; ``chosen`` carries the model file."""

    chosen = Signal(str)

    def __init__(self, keep: Callable[[Any], bool] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._keep = keep
        self._fit: tuple[int | None, int | None] = (None, None)
        self.entries: list[Any] = []
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combo = _ShortCombo()
        # the closed combo shows what fits (a summary would widen the dock), its list the whole summaries
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(8)
        self.combo.currentIndexChanged.connect(self._changed)
        self.refresh_btn = QToolButton()
        self.refresh_btn.setText("↻")
        self.refresh_btn.setToolTip("Read the model library again (a model trained or added since)")
        self.refresh_btn.clicked.connect(self.refresh)
        row.addWidget(self.combo, 1)
        row.addWidget(self.refresh_btn)
        self.refresh()

    def set_fit(self, channels: int | None, spatial_dims: int | None) -> None:
        """List the models for an image of ``channels`` and ``spatial_dims`` (None: any)."""
        if (channels, spatial_dims) != self._fit:
            self._fit = (channels, spatial_dims)
            self.refresh()

    def refresh(self) -> None:
        """Read the library again; the chosen model stays chosen while it is listed."""
        channels, dims = self._fit
        try:
            entries = list_entries(channels=channels, spatial_dims=dims)
        except Exception as e:  # an unreadable library folder: the paths still work
            log.warning("could not read the model library: %s", e)
            entries, failed = [], f"library unreadable: {e}"
        else:
            failed = ""
        entries = [e for e in entries if self._keep is None or self._keep(e)]
        current = self.current_name()
        self.entries = entries
        self.combo.blockSignals(True)
        try:
            self.combo.clear()
            n, fitted = len(entries), channels is not None or dims is not None
            what = ("fits this image" if n == 1 else "fit this image") if fitted else "in the library"
            head = failed or (f"{n} model{'' if n == 1 else 's'} {what}: choose…" if entries
                              else f"no model {'fits this image' if fitted else 'in the library'}")
            self.combo.addItem(head, None)
            self.combo.setItemData(0, failed or (f"choose… ({len(entries)} fit)" if entries else head), _SHORT)
            for e in entries:
                self.combo.addItem(e.summary(), e.name)
                self.combo.setItemData(self.combo.count() - 1, entry_tooltip(e), Qt.ItemDataRole.ToolTipRole)
                self.combo.setItemData(self.combo.count() - 1, e.name, _SHORT)
            at = self.combo.findData(current) if current else -1
            self.combo.setCurrentIndex(max(0, at))
        finally:
            self.combo.blockSignals(False)
        self.combo.setEnabled(bool(entries))
        self._show_tooltip()
        self._fit_popup()

    def current_name(self) -> str | None:
        return self.combo.currentData()

    def current_entry(self) -> Any:
        name = self.current_name()
        return next((e for e in self.entries if e.name == name), None)

    def choose(self, name: str) -> None:
        """Choose the model ``name`` as a user would (emits ``chosen``); MedsegError if it is not listed."""
        at = self.combo.findData(name)
        if at < 0:
            raise MedsegError(f"{name!r} is not among the library models listed for this image: "
                              f"{', '.join(e.name for e in self.entries) or 'none'}")
        if at == self.combo.currentIndex():
            self._changed(at)
        else:
            self.combo.setCurrentIndex(at)

    def names(self) -> Sequence[str]:
        return [e.name for e in self.entries]

    def _changed(self, _index: int) -> None:
        self._show_tooltip()
        entry = self.current_entry()
        if entry is not None:
            self.chosen.emit(str(entry.model_file))

    def _show_tooltip(self) -> None:
        entry = self.current_entry()
        self.combo.setToolTip(entry_tooltip(entry) if entry is not None else
                              "Models of the library (napari-medseg models list) that fit the image's channels "
                              "and dimensions; choosing one fills the model field.")

    def _fit_popup(self) -> None:
        """The list is as wide as its longest summary (within reason), whatever the combo's width."""
        fm = self.combo.fontMetrics()
        width = max((fm.horizontalAdvance(self.combo.itemText(i)) for i in range(self.combo.count())), default=0)
        self.combo.view().setMinimumWidth(min(width + 40, 640))

