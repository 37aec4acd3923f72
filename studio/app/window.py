"""The main window: canvas in the middle, library and inspector docks, files, recovery."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QMimeData, QPointF, QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QWidget,
)

from studio.app.binding import follow
from studio.app.canvas.scene import GraphScene
from studio.app.canvas.view import GraphView
from studio.app.controller import CLIPBOARD_MIME, Controller
from studio.app.inspector import Inspector
from studio.app.library import LibraryPanel
from studio.app.recovery import RecoveryFile, RecoveryStore
from studio.app.window_run import RunWindowMixin
from studio.errors import StudioError
from studio.graph.fileformat import open_any, save_workflow
from studio.graph.importers.a1111 import (
    ModelFinder,
    import_infotext,
    looks_like_infotext,
    model_finder,
)
from studio.graph.registry import Registry
from studio.graph.workflow import Workflow
from studio.settings import Settings as StudioSettings

ORG_NAME = "Studio"
APP_NAME = "Studio"
AUTOSAVE_MS = 4000
MAX_RECENT = 10
FILE_FILTER = "Studio workflows (*.json);;All files (*)"


class UnsavedAnswer(StrEnum):
    """What to do with unsaved changes before the document goes."""

    SAVE = "save"
    DISCARD = "discard"
    CANCEL = "cancel"


def app_settings() -> QSettings:
    return QSettings(QSettings.defaultFormat(), QSettings.Scope.UserScope, ORG_NAME, APP_NAME)


class MainWindow(RunWindowMixin, QMainWindow):
    def __init__(
        self,
        registry: Registry,
        workflow: Workflow | None = None,
        *,
        settings: QSettings | None = None,
        studio_settings: StudioSettings | None = None,
        recovery: RecoveryStore | None = None,
        autosave: bool = True,
    ):
        super().__init__()
        self.registry = registry
        self.settings = settings or app_settings()
        self.recovery = recovery or RecoveryStore()
        self.path: Path | None = None
        self.interactive = True  # False: report errors on stderr, never block on a dialog
        self._restored_dirty = False  # a restored recovery file is unsaved work
        self._model_finder: ModelFinder | None = None  # remembers hashes between pastes
        self._changes = 0
        self._autosaved_at = -1
        wf = workflow or Workflow(registry)
        self.controller = Controller(wf, registry, self, settings=studio_settings)
        self.scene = GraphScene(self.controller)
        self.view = GraphView(self.scene, self)
        self.setCentralWidget(self.view)
        self.setAcceptDrops(True)
        self.setDockOptions(
            QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks
        )
        self._unsubscribe = follow(wf, self, self._count_change)

        self.library = LibraryPanel(registry)
        self.library.add_requested.connect(self.add_node_at_center)
        self.library_dock = self._dock(
            "Library", "libraryDock", self.library, Qt.DockWidgetArea.LeftDockWidgetArea
        )
        self.inspector = Inspector(self.controller, self.scene)
        self.inspector_dock = self._dock(
            "Inspector", "inspectorDock", self.inspector, Qt.DockWidgetArea.RightDockWidgetArea
        )
        self.inspector.paint_mask_requested.connect(self.paint_mask)
        self._build_run_parts()
        self.resizeDocks(
            [self.library_dock, self.inspector_dock], [230, 300], Qt.Orientation.Horizontal
        )

        self.problems_label = QLabel()
        self.zoom_label = QLabel()
        self.statusBar().addPermanentWidget(self.problems_label)
        self.statusBar().addPermanentWidget(self.zoom_label)
        self.controller.message.connect(self._show_message)
        self.controller.problems_changed.connect(self._show_problem_count)
        self.view.zoom_changed.connect(self._show_zoom)
        self.view.open_file_requested.connect(self.open_path_asking)
        self.controller.undo_stack.cleanChanged.connect(self._update_title)
        self.controller.undo_stack.indexChanged.connect(self._update_title)

        self._build_actions()
        self._restore_layout()
        self._update_title()
        self.zoom_label.setText("100%")
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setInterval(AUTOSAVE_MS)
        self._autosave_timer.timeout.connect(self.autosave_now)
        if autosave:
            self._autosave_timer.start()
        self.controller._validate_timer.start()

    # -- construction -----------------------------------------------------------------------

    def _dock(self, title: str, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        self.addDockWidget(area, dock)
        return dock

    def _action(self, menu, text: str, slot, shortcut: Any = None) -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            if isinstance(shortcut, list):
                act.setShortcuts(shortcut)
            else:
                act.setShortcut(shortcut)
        act.triggered.connect(lambda _checked=False: slot())
        menu.addAction(act)
        return act

    def _build_actions(self) -> None:
        bar = self.menuBar()
        S = QKeySequence.StandardKey
        file = bar.addMenu("&File")
        self._action(file, "&New", self.new_file, S.New)
        self._action(file, "&Open…", self.open_dialog, S.Open)
        self.recent_menu = file.addMenu("Open &Recent")
        self._fill_recent()
        file.addSeparator()
        self._action(file, "&Save", self.save, S.Save)
        self._action(file, "Save &As…", self.save_as, QKeySequence("Ctrl+Shift+S"))
        self._action(file, "&Export as ComfyUI API…", self.export_comfyui_api)
        file.addSeparator()
        self._action(file, "&Quit", self.close, S.Quit)

        edit = bar.addMenu("&Edit")
        stack = self.controller.undo_stack
        undo = stack.createUndoAction(self, "Undo")
        undo.setShortcuts([QKeySequence(S.Undo)])
        redo = stack.createRedoAction(self, "Redo")
        redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        edit.addAction(undo)
        edit.addAction(redo)
        self.undo_action, self.redo_action = undo, redo
        edit.addSeparator()
        self._action(edit, "Cu&t", self.cut, S.Cut)
        self._action(edit, "&Copy", self.copy, S.Copy)
        self._action(edit, "&Paste", lambda: self.paste(keep_links=False), S.Paste)
        self._action(
            edit,
            "Paste with &Links",
            lambda: self.paste(keep_links=True),
            QKeySequence("Ctrl+Shift+V"),
        )
        self._action(edit, "&Duplicate", self.duplicate, QKeySequence("Ctrl+D"))
        self._action(
            edit,
            "De&lete",
            self.delete_selection,
            [QKeySequence(Qt.Key.Key_Delete), QKeySequence(Qt.Key.Key_Backspace)],
        )
        self._action(edit, "Select &All", self.select_all, S.SelectAll)
        edit.addSeparator()
        self._action(
            edit,
            "&Mute",
            lambda: self.controller.toggle_mute(self.scene.selected_node_ids()),
            QKeySequence("Ctrl+M"),
        )
        self._action(
            edit,
            "&Bypass",
            lambda: self.controller.toggle_bypass(self.scene.selected_node_ids()),
            QKeySequence("Ctrl+B"),
        )
        self._action(
            edit,
            "C&ollapse",
            lambda: self.controller.toggle_collapse(self.scene.selected_node_ids()),
            QKeySequence("Ctrl+Shift+C"),
        )
        edit.addSeparator()
        self._action(
            edit, "Add &Frame", self.view.add_frame_around_selection, QKeySequence("Ctrl+G")
        )
        self._action(
            edit,
            "Add &Note",
            lambda: self.controller.add_note(
                (self.view.last_scene_pos.x(), self.view.last_scene_pos.y())
            ),
        )
        self._action(
            edit,
            "Add No&de…",
            lambda: self.view.open_search(self.view.last_scene_pos),
            QKeySequence("Ctrl+Space"),
        )

        view = self._view_menu = bar.addMenu("&View")
        self._action(view, "Fit &All\tHome", self.view.fit_items)
        self._action(view, "Fit &Selection\t.", self.view.fit_selection)
        self._action(view, "Actual Size", lambda: self.view.set_zoom(1.0), QKeySequence("Ctrl+0"))
        view.addSeparator()
        view.addAction(self.library_dock.toggleViewAction())
        view.addAction(self.inspector_dock.toggleViewAction())
        self._action(view, "Reset Panels", self.reset_layout)
        self._build_run_menu()
        from studio.app.app_menus import install_app_menus  # Preferences, Help (About, logs)

        install_app_menus(self)

    # -- title and state ------------------------------------------------------------------

    @property
    def is_dirty(self) -> bool:
        return self._restored_dirty or not self.controller.undo_stack.isClean()

    def _show_message(self, message: str) -> None:
        self.statusBar().showMessage(message, 6000)

    def _show_zoom(self, zoom: float) -> None:
        self.zoom_label.setText(f"{round(zoom * 100)}%")

    def _update_title(self, *_args: object) -> None:
        name = self.path.name if self.path else "Untitled"
        self.setWindowTitle(f"{name}[*] — Studio")
        self.setWindowModified(self.is_dirty)

    def _show_problem_count(self, problems: list) -> None:
        n = len(problems)
        nodes = len({p.node_id for p in problems})
        self.problems_label.setText(
            f"⚠ {n} problem{'s' if n != 1 else ''} on {nodes} node{'s' if nodes != 1 else ''}"
            if n
            else "✓ ready"
        )
        self.problems_label.setStyleSheet("color: #ff8a80;" if n else "color: #9ccc65;")

    def _count_change(self, _change: Any) -> None:
        self._changes += 1

    # -- documents ------------------------------------------------------------------------

    def set_document(self, wf: Workflow, path: Path | None, *, dirty: bool = False) -> None:
        self._unsubscribe()
        self.controller.set_workflow(wf)
        self._unsubscribe = follow(wf, self, self._count_change)
        self.path = path
        self._restored_dirty = dirty
        self.controller.undo_stack.setClean()
        self.recovery.clear()
        self._update_title()
        QTimer.singleShot(0, self.show_whole_workflow)
        self.show_whole_workflow()

    def show_whole_workflow(self) -> None:
        vp = self.controller.wf.layout.viewport
        if not (vp and self.view.apply_viewport_state(vp)):
            self.view.fit_items()

    def open_path(self, path: str | Path, *, as_template: bool = False) -> bool:
        """Open a workflow file (no question asked); False with a message when it cannot be read."""
        try:
            opened = open_any(path, self.registry, find_model=self.model_finder())
        except StudioError as exc:
            self.show_error("Cannot open the workflow", str(exc))
            return False
        wf = opened.workflow
        # A workflow from a PNG or another tool's file (ComfyUI, A1111) has no path:
        # saving asks where, so that file is never overwritten.
        self.set_document(wf, None if as_template else wf.path)
        if not as_template:
            self._add_recent(Path(path))
        if opened.imported:
            what = (
                f"{len(opened.report)} thing(s) did not map exactly (see the note)"
                if opened.report
                else "every node mapped"
            )
            self.statusBar().showMessage(f"Imported {Path(path).name}: {what}", 10000)
        return True

    def export_comfyui_api(self) -> bool:
        """Write the workflow as a ComfyUI prompt (API format) where the user says."""
        from studio.graph.importers.comfyui_export import write_comfyui_api

        start = str(self.path.with_suffix(".api.json")) if self.path else ""
        path, _ = QFileDialog.getSaveFileName(
            self, "Export as ComfyUI API", start, "ComfyUI prompt (*.json)"
        )
        if not path:
            return False
        try:
            write_comfyui_api(self.controller.wf, path, path=str(self.path or "the workflow"))
        except OSError as exc:
            self.show_error("Cannot export the workflow", f"{path}: {exc.strerror or exc}")
            return False
        except StudioError as exc:
            self.show_error("Cannot export the workflow", str(exc))
            return False
        self.statusBar().showMessage(f"Exported {path}", 4000)
        return True

    def model_finder(self) -> ModelFinder:
        """Finds the models A1111 parameters name, in this window's model folders (each
        file hashed at most once per window)."""
        files = self.controller.model_files
        finder = self._model_finder
        if finder is None or finder.model_files is not files:
            finder = self._model_finder = model_finder(files)
        finder.refresh()
        return finder

    def open_infotext(self, text: str, *, source: str) -> bool:
        """Open A1111/Forge generation parameters as a new, unsaved document (asking to save
        the current one first); False when cancelled or when the text cannot be read."""
        if not self.maybe_save():
            return False
        files = self.controller.model_files
        finder = self.model_finder()
        # A renamed model is found by hashing model files (each once per window): that can
        # take a while.
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            result = import_infotext(
                text,
                self.registry,
                source=source,
                find_model=finder,
                embedding_names=files.list("embeddings"),
            )
        except StudioError as exc:
            QApplication.restoreOverrideCursor()
            self.show_error("Cannot import the generation parameters", str(exc))
            return False
        except BaseException:
            QApplication.restoreOverrideCursor()
            raise
        QApplication.restoreOverrideCursor()
        self.set_document(result.workflow, None, dirty=True)
        n = len(result.report)
        self.statusBar().showMessage(
            "Imported A1111 generation parameters"
            + (f"; {n} difference{'s' if n != 1 else ''}: see the note" if n else ""),
            8000,
        )
        return True

    def open_path_asking(self, path: str) -> None:
        if self.maybe_save():
            self.open_path(path)

    def open_dialog(self) -> None:
        if not self.maybe_save():
            return
        start = str(self.path.parent) if self.path else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open workflow", start, FILE_FILTER)
        if path:
            self.open_path(path)

    def new_file(self) -> None:
        if self.maybe_save():
            self.set_document(Workflow(self.registry), None)

    def save(self) -> bool:
        if self.path is None:
            return self.save_as()
        return self.save_to(self.path)

    def save_as(self) -> bool:
        path = self.ask_save_path()
        if not path:
            return False
        if not path.lower().endswith(".json"):
            path += ".json"
        return self.save_to(Path(path))

    def save_to(self, path: Path) -> bool:
        wf = self.controller.wf
        wf.set_viewport(self.view.viewport_state())
        try:
            save_workflow(wf, path)
        except OSError as exc:
            self.show_error("Cannot save the workflow", f"{path}: {exc.strerror or exc}")
            return False
        except StudioError as exc:  # a value no file can hold; the document stays unsaved
            self.show_error("Cannot save the workflow", str(exc))
            return False
        wf.path = path
        self.path = path
        self._restored_dirty = False
        self.controller.undo_stack.setClean()
        self.recovery.clear()
        self._add_recent(path)
        self._update_title()
        self.statusBar().showMessage(f"Saved {path}", 4000)
        return True

    def maybe_save(self) -> bool:
        """True when it is fine to drop the current document (saved, discarded or clean)."""
        if not self.is_dirty:
            return True
        answer = UnsavedAnswer(self.ask_unsaved())
        if answer is UnsavedAnswer.SAVE:
            return self.save()
        return answer is UnsavedAnswer.DISCARD

    # Dialogs are methods so tests can answer them.
    def ask_unsaved(self) -> UnsavedAnswer:
        name = self.path.name if self.path else "Untitled"
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "Unsaved changes",
            f"{name} has changes that are not saved.",
            QMessageBox.StandardButton.Save
            | QMessageBox.StandardButton.Discard
            | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.setInformativeText("Save them before closing?")
        result = box.exec()
        return {
            QMessageBox.StandardButton.Save: UnsavedAnswer.SAVE,
            QMessageBox.StandardButton.Discard: UnsavedAnswer.DISCARD,
        }.get(QMessageBox.StandardButton(result), UnsavedAnswer.CANCEL)

    def ask_save_path(self) -> str:
        start = str(self.path) if self.path else "workflow.json"
        path, _ = QFileDialog.getSaveFileName(self, "Save workflow", start, FILE_FILTER)
        return path

    def ask_restore(self, found: RecoveryFile) -> bool:
        answer = QMessageBox.question(
            self,
            "Restore unsaved work?",
            f"Studio closed without saving {found.describe()}.\n\nRestore it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes,
        )
        return answer == QMessageBox.StandardButton.Yes

    def show_error(self, title: str, message: str) -> None:
        self.statusBar().showMessage(message, 10000)
        if self.interactive:
            QMessageBox.warning(self, title, message)
        else:
            print(f"studio: {message}", file=sys.stderr)

    # -- recovery -------------------------------------------------------------------------

    def autosave_now(self) -> None:
        if not self.is_dirty:
            self.recovery.clear()
            return
        if self._autosaved_at == self._changes:
            return
        try:
            self.recovery.write(self.controller.wf, self.path)
            self._autosaved_at = self._changes
        except (OSError, ValueError) as exc:  # ValueError: a value JSON cannot hold
            self.statusBar().showMessage(f"could not write the recovery file: {exc}", 8000)

    def offer_recovery(self) -> bool:
        """Offer the newest recovery file a crashed session left; True if restored."""
        for found in self.recovery.pending():
            if self.ask_restore(found):
                try:
                    wf = found.load(self.registry)
                except (StudioError, OSError, ValueError, KeyError) as exc:
                    self.show_error("Cannot restore", str(exc))
                    found.discard()
                    continue
                self.set_document(wf, wf.path, dirty=True)
                self._autosaved_at = -1
                self.autosave_now()  # our own recovery file now holds it
                found.discard()
                return True
            found.discard()
        return False

    # -- editing --------------------------------------------------------------------------

    def add_node_at_center(self, type_id: str) -> None:
        c = self.view.mapToScene(self.view.viewport().rect().center())
        node_id = self.controller.add_node(type_id, (c.x() - 110, c.y() - 40))
        if node_id:
            self.scene.select_nodes([node_id])

    def select_all(self) -> None:
        for item in (
            *self.scene.nodes.values(),
            *self.scene.frames.values(),
            *self.scene.notes.values(),
        ):
            item.setSelected(True)

    def _selected(self) -> tuple[list[str], list[str], list[str], list[str]]:
        from studio.app.canvas.decor import FrameItem, NoteItem
        from studio.app.canvas.link_item import LinkItem

        items = self.scene.selectedItems()
        return (
            self.scene.selected_node_ids(),
            [i.link_id for i in items if isinstance(i, LinkItem)],
            [i.frame_id for i in items if isinstance(i, FrameItem)],
            [i.note_id for i in items if isinstance(i, NoteItem)],
        )

    def delete_selection(self) -> None:
        from studio.app.canvas.link_item import RerouteItem

        nodes, links, frames, notes = self._selected()
        reroutes = [i for i in self.scene.selectedItems() if isinstance(i, RerouteItem)]
        if nodes or links or frames or notes:
            self.controller.delete(nodes, links, frames, notes)
        elif reroutes:
            r = reroutes[0]
            self.controller.remove_reroute(r.link_item.link_id, r.index)

    def copy(self) -> bool:
        ids = self.scene.selected_node_ids()
        if not ids:
            return False
        data = self.controller.copy_data(ids)
        md = QMimeData()
        text = json.dumps(data)
        md.setData(CLIPBOARD_MIME, QByteArray(text.encode("utf-8")))
        md.setText(text)
        QApplication.clipboard().setMimeData(md)
        return True

    def cut(self) -> None:
        if self.copy():
            self.controller.delete(self.scene.selected_node_ids())

    def paste(self, *, keep_links: bool) -> list[str]:
        md = QApplication.clipboard().mimeData()
        if md is None:
            return []
        if not md.hasFormat(CLIPBOARD_MIME) and md.hasText() and looks_like_infotext(md.text()):
            self.open_infotext(md.text(), source="the clipboard")
            return []
        if not md.hasFormat(CLIPBOARD_MIME) and (md.hasImage() or md.hasUrls()):
            self.paste_image(md)
            return []
        raw = (
            bytes(md.data(CLIPBOARD_MIME).data()).decode("utf-8")
            if md.hasFormat(CLIPBOARD_MIME)
            else md.text()
        )
        try:
            data = json.loads(raw)
        except ValueError:
            return []
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            return []
        at: QPointF | None = self.view.last_scene_pos
        view_rect = self.view.mapToScene(self.view.viewport().rect()).boundingRect()
        if at is None or not view_rect.contains(at):
            at = view_rect.center()
        ids = self.controller.paste(data, (at.x(), at.y()), keep_links=keep_links)
        self.scene.select_nodes(ids)
        return ids

    def duplicate(self) -> None:
        ids = self.controller.duplicate(self.scene.selected_node_ids())
        self.scene.select_nodes(ids)

    # -- recent files and layout ----------------------------------------------------------

    def recent_files(self) -> list[str]:
        value = self.settings.value("recentFiles", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _add_recent(self, path: Path) -> None:
        p = str(path.resolve())
        files = [p, *(f for f in self.recent_files() if f != p)][:MAX_RECENT]
        self.settings.setValue("recentFiles", files)
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        for f in files:
            self.recent_menu.addAction(
                Path(f).name, lambda p=f: self.open_path_asking(p)
            ).setToolTip(f)
        if not files:
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _restore_layout(self) -> None:
        geom = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geom is not None:
            self.restoreGeometry(geom)
        else:
            self.resize(1440, 880)
        if state is not None:
            self.restoreState(state)

    def save_layout(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.sync()

    def reset_layout(self) -> None:
        for dock, area in (
            (self.library_dock, Qt.DockWidgetArea.LeftDockWidgetArea),
            (self.inspector_dock, Qt.DockWidgetArea.RightDockWidgetArea),
        ):
            dock.setFloating(False)
            self.addDockWidget(area, dock)
            dock.show()

    # -- window events --------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.maybe_save():
            event.ignore()
            return
        self.save_layout()
        self._autosave_timer.stop()
        self.shutdown_runs()
        self.recovery.close()
        event.accept()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        from studio.app.canvas.view_menus import IMAGE_SUFFIXES

        suffixes = (".json", *IMAGE_SUFFIXES)
        if any(u.toLocalFile().lower().endswith(suffixes) for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        from studio.app.canvas.view_menus import RECIPE_SUFFIXES, carries_workflow

        for url in event.mimeData().urls():
            path = url.toLocalFile()
            lower = path.lower()
            if lower.endswith(".json") or (
                lower.endswith(RECIPE_SUFFIXES) and carries_workflow(path)
            ):
                self.open_path_asking(path)
                event.acceptProposedAction()
                return
        if self.paste_image(event.mimeData()):
            event.acceptProposedAction()
