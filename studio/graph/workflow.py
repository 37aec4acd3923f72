"""The workflow model: nodes, links, and the layout kept beside them.

Edits go through :class:`Workflow` methods, which notify subscribers (the GUI's
scene follows these notifications). Layout (positions, frames, notes, reroutes,
viewport) is kept apart from the graph, so moving a node never touches anything
the engine hashes.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import WorkflowEditError
from studio.graph.types import ValueType, can_connect

if TYPE_CHECKING:
    from studio.graph.registry import Registry
    from studio.graph.spec import NodeSpec


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Node:
    """A node of a workflow: an instance of a node type with its params."""

    id: str
    type: str
    version: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    mute: bool = False
    bypass: bool = False
    #: Fields of the file this version does not know, kept so saving loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Link:
    """A link from ``(source node, output name)`` to ``(target node, input name)``."""

    id: str
    source: str
    output: str
    target: str
    input: str


@dataclass
class NodeLayout:
    pos: tuple[float, float] = (0.0, 0.0)
    collapsed: bool = False
    color: str | None = None
    pinned: bool = False
    width: float | None = None


@dataclass
class Frame:
    """A backdrop with a title and colour; moving it moves the nodes inside."""

    id: str
    title: str = "Frame"
    rect: tuple[float, float, float, float] = (0.0, 0.0, 400.0, 300.0)
    color: str = "#3a4a5a"


@dataclass
class Note:
    """A text note on the canvas; it computes nothing."""

    id: str
    text: str = ""
    pos: tuple[float, float] = (0.0, 0.0)
    size: tuple[float, float] = (240.0, 120.0)


@dataclass
class Layout:
    nodes: dict[str, NodeLayout] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    #: Reroute points along links, by link id.
    reroutes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    viewport: dict[str, Any] = field(default_factory=dict)


class ChangeKind(StrEnum):
    """What a :class:`Change` reports."""

    NODE_ADDED = "node_added"
    NODE_REMOVED = "node_removed"
    LINK_ADDED = "link_added"
    LINK_REMOVED = "link_removed"
    PARAM_CHANGED = "param_changed"
    FLAGS_CHANGED = "flags_changed"
    TITLE_CHANGED = "title_changed"
    #: A node's extra field (``name`` is the key, ``node_id`` the node).
    EXTRA_CHANGED = "extra_changed"
    #: A node's layout (``node_id``) or a link's reroutes (``link_id``).
    LAYOUT_CHANGED = "layout_changed"
    FRAMES_CHANGED = "frames_changed"
    NOTES_CHANGED = "notes_changed"
    #: The saved view of the canvas (not an edit: never undone, never re-validated).
    VIEWPORT_CHANGED = "viewport_changed"
    #: The whole content was replaced.
    RESET = "reset"

    @property
    def is_layout(self) -> bool:
        """Whether only the layout changed (nothing the engine reads)."""
        return self in _LAYOUT_KINDS


_LAYOUT_KINDS = frozenset(
    {
        ChangeKind.LAYOUT_CHANGED,
        ChangeKind.FRAMES_CHANGED,
        ChangeKind.NOTES_CHANGED,
        ChangeKind.VIEWPORT_CHANGED,
    }
)


@dataclass(frozen=True)
class Change:
    """A notification sent to subscribers after every edit."""

    kind: ChangeKind
    node_id: str | None = None
    link_id: str | None = None
    name: str | None = None
    old: Any = None
    new: Any = None


Listener = Callable[[Change], None]


class Workflow:
    """A workflow: nodes, links between their ports, and layout.

    ``registry`` resolves node types (for defaults, titles and checks): the app's
    (:func:`studio.library.installed_registry`) or a test's own.
    """

    def __init__(self, registry: Registry):
        self._registry = registry
        self._nodes: dict[str, Node] = {}
        self._links: dict[str, Link] = {}
        self._link_by_input: dict[tuple[str, str], str] = {}
        self.layout = Layout()
        self.extra: dict[str, Any] = {}
        self.path: Path | None = None
        self._listeners: list[Listener] = []

    # -- access -----------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    @property
    def links(self) -> list[Link]:
        return list(self._links.values())

    def has_node(self, node_id: str) -> bool:
        return node_id in self._nodes

    def get_node(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise WorkflowEditError(f"no node with id {node_id!r}") from None

    def get_link(self, link_id: str) -> Link | None:
        return self._links.get(link_id)

    def find_node(self, ref: str) -> Node:
        """A node by id, or by title when exactly one node has that title."""
        if ref in self._nodes:
            return self._nodes[ref]
        matches = [n for n in self._nodes.values() if (n.title or self._title_of(n)) == ref]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            titles = sorted({n.title or self._title_of(n) for n in self._nodes.values()})
            raise WorkflowEditError(
                f"no node with id or title {ref!r}; titles in this workflow: {', '.join(titles)}"
            )
        ids = ", ".join(n.id for n in matches)
        raise WorkflowEditError(
            f"{len(matches)} nodes are titled {ref!r} ({ids}); address one by its id"
        )

    def spec_of(self, node: Node | str) -> NodeSpec | None:
        n = self._nodes[node] if isinstance(node, str) else node
        return self.registry.get(n.type)

    def display_title(self, node: Node | str) -> str:
        n = self._nodes[node] if isinstance(node, str) else node
        return n.title or self._title_of(n)

    def _title_of(self, n: Node) -> str:
        spec = self.registry.get(n.type)
        return spec.title if spec else n.type

    def link_into(self, node_id: str, input_name: str) -> Link | None:
        lid = self._link_by_input.get((node_id, input_name))
        return self._links[lid] if lid else None

    def links_into(self, node_id: str) -> list[Link]:
        return [lk for lk in self._links.values() if lk.target == node_id]

    def links_from(self, node_id: str) -> list[Link]:
        return [lk for lk in self._links.values() if lk.source == node_id]

    # -- subscription ---------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(change)`` after every edit; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, change: Change) -> None:
        for listener in list(self._listeners):
            listener(change)

    # -- edits --------------------------------------------------------------------------

    def add_node(
        self,
        type_id: str,
        params: dict[str, Any] | None = None,
        *,
        title: str = "",
        id: str | None = None,
        pos: tuple[float, float] = (0.0, 0.0),
        version: int | None = None,
        mute: bool = False,
        bypass: bool = False,
    ) -> Node:
        """Add a node of ``type_id``; params not given take the type's defaults."""
        spec = self.registry.get(type_id)
        merged = spec.default_params() if spec else {}
        if params:
            merged.update(params)
        node_id = id or new_id()
        if node_id in self._nodes:
            raise WorkflowEditError(f"a node with id {node_id!r} already exists")
        n = Node(
            id=node_id,
            type=type_id,
            version=version if version is not None else (spec.version if spec else 1),
            params=merged,
            title=title,
            mute=mute,
            bypass=bypass,
        )
        self.insert_node(n, NodeLayout(pos=(float(pos[0]), float(pos[1]))))
        return n

    def insert_node(self, node: Node, layout: NodeLayout | None = None) -> None:
        """Insert a prepared node (used by undo and paste)."""
        if node.id in self._nodes:
            raise WorkflowEditError(f"a node with id {node.id!r} already exists")
        self._nodes[node.id] = node
        self.layout.nodes[node.id] = layout or NodeLayout()
        self._notify(Change(ChangeKind.NODE_ADDED, node_id=node.id))

    def remove_node(self, node_id: str) -> tuple[Node, NodeLayout, list[Link]]:
        """Remove a node and its links; returns what was removed (for undo)."""
        node = self.get_node(node_id)
        removed_links = [lk for lk in self._links.values() if node_id in (lk.source, lk.target)]
        for lk in removed_links:
            self.remove_link(lk.id)
        del self._nodes[node_id]
        layout = self.layout.nodes.pop(node_id, NodeLayout())
        self._notify(Change(ChangeKind.NODE_REMOVED, node_id=node_id, old=node))
        return node, layout, removed_links

    def connect(
        self, source: str, output: str, target: str, input: str, *, id: str | None = None
    ) -> Link:
        """Link ``source.output`` to ``target.input``, replacing a link already there.

        Raises :class:`WorkflowEditError` for unknown nodes or ports, a type that does
        not fit, or a link that would close a cycle.
        """
        src, dst = self.get_node(source), self.get_node(target)
        src_spec, dst_spec = self.registry.get(src.type), self.registry.get(dst.type)
        if src_spec is not None and dst_spec is not None:
            out_spec, in_spec = src_spec.output(output), dst_spec.input(input)
            if out_spec is None:
                raise WorkflowEditError(f"{src_spec.title} has no output {output!r}")
            if in_spec is None:
                raise WorkflowEditError(f"{dst_spec.title} has no input {input!r}")
            if not can_connect(out_spec.type, in_spec.type):
                raise WorkflowEditError(
                    f"cannot connect {src_spec.title}.{output} ({out_spec.type}) to "
                    f"{dst_spec.title}.{input} ({in_spec.type})"
                )
        if self.would_cycle(source, target):
            raise WorkflowEditError("that link would make a cycle")
        old = self.link_into(target, input)
        if old is not None:
            self.remove_link(old.id)
        link = Link(id=id or new_id(), source=source, output=output, target=target, input=input)
        self.insert_link(link)
        return link

    def insert_link(self, link: Link) -> None:
        key = (link.target, link.input)
        if key in self._link_by_input:
            raise WorkflowEditError(f"input {link.input!r} of node {link.target} is already linked")
        self._links[link.id] = link
        self._link_by_input[key] = link.id
        self._notify(Change(ChangeKind.LINK_ADDED, link_id=link.id, node_id=link.target))

    def remove_link(self, link_id: str) -> Link:
        link = self._links.pop(link_id)
        del self._link_by_input[(link.target, link.input)]
        self.layout.reroutes.pop(link_id, None)
        self._notify(
            Change(ChangeKind.LINK_REMOVED, link_id=link_id, node_id=link.target, old=link)
        )
        return link

    def would_cycle(self, source: str, target: str) -> bool:
        """Whether a link from ``source`` to ``target`` would close a cycle."""
        return source == target or self._reaches(target, source)

    def _reaches(self, start: str, goal: str) -> bool:
        """Whether ``goal`` is downstream of ``start`` (iterative, no recursion)."""
        out: dict[str, list[str]] = {}
        for lk in self._links.values():
            out.setdefault(lk.source, []).append(lk.target)
        stack, seen = [start], {start}
        while stack:
            cur = stack.pop()
            if cur == goal:
                return True
            for nxt in out.get(cur, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    def set_param(self, node: str, name: str, value: Any) -> None:
        """Set a param of a node addressed by id or unique title, checking it against the spec."""
        n = self.find_node(node)
        spec = self.registry.get(n.type)
        label = f"{self.display_title(n)} ({n.id})"
        if spec is None:
            raise WorkflowEditError(f"node {label} has unknown type {n.type!r}; cannot set params")
        inp = spec.input(name)
        if inp is None or not inp.is_param:
            names = ", ".join(i.name for i in spec.params) or "none"
            raise WorkflowEditError(f"node {label} has no param {name!r}; its params: {names}")
        problem = inp.check(value)
        if problem:
            raise WorkflowEditError(f"node {label}, param {name!r}: {problem}")
        self.put_param(n.id, name, inp.coerce(value))

    def put_param(self, node_id: str, name: str, value: Any) -> None:
        """Set a param without checking it (the GUI's editors already constrain values)."""
        n = self.get_node(node_id)
        old = n.params.get(name)
        if name in n.params and old == value and type(old) is type(value):
            return
        n.params[name] = value
        self._notify(
            Change(ChangeKind.PARAM_CHANGED, node_id=node_id, name=name, old=old, new=value)
        )

    def remove_param(self, node_id: str, name: str) -> None:
        """Forget a stored param, so the type's default applies (undo of a first edit)."""
        n = self.get_node(node_id)
        if name not in n.params:
            return
        old = n.params.pop(name)
        spec = self.registry.get(n.type)
        inp = spec.input(name) if spec else None
        new = inp.default if inp is not None else None
        self._notify(Change(ChangeKind.PARAM_CHANGED, node_id=node_id, name=name, old=old, new=new))

    def set_flags(
        self, node_id: str, *, mute: bool | None = None, bypass: bool | None = None
    ) -> None:
        n = self.get_node(node_id)
        old = (n.mute, n.bypass)
        if mute is not None:
            n.mute = mute
        if bypass is not None:
            n.bypass = bypass
        if (n.mute, n.bypass) != old:
            self._notify(
                Change(ChangeKind.FLAGS_CHANGED, node_id=node_id, old=old, new=(n.mute, n.bypass))
            )

    def set_title(self, node_id: str, title: str) -> None:
        n = self.get_node(node_id)
        old, n.title = n.title, title
        if old != title:
            self._notify(Change(ChangeKind.TITLE_CHANGED, node_id=node_id, old=old, new=title))

    def set_node_extra(self, node_id: str, key: str, value: Any) -> None:
        """Set (or, with ``None``, remove) one of a node's extra fields: data a front end
        keeps with the node and saves with the workflow (the engine ignores it)."""
        node = self.get_node(node_id)
        old = node.extra.get(key)
        if value is None:
            node.extra.pop(key, None)
        else:
            node.extra[key] = copy.deepcopy(value)
        if old != value:
            self._notify(
                Change(ChangeKind.EXTRA_CHANGED, node_id=node_id, name=key, old=old, new=value)
            )

    def set_node_layout(self, node_id: str, **changes: Any) -> None:
        """Change a node's layout fields (pos, collapsed, color, pinned, width)."""
        lay = self.layout.nodes.setdefault(node_id, NodeLayout())
        for key, value in changes.items():
            if key == "pos":
                value = (float(value[0]), float(value[1]))
            setattr(lay, key, value)
        self._notify(Change(ChangeKind.LAYOUT_CHANGED, node_id=node_id, new=changes))

    def set_reroutes(self, link_id: str, points: list[tuple[float, float]]) -> None:
        """Set the reroute points along a link (an empty list removes them, also those of
        a link that is gone)."""
        pts = [(float(x), float(y)) for x, y in points]
        if link_id not in self._links and pts:
            raise WorkflowEditError(f"no link with id {link_id!r}")
        if pts:
            self.layout.reroutes[link_id] = pts
        else:
            self.layout.reroutes.pop(link_id, None)
        self._notify(Change(ChangeKind.LAYOUT_CHANGED, link_id=link_id, new=pts))

    def set_frames(self, frames: list[Frame]) -> None:
        self.layout.frames = list(frames)
        self._notify(Change(ChangeKind.FRAMES_CHANGED))

    def set_notes(self, notes: list[Note]) -> None:
        self.layout.notes = list(notes)
        self._notify(Change(ChangeKind.NOTES_CHANGED))

    def set_viewport(self, viewport: dict[str, Any]) -> None:
        """Remember how the canvas was looking at the workflow (saved with it)."""
        old, self.layout.viewport = self.layout.viewport, dict(viewport)
        if old != self.layout.viewport:
            self._notify(Change(ChangeKind.VIEWPORT_CHANGED, old=old, new=dict(viewport)))

    # -- whole-document operations --------------------------------------------------------

    def replace_with(self, other: Workflow) -> None:
        """Take over the content of ``other`` (used when reverting or opening in place)."""
        self._nodes = other._nodes
        self._links = other._links
        self._link_by_input = other._link_by_input
        self.layout = other.layout
        self.extra = other.extra
        self._notify(Change(ChangeKind.RESET))

    def copy(self) -> Workflow:
        from studio.graph.fileformat import workflow_from_dict, workflow_to_dict

        wf = workflow_from_dict(copy.deepcopy(workflow_to_dict(self)), registry=self._registry)
        wf.path = self.path
        return wf

    def subgraph(self, node_ids: Iterable[str]) -> dict[str, Any]:
        """The given nodes, the links among them, and their layout, as file data (for copy)."""
        from studio.graph.fileformat import workflow_to_dict

        keep = set(node_ids)
        data = workflow_to_dict(self)
        data["nodes"] = [n for n in data["nodes"] if n["id"] in keep]
        data["links"] = [
            lk for lk in data["links"] if lk["source"] in keep and lk["target"] in keep
        ]
        data["layout"]["nodes"] = {k: v for k, v in data["layout"]["nodes"].items() if k in keep}
        data["layout"]["reroutes"] = {}
        data["layout"]["frames"] = []
        data["layout"]["notes"] = []
        return data

    def save(self, path: str | Path) -> None:
        """Write the workflow as a Studio workflow file (atomically)."""
        from studio.graph.fileformat import save_workflow

        save_workflow(self, path)
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"<Workflow {len(self._nodes)} nodes, {len(self._links)} links>"


def param_value(node: Node, spec: NodeSpec, name: str) -> Any:
    inp = spec.input(name)
    if name in node.params:
        return node.params[name]
    return inp.default if inp is not None else None


__all__ = [
    "Change",
    "ChangeKind",
    "Frame",
    "Layout",
    "Link",
    "Node",
    "NodeLayout",
    "Note",
    "ValueType",
    "Workflow",
    "new_id",
]
