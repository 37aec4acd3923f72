"""Small file-system helpers shared by every layer (no Qt, no torch)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash midway leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """The first ``stem_00001.suffix`` style name in ``folder`` that does not exist yet."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = {p.name for p in folder.glob(f"{stem}_*{suffix}")}
    i = 1
    while f"{stem}_{i:05d}{suffix}" in existing or (folder / f"{stem}_{i:05d}{suffix}").exists():
        i += 1
    return folder / f"{stem}_{i:05d}{suffix}"
