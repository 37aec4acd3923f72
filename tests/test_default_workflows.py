"""The default workflows in resources/workflows: they load, validate, run on the embedded
studio-tiny model and make images of the expected size; ``studio run`` of txt2img works on a
fresh install; the app opens and runs txt2img; the files are what make_workflows.py writes;
Load Image finds the shipped example images."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from studio.graph.fileformat import load_workflow
from studio.library import installed_registry
from studio.modelfiles import RESOURCES, ModelFiles
from studio.settings import Settings

WORKFLOWS = RESOURCES / "workflows"
NAMES = (
    "txt2img", "img2img", "inpaint", "controlnet", "lora", "merge_models", "hires_upscale",
    "txt2img_sd3",
)  # fmt: skip
#: Once studio-tiny-flux is trained (on a GPU: benchmarks/gpu_train_flux.sh) and unpacked into
#: resources/models/checkpoints, txt2img_flux is a default workflow on it too.
if (RESOURCES / "models" / "checkpoints" / "studio-tiny-flux").is_dir():
    NAMES += ("txt2img_flux",)
#: The embedded model each default workflow loads (studio-tiny-flow: the flow-matching one).
MODEL_OF = {"txt2img_sd3": "studio-tiny-flow", "txt2img_flux": "studio-tiny-flux"}
#: Pixel size of each workflow's saved image.
SIZES = {"hires_upscale": (128, 128)}


@functools.cache
def generator():
    """resources/workflows/make_workflows.py as a module."""
    path = WORKFLOWS / "make_workflows.py"
    spec = importlib.util.spec_from_file_location("make_workflows", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def missing_models(wf) -> list[str]:
    """'kind/name' of every model file the workflow names that is not there (yet)."""
    from studio.errors import NodeError

    missing = []
    for n in wf.nodes:
        spec = wf.spec_of(n)
        for inp in spec.params if spec else ():
            if inp.file_kind in ("checkpoints", "controlnet", "loras", "upscale_models"):
                try:
                    ModelFiles(Settings()).resolve(inp.file_kind, n.params[inp.name])
                except NodeError:
                    missing.append(f"resources/models/{inp.file_kind}/{n.params[inp.name]}")
    return missing


def open_default(name: str):
    wf = load_workflow(WORKFLOWS / f"{name}.json", installed_registry())
    missing = missing_models(wf)
    if missing:
        pytest.skip(f"{name}.json: {', '.join(missing)} does not exist yet")
    return wf


@pytest.fixture
def fresh_settings(tmp_path, user_settings_file):
    """A fresh install: no models root of the user's, an empty input folder (also written as
    the user's settings file, which the app reads)."""
    from studio.settings import Settings

    return user_settings_file(
        Settings(output_dir=str(tmp_path / "out"), input_dir=str(tmp_path / "in"), device="cpu")
    )


@pytest.fixture
def engine(fresh_settings):
    torch = pytest.importorskip("torch")
    from studio.engine import Engine

    torch.set_num_threads(1)
    return Engine(installed_registry(), settings=fresh_settings)


def saved_pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def pixels(path_or_image):
    import numpy as np
    from PIL import Image

    im = path_or_image if hasattr(path_or_image, "convert") else Image.open(path_or_image)
    return np.asarray(im.convert("RGB")).astype(int)


# -- every default workflow ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_default_workflow_validates_runs_and_saves_an_image(name, engine, fresh_settings):
    from PIL import Image

    wf = open_default(name)
    assert engine.validate(wf) == []
    result = engine.run(wf)
    assert result.ok, result.errors
    (png,) = saved_pngs(fresh_settings.output_path)
    assert png.name.startswith(name.split("_")[0])
    with Image.open(png) as im:
        assert im.size == SIZES.get(name, (64, 64))
        assert "studio_workflow" in im.info  # dropping it back in restores the workflow
        arr = pixels(im)
    assert arr.std() > 10  # a picture, not a flat or black square


def test_txt2img_is_the_default_size_and_sampler(engine, fresh_settings):
    wf = open_default("txt2img")
    (latent,) = [n for n in wf.nodes if n.type == "empty_latent"]
    (sampler,) = [n for n in wf.nodes if n.type == "sampler"]
    assert (latent.params["width"], latent.params["height"]) == (64, 64)
    # cfg 2: seeds vary the layout nearly as the training data does (training/README.md)
    assert sampler.params["steps"] == 20 and sampler.params["cfg"] == 2.0
    assert (sampler.params["sampler"], sampler.params["scheduler"]) == ("euler", "normal")


