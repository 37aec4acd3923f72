"""Undo commands: each is a list of small reversible operations on the workflow model.

A gesture (a paste, a drag, a slider drag) becomes one :class:`EditCommand`; commands
with the same merge key fold into one undo step. Commands change only the model;
the scene follows the model's change notifications.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

from PySide6.QtGui import QUndoCommand

from studio.graph.workflow import Frame, Link, Node, NodeLayout, Note, Workflow


class Op(Protocol):
    def apply(self, wf: Workflow) -> None: ...
    def revert(self, wf: Workflow) -> None: ...


def _set_reroutes(wf: Workflow, link_id: str, points: list[tuple[float, float]]) -> None:
    # Undoing past the link's removal: nothing to draw.
    wf.set_reroutes(link_id, points if wf.get_link(link_id) is not None else [])


@dataclass
class AddNode:
    node: Node
    layout: NodeLayout

    def apply(self, wf: Workflow) -> None:
        wf.insert_node(copy.deepcopy(self.node), copy.deepcopy(self.layout))

    def revert(self, wf: Workflow) -> None:
        wf.remove_node(self.node.id)


@dataclass
class RemoveNode:
    node_id: str
    _removed: Any = None

    def apply(self, wf: Workflow) -> None:
        reroutes = {
            lk.id: list(wf.layout.reroutes.get(lk.id, []))
            for lk in wf.links
            if self.node_id in (lk.source, lk.target)
        }
        self._removed = (*wf.remove_node(self.node_id), reroutes)

    def revert(self, wf: Workflow) -> None:
        node, layout, links, reroutes = self._removed
        wf.insert_node(node, layout)
        for lk in links:
            wf.insert_link(lk)
            if reroutes.get(lk.id):
                _set_reroutes(wf, lk.id, reroutes[lk.id])


@dataclass
class Connect:
    """Link ``source.output`` to ``target.input``, replacing (and on undo restoring) a link there."""

    link: Link
    _replaced: tuple[Link, list[tuple[float, float]]] | None = None

    def apply(self, wf: Workflow) -> None:
        lk = self.link
        old = wf.link_into(lk.target, lk.input)
        self._replaced = (old, list(wf.layout.reroutes.get(old.id, []))) if old else None
        wf.connect(lk.source, lk.output, lk.target, lk.input, id=lk.id)

    def revert(self, wf: Workflow) -> None:
        wf.remove_link(self.link.id)
        if self._replaced is not None:
            old, points = self._replaced
            wf.insert_link(old)
            if points:
                _set_reroutes(wf, old.id, points)


@dataclass
class RemoveLink:
    link_id: str
    _removed: tuple[Link, list[tuple[float, float]]] | None = None

    def apply(self, wf: Workflow) -> None:
        points = list(wf.layout.reroutes.get(self.link_id, []))
        self._removed = (wf.remove_link(self.link_id), points)

    def revert(self, wf: Workflow) -> None:
        assert self._removed is not None
        link, points = self._removed
        wf.insert_link(link)
        if points:
            _set_reroutes(wf, link.id, points)


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: ``SetParam.old`` of a param the node did not store: undo forgets it again, so the
#: type's default applies and the file is as it was.
ABSENT: Any = _Absent()


@dataclass
class SetParam:
    node_id: str
    name: str
    old: Any
    new: Any

    def apply(self, wf: Workflow) -> None:
        wf.put_param(self.node_id, self.name, self.new)

    def revert(self, wf: Workflow) -> None:
        if self.old is ABSENT:
            wf.remove_param(self.node_id, self.name)
        else:
            wf.put_param(self.node_id, self.name, self.old)


@dataclass
class SetExtra:
    """A value kept with a node in the file but outside its params (seed control)."""

    node_id: str
    key: str
    old: Any
    new: Any

    def apply(self, wf: Workflow) -> None:
        _put_extra(wf, self.node_id, self.key, self.new)

    def revert(self, wf: Workflow) -> None:
        _put_extra(wf, self.node_id, self.key, self.old)


def _put_extra(wf: Workflow, node_id: str, key: str, value: Any) -> None:
    wf.set_node_extra(node_id, key, value)


@dataclass
class ReplaceWorkflow:
    """The whole document replaced by another workflow (restoring one from the history)."""

    old: Workflow
    new: Workflow

    def apply(self, wf: Workflow) -> None:
        wf.replace_with(self.new.copy())

    def revert(self, wf: Workflow) -> None:
        wf.replace_with(self.old.copy())


@dataclass
class SetFlags:
    node_id: str
    old: tuple[bool, bool]
    new: tuple[bool, bool]

    def apply(self, wf: Workflow) -> None:
        wf.set_flags(self.node_id, mute=self.new[0], bypass=self.new[1])

    def revert(self, wf: Workflow) -> None:
        wf.set_flags(self.node_id, mute=self.old[0], bypass=self.old[1])


@dataclass
class SetTitle:
    node_id: str
    old: str
    new: str

    def apply(self, wf: Workflow) -> None:
        wf.set_title(self.node_id, self.new)

    def revert(self, wf: Workflow) -> None:
        wf.set_title(self.node_id, self.old)


@dataclass
class SetLayout:
    node_id: str
    old: dict[str, Any]
    new: dict[str, Any]

    def apply(self, wf: Workflow) -> None:
        wf.set_node_layout(self.node_id, **self.new)

    def revert(self, wf: Workflow) -> None:
        wf.set_node_layout(self.node_id, **self.old)


@dataclass
class SetFrames:
    old: list[Frame]
    new: list[Frame]

    def apply(self, wf: Workflow) -> None:
        wf.set_frames(copy.deepcopy(self.new))

    def revert(self, wf: Workflow) -> None:
        wf.set_frames(copy.deepcopy(self.old))


@dataclass
class SetNotes:
    old: list[Note]
    new: list[Note]

    def apply(self, wf: Workflow) -> None:
        wf.set_notes(copy.deepcopy(self.new))

    def revert(self, wf: Workflow) -> None:
        wf.set_notes(copy.deepcopy(self.old))


@dataclass
class SetReroutes:
    link_id: str
    old: list[tuple[float, float]]
    new: list[tuple[float, float]]

    def apply(self, wf: Workflow) -> None:
        _set_reroutes(wf, self.link_id, self.new)

    def revert(self, wf: Workflow) -> None:
        _set_reroutes(wf, self.link_id, self.old)


class EditCommand(QUndoCommand):
    """One undo step: ``ops`` applied in order, reverted in reverse order."""

    def __init__(self, wf: Workflow, label: str, ops: list[Any], merge_key: Any = None):
        super().__init__(label)
        self.wf = wf
        self.ops = list(ops)
        self.merge_key = merge_key
        self.failed: Exception | None = None

    def redo(self) -> None:
        done: list[Any] = []
        try:
            for op in self.ops:
                op.apply(self.wf)
                done.append(op)
        except Exception as exc:
            # Leave the model as it was and drop this command from the stack.
            for op in reversed(done):
                op.revert(self.wf)
            self.failed = exc
            self.setObsolete(True)

    def undo(self) -> None:
        for op in reversed(self.ops):
            op.revert(self.wf)

    def id(self) -> int:
        return 1 if self.merge_key is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:
        if not isinstance(other, EditCommand) or other.merge_key != self.merge_key:
            return False
        if other.failed is not None:
            return False
        for op in other.ops:
            prev = next(
                (
                    p
                    for p in self.ops
                    if type(p) is type(op)
                    and isinstance(op, SetParam | SetLayout | SetReroutes)
                    and _same_target(p, op)
                ),
                None,
            )
            if prev is not None:
                prev.new = op.new  # keep the first old value, take the latest new one
            else:
                self.ops.append(op)
        return True


def _same_target(a: Any, b: Any) -> bool:
    if isinstance(a, SetParam):
        return (a.node_id, a.name) == (b.node_id, b.name)
    if isinstance(a, SetLayout):
        return a.node_id == b.node_id and set(a.new) == set(b.new)
    return a.link_id == b.link_id
