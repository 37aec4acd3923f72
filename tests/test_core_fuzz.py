"""Property-based fuzzing of the workflow loader and the PNG text reader (issue 17).

The default workflows are mutated (numbers huge, negative and not finite, text with
surrogates or very long, deep nesting, links to missing nodes and ports, duplicate ids,
broken layout) and PNGs are mutated (random chunks, compressed text, truncation). Whatever
comes in, loading, validating, saving and loading again either works, with a byte-stable
result, or raises the documented error; nothing else escapes.

CI runs a few hundred examples per test. A longer run:

    STUDIO_FUZZ_EXAMPLES=10000 pytest tests/test_core_fuzz.py
"""

from __future__ import annotations

import copy
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from studio.errors import WorkflowFileError
from studio.graph.fileformat import (
    dumps_workflow,
    load_workflow,
    loads_workflow,
    save_workflow,
)
from studio.graph.pngmeta import (
    PNG_SIGNATURE,
    WORKFLOW_KEY,
    PngError,
    read_png_text,
    read_png_text_file,
)

EXAMPLES = int(os.environ.get("STUDIO_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
WORKFLOWS = Path(__file__).resolve().parent.parent / "resources" / "workflows"
DEFAULTS = {p.stem: p.read_text("utf-8") for p in sorted(WORKFLOWS.glob("*.json"))}


@pytest.fixture(scope="module")
def registry():
    from studio.library import installed_registry

    return installed_registry()


@pytest.fixture(scope="module")
def model_files():
    """The model folders of default settings (the test's own data folder), as the CLI and
    the app hand them to validation: file params are looked up on disk."""
    from studio.modelfiles import ModelFiles
    from studio.settings import Settings

    return ModelFiles(Settings())


# -- values that have broken the loader, or could --------------------------------------------

#: Numbers json.dumps cannot write (past Python's 4,300-digit limit, or 1e400, which Python
#: reads as infinity) go into the text afterwards, in place of a marker string.
LITERAL = "\x00number:"
FLOAT_LITERALS = ["1e400", "-1e999", "1E+309", "0e99999", "1" + "0" * 400 + ".5", "-0.0e-99999"]


def _literal(text: str) -> str:
    return LITERAL + text


def _put_literals(text: str) -> str:
    opening = json.dumps(LITERAL)[:-1]  # the marker as JSON spells it, without its closing quote
    while (start := text.find(opening)) != -1:
        end = text.index('"', start + 1)
        text = text[:start] + json.loads(text[start : end + 1])[len(LITERAL) :] + text[end + 1 :]
    return text


numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(
        [0, -1, 2**53 + 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**308, 2 * 10**308]
    ),
    st.builds(lambda e, s: s * 10**e, st.integers(300, 320), st.sampled_from([1, -1])),
    st.builds(
        lambda n, sign: _literal(sign + "9" * n), st.integers(300, 6000), st.sampled_from(["", "-"])
    ),
    st.sampled_from(FLOAT_LITERALS).map(_literal),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1.7976931348623157e308]),
)
surrogate = st.integers(0xD800, 0xDFFF).map(chr)
paths = st.sampled_from(
    [
        "~nosuchuser/model.safetensors",
        "~",
        "/" + "a" * 300,
        "/dev/zero",
        "a\x00b",
        "../../x",
        "C:\\x",
    ]
)
texts = st.one_of(
    st.text(max_size=12),
    paths,
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), surrogate, st.text(max_size=4)),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "é", "🎨", "\\", '"']), st.integers(0, 200_000)
    ),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)


def _nest(depth: int, leaf, as_dict: bool):
    for _ in range(depth):
        leaf = {"k": leaf} if as_dict else [leaf]
    return leaf


values = st.one_of(
    scalars,
    st.builds(_nest, st.integers(1, 120), scalars, st.booleans()),
    st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(texts, kids, max_size=3),
        max_leaves=8,
    ),
)


# -- mutations of a workflow's file data -------------------------------------------------------


def _places(data):
    """(container, key) of every value inside ``data``, in a stable order."""
    found, stack = [], [data]
    while stack:
        cur = stack.pop()
        items = (
            cur.items()
            if isinstance(cur, dict)
            else enumerate(cur)
            if isinstance(cur, list)
            else ()
        )
        for k, v in items:
            found.append((cur, k))
            stack.append(v)
    return found


def _replace(data, where, value):
    places = _places(data)
    if places:
        parent, key = places[where % len(places)]
        parent[key] = value


