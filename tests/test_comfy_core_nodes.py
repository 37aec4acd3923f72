"""Latent Upscale to Size, Load LoRA (Model Only), Apply ControlNet (One Prompt) and
Conditioning Set Timestep Range: ComfyUI's LatentUpscale, LoraLoaderModelOnly, old
ControlNetApply and ConditioningSetTimestepRange, mapped both ways and run on studio-tiny."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nodes.comfycore import in_range, latent_upscale_to  # noqa: E402
from nodes.values import Cond  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from training.studio_run import to_uint8, txt2img_workflow  # noqa: E402

STEPS = 8


def test_latent_upscale_to_a_size_follows_comfyui():
    samples = torch.arange(8 * 16, dtype=torch.float32).reshape(1, 1, 8, 16).repeat(1, 4, 1, 1)
    latent = {"samples": samples}  # 128 x 64 pixels
    out = latent_upscale_to.execute(None, latent, "nearest-exact", 64, 64, "center")["samples"]
    assert torch.equal(out, samples[..., 4:12])  # the middle square, nothing stretched
    out = latent_upscale_to.execute(None, latent, "bilinear", 64, 64, "disabled")["samples"]
    assert out.shape == (1, 4, 8, 8) and not torch.equal(out, samples[..., 4:12])
    # a side of 0 keeps the aspect; each side is at least 64 pixels
    assert latent_upscale_to.execute(None, latent, "area", 0, 128, "disabled")["samples"].shape == (
        1,
        4,
        16,
        32,
    )
    assert latent_upscale_to.execute(None, latent, "area", 16, 0, "disabled")["samples"].shape == (
        1,
        4,
        8,
        8,
    )
    assert latent_upscale_to.execute(None, latent, "area", 0, 0, "disabled")["samples"] is samples


def test_timestep_ranges_are_comfyuis_percentages():
    c = Cond(embeds=None, extra={"timestep_range": (0.5, 1.0)})
    assert not in_range(c, 999) and not in_range(c, 500) and in_range(c, 499) and in_range(c, 0)
    c = Cond(embeds=None, extra={"timestep_range": (0.0, 0.5)})
    assert in_range(c, 999) and in_range(c, 500) and not in_range(c, 499)
    assert in_range(Cond(embeds=None), 123)


@pytest.fixture(scope="module")
def engine():
    return Engine(installed_registry())


def image(engine, wf, ids):
    result = engine.run(wf)
    assert result.ok, result.errors
    return to_uint8(result.outputs[ids["decode"]]["image"])[0].astype(int)


def base():
    return txt2img_workflow("a large red circle on a blue background", seed=4, steps=STEPS)


def test_lora_model_only_equals_load_lora_without_its_clip_part(engine):
    lora = "studio-tiny-outline.safetensors"
    wf, ids = base()
    full = wf.add_node("load_lora", {"lora_name": lora, "strength_clip": 0.0}).id
    wf.connect(ids["ckpt"], "model", full, "model")
    wf.connect(ids["ckpt"], "clip", full, "clip")
    wf.connect(full, "model", ids["sampler"], "model")
    want = image(engine, wf, ids)
    wf, ids = base()
    plain = image(engine, wf, ids)
    only = wf.add_node("load_lora_model_only", {"lora_name": lora}).id
    wf.connect(ids["ckpt"], "model", only, "model")
    wf.connect(only, "model", ids["sampler"], "model")
    got = image(engine, wf, ids)
    assert np.array_equal(got, want)
    assert np.abs(got - plain).mean() > 2  # the LoRA does act


def test_controlnet_on_one_prompt_acts_as_on_both(engine):
    """ComfyUI's old ControlNetApply sets the ControlNet on the positive prompt only; a
    negative without one takes the positive's, so it equals Apply ControlNet on both."""
    from studio.modelfiles import RESOURCES

    def with_control(kind):
        wf, ids = base()
        cn = wf.add_node("load_controlnet", {"control_net_name": "studio-tiny-canny"}).id
        img = wf.add_node(
            "load_image", {"image": str(RESOURCES / "images" / "example_red_circle_left.png")}
        ).id
        if kind == "both":
            apply = wf.add_node("apply_controlnet", {"strength": 1.0}).id
            wf.connect(ids["pos"], "conditioning", apply, "positive")
            wf.connect(ids["neg"], "conditioning", apply, "negative")
            wf.connect(apply, "positive", ids["sampler"], "positive")
            wf.connect(apply, "negative", ids["sampler"], "negative")
        else:
            apply = wf.add_node("apply_controlnet_one", {"strength": 1.0}).id
            wf.connect(ids["pos"], "conditioning", apply, "conditioning")
            wf.connect(apply, "conditioning", ids["sampler"], "positive")
        wf.connect(cn, "control_net", apply, "control_net")
        wf.connect(img, "image", apply, "image")
        return image(engine, wf, ids)

    assert np.array_equal(with_control("one"), with_control("both"))


