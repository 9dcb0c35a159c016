"""A dock widget's message area: its last messages kept in full, beside napari's notifications.

napari's toasts vanish after a few seconds and cut a message to one line; a message that explains why
training stopped or where the labels were saved must stay readable. Each widget holds a ``MessageLog``
and says things through it: the message goes to the area (newest first, with the time) and to napari's
notification system (the toast, the notification list, the terminal when napari is not shown).
"""

from __future__ import annotations

import time

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QPlainTextEdit

_SHOW = {"info": show_info, "warning": show_warning, "error": show_error}
_MARK = {"info": "", "warning": "warning: ", "error": "error: "}


class MessageLog(QPlainTextEdit):
    """Read-only, a few lines high, the newest message on top; keeps the last ``keep`` messages."""

    def __init__(self, keep: int = 50, lines: int = 4) -> None:
        super().__init__()
        self.setReadOnly(True)
        self.setPlaceholderText("Messages appear here.")
        self.setLineWrapMode(QPlainTextEdit.WidgetWidth)
        self.setMaximumHeight(self.fontMetrics().lineSpacing() * lines + 12)
        self.keep = keep
        self.entries: list[tuple[str, str, str]] = []  # (time, level, text), oldest first

    def say(self, level: str, text: str, *, toast: bool = True) -> None:
        """Keep ``text`` (``level``: info, warning or error) and, with ``toast``, notify napari too."""
        if level not in _SHOW:
            raise ValueError(f"unknown message level {level!r}; use one of {sorted(_SHOW)}")
        self.entries = [*self.entries, (time.strftime("%H:%M:%S"), level, text)][-self.keep:]
        self.setPlainText("\n".join(f"{at}  {_MARK[lv]}{t}" for at, lv, t in reversed(self.entries)))
        if toast:
            _SHOW[level](text)

    def info(self, text: str) -> None:
        self.say("info", text)

    def warning(self, text: str) -> None:
        self.say("warning", text)

    def error(self, text: str) -> None:
        self.say("error", text)
