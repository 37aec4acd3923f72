"""File fingerprints for the cache signature of nodes that read files.

A file is known by (path, size, mtime); its content hash is computed once per
such identity and remembered, so an unchanged file is not hashed again, and a
file that was touched or copied without changing keeps its cached results.

Only regular files are read: a device (``/dev/zero``), a pipe or a socket named by a
workflow is refused before a byte is read, and a folder is hashed through the
regular files inside it, without following links to other folders.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from studio.fsutil import regular_file

#: Content is read in pieces of this size; ``check`` (the run's interrupt) is called
#: between pieces, so a stop takes effect while a large checkpoint is hashed.
CHUNK = 1 << 22
#: A folder fingerprint covers at most this many files (a diffusers model has tens).
MAX_FOLDER_FILES = 10_000


class FileFingerprinter:
    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self.hashed = 0  # how many times content was actually read (for tests and benchmarks)

    def of(self, path: str | Path, check: Callable[[], None] | None = None) -> str:
        """The content fingerprint of a file or folder ("missing:<path>" if absent).

        Raises :class:`~studio.errors.StudioError` for something that is not a regular
        file or folder. ``check`` is called between pieces of a long read (it raises to
        stop, as :meth:`NodeContext.check_interrupt` does).
        """
        p = Path(path)
        if not p.exists():
            return f"missing:{p}"
        if p.is_dir():
            return self._of_folder(p, check)
        st = regular_file(p, what="file")
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._memo.get(key)
        if known is not None:
            return known
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                if check is not None:
                    check()
        digest = f"{st.st_size}:{h.hexdigest()}"
        with self._lock:
            self._memo[key] = digest
            self.hashed += 1
        return digest

    def _of_folder(self, folder: Path, check: Callable[[], None] | None) -> str:
        parts = []
        count = 0
        for dirpath, dirnames, filenames in os.walk(folder):  # never follows folder links
            dirnames.sort()
            for name in sorted(filenames):
                sub = Path(dirpath) / name
                if not sub.is_file():  # a FIFO or socket inside a folder is not content
                    continue
                count += 1
                if count > MAX_FOLDER_FILES:
                    from studio.errors import StudioError

                    raise StudioError(
                        f"{folder} holds more than {MAX_FOLDER_FILES} files: not a model folder"
                    )
                parts.append(f"{sub.relative_to(folder).as_posix()}={self.of(sub, check)}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def identity(self, path: str | Path) -> tuple[str, int, int]:
        """(resolved path, size, mtime_ns): cheap, for model-manager keys."""
        p = Path(path).resolve()
        st = os.stat(p)
        return (str(p), st.st_size, st.st_mtime_ns)
