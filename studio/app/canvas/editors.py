"""Editors opened over the canvas on demand (the canvas itself holds no widgets)."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, QRect, Qt
from PySide6.QtGui import QFont, QKeyEvent
from PySide6.QtWidgets import QLineEdit, QPlainTextEdit, QWidget

from studio.app import theme


class InlineEditor(QObject):
    """A line or multi-line editor placed over a painted field; commits once.

    Enter (Ctrl+Enter in a multi-line editor) or clicking elsewhere commits; Esc cancels.
    """

    def __init__(
        self,
        parent: QWidget,
        rect: QRect,
        text: str,
        on_commit: Callable[[str], None],
        *,
        multiline: bool = False,
        zoom: float = 1.0,
    ):
        super().__init__(parent)
        self.on_commit = on_commit
        self.closed = False
        self.multiline = multiline
        widget: QLineEdit | QPlainTextEdit
        if multiline:
            widget = QPlainTextEdit(parent)
            widget.setPlainText(text)
            widget.selectAll()
        else:
            widget = QLineEdit(parent)
            widget.setText(text)
            widget.selectAll()
            widget.returnPressed.connect(self.commit)
        font = QFont(theme.ui_font())
        font.setPixelSize(max(9, round(12 * zoom)))
        widget.setFont(font)
        widget.setStyleSheet(
            f"background: {theme.FIELD_BG}; border: 1px solid {theme.ACCENT};"
            " border-radius: 4px; padding: 0 4px;"
        )
        widget.setGeometry(rect)
        self.widget = widget
        widget.installEventFilter(self)
        widget.show()
        widget.setFocus(Qt.FocusReason.MouseFocusReason)

    def text(self) -> str:
        w = self.widget
        return w.toPlainText() if isinstance(w, QPlainTextEdit) else w.text()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self.widget:
            if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
                if event.key() == Qt.Key.Key_Escape:
                    self.cancel()
                    return True
                if (
                    self.multiline
                    and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                    and (event.modifiers() & Qt.KeyboardModifier.ControlModifier)
                ):
                    self.commit()
                    return True
            elif event.type() == QEvent.Type.FocusOut:
                self.commit()
        return False

    def commit(self) -> None:
        if self.closed:
            return
        text = self.text()
        self._close()
        self.on_commit(text)

    def cancel(self) -> None:
        if not self.closed:
            self._close()

    def _close(self) -> None:
        self.closed = True
        w = self.widget
        w.removeEventFilter(self)
        w.hide()
        parent = w.parentWidget()
        w.deleteLater()
        if parent is not None:
            parent.setFocus()


def parse_number(text: str, is_int: bool) -> float | int | None:
    """A number typed by the artist, or None when the text is not one."""
    text = text.strip().replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return round(value) if is_int else value
