"""Workflow file format, version 1 (see docs/workflow-format.md and
docs/workflow.schema.json).

Loading a file is pure data handling: nothing in a file is ever executed. Every
problem with a file raises :class:`~studio.errors.WorkflowFileError` naming the
file and what is wrong. Node types this installation does not know are kept as
placeholders, so saving again loses nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import WorkflowFileError
from studio.fsutil import atomic_write_bytes
from studio.graph.pngmeta import PNG_SIGNATURE, WORKFLOW_KEY, PngError, read_png_text
from studio.graph.workflow import Frame, Link, Node, NodeLayout, Note, Workflow

if TYPE_CHECKING:
    from studio.graph.registry import Registry

FORMAT_NAME = "studio.workflow"
FORMAT_VERSION = 1

#: Whole-file migrations: FILE_MIGRATIONS[v] turns a version-v dict into version v+1.
FILE_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_NODE_KEYS = ("id", "type", "version", "title", "params", "mute", "bypass")


class _Bad(Exception):
    """Internal: a structural problem, turned into WorkflowFileError with the path."""


# -- writing ------------------------------------------------------------------------------


def workflow_to_dict(wf: Workflow) -> dict[str, Any]:
    nodes = []
    for n in wf.nodes:
        d: dict[str, Any] = {
            "id": n.id,
            "type": n.type,
            "version": n.version,
            "title": n.title,
            "params": dict(n.params),
            "mute": n.mute,
            "bypass": n.bypass,
        }
        d.update(n.extra)
        nodes.append(d)
    links = [
        {
            "id": lk.id,
            "source": lk.source,
            "output": lk.output,
            "target": lk.target,
            "input": lk.input,
        }
        for lk in wf.links
    ]
    lay = wf.layout
    layout: dict[str, Any] = {
        "nodes": {
            nid: _node_layout_to_dict(nl) for nid, nl in lay.nodes.items() if wf.has_node(nid)
        },
        "frames": [
            {"id": f.id, "title": f.title, "rect": _floats(f.rect), "color": f.color}
            for f in lay.frames
        ],
        "notes": [
            {"id": n.id, "text": n.text, "pos": _floats(n.pos), "size": _floats(n.size)}
            for n in lay.notes
        ],
        "reroutes": {lid: [_floats(p) for p in pts] for lid, pts in lay.reroutes.items() if pts},
        "viewport": dict(lay.viewport),
    }
    data: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "nodes": nodes,
        "links": links,
        "layout": layout,
    }
    if wf.extra:
        data["extra"] = wf.extra
    return data


def _floats(values: Any) -> list[float]:
    # Geometry is always written as floats, so load-then-save gives the same bytes.
    return [float(v) for v in values]


def _node_layout_to_dict(nl: NodeLayout) -> dict[str, Any]:
    d: dict[str, Any] = {"pos": _floats(nl.pos)}
    if nl.collapsed:
        d["collapsed"] = True
    if nl.color:
        d["color"] = nl.color
    if nl.pinned:
        d["pinned"] = True
    if nl.width is not None:
        d["width"] = float(nl.width)
    return d


def dumps_workflow(wf: Workflow) -> str:
    """The file text of a workflow: stable, so load-then-save gives the same bytes."""
    return json.dumps(workflow_to_dict(wf), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def save_workflow(wf: Workflow, path: str | Path) -> None:
    atomic_write_bytes(Path(path), dumps_workflow(wf).encode("utf-8"))


# -- reading ------------------------------------------------------------------------------


def load_workflow(path: str | Path, registry: Registry) -> Workflow:
    """Read a workflow file. Raises WorkflowFileError naming the file on any problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise WorkflowFileError(str(p), "no such file") from None
    except IsADirectoryError:
        raise WorkflowFileError(str(p), "is a folder, not a workflow file") from None
    except OSError as exc:
        raise WorkflowFileError(str(p), f"cannot be read ({exc.strerror or exc})") from None
    if raw.startswith(PNG_SIGNATURE):
        text = _workflow_text_from_png(raw, str(p))
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise WorkflowFileError(str(p), "is not a text file (not UTF-8)") from None
    wf = loads_workflow(text, path=str(p), registry=registry)
    wf.path = p
    return wf


