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


def regular_file(path: str | Path, *, what: str, max_bytes: int | None = None) -> os.stat_result:
    """Check that ``path`` is a regular file (after links) no larger than ``max_bytes``.

    Called before any file is read or hashed, so that a workflow naming ``/dev/zero``,
    a FIFO, a folder or a socket gets a clear error instead of a read that never ends.
    Returns the file's ``stat``. Raises :class:`~studio.errors.StudioError` naming
    ``what`` (for example "checkpoint file") and the path.
    """
    import stat

    from studio.errors import StudioError

    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise StudioError(f"{what} not found: {p} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise StudioError(f"{what} is a folder, not a file: {p}")
    if not stat.S_ISREG(st.st_mode):
        raise StudioError(f"{what} is not a regular file (a device, pipe or socket): {p}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise StudioError(
            f"{what} is too large ({st.st_size / 2**20:.0f} MiB, the limit is "
            f"{max_bytes / 2**20:.0f} MiB): {p}"
        )
    return st


def writable_folder(folder: str | Path, *, what: str) -> Path:
    """Create ``folder`` if needed and check that files can be written in it.

    Called before work whose result goes there (a run's output folder, a screenshot),
    so that a read-only or impossible path is reported at once, not after minutes of
    work. Returns the folder. Raises :class:`~studio.errors.StudioError` naming ``what``
    (for example "output folder") and the path.
    """
    from studio.errors import StudioError

    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise StudioError(f"{what} is a file, not a folder: {p}")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudioError(f"{what} cannot be created: {p} ({exc.strerror or exc})") from None
    try:  # os.access misses read-only mounts and ACLs; a real file tells the truth
        fd, probe = tempfile.mkstemp(prefix=".studio-write-check-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StudioError(f"{what} is not writable: {p} ({exc.strerror or exc})") from None
    return p
