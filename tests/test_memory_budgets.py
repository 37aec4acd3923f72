"""Memory budgets: sized from the machine, a run's models kept while it runs, and a model
that cannot fit said once (no torch: fake modules)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from test_core_models import FakeModule

from studio.engine import Engine, ModelManager
from studio.engine.events import EventKind
from studio.engine.memory import GiB, default_ram_budget, default_vram_budget, physical_memory
from studio.graph import Workflow
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PARAMS = {"big": 300_000_000, "other": 200_000_000}  # 1.2 GB and 0.8 GB of fp32 weights


def test_default_budgets_follow_the_machine():
    assert default_ram_budget(16 * GiB) == 12 * GiB
    assert default_ram_budget(64 * GiB) == 48 * GiB
    assert default_ram_budget(1 * GiB) == 2 * GiB  # never below a useful minimum
    # A 24 GB card with 20 GB free keeps a sixth of it (4 GB) for sampling's activations.
    assert default_vram_budget("cuda", (20 * GiB, 24 * GiB)) == 16 * GiB
    assert default_vram_budget("cpu") == 0  # nothing to read: no VRAM budget
    assert Settings().ram_budget_bytes == 0  # automatic unless the user sets one
    physical = physical_memory()
    assert physical and physical > GiB
    mm = Engine(Registry([]), settings=Settings()).models
    assert mm.ram_budget == default_ram_budget(physical)
    assert ModelManager(ram_budget=3 * GiB).ram_budget == 3 * GiB  # a user's figure wins


def _registry(loads: list[str]) -> Registry:
    def fetch(ctx, key):
        """Like the real nodes: ask the manager, which loads the file if it is not held."""

        def loader():
            loads.append(key[1])
            return FakeModule(PARAMS[key[1]])

        ctx.models.get(key, loader, label=f"{key[1]}.safetensors unet")
        return ctx.models.use(key, "cpu")

    def load(ctx, name):
        fetch(ctx, ("fake", name))
        return {"model": ("fake", name)}

    def sample(ctx, first, second, seed):
        # Both models are needed again at the end of the run (like a UNet after the VAE).
        for key in (first, second, first):
            fetch(ctx, key)
        ctx.show([f"{first[1]}+{second[1]}@{seed}"])
        return {}

    return Registry(
        [
            NodeSpec(
                "fake_load",
                "Fake Load",
                "test",
                load,
                inputs=(InputSpec("name", T.STRING, default="a"),),
                outputs=(OutputSpec("model", T.MODEL),),
            ),
            NodeSpec(
                "fake_sample",
                "Fake Sample",
                "test",
                sample,
                inputs=(
                    InputSpec("first", T.MODEL),
                    InputSpec("second", T.MODEL),
                    InputSpec("seed", T.INT, default=0),
                ),
                output_node=True,
            ),
        ]
    )


def _two_model_workflow(reg: Registry) -> tuple[Workflow, str]:
    wf = Workflow(reg)
    a = wf.add_node("fake_load", {"name": "big"})
    b = wf.add_node("fake_load", {"name": "other"})
    s = wf.add_node("fake_sample")
    wf.connect(a.id, "model", s.id, "first")
    wf.connect(b.id, "model", s.id, "second")
    return wf, s.id


def test_models_a_run_needs_stay_loaded_and_one_too_many_is_said_once():
    loads: list[str] = []
    reg = _registry(loads)
    wf, sampler = _two_model_workflow(reg)
    engine = Engine(reg, settings=Settings(ram_budget_bytes=int(1.5e9)))  # room for one
    events = []
    result = engine.run(wf, on_event=events.append)
    assert not result.errors, result.errors
    assert sorted(loads) == ["big", "other"]  # the first model was not dropped mid-run
    notices = [e.message for e in events if e.event is EventKind.NOTICE]
    assert len(notices) == 1, notices
    assert "The models this run uses (2.0 GB: big.safetensors unet 1.2 GB and 1 more)" in notices[0]
    assert "do not fit the RAM budget (1.5 GB)" in notices[0]

    # Between runs the budget holds again: a new seed reloads, but is not said again.
    wf.set_param(sampler, "seed", 1)
    events.clear()
    assert not engine.run(wf, on_event=events.append).errors
    assert len(loads) == 3  # one of the two was dropped after the first run
    assert not [e for e in events if e.event is EventKind.NOTICE]


def test_with_room_a_new_seed_loads_nothing():
    loads: list[str] = []
    reg = _registry(loads)
    wf, sampler = _two_model_workflow(reg)
    engine = Engine(reg, settings=Settings(ram_budget_bytes=int(3e9)))
    events = []
    for seed in range(3):
        wf.set_param(sampler, "seed", seed)
        assert not engine.run(wf, on_event=events.append).errors
    assert sorted(loads) == ["big", "other"]  # one load each per session
    assert not [e for e in events if e.event is EventKind.NOTICE]


def test_the_notice_reaches_studio_run_events(tmp_path):
    """``studio run --events`` carries the notice as one JSON line scripts can read."""
    code = f"""
import sys
from dataclasses import asdict
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_memory_budgets import _registry, _two_model_workflow
import studio.cli, studio.library
reg = _registry([])
studio.library.installed_registry = lambda: reg
wf, _ = _two_model_workflow(reg)
wf.save({str(tmp_path / "wf.json")!r})
sys.exit(studio.cli.main(["run", {str(tmp_path / "wf.json")!r}, "--events"]))
"""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings.json").write_text(
        json.dumps({"ram_budget_bytes": 1_500_000_000})
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "STUDIO_CONFIG_DIR": str(tmp_path / "config"),
        "STUDIO_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    notices = [e for e in lines if e["event"] == "notice"]
    assert len(notices) == 1 and "do not fit the RAM budget" in notices[0]["message"]


def test_an_old_settings_file_gets_the_machine_sized_ram_budget(tmp_path):
    """Files of older versions hold the old fixed default (8 GiB) whether or not the user
    chose it: that figure becomes automatic; a figure the user chose is kept; loading
    never rewrites the file."""
    old = {**asdict(Settings()), "ram_budget_bytes": 8 * GiB}  # as an old version saved it
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(old, indent=2))
    before = path.read_bytes()
    s = Settings.load(path)
    assert s.ram_budget_bytes == 0
    assert Engine(Registry([]), settings=s).models.ram_budget == default_ram_budget()
    assert path.read_bytes() == before  # not rewritten until the user saves

    path.write_text(json.dumps({**old, "ram_budget_bytes": 6 * GiB}))
    assert Settings.load(path).ram_budget_bytes == 6 * GiB  # the user's own figure

    # Saved by this version: the file says so, and 8 GiB is then the user's choice.
    s.save(path)
    assert json.loads(path.read_text())["settings_version"] == 2
    assert Settings.load(path).ram_budget_bytes == 0
    s.ram_budget_bytes = 8 * GiB
    s.save(path)
    assert Settings.load(path).ram_budget_bytes == 8 * GiB
