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
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from studio.errors import WorkflowFileError
from studio.fsutil import atomic_write_bytes
from studio.graph.exifmeta import ExifError, image_kind, read_exif_text_from
from studio.graph.importers import ImportResult
from studio.graph.pngmeta import (
    PNG_SIGNATURE,
    WORKFLOW_KEY,
    PngError,
    read_png_text_from,
)
from studio.graph.workflow import Frame, Link, Node, NodeLayout, Note, Workflow

if TYPE_CHECKING:
    from studio.graph.importers.a1111 import FindModel
    from studio.graph.registry import Registry

FORMAT_NAME = "studio.workflow"
FORMAT_VERSION = 1

#: Whole-file migrations: FILE_MIGRATIONS[v] turns a version-v dict into version v+1.
FILE_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_NODE_KEYS = ("id", "type", "version", "title", "params", "mute", "bypass")

#: A workflow file (JSON) larger than this is refused before it is read. A PNG may be
#: larger: only its text chunks are read (bounded by ``pngmeta.MAX_TEXT_TOTAL``).
MAX_FILE_BYTES = 64 * 2**20
#: Lists and objects inside one another, counted from the top of the file.
MAX_DEPTH = 64
#: Numbers must be finite and fit a 64-bit float: the engine and the canvas turn them into
#: floats, and JSON cannot carry NaN or infinity back. Integers inside this range stay exact.
MAX_NUMBER = sys.float_info.max
_MAX_INT_DIGITS = len(str(int(MAX_NUMBER)))  # 309; Python refuses to parse > 4,300


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


def dumps_workflow(wf: Workflow, *, path: str | Path = "the workflow") -> str:
    """The file text of a workflow: stable, so load-then-save gives the same bytes.

    Raises :class:`~studio.errors.WorkflowFileError` (naming ``path``, the node and the
    field) when the workflow holds a value the loader would refuse: a number that is not
    finite or too large, text with a lone surrogate, nesting deeper than ``MAX_DEPTH``,
    or a value that is not JSON. So what saves, loads again, and what loads, saves.
    """
    try:
        data = workflow_to_dict(wf)
    except (TypeError, ValueError, OverflowError) as exc:  # geometry that is not numbers
        raise WorkflowFileError(
            str(path), f"cannot be saved: the layout is broken ({exc})"
        ) from None
    problem = find_unsaveable(data)
    if problem is not None:
        raise WorkflowFileError(str(path), f"cannot be saved: {problem}")
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def save_workflow(wf: Workflow, path: str | Path) -> None:
    """Write ``wf`` to ``path`` atomically: a failure leaves the old file as it was.

    Raises :class:`~studio.errors.WorkflowFileError` when the workflow cannot be saved
    (see :func:`dumps_workflow`) and ``OSError`` when the file cannot be written.
    """
    text = dumps_workflow(wf, path=path)
    atomic_write_bytes(Path(path), text.encode("utf-8"))


# -- reading ------------------------------------------------------------------------------


def load_workflow(path: str | Path, registry: Registry) -> Workflow:
    """Read a workflow file, or the workflow inside a PNG; ComfyUI workflows and prompts
    (and their PNGs) are imported (see :func:`open_any`).

    Raises WorkflowFileError naming the file on any problem (docs/LIMITS.md lists the
    limits a file must keep).
    """
    return open_any(path, registry).workflow


