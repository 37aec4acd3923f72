"""``batch.jsonl``: one JSON line per event of a batch (its start, each job's end, where it
stopped), appended and fsync'd, so a driver killed at any moment leaves a record that
says which jobs are done. A line cut short by a crash is ignored when read back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.fsutil import atomic_write_bytes

RECORD_NAME = "batch.jsonl"


@dataclass
class JobRecord:
    """What became of one job.

    ``status``: ``ok`` (its images are in ``files``), ``failed`` (``error`` says why),
    ``skipped`` (done by an earlier run of the same batch; its files are there) or
    ``stopped`` (not run: the batch was interrupted). ``attempts`` > 1 means it was
    retried after its worker died. ``cached``: nodes its worker did not have to run again
    (a warm engine: the checkpoint, an unchanged prompt).
    """

    job: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    worker: str = ""
    error: str | None = None
    attempts: int = 1
    #: nodes the worker ran, and served from its warm engine's cache, for this job
    ran: int | None = None
    cached: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def output_names(job_id: str, count: int) -> list[str]:
    """``<job>.png``, then ``<job>_2.png``... for a job with several images."""
    return [f"{job_id}.png" if k == 0 else f"{job_id}_{k + 1}.png" for k in range(count)]


def write_outputs(folder: Path, job_id: str, images: list[bytes]) -> list[dict[str, str]]:
    """Write a job's images atomically (never a half-written file); name and hash of each."""
    out = []
    for name, data in zip(output_names(job_id, len(images)), images, strict=True):
        atomic_write_bytes(folder / name, data)
        out.append({"file": name, "sha256": sha256(data)})
    return out


class BatchRecord:
    """The ``batch.jsonl`` of one output folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / RECORD_NAME
        self.lines: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.path.read_text("utf-8", errors="replace").splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # the last line of a driver killed mid-write
                if isinstance(obj, dict):
                    self.lines.append(obj)
        self._f: Any = None

    def header(self) -> dict[str, Any] | None:
        """The latest batch start recorded here."""
        for obj in reversed(self.lines):
            if obj.get("record") == "batch":
                return obj
        return None

    def finished(self) -> dict[str, dict[str, Any]]:
        """Job id -> its latest ``ok`` record whose images are all there, complete."""
        done: dict[str, dict[str, Any]] = {}
        for obj in self.lines:
            if obj.get("record") == "job" and obj.get("status") == "ok":
                done[obj["job"]] = obj
        return {jid: obj for jid, obj in done.items() if self._complete(obj)}

    def _complete(self, obj: dict[str, Any]) -> bool:
        for out in obj.get("outputs", []):
            try:
                data = (self.folder / out["file"]).read_bytes()
            except (OSError, KeyError, TypeError):
                return False
            if sha256(data) != out.get("sha256"):
                return False
        return bool(obj.get("outputs"))

    def append(self, obj: dict[str, Any]) -> None:
        if self._f is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab")  # noqa: SIM115 (held for the batch)
            if self._f.tell() > 0:
                with open(self.path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":  # a line cut short by a crash ends here
                        self._f.write(b"\n")
        self._f.write(json.dumps(obj, sort_keys=True).encode() + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.lines.append(obj)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
