"""The Python API, the registry, node packs, and the layer rules."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import studio
from studio.errors import WorkflowEditError
from studio.graph import Workflow
from studio.graph.registry import Registry, load_entry_points
from studio.graph.workflow import ChangeKind

ROOT = Path(__file__).resolve().parent.parent


def test_python_api_names(stub_registry, tmp_path):
    wf = Workflow(stub_registry)
    n = wf.add_node("number", {"value": 2}, title="Seed")
    out = wf.add_node("output")
    wf.connect(n.id, "value", out.id, "value")
    path = tmp_path / "w.json"
    wf.save(path)

    loaded = studio.load_workflow(path)
    assert [x.id for x in loaded.nodes] == [n.id, out.id]
    node = loaded.nodes[0]
    assert (node.type, node.title, node.params) == ("number", "Seed", {"value": 2})
    link = loaded.links[0]
    assert (link.source, link.output, link.target, link.input) == (n.id, "value", out.id, "value")

    loaded._registry = stub_registry
    loaded.set_param("Seed", "value", 9)  # by unique title
    loaded.set_param(n.id, "value", 11)  # by id
    engine = studio.Engine(stub_registry)
    result = engine.run(loaded)
    assert isinstance(result, studio.RunResult)
    assert result.images == [("image", 11)]
    assert result.outputs[n.id] == {"value": 11}
    assert result.ran == {n.id, out.id} and result.cached == set()
    assert result.errors == {} and result.seconds >= 0


def test_set_param_errors_are_clear(stub_registry):
    wf = Workflow(stub_registry)
    wf.add_node("add", title="Adder")
    wf.add_node("add", title="Twin")
    wf.add_node("add", title="Twin")
    with pytest.raises(WorkflowEditError, match="no node with id or title 'Nope'"):
        wf.set_param("Nope", "a", 1)
    with pytest.raises(WorkflowEditError, match="2 nodes are titled 'Twin'"):
        wf.set_param("Twin", "a", 1)
    with pytest.raises(WorkflowEditError, match=r"no param 'size'; its params: a, b, offset"):
        wf.set_param("Adder", "size", 1)
    with pytest.raises(WorkflowEditError, match="param 'offset': 500 is above the maximum 100"):
        wf.set_param("Adder", "offset", 500)
    with pytest.raises(WorkflowEditError, match="expects a whole number"):
        wf.set_param("Adder", "a", "seven")
    wf.set_param("Adder", "a", 4.0)  # a whole float is taken as an int
    assert wf.find_node("Adder").params["a"] == 4 and isinstance(
        wf.find_node("Adder").params["a"], int
    )


def test_choice_params_are_checked(stub_registry):
    wf = Workflow(stub_registry)
    wf.add_node("choose", title="Mode")
    with pytest.raises(WorkflowEditError, match="'medium' is not one of: fast, slow"):
        wf.set_param("Mode", "mode", "medium")


def test_connect_refuses_incompatible_types(stub_registry):
    wf = Workflow(stub_registry)
    f = wf.add_node("to_float")
    a = wf.add_node("add")
    with pytest.raises(
        WorkflowEditError, match=r"cannot connect To Float.value \(FLOAT\) to Add.a \(INT\)"
    ):
        wf.connect(f.id, "value", a.id, "a")


def test_connect_replaces_an_existing_link(stub_registry):
    wf = Workflow(stub_registry)
    one, two = wf.add_node("number"), wf.add_node("number")
    a = wf.add_node("add")
    wf.connect(one.id, "value", a.id, "a")
    wf.connect(two.id, "value", a.id, "a")
    assert [(lk.source, lk.input) for lk in wf.links] == [(two.id, "a")]


def test_subscribers_hear_every_edit(stub_registry):
    wf = Workflow(stub_registry)
    seen = []
    unsubscribe = wf.subscribe(lambda c: seen.append(c.kind))
    n = wf.add_node("number")
    a = wf.add_node("add")
    wf.connect(n.id, "value", a.id, "a")
    wf.set_param(n.id, "value", 5)
    wf.set_flags(a.id, mute=True)
    wf.set_node_layout(a.id, pos=(1, 2))
    wf.remove_node(n.id)
    unsubscribe()
    wf.add_node("number")
    assert seen == [
        ChangeKind.NODE_ADDED,
        ChangeKind.NODE_ADDED,
        ChangeKind.LINK_ADDED,
        ChangeKind.PARAM_CHANGED,
        ChangeKind.FLAGS_CHANGED,
        ChangeKind.LAYOUT_CHANGED,
        ChangeKind.LINK_REMOVED,
        ChangeKind.NODE_REMOVED,
    ]


def test_registry_search_by_text_and_port_type(stub_registry):
    titles = [s.title for s in stub_registry.search("add")]
    assert titles[0] == "Add"
    assert [s.title for s in stub_registry.search("adds numbers")] == ["Add"]  # description words
    assert "Blob Output" in [s.title for s in stub_registry.search("blbout")]  # fuzzy
    takes_image = {s.type_id for s in stub_registry.search(accepts="IMAGE")}
    assert takes_image == {"blob_out"}
    gives_float = {s.type_id for s in stub_registry.search(gives="FLOAT")}
    assert {"to_float", "number", "add"} <= gives_float  # INT feeds FLOAT
    assert "blob" not in gives_float


def test_node_packs_from_entry_points(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "mypack").mkdir(parents=True)
    (pkg / "mypack" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from studio.graph.spec import InputSpec, OutputSpec, node
            from studio.graph.types import ValueType as T

            @node("mypack.double", title="Double", category="math",
                  inputs=[InputSpec("x", T.INT, default=1)], outputs=[OutputSpec("y", T.INT)])
            def double(ctx, x):
                return 2 * x
            """
        )
    )
    (pkg / "brokenpack.py").write_text("raise ImportError('needs a library that is missing')\n")
    dist = pkg / "mypack-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mypack\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[studio.nodes]\nmypack = mypack\nbroken = brokenpack\n")
    monkeypatch.syspath_prepend(str(pkg))
    reg = Registry()
    load_entry_points(reg)
    assert reg.get("mypack.double").title == "Double"
    assert len(reg.load_errors) == 1 and "broken" in reg.load_errors[0]
    assert "missing" in reg.load_errors[0]


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('PySide6', 'shiboken6', 'torch', 'diffusers', 'transformers'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_core_imports_without_qt_or_torch(tmp_path):
    code = BLOCKER + textwrap.dedent(
        """
        import studio.graph, studio.engine, studio.cli
        from studio.library import installed_registry
        from studio.engine import Engine
        reg = installed_registry()
        print(len(reg), 'node types')
        assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6')]
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "node types" in proc.stdout


def test_layers_do_not_import_qt():
    offenders = []
    for folder in ("studio/graph", "studio/engine", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                stripped = line.strip()
                if stripped.startswith(("import PySide6", "from PySide6", "import shiboken6")):
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_layout_and_param_edits_for_the_gui(stub_registry):
    from studio.graph.workflow import Frame, Note

    wf = Workflow(stub_registry)
    n = wf.add_node("number")
    a = wf.add_node("add")
    link = wf.connect(n.id, "value", a.id, "a")
    seen = []
    wf.subscribe(seen.append)
    assert wf.would_cycle(a.id, n.id) and not wf.would_cycle(n.id, a.id)
    wf.set_reroutes(link.id, [(1, 2), (3, 4)])
    assert wf.layout.reroutes[link.id] == [(1.0, 2.0), (3.0, 4.0)]
    wf.set_reroutes(link.id, [])
    assert link.id not in wf.layout.reroutes
    wf.set_frames([Frame("f", "Inputs")])
    wf.set_notes([Note("n", "hello")])
    wf.set_param(a.id, "offset", 5)
    wf.remove_param(a.id, "offset")
    assert "offset" not in a.params
    kinds = [c.kind for c in seen]
    assert kinds == [
        ChangeKind.LAYOUT_CHANGED,
        ChangeKind.LAYOUT_CHANGED,
        ChangeKind.FRAMES_CHANGED,
        ChangeKind.NOTES_CHANGED,
        ChangeKind.PARAM_CHANGED,
        ChangeKind.PARAM_CHANGED,
    ]
    assert seen[-1].new == 0  # the type's default applies again


def test_the_viewport_changes_through_the_workflow_and_notifies(stub_registry):
    wf = Workflow(stub_registry)
    n = wf.add_node("number")
    a = wf.add_node("add")
    link = wf.connect(n.id, "value", a.id, "a")
    wf.remove_link(link.id)
    seen = []
    wf.subscribe(seen.append)
    wf.set_viewport({"center": [1, 2], "zoom": 2.0})
    wf.set_viewport({"center": [1, 2], "zoom": 2.0})  # the same view: nothing to hear
    assert wf.layout.viewport == {"center": [1, 2], "zoom": 2.0}
    assert [c.kind for c in seen] == [ChangeKind.VIEWPORT_CHANGED]
    # Layout only: the editor does not re-check the graph for it.
    assert ChangeKind.VIEWPORT_CHANGED.is_layout and not ChangeKind.PARAM_CHANGED.is_layout
    wf.set_reroutes(link.id, [])  # undo may clear the reroutes of a link that is gone
    with pytest.raises(WorkflowEditError):
        wf.set_reroutes(link.id, [(1, 2)])
