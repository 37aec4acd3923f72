"""ControlNet: a graph equals StableDiffusionControlNetPipeline (tiny models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402
from PIL import Image  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

PROMPT, NEGATIVE, SEED, STEPS, CFG = "a red circle", "blurry", 3, 4, 6.0


def tiny_controlnet(unet, seed):
    """A ControlNet mirroring the tiny UNet, with non-zero output convs so it acts."""
    torch.manual_seed(seed)
    cn = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 8))
    with torch.no_grad():
        for block in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
            block.weight.normal_(0, 0.05)
            block.bias.normal_(0, 0.02)
        for p in cn.controlnet_cond_embedding.parameters():
            p.normal_(0, 0.15)
    return cn.eval()


def control_picture(path, offset):
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, offset : offset + 20] = 255
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    parts = fx.tiny_sd1()
    fx.save_folder(fx.sd1_pipeline(parts), root / "checkpoints" / "tiny-sd1")
    tiny_controlnet(parts["unet"], 1).save_pretrained(root / "controlnet" / "edges")
    tiny_controlnet(parts["unet"], 2).save_pretrained(root / "controlnet" / "depth")
    wide = diffusers.UNet2DConditionModel(
        **{**dict(parts["unet"].config), "cross_attention_dim": 64}
    )
    tiny_controlnet(wide, 3).save_pretrained(root / "controlnet" / "other-family")
    (root / "controlnet" / "not-a-controlnet").mkdir()
    (root / "controlnet" / "not-a-controlnet" / "config.json").write_text(
        '{"_class_name": "UNet2DConditionModel"}'
    )
    control_picture(root / "left.png", 8)
    control_picture(root / "right.png", 36)
    return root


@pytest.fixture
def engine(models_root, tmp_path):
    settings = Settings(models_root=str(models_root), output_dir=str(tmp_path / "out"))
    yield Engine(installed_registry(), settings=settings)


def controlnet_graph(models_root, nets):
    """txt2img with one Apply ControlNet per (net, image, strength, start, end)."""
    wf, ids = fx.txt2img(
        "tiny-sd1", prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS, cfg=CFG
    )
    pos, neg = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
    for i, (net, picture, strength, start, end) in enumerate(nets):
        loader = wf.add_node("load_controlnet", {"control_net_name": net}, title=f"CN {i}")
        image = wf.add_node("load_image", {"image": str(models_root / picture)})
        apply = wf.add_node(
            "apply_controlnet", {"strength": strength, "start_percent": start, "end_percent": end}
        )
        wf.connect(*pos, apply.id, "positive")
        wf.connect(*neg, apply.id, "negative")
        wf.connect(loader.id, "control_net", apply.id, "control_net")
        wf.connect(image.id, "image", apply.id, "image")
        pos, neg = (apply.id, "positive"), (apply.id, "negative")
        ids[f"cn{i}"], ids[f"apply{i}"] = loader.id, apply.id
    wf.connect(*pos, ids["sampler"], "positive")
    wf.connect(*neg, ids["sampler"], "negative")
    return wf, ids


def pipeline_image(models_root, nets):
    base = diffusers.StableDiffusionPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sd1"), safety_checker=None
    )
    controlnets = [
        diffusers.ControlNetModel.from_pretrained(str(models_root / "controlnet" / n[0]))
        for n in nets
    ]
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        controlnet=controlnets if len(nets) > 1 else controlnets[0],
        scheduler=diffusers.EulerDiscreteScheduler.from_config(base.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    images = [Image.open(models_root / n[1]).convert("RGB") for n in nets]
    one = len(nets) == 1
    return pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        image=images[0] if one else images,
        height=64,
        width=64,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        controlnet_conditioning_scale=nets[0][2] if one else [n[2] for n in nets],
        control_guidance_start=nets[0][3] if one else [n[3] for n in nets],
        control_guidance_end=nets[0][4] if one else [n[4] for n in nets],
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images


def graph_image(engine, models_root, nets, what="image"):
    wf, ids = controlnet_graph(models_root, nets)
    result = engine.run(wf)
    assert result.ok, result.errors
    if what == "latent":
        return result.outputs[ids["sampler"]]["latent"]["samples"].numpy()
    return result.outputs[ids["decode"]]["image"].numpy()


@pytest.mark.parametrize("window", [(0.0, 1.0), (0.25, 0.75)])
def test_controlnet_graph_equals_pipeline(engine, models_root, window):
    nets = [("edges", "left.png", 0.8, *window)]
    got = graph_image(engine, models_root, nets)
    want = pipeline_image(models_root, nets)
    assert np.abs(got - want).max() <= 1e-4
    # The ControlNet acts, and the control image matters (seen on the latents: the tiny random
    # VAE flattens images; whether shapes follow the image is tested with the trained model).
    left = graph_image(engine, models_root, nets, "latent")
    right = graph_image(engine, models_root, [("edges", "right.png", 0.8, *window)], "latent")
    off = graph_image(engine, models_root, [("edges", "left.png", 0.0, *window)], "latent")
    scale = np.abs(left).max()
    assert np.abs(left - off).max() > 1e-2 * scale
    assert np.abs(left - right).max() > 1e-4 * scale


def test_stacked_controlnets_equal_multi_controlnet_pipeline(engine, models_root):
    nets = [("edges", "left.png", 0.7, 0.0, 1.0), ("depth", "right.png", 0.5, 0.0, 0.5)]
    got = graph_image(engine, models_root, nets)
    want = pipeline_image(models_root, nets)
    assert np.abs(got - want).max() <= 1e-4


def test_controlnet_for_another_family_is_a_clear_error(engine, models_root):
    wf, ids = controlnet_graph(models_root, [("other-family", "left.png", 1.0, 0.0, 1.0)])
    result = engine.run(wf)
    message = result.errors[ids["sampler"]]
    assert "ControlNet 'other-family'" in message and "family" in message


def test_folder_that_is_not_a_controlnet(engine, models_root):
    wf, ids = controlnet_graph(models_root, [("not-a-controlnet", "left.png", 1.0, 0.0, 1.0)])
    result = engine.run(wf)
    assert "not-a-controlnet: not a ControlNet" in result.errors[ids["cn0"]]


def test_sdxl_controlnet_graph_equals_pipeline(tmp_path):
    parts = fx.tiny_sdxl()
    root = tmp_path / "models"
    fx.save_folder(fx.sdxl_pipeline(parts), root / "checkpoints" / "tiny-sdxl")
    tiny_controlnet(parts["unet"], 4).save_pretrained(root / "controlnet" / "xl-edges")
    control_picture(root / "left.png", 8)
    settings = Settings(models_root=str(root), output_dir=str(tmp_path / "out"))
    wf, ids = fx.txt2img(
        "tiny-sdxl", prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS, cfg=CFG
    )
    loader = wf.add_node("load_controlnet", {"control_net_name": "xl-edges"})
    image = wf.add_node("load_image", {"image": str(root / "left.png")})
    apply = wf.add_node(
        "apply_controlnet", {"strength": 0.9, "start_percent": 0.0, "end_percent": 0.75}
    )
    wf.connect(ids["pos"], "conditioning", apply.id, "positive")
    wf.connect(ids["neg"], "conditioning", apply.id, "negative")
    wf.connect(loader.id, "control_net", apply.id, "control_net")
    wf.connect(image.id, "image", apply.id, "image")
    wf.connect(apply.id, "positive", ids["sampler"], "positive")
    wf.connect(apply.id, "negative", ids["sampler"], "negative")
    result = Engine(installed_registry(), settings=settings).run(wf)
    assert result.ok, result.errors
    got = result.outputs[ids["decode"]]["image"].numpy()
    base = diffusers.StableDiffusionXLPipeline.from_pretrained(
        str(root / "checkpoints" / "tiny-sdxl")
    )
    pipe = diffusers.StableDiffusionXLControlNetPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        text_encoder_2=base.text_encoder_2,
        tokenizer=base.tokenizer,
        tokenizer_2=base.tokenizer_2,
        unet=base.unet,
        controlnet=diffusers.ControlNetModel.from_pretrained(str(root / "controlnet" / "xl-edges")),
        scheduler=diffusers.EulerDiscreteScheduler.from_config(base.scheduler.config),
    )
    want = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        image=Image.open(root / "left.png").convert("RGB"),
        height=64,
        width=64,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        controlnet_conditioning_scale=0.9,
        control_guidance_start=0.0,
        control_guidance_end=0.75,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images
    assert np.abs(got - want).max() <= 1e-4


def test_combined_prompts_keep_their_controlnet(engine, models_root):
    """Conditioning Combine: each prompt is predicted with its own ControlNet; a prompt
    combined with itself gives the image it gives alone, with the ControlNet still acting."""
    nets = [("edges", "left.png", 1.0, 0.0, 1.0)]
    alone = graph_image(engine, models_root, nets, what="latent")
    wf, ids = controlnet_graph(models_root, nets)
    combine = wf.add_node("conditioning_combine").id
    wf.connect(ids["apply0"], "positive", combine, "conditioning_1")
    wf.connect(ids["apply0"], "positive", combine, "conditioning_2")
    wf.connect(combine, "conditioning", ids["sampler"], "positive")
    result = engine.run(wf)
    assert result.ok, result.errors
    twice = result.outputs[ids["sampler"]]["latent"]["samples"].numpy()
    assert np.allclose(twice, alone, atol=1e-5)
    plain = fx.txt2img(
        "tiny-sd1", prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS, cfg=CFG
    )
    result = engine.run(plain[0])
    assert result.ok, result.errors
    without = result.outputs[plain[1]["sampler"]]["latent"]["samples"].numpy()
    assert np.abs(twice - without).max() > 1e-3
