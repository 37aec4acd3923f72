"""Small file-system helpers shared by every layer (no Qt, no torch)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

#: Temporary files of an unfinished write end in this; they start with a dot, so no
#: listing of ``stem_*.suffix`` (the output folder, :func:`unique_path`) ever sees one.
TEMP_SUFFIX = ".studio-tmp"
#: A temporary file this old was left by a write that crashed (a write takes well under
#: a second), so the next write in its folder removes it.
STALE_TEMP_SECONDS = 60.0
#: ``.<target name>.<mkstemp's 8 random characters>.studio-tmp`` (or ``.tmp``, as
#: Studio named them before): only files of this exact shape are removed as stale.
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}(\.studio-tmp|\.tmp)")


def _write_temp(folder: Path, target_name: str, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``folder / target_name``, on disk (fsync)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target_name}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _fsync_folder(folder: Path) -> None:
    # Makes the new name itself survive a power loss (POSIX; Windows cannot open folders).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(folder: Path, target_prefix: str = "") -> list[Path]:
    """Remove the temporary files that crashed writes left in ``folder``.

    Only our own pattern (:data:`TEMP_SUFFIX`) for targets named ``target_prefix...``,
    and only those older than :data:`STALE_TEMP_SECONDS`, so a write in progress in
    another process keeps its file. Returns what was removed.
    """
    removed = []
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            m = _TEMP_NAME.fullmatch(entry.name)
            if m is None or not m["target"].startswith(target_prefix):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if entry.is_file(follow_symlinks=False) and now - st.st_mtime > STALE_TEMP_SECONDS:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash midway leaves either the old file or the new one, never half of one; a
    temporary file a crash left behind is removed by a later write of the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = _write_temp(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _numbered(folder: Path, stem: str, suffix: str) -> list[int]:
    nums = []
    for p in folder.glob(f"{stem}_*{suffix}"):
        tail = p.name[len(stem) + 1 : len(p.name) - len(suffix)]
        if tail.isdigit():
            nums.append(int(tail))
    return nums


def write_numbered(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write ``data`` as a new file ``stem_NNNNN.suffix`` in ``folder``, numbered after
    the highest number there, and return its path.

    The name only ever appears with its whole content: the data goes to a temporary
    file first (fsync'd), which is then hard-linked to the first free name (a link
    fails instead of replacing a file another writer took meanwhile) and unlinked. So
    neither a crash nor a second Studio leaves an empty file, a partial one, or a
    replaced one; temporary files of earlier crashes are removed here.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder, stem)
    tmp = _write_temp(folder, f"{stem}{suffix}", data)
    try:
        i = max(_numbered(folder, stem, suffix), default=0) + 1
        can_link = True
        while True:
            target = folder / f"{stem}_{i:05d}{suffix}"
            try:
                if can_link:
                    os.link(tmp, target)
                elif target.exists():
                    raise FileExistsError(target)
                else:
                    # No hard links here (FAT, some network shares). Windows' rename
                    # refuses an existing name; elsewhere a writer taking this very
                    # name between the check and the rename is the one window left.
                    os.rename(tmp, target)
            except FileExistsError:
                i += 1
                continue
            except OSError:
                if not can_link:
                    raise
                can_link = False
                continue
            break
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_folder(folder)
    return target


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """The first ``stem_00001.suffix`` style name in ``folder`` that does not exist yet.

    Only a name: a second writer may take it before the caller writes. To write a new
    numbered file without that race, use :func:`write_numbered`.
    """
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
