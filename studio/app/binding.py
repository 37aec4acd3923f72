"""Following the workflow model from Qt objects without outliving them."""

from __future__ import annotations

from collections.abc import Callable

import shiboken6
from PySide6.QtCore import QObject

from studio.graph.workflow import Change, Workflow


def follow(wf: Workflow, owner: QObject, listener: Callable[[Change], None]) -> Callable[[], None]:
    """Send ``wf``'s changes to ``listener`` while ``owner`` lives; returns the unsubscribe."""

    def relay(change: Change) -> None:
        if not shiboken6.isValid(owner):
            unsubscribe()
            return
        listener(change)

    unsubscribe = wf.subscribe(relay)
    owner.destroyed.connect(lambda *_: unsubscribe())
    return unsubscribe
