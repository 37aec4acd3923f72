"""Tests that fail when a feature breaks quietly (issue 17, "Also found").

Each was checked by breaking the feature on purpose and watching it fail: the cache key
without params, validation without the cycle check, a save that writes in place.
Stub nodes only: no torch.
"""

from __future__ import annotations

import json
import random
import sys

import pytest
from stubs import CALLS, SPECS

from studio.engine import Engine, WorkflowInvalid
from studio.graph import Workflow
from studio.graph.fileformat import load_workflow, loads_workflow, workflow_to_dict
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T


def _noise(ctx, seed: int, scale: float = 1.0, steps: int = 1) -> int:
    """A seeded stand-in for the sampler: its result depends on every param."""
    CALLS["noise"] += 1
    rng = random.Random(seed)
    return int(sum(rng.random() for _ in range(steps)) * scale * 1_000_000)


NOISE = NodeSpec(
    "noise",
    "Noise",
    "test",
    _noise,
    inputs=(
        InputSpec("seed", T.INT, default=0, min=0, max=2**64 - 1, seed=True),
        InputSpec("scale", T.FLOAT, default=1.0, min=0.0, max=10.0),
        InputSpec("steps", T.INT, default=1, min=1, max=100),
    ),
    outputs=(OutputSpec("value", T.INT),),
)


@pytest.fixture
def reg():
    CALLS.clear()
    return Registry([*SPECS, NOISE])


def noise_graph(reg, **params):
    wf = Workflow(reg)
    noise = wf.add_node("noise", params, title="Noise")
    out = wf.add_node("output", title="Out")
    wf.connect(noise.id, "value", out.id, "value")
    return wf, noise, out


# -- (a) the cache key holds every param --------------------------------------------------


@pytest.mark.parametrize(("param", "other"), [("seed", 2**64 - 1), ("scale", 0.5), ("steps", 3)])
def test_changing_any_param_reruns_with_a_new_result_and_going_back_is_cached(reg, param, other):
    wf, noise, _ = noise_graph(reg, seed=42)
    engine = Engine(reg)
    first = engine.run(wf).images
    before = wf.get_node(noise.id).params[param]

    wf.set_param(noise.id, param, other)
    changed = engine.run(wf)
    assert noise.id in changed.ran and changed.images != first  # a new picture

    wf.set_param(noise.id, param, before)
    CALLS.clear()
    back = engine.run(wf)
    assert back.images == first and back.ran == set() and CALLS["noise"] == 0


def test_a_param_left_to_its_default_and_the_same_value_written_share_a_cache_entry(reg):
    text = json.dumps(workflow_to_dict(noise_graph(reg, seed=7)[0]))
    engine = Engine(reg)
    wf = loads_workflow(text, registry=reg)
    first = engine.run(wf).images
    node = next(n for n in wf.nodes if n.type == "noise")
    del node.params["scale"]  # the file does not say: the default 1.0 applies
    CALLS.clear()
    assert engine.run(wf).images == first and CALLS["noise"] == 0


# -- (b) cycles are validation problems naming their nodes ----------------------------------


def _cyclic_file(reg, tmp_path):
    """A file (edited by hand or by another tool) with a 3-cycle and a self-loop."""
    wf = Workflow(reg)
    src = wf.add_node("number", {"value": 1}, title="Source")
    a = wf.add_node("add", title="Alpha")
    b = wf.add_node("add", title="Beta")
    c = wf.add_node("add", title="Gamma")
    loop = wf.add_node("add", title="Loop")
    out = wf.add_node("output", title="Out")
    out2 = wf.add_node("output", title="Out 2")
    wf.connect(src.id, "value", a.id, "a")
    wf.connect(a.id, "sum", b.id, "a")
    wf.connect(b.id, "sum", c.id, "a")
    wf.connect(c.id, "sum", out.id, "value")
    wf.connect(loop.id, "sum", out2.id, "value")
    data = workflow_to_dict(wf)
    for lid, (s, t) in {"back": (c, a), "self": (loop, loop)}.items():
        data["links"].append(
            {"id": lid, "source": s.id, "output": "sum", "target": t.id, "input": "b"}
        )
    path = tmp_path / "cyclic.json"
    path.write_text(json.dumps(data, indent=2), "utf-8")
    return path, {"src": src, "a": a, "b": b, "c": c, "loop": loop}


