"""Settings travel with each engine and window, never as process globals; model-file
params are resolved and fingerprinted by the engine, under its own settings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from stubs import SPECS

from studio.engine import Engine, WorkflowInvalid
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.graph.workflow import Workflow
from studio.modelfiles import ModelFiles
from studio.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
READS: list[str] = []


def _read_weights(ctx, ckpt_name: str) -> int:
    path = ctx.model_files.resolve("checkpoints", ckpt_name)
    READS.append(str(path))
    return path.stat().st_size


READ_WEIGHTS = NodeSpec(
    "read_weights",
    "Read Weights",
    "test",
    _read_weights,
    inputs=(InputSpec("ckpt_name", T.CHOICE, file_kind="checkpoints"),),
    outputs=(OutputSpec("size", T.INT),),
)


@pytest.fixture
def registry() -> Registry:
    READS.clear()
    return Registry([*SPECS, READ_WEIGHTS])


def models_root(tmp_path: Path, name: str, size: int) -> Settings:
    root = tmp_path / name
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "mine.safetensors").write_bytes(b"w" * size)
    return Settings(models_root=str(root), output_dir=str(tmp_path / "out"))


def size_workflow(reg: Registry) -> tuple[Workflow, str]:
    wf = Workflow(reg)
    read = wf.add_node("read_weights", {"ckpt_name": "mine.safetensors"})
    out = wf.add_node("output")
    wf.connect(read.id, "size", out.id, "value")
    return wf, read.id


def test_an_engine_finds_models_in_its_own_settings_folders(registry, tmp_path):
    settings = models_root(tmp_path, "a", 10)
    wf, _ = size_workflow(registry)
    assert Engine(registry, settings=settings).validate(wf) == []
    # An engine whose settings point elsewhere does not see that file.
    other = Engine(registry, settings=Settings(models_root=str(tmp_path / "empty")))
    problems = other.validate(wf)
    assert len(problems) == 1 and "mine.safetensors" in problems[0].message


def test_two_engines_with_different_settings_in_one_process(registry, tmp_path):
    a = Engine(registry, settings=models_root(tmp_path, "a", 10))
    b = Engine(registry, settings=models_root(tmp_path, "b", 25))
    wf, read = size_workflow(registry)
    ra, rb = a.run(wf), b.run(wf)
    assert ra.ok and rb.ok
    assert ra.outputs[read]["size"] == 10 and rb.outputs[read]["size"] == 25
    expected = [str(tmp_path / d / "checkpoints" / "mine.safetensors") for d in "ab"]
    assert expected == READS


def test_a_changed_model_file_reruns_its_loader_and_an_unchanged_one_is_cached(registry, tmp_path):
    settings = models_root(tmp_path, "a", 10)
    engine = Engine(registry, settings=settings)
    wf, read = size_workflow(registry)
    assert engine.run(wf).outputs[read]["size"] == 10
    again = engine.run(wf)
    assert read in again.cached
    path = Path(settings.models_root) / "checkpoints" / "mine.safetensors"
    path.write_bytes(b"x" * 12)
    os.utime(path, ns=(1, 1))
    changed = engine.run(wf)
    assert read in changed.ran and changed.outputs[read]["size"] == 12
    assert changed.reasons[read] == "a file it reads changed"


def test_a_missing_model_file_is_a_problem_naming_the_file(registry, tmp_path):
    settings = models_root(tmp_path, "a", 10)
    wf, read = size_workflow(registry)
    wf.set_param(read, "ckpt_name", "gone.safetensors")
    engine = Engine(registry, settings=settings)
    problems = engine.validate(wf)
    assert len(problems) == 1 and "gone.safetensors" in problems[0].message
    wf.set_param(read, "ckpt_name", str(tmp_path / "gone.safetensors"))
    with pytest.raises(WorkflowInvalid, match=r"model file not found: .*gone\.safetensors"):
        engine.run(wf)
    assert READS == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "/"])
def test_a_device_a_pipe_or_a_folder_as_checkpoint_is_refused_before_reading(
    registry, tmp_path, special
):
    if special == "fifo":
        special = str(tmp_path / "pipe.safetensors")
        os.mkfifo(special)
    engine = Engine(registry, settings=models_root(tmp_path, "a", 10))
    wf, read = size_workflow(registry)
    wf.set_param(read, "ckpt_name", special)
    problems = engine.validate(wf)
    assert len(problems) == 1
    message = problems[0].message
    assert "not a regular file" in message or "not a diffusers model folder" in message
    assert READS == []


def test_model_listing_survives_link_loops_and_finds_each_file_once(tmp_path):
    settings = models_root(tmp_path, "a", 10)
    folder = Path(settings.models_root) / "checkpoints"
    (folder / "sub").mkdir()
    (folder / "sub" / "other.safetensors").write_bytes(b"1")
    os.symlink(".", folder / "sub" / "loop")
    os.symlink("..", folder / "sub" / "up")
    os.symlink(folder, folder / "self")
    names = ModelFiles(settings).list("checkpoints")
    ours = [n for n in names if n.endswith(("mine.safetensors", "other.safetensors"))]
    assert sorted(ours) == ["mine.safetensors", "sub/other.safetensors"]


BLOCKER = """
import sys
BLOCKED = {blocked!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + '.') for b in BLOCKED):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def _run_blocked(blocked: list[str], body: str) -> subprocess.CompletedProcess:
    code = BLOCKER.format(blocked=blocked) + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )


def test_the_graph_layer_imports_nothing_above_it():
    proc = _run_blocked(
        ["nodes", "studio.engine", "studio.app", "studio.library", "studio.cli", "torch"],
        """
        import pkgutil, importlib, studio.graph
        for m in pkgutil.iter_modules(studio.graph.__path__):
            importlib.import_module('studio.graph.' + m.name)
        from studio.graph import Registry, loads_workflow
        wf = loads_workflow(open('resources/workflows/txt2img.json').read(), registry=Registry())
        print(len(wf.nodes), 'nodes')
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nodes" in proc.stdout


def test_the_engine_imports_no_node_module_and_no_gui():
    proc = _run_blocked(
        ["nodes", "studio.app", "studio.library", "studio.cli", "PySide6"],
        """
        import pkgutil, importlib, studio.engine
        for m in pkgutil.iter_modules(studio.engine.__path__):
            importlib.import_module('studio.engine.' + m.name)
        print('ok')
        """,
    )
    assert proc.returncode == 0, proc.stderr
