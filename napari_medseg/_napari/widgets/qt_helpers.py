"""Small Qt building blocks shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton


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
