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
        ('{"last_node_id": 3, "nodes": [], "links": []}', "ComfyUI workflow"),
        (
            '{"format": "studio.workflow", "version": 1, "nodes": [], "links": [], "extra": {"x": NaN}}',
            "NaN is not a JSON number",
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
        ([("parameters", "a cat\nSteps: 20, Seed: 1", False)], "Automatic1111"),
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