def test_a_cycle_in_a_file_is_a_validation_problem_naming_its_nodes(reg, tmp_path):
    path, n = _cyclic_file(reg, tmp_path)
    wf = load_workflow(path, registry=reg)
    problems = Engine(reg).validate(wf)
    on_cycle = {p.node_id: p.message for p in problems if "cycle" in p.message}
    assert set(on_cycle) == {n["a"].id, n["b"].id, n["c"].id, n["loop"].id}
    three = on_cycle[n["a"].id]
    # By title (each is unique here): the ids only where titles repeat.
    assert "Alpha -> Beta -> Gamma" in three and n["a"].id not in three
    assert "Loop" not in three and "Source" not in three
    assert on_cycle[n["loop"].id].endswith("Loop")
    with pytest.raises(WorkflowInvalid) as info:  # a run refuses it the same way, at once
        Engine(reg).run(wf)
    assert {p.node_id for p in info.value.problems if "cycle" in p.message} == set(on_cycle)
    assert CALLS["number"] == 0


# -- (c) saving over a file never leaves half of one ----------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="simulates a full disk with RLIMIT_FSIZE")
def test_a_save_that_fails_midway_leaves_the_old_file_whole(reg, tmp_path):
    import resource
    import signal

    wf, noise, _ = noise_graph(reg, seed=1)
    path = tmp_path / "flow.json"
    wf.save(path)
    before = path.read_bytes()
    # The new content is larger than the "disk" allows: the write stops partway, as on a
    # full disk, whatever function does the writing.
    wf.set_title(noise.id, "x" * 400_000)
    limit = 200_000
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        with pytest.raises(OSError):
            wf.save(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["flow.json"]  # no temporary file left
    assert load_workflow(path, registry=reg).get_node(noise.id).title == "Noise"


def test_a_save_interrupted_while_writing_leaves_the_old_file_whole(reg, tmp_path, monkeypatch):
    import builtins
    import io
    import os

    wf, noise, _ = noise_graph(reg, seed=1)
    path = tmp_path / "flow.json"
    wf.save(path)
    before = path.read_bytes()
    wf.set_title(noise.id, "renamed")

    # Every way of opening a file for writing gives a file that writes half, then fails.
    wrapped = []

    def failing(opener):
        def open_(file, mode="r", *args, **kwargs):
            f = opener(file, mode, *args, **kwargs)
            if any(m in mode for m in "wax+"):
                wrapped.append(file)
                return _HalfThenFull(f)
            return f

        return open_

    monkeypatch.setattr(builtins, "open", failing(builtins.open))
    monkeypatch.setattr(io, "open", failing(io.open))
    monkeypatch.setattr(os, "fdopen", failing(os.fdopen))
    with pytest.raises(OSError, match="No space left"):
        wf.save(path)
    monkeypatch.undo()
    assert wrapped  # the failure came while writing, not before
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["flow.json"]  # no temporary file left


class _HalfThenFull:
    """A file opened for writing on a disk that fills up halfway through the data."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_writable_folder_reports_a_folder_it_cannot_write(tmp_path, monkeypatch):
    import tempfile

    from studio.errors import StudioError
    from studio.fsutil import writable_folder

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(StudioError, match=r"the output folder is not writable: .*Read-only"):
        writable_folder(tmp_path / "out", what="the output folder")


# -- found by the fuzz tests: file names validation cannot even look up ---------------------


@pytest.mark.parametrize(
    "name", ["~nosuchuser/model.safetensors", "/" + "a" * 300, "b" * 300, "a\x00b"]
)
def test_a_file_name_the_system_cannot_look_up_is_a_problem_not_a_crash(name, tmp_path):
    from studio.engine.validate import plan_workflow
    from studio.modelfiles import ModelFiles
    from studio.settings import Settings

    loader = NodeSpec(
        "load_model",
        "Load Model",
        "test",
        lambda ctx, ckpt_name: ckpt_name,
        inputs=(
            InputSpec("ckpt_name", T.CHOICE, choices=("a.safetensors",), file_kind="checkpoints"),
        ),
        outputs=(OutputSpec("value", T.STRING),),
    )
    reg = Registry([loader])
    wf = Workflow(reg)
    node = wf.add_node("load_model", {"ckpt_name": name})
    files = ModelFiles(Settings(models_root=str(tmp_path)))
    # before: RuntimeError ("~nosuchuser") or OSError (name too long) escaped validation
    problems = plan_workflow(wf, reg, model_files=files).problems
    assert [p.node_id for p in problems] == [node.id]
    assert "not found" in problems[0].message


# -- Save Image: an image never lost over its metadata, but the loss is said -----------------


def test_save_image_says_when_it_cannot_embed_the_workflow(reg, caplog):
    from types import SimpleNamespace

    from nodes.image import _workflow_json

    wf, noise, _ = noise_graph(reg, seed=1)
    ctx = SimpleNamespace(workflow=wf)
    assert '"seed": 1' in _workflow_json(ctx)
    wf.put_param(noise.id, "scale", float("inf"))  # unchecked, as a node pack could
    with caplog.at_level("WARNING", logger="studio"):
        assert _workflow_json(ctx) == ""
    assert "saved without its workflow" in caplog.text and '"params.scale" is inf' in caplog.text
