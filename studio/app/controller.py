"""The document controller: turns the artist's intents into undo commands on the model.

The canvas and the panels never edit the workflow directly; they call methods here,
each of which pushes one :class:`~studio.app.commands.EditCommand` (one undo step).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QUndoStack

from studio.app import commands as c
from studio.app.binding import follow
from studio.graph.fileformat import find_unsaveable
from studio.graph.registry import Registry
from studio.graph.seeds import EXTRA_KEY as SEED_EXTRA_KEY
from studio.graph.seeds import SEED_CONTROLS, SeedControl, advance_seeds, seed_control
from studio.graph.spec import FileLister, NodeSpec
from studio.graph.types import ValueType, can_connect
from studio.graph.workflow import Change, Frame, Link, Node, NodeLayout, Note, Workflow, new_id
from studio.modelfiles import ModelFiles
from studio.settings import Settings

CLIPBOARD_MIME = "application/x-studio-nodes"
VALIDATE_DELAY_MS = 250


#: Seed control of seed params on nodes made in the app (files keep what they store).
NEW_SEED_CONTROL = SeedControl.RANDOMIZE


def make_node(
    registry: Registry,
    type_id: str,
    params: dict[str, Any] | None = None,
    *,
    files: FileLister | None = None,
) -> Node:
    spec = registry.get(type_id)
    merged = spec.default_params(files) if spec else {}
    merged.update(params or {})
    seeds = [i.name for i in spec.params if i.seed] if spec else []
    # ComfyUI's habit: a new sampler gives a new image on every run.
    extra = {SEED_EXTRA_KEY: {name: NEW_SEED_CONTROL for name in seeds}} if seeds else {}
    version = spec.version if spec else 1
    return Node(id=new_id(), type=type_id, version=version, params=merged, extra=extra)


class Controller(QObject):
    """Edits of one open workflow, with its undo stack and its validation problems."""

    problems_changed = Signal(object)  # list[Problem]
    message = Signal(str)  # a short note for the status bar (a refused link, ...)
    workflow_replaced = Signal()

    def __init__(
        self,
        workflow: Workflow,
        registry: Registry,
        parent: QObject | None = None,
        *,
        settings: Settings | None = None,
    ):
        super().__init__(parent)
        self.registry = registry
        #: Studio's settings for this window (model folders, input folder), never global.
        self.settings = settings if settings is not None else Settings.load()
        self.model_files = ModelFiles(self.settings)
        self.wf = workflow
        self.undo_stack = QUndoStack(self)
        self.problems: list[Any] = []
        self._gestures = itertools.count(1)
        self._validate_timer = QTimer(self)
        self._validate_timer.setSingleShot(True)
        self._validate_timer.setInterval(VALIDATE_DELAY_MS)
        self._validate_timer.timeout.connect(self.validate_now)
        self._unsubscribe = follow(workflow, self, self._on_change)

    # -- document ---------------------------------------------------------------------------

    def set_workflow(self, workflow: Workflow) -> None:
        self._unsubscribe()
        self.wf = workflow
        self._unsubscribe = follow(workflow, self, self._on_change)
        self.undo_stack.clear()
        self.problems = []
        self.workflow_replaced.emit()
        self._validate_timer.start()  # after the canvas has painted

    def _on_change(self, change: Change) -> None:
        if not change.kind.is_layout:
            self._validate_timer.start()

    def validate_now(self) -> None:
        from studio.app.runner import ENGINE_IMPORT_LOCK

        with ENGINE_IMPORT_LOCK:
            from studio.engine.validate import plan_workflow

        self._validate_timer.stop()
        try:
            self.problems = plan_workflow(
                self.wf, self.registry, model_files=self.model_files
            ).problems
        except Exception as exc:  # validation must never take the editor down
            self.message.emit(f"could not check the workflow: {exc}")
            self.problems = []
        self.problems_changed.emit(self.problems)

    def new_gesture(self) -> int:
        """A token for one continuous gesture; edits with the same token undo as one step."""
        return next(self._gestures)

    def push(self, label: str, ops: list[Any], merge_key: Any = None) -> bool:
        if not ops:
            return False
        cmd = c.EditCommand(self.wf, label, ops, merge_key)
        self.undo_stack.push(cmd)
        if cmd.failed is not None:
            self.message.emit(str(cmd.failed))
            return False
        return True

    def spec(self, node_id: str) -> NodeSpec | None:
        return self.registry.get(self.wf.get_node(node_id).type)

    def title(self, node_id: str) -> str:
        return self.wf.display_title(node_id)

    # -- nodes --------------------------------------------------------------------------

    def add_node(
        self,
        type_id: str,
        pos: tuple[float, float],
        *,
        link_from: tuple[str, str] | None = None,
        link_to: tuple[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> str | None:
        """Add a node at ``pos``; ``link_from=(node, output)`` or ``link_to=(node, input)``
        connects it in the same step to the port a wire was dragged from."""
        spec = self.registry.get(type_id)
        if spec is None:
            self.message.emit(f"unknown node type {type_id!r}")
            return None
        node = make_node(self.registry, type_id, params, files=self.model_files.list)
        ops: list[Any] = [c.AddNode(node, NodeLayout(pos=(float(pos[0]), float(pos[1]))))]
        if link_from is not None:
            out_t = self._port_type(link_from[0], link_from[1], True)
            inp = _first_fit([(i.name, i.type) for i in spec.inputs], out_t, as_input=True)
            if inp is not None:
                ops.append(c.Connect(Link(new_id(), link_from[0], link_from[1], node.id, inp)))
        if link_to is not None:
            in_t = self._port_type(link_to[0], link_to[1], False)
            out = _first_fit([(o.name, o.type) for o in spec.outputs], in_t, as_input=False)
            if out is not None:
                ops.append(c.Connect(Link(new_id(), node.id, out, link_to[0], link_to[1])))
        return node.id if self.push(f"Add {spec.title}", ops) else None

    def delete(
        self,
        node_ids: Iterable[str] = (),
        link_ids: Iterable[str] = (),
        frame_ids: Iterable[str] = (),
        note_ids: Iterable[str] = (),
    ) -> None:
        node_ids, link_ids = list(node_ids), list(link_ids)
        frame_ids, note_ids = set(frame_ids), set(note_ids)
        doomed = set(node_ids)
        ops: list[Any] = [
            c.RemoveLink(lid)
            for lid in link_ids
            if (lk := self.wf.get_link(lid)) is not None
            and lk.source not in doomed
            and lk.target not in doomed
        ]
        ops += [c.RemoveNode(nid) for nid in node_ids if self.wf.has_node(nid)]
        if frame_ids:
            old = self.wf.layout.frames
            ops.append(c.SetFrames(copy.deepcopy(old), [f for f in old if f.id not in frame_ids]))
        if note_ids:
            old_n = self.wf.layout.notes
            ops.append(c.SetNotes(copy.deepcopy(old_n), [n for n in old_n if n.id not in note_ids]))
        n = len(node_ids)
        label = (
            f"Delete {n} nodes"
            if n > 1
            else (f"Delete {self.title(node_ids[0])}" if n == 1 else "Delete")
        )
        self.push(label, ops)

    def set_param(self, node_id: str, name: str, value: Any, gesture: int | None = None) -> None:
        node = self.wf.get_node(node_id)
        spec = self.registry.get(node.type)
        inp = spec.input(name) if spec else None
        if inp is not None:
            value = inp.coerce(value)
        old = node.params.get(name, inp.default if inp else None)
        if name in node.params and old == value and type(old) is type(value):
            return
        key = ("param", node_id, name, gesture) if gesture is not None else None
        self.push(
            f"Set {name} of {self.title(node_id)}",
            [c.SetParam(node_id, name, _stored(node, name), value)],
            key,
        )

    def seed_control(self, node_id: str, param: str) -> SeedControl:
        return seed_control(self.wf, node_id, param)

    def set_seed_control(self, node_id: str, param: str, mode: str) -> None:
        """What happens to a seed after each run: fixed, increment, decrement, randomize."""
        if mode not in SEED_CONTROLS or self.seed_control(node_id, param) == mode:
            return
        mode = SeedControl(mode)
        old = self.wf.get_node(node_id).extra.get(SEED_EXTRA_KEY)
        new = {**(old if isinstance(old, dict) else {}), param: mode}
        self.push(
            f"Seed {mode} on {self.title(node_id)}",
            [c.SetExtra(node_id, SEED_EXTRA_KEY, copy.deepcopy(old), new)],
        )

    def advance_seeds(self) -> int:
        """Apply the seed controls once (after a run is queued); returns how many changed.

        One undo step; consecutive runs fold into it, so one undo goes back to the seeds
        before the runs.
        """
        scratch = self.wf.copy()
        changes = advance_seeds(scratch)
        ops = [
            c.SetParam(
                ch.node_id, ch.param, _stored(self.wf.get_node(ch.node_id), ch.param), ch.new
            )
            for ch in changes
        ]
        self.push("Next seeds", ops, merge_key=("seeds",))
        return len(ops)

    def replace_workflow(self, workflow: Workflow, label: str = "Restore workflow") -> None:
        """Replace the whole document by ``workflow`` in one undoable step."""
        self.push(label, [c.ReplaceWorkflow(self.wf.copy(), workflow.copy())])

    def set_params(self, node_id: str, values: dict[str, Any], label: str) -> None:
        """Several params of one node in one step (an image and its mask)."""
        node = self.wf.get_node(node_id)
        spec = self.registry.get(node.type)
        ops = []
        for name, value in values.items():
            inp = spec.input(name) if spec else None
            old = node.params.get(name, inp.default if inp else None)
            if old != value or name not in node.params:
                ops.append(c.SetParam(node_id, name, _stored(node, name), value))
        self.push(label, ops)

    def toggle_mute(self, node_ids: Iterable[str]) -> None:
        self._toggle_flag(list(node_ids), "mute")

    def toggle_bypass(self, node_ids: Iterable[str]) -> None:
        self._toggle_flag(list(node_ids), "bypass")

    def _toggle_flag(self, node_ids: list[str], flag: str) -> None:
        nodes = [self.wf.get_node(n) for n in node_ids if self.wf.has_node(n)]
        if not nodes:
            return
        on = not all(getattr(n, flag) for n in nodes)
        ops = []
        for n in nodes:
            old = (n.mute, n.bypass)
            # Mute and bypass exclude each other, as in every node editor.
            new = (on, False) if flag == "mute" else (False, on)
            if on is False:
                new = (False, n.bypass) if flag == "mute" else (n.mute, False)
            if new != old:
                ops.append(c.SetFlags(n.id, old, new))
        verb = ("Mute" if on else "Unmute") if flag == "mute" else ("Bypass" if on else "Un-bypass")
        self.push(f"{verb} {len(ops)} node(s)", ops)

    def set_title(self, node_id: str, title: str) -> None:
        old = self.wf.get_node(node_id).title
        if old != title:
            self.push(f"Rename to {title or 'default'}", [c.SetTitle(node_id, old, title)])

    def set_layout(self, node_ids: Iterable[str], label: str, **changes: Any) -> None:
        ops = []
        for nid in node_ids:
            lay = self.wf.layout.nodes.get(nid, NodeLayout())
            old = {k: getattr(lay, k) for k in changes}
            if old != changes:
                ops.append(c.SetLayout(nid, old, dict(changes)))
        self.push(label, ops)

    def toggle_collapse(self, node_ids: Iterable[str]) -> None:
        ids = [n for n in node_ids if self.wf.has_node(n)]
        if not ids:
            return
        on = not all(self.wf.layout.nodes[n].collapsed for n in ids)
        self.set_layout(ids, "Collapse" if on else "Expand", collapsed=on)

    def move(
        self,
        nodes: dict[str, tuple[float, float]],
        frames: dict[str, tuple[float, float, float, float]] | None = None,
        notes: dict[str, tuple[float, float]] | None = None,
        reroutes: dict[str, list[tuple[float, float]]] | None = None,
        extra_ops: list[Any] | None = None,
        label: str | None = None,
    ) -> None:
        """One step for a drag: new positions of nodes, frame rects, notes and reroutes."""
        ops: list[Any] = []
        for nid, pos in nodes.items():
            lay = self.wf.layout.nodes.get(nid)
            if lay is not None and lay.pos != pos:
                ops.append(c.SetLayout(nid, {"pos": lay.pos}, {"pos": pos}))
        if frames:
            old = copy.deepcopy(self.wf.layout.frames)
            new = copy.deepcopy(old)
            for f in new:
                if f.id in frames:
                    f.rect = frames[f.id]
            if new != old:
                ops.append(c.SetFrames(old, new))
        if notes:
            old_n = copy.deepcopy(self.wf.layout.notes)
            new_n = copy.deepcopy(old_n)
            for n in new_n:
                if n.id in notes:
                    n.pos = notes[n.id]
            if new_n != old_n:
                ops.append(c.SetNotes(old_n, new_n))
        for lid, pts in (reroutes or {}).items():
            old_pts = list(self.wf.layout.reroutes.get(lid, []))
            if old_pts != pts:
                ops.append(c.SetReroutes(lid, old_pts, pts))
        ops += extra_ops or []
        self.push(label or "Move", ops)

    # -- links --------------------------------------------------------------------------

    def _port_type(self, node_id: str, port: str, is_output: bool) -> ValueType | None:
        spec = self.spec(node_id)
        if spec is None:
            return None
        p = spec.output(port) if is_output else spec.input(port)
        return p.type if p else None

    def check_connect(self, source: str, output: str, target: str, input: str) -> str | None:
        """Why that link cannot be made, or None when it can."""
        if source == target:
            return "a node cannot feed itself"
        out_t = self._port_type(source, output, True)
        in_t = self._port_type(target, input, False)
        if out_t is not None and in_t is not None and not can_connect(out_t, in_t):
            return (
                f"cannot connect {self.title(source)}.{output} ({out_t}) to "
                f"{self.title(target)}.{input} ({in_t})"
            )
        if self.wf._reaches(target, source):
            return "that link would make a cycle"
        return None

    def connect(
        self, source: str, output: str, target: str, input: str, *, detach: str | None = None
    ) -> bool:
        """Link two ports (replacing a link into ``input``); ``detach`` is a link picked up
        from an input by the same drag, removed in the same step."""
        problem = self.check_connect(source, output, target, input)
        if problem:
            self.message.emit(problem)
            return False
        existing = self.wf.link_into(target, input)
        if existing is not None and (existing.source, existing.output) == (source, output):
            return False
        ops: list[Any] = []
        if detach is not None and detach != (existing.id if existing else None):
            ops.append(c.RemoveLink(detach))
        ops.append(c.Connect(Link(new_id(), source, output, target, input)))
        label = f"Connect {self.title(source)} to {self.title(target)}"
        return self.push(label, ops)

    def disconnect(self, link_ids: Iterable[str], label: str = "Disconnect") -> None:
        self.push(label, [c.RemoveLink(lid) for lid in link_ids if self.wf.get_link(lid)])

    def insert_on_link_ops(self, node_id: str, link_id: str) -> list[Any]:
        """Ops putting a node into a wire (``a -> b`` becomes ``a -> node -> b``), or []."""
        lk = self.wf.get_link(link_id)
        spec = self.spec(node_id)
        if lk is None or spec is None or node_id in (lk.source, lk.target):
            return []
        t = self._port_type(lk.source, lk.output, True)
        if t is None:
            return []
        inp = _first_fit(
            [(i.name, i.type) for i in spec.inputs if not i.is_param], t, as_input=True
        )
        out = _first_fit([(o.name, o.type) for o in spec.outputs], t, as_input=False, exact=t)
        if inp is None or out is None:
            return []
        return [
            c.RemoveLink(link_id),
            c.Connect(Link(new_id(), lk.source, lk.output, node_id, inp)),
            c.Connect(Link(new_id(), node_id, out, lk.target, lk.input)),
        ]

    # -- reroutes -----------------------------------------------------------------------

    def add_reroute(self, link_id: str, point: tuple[float, float], index: int) -> None:
        old = list(self.wf.layout.reroutes.get(link_id, []))
        new = [*old[:index], point, *old[index:]]
        self.push("Add reroute", [c.SetReroutes(link_id, old, new)])

    def remove_reroute(self, link_id: str, index: int) -> None:
        old = list(self.wf.layout.reroutes.get(link_id, []))
        if 0 <= index < len(old):
            self.push(
                "Remove reroute", [c.SetReroutes(link_id, old, old[:index] + old[index + 1 :])]
            )

    # -- frames and notes ---------------------------------------------------------------

    def add_frame(self, rect: tuple[float, float, float, float], title: str = "Frame") -> str:
        old = copy.deepcopy(self.wf.layout.frames)
        frame = Frame(id=new_id(), title=title, rect=rect)
        self.push("Add frame", [c.SetFrames(old, [*copy.deepcopy(old), frame])])
        return frame.id

    def edit_frame(self, frame_id: str, label: str = "Edit frame", **changes: Any) -> None:
        old = copy.deepcopy(self.wf.layout.frames)
        new = copy.deepcopy(old)
        for f in new:
            if f.id == frame_id:
                for k, v in changes.items():
                    setattr(f, k, v)
        if new != old:
            self.push(label, [c.SetFrames(old, new)])

    def add_note(self, pos: tuple[float, float], text: str = "") -> str:
        old = copy.deepcopy(self.wf.layout.notes)
        note = Note(id=new_id(), text=text, pos=pos)
        self.push("Add note", [c.SetNotes(old, [*copy.deepcopy(old), note])])
        return note.id

    def edit_note(self, note_id: str, label: str = "Edit note", **changes: Any) -> None:
        old = copy.deepcopy(self.wf.layout.notes)
        new = copy.deepcopy(old)
        for n in new:
            if n.id == note_id:
                for k, v in changes.items():
                    setattr(n, k, v)
        if new != old:
            self.push(label, [c.SetNotes(old, new)])

    # -- copy and paste -----------------------------------------------------------------

    def copy_data(self, node_ids: Iterable[str]) -> dict[str, Any]:
        """Clipboard data: the nodes as file data, plus the links that fed them from outside."""
        ids = [n for n in node_ids if self.wf.has_node(n)]
        keep = set(ids)
        data = self.wf.subgraph(ids)
        data["incoming"] = [
            {"source": lk.source, "output": lk.output, "target": lk.target, "input": lk.input}
            for lk in self.wf.links
            if lk.target in keep and lk.source not in keep
        ]
        return data

    def paste(
        self, data: dict[str, Any], at: tuple[float, float] | None, *, keep_links: bool = False
    ) -> list[str]:
        """Paste clipboard data as new nodes (fresh ids) in one step; returns their ids.

        The clipboard is text any program can put there: data a workflow file could not
        hold, or that is not shaped as Studio copies it, pastes nothing and says why.
        """
        problem = find_unsaveable(data)
        if problem is not None:
            self.message.emit(f"nothing pasted: the clipboard holds {problem}")
            return []
        try:
            return self._paste(data, at, keep_links)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError):
            self.message.emit("nothing pasted: the clipboard does not hold Studio nodes")
            return []

    def _paste(
        self, data: dict[str, Any], at: tuple[float, float] | None, keep_links: bool
    ) -> list[str]:
        nodes = [nd for nd in data.get("nodes", []) if isinstance(nd, dict) and "type" in nd]
        if not nodes:
            return []
        layouts = data.get("layout", {}).get("nodes", {})
        xs = [layouts.get(nd.get("id"), {}).get("pos", [0, 0]) for nd in nodes]
        min_x = min(float(p[0]) for p in xs)
        min_y = min(float(p[1]) for p in xs)
        dx, dy = (at[0] - min_x, at[1] - min_y) if at is not None else (40.0, 40.0)
        fresh = {nd["id"]: new_id() for nd in nodes}
        ops: list[Any] = []
        for nd in nodes:
            known = ("id", "type", "version", "title", "params", "mute", "bypass")
            node = Node(
                id=fresh[nd["id"]],
                type=str(nd["type"]),
                version=int(nd.get("version", 1)),
                params=copy.deepcopy(dict(nd.get("params", {}))),
                title=str(nd.get("title", "")),
                mute=bool(nd.get("mute", False)),
                bypass=bool(nd.get("bypass", False)),
                extra={k: copy.deepcopy(v) for k, v in nd.items() if k not in known},
            )
            lay = layouts.get(nd["id"], {})
            pos = lay.get("pos", [0, 0])
            ops.append(
                c.AddNode(
                    node,
                    NodeLayout(
                        pos=(float(pos[0]) + dx, float(pos[1]) + dy),
                        collapsed=bool(lay.get("collapsed", False)),
                        color=lay.get("color"),
                        width=lay.get("width"),
                    ),
                )
            )
        for ld in data.get("links", []):
            if ld.get("source") in fresh and ld.get("target") in fresh:
                ops.append(
                    c.Connect(
                        Link(
                            new_id(),
                            fresh[ld["source"]],
                            ld["output"],
                            fresh[ld["target"]],
                            ld["input"],
                        )
                    )
                )
        if keep_links:
            for ld in data.get("incoming", []):
                if self.wf.has_node(ld.get("source", "")) and ld.get("target") in fresh:
                    ops.append(
                        c.Connect(
                            Link(
                                new_id(),
                                ld["source"],
                                ld["output"],
                                fresh[ld["target"]],
                                ld["input"],
                            )
                        )
                    )
        n = len(nodes)
        ok = self.push(f"Paste {n} node{'s' if n > 1 else ''}", ops)
        return [fresh[nd["id"]] for nd in nodes] if ok else []

    def duplicate(self, node_ids: Iterable[str]) -> list[str]:
        data = self.copy_data(node_ids)
        return self.paste(data, None, keep_links=True)


def _stored(node: Node, name: str) -> Any:
    """What undo must put back: the stored value, or ABSENT when the node had none (undo
    then forgets the param, so the default applies again and the file is as it was)."""
    return copy.deepcopy(node.params[name]) if name in node.params else c.ABSENT


def _first_fit(
    ports: list[tuple[str, ValueType]],
    other: ValueType | None,
    *,
    as_input: bool,
    exact: ValueType | None = None,
) -> str | None:
    """The first port that can take (as_input) or give a value of type ``other``."""
    if other is None:
        return ports[0][0] if ports else None
    fits = [
        (name, t)
        for name, t in ports
        if (can_connect(other, t) if as_input else can_connect(t, other))
    ]
    if exact is not None:
        fits = [f for f in fits if f[1] == exact] or fits
    # Prefer a port of the very same type (a MODEL wire goes to "model", not to an ANY).
    same = [name for name, t in fits if t == other]
    return (same or [name for name, _ in fits] or [None])[0]
