"""File fingerprints for the cache signature of nodes that read files.

A file is known by (path, size, mtime); its content hash is computed once per
such identity and remembered, so an unchanged file is not hashed again, and a
file that was touched or copied without changing keeps its cached results.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


class FileFingerprinter:
    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self.hashed = 0  # how many times content was actually read (for tests and benchmarks)

    def of(self, path: str | Path) -> str:
        """The content fingerprint of a file or folder ("missing:<path>" if absent)."""
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            return f"missing:{p}"
        if p.is_dir():
            parts = []
            for sub in sorted(q for q in p.rglob("*") if q.is_file()):
                parts.append(f"{sub.relative_to(p).as_posix()}={self.of(sub)}")
            return hashlib.sha256("\n".join(parts).encode()).hexdigest()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._memo.get(key)
        if known is not None:
            return known
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = f"{st.st_size}:{h.hexdigest()}"
        with self._lock:
            self._memo[key] = digest
            self.hashed += 1
        return digest

    def identity(self, path: str | Path) -> tuple[str, int, int]:
        """(resolved path, size, mtime_ns): cheap, for model-manager keys."""
        p = Path(path).resolve()
        st = os.stat(p)
        return (str(p), st.st_size, st.st_mtime_ns)
