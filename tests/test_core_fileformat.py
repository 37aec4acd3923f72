"""The workflow file format: round trips, clear errors, migration, placeholders."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.errors import WorkflowFileError
from studio.graph import Workflow
from studio.graph.fileformat import (
    FORMAT_VERSION,
    dumps_workflow,
    load_workflow,
    loads_workflow,
    workflow_to_dict,
)
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.graph.workflow import Frame, Note


def rich_workflow(reg) -> Workflow:
    wf = Workflow(reg)
    a = wf.add_node("number", {"value": 3}, title="Seed source", pos=(10, 20))
    b = wf.add_node("add", {"offset": -2}, pos=(300.5, 40))
    o = wf.add_node("output", {"label": 'prompt: «ünïcode» "quoted"\nsecond line'}, pos=(600, 0))
    link = wf.connect(a.id, "value", b.id, "a")
    wf.connect(b.id, "sum", o.id, "value")
    wf.set_flags(b.id, bypass=True)
    wf.set_node_layout(o.id, collapsed=True, color="#aa3355")
    wf.layout.frames.append(Frame("f1", "Inputs", (0, 0, 400, 200), "#334455"))
    wf.layout.notes.append(Note("n1", "remember to raise the steps", (5, 300)))
    wf.layout.reroutes[link.id] = [(150.0, 30.0)]
    wf.layout.viewport = {"center": [100, 50], "zoom": 0.75}
    return wf


def test_save_then_load_is_identical_and_byte_stable(stub_registry, tmp_path):
    wf = rich_workflow(stub_registry)
    path = tmp_path / "flow.json"
    wf.save(path)
    first = path.read_bytes()
    loaded = load_workflow(path, registry=stub_registry)
    assert workflow_to_dict(loaded) == workflow_to_dict(wf)
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == first
    data = json.loads(first)
    assert data["format"] == "studio.workflow" and data["version"] == FORMAT_VERSION
    # params by name, never by position
    assert data["nodes"][1]["params"] == {"a": 0, "b": 0, "offset": -2}


def test_layout_change_does_not_touch_the_graph(stub_registry):
    wf = rich_workflow(stub_registry)
    before = workflow_to_dict(wf)
    node = wf.nodes[0]
    wf.set_node_layout(node.id, pos=(999, 999))
    after = workflow_to_dict(wf)
    assert before["nodes"] == after["nodes"] and before["links"] == after["links"]
    assert before["layout"] != after["layout"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "is not valid JSON (line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"nodes": []}', 'no "format"'),
        ('{"format": "studio.workflow", "version": 99, "nodes": [], "links": []}', "newer Studio"),
        ('{"format": "studio.workflow", "version": 1, "links": []}', 'has no "nodes"'),
        (
            '{"format": "studio.workflow", "version": 1, "nodes": [{"id": "x"}], "links": []}',
            'node 1 (x) has no "type"',
        ),
        (
            '{"format": "studio.workflow", "version": 1, "nodes": [], '
            '"links": [{"id": "l", "source": "a", "output": "o", "target": "b", "input": "i"}]}',
            "not in the file",
        ),
        (
            '{"last_node_id": 3, "nodes": [{"id": 3, "type": "KSampler", "widgets_values": [1]}], '
            '"links": []}',
            "node 3 (KSampler) has 1 widget values",
        ),
        (
            '{"format": "studio.workflow", "version": 1, "nodes": [], "links": [], "extra": {"x": NaN}}',
            "is NaN, which is not a JSON number",
        ),
    ],
)
def test_bad_files_get_clear_errors_naming_the_file(stub_registry, tmp_path, text, expected):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(WorkflowFileError) as info:
        load_workflow(path, stub_registry)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_and_binary_files(stub_registry, tmp_path):
    with pytest.raises(WorkflowFileError, match="no such file"):
        load_workflow(tmp_path / "nope.json", stub_registry)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(WorkflowFileError, match="not UTF-8"):
        load_workflow(tmp_path / "bin.json", stub_registry)


def test_unknown_node_types_are_kept_as_placeholders(stub_registry, tmp_path):
    wf = rich_workflow(stub_registry)
    data = workflow_to_dict(wf)
    data["nodes"].append(
        {
            "id": "pack-node",
            "type": "somepack.fancy_blur",
            "version": 3,
            "title": "",
            "params": {"radius": 4.5, "nested": {"a": [1, 2]}},
            "mute": False,
            "bypass": False,
            "pack_specific_field": "kept",
        }
    )
    out_id = wf.nodes[2].id
    data["links"].append(
        {"id": "lp", "source": "pack-node", "output": "image", "target": out_id, "input": "label"}
    )
    data["layout"]["nodes"]["pack-node"] = {"pos": [700.0, 80.0]}
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    loaded = loads_workflow(text, registry=stub_registry)
    assert dumps_workflow(loaded) == text
    placeholder = next(n for n in loaded.nodes if n.id == "pack-node")
    assert placeholder.params["radius"] == 4.5
    assert placeholder.extra == {"pack_specific_field": "kept"}


def test_node_version_bump_migrates_params():
    def migrate(from_version, params):
        if from_version == 1:  # v2 renamed "amount" to "strength"
            params = dict(params)
            params["strength"] = params.pop("amount", 1.0)
        if from_version == 2:  # v3 made strength a percentage
            params = dict(params)
            params["strength"] = params["strength"] * 100
        return params

    spec = NodeSpec(
        "scale",
        "Scale",
        "test",
        lambda ctx, strength: strength,
        inputs=(InputSpec("strength", T.FLOAT, default=100.0),),
        outputs=(OutputSpec("value", T.FLOAT),),
        version=3,
        migrate=migrate,
    )
    reg = Registry([spec])
    text = json.dumps(
        {
            "format": "studio.workflow",
            "version": 1,
            "nodes": [{"id": "s", "type": "scale", "version": 1, "params": {"amount": 0.5}}],
            "links": [],
        }
    )
    wf = loads_workflow(text, registry=reg)
    node = wf.nodes[0]
    assert node.version == 3 and node.params == {"strength": 50.0}


def test_newer_node_version_is_a_validation_problem(stub_registry):
    from studio.engine import Engine

    text = json.dumps(
        {
            "format": "studio.workflow",
            "version": 1,
            "nodes": [{"id": "o", "type": "output", "version": 7, "title": "Out", "params": {}}],
            "links": [],
        }
    )
    wf = loads_workflow(text, registry=stub_registry)
    problems = Engine(stub_registry).validate(wf)
    assert any("newer version" in p.message and p.node_id == "o" for p in problems)


# -- property-based: random and mutated input raises only WorkflowFileError -----------------

# The registry fixture is read-only here, so sharing it across examples is safe.
SUPPRESS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=SUPPRESS)
@given(st.text(max_size=200))
def test_random_text_raises_only_the_documented_error(stub_registry, text):
    with contextlib.suppress(WorkflowFileError):
        loads_workflow(text, registry=stub_registry)


@settings(max_examples=300, deadline=None, suppress_health_check=SUPPRESS)
@given(json_values)
def test_random_json_raises_only_the_documented_error(stub_registry, value):
    with contextlib.suppress(WorkflowFileError):
        loads_workflow(json.dumps(value), registry=stub_registry)


def _mutate(data, path_choice, value):
    """Replace one value somewhere inside ``data`` (chosen by ``path_choice``)."""
    containers = []
    stack = [data]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k in cur:
                containers.append((cur, k))
                stack.append(cur[k])
        elif isinstance(cur, list):
            for i in range(len(cur)):
                containers.append((cur, i))
                stack.append(cur[i])
    if containers:
        parent, key = containers[path_choice % len(containers)]
        parent[key] = value
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=SUPPRESS)
@given(st.integers(min_value=0, max_value=10_000), json_values)
def test_mutated_workflow_raises_only_the_documented_error(stub_registry, where, value):
    data = workflow_to_dict(rich_workflow(stub_registry))
    mutated = _mutate(data, where, value)
    try:
        wf = loads_workflow(json.dumps(mutated), registry=stub_registry)
    except WorkflowFileError:
        return
    # what loads must also save and validate without raising anything else
    dumps_workflow(wf)
    from studio.engine.validate import plan_workflow

    plan_workflow(wf, stub_registry)


def test_deeply_nested_json_is_a_clear_error(stub_registry):
    with pytest.raises(WorkflowFileError):
        loads_workflow("[" * 100_000 + "]" * 100_000, registry=stub_registry)


# -- workflows inside PNG files --------------------------------------------------------------


def _png_with_text(path, chunks):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value, compressed in chunks:
        if compressed:
            info.add_itxt(key, value, zip=True)
        else:
            info.add_text(key, value)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path, pnginfo=info)


def test_png_that_carries_a_workflow_opens(stub_registry, tmp_path):
    wf = rich_workflow(stub_registry)
    text = dumps_workflow(wf)
    for compressed in (False, True):
        path = tmp_path / f"image{compressed}.png"
        _png_with_text(
            path,
            [
                ("parameters", "a red circle\nSteps: 20", False),
                ("studio_workflow", text, compressed),
            ],
        )
        loaded = load_workflow(path, registry=stub_registry)
        assert dumps_workflow(loaded) == text


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([("workflow", "{}", False)], "ComfyUI workflow"),
        ([], "without a workflow"),
    ],
)
def test_png_without_a_studio_workflow_says_what_it_is(stub_registry, tmp_path, chunks, expected):
    path = tmp_path / "other.png"
    _png_with_text(path, chunks)
    with pytest.raises(WorkflowFileError, match=expected):
        load_workflow(path, stub_registry)


def test_truncated_png_is_a_clear_error(stub_registry, tmp_path):
    path = tmp_path / "cut.png"
    _png_with_text(path, [("studio_workflow", "x" * 1000, False)])
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WorkflowFileError, match=r"cut\.png"):
        load_workflow(path, stub_registry)


# -- numbers, text and nesting a file cannot carry back (issue 17) ----------------------------

HUGE_INT = "9" * 5000  # past Python's 4,300-digit limit for int("...")


def _saved_text(reg) -> str:
    return dumps_workflow(rich_workflow(reg))


def _with(reg, old: str, new: str, count: int = 1) -> str:
    text = _saved_text(reg)
    assert old in text
    return text.replace(old, new, count)


@pytest.mark.parametrize(
    ("old", "new", "where", "what"),
    [
        ('"offset": -2', f'"offset": {HUGE_INT}', '"params.offset"', "(5000 digits), too large"),
        ('"offset": -2', '"offset": -1' + "0" * 400, '"params.offset"', "too large"),
        ('"offset": -2', '"offset": 1e400', '"params.offset"', "1e400, too large"),
        ('"offset": -2', '"offset": NaN', '"params.offset"', "NaN, which is not a JSON number"),
        ('"offset": -2', '"offset": [[1e999]]', '"params.offset[0][0]"', "1e999"),
        ('"pos": [\n', f'"pos": [\n{HUGE_INT},', '"pos[0]"', "too large"),
        ('"pos": [\n', '"pos": [\n1' + "0" * 400 + ",", '"pos[0]"', "too large"),
        ('"zoom": 0.75', '"zoom": 1e400', '"viewport.zoom"', "1e400, too large"),
        ('"zoom": 0.75', '"zoom": -Infinity', '"viewport.zoom"', "-Infinity"),
    ],
)
def test_numbers_json_cannot_carry_back_are_refused_naming_node_and_field(
    stub_registry, tmp_path, old, new, where, what
):
    path = tmp_path / "numbers.json"
    path.write_text(_with(stub_registry, old, new), "utf-8")
    with pytest.raises(WorkflowFileError) as info:
        load_workflow(path, registry=stub_registry)
    message = str(info.value)
    assert str(path) in message and where in message and what in message
    if "params" in where:
        assert "node 2 (" in message  # the Add node, by its place and id
    assert len(message) < 400  # the number is shortened, not printed whole


def test_a_png_carrying_a_huge_number_is_refused_naming_the_png(stub_registry, tmp_path):
    text = _with(stub_registry, '"offset": -2', f'"offset": {HUGE_INT}')
    path = tmp_path / "recipe.png"
    _png_with_text(path, [("studio_workflow", text, True)])
    with pytest.raises(WorkflowFileError, match=r"recipe\.png: node 2 .*params\.offset"):
        load_workflow(path, registry=stub_registry)


def test_large_numbers_inside_the_range_are_kept_exactly(stub_registry):
    seed = 2**64 - 1
    text = _with(stub_registry, '"offset": -2', f'"offset": {seed}')
    text = text.replace('"zoom": 0.75', '"zoom": 1e+300')
    wf = loads_workflow(text, registry=stub_registry)
    assert wf.nodes[1].params["offset"] == seed
    assert dumps_workflow(wf) == text


def test_text_with_a_lone_surrogate_is_refused_naming_node_and_field(stub_registry, tmp_path):
    # JSON can spell "\ud800", but no UTF-8 file can hold it: refused, not guessed at.
    text = _with(stub_registry, '"title": "Seed source"', '"title": "Seed \\ud800source"')
    path = tmp_path / "surrogate.json"
    path.write_text(text, "utf-8")
    with pytest.raises(WorkflowFileError) as info:
        load_workflow(path, registry=stub_registry)
    message = str(info.value)
    assert str(path) in message and "node 1 (" in message and '"title"' in message
    assert "lone UTF-16 surrogate, \\ud800, at character 6" in message
    message.encode("utf-8")  # the message itself can be printed
    key = _with(stub_registry, '"offset": -2', '"off\\udfffset": -2')
    with pytest.raises(WorkflowFileError, match=r"params\.off\\udfffset\" is a name with a broken"):
        loads_workflow(key, registry=stub_registry)


def test_deep_nesting_is_refused_before_it_breaks_saving(stub_registry):
    deep = "[" * 70 + "]" * 70
    text = _with(stub_registry, '"offset": -2', f'"offset": {deep}')
    with pytest.raises(WorkflowFileError, match=r"node 2 .*nested more than 64 levels deep"):
        loads_workflow(text, registry=stub_registry)
    ok = _with(stub_registry, '"offset": -2', '"offset": ' + "[" * 40 + "]" * 40)
    wf = loads_workflow(ok, registry=stub_registry)
    assert loads_workflow(dumps_workflow(wf), registry=stub_registry).nodes[1].params == (
        wf.nodes[1].params
    )


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (float("inf"), "is inf, which is not a JSON number"),
        (float("nan"), "is nan, which is not a JSON number"),
        (10**400, "a whole number of about 401 digits, too large"),
        ("half \udc80 a pair", "lone UTF-16 surrogate, \\udc80"),
        ({1, 2}, "is a set, which a workflow file cannot store"),
    ],
)
def test_saving_a_value_no_file_can_hold_is_refused_and_the_old_file_kept(
    stub_registry, tmp_path, value, what
):
    wf = rich_workflow(stub_registry)
    path = tmp_path / "flow.json"
    wf.save(path)
    before = path.read_bytes()
    wf.put_param(wf.nodes[1].id, "offset", value)  # unchecked, as the Python API allows
    with pytest.raises(WorkflowFileError) as info:
        wf.save(path)
    message = str(info.value)
    assert str(path) in message and "cannot be saved" in message
    assert "node 2 (" in message and '"params.offset"' in message and what in message
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["flow.json"]


def test_oversized_and_special_files_are_refused_before_reading(
    stub_registry, tmp_path, monkeypatch
):
    import os

    import studio.graph.fileformat as ff

    path = tmp_path / "big.json"
    path.write_text(_saved_text(stub_registry), "utf-8")
    monkeypatch.setattr(ff, "MAX_FILE_BYTES", 1000)
    with pytest.raises(WorkflowFileError, match=r"big\.json: is too large for a workflow file"):
        load_workflow(path, registry=stub_registry)
    monkeypatch.undo()
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(WorkflowFileError, match=r"pipe\.json: is not a regular file"):
        load_workflow(fifo, stub_registry)  # would block forever if it were opened
    with pytest.raises(WorkflowFileError, match="is a folder"):
        load_workflow(tmp_path, stub_registry)


# -- the bounded PNG text reader (issue 17) ---------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png(*chunks: bytes) -> bytes:
    import struct

    from studio.graph.pngmeta import PNG_SIGNATURE

    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    return PNG_SIGNATURE + ihdr + b"".join(chunks) + _chunk(b"IEND", b"")


def _ztxt(key: str, raw: bytes) -> bytes:
    import zlib

    return _chunk(b"zTXt", key.encode("latin-1") + b"\0\0" + zlib.compress(raw, 9))


def test_png_text_that_inflates_past_the_total_budget_is_refused_quickly(stub_registry, tmp_path):
    import time
    import tracemalloc

    from studio.graph.pngmeta import MAX_TEXT_TOTAL

    # Each chunk stays under the budget (the old per-chunk cap let all of them through:
    # 6 GB of text from a 6 MB file); together they do not.
    bomb = b"x" * (MAX_TEXT_TOTAL - 2**20)
    keys = ["studio_workflow", "parameters", "prompt", "workflow"]
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(*(_ztxt(k, bomb) for k in keys)))
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(WorkflowFileError) as info:
        load_workflow(path, stub_registry)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(path) in str(info.value) and "more than 64 MiB of text" in str(info.value)
    assert seconds < 10 and peak < 3 * MAX_TEXT_TOTAL


def test_png_reader_keeps_the_first_of_a_keyword_and_never_inflates_the_rest(monkeypatch):
    import time
    import zlib

    from studio.graph import pngmeta

    calls = []
    real = zlib.decompressobj
    monkeypatch.setattr(pngmeta.zlib, "decompressobj", lambda: calls.append(1) or real())
    bomb = _ztxt("studio_workflow", b"y" * (60 * 2**20))
    data = _png(_chunk(b"tEXt", b"studio_workflow\0first"), *([bomb] * 100))
    started = time.perf_counter()
    assert pngmeta.read_png_text(data) == {"studio_workflow": "first"}
    assert time.perf_counter() - started < 5 and calls == []  # before: 92 s, 100 inflations
    # Keywords the caller does not ask for are not inflated either.
    other = _png(_ztxt("junk", b"z" * 1000), _chunk(b"tEXt", b"parameters\0a cat"))
    assert pngmeta.read_png_text(other, keys=("parameters",)) == {"parameters": "a cat"}
    assert calls == []
    assert pngmeta.read_png_text(other) == {"junk": "z" * 1000, "parameters": "a cat"}


def test_png_reader_limits_the_number_of_text_chunks():
    from studio.graph.pngmeta import MAX_TEXT_CHUNKS, PngError, read_png_text

    many = [_chunk(b"tEXt", f"k{i}\0v".encode()) for i in range(MAX_TEXT_CHUNKS + 1)]
    with pytest.raises(PngError, match=f"more than {MAX_TEXT_CHUNKS} text chunks"):
        read_png_text(_png(*many))
    assert len(read_png_text(_png(*many[:MAX_TEXT_CHUNKS]))) == MAX_TEXT_CHUNKS


def test_png_reader_skips_broken_chunks_and_image_data(tmp_path):
    import zlib

    from studio.graph.pngmeta import read_png_text_file

    cut_stream = zlib.compress(b'{"a": 1}' * 100)[:-10]
    path = tmp_path / "mixed.png"
    path.write_bytes(
        _png(
            _chunk(b"zTXt", b"studio_workflow\0\0" + cut_stream),  # inflates only partly
            _chunk(b"IDAT", b"\0" * 100_000),
            _ztxt("studio_workflow", b"whole"),
            _chunk(b"iTXt", b"parameters\0\0\0\0\0caf\xc3\xa9"),
            _chunk(b"iTXt", b"bad\0\0\0\0\0\xff\xfe"),  # not UTF-8
        )
    )
    assert read_png_text_file(path) == {"studio_workflow": "whole", "parameters": "café"}
