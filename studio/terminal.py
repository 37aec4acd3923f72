"""What ``studio run`` shows on a terminal: the node that runs, a progress bar with the
sampler's steps and the time left, and each node's time at the end.

Only when stdout is a terminal; with ``--events`` or a pipe the command prints only what
scripts read. :func:`quiet_libraries` hides the libraries' own bars and warnings (kept
with ``--verbose``). No torch, no Qt.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, TextIO

from studio.engine.events import Event, EventKind


def quiet_libraries() -> None:
    """Hide transformers' and diffusers' progress bars, advisory messages and Python
    warnings; call before they are imported (they read these settings at import)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.simplefilter("ignore")
    for name in ("transformers", "diffusers", "huggingface_hub", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"


@dataclass
class _Node:
    title: str
    seconds: float | None = None
    cached: bool = False
    failed: bool = False


@dataclass
class TerminalProgress:
    """An event sink for :meth:`Engine.run` that draws on a terminal.

    One status line is redrawn in place (``\\r``); lines that should stay (a notice, an
    error) are printed above it. ``total`` is the number of nodes the run will visit.
    """

    out: TextIO
    total: int = 0
    nodes: dict[str, _Node] = field(default_factory=dict)
    _line: str = ""
    _current: str | None = None
    _step_start: float = 0.0
    _first_step: int = 0
    _done: int = 0

    def __call__(self, event: Event) -> None:
        kind, nid = event.event, event.node
        title = event.title or event.type or nid or ""
        if nid is not None and nid not in self.nodes:
            self.nodes[nid] = _Node(title)
        if kind is EventKind.NODE_STARTED:
            self._current = nid
            self._step_start = time.perf_counter()
            self._first_step = 0
            self._status(f"{self._count()} {title} …")
        elif kind is EventKind.PROGRESS and nid is not None:
            self._progress(title, event.step or 0, max(event.total or 1, 1))
        elif kind is EventKind.NODE_FINISHED and nid is not None:
            self.nodes[nid].seconds = event.seconds or 0.0
            self._status(f"{self._count()} {title} done in {_seconds(event.seconds or 0.0)}")
            self._done += 1
        elif kind is EventKind.NODE_CACHED and nid is not None:
            self.nodes[nid].cached = True
            self._done += 1
        elif kind is EventKind.NODE_ERROR and nid is not None:
            self.nodes[nid].failed = True
            self._done += 1
            self._print(f"{title} failed: {event.message}")
        elif kind is EventKind.NODE_SKIPPED and nid is not None:
            self._done += 1
        elif kind is EventKind.NOTICE and event.message:
            self._print(f"note: {event.message}")
        elif kind is EventKind.RUN_FINISHED:
            self._status("")
            self._summary(event.seconds)

    # -- drawing ------------------------------------------------------------------------

    def _count(self) -> str:
        return f"[{min(self._done + 1, self.total)}/{self.total}]" if self.total else ""

    def _progress(self, title: str, step: int, total: int) -> None:
        now = time.perf_counter()
        if self._first_step == 0 or step < self._first_step:
            # Time left counts from the first step seen (loading before it is not sampling).
            self._first_step, self._step_start = max(step, 1), now
        done = step - self._first_step
        left = ""
        if done > 0 and step < total:
            per_step = (now - self._step_start) / done
            left = f", {_seconds(per_step * (total - step))} left"
        width = max(10, min(30, shutil.get_terminal_size((80, 24)).columns - 50))
        filled = round(width * step / total)
        bar = "█" * filled + "░" * (width - filled)
        self._status(f"{self._count()} {title} {bar} {step}/{total}{left}")

    def _status(self, text: str) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns
        text = text[: max(columns - 1, 10)]
        pad = " " * max(0, len(self._line) - len(text))
        self.out.write(f"\r{text}{pad}")
        if not text:
            self.out.write("\r")
        self.out.flush()
        self._line = text

    def _print(self, text: str) -> None:
        line = self._line
        self._status("")
        self.out.write(text + "\n")
        if line:
            self._status(line)
        self.out.flush()

    def _summary(self, run_seconds: Any) -> None:
        rows = [(n.title, n) for n in self.nodes.values() if n.seconds is not None or n.cached]
        if not rows:
            return
        width = max(len(t) for t, _ in rows)
        for title, n in rows:
            what = "cached" if n.cached else _seconds(n.seconds or 0.0)
            self.out.write(f"  {title:<{width}}  {what:>9}\n")
        if isinstance(run_seconds, int | float):
            self.out.write(f"  {'total':<{width}}  {_seconds(run_seconds):>9}\n")
        self.out.flush()