def test_a_prompt_switched_halfway(engine):
    def combined(ranges):
        wf, ids = base()
        other = wf.add_node("text_encode", {"text": "a large yellow square on a black background"})
        wf.connect(ids["ckpt"], "clip", other.id, "clip")
        parts = []
        for src, (start, end) in zip((ids["pos"], other.id), ranges, strict=True):
            r = wf.add_node("conditioning_set_timestep_range", {"start": start, "end": end}).id
            wf.connect(src, "conditioning", r, "conditioning")
            parts.append(r)
        comb = wf.add_node("conditioning_combine").id
        wf.connect(parts[0], "conditioning", comb, "conditioning_1")
        wf.connect(parts[1], "conditioning", comb, "conditioning_2")
        wf.connect(comb, "conditioning", ids["sampler"], "positive")
        return image(engine, wf, ids)

    wf, ids = base()
    first_only = image(engine, wf, ids)
    # the second prompt acting in no step leaves the first prompt's image (computed one
    # prompt a model call instead of both sides in one batch: CPU kernels may round the two
    # batch sizes differently in the last bit, so allow a level where that shows)
    alone = combined([(0.0, 1.0), (1.0, 1.0)])
    assert np.abs(alone - first_only).max() <= 1
    assert (alone != first_only).mean() < 0.01
    halfway = combined([(0.0, 0.5), (0.5, 1.0)])
    assert np.abs(halfway - first_only).mean() > 2


def test_the_four_types_import_and_export():
    reg = installed_registry()
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "studio-tiny"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["1", 1]}},
        "3": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"lora_name": "x.safetensors", "strength_model": 0.5, "model": ["1", 0]},
        },
        "4": {
            "class_type": "ConditioningSetTimestepRange",
            "inputs": {"start": 0.2, "end": 0.8, "conditioning": ["2", 0]},
        },
        "5": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "c"}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "7": {
            "class_type": "ControlNetApply",
            "inputs": {
                "strength": 0.7,
                "conditioning": ["4", 0],
                "control_net": ["5", 0],
                "image": ["6", 0],
            },
        },
        "8": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "9": {
            "class_type": "LatentUpscale",
            "inputs": {
                "upscale_method": "bilinear",
                "width": 128,
                "height": 0,
                "crop": "center",
                "samples": ["8", 0],
            },
        },
    }
    result = import_comfyui(api, reg, source="api.json")
    wf = result.workflow
    assert {n.id: n.type for n in wf.nodes if not n.type.startswith("load_")} == {
        "2": "text_encode",
        "4": "conditioning_set_timestep_range",
        "7": "apply_controlnet_one",
        "8": "empty_latent",
        "9": "latent_upscale_to",
    }
    assert wf.get_node("9").params == {
        "method": "bilinear",
        "width": 128,
        "height": 0,
        "crop": "center",
    }
    assert wf.get_node("3").params["strength_model"] == 0.5
    assert not [n for n in wf.nodes if n.type.startswith("comfyui.")]
    back = export_comfyui_api(wf)
    assert {k: v["class_type"] for k, v in back.items()} == {
        k: v["class_type"] for k, v in api.items()
    }
    assert back["9"]["inputs"] == api["9"]["inputs"]
    assert back["7"]["inputs"] == api["7"]["inputs"]


def test_area_weights_fade_at_inner_edges():
    from nodes.comfycore import area_cells, area_weight

    cells = area_cells((128, 256, 0, 64), (16, 48), 8)  # 256x128 px at x=64 of 384x128 px
    assert cells == (0, 8, 16, 32)
    w = area_weight(cells, (16, 48), 0.5, 1)[0, 0]
    # left and right edges inside the image: columns fade 1/8 .. 8/8 (min(8, 32 // 4));
    # top and bottom are the image's own edges: no fade there
    assert w[:, 0].tolist() == [0.5 / 8] * 16 and w[:, 7].tolist() == [0.5] * 16
    assert w[:, 8].tolist() == [0.5] * 16 and w[0, 3].item() == 0.5 * 4 / 8
    assert w[:, 31].tolist() == [0.5 / 8] * 16
    # a narrow area fades over a quarter of its side: 12 columns over 3, 6 rows over 1
    w = area_weight((4, 4, 6, 12), (16, 48), 1.0, 1)[0, 0]
    assert w[3, :4].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert w[3, -1].item() == pytest.approx(1 / 3)
    assert w[:, 5].tolist() == [1.0] * 6  # rows: rr = 1, a factor of 1
    with pytest.raises(Exception, match="lies outside"):
        area_cells((64, 64, 0, 512), (16, 32), 8)


