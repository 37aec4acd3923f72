"""ComfyUI workflows in Studio: the UI ("workflow") format, versions 0.4 and 1, and the
API ("prompt") format (see docs/importing.md).

Both formats are first read into one plain form (:class:`_CNode`: values and links by
ComfyUI input name), which is then mapped onto Studio's node types through
:data:`~studio.graph.importers.comfyui_map.NODE_MAPS`. ComfyUI's node ids become Studio's
node ids, so ``studio run wf.json --set 3.seed=7`` addresses the same node. Node types
Studio has no equivalent for become placeholders that keep what ComfyUI wrote. Nothing
is dropped silently: every difference is a report line, and the workflow gets a note
listing them.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import WorkflowFileError
from studio.graph.importers import ImportResult, saveable
from studio.graph.importers.comfyui_fold import (
    NOT_A_CHAIN,
    fold_custom_sampling,
    split_prompt_nodes,
)
from studio.graph.importers.comfyui_map import (
    CLIP_SET_LAST_LAYER,
    CUSTOM_SAMPLING,
    FRONTEND_TYPES,
    LOAD_IMAGE_MASK,
    MULTI_TEXT_ENCODES,
    NODE_MAPS,
    NOT_MAPPED,
    PASS_THROUGH,
    PLACEHOLDER_PREFIX,
    SAMPLER_TYPES,
    SEED_WIDGETS,
    NodeMap,
    sampled_latent_sizes,
    sampler_schedule,
)
from studio.graph.importers.tidy import MIN_GAP, node_size, tidy_layout
from studio.graph.seeds import EXTRA_KEY as SEED_EXTRA_KEY
from studio.graph.seeds import SeedControl
from studio.graph.workflow import Frame, Link, Node, NodeLayout, Note, Workflow

if TYPE_CHECKING:
    from studio.graph.registry import Registry

#: Subgraphs inside subgraphs, at most this deep.
MAX_SUBGRAPH_DEPTH = 16
#: Node ids of a subgraph's input and output boundary (ComfyUI's frontend).
_SUBGRAPH_IN, _SUBGRAPH_OUT = "-10", "-20"
_EXTENSION = "{!r} comes from a ComfyUI extension Studio does not have"


def looks_like_comfyui(data: Any) -> str | None:
    """``"comfyui-ui"``, ``"comfyui-api"`` or None for parsed JSON."""
    if not isinstance(data, dict) or not data:
        return None
    if isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list):
        return "comfyui-ui"
    if all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "comfyui-api"
    return None


def import_comfyui(
    data: dict[str, Any], registry: Registry, *, source: str, preface: list[str] | None = None
) -> ImportResult:
    """A Studio workflow from a ComfyUI workflow (UI format) or prompt (API format).

    ``source`` names the file in messages and in the note the workflow gets. Raises
    :class:`~studio.errors.WorkflowFileError` (naming ``source`` and the node) for data
    that is neither format or is broken: a link to a missing node, a ``widgets_values``
    list of the wrong length for a known node type, ... ``preface`` lines start the report
    (what the caller already noticed about the file).
    """
    kind = looks_like_comfyui(data)
    if kind is None:
        raise WorkflowFileError(source, "is neither a Studio workflow nor a ComfyUI workflow")
    reader = _Reader(source)
    reader.report.extend(preface or ())
    if kind == "comfyui-ui":
        graph = reader.read_ui(data)
        version = data.get("version")
        label = f"ComfyUI workflow (UI format{f' v{version}' if version is not None else ''})"
    else:
        graph = reader.read_api(data)
        label = "ComfyUI prompt (API format)"
    split_prompt_nodes(graph, reader.report)
    fold_custom_sampling(graph, reader.report)
    _fold_clip_set_last_layer(graph, reader.report)
    _drop_pass_through(graph, reader.report)
    wf = _Builder(registry, graph, reader.report, source).build()
    if kind == "comfyui-api":
        layout_layers(wf)
    else:
        tidy_layout(wf, {cn.id: cn.ui_height for cn in graph.nodes.values() if cn.ui_height})
    _add_import_note(wf, source, label, reader.report)
    return saveable(ImportResult(wf, list(reader.report), kind), source)


# -- one plain form for both formats --------------------------------------------------------


@dataclass
class _CNode:
    id: str
    class_type: str
    #: Widget values by ComfyUI input name.
    values: dict[str, Any] = field(default_factory=dict)
    #: ComfyUI input name -> (source node id, output slot).
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Seed controls by ComfyUI widget name, as written.
    controls: dict[str, Any] = field(default_factory=dict)
    #: Studio params set by folding (clip skip).
    studio_params: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    mode: int = 0
    layout: NodeLayout | None = None
    #: The node's height in the UI format (its layout is tidied with it).
    ui_height: float | None = None
    #: The UI format's raw widget values and port names (kept on placeholders).
    widgets_values: Any = None
    ui_inputs: list[str] = field(default_factory=list)
    ui_outputs: list[str] = field(default_factory=list)


@dataclass
class _Graph:
    nodes: dict[str, _CNode] = field(default_factory=dict)
    #: Reroute points of the link into (target id, ComfyUI input name).
    reroutes: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    #: Why a node stays a placeholder, where the type's own reason does not say it.
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class _RawLink:
    id: str
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    parent: Any = None  # a native (v1) reroute the link passes through


class _Reader:
    def __init__(self, source: str):
        self.source = source
        self.report: list[str] = []
        self._link_parents: dict[str, Any] = {}

    def fail(self, message: str) -> WorkflowFileError:
        return WorkflowFileError(self.source, message)

    # -- API format -----------------------------------------------------------------------

    def read_api(self, data: dict[str, Any]) -> _Graph:
        g = _Graph()
        for nid, nd in data.items():
            ct = nd.get("class_type")
            inputs = nd.get("inputs", {})
            if not isinstance(ct, str) or not ct:
                raise self.fail(f"node {nid} has no class_type")
            if not isinstance(inputs, dict):
                raise self.fail(f'node {nid} ({ct}): "inputs" is not an object')
            meta = nd.get("_meta")
            title = meta.get("title", "") if isinstance(meta, dict) else ""
            cn = _CNode(str(nid), ct, title=title if isinstance(title, str) else "")
            for name, value in inputs.items():
                if _is_api_link(value):
                    src = str(value[0])
                    if src not in data:
                        raise self.fail(
                            f"node {nid} ({ct}): input {name!r} is linked to node {src}, "
                            "which is not in the file"
                        )
                    cn.links[name] = (src, value[1])
                else:
                    cn.values[name] = value
            g.nodes[cn.id] = cn
        return g

    # -- UI format ------------------------------------------------------------------------

    def read_ui(self, data: dict[str, Any]) -> _Graph:
        defs = self._subgraph_defs(data)
        nodes = [n for n in data["nodes"] if self._check_node(n)]
        links = [self._raw_link(lk, i) for i, lk in enumerate(data["links"]) if lk is not None]
        nodes, links = self._flatten(nodes, links, defs, 0)
        g = _Graph()
        raw: dict[str, dict[str, Any]] = {}
        for n in nodes:
            if str(n["id"]) in raw:
                raise self.fail(f"has two nodes with id {n['id']!r}")
            raw[str(n["id"])] = n
        for lk in links:
            for end, slot in ((lk.origin, lk.origin_slot), (lk.target, lk.target_slot)):
                if end not in raw:
                    raise self.fail(f"link {lk.id} joins node {end}, which is not in the file")
                if not isinstance(slot, int) or isinstance(slot, bool) or slot < 0:
                    raise self.fail(f"link {lk.id} has a broken slot number {slot!r}")
        by_id = {lk.id: lk for lk in links}
        for nid, nd in raw.items():
            ct = nd["type"]
            if ct in ("Note", "MarkdownNote"):
                g.notes.append(self._note(nd))
            elif ct not in FRONTEND_TYPES:
                g.nodes[nid] = self._ui_node(nd)
        native_reroutes = self._native_reroutes(data)
        for lk in links:
            if raw[lk.target]["type"] in FRONTEND_TYPES:
                continue
            self._resolve_link(lk, raw, by_id, native_reroutes, g)
        self._groups(data, g)
        return g

    def _subgraph_defs(self, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        defs = data.get("definitions")
        subgraphs = defs.get("subgraphs", []) if isinstance(defs, dict) else []
        if not isinstance(subgraphs, list):
            raise self.fail('"definitions.subgraphs" is not a list')
        out = {}
        for sg in subgraphs:
            if not isinstance(sg, dict) or not isinstance(sg.get("id"), str):
                raise self.fail("a subgraph definition has no id")
            if not isinstance(sg.get("nodes", []), list) or not isinstance(
                sg.get("links", []), list
            ):
                raise self.fail(f"subgraph {sg['id']} has no node or link list")
            out[sg["id"]] = sg
        return out

    def _check_node(self, nd: Any) -> bool:
        if not isinstance(nd, dict) or not _is_id(nd.get("id")):
            raise self.fail("a node is not an object with an id")
        if not isinstance(nd.get("type"), str) or not nd["type"]:
            raise self.fail(f"node {nd['id']} has no type")
        return True

    def _raw_link(self, lk: Any, i: int) -> _RawLink:
        if isinstance(lk, list) and len(lk) >= 5:
            parts, parent = lk[:5], None
        elif isinstance(lk, dict) and all(
            k in lk for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")
        ):
            parts = [lk[k] for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")]
            parent = lk.get("parentId")
        else:
            raise self.fail(f"link {i + 1} is neither a ComfyUI link list nor a link object")
        lid, origin, oslot, target, tslot = parts
        for value in (lid, origin, target):
            if not _is_id(value):
                raise self.fail(f"link {i + 1} has a broken id {value!r}")
        for slot in (oslot, tslot):
            if not isinstance(slot, int) or isinstance(slot, bool) or slot < 0:
                raise self.fail(f"link {lid} has a broken slot number {slot!r}")
        return _RawLink(
            str(lid), str(origin), oslot, str(target), tslot, parent if _is_id(parent) else None
        )

    def _flatten(
        self,
        nodes: list[dict[str, Any]],
        links: list[_RawLink],
        defs: dict[str, dict[str, Any]],
        depth: int,
    ) -> tuple[list[dict[str, Any]], list[_RawLink]]:
        """Subgraph instances replaced by their inner nodes (ids ``instance:inner``)."""
        out_nodes: list[dict[str, Any]] = []
        for nd in nodes:
            sg = defs.get(nd["type"])
            if sg is None:
                out_nodes.append(nd)
                continue
            if depth >= MAX_SUBGRAPH_DEPTH:
                raise self.fail(f"subgraphs are nested more than {MAX_SUBGRAPH_DEPTH} deep")
            inst = str(nd["id"])
            name = sg.get("name") or sg["id"]
            self.report.append(
                f"subgraph {name!r} (node {inst}) was flattened: its nodes are "
                f"{inst}:<id> in this workflow"
            )
            if nd.get("widgets_values"):
                self.report.append(
                    f"subgraph {name!r} (node {inst}): values shown on the subgraph node were "
                    "not applied; the values inside the subgraph are used"
                )
            inner_nodes, inner_links = self._instance(nd, sg, inst)
            inner_nodes, inner_links = self._flatten(inner_nodes, inner_links, defs, depth + 1)
            out_nodes.extend(inner_nodes)
            links = _splice(links, inner_links, inst)
        return out_nodes, links

    def _instance(
        self, nd: dict[str, Any], sg: dict[str, Any], inst: str
    ) -> tuple[list[dict[str, Any]], list[_RawLink]]:
        inner = [n for n in _items(sg.get("nodes")) if self._check_node(n)]
        xs = [n["pos"][0] for n in inner if _is_pair(n.get("pos"))]
        ys = [n["pos"][1] for n in inner if _is_pair(n.get("pos"))]
        base = nd.get("pos") if _is_pair(nd.get("pos")) else (0.0, 0.0)
        dx, dy = (base[0] - min(xs), base[1] - min(ys)) if xs else (0.0, 0.0)
        nodes = []
        for n in inner:
            n = dict(n, id=f"{inst}:{n['id']}")
            if _is_pair(n.get("pos")):
                n["pos"] = [n["pos"][0] + dx, n["pos"][1] + dy]
            if nd.get("mode") in (2, 4) and not n.get("mode"):
                n["mode"] = nd["mode"]
            nodes.append(n)

        def inner_id(x: str) -> str:
            return x if x in (_SUBGRAPH_IN, _SUBGRAPH_OUT) else f"{inst}:{x}"

        links = []
        for i, lk in enumerate(_items(sg.get("links"))):
            r = self._raw_link(lk, i)
            links.append(
                _RawLink(
                    f"{inst}:{r.id}",
                    inner_id(r.origin),
                    r.origin_slot,
                    inner_id(r.target),
                    r.target_slot,
                )
            )
        return nodes, links

    def _ui_node(self, nd: dict[str, Any]) -> _CNode:
        nid, ct = str(nd["id"]), nd["type"]
        title = nd.get("title") if isinstance(nd.get("title"), str) else ""
        mode = nd.get("mode", 0)
        cn = _CNode(nid, ct, title=title or "", mode=mode if isinstance(mode, int) else 0)
        cn.layout = _ui_layout(nd)
        size = nd.get("size")
        if isinstance(size, dict):  # very old files: {"0": w, "1": h}
            size = [size.get("0", 0), size.get("1", 0)]
        if _is_pair(size) and size[1] > 0:
            cn.ui_height = float(size[1])
        cn.ui_inputs = [_input_name(i) for i in _items(nd.get("inputs")) if isinstance(i, dict)]
        cn.ui_outputs = [
            str(o.get("name", i))
            for i, o in enumerate(_items(nd.get("outputs")))
            if isinstance(o, dict)
        ]
        wv = nd.get("widgets_values", [])
        cn.widgets_values = wv
        nm = NODE_MAPS.get(ct)
        if nm is not None:
            self._named_widgets(cn, nm, wv)
        elif ct == CLIP_SET_LAST_LAYER and isinstance(wv, list) and wv:
            cn.values["stop_at_clip_layer"] = wv[0]
        elif ct in CUSTOM_SAMPLING or ct in MULTI_TEXT_ENCODES:
            widgets = CUSTOM_SAMPLING.get(ct, MULTI_TEXT_ENCODES.get(ct, ()))
            self._named_widgets(cn, NodeMap("", ct, widgets), wv)
        return cn

    def _named_widgets(self, cn: _CNode, nm: NodeMap, wv: Any) -> None:
        if isinstance(wv, dict):  # some frontends write widget values by name
            cn.values.update({k: wv[k] for k in nm.widgets if k in wv})
            return
        if wv is None:
            wv = []
        if not isinstance(wv, list):
            raise self.fail(f'node {cn.id} ({cn.class_type}): "widgets_values" is not a list')
        seeds = [w for w in nm.widgets if w in SEED_WIDGETS]
        full = len(nm.widgets) + len(seeds)
        allowed = {full, full + nm.trailing} | ({len(nm.widgets)} if seeds else set())
        allowed |= set(nm.older)
        if len(wv) not in allowed:
            expected = " or ".join(str(n) for n in sorted(allowed))
            raise self.fail(
                f"node {cn.id} ({cn.class_type}) has {len(wv)} widget values; a "
                f"{cn.class_type} has {expected} ({', '.join(nm.widgets) or 'none'})"
            )
        with_controls = bool(seeds) and len(wv) >= full
        i = 0
        # An older file's fewer widgets are the leading ones; the rest keep their defaults.
        for name in nm.widgets[: len(wv)] if len(wv) < len(nm.widgets) else nm.widgets:
            cn.values[name] = wv[i]
            i += 1
            if name in SEED_WIDGETS and with_controls:
                cn.controls[name] = wv[i]
                i += 1

    def _note(self, nd: dict[str, Any]) -> Note:
        wv = nd.get("widgets_values")
        text = wv[0] if isinstance(wv, list) and wv and isinstance(wv[0], str) else ""
        lay = _ui_layout(nd)
        size = nd.get("size")
        return Note(
            id=f"note-{nd['id']}",
            text=text,
            pos=lay.pos,
            size=(float(size[0]), float(size[1])) if _is_pair(size) else (240.0, 120.0),
        )

    def _native_reroutes(self, data: dict[str, Any]) -> dict[Any, tuple[Any, tuple[float, float]]]:
        """Reroutes of newer frontends (``extra.reroutes``): id -> (parent id, point)."""
        extra = data.get("extra")
        items = extra.get("reroutes") if isinstance(extra, dict) else None
        out = {}
        for r in items if isinstance(items, list) else []:
            if isinstance(r, dict) and _is_id(r.get("id")) and _is_pair(r.get("pos")):
                parent = r.get("parentId") if _is_id(r.get("parentId")) else None
                out[r["id"]] = (parent, (float(r["pos"][0]), float(r["pos"][1])))
        if isinstance(extra, dict) and isinstance(extra.get("linkExtensions"), list):
            self._link_parents = {
                str(e["id"]): e.get("parentId")
                for e in extra["linkExtensions"]
                if isinstance(e, dict) and _is_id(e.get("id")) and _is_id(e.get("parentId"))
            }
        else:
            self._link_parents = {}
        return out

    def _resolve_link(
        self,
        lk: _RawLink,
        raw: dict[str, dict[str, Any]],
        by_id: dict[str, _RawLink],
        native: dict[Any, tuple[Any, tuple[float, float]]],
        g: _Graph,
    ) -> None:
        """A link into a real node, followed back through Reroute nodes to its source."""
        target = g.nodes[lk.target]
        inputs = _items(raw[lk.target].get("inputs"))
        if lk.target_slot >= len(inputs) or not isinstance(inputs[lk.target_slot], dict):
            raise self.fail(
                f"link {lk.id} goes into input slot {lk.target_slot} of node {lk.target} "
                f"({target.class_type}), which has no such input"
            )
        name = _input_name(inputs[lk.target_slot])
        points: list[tuple[float, float]] = []
        cur, seen = lk, set()
        while True:
            points[:0] = _native_points(cur, native, self._link_parents)
            src = raw[cur.origin]
            if src["type"] != "Reroute":
                break
            points.insert(0, _center(src))
            if cur.origin in seen:
                raise self.fail(f"reroute {cur.origin} is part of a loop")
            seen.add(cur.origin)
            into = [x for x in by_id.values() if x.target == cur.origin]
            if not into:
                self.report.append(
                    f"{_label(target)}: input {name!r} came from a reroute with nothing "
                    "connected to it; the link was dropped"
                )
                return
            cur = into[0]
        if src["type"] == "PrimitiveNode":
            self._primitive(src, target, name)
            return
        if src["type"] in FRONTEND_TYPES:
            return
        target.links[name] = (cur.origin, cur.origin_slot)
        if points:
            g.reroutes[(target.id, name)] = points

    def _primitive(self, prim: dict[str, Any], target: _CNode, name: str) -> None:
        wv = prim.get("widgets_values")
        if not isinstance(wv, list) or not wv:
            self.report.append(f"{_label(target)}: the primitive feeding {name!r} has no value")
            return
        target.values[name] = wv[0]
        if name in SEED_WIDGETS and len(wv) > 1:
            target.controls[name] = wv[1]
        title = prim.get("title") or "primitive"
        self.report.append(
            f"{_label(target)}: {name!r} = {wv[0]!r} written in from {title!r} "
            f"(node {prim['id']}); Studio has no primitive node fed into params"
        )

    def _groups(self, data: dict[str, Any], g: _Graph) -> None:
        groups = data.get("groups") or []
        for i, gr in enumerate(groups if isinstance(groups, list) else []):
            if not isinstance(gr, dict):
                continue
            b = gr.get("bounding")
            if not (isinstance(b, list) and len(b) == 4 and all(_is_num(x) for x in b)):
                continue
            color = gr.get("color")
            g.frames.append(
                Frame(
                    id=f"group-{gr.get('id', i + 1)}",
                    title=str(gr.get("title", "Group")),
                    rect=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    color=color if isinstance(color, str) and color else "#3a4a5a",
                )
            )


def _splice(links: list[_RawLink], inner: list[_RawLink], inst: str) -> list[_RawLink]:
    """Outer links into and out of subgraph node ``inst`` joined to the inner links."""
    into_inner = [lk for lk in inner if lk.origin == _SUBGRAPH_IN]
    out_of_inner = [lk for lk in inner if lk.target == _SUBGRAPH_OUT]
    result = [lk for lk in inner if lk.origin != _SUBGRAPH_IN and lk.target != _SUBGRAPH_OUT]
    for lk in links:
        if lk.target == inst:
            for i in into_inner:
                if i.origin_slot == lk.target_slot:
                    result.append(
                        _RawLink(
                            f"{lk.id}>{i.id}", lk.origin, lk.origin_slot, i.target, i.target_slot
                        )
                    )
            continue
        if lk.origin == inst:
            for o in out_of_inner:
                if o.target_slot == lk.origin_slot:
                    result.append(
                        _RawLink(
                            f"{o.id}>{lk.id}", o.origin, o.origin_slot, lk.target, lk.target_slot
                        )
                    )
            continue
        result.append(lk)
    return result


def _native_points(lk: _RawLink, native: dict[Any, Any], parents: dict[str, Any]) -> list:
    parent = lk.parent if lk.parent is not None else parents.get(lk.id)
    points, seen = [], set()
    while parent is not None and parent in native and parent not in seen:
        seen.add(parent)
        parent, point = native[parent]
        points.insert(0, point)
    return points


def _is_api_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _items(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _is_id(x: Any) -> bool:
    return isinstance(x, str | int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_pair(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) >= 2 and _is_num(v[0]) and _is_num(v[1])


def _input_name(inp: dict[str, Any]) -> str:
    widget = inp.get("widget")
    if isinstance(widget, dict) and isinstance(widget.get("name"), str):
        return widget["name"]
    return str(inp.get("name", ""))


def _center(nd: dict[str, Any]) -> tuple[float, float]:
    pos = nd.get("pos") if _is_pair(nd.get("pos")) else (0.0, 0.0)
    size = nd.get("size") if _is_pair(nd.get("size")) else (75.0, 26.0)
    return (float(pos[0]) + float(size[0]) / 2, float(pos[1]) + float(size[1]) / 2)


def _ui_layout(nd: dict[str, Any]) -> NodeLayout:
    pos = nd.get("pos")
    if isinstance(pos, dict):  # very old files: {"0": x, "1": y}
        pos = [pos.get("0", 0), pos.get("1", 0)]
    size = nd.get("size")
    if isinstance(size, dict):
        size = [size.get("0", 0), size.get("1", 0)]
    flags = nd.get("flags") if isinstance(nd.get("flags"), dict) else {}
    color = nd.get("bgcolor") or nd.get("color")
    return NodeLayout(
        pos=(float(pos[0]), float(pos[1])) if _is_pair(pos) else (0.0, 0.0),
        collapsed=bool(flags.get("collapsed", False)),
        color=color if isinstance(color, str) else None,
        width=float(size[0]) if _is_pair(size) and size[0] > 0 else None,
    )


def _label(cn: _CNode) -> str:
    return f"{cn.title or cn.class_type} ({cn.id})"


# -- CLIPSetLastLayer becomes the clip skip of the Text Encodes it feeds ---------------------


def _fold_clip_set_last_layer(g: _Graph, report: list[str]) -> None:
    for cn in [c for c in g.nodes.values() if c.class_type == CLIP_SET_LAST_LAYER]:
        if cn.mode == 2:
            continue
        encodes = _clip_consumers(g, cn.id)
        if encodes is None:
            continue
        src = cn.links.get("clip")
        layer = cn.values.get("stop_at_clip_layer", -1)
        if cn.mode != 4:
            if not _is_num(layer):
                continue
            for enc in encodes:
                enc.studio_params["clip_skip"] = -int(layer)
        _remove_node(g, cn.id, src)
        shown = ", ".join(_label(e) for e in encodes) or "no node"
        report.append(
            f"{_label(cn)} (stop at layer {layer}) became the clip skip {-int(layer)} of {shown}"
            if cn.mode != 4
            else f"{_label(cn)} was bypassed and removed"
        )


def _remove_node(g: _Graph, node_id: str, src: tuple[str, int] | None) -> None:
    """Take a node out of the graph: what its outputs fed takes ``src`` instead (or is left
    unconnected when None)."""
    for other in g.nodes.values():
        for name, (s, _slot) in list(other.links.items()):
            if s == node_id:
                if src is None:
                    del other.links[name]
                else:
                    other.links[name] = src
                g.reroutes.pop((other.id, name), None)
    del g.nodes[node_id]


def _drop_pass_through(g: _Graph, report: list[str]) -> None:
    """Model patches Studio does without (:data:`PASS_THROUGH`) go; what their MODEL fed
    now takes the model they were given."""
    for cn in [c for c in g.nodes.values() if c.class_type in PASS_THROUGH]:
        if cn.mode == 2:
            continue
        _remove_node(g, cn.id, cn.links.get("model"))
        for key in [k for k in g.reroutes if k[0] == cn.id]:
            del g.reroutes[key]
        report.append(
            f"{_label(cn)} was removed: {PASS_THROUGH[cn.class_type]}"
            if cn.mode != 4
            else f"{_label(cn)} was bypassed and removed"
        )


def _clip_consumers(g: _Graph, start: str) -> list[_CNode] | None:
    """The Text Encodes a CLIP output reaches through Load LoRAs; None when something
    else uses it (then the clip skip cannot be folded)."""
    encodes: list[_CNode] = []
    queue, seen = deque([(start, 0)]), set()
    while queue:
        nid, slot = queue.popleft()
        for cn in g.nodes.values():
            for name, (s, sl) in cn.links.items():
                if (s, sl) != (nid, slot):
                    continue
                if cn.class_type in ("CLIPTextEncode", "CLIPTextEncodeSDXL") and name == "clip":
                    encodes.append(cn)
                elif cn.class_type == "LoraLoader" and name == "clip":
                    if cn.id not in seen:
                        seen.add(cn.id)
                        queue.append((cn.id, 1))
                elif cn.class_type == CLIP_SET_LAST_LAYER:
                    pass  # a later one sets the layer anew
                else:
                    return None
    return encodes


# -- onto Studio's node types ------------------------------------------------------------------


class _Builder:
    def __init__(self, registry: Registry, g: _Graph, report: list[str], source: str):
        self.registry = registry
        self.g = g
        self.report = report
        self.source = source
        self.wf = Workflow(registry)
        self.outputs: dict[str, tuple[str, ...]] = {}
        #: Node id -> (label, the ComfyUI width and height Studio takes from the latent).
        self.latent_sizes: dict[str, tuple[str, tuple[Any, ...]]] = {}
        #: Links between the Studio nodes one ComfyUI node became.
        self.inner_links: list[Link] = []

    def build(self) -> Workflow:
        for cn in self.g.nodes.values():
            nm = NODE_MAPS.get(cn.class_type)
            if cn.class_type == LOAD_IMAGE_MASK:
                if self.load_image_mask(cn):
                    continue
                nm = None  # a channel Studio lacks: a placeholder
            if nm is not None and self.registry.get(nm.studio) is not None:
                node = self.mapped(cn, nm)
                self.outputs[cn.id] = nm.outputs
            else:
                node = self.placeholder(cn)
            if cn.mode in (2, 4):
                node.mute, node.bypass = cn.mode == 2, cn.mode == 4
            elif cn.mode:
                self.report.append(f"{_label(cn)}: ComfyUI mode {cn.mode} was read as normal")
            self.wf.insert_node(node, cn.layout or NodeLayout())
        for lk in self.inner_links:
            self.wf.insert_link(lk)
        for cn in self.g.nodes.values():
            self.link(cn)
        self.check_latent_sizes()
        self.wf.layout.frames = list(self.g.frames)
        self.wf.layout.notes = list(self.g.notes)
        for (target, name), points in self.g.reroutes.items():
            link = self.wf.link_into(target, self._studio_input(target, name))
            if link is not None:
                self.wf.layout.reroutes[link.id] = points
        return self.wf

    def mapped(self, cn: _CNode, nm: NodeMap) -> Node:
        spec = self.registry[nm.studio]
        params: dict[str, Any] = {
            i.name: i.default for i in spec.params if i.default is not None and i.file_kind is None
        }
        params.update(nm.fixed)
        if nm.always:
            self.report.append(f"{_label(cn)}: {nm.always}")
        if nm.latent_size:
            size = tuple(cn.values.get(name) for name in nm.latent_size)
            self.latent_sizes[cn.id] = (_label(cn), size)
        for name, value in cn.values.items():
            if name in nm.latent_size:
                continue
            if name in nm.unsupported:
                expected, loss = nm.unsupported[name]
                if value != expected and loss:
                    self.report.append(f"{_label(cn)}: {loss}")
                continue
            studio = nm.params.get(name, name)
            inp = spec.input(studio)
            if inp is None or not inp.is_param:
                self.report.append(
                    f"{_label(cn)}: {name!r} = {value!r} has no Studio param; dropped"
                )
                continue
            note = nm.notes.get((name, value)) if isinstance(value, Hashable) else None
            if note:
                self.report.append(f"{_label(cn)}: {note}")
            table = nm.values.get(name, {})
            if isinstance(value, Hashable) and value in table:
                value = table[value]
            params[studio] = value
        params.update(cn.studio_params)
        if nm.studio in SAMPLER_TYPES:
            params["scheduler"], note = sampler_schedule(
                params.get("sampler"), params.get("scheduler")
            )
            if note:
                self.report.append(f"{_label(cn)}: {note}")
        for name, value in list(params.items()):
            inp = spec.input(name)
            problem = inp.check(value) if inp is not None else None
            if problem:
                self.report.append(
                    f"{_label(cn)}: {name!r} {problem} (kept as written; Studio reports it)"
                )
            elif inp is not None:
                params[name] = inp.coerce(value)
        extra: dict[str, Any] = {}
        modes = self.seed_modes(cn, nm)
        if modes:
            extra[SEED_EXTRA_KEY] = modes
        title = cn.title if cn.title not in ("", cn.class_type, nm.comfy_title) else ""
        return Node(cn.id, nm.studio, spec.version, params, title, extra=extra)

    def load_image_mask(self, cn: _CNode) -> bool:
        """ComfyUI's Load Image (as Mask) as Load Image's mask output (alpha: 1 - alpha,
        as ComfyUI's) or Load Image -> Mask from Image (a colour channel); False if Studio
        lacks the nodes or the channel."""
        load, pick = self.registry.get("load_image"), self.registry.get("mask_from_image")
        channel = cn.values.get("channel", "alpha")
        if load is None or pick is None or channel not in ("alpha", "red", "green", "blue"):
            return False
        nodes: list[tuple[Node, NodeLayout]] = []
        layout = cn.layout or NodeLayout()
        image_id = cn.id if channel == "alpha" else f"{cn.id}_image"
        image = Node(image_id, "load_image", load.version, {"image": cn.values.get("image", "")})
        if channel == "alpha":
            image.title = cn.title if cn.title not in ("", cn.class_type) else ""
            nodes.append((image, layout))
        else:
            shifted = dataclasses.replace(layout, pos=(layout.pos[0] - 340.0, layout.pos[1]))
            nodes.append((image, shifted))
            title = cn.title if cn.title not in ("", cn.class_type) else ""
            nodes.append(
                (Node(cn.id, "mask_from_image", pick.version, {"channel": channel}, title), layout)
            )
            self.inner_links.append(Link(f"{cn.id}.image", image_id, "image", cn.id, "image"))
        for node, where in nodes:
            if cn.mode in (2, 4):
                node.mute, node.bypass = cn.mode == 2, cn.mode == 4
            self.wf.insert_node(node, where)
        self.outputs[cn.id] = ("mask",)
        return True

    def check_latent_sizes(self) -> None:
        for node_id, (label, size) in self.latent_sizes.items():
            sizes = sampled_latent_sizes(self.wf, node_id)
            if sizes == {size}:
                continue
            known = sorted(f"{w}x{h}" for w, h in (s for s in sizes if s is not None))
            if None in sizes or not known:
                which = "whose size is known only when run"
            else:
                which = f"{', '.join(known)} here"
            self.report.append(
                f"{label}: width x height {'x'.join(map(str, size))} was dropped: Studio's "
                f"Model Sampling Flux takes the shift from the size of the latent it samples "
                f"({which}), so the shift may differ from ComfyUI's"
            )

    def seed_modes(self, cn: _CNode, nm: NodeMap) -> dict[str, str]:
        modes = {}
        for name, control in cn.controls.items():
            if control is True:
                mode = SeedControl.RANDOMIZE
            elif control is False or control is None:
                mode = SeedControl.FIXED
            elif isinstance(control, str) and control in tuple(SeedControl):
                mode = SeedControl(control)
            else:
                self.report.append(
                    f"{_label(cn)}: seed control {control!r} is not one Studio knows; fixed"
                )
                mode = SeedControl.FIXED
            if mode is not SeedControl.FIXED:
                modes[nm.params.get(name, name)] = mode.value
        return modes

    def placeholder(self, cn: _CNode) -> Node:
        reason = self.g.reasons.get(cn.id) or NOT_MAPPED.get(cn.class_type)
        if reason is None and cn.class_type in CUSTOM_SAMPLING:
            reason = NOT_A_CHAIN
        if cn.class_type in NODE_MAPS:
            reason = f"Studio's {NODE_MAPS[cn.class_type].studio!r} node type is not installed"
        elif cn.class_type.startswith(("workflow>", "workflow/")):
            reason = (
                "it is a group node of older ComfyUI versions; convert it to nodes in "
                "ComfyUI and save again"
            )
        used = sorted(
            {slot for c in self.g.nodes.values() for s, slot in c.links.values() if s == cn.id}
        )
        outputs = list(cn.ui_outputs)
        for slot in used:
            while len(outputs) <= slot:
                outputs.append(f"output_{len(outputs)}")
        seen: set[str] = set()
        for i, name in enumerate(outputs):  # two IMAGE outputs need two names
            if name in seen:
                outputs[i] = f"{name}_{i}"
            seen.add(outputs[i])
        self.outputs[cn.id] = tuple(outputs)
        comfy: dict[str, Any] = {"class_type": cn.class_type}
        if cn.widgets_values is not None:
            comfy["widgets_values"] = cn.widgets_values
        comfy["inputs"] = cn.ui_inputs or sorted(cn.links)
        comfy["outputs"] = outputs
        if reason:
            comfy["problem"] = f"{cn.class_type!r} is a ComfyUI node Studio does not map: {reason}"
        message = comfy.get("problem") or _EXTENSION.format(cn.class_type)
        self.report.append(f"{_label(cn)}: {message}; kept as a placeholder")
        params = dict(cn.values) if cn.widgets_values is None else {}
        return Node(
            cn.id,
            PLACEHOLDER_PREFIX + cn.class_type,
            1,
            params,
            cn.title if cn.title != cn.class_type else "",
            extra={"comfyui": comfy},
        )

    def _studio_input(self, node_id: str, comfy_name: str) -> str:
        cn = self.g.nodes[node_id]
        nm = NODE_MAPS.get(cn.class_type)
        placeholder = self.wf.get_node(node_id).type.startswith(PLACEHOLDER_PREFIX)
        return comfy_name if nm is None or placeholder else nm.studio_input(comfy_name)

    def link(self, cn: _CNode) -> None:
        nm = NODE_MAPS.get(cn.class_type)
        node = self.wf.get_node(cn.id)
        for name, (src, slot) in cn.links.items():
            if src not in self.g.nodes:
                raise WorkflowFileError(
                    self.source,
                    f"node {cn.id} ({cn.class_type}): input {name!r} is linked to node {src}, "
                    "which is not in the file",
                )
            if nm is not None and name in nm.dropped_inputs:
                self.report.append(f"{_label(cn)}: {nm.dropped_inputs[name]}")
                continue
            outputs = self.outputs[src]
            if not 0 <= slot < len(outputs):
                src_cn = self.g.nodes[src]
                raise WorkflowFileError(
                    self.source,
                    f"node {cn.id} ({cn.class_type}): input {name!r} is linked to output slot "
                    f"{slot} of node {src} ({src_cn.class_type}), which has {len(outputs)} outputs",
                )
            inp = self._studio_input(cn.id, name)
            spec = self.registry.get(node.type)
            if spec is not None and spec.input(inp) is None:
                self.report.append(f"{_label(cn)}: input {name!r} has no Studio port; link dropped")
                continue
            node.params.pop(inp, None)  # the link overrides the value
            self.wf.insert_link(Link(f"{cn.id}.{inp}", src, outputs[slot], cn.id, inp))


# -- layout and the note -------------------------------------------------------------------


def layout_layers(wf: Workflow, *, x_gap: float = 340.0, y_gap: float = MIN_GAP) -> None:
    """Lay out nodes left to right in layers by their longest path from a source node,
    each layer a column, nodes spaced by the room they take on the canvas."""
    preds: dict[str, list[str]] = {n.id: [] for n in wf.nodes}
    succs: dict[str, list[str]] = {n.id: [] for n in wf.nodes}
    for lk in wf.links:
        preds[lk.target].append(lk.source)
        succs[lk.source].append(lk.target)
    indeg = {nid: len(p) for nid, p in preds.items()}
    layer = dict.fromkeys(preds, 0)
    queue = deque(nid for nid, d in indeg.items() if d == 0)
    while queue:  # Kahn's order: every node after all of its sources
        nid = queue.popleft()
        for nxt in succs[nid]:
            layer[nxt] = max(layer[nxt], layer[nid] + 1)
            indeg[nxt] -= 1
            if indeg[nxt] == 0:
                queue.append(nxt)
    columns: dict[int, list[str]] = {}
    for n in wf.nodes:
        columns.setdefault(layer[n.id], []).append(n.id)
    for col, ids in columns.items():
        y = 0.0
        for nid in ids:
            wf.layout.nodes[nid] = NodeLayout(pos=(col * x_gap, y))
            y += node_size(wf, nid)[1] + y_gap


def _add_import_note(wf: Workflow, source: str, label: str, report: list[str]) -> None:
    name = Path(source).name or source
    lines = [f"Imported from {name} ({label})."]
    if report:
        lines.append("")
        lines.append("What did not map exactly:")
        lines.extend(f"- {r}" for r in report)
    else:
        lines.append("Every node mapped onto a Studio node.")
    # Above everything else, so it hides nothing.
    positions = [nl.pos for nid, nl in wf.layout.nodes.items() if wf.has_node(nid)]
    positions += [n.pos for n in wf.layout.notes]
    positions += [(f.rect[0], f.rect[1]) for f in wf.layout.frames]
    x = min((p[0] for p in positions), default=0.0)
    y = min((p[1] for p in positions), default=0.0)
    height = 80.0 + 18.0 * len(lines)
    wf.layout.notes.append(
        Note(
            id="import-report",
            text="\n".join(lines),
            pos=(x, y - height - 40.0),
            size=(520.0, height),
        )
    )
