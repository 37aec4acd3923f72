"""Taking an output out of the app: a PNG file that carries the workflow that made it.

The file is written to a folder of this session (removed when the app quits) and
offered as a file URL, which file managers and most applications accept; the pixels
go along too, for applications that take images and not files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from PySide6.QtCore import QMimeData, Qt, QUrl
from PySide6.QtGui import QDrag, QPixmap
from PySide6.QtWidgets import QWidget

from studio.app.runner import Output
from studio.fsutil import atomic_write_bytes

THUMB = 96


def png_bytes(output: Output, settings: Any = None, files: Any = None) -> bytes:
    """The output as PNG bytes, as Save Image writes them: ``studio_workflow`` and A1111
    ``parameters`` text, a signed C2PA manifest and the watermark, as the settings ask
    (:mod:`studio.provenance`; the user's settings when none are given). An earlier
    session's image (from the history) is its own file, as it was saved."""
    if output.pil is None and output.path:
        return Path(output.path).read_bytes()
    from studio.provenance.outputs import output_bytes
    from studio.settings import Settings

    return output_bytes(
        output.pil,
        output.workflow,
        output.node_id,
        output.index,
        settings=settings or Settings.load(),
        files=files,
        title=f"studio_run{output.job_id}.png",
    )


class DragOut:
    """Writes outputs as PNG files in a session folder and starts drags with them."""

    def __init__(self, settings: Any = None) -> None:
        from studio.engine.fingerprint import FileFingerprinter

        self.settings = settings
        self.files = FileFingerprinter()  # hashes each model once, for the manifests
        self._dir: Path | None = None
        self._written: dict[int, Path] = {}

    def folder(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="studio-drag-"))
        return self._dir

    def file_for(self, output: Output) -> Path:
        key = id(output)
        path = self._written.get(key)
        if path is None or not path.is_file():
            safe = "".join(ch if ch.isalnum() else "_" for ch in output.node_title)[:40]
            n = f"_{output.index + 1}" if output.index else ""
            path = self.folder() / f"studio_run{output.job_id}_{safe}{n}.png"
            atomic_write_bytes(path, png_bytes(output, self.settings, self.files))
            self._written[key] = path
        return path

    def mime_data(self, output: Output) -> QMimeData:
        md = QMimeData()
        md.setUrls([QUrl.fromLocalFile(str(self.file_for(output)))])
        md.setImageData(output.image)
        return md

    def start(self, source: QWidget, output: Output) -> Qt.DropAction:
        drag = QDrag(source)
        drag.setMimeData(self.mime_data(output))
        thumb = QPixmap.fromImage(output.image).scaled(
            THUMB,
            THUMB,
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        drag.setPixmap(thumb)
        return drag.exec(Qt.DropAction.CopyAction)

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._written.clear()