def _workflow_text_from_png(raw: bytes, path: str) -> str:
    """The Studio workflow a PNG carries (a saved image is also its recipe)."""
    try:
        chunks = read_png_text(raw)
    except PngError as exc:
        raise WorkflowFileError(path, f"is not a readable PNG ({exc})") from None
    if WORKFLOW_KEY in chunks:
        return chunks[WORKFLOW_KEY]
    if "workflow" in chunks or "prompt" in chunks:
        raise WorkflowFileError(
            path, "carries a ComfyUI workflow; Studio does not import ComfyUI workflows yet"
        )
    if "parameters" in chunks:
        raise WorkflowFileError(
            path,
            "carries Automatic1111 generation parameters, not a Studio workflow; "
            "Studio does not import those yet",
        )
    raise WorkflowFileError(path, "is an image without a workflow inside")


def loads_workflow(text: str, *, registry: Registry, path: str = "<text>") -> Workflow:
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except _Bad as exc:
        raise WorkflowFileError(path, str(exc)) from None
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(
            path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise WorkflowFileError(path, "is not a workflow (nested too deeply)") from None
    return workflow_from_dict(data, path=path, registry=registry)


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, but they are not JSON and could not be saved again.
    raise _Bad(f"is not valid JSON ({name} is not a JSON number)")


def workflow_from_dict(data: Any, *, registry: Registry, path: str = "<data>") -> Workflow:
    try:
        return _from_dict(data, registry)
    except _Bad as exc:
        raise WorkflowFileError(path, str(exc)) from None
    except RecursionError:
        raise WorkflowFileError(path, "is not a workflow (nested too deeply)") from None


def _from_dict(data: Any, registry: Registry) -> Workflow:
    if not isinstance(data, dict):
        raise _Bad("is not a Studio workflow (expected a JSON object at the top)")
    if data.get("format") != FORMAT_NAME:
        if "nodes" in data and "links" in data and "last_node_id" in data:
            raise _Bad("is a ComfyUI workflow, not a Studio workflow")
        if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
            raise _Bad("is a ComfyUI API prompt, not a Studio workflow")
        raise _Bad(f'is not a Studio workflow (no "format": "{FORMAT_NAME}")')
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _Bad('has no valid "version" number')
    if version > FORMAT_VERSION:
        raise _Bad(
            f"was written by a newer Studio (format version {version}; "
            f"this one reads up to {FORMAT_VERSION}). Update Studio to open it."
        )
    if version < 1:
        raise _Bad(f"has an unknown format version {version}")
    while version < FORMAT_VERSION:
        data = FILE_MIGRATIONS[version](data)
        version += 1

    wf = Workflow(registry)
    nodes = _get(data, "nodes", list, "the file")
    for i, nd in enumerate(nodes):
        node = _parse_node(nd, i)
        if wf.has_node(node.id):
            raise _Bad(f"has two nodes with id {node.id!r}")
        wf._nodes[node.id] = node

    links = _get(data, "links", list, "the file")
    for i, ld in enumerate(links):
        link = _parse_link(ld, i)
        for end, port in ((link.source, "source"), (link.target, "target")):
            if not wf.has_node(end):
                raise _Bad(
                    f"link {i + 1} ({link.id}) has a {port} node {end!r} that is not in the file"
                )
        if link.id in wf._links:
            raise _Bad(f"has two links with id {link.id!r}")
        key = (link.target, link.input)
        if key in wf._link_by_input:
            raise _Bad(
                f"link {i + 1} ({link.id}) feeds input {link.input!r}, which is already linked"
            )
        wf._links[link.id] = link
        wf._link_by_input[key] = link.id

    layout = data.get("layout", {})
    if not isinstance(layout, dict):
        raise _Bad('"layout" is not an object')
    _parse_layout(layout, wf)
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise _Bad('"extra" is not an object')
    wf.extra = extra
    _migrate_node_versions(wf)
    return wf


def _get(d: dict[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is not ...:
            return default
        raise _Bad(f'{where} has no "{key}"')
    value = d[key]
    if kind is int and isinstance(value, bool):
        raise _Bad(f'{where}: "{key}" is not a whole number')
    if kind is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _Bad(f'{where}: "{key}" is not a number')
        return float(value)
    if not isinstance(value, kind):
        names = {
            list: "a list",
            dict: "an object",
            str: "text",
            int: "a whole number",
            bool: "true/false",
        }
        raise _Bad(f'{where}: "{key}" is not {names.get(kind, kind.__name__)}')
    return value


def _parse_node(nd: Any, i: int) -> Node:
    where = f"node {i + 1}"
    if not isinstance(nd, dict):
        raise _Bad(f"{where} is not an object")
    nid = _get(nd, "id", str, where)
    if not nid:
        raise _Bad(f"{where} has an empty id")
    where = f"node {i + 1} ({nid})"
    ntype = _get(nd, "type", str, where)
    if not ntype:
        raise _Bad(f"{where} has an empty type")
    version = _get(nd, "version", int, where, 1)
    title = _get(nd, "title", str, where, "")
    params = _get(nd, "params", dict, where, {})
    mute = _get(nd, "mute", bool, where, False)
    bypass = _get(nd, "bypass", bool, where, False)
    extra = {k: v for k, v in nd.items() if k not in _NODE_KEYS}
    return Node(
        id=nid,
        type=ntype,
        version=version,
        params=dict(params),
        title=title,
        mute=mute,
        bypass=bypass,
        extra=extra,
    )


def _parse_link(ld: Any, i: int) -> Link:
    where = f"link {i + 1}"
    if not isinstance(ld, dict):
        raise _Bad(f"{where} is not an object")
    lid = _get(ld, "id", str, where)
    return Link(
        id=lid,
        source=_get(ld, "source", str, where),
        output=_get(ld, "output", str, where),
        target=_get(ld, "target", str, where),
        input=_get(ld, "input", str, where),
    )


def _point(v: Any, where: str) -> tuple[float, float]:
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        or not all(math.isfinite(x) for x in v)
    ):
        raise _Bad(f"{where} is not a pair of numbers")
    return (float(v[0]), float(v[1]))


def _parse_layout(layout: dict[str, Any], wf: Workflow) -> None:
    lay = wf.layout
    node_layouts = _get(layout, "nodes", dict, "layout", {})
    for nid, nl in node_layouts.items():
        where = f"layout of node {nid}"
        if not isinstance(nl, dict):
            raise _Bad(f"{where} is not an object")
        width = nl.get("width")
        if width is not None:
            width = _get(nl, "width", float, where)
        color = nl.get("color")
        if color is not None and not isinstance(color, str):
            raise _Bad(f'{where}: "color" is not text')
        lay.nodes[nid] = NodeLayout(
            pos=_point(nl.get("pos", [0, 0]), f"{where}: pos"),
            collapsed=_get(nl, "collapsed", bool, where, False),
            color=color,
            pinned=_get(nl, "pinned", bool, where, False),
            width=width,
        )
    for nid in wf._nodes:
        lay.nodes.setdefault(nid, NodeLayout())
    for i, fd in enumerate(_get(layout, "frames", list, "layout", [])):
        where = f"frame {i + 1}"
        if not isinstance(fd, dict):
            raise _Bad(f"{where} is not an object")
        rect = fd.get("rect", [0, 0, 400, 300])
        if (
            not isinstance(rect, list)
            or len(rect) != 4
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in rect)
            or not all(math.isfinite(x) for x in rect)
        ):
            raise _Bad(f"{where}: rect is not four numbers")
        lay.frames.append(
            Frame(
                id=_get(fd, "id", str, where),
                title=_get(fd, "title", str, where, "Frame"),
                rect=tuple(float(x) for x in rect),  # type: ignore[arg-type]
                color=_get(fd, "color", str, where, "#3a4a5a"),
            )
        )
    for i, nd in enumerate(_get(layout, "notes", list, "layout", [])):
        where = f"note {i + 1}"
        if not isinstance(nd, dict):
            raise _Bad(f"{where} is not an object")
        lay.notes.append(
            Note(
                id=_get(nd, "id", str, where),
                text=_get(nd, "text", str, where, ""),
                pos=_point(nd.get("pos", [0, 0]), f"{where}: pos"),
                size=_point(nd.get("size", [240, 120]), f"{where}: size"),
            )
        )
    for lid, pts in _get(layout, "reroutes", dict, "layout", {}).items():
        if not isinstance(pts, list):
            raise _Bad(f"reroutes of link {lid} are not a list")
        if lid in wf._links:
            lay.reroutes[lid] = [_point(p, f"reroute of link {lid}") for p in pts]
    lay.viewport = _get(layout, "viewport", dict, "layout", {})


def _migrate_node_versions(wf: Workflow) -> None:
    """Bring nodes saved with an older version of their type up to date, step by step."""
    reg = wf.registry
    for n in wf._nodes.values():
        spec = reg.get(n.type)
        if spec is None or n.version >= spec.version or spec.migrate is None:
            continue
        params = dict(n.params)
        try:
            for v in range(n.version, spec.version):
                params = spec.migrate(v, params)
        except Exception as exc:
            raise _Bad(
                f"node {n.id} ({spec.title}) could not be upgraded from version "
                f"{n.version} to {spec.version}: {exc}"
            ) from None
        n.params = params
        n.version = spec.version
