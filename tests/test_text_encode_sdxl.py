"""Text Encode (SDXL), ComfyUI's CLIPTextEncodeSDXL: a text for each of SDXL's encoders and
its size conditioning, equal to StableDiffusionXLPipeline given the same (``prompt`` for
CLIP-L, ``prompt_2`` for CLIP-G, ``original_size``, ``crops_coords_top_left``,
``target_size``) on the tiny SDXL model; ComfyUI files with it import and run."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402

from studio.graph import Workflow  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402

engine, models_root, tiny_parts = fx.engine, fx.models_root, fx.tiny_parts

TEXT_G, TEXT_L, NEGATIVE = "a photo of a red fox", "a fox, snow", "blurry"
SEED, STEPS, CFG = 3, 4, 6.0


def graph(
    positive: dict, negative: dict | None = None, ckpt: str = "tiny-sdxl", scheduler="normal"
):
    """txt2img with Text Encode (SDXL) as the positive (and, given, the negative) prompt."""
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": ckpt}).id
    pos = add("text_encode_sdxl", positive).id
    if negative is None:
        neg = add("text_encode", {"text": NEGATIVE}).id
    else:
        neg = add("text_encode_sdxl", negative).id
    lat = add("empty_latent", {"width": 64, "height": 64}).id
    params = {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler": "euler"}
    s = add("sampler", {**params, "scheduler": scheduler, "denoise": 1.0}).id
    dec = add("vae_decode").id
    for node in (pos, neg):
        c(ck, "clip", node, "clip")
    c(ck, "model", s, "model")
    c(pos, "conditioning", s, "positive")
    c(neg, "conditioning", s, "negative")
    c(lat, "latent", s, "latent")
    c(s, "latent", dec, "latent")
    c(ck, "vae", dec, "vae")
    return wf, dec


def picture(engine, *args, **kw) -> np.ndarray:
    wf, dec = graph(*args, **kw)
    result = engine.run(wf, targets=[dec])
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def pipeline_picture(models_root, **kw) -> np.ndarray:
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sdxl")
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        height=64, width=64, num_inference_steps=STEPS, guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED), output_type="np", **kw,
    ).images  # fmt: skip


def sizes(w: int, h: int, crop: tuple[int, int], target: tuple[int, int]) -> dict:
    return {
        "width": w, "height": h, "crop_w": crop[0], "crop_h": crop[1],
        "target_width": target[0], "target_height": target[1],
    }  # fmt: skip


def test_two_texts_and_the_size_conditioning_equal_the_sdxl_pipeline(engine, models_root):
    params = {"text_g": TEXT_G, "text_l": TEXT_L, **sizes(2048, 1536, (16, 8), (1024, 768))}
    got = picture(engine, params)
    want = pipeline_picture(
        models_root, prompt=TEXT_L, prompt_2=TEXT_G, negative_prompt=NEGATIVE,
        original_size=(1536, 2048), crops_coords_top_left=(8, 16), target_size=(768, 1024),
        negative_original_size=(64, 64), negative_target_size=(64, 64),
    )  # fmt: skip
    assert np.abs(got - want).max() <= 1e-4
    # each part of it shows in the picture: the sizes, the second text
    plain = {"text_g": TEXT_G, "text_l": TEXT_L, **sizes(64, 64, (0, 0), (64, 64))}
    same_text = {**params, "text_l": TEXT_G}
    for other in (plain, same_text):
        assert np.abs(picture(engine, other) - got).max() > 1e-3


def test_at_the_pictures_own_size_with_one_text_it_is_text_encode(engine):
    """Text Encode gives SDXL the picture's own size, no crop, the one text to both."""
    wf, dec = graph({"text_g": TEXT_G, "text_l": TEXT_G, **sizes(64, 64, (0, 0), (64, 64))})
    via_sdxl = engine.run(wf, targets=[dec]).outputs[dec]["image"].numpy()
    plain_wf, ids = fx.txt2img("tiny-sdxl", prompt=TEXT_G, negative=NEGATIVE, seed=SEED,
                               steps=STEPS, cfg=CFG)  # fmt: skip
    result = engine.run(plain_wf)
    assert result.ok, result.errors
    assert np.abs(result.outputs[ids["decode"]]["image"].numpy() - via_sdxl).max() <= 1e-5


