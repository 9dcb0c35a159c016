"""Small Qt building blocks shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLineEdit, QPushButton

from napari_medseg._napari.napari_compat_layers import same_layer


def path_row(placeholder: str, on_pick: Callable[[], None]) -> tuple[QHBoxLayout, QLineEdit]:
    """A path field with a "…" button that calls ``on_pick`` (a file dialog); returns (row, field)."""
    row = QHBoxLayout()
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    pick = QPushButton("…")
    pick.setMaximumWidth(28)
    pick.clicked.connect(on_pick)
    row.addWidget(edit)
    row.addWidget(pick)
    return row, edit


def button_row(*buttons: tuple[str, Callable[[], None]], stretch: bool = False
               ) -> tuple[QHBoxLayout, list[QPushButton]]:
    """A row of push buttons, each ``(text, on_click)``, right-aligned with ``stretch``; returns (row, buttons)."""
    row = QHBoxLayout()
    if stretch:
        row.addStretch(1)
    made = []
    for text, on_click in buttons:
        b = QPushButton(text)
        b.clicked.connect(on_click)
        row.addWidget(b)
        made.append(b)
    return row, made


def fill_layer_combo(combo: QComboBox, layers: Iterable[Any], head: Sequence[str] = ()) -> None:
    """List the plain choices ``head``, then ``layers`` by name, in ``combo``; each layer's item holds the
    layer (``combo_layer``). What was chosen stays chosen: the same layer whatever its name now (a renamed
    layer keeps its place), else the same text."""
    layer, text = combo.currentData(), combo.currentText()
    combo.clear()
    combo.addItems(list(head))
    for lay in layers:
        combo.addItem(lay.name, lay)
    at = next((i for i in range(combo.count()) if same_layer(combo.itemData(i), layer)), -1)
    if at < 0 and text:
        at = combo.findText(text)
    if at >= 0:
        combo.setCurrentIndex(at)


def combo_layer(combo: QComboBox, layers: Any) -> Any:
    """The layer chosen in a ``fill_layer_combo`` combo box if it is still in ``layers``, else None."""
    layer = combo.currentData()
    return layer if layer is not None and layer in layers else None
