"""The one exception family of Studio.

Every error a user can cause derives from :class:`StudioError` and carries a
message meant for a person, naming the node, file or param concerned.
"""

from __future__ import annotations


class StudioError(Exception):
    """Base of every error Studio reports to a user."""


class WorkflowFileError(StudioError):
    """A workflow file could not be read: not JSON, not a workflow, too new, ..."""

    def __init__(self, path: str, message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class WorkflowEditError(StudioError):
    """An edit through the Python API named an unknown node or param, or a bad value."""


class NodeError(StudioError):
    """A node failed while running. Raised by node code for user-facing problems."""

    def __init__(self, message: str, *, node_id: str | None = None, node_type: str | None = None):
        self.node_id = node_id
        self.node_type = node_type
        super().__init__(message)


class Interrupted(StudioError):
    """The run was interrupted by the user."""
