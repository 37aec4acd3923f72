"""Edit > Preferences (the application menu's Preferences on macOS).

The rows come from :mod:`studio.preferences` (one :class:`~studio.preferences.Pref` per
setting, grouped in sections); this module only knows how to build an editor for each kind
(folder, file, folders, choice, bytes, bool, int, float, text). Apply checks every value first
(a folder that does not exist, a budget larger than the machine) and shows each problem
under its row; nothing changes until all are right. Changes apply at once: the window,
its engine and the model lists share the one Settings object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from studio import preferences as prefs
from studio.settings import Settings

GB = 1024**3


def subfolders_found(root: str | Path) -> str:
    """What a models folder holds, by kind: "checkpoints: 3, loras (Lora): 12" (the
    folder names another tool uses are named), or why nothing is listed."""
    from studio.modelfiles import ALIASES
    from studio.settings import MODEL_FOLDERS

    p = Path(root).expanduser()
    if not str(root):
        return ""
    if not p.is_dir():
        return "not found"
    parts = []
    for kind in MODEL_FOLDERS:
        for name in (kind, *ALIASES.get(kind, ())):
            folder = p / name
            if folder.is_dir():
                try:
                    n = sum(1 for e in folder.iterdir() if not e.name.startswith("."))
                except OSError:
                    n = 0
                label = kind if name == kind else f"{kind} ({name})"
                parts.append(f"{label}: {n}")
    return ", ".join(parts) if parts else "no model subfolders (checkpoints, loras, ...) here"


class FolderEdit(QWidget):
    """A path with a Browse button (a folder, or a file with ``files``); shows the model
    subfolders found when asked to."""

    def __init__(
        self, pref: prefs.Pref, *, show_subfolders: bool, files: bool = False, parent=None
    ):
        super().__init__(parent)
        self.pref = pref
        self.files = files
        self.line = QLineEdit()
        if pref.placeholder is not None:
            self.line.setPlaceholderText(pref.placeholder())
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.line, 1)
        row.addWidget(browse)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(row)
        self.found = QLabel()
        self.found.setWordWrap(True)
        self.found.setVisible(show_subfolders)
        box.addWidget(self.found)
        if show_subfolders:
            self.line.textChanged.connect(self._update_found)

    def _update_found(self) -> None:
        text = self.line.text() or self.line.placeholderText()
        self.found.setText(subfolders_found(text) if text else "")

    def browse(self) -> None:
        start = self.line.text() or self.line.placeholderText() or str(Path.home())
        if self.files:
            chosen, _filter = QFileDialog.getOpenFileName(self, self.pref.label, start)
        else:
            chosen = QFileDialog.getExistingDirectory(self, self.pref.label, start)
        if chosen:
            self.line.setText(chosen)

    def value(self) -> str:
        return self.line.text().strip()

    def set_value(self, value: str) -> None:
        self.line.setText(value)
        self._update_found()


class FolderListEdit(QWidget):
    """A list of folders with Add… / Remove, and the subfolders found in the selected one."""

    def __init__(self, pref: prefs.Pref, parent=None):
        super().__init__(parent)
        self.pref = pref
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        add = QPushButton("Add…")
        add.clicked.connect(self.browse)
        remove = QPushButton("Remove")
        remove.clicked.connect(self.remove_selected)
        buttons = QVBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.list, 1)
        row.addLayout(buttons)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(row)
        self.found = QLabel()
        self.found.setWordWrap(True)
        box.addWidget(self.found)
        self.list.currentTextChanged.connect(
            lambda text: self.found.setText(f"{text}: {subfolders_found(text)}" if text else "")
        )

    def browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, self.pref.label, str(Path.home()))
        if chosen:
            self.add_folder(chosen)

    def add_folder(self, folder: str) -> None:
        self.list.addItem(folder)
        self.list.setCurrentRow(self.list.count() - 1)

    def remove_selected(self) -> None:
        row = self.list.currentRow()
        if row >= 0:
            self.list.takeItem(row)

    def value(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def set_value(self, value: list[str]) -> None:
        self.list.clear()
        for v in value:
            self.list.addItem(str(v))
        if value:
            self.list.setCurrentRow(0)


class _Simple(QWidget):
    """choice, bytes (shown in GB), bool, int, float and text editors behind one interface."""

    def __init__(self, pref: prefs.Pref, parent=None):
        super().__init__(parent)
        self.pref = pref
        box = QHBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        kind = pref.kind
        if kind == "choice":
            self.w = QComboBox()
            self.w.addItems(list(pref.choices))
        elif kind == "bytes":
            self.w = QDoubleSpinBox()
            self.w.setDecimals(1)
            self.w.setSingleStep(0.5)
            self.w.setSuffix(" GB")
            self.w.setRange(0.0, 1024.0 * 64)
        elif kind == "bool":
            self.w = QCheckBox()
        elif kind == "int":
            self.w = QSpinBox()
            self.w.setRange(int(pref.minimum), int(pref.maximum or 2**31 - 1))
        elif kind == "float":
            self.w = QDoubleSpinBox()
            self.w.setRange(pref.minimum, pref.maximum or 1e12)
        else:
            self.w = QLineEdit()
        box.addWidget(self.w, 1)

    def value(self) -> Any:
        w, kind = self.w, self.pref.kind
        if kind == "choice":
            return w.currentText()
        if kind == "bytes":
            return round(w.value() * GB)
        if kind == "bool":
            return w.isChecked()
        if kind in ("int", "float"):
            return w.value()
        return w.text()

    def set_value(self, value: Any) -> None:
        w, kind = self.w, self.pref.kind
        if kind == "choice":
            if w.findText(str(value)) < 0:
                w.addItem(str(value))
            w.setCurrentText(str(value))
        elif kind == "bytes":
            w.setValue(float(value) / GB)
        elif kind == "bool":
            w.setChecked(bool(value))
        elif kind in ("int", "float"):
            w.setValue(value)
        else:
            w.setText(str(value))


def make_editor(pref: prefs.Pref) -> QWidget:
    if pref.kind == "folder":
        return FolderEdit(pref, show_subfolders=pref.section == "Model folders")
    if pref.kind == "file":
        return FolderEdit(pref, show_subfolders=False, files=True)
    if pref.kind == "folders":
        return FolderListEdit(pref)
    return _Simple(pref)


class PreferencesDialog(QDialog):
    """The preferences of one window's ``settings``; Apply / OK save them to ``path``.

    Signal ``applied(list)`` carries the names of the settings that changed.
    """

    applied = Signal(list)

    def __init__(
        self,
        settings: Settings,
        *,
        engine_getter=None,
        path: Path | None = None,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.setObjectName("preferences")
        self.settings = settings
        self.path = path
        self._engine_getter = engine_getter
        self.editors: dict[str, QWidget] = {}
        self.errors: dict[str, QLabel] = {}
        self.tabs = QTabWidget()
        forms: dict[str, QFormLayout] = {}
        for pref in prefs.rows(settings):
            form = forms.get(pref.section)
            if form is None:
                page = QWidget()
                form = forms[pref.section] = QFormLayout(page)
                form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
                scroll = QScrollArea()
                scroll.setWidgetResizable(True)
                scroll.setWidget(page)
                self.tabs.addTab(scroll, pref.section)
            editor = make_editor(pref)
            editor.set_value(getattr(settings, pref.key))
            cell = QWidget()
            col = QVBoxLayout(cell)
            col.setContentsMargins(0, 0, 0, 6)
            col.addWidget(editor)
            if pref.help:
                help_label = QLabel(pref.help)
                help_label.setWordWrap(True)
                help_label.setStyleSheet("color: palette(mid);")
                col.addWidget(help_label)
            error = QLabel()
            error.setObjectName("error")
            error.setWordWrap(True)
            error.setStyleSheet("color: #e06c75;")
            error.hide()
            col.addWidget(error)
            form.addRow(pref.label, cell)
            self.editors[pref.key] = editor
            self.errors[pref.key] = error
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Cancel
            | QDialogButtonBox.StandardButton.Apply
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        buttons.button(QDialogButtonBox.StandardButton.Apply).clicked.connect(self.apply)
        self.buttons = buttons
        box = QVBoxLayout(self)
        box.addWidget(self.tabs)
        box.addWidget(buttons)
        self.resize(640, 460)

    def values(self) -> dict[str, Any]:
        return {key: editor.value() for key, editor in self.editors.items()}

    def set_value(self, key: str, value: Any) -> None:
        self.editors[key].set_value(value)

    def section_names(self) -> list[str]:
        return [self.tabs.tabText(i) for i in range(self.tabs.count())]

    def visible_problems(self) -> dict[str, str]:
        return {k: lab.text() for k, lab in self.errors.items() if not lab.isHidden()}

    def apply(self) -> bool:
        """Check everything; when all is right, apply and save. Returns whether it did."""
        values = self.values()
        problems = prefs.problems(values, self.settings)
        first_bad = None
        for key, label in self.errors.items():
            message = problems.get(key)
            label.setText(message or "")
            label.setVisible(bool(message))
            if message and first_bad is None:
                first_bad = key
        if first_bad is not None:
            self._show_row(first_bad)
            return False
        engine = self._engine_getter() if self._engine_getter is not None else None
        changed = prefs.apply(self.settings, values, engine)
        if changed:
            try:
                self.settings.save(self.path)
            except OSError as exc:
                label = self.errors[changed[0]]
                label.setText(f"applied, but the settings file cannot be written: {exc}")
                label.show()
            self.applied.emit(changed)
        return True

    def _show_row(self, key: str) -> None:
        editor = self.editors[key]
        for i in range(self.tabs.count()):
            page = self.tabs.widget(i)
            if page.isAncestorOf(editor):
                self.tabs.setCurrentIndex(i)
                break

    def accept(self) -> None:
        if self.apply():
            super().accept()


def open_preferences(window) -> PreferencesDialog:
    """Show the dialog for ``window`` (modeless: the canvas stays usable)."""
    dialog = getattr(window, "_preferences_dialog", None)
    if dialog is None:

        def engine():
            bridge = getattr(window, "bridge", None)
            queue = getattr(bridge, "_queue", None) if bridge is not None else None
            return getattr(queue, "engine", None)

        dialog = PreferencesDialog(window.controller.settings, engine_getter=engine, parent=window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        dialog.applied.connect(lambda changed: _after_apply(window, changed))
        window._preferences_dialog = dialog
    else:  # show what is in force now, not what was typed and cancelled
        for key, editor in dialog.editors.items():
            editor.set_value(getattr(dialog.settings, key))
        for label in dialog.errors.values():
            label.hide()
    dialog.show()
    dialog.raise_()
    return dialog


def _after_apply(window, changed: list[str]) -> None:
    window.statusBar().showMessage("Preferences applied: " + ", ".join(changed), 5000)
    # Model lists and the problems shown depend on the folders: check the graph again.
    controller = window.controller
    for hook in ("validate_now", "refresh"):
        fn = getattr(controller, hook, None)
        if callable(fn):
            fn()
            break