def test_negative_prompts_follow_areas():
    from nodes.comfycore import with_same_areas

    pos = [Cond(embeds="whole"), Cond(embeds="part", extra={"area": (64, 64, 0, 64)})]
    neg = [Cond(embeds="neg")]
    p2, n2 = with_same_areas(pos, neg)
    assert p2 == pos
    assert [c.embeds for c in n2] == ["neg", "neg"] and n2[1].extra["area"] == (64, 64, 0, 64)


def test_an_area_prompt_changes_its_part_of_the_image(engine):
    def with_area(strength):
        wf, ids = base()
        other = wf.add_node("text_encode", {"text": "a large yellow square on a black background"})
        wf.connect(ids["ckpt"], "clip", other.id, "clip")
        area = wf.add_node(
            "conditioning_set_area",
            {"width": 32, "height": 64, "x": 32, "y": 0, "strength": strength},
        ).id
        wf.connect(other.id, "conditioning", area, "conditioning")
        comb = wf.add_node("conditioning_combine").id
        wf.connect(ids["pos"], "conditioning", comb, "conditioning_1")
        wf.connect(area, "conditioning", comb, "conditioning_2")
        wf.connect(comb, "conditioning", ids["sampler"], "positive")
        return image(engine, wf, ids)

    wf, ids = base()
    plain = image(engine, wf, ids)
    assert np.abs(with_area(0.0) - plain).mean() < 1  # no weight: the whole prompt alone
    changed = np.abs(with_area(1.0) - plain).mean(axis=(0, 2))
    assert changed[32:].mean() > 2 * changed[:32].mean()  # the right half changes most


def test_the_deprecated_checkpoint_loader_with_a_config_imports_as_load_checkpoint():
    """CheckpointLoader (a .yaml config beside the checkpoint): Studio reads the family from
    the tensors, so the file becomes the same graph as with CheckpointLoaderSimple, and the
    report says the config is not read."""
    reg = installed_registry()

    def api(loader: dict) -> dict:
        return {
            "1": loader,
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["1", 1]}},
            "3": {
                "class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1},
            },
            "4": {
                "class_type": "KSampler",
                "inputs": {
                    "seed": 1,
                    "steps": 4,
                    "cfg": 3.0,
                    "sampler_name": "euler",
                    "scheduler": "normal",
                    "denoise": 1.0,
                    "model": ["1", 0],
                    "positive": ["2", 0],
                    "negative": ["2", 0],
                    "latent_image": ["3", 0],
                },
            },
            "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        }

    simple = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "studio-tiny"}}
    old = {
        "class_type": "CheckpointLoader",
        "inputs": {"config_name": "v1-inference.yaml", "ckpt_name": "studio-tiny"},
    }
    want = import_comfyui(api(simple), reg, source="simple.json")
    got = import_comfyui(api(old), reg, source="old.json")
    assert not [n for n in got.workflow.nodes if n.type.startswith("comfyui.")]
    loader = got.workflow.get_node("1")
    assert loader.type == "load_checkpoint"
    assert loader.params == want.workflow.get_node("1").params

    def wiring(wf):
        return sorted((k.source, k.output, k.target, k.input) for k in wf.links)

    assert wiring(got.workflow) == wiring(want.workflow)
    assert any("config file is not read" in line for line in got.report)
    # the UI-format file of the same graph (widgets in ComfyUI's order) reads the same
    ui = {
        "nodes": [
            {
                "id": 1, "type": "CheckpointLoader", "pos": [0, 0],
                "widgets_values": ["v1-inference.yaml", "studio-tiny"],
                "outputs": [{"name": "MODEL"}, {"name": "CLIP"}, {"name": "VAE"}],
            }
        ],
        "links": [],
    }  # fmt: skip
    assert import_comfyui(ui, reg, source="ui.json").workflow.get_node("1").params == (
        loader.params
    )
    assert export_comfyui_api(got.workflow)["1"]["class_type"] == "CheckpointLoaderSimple"
