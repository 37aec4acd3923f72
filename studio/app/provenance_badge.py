"""The viewer's provenance badge: signed / watermarked / none / tampered, for the image
shown, with the full report on click.

The check (studio.provenance.reading.verify: the C2PA manifest and the watermark) reads
the file on a worker thread; its answer comes back as a signal, and an answer for an
image no longer shown is dropped.
"""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QMessageBox, QToolButton, QWidget

#: Badge text and colour by report status.
LOOK = {
    "signed": ("Signed", "#3fa36b"),
    "watermarked": ("Watermarked", "#c9a227"),
    "none": ("No provenance", "#8a8f98"),
    "tampered": ("Tampered", "#d0473d"),
    "invalid": ("Invalid manifest", "#d0473d"),
    "unreadable": ("Unreadable", "#d0473d"),
}


class _Relay(QObject):
    done = Signal(int, object)  # token, Report (emitted from the worker: queued to the GUI)


class ProvenanceBadge(QToolButton):
    """Shows the provenance of one image file; click for the details."""

    checked = Signal(object)  # the Report, once known

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.report: Any = None
        self._token = 0
        self._relay = _Relay(self)
        self._relay.done.connect(self._finished)
        self.clicked.connect(self.show_details)
        self.setToolTip("Provenance of the image shown: C2PA manifest and watermark")
        self.clear()

    def clear(self, text: str = "", tip: str = "") -> None:
        self._token += 1
        self.report = None
        self.setText(text)
        self.setVisible(bool(text))
        self.setStyleSheet("")
        if tip:
            self.setToolTip(tip)

    def check(self, path: str) -> None:
        """Verify ``path`` in the background; the badge says "Checking…" until then."""
        self.clear("Checking…", "Reading the image's C2PA manifest and watermark")
        token = self._token

        def work() -> None:
            from studio.provenance.reading import verify

            try:
                report = verify(path)
            except Exception as exc:  # the badge never takes the app down
                from studio.provenance.reading import Report

                report = Report(str(path), error=f"cannot check: {exc}")
            self._relay.done.emit(token, report)

        threading.Thread(target=work, name="provenance-check", daemon=True).start()

    def _finished(self, token: int, report: Any) -> None:
        if token != self._token:
            return  # another image is shown by now
        self.report = report
        text, colour = LOOK.get(report.status, (report.status, "#8a8f98"))
        self.setText(text)
        self.setToolTip(f"{report.summary()} — click for details")
        self.setStyleSheet(f"QToolButton {{ color: {colour}; font-weight: 600; }}")
        self.setVisible(True)
        self.checked.emit(report)

    def details(self) -> str:
        if self.report is None:
            return self.toolTip()
        return "\n".join(self.report.lines())

    def show_details(self) -> None:
        box = QMessageBox(self.window())
        box.setWindowTitle("Provenance")
        box.setText(self.report.summary() if self.report is not None else self.text())
        box.setDetailedText(self.details())
        box.setInformativeText(
            "\n".join(self.report.lines()[1:8]) if self.report is not None else ""
        )
        box.open()  # not modal to the app's event loop: tests and the app keep running
        self._box = box
