"""The main window's running and image parts: Run/Stop, the queue, viewer and history
docks, mask painting, pasting images, dragging outputs out.

Part of :class:`~studio.app.window.MainWindow` (a mixin over its state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QMimeData, QPointF, Qt
from PySide6.QtGui import QImage, QKeySequence
from PySide6.QtWidgets import QApplication, QDialog

from studio.app.dragout import DragOut
from studio.app.history import HistoryBox, HistoryPanel
from studio.app.inpaint_action import inpaint_image, inpaint_node
from studio.app.queue_panel import QueuePanel
from studio.app.runner import Output, RunBridge
from studio.app.running import RunView
from studio.app.thumbnails import LoadImageThumbnails, read_image, resolve_image_path
from studio.app.viewer import ViewerPanel
from studio.errors import StudioError
from studio.fsutil import unique_path

if TYPE_CHECKING:
    from studio.engine.queue import Job


class RunWindowMixin:
    # -- construction -------------------------------------------------------------------------

    def _build_run_parts(self) -> None:
        self.bridge = RunBridge(self.registry, self.controller.settings, parent=self)
        self.runs = RunView(self.controller, self.scene, self.bridge)
        self.thumbnails = LoadImageThumbnails(self.controller, self.scene)
        self.dragout = DragOut(self.controller.settings)
        self.queue_panel = QueuePanel()
        self.viewer = ViewerPanel()
        self.history = HistoryPanel()
        self.queue_dock = self._dock(
            "Queue", "queueDock", self.queue_panel, Qt.DockWidgetArea.RightDockWidgetArea
        )
        self.viewer_dock = self._dock(
            "Viewer", "viewerDock", self.viewer, Qt.DockWidgetArea.RightDockWidgetArea
        )
        self.history_dock = self._dock(
            "History",
            "historyDock",
            HistoryBox(self.history),
            Qt.DockWidgetArea.BottomDockWidgetArea,
        )
        self.tabifyDockWidget(self.inspector_dock, self.queue_dock)
        self.inspector_dock.raise_()
        self.resizeDocks([self.history_dock], [170], Qt.Orientation.Vertical)

        qp = self.queue_panel
        qp.run_requested.connect(self.run_workflow)
        qp.stop_requested.connect(self.stop_run)
        qp.cancel_requested.connect(self.bridge.cancel)
        qp.clear_requested.connect(self.bridge.clear)
        self.runs.job_updated.connect(qp.update_job)
        self.runs.message.connect(self._show_message)
        self.runs.outputs_ready.connect(self._outputs_ready)
        self.runs.preview.connect(self.viewer.show_preview)
        self.history.chosen.connect(self.viewer.show_output)
        self.history.restore_requested.connect(self.restore_output)
        self.history.compare_requested.connect(self.viewer.compare_with)
        self.history.compare_many_requested.connect(self.compare_outputs)
        # The history lasts: earlier sessions' images, read back from the output folder.
        self.history.load_saved(self.controller.settings.output_path, self.registry)
        self.history.paint_requested.connect(self.paint_on_output)
        self.history.drag_requested.connect(lambda out: self.dragout.start(self.history, out))
        self.viewer.paint_requested.connect(self.paint_on_output)
        self.viewer.drag_requested.connect(lambda out: self.dragout.start(self.viewer, out))
        self.view.paint_mask_requested.connect(self.paint_mask)
        self.view.inpaint_requested.connect(lambda nid: inpaint_node(self, nid))
        self.view.image_activated.connect(self.show_node_image)
        self.view.image_dropped.connect(self.viewer.show_file)

    def _build_run_menu(self) -> None:
        run = self.menuBar().addMenu("&Run")
        self.run_action = self._action(
            run,
            "&Run",
            lambda: self.run_workflow(self.queue_panel.batch.value()),
            [QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")],
        )
        self.stop_action = self._action(
            run,
            "&Stop",
            self.stop_run,
            [QKeySequence("Ctrl+Alt+Return"), QKeySequence("Ctrl+Alt+Enter")],
        )
        self._action(run, "&Clear Queue", self.bridge.clear)
        self._action(run, "&Batch…", self.open_batch_dialog)
        view = self._view_menu
        view.addSeparator()
        for dock in (self.queue_dock, self.viewer_dock, self.history_dock):
            view.addAction(dock.toggleViewAction())

    # -- running ------------------------------------------------------------------------------

    def run_workflow(self, count: int = 1) -> list[Job]:
        jobs = self.runs.run(count)
        n = len(jobs)
        self.statusBar().showMessage(f"Queued {n} run{'s' if n != 1 else ''}", 3000)
        return jobs

    def open_batch_dialog(self) -> None:
        from studio.app.batch_panel import open_batch_dialog

        open_batch_dialog(self)

    def stop_run(self) -> None:
        self.runs.stop()
        self.statusBar().showMessage("Stopping at the next step…", 3000)

    def _outputs_ready(self, outputs: list[Output]) -> None:
        self.history.add_outputs(outputs)
        self.viewer.show_output(outputs[0])

    def compare_outputs(self, outputs: list[Output], captions: list[str]) -> None:
        self.viewer.compare_outputs(outputs, captions)
        self.viewer_dock.show()
        self.viewer_dock.raise_()

    def restore_output(self, output: Output) -> None:
        """Put back the workflow that made an output (one undoable step)."""
        if output.workflow is None:
            self.show_error("Cannot restore", f"{output.path or 'this image'} carries no workflow")
            return
        self.controller.replace_workflow(
            output.workflow, f"Restore the workflow of run {output.job_id}"
        )
        self.viewer.show_output(output)
        self.statusBar().showMessage(
            f"Restored the workflow of run {output.job_id} (Ctrl+Z puts yours back)", 6000
        )

    def show_node_image(self, node_id: str) -> None:
        for out in self.history.outputs:
            if out.node_id == node_id:
                self.viewer.show_output(out)
                self.viewer_dock.show()
                self.viewer_dock.raise_()
                return

    # -- masks --------------------------------------------------------------------------------

    def _mask_params(self, node_id: str) -> tuple[str, str] | None:
        spec = self.controller.spec(node_id)
        if spec is None:
            return None
        image = next((i.name for i in spec.params if i.file_kind == "image"), None)
        mask = next((i.name for i in spec.params if i.file_kind == "mask"), None)
        return (image, mask) if image and mask else None

    def paint_mask(self, node_id: str) -> bool:
        """Open the mask painter on a Load Image node's picture; True if a mask was stored."""
        from studio.app.mask_painter import MaskPainter, decode_mask

        names = self._mask_params(node_id)
        if names is None:
            return False
        node = self.controller.wf.get_node(node_id)
        name = str(node.params.get(names[0]) or "")
        if not name:
            self.show_error("Cannot paint a mask", "Choose an image for this node first.")
            return False
        try:
            settings = self.controller.settings
            image = read_image(resolve_image_path(name, settings.input_path, settings.output_path))
        except StudioError as exc:
            self.show_error("Cannot paint a mask", str(exc))
            return False
        if image.isNull():
            self.show_error("Cannot paint a mask", "Choose an image for this node first.")
            return False
        old = str(node.params.get(names[1]) or "")
        mask = decode_mask(old, (image.width(), image.height()))
        dialog = MaskPainter(image, mask, self, f"Paint mask · {self.controller.title(node_id)}")
        self.mask_painter = dialog  # tests reach the open dialog here
        try:
            if not self.exec_dialog(dialog):
                return False
            data = dialog.mask_data()
        finally:
            self.mask_painter = None
        if data == old:
            return False
        self.controller.set_params(node_id, {names[1]: data}, "Paint mask")
        return True

    def exec_dialog(self, dialog: QDialog) -> bool:
        """Run a modal dialog (a method so tests can drive it)."""
        return dialog.exec() == QDialog.DialogCode.Accepted

    def paint_on_output(self, output: Output) -> str | None:
        """Inpaint an output: its PNG goes to the input folder, the workflow becomes (or
        already is) an inpaint of it, and the mask painter opens on it."""
        from studio.app.dragout import png_bytes
        from studio.fsutil import atomic_write_bytes

        path = unique_path(
            self.controller.settings.input_path / "from_history", f"run{output.job_id}", ".png"
        )
        atomic_write_bytes(path, png_bytes(output, self.controller.settings, self.dragout.files))
        return inpaint_image(self, str(path))

    # -- images in ----------------------------------------------------------------------------

    def _add_image_node(self, path: str, at: QPointF | None = None) -> str | None:
        if at is None:
            at = self.view.mapToScene(self.view.viewport().rect().center())
        node_id = self.view.drop_image(path, at)
        if node_id:
            self.scene.select_nodes([node_id])
        return node_id

    def paste_image(self, md: QMimeData) -> bool:
        """Paste an image (pixels or image files) as for a drop: onto the one selected
        image-loading node, else as new Load Image nodes. False when there is none."""
        from studio.app.canvas.view_menus import IMAGE_SUFFIXES

        files = [
            u.toLocalFile() for u in md.urls() if u.toLocalFile().lower().endswith(IMAGE_SUFFIXES)
        ]
        if not files and md.hasImage():
            image = md.imageData()
            if not isinstance(image, QImage) or image.isNull():
                return False
            path = unique_path(self.controller.settings.input_path / "pasted", "clipboard", ".png")
            if not image.save(str(path), "PNG"):
                self.show_error("Cannot paste the image", f"could not write {path}")
                return False
            files = [str(path)]
        if not files:
            return False
        selected = [
            nid
            for nid in self.scene.selected_node_ids()
            if self.view.image_param(self.controller.wf.get_node(nid).type)
        ]
        if len(selected) == 1 and len(files) == 1:
            item = self.scene.nodes[selected[0]]
            self.view.drop_image(files[0], item.sceneBoundingRect().center())
            return True
        at = self.view.last_scene_pos
        view_rect = self.view.mapToScene(self.view.viewport().rect()).boundingRect()
        if not view_rect.contains(at):
            at = view_rect.center()
        ids = []
        for i, f in enumerate(files):
            nid = self.view.drop_image(f, QPointF(at.x() + 260 * i, at.y()), onto=False)
            if nid:
                ids.append(nid)
        self.scene.select_nodes(ids)
        return bool(ids)

    def clipboard_has_image(self) -> bool:
        md = QApplication.clipboard().mimeData()
        return md is not None and (md.hasImage() or md.hasUrls())

    # -- teardown -----------------------------------------------------------------------------

    def shutdown_runs(self) -> None:
        self.bridge.shutdown()
        self.dragout.cleanup()