def test_on_another_family_it_says_to_use_text_encode(engine):
    wf, dec = graph({"text_g": TEXT_G, "text_l": TEXT_G}, ckpt="tiny-sd1")
    result = engine.run(wf, targets=[dec])
    assert not result.ok
    message = str(result.errors)
    assert "Text Encode (SDXL) is for SDXL checkpoints" in message
    assert "Traceback" not in message


def sdxl_api(encode_inputs: dict) -> dict:
    """A ComfyUI txt2img prompt on tiny-sdxl whose positive prompt is CLIPTextEncodeSDXL
    (node "2") with these inputs."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sdxl"}},
        "2": {"class_type": "CLIPTextEncodeSDXL", "inputs": encode_inputs},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                           "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["1", 0], "positive": ["2", 0],
            "negative": ["3", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    }  # fmt: skip


def test_comfyuis_clip_text_encode_sdxl_imports_runs_and_exports(engine, models_root):
    values = {"width": 2048, "height": 1536, "crop_w": 16, "crop_h": 8, "target_width": 1024,
              "target_height": 768, "text_g": TEXT_G, "text_l": TEXT_L}  # fmt: skip
    api = sdxl_api({**values, "clip": ["1", 1]})
    result = import_comfyui(api, installed_registry(), source="sdxl.json")
    wf = result.workflow
    node = wf.get_node("2")
    assert node.type == "text_encode_sdxl" and node.params == {**values, "clip_skip": 1}
    assert not [n for n in wf.nodes if n.type.startswith("comfyui.")], result.report
    assert export_comfyui_api(wf)["2"]["inputs"] == api["2"]["inputs"]
    run = engine.run(wf, targets=["6"])
    assert run.ok, run.errors
    scheduler = wf.get_node("5").params["scheduler"]  # KSampler's: ComfyUI's own schedule
    want = picture(engine, {"text_g": TEXT_G, "text_l": TEXT_L,
                            **sizes(2048, 1536, (16, 8), (1024, 768))},
                   scheduler=scheduler)  # fmt: skip
    assert np.abs(run.outputs["6"]["image"].numpy() - want).max() <= 1e-5


def test_clip_set_last_layer_before_clip_text_encode_sdxl_is_its_clip_skip(engine):
    """CLIP Set Last Layer -3 feeding CLIPTextEncodeSDXL becomes its clip skip 3 (SDXL's own
    layer is -2), draws the picture of Text Encode (SDXL) at clip skip 3, and exports back."""
    encode = {**sizes(64, 64, (0, 0), (64, 64)), "text_g": TEXT_G, "text_l": TEXT_L,
              "clip": ["9", 0]}  # fmt: skip
    api = sdxl_api(encode)
    api["9"] = {"class_type": "CLIPSetLastLayer",
                "inputs": {"stop_at_clip_layer": -3, "clip": ["1", 1]}}  # fmt: skip
    result = import_comfyui(api, installed_registry(), source="sdxl.json")
    wf = result.workflow
    assert not wf.has_node("9") and wf.get_node("2").params["clip_skip"] == 3
    assert any("clip skip 3" in line for line in result.report)
    exported = export_comfyui_api(wf)
    csl = exported["2"]["inputs"]["clip"][0]
    assert exported[csl]["inputs"] == {"stop_at_clip_layer": -3, "clip": ["1", 1]}
    run = engine.run(wf, targets=["6"])
    assert run.ok, run.errors
    scheduler = wf.get_node("5").params["scheduler"]
    params = {"text_g": TEXT_G, "text_l": TEXT_L, **sizes(64, 64, (0, 0), (64, 64))}
    want = picture(engine, {**params, "clip_skip": 3}, scheduler=scheduler)
    assert np.abs(run.outputs["6"]["image"].numpy() - want).max() <= 1e-5
    assert np.abs(picture(engine, params, scheduler=scheduler) - want).max() > 1e-3