def test_inpaint_repaints_the_left_half_and_keeps_the_right_half(engine, fresh_settings):
    wf = open_default("inpaint")
    result = engine.run(wf)
    assert result.ok, result.errors
    (png,) = saved_pngs(fresh_settings.output_path)
    out = pixels(png)
    gen = generator()
    original = pixels(gen.IMAGES / gen.EXAMPLE_IMAGE)
    assert (out[:, 32:] == original[:, 32:]).all()  # the right half's pixels as they were
    assert abs(out[:, :32] - original[:, :32]).mean() > 10  # the prompt changed the left half


def test_img2img_keeps_the_layout_and_changes_the_picture(engine, fresh_settings):
    wf = open_default("img2img")
    result = engine.run(wf)
    assert result.ok, result.errors
    (png,) = saved_pngs(fresh_settings.output_path)
    out = pixels(png)
    gen = generator()
    original = pixels(gen.IMAGES / gen.EXAMPLE_IMAGE)
    diff = abs(out - original).sum(-1)
    assert diff.mean() > 5  # the new prompt changed something
    # The right third held only background in the example; it still does (same colour).
    assert abs(out[:, 48:].mean((0, 1)) - original[:, 48:].mean((0, 1))).max() < 40


def test_controlnet_puts_the_shape_where_the_example_pictures_edges_are(engine, fresh_settings):
    from training.evaluate import analyze

    wf = open_default("controlnet")
    prompt = next(n for n in wf.nodes if n.title == "Prompt")
    assert "left" not in prompt.params["text"]  # only the control image says where
    result = engine.run(wf)
    assert result.ok, result.errors
    (png,) = saved_pngs(fresh_settings.output_path)
    drawn = analyze(pixels(png).astype("uint8"))
    assert drawn.color is not None and drawn.cx < 0.45  # the example's circle is on the left


def test_lora_changes_the_picture_and_strength_0_is_the_plain_model(engine, fresh_settings):
    wf = open_default("lora")
    lora = next(n for n in wf.nodes if n.type == "load_lora")
    with_lora = engine.run(wf)
    assert with_lora.ok, with_lora.errors
    wf.set_param(lora.id, "strength_model", 0.0)
    wf.set_param(lora.id, "strength_clip", 0.0)
    without = engine.run(wf)
    assert without.ok, without.errors
    a, b = pixels(with_lora.images[-1]), pixels(without.images[-1])
    assert abs(a - b).mean() > 3


def test_merge_models_lies_between_its_two_models_and_its_saved_checkpoint_draws_it(
    engine, fresh_settings, tmp_path
):
    import shutil

    from studio.engine import Engine

    wf = open_default("merge_models")
    merge = next(n for n in wf.nodes if n.type == "merge_models")
    result = engine.run(wf)
    assert result.ok, result.errors
    half = pixels(result.images[-1])
    ends = []
    for ratio in (1.0, 0.0):  # model1 (with the LoRA) alone, model2 alone
        wf.set_param(merge.id, "ratio", ratio)
        end = engine.run(wf)
        assert end.ok, end.errors
        ends.append(pixels(end.images[-1]))
    assert abs(ends[0] - ends[1]).mean() > 3
    assert 0 < abs(half - ends[0]).mean() < abs(ends[1] - ends[0]).mean()
    assert 0 < abs(half - ends[1]).mean() < abs(ends[1] - ends[0]).mean()
    # the saved merge, moved to the models folder, draws the merged picture by itself
    saved = sorted((fresh_settings.output_path / "checkpoints").glob("*.safetensors"))
    assert len(saved) == 3  # one a run: ratios 0.5, 1 and 0
    saved = saved[0]
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(saved, folder / "half-outline.safetensors")
    settings = Settings(models_root=str(tmp_path / "models"), output_dir=str(tmp_path / "o"),
                        device="cpu")  # fmt: skip
    sampler = next(n for n in wf.nodes if n.type == "sampler")
    wf2 = recipe_from(wf, sampler, "half-outline.safetensors")
    plain = Engine(installed_registry(), settings=settings).run(wf2)
    assert plain.ok, plain.errors
    assert abs(pixels(plain.images[-1]) - half).mean() < 1.0