def open_any(
    path: str | Path, registry: Registry, *, find_model: FindModel | None = None
) -> ImportResult:
    """Read a Studio workflow file, a ComfyUI workflow or prompt (JSON), or a PNG that
    carries one of them (or A1111 parameters), with what did not map.

    ``find_model(kind, name, hash)`` looks up the models A1111 parameters name (the
    caller holds the settings: ``importers.a1111.model_finder(ModelFiles(settings))``);
    without it their names are kept as written.

    A PNG's ``studio_workflow`` chunk wins, then ComfyUI's ``workflow`` (UI format), then
    its ``prompt`` (API format), then A1111's ``parameters``. Only a Studio workflow file
    sets the workflow's ``path``: a workflow from a PNG or another tool's file is saved
    under a new name, never over the file it came from. Raises WorkflowFileError naming the file on any problem.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise WorkflowFileError(str(p), "no such file") from None
    except OSError as exc:
        raise WorkflowFileError(str(p), f"cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise WorkflowFileError(str(p), "is a folder, not a workflow file")
    if not stat.S_ISREG(st.st_mode):
        # Reading a FIFO or /dev/zero would block or never end.
        raise WorkflowFileError(str(p), "is not a regular file (a device, pipe or socket)")
    try:
        with open(p, "rb") as f:
            head = f.read(len(PNG_SIGNATURE))
            image = head == PNG_SIGNATURE or image_kind(head + f.read(4)) is not None
            f.seek(len(head))
            if head == PNG_SIGNATURE:
                result = _workflow_from_png(f, str(p), registry, find_model)
            elif image:
                result = _workflow_from_exif(f, str(p), registry, find_model)
            else:
                if st.st_size > MAX_FILE_BYTES:
                    raise WorkflowFileError(
                        str(p),
                        f"is too large for a workflow file ({st.st_size / 2**20:.0f} MiB; "
                        f"the limit is {MAX_FILE_BYTES // 2**20} MiB)",
                    )
                raw = head + f.read(MAX_FILE_BYTES + 1 - len(head))
                if len(raw) > MAX_FILE_BYTES:  # it grew while we read it
                    raise WorkflowFileError(str(p), f"is larger than {MAX_FILE_BYTES // 2**20} MiB")
                try:
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError:
                    raise WorkflowFileError(str(p), "is not a text file (not UTF-8)") from None
                result = _from_text(text, registry, str(p))
    except OSError as exc:
        raise WorkflowFileError(str(p), f"cannot be read ({exc.strerror or exc})") from None
    # Saving over a PNG or another tool's file would destroy it: those have no path.
    result.workflow.path = None if result.imported or image else p
    return result


#: PNG text chunks that carry a workflow, in the order they are preferred.
PNG_WORKFLOW_KEYS = (WORKFLOW_KEY, "workflow", "prompt", "parameters")


def png_workflow_keys() -> tuple[str, ...]:
    """The text chunks that make a PNG open as a workflow, for a front end deciding
    between "open" and "add a Load Image"."""
    return PNG_WORKFLOW_KEYS


def _workflow_from_png(
    f: BinaryIO, path: str, registry: Registry, find_model: FindModel | None = None
) -> ImportResult:
    """The workflow a PNG carries (a saved image is also its recipe)."""
    try:
        chunks = read_png_text_from(f, keys=frozenset(PNG_WORKFLOW_KEYS))
    except PngError as exc:
        raise WorkflowFileError(path, f"is not a readable PNG ({exc})") from None
    return _workflow_from_texts(chunks, path, registry, find_model)


def _workflow_from_exif(
    f: BinaryIO, path: str, registry: Registry, find_model: FindModel | None = None
) -> ImportResult:
    """The workflow a JPEG's or WebP's EXIF carries: A1111's UserComment, ComfyUI's
    workflow or prompt."""
    try:
        texts = read_exif_text_from(f)
    except ExifError as exc:
        raise WorkflowFileError(path, f"is not a readable image ({exc})") from None
    return _workflow_from_texts(texts, path, registry, find_model)


def _workflow_from_texts(
    chunks: dict[str, str], path: str, registry: Registry, find_model: FindModel | None
) -> ImportResult:
    if WORKFLOW_KEY in chunks:
        return _from_text(chunks[WORKFLOW_KEY], registry, path, studio_only=True)
    failed: WorkflowFileError | None = None
    for key in ("workflow", "prompt"):
        if key not in chunks:
            continue
        preface = []
        if failed is not None:
            preface.append(
                f"its ComfyUI workflow chunk could not be read ({failed.reason}); "
                "the prompt chunk was imported instead"
            )
        try:
            return _from_text(chunks[key], registry, path, comfy_preface=preface)
        except WorkflowFileError as exc:
            failed = failed or exc
    if failed is not None:
        raise failed
    if "parameters" in chunks:
        from studio.graph.importers.a1111 import import_infotext

        return import_infotext(chunks["parameters"], registry, source=path, find_model=find_model)
    raise WorkflowFileError(path, "is an image without a workflow inside")


def loads_workflow(text: str, *, registry: Registry, path: str = "<text>") -> Workflow:
    """Parse workflow file text (Studio's format, or a ComfyUI workflow or prompt, which
    is imported). Raises WorkflowFileError naming ``path`` on any problem."""
    return _from_text(text, registry, path).workflow


def _from_text(
    text: str,
    registry: Registry,
    path: str,
    *,
    studio_only: bool = False,
    comfy_preface: list[str] | None = None,
) -> ImportResult:
    """The workflow in file text. With ``studio_only`` the text must be Studio's format
    (a ``studio_workflow`` chunk); with ``comfy_preface`` (a PNG's ComfyUI chunk) it must
    be ComfyUI's, and those lines start the import report."""
    try:
        data = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_BadNumber,
        )
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(
            path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise WorkflowFileError(path, "is not a workflow (nested too deeply)") from None
    is_studio = isinstance(data, dict) and data.get("format") == FORMAT_NAME
    if not is_studio and not studio_only:
        # The importers load only for a file that is not Studio's own (a run starts sooner).
        from studio.graph.importers.comfyui import import_comfyui, looks_like_comfyui
    if not is_studio and not studio_only and looks_like_comfyui(data):
        problem = find_unsaveable(data)
        if problem is not None:
            raise WorkflowFileError(path, problem)
        try:
            return import_comfyui(data, registry, source=path, preface=comfy_preface)
        except RecursionError:
            raise WorkflowFileError(path, "is not a workflow (nested too deeply)") from None
    if comfy_preface is not None:
        raise WorkflowFileError(path, "carries text that is not a ComfyUI workflow")
    return ImportResult(workflow_from_dict(data, path=path, registry=registry))


def workflow_from_dict(data: Any, *, registry: Registry, path: str = "<data>") -> Workflow:
    """A workflow from file data (parsed JSON). Raises WorkflowFileError naming ``path``."""
    problem = find_unsaveable(data)
    if problem is not None:
        raise WorkflowFileError(path, problem)
    try:
        return _from_dict(data, registry)
    except _Bad as exc:
        raise WorkflowFileError(path, str(exc)) from None
    except RecursionError:
        raise WorkflowFileError(path, "is not a workflow (nested too deeply)") from None


# -- the one rule for values: what loads must save again, byte for byte ---------------------


class _BadNumber:
    """A number JSON cannot carry back, kept as its text until its place is known."""

    def __init__(self, text: str):
        self.text = text

    def problem(self) -> str:
        t = self.text
        if t in ("NaN", "Infinity", "-Infinity"):
            return f"is {t}, which is not a JSON number"
        if len(t) > 24:
            digits = sum(c.isdigit() for c in t)
            t = f"{t[:12]}...{t[-6:]} ({digits} digits)"
        return f"is the number {t}, {_RANGE}"


_RANGE = "too large (numbers must be finite, within ±1.8e308)"


def _parse_int(text: str) -> int | _BadNumber:
    # Checked before int(): Python refuses to parse more than 4,300 digits with a ValueError.
    if len(text) > _MAX_INT_DIGITS + 1:
        return _BadNumber(text)
    value = int(text)
    return value if abs(value) <= MAX_NUMBER else _BadNumber(text)


def _parse_float(text: str) -> float | _BadNumber:
    value = float(text)  # 1e400 is inf
    return value if math.isfinite(value) else _BadNumber(text)


class _Key:
    """A dict key met by the walk: keys must be text that UTF-8 can write."""

    def __init__(self, name: Any):
        self.name = name


def find_unsaveable(data: Any) -> str | None:
    """The first value in file data that a workflow file cannot hold, said for a person
    (``node 3 (id): "params.cfg" is the number 1e400, too large ...``), or None.

    Refused: numbers that are not finite or beyond ±1.8e308 (JSON cannot carry them back,
    and the engine and the canvas turn numbers into floats), text with a lone UTF-16
    surrogate (it cannot be written as UTF-8, and no guess is made at what it should have
    been), lists and objects nested deeper than ``MAX_DEPTH``, and values that are not JSON.
    """
    for value, where, depth in _walk(data):
        problem = _value_problem(value, depth)
        if problem is not None:
            return _describe_place(data, where, problem)
    return None


def _value_problem(value: Any, depth: int) -> str | None:
    if isinstance(value, str):
        return None if value.isascii() else _surrogate_problem(value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if abs(value) <= MAX_NUMBER:
            return None
        return (
            f"is a whole number of about {int(value.bit_length() * 0.30103) + 1} digits, {_RANGE}"
        )
    if isinstance(value, float):
        return None if math.isfinite(value) else f"is {value}, which is not a JSON number"
    if isinstance(value, dict | list | tuple):
        return f"is nested more than {MAX_DEPTH} levels deep" if depth > MAX_DEPTH else None
    if isinstance(value, _BadNumber):
        return value.problem()
    if isinstance(value, _Key):
        if not isinstance(value.name, str):
            return f"has a name that is not text ({value.name!r})"
        return _surrogate_problem(value.name, "is a name with")
    return f"is a {type(value).__name__}, which a workflow file cannot store"


def _walk(data: Any) -> Iterator[tuple[Any, tuple[Any, ...], int]]:
    """Every value (and unusual key) in ``data`` with its path and depth, in file order.

    Iterative, so deep data gets a message, not a RecursionError; nothing below
    ``MAX_DEPTH`` is visited, so a list that holds itself ends too.
    """
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(data, (), 0)]
    while stack:
        value, where, depth = stack.pop()
        yield value, where, depth
        if depth > MAX_DEPTH:
            continue
        if isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                path = (*where, key)
                if not isinstance(key, str) or not key.isascii():
                    yield _Key(key), path, depth + 1
                stack.append((item, path, depth + 1))
        elif isinstance(value, list | tuple):
            for i in range(len(value) - 1, -1, -1):
                stack.append((value[i], (*where, i), depth + 1))


def _surrogate_problem(text: str, what: str = "has") -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"{what} a broken character (a lone UTF-16 surrogate, \\u{ord(text[exc.start]):04x}, "
            f"at character {exc.start + 1}), which cannot be written as UTF-8"
        )
    return None