def _param(data, where, value):
    """A param of one node: what most files differ in, and what the engine reads."""
    nodes = data.get("nodes")
    nodes = [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []
    if nodes:
        node = nodes[where % len(nodes)]
        params = node.setdefault("params", {})
        if isinstance(params, dict):
            names = sorted(params) or ["value"]
            params[names[(where // 7) % len(names)] if where % 5 else f"p{where % 3}"] = value


def _delete(data, where, _value):
    places = [(p, k) for p, k in _places(data) if isinstance(p, dict)]
    if places:
        parent, key = places[where % len(places)]
        del parent[key]


def _add_key(data, where, value):
    dicts = [data] + [p[k] for p, k in _places(data) if isinstance(p[k], dict)]
    dicts[where % len(dicts)][f"extra{where % 7}"] = value


def _duplicate(data, where, _value):
    for kind in ("nodes", "links"):
        items = data.get(kind)
        if isinstance(items, list) and items:
            items.append(json.loads(json.dumps(items[where % len(items)])))


def _relink(data, where, value):
    links = data.get("links")
    if isinstance(links, list) and links:
        link = links[where % len(links)]
        if isinstance(link, dict):
            field = ("source", "target", "output", "input", "id")[where % 5]
            link[field] = value if where % 3 else "no-such-node"


def _retype(data, where, value):
    nodes = data.get("nodes")
    if isinstance(nodes, list) and nodes and isinstance(nodes[where % len(nodes)], dict):
        other = nodes[(where // 7) % len(nodes)]
        new = other.get("type") if isinstance(other, dict) and where % 2 else "somepack.missing"
        nodes[where % len(nodes)]["type"] = new


def _layout(data, where, value):
    layout = data.setdefault("layout", {})
    if not isinstance(layout, dict):
        return
    nodes = layout.get("nodes")
    field = where % 6
    if field == 0 and isinstance(nodes, dict) and nodes:
        key = sorted(nodes)[where % len(nodes)]
        if isinstance(nodes[key], dict):
            nodes[key][("pos", "width", "collapsed", "color")[where % 4]] = value
    elif field == 1:
        layout["viewport"] = {"center": [value, 0], "zoom": value}
    elif field == 2:
        layout.setdefault("frames", []).append(
            {"id": "f", "rect": [0, 0, value, 1], "title": value}
        )
    elif field == 3:
        layout.setdefault("notes", []).append({"id": "n", "text": value, "pos": [value, 1]})
    elif field == 4:
        layout["reroutes"] = {"no-such-link": [[value, value]], **(layout.get("reroutes") or {})}
    else:
        layout["nodes"] = {
            "ghost": {"pos": [value, value]},
            **(nodes if isinstance(nodes, dict) else {}),
        }


MUTATIONS = [
    _param,
    _param,
    _param,
    _replace,
    _replace,
    _delete,
    _add_key,
    _duplicate,
    _relink,
    _retype,
    _layout,
]
FILE_PARAMS = ("ckpt_name", "lora_name", "control_net_name", "model_name", "vae_name", "image")


def _file_choice(data, where, value):
    """A file a node reads, named by any text at all (validation looks for it on disk)."""
    nodes = data.get("nodes")
    found = [
        (n["params"], k)
        for n in (nodes if isinstance(nodes, list) else [])
        if isinstance(n, dict) and isinstance(n.get("params"), dict)
        for k in FILE_PARAMS
        if k in n["params"]
    ]
    if found:
        params, key = found[where % len(found)]
        params[key] = value


mutation = st.one_of(
    st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 100_000), values),
    st.tuples(st.just(_file_choice), st.integers(0, 100_000), st.one_of(paths, texts)),
)


def _mutated_text(name: str, mutations, ascii_only: bool) -> str:
    data = json.loads(DEFAULTS[name])
    for fn, where, value in mutations:
        fn(data, where, copy.deepcopy(value))
    return _put_literals(json.dumps(data, indent=1, ensure_ascii=ascii_only, allow_nan=True))


def _check_round_trip(text: str, registry, model_files, path: str = "<fuzz>") -> str:
    """Load, validate, save, load, save: byte-stable, or WorkflowFileError when loading."""
    from studio.engine.validate import plan_workflow

    try:
        wf = loads_workflow(text, path=path, registry=registry)
    except WorkflowFileError as exc:
        assert exc.path == path and str(exc).startswith(path)
        str(exc).encode("utf-8")  # the message itself can be printed
        event("refused")
        return "refused"
    plan_workflow(wf, registry, model_files=model_files)  # problems are reported, never raised
    first = dumps_workflow(wf)  # everything that loads can be saved
    first.encode("utf-8")
    again = loads_workflow(first, registry=registry)
    plan_workflow(again, registry, model_files=model_files)
    assert dumps_workflow(again) == first
    event("loaded, validated, saved byte-stably")
    return "loaded"


@FUZZ
@given(
    st.sampled_from(sorted(DEFAULTS)),
    st.lists(mutation, min_size=1, max_size=3),
    st.booleans(),
)
def test_mutated_default_workflows_load_and_save_byte_stably_or_are_refused(
    registry, model_files, name, mutations, ascii_only
):
    _check_round_trip(_mutated_text(name, mutations, ascii_only), registry, model_files)


@FUZZ
@given(st.sampled_from(sorted(DEFAULTS)), st.integers(0, 10**9), st.binary(max_size=8))
def test_mutated_workflow_text_is_refused_or_loads_byte_stably(
    registry, model_files, name, where, junk
):
    # Edits of the text itself: bytes spliced in, the file cut short.
    text = DEFAULTS[name]
    cut = where % (len(text) + 1)
    spliced = text[:cut] + junk.decode("latin-1") + text[cut + where % 3 :]
    for candidate in (spliced, text[:cut]):
        _check_round_trip(candidate, registry, model_files)


@settings(FUZZ, max_examples=max(EXAMPLES // 5, 20))
@given(st.sampled_from(sorted(DEFAULTS)), st.lists(mutation, min_size=1, max_size=2))
def test_mutated_workflow_files_round_trip_through_the_disk(registry, name, mutations):
    text = _mutated_text(name, mutations, ascii_only=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.json"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            wf = load_workflow(path, registry)
        except WorkflowFileError as exc:
            assert str(path) in str(exc)
            return
        save_workflow(wf, path)
        first = path.read_bytes()
        save_workflow(load_workflow(path, registry), path)
        assert path.read_bytes() == first
        assert os.listdir(tmp) == ["fuzz.json"]


# -- PNG text -------------------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


IHDR = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
IDAT = _chunk(b"IDAT", zlib.compress(b"\0\0"))
IEND = _chunk(b"IEND", b"")


def _text_chunk(kind: str, key: bytes, payload: bytes, flag: int) -> bytes:
    if kind == "tEXt":
        return _chunk(b"tEXt", key + b"\0" + payload)
    if kind == "zTXt":
        return _chunk(b"zTXt", key + b"\0" + bytes([flag % 2]) + zlib.compress(payload))
    compressed = flag % 2
    body = zlib.compress(payload) if compressed else payload
    return _chunk(b"iTXt", key + b"\0" + bytes([compressed, flag % 3]) + b"en\0\0" + body)


keys = st.sampled_from(
    [WORKFLOW_KEY.encode(), b"parameters", b"workflow", b"prompt", b"", b"k\xff"]
)
payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([DEFAULTS[k] for k in sorted(DEFAULTS)]).map(lambda t: t.encode()),
    st.builds(lambda n: b"x" * n, st.integers(0, 3_000_000)),
)
text_chunks = st.builds(
    _text_chunk, st.sampled_from(["tEXt", "zTXt", "iTXt"]), keys, payloads, st.integers(0, 5)
)
other_chunks = st.builds(
    _chunk, st.sampled_from([b"IDAT", b"tIME", b"zzzz", b"zTXt", b"iTXt"]), st.binary(max_size=32)
)


def _png(chunks: list[bytes]) -> bytes:
    return PNG_SIGNATURE + IHDR + b"".join(chunks) + IDAT + IEND


def _mutate_bytes(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for where, byte in edits:
        if buf:
            buf[where % len(buf)] = byte
    if cut is not None:
        buf = buf[: cut % (len(buf) + 1)]
    return bytes(buf)


def _check_png(data: bytes, registry) -> None:
    try:
        found = read_png_text(data)
    except PngError as exc:
        assert str(exc)
        found = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.png"
        path.write_bytes(data)
        try:
            assert read_png_text_file(path) == found
        except PngError:
            assert found is None
        try:
            wf = load_workflow(path, registry)
        except WorkflowFileError as exc:
            assert str(exc).startswith(str(path))
            return
    again = loads_workflow(dumps_workflow(wf), registry=registry)
    assert dumps_workflow(again) == dumps_workflow(wf)


@FUZZ
@given(
    st.lists(st.one_of(text_chunks, other_chunks), max_size=6),
    st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.integers(0, 10**9)),
)
def test_mutated_pngs_give_their_text_or_a_png_error(registry, chunks, edits, cut):
    _check_png(_mutate_bytes(_png(chunks), edits, cut), registry)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_after_the_png_signature_are_a_png_error_or_text(registry, tail):
    _check_png(PNG_SIGNATURE + tail, registry)