def recipe_from(wf, sampler, ckpt):
    """txt2img with the workflow's prompts and sampler params on checkpoint ``ckpt``."""
    from studio import recipes

    texts = [wf.get_node(wf.link_into(sampler.id, side).source).params["text"]
             for side in ("positive", "negative")]  # fmt: skip
    p = sampler.params
    out, _ = recipes.txt2img(
        installed_registry(), ckpt, texts[0], negative=texts[1], seed=p["seed"],
        steps=p["steps"], cfg=p["cfg"], sampler=p["sampler"], scheduler=p["scheduler"],
        width=64, height=64, output="preview_image",
    )  # fmt: skip
    return out


# -- the command line ---------------------------------------------------------------------------


def test_studio_run_txt2img_on_a_fresh_install_writes_a_png(tmp_path, fresh_settings, capsys):
    from PIL import Image

    from studio.cli import main

    out = tmp_path / "cli-out"
    code = main(["run", str(WORKFLOWS / "txt2img.json"), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    (png,) = saved_pngs(out)
    assert str(png) in printed.out
    with Image.open(png) as im:
        assert im.size == (64, 64)
        assert (
            "Steps: 20" in im.info["parameters"] and "Model: studio-tiny" in im.info["parameters"]
        )


# -- the files ----------------------------------------------------------------------------------


def test_committed_files_are_what_the_generator_writes():
    gen = generator()
    outputs = gen.outputs()
    assert {p.name for p in outputs} >= {f"{n}.json" for n in NAMES}
    for path, data in outputs.items():
        assert path.is_file(), f"{path} is missing: run resources/workflows/make_workflows.py"
        assert path.read_bytes() == data, (
            f"{path.name} differs from what make_workflows.py writes; run it and commit"
        )


@pytest.mark.parametrize("name", NAMES)
def test_layout_reads_left_to_right_without_overlaps(name):
    """Every link goes rightwards (or down a column), and no two nodes, nor a node and the
    note, overlap on the canvas, even once images show on the nodes after a run."""
    pytest.importorskip("PySide6")
    from studio.app.canvas.node_item import MESSAGE_H
    from studio.app.canvas.shape import PAD, shape_for_spec

    gen = generator()
    wf = load_workflow(WORKFLOWS / f"{name}.json", installed_registry())
    rects = {}
    for n in wf.nodes:
        lay = wf.layout.nodes[n.id]
        shape = shape_for_spec(wf.spec_of(n), lay.width, lay.collapsed)
        h = shape.height + MESSAGE_H
        if n.type in ("load_image", "sampler", "save_image", "preview_image"):
            h += shape.width - 2 * PAD + PAD  # the picture shown under the params
        rects[n.id] = (lay.pos[0], lay.pos[1], shape.width, h)
    for note in wf.layout.notes:
        rects[note.id] = (*note.pos, *note.size)
    assert len(wf.layout.notes) == 1 and len(wf.layout.notes[0].text) > 80

    def overlap(a, b):
        return (
            a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
        )

    ids = list(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            assert not overlap(rects[a], rects[b]), (wf.display_title(a), wf.display_title(b))
    for lk in wf.links:
        src, dst = rects[lk.source], rects[lk.target]
        assert src[0] < dst[0] or (src[0] == dst[0] and src[1] < dst[1]), lk
    assert shape_for_spec(wf.spec_of(wf.nodes[0]), None, False).width == gen.NODE_WIDTH


# -- Load Image finds the example images -------------------------------------------------------


def load_image_workflow(name: str):
    from studio.graph.workflow import Workflow

    wf = Workflow(installed_registry())
    load = wf.add_node("load_image", {"image": name})
    out = wf.add_node("preview_image")
    wf.connect(load.id, "image", out.id, "images")
    return wf, load.id


def test_load_image_falls_back_to_the_shipped_examples(engine, fresh_settings):
    from PIL import Image

    gen = generator()
    wf, load = load_image_workflow(gen.EXAMPLE_IMAGE)
    first = engine.run(wf)
    assert first.ok, first.errors
    shipped = pixels(gen.IMAGES / gen.EXAMPLE_IMAGE)
    assert (pixels(first.images[0]) == shipped).all()
    # A picture of the same name in the user's input folder wins, and the node re-runs.
    fresh_settings.input_path.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), "white").save(fresh_settings.input_path / gen.EXAMPLE_IMAGE)
    second = engine.run(wf)
    assert load in second.ran
    assert (pixels(second.images[0]) == 255).all()


def test_a_missing_image_names_where_it_was_looked_for(engine, fresh_settings):
    wf, load = load_image_workflow("no-such-picture.png")
    result = engine.run(wf)
    message = result.errors[load]
    assert "no-such-picture.png" in message
    assert str(fresh_settings.input_path) in message and "resources" in message


def test_the_app_thumbnail_finds_the_example_too(fresh_settings):
    pytest.importorskip("PySide6")
    from studio.app.thumbnails import resolve_image_path

    gen = generator()
    found = resolve_image_path(gen.EXAMPLE_IMAGE, fresh_settings.input_path)
    assert found == gen.IMAGES / gen.EXAMPLE_IMAGE


# -- the app ------------------------------------------------------------------------------------


def test_the_app_opens_txt2img_runs_it_and_a_new_seed_reruns_only_the_sampler_on(
    make_window, fresh_settings, qtbot
):
    """What a first launch shows: the default txt2img file, run, then run with another seed."""
    pytest.importorskip("PySide6")
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from studio.app.canvas.node_item import RunState
    from studio.app.main import DEFAULT_WORKFLOW
    from studio.engine.queue import JobState
    from studio.library import installed_registry

    assert DEFAULT_WORKFLOW == WORKFLOWS / "txt2img.json"
    w = make_window(None, registry=installed_registry())
    try:
        assert w.open_path(DEFAULT_WORKFLOW, as_template=True)
        wf = w.controller.wf
        role = {n.type: n.id for n in wf.nodes}
        QTest.keyClick(w.view, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        qtbot.waitUntil(lambda: len(w.runs.ended) >= 1, timeout=120_000)
        (first,) = w.runs.ended
        assert first.state == JobState.DONE, first.message or first.result.errors
        save = w.scene.nodes[role["save_image"]]
        assert save.image is not None and (save.image.width(), save.image.height()) == (64, 64)
        assert len(saved_pngs(fresh_settings.output_path)) == 1

        sampler = role["sampler"]
        w.controller.set_param(sampler, "seed", wf.get_node(sampler).params["seed"] + 1)
        QTest.keyClick(w.view, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        qtbot.waitUntil(lambda: len(w.runs.ended) >= 2, timeout=120_000)
        second = sorted(w.runs.ended, key=lambda j: j.id)[1]
        assert second.state == JobState.DONE, second.message or second.result.errors
        states = {n.type + ":" + n.title: w.scene.nodes[n.id].run_state for n in wf.nodes}
        assert states == {
            "load_checkpoint:": RunState.CACHED,
            "text_encode:Prompt": RunState.CACHED,
            "text_encode:Negative prompt": RunState.CACHED,
            "empty_latent:": RunState.CACHED,
            "sampler:": RunState.DONE,
            "vae_decode:": RunState.DONE,
            "save_image:": RunState.DONE,
        }
        a, b = (o.pil for o in w.history.outputs)
        assert a.size == b.size == (64, 64) and a.tobytes() != b.tobytes()
        assert len(saved_pngs(fresh_settings.output_path)) == 2
    finally:
        w.shutdown_runs()


def test_every_default_workflow_names_studio_tiny():
    for name in NAMES:
        data = json.loads((WORKFLOWS / f"{name}.json").read_text("utf-8"))
        ckpts = [n["params"]["ckpt_name"] for n in data["nodes"] if n["type"] == "load_checkpoint"]
        assert ckpts == [MODEL_OF.get(name, "studio-tiny")], name


def test_txt2img_flux_becomes_a_default_once_studio_tiny_flux_is_there(monkeypatch):
    """Without the GPU-trained studio-tiny-flux only the Flux.1-dev template is written; with
    it, also resources/workflows/txt2img_flux.json on it (Load Checkpoint, true CFG)."""
    gen = generator()
    default = WORKFLOWS / "txt2img_flux.json"
    template = WORKFLOWS / "templates" / "txt2img_flux.json"
    monkeypatch.setattr(gen, "TINY_FLUX_PRESENT", False)
    assert template in gen.outputs() and default not in gen.outputs()
    monkeypatch.setattr(gen, "TINY_FLUX_PRESENT", True)
    files = gen.outputs()
    assert template in files
    data = json.loads(files[default])
    by_type = {n["type"]: n["params"] for n in data["nodes"]}
    assert by_type["load_checkpoint"] == {"ckpt_name": "studio-tiny-flux"}
    assert by_type["sampler"]["cfg"] > 1.0  # no guidance input: true CFG