def _describe_place(data: Any, where: tuple[Any, ...], problem: str) -> str:
    """``node 3 (id): "params.cfg" <problem>`` for a path into file data."""
    prefix, rest = "", where
    if len(where) >= 2 and where[0] in ("nodes", "links") and isinstance(where[1], int):
        item = _at(data, where[:2])
        ident = item.get("id") if isinstance(item, dict) else None
        prefix = f"{where[0][:-1]} {where[1] + 1}"
        if isinstance(ident, str):
            prefix += f" ({_show(ident)})"
        rest = where[2:]
    elif len(where) >= 3 and where[:2] == ("layout", "nodes"):
        prefix, rest = f"layout of node {_show(str(where[2]))}", where[3:]
    elif where and where[0] == "layout":
        prefix, rest = "layout", where[1:]
    field = "".join(f"[{k}]" if isinstance(k, int) else f".{_show(str(k))}" for k in rest)
    field = field.lstrip(".")
    if len(field) > 80:
        field = field[:77] + "..."
    if not prefix:  # the message follows the file name: "x.json: "extra.zoom" is ..."
        return f'"{field}" {problem}' if field else problem
    return f'{prefix}: "{field}" {problem}' if field else f"{prefix} {problem}"


def _at(data: Any, where: tuple[Any, ...]) -> Any:
    for key in where:
        data = data[key]
    return data


def _show(text: str) -> str:
    """Text for a message: broken characters escaped, so the message itself can be printed."""
    text = text if len(text) <= 80 else text[:77] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _from_dict(data: Any, registry: Registry) -> Workflow:
    if not isinstance(data, dict):
        raise _Bad("is not a Studio workflow (expected a JSON object at the top)")
    if data.get("format") != FORMAT_NAME:
        if "nodes" in data and "links" in data and "last_node_id" in data:
            raise _Bad("is a ComfyUI workflow, not a Studio workflow")
        if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
            raise _Bad("is a ComfyUI API prompt, not a Studio workflow")
        raise _Bad(
            f'is not a Studio workflow (no "format": "{FORMAT_NAME}"), '
            "nor a ComfyUI workflow or prompt"
        )
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
