"""Events the engine sends while it runs a workflow."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    """What an :class:`Event` reports, in the order they usually happen. The values are
    what ``Event.to_json()`` and ``studio run --events`` write."""

    RUN_STARTED = "run_started"
    NODE_STARTED = "node_started"
    NODE_CACHED = "node_cached"
    PROGRESS = "progress"
    NODE_FINISHED = "node_finished"
    NODE_ERROR = "node_error"
    NODE_SKIPPED = "node_skipped"
    INTERRUPTED = "interrupted"
    NOTICE = "notice"  # something the user should know, e.g. a model too large for its budget
    RUN_FINISHED = "run_finished"


@dataclass(frozen=True)
class Event:
    """One thing that happened during a run.

    Attributes:
        event: the kind, an :class:`EventKind`.
        node, type, title: the node concerned (None for run events).
        seconds: for node_finished (the node's time) and run_finished (the run's).
        step, total: for progress.
        preview: for progress, an optional small PIL image of the current result.
        message: for node_error / node_skipped; for node_started, why it re-ran; for
            notice, the whole text (said once, e.g. a model that does not fit its budget).
        traceback: for node_error, the Python traceback (for a details view, never
            the main message).
    """

    event: EventKind
    node: str | None = None
    type: str | None = None
    title: str | None = None
    seconds: float | None = None
    step: int | None = None
    total: int | None = None
    preview: Any = None
    message: str | None = None
    traceback: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (without the preview image); absent fields are left out."""
        out: dict[str, Any] = {"event": str(self.event)}
        for key in ("node", "type", "title", "seconds", "step", "total", "message", "traceback"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 6) if key == "seconds" else value
        if self.preview is not None:
            out["preview"] = True
        return out
