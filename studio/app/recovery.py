"""Recovery files: the open workflow, written every few seconds while it has unsaved edits.

Each session owns ``<session>.json`` plus a lock file in ``data_dir()/recovery``. A
recovery file whose lock is free belongs to a session that died; the next start offers it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QLockFile

from studio.fsutil import atomic_write_bytes
from studio.graph.fileformat import workflow_from_dict, workflow_to_dict
from studio.graph.registry import Registry
from studio.graph.workflow import Workflow
from studio.settings import data_dir


def recovery_dir() -> Path:
    return data_dir() / "recovery"


@dataclass
class RecoveryFile:
    path: Path
    source: str | None  # the file the workflow was opened from, if any
    saved_at: float
    node_count: int

    def load(self, registry: Registry) -> Workflow:
        data = json.loads(self.path.read_text("utf-8"))
        wf = workflow_from_dict(data["workflow"], path=str(self.path), registry=registry)
        wf.path = Path(self.source) if self.source else None
        return wf

    def discard(self) -> None:
        for p in (self.path, self.path.with_suffix(".lock")):
            p.unlink(missing_ok=True)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved_at))
        name = Path(self.source).name if self.source else "an untitled workflow"
        return f"{name} ({self.node_count} nodes), last kept {when}"


class RecoveryStore:
    def __init__(self, folder: Path | None = None):
        self.folder = folder or recovery_dir()
        self.session = uuid.uuid4().hex[:12]
        self.path = self.folder / f"{self.session}.json"
        self._lock: QLockFile | None = None

    def _ensure_lock(self) -> None:
        if self._lock is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = QLockFile(str(self.path.with_suffix(".lock")))
            self._lock.setStaleLockTime(0)
            self._lock.tryLock(0)

    def write(self, wf: Workflow, source: Path | None) -> None:
        self._ensure_lock()
        payload: dict[str, Any] = {
            "saved_at": time.time(),
            "source": str(source) if source else None,
            "workflow": workflow_to_dict(wf),
        }
        atomic_write_bytes(self.path, json.dumps(payload).encode("utf-8"))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.clear()
        if self._lock is not None:
            self._lock.unlock()
            self._lock = None

    def pending(self) -> list[RecoveryFile]:
        """Recovery files left by sessions that are no longer running, newest first."""
        found: list[RecoveryFile] = []
        if not self.folder.is_dir():
            return found
        for p in self.folder.glob("*.json"):
            if p == self.path:
                continue
            lock = QLockFile(str(p.with_suffix(".lock")))
            lock.setStaleLockTime(0)
            if not lock.tryLock(0):
                continue  # another Studio that is still running owns it
            lock.unlock()
            try:
                data = json.loads(p.read_text("utf-8"))
                found.append(
                    RecoveryFile(
                        p,
                        data.get("source"),
                        float(data.get("saved_at", p.stat().st_mtime)),
                        len(data["workflow"].get("nodes", [])),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        found.sort(key=lambda r: r.saved_at, reverse=True)
        return found
