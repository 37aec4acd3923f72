"""FLUX.1 Canny [dev] / FLUX.1 Depth [dev] (Black Forest Labs' structural conditioning)
through Studio's graph equal FluxControlPipeline (tiny random components built in code, CPU,
64x64, 3 steps): InstructPixToPix Conditioning VAE-encodes the control image onto the prompts
and gives the Sampler an empty latent of its size; the Sampler feeds the control image's
latent to the 128-channel transformer beside the noisy latent. From the diffusers folder
(Load Checkpoint), an all-in-one file (Load Checkpoint) and transformer files in both key
layouts (Load Diffusion Model)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures  # noqa: E402
import dit_fixtures as fx  # noqa: E402

from studio.graph.workflow import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402

PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry"
SEED, STEPS = 7, 3


@pytest.fixture(scope="module")
def parts():
    return fx.tiny_flux_control()


@pytest.fixture(scope="module")
def root(tmp_path_factory, parts):
    """A models root: the tiny Canny / Depth pipeline as a diffusers folder, as an all-in-one
    file and its transformer as single files; the tiny plain Flux folder; a control image
    (edges on black, as a canny map) and a photo."""
    from PIL import Image

    root = tmp_path_factory.mktemp("control-models")
    ck, dm, te, vae = (
        root / n for n in ("checkpoints", "diffusion_models", "text_encoders", "vae")
    )
    for d in (ck, dm, te, vae):
        d.mkdir()
    diffusers.FluxControlPipeline(**parts).save_pretrained(str(ck / "tiny-flux-canny"))
    fx.flux_all_in_one(parts, ck / "tiny-flux-canny-aio.safetensors")
    fx.flux_pipeline(fx.tiny_flux()).save_pretrained(str(ck / "tiny-flux"))
    sd = diffusion_fixtures.sd1_pipeline(diffusion_fixtures.tiny_sd1())
    diffusion_fixtures.save_folder(sd, ck / "tiny-sd1")
    orig = fx.to_original(parts["transformer"], "flux")
    fx.save(orig, dm / "canny-orig.safetensors")
    fx.save(orig, dm / "canny-comfy.safetensors", prefix="model.diffusion_model.")
    fx.save(fx.clip_file_state(parts["text_encoder"]), te / "clip_l.safetensors")
    fx.save(fx.t5_file_state(parts["text_encoder_2"]), te / "t5xxl.safetensors")
    fx.save(fx.ldm_vae(parts["vae"]), vae / "ae.safetensors")
    edges = np.zeros((64, 64, 3), np.uint8)
    edges[16, 8:56] = edges[48, 8:56] = edges[8:56, 20] = 255
    Image.fromarray(edges).save(root / "edges.png")
    other = np.zeros((64, 64, 3), np.uint8)
    other[8:56, 40] = 255
    Image.fromarray(other).save(root / "other-edges.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    # BFL's Canny / Depth LoRAs: the input layer's LoRA reads 128 channels (diffusers' layout
    # and BFL's own)
    (root / "loras").mkdir()
    for name, layer in (
        ("canny-lora-diffusers", "transformer.x_embedder"),
        ("canny-lora-bfl", "img_in"),
    ):
        lora = {
            f"{layer}.lora_A.weight": torch.randn(4, 128),
            f"{layer}.lora_B.weight": torch.zeros(32, 4),
        }
        fx.save(lora, root / "loras" / f"{name}.safetensors")
    return root


@pytest.fixture(scope="module")
def engine(root, tmp_path_factory):
    from studio.engine import Engine
    from studio.settings import Settings

    tmp = tmp_path_factory.mktemp("control-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def _loaders(wf, model: str) -> tuple[tuple, tuple, tuple]:
    """(model, clip, vae) outputs: Load Checkpoint on a folder / all-in-one file, or Load
    Diffusion Model on a transformer file with the text encoder and VAE files."""
    add = wf.add_node
    if not model.startswith("canny-"):
        c = add("load_checkpoint", {"ckpt_name": model}).id
        return (c, "model"), (c, "clip"), (c, "vae")
    m = add("load_diffusion_model", {"unet_name": model, "weight_dtype": "default"}).id
    names = {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl.safetensors"}
    c = add("load_text_encoders", {**names, "type": "flux"}).id
    v = add("load_vae", {"vae_name": "ae.safetensors", "latent_scale": "flux"}).id
    return (m, "model"), (c, "clip"), (v, "vae")


def control_graph(
    root, model="tiny-flux-canny", guidance=30.0, control="edges.png", conditioning=True,
    denoise=1.0,
):  # fmt: skip
    """ComfyUI's Canny / Depth workflow: Text Encode x2 -> Flux Guidance -> InstructPixToPix
    Conditioning (Load Image of the control image, the VAE) -> Sampler (its latent, or with
    ``denoise`` < 1 a VAE Encode of the photo) -> VAE Decode. ``conditioning=False``: the
    prompts go straight to the Sampler with an Empty Latent."""
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    model, clip, vae = _loaders(wf, model)
    pos, neg = add("text_encode", {"text": PROMPT}).id, add("text_encode", {"text": NEGATIVE}).id
    for n in (pos, neg):
        c(*clip, n, "clip")
    if guidance is not None:
        g = add("flux_guidance", {"guidance": guidance}).id
        c(pos, "conditioning", g, "conditioning")
        pos = g
    pos_out, neg_out = (pos, "conditioning"), (neg, "conditioning")
    if conditioning:
        ip2p = add("instruct_pix2pix_conditioning").id
        img = add("load_image", {"image": str(root / control)}).id
        c(pos, "conditioning", ip2p, "positive")
        c(neg, "conditioning", ip2p, "negative")
        c(*vae, ip2p, "vae")
        c(img, "image", ip2p, "pixels")
        pos_out, neg_out, lat = (ip2p, "positive"), (ip2p, "negative"), (ip2p, "latent")
    else:
        lat = (add("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id, "latent")
    if denoise < 1.0:
        photo = add("load_image", {"image": str(root / "photo.png")}).id
        enc = add("vae_encode").id
        c(photo, "image", enc, "image")
        c(*vae, enc, "vae")
        lat = (enc, "latent")
    params = {"seed": SEED, "steps": STEPS, "cfg": 1.0, "sampler": "euler"}
    s = add("sampler", {**params, "scheduler": "normal", "denoise": denoise}).id
    c(*model, s, "model")
    c(*pos_out, s, "positive")
    c(*neg_out, s, "negative")
    c(*lat, s, "latent")
    dec = add("vae_decode").id
    c(s, "latent", dec, "latent")
    c(*vae, dec, "vae")
    return wf, dec


def _image(engine, wf, dec) -> np.ndarray:
    result = engine.run(wf, targets=[dec])
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def _errors(engine, wf, dec) -> str:
    result = engine.run(wf, targets=[dec])
    assert not result.ok
    text = " ".join(result.errors.values())
    assert "Traceback" not in text
    return text


def pipe_image(parts, root, guidance: float = 30.0, denoise: float = 1.0) -> np.ndarray:
    """FluxControlPipeline's picture (FluxControlImg2ImgPipeline's below strength 1)."""
    from PIL import Image

    kind = diffusers.FluxControlPipeline if denoise >= 1.0 else diffusers.FluxControlImg2ImgPipeline
    pipe = kind(**parts)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    control = Image.open(root / "edges.png").convert("RGB")
    extra = {}
    if denoise < 1.0:
        extra = {"image": Image.open(root / "photo.png").convert("RGB"), "strength": denoise}
    return pipe(
        PROMPT, control_image=control, height=64, width=64, num_inference_steps=STEPS,
        guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np", **extra,
    ).images  # fmt: skip


def _close(got: np.ndarray, want: np.ndarray, bound: float = 1 / 255) -> float:
    assert got.shape == want.shape == (1, 64, 64, 3)
    diff = float(np.abs(got - want).max())
    assert diff <= bound, diff
    return diff


@pytest.mark.parametrize("guidance", [30.0, None])
def test_canny_folder_equals_flux_control_pipeline(engine, parts, root, guidance):
    """Load Checkpoint on a FluxControlPipeline folder + Flux Guidance 30 (BFL's Canny
    example; unset: the pipeline's default 3.5) + InstructPixToPix Conditioning + Sampler
    equal FluxControlPipeline with the same seed, prompt, size and steps."""
    wf, dec = control_graph(root, guidance=guidance)
    got = _image(engine, wf, dec)
    want = pipe_image(parts, root, guidance=3.5 if guidance is None else guidance)
    _close(got, want)
    assert want.std() > 0.01


def test_canny_img2img_equals_flux_control_img2img_pipeline(engine, parts, root):
    """The Sampler's latent from VAE Encode of a photo at denoise 0.6 (the prompts still
    through InstructPixToPix Conditioning) equals FluxControlImg2ImgPipeline at strength 0.6:
    the control image's latent is drawn first, then the photo's, then the noise."""
    wf, dec = control_graph(root, denoise=0.6)
    _close(_image(engine, wf, dec), pipe_image(parts, root, denoise=0.6))


@pytest.mark.parametrize(
    "model",
    ["canny-orig.safetensors", "canny-comfy.safetensors", "tiny-flux-canny-aio.safetensors"],
)
def test_canny_files_equal_the_folder(engine, root, model):
    """Load Diffusion Model on the transformer in both key layouts, and Load Checkpoint on an
    all-in-one file, give the folder's picture; the variant is told from img_in's width."""
    from nodes import dit

    transformer = fx.tiny_flux_control()["transformer"]
    shapes = {k: tuple(v.shape) for k, v in fx.to_original(transformer, "flux").items()}
    cfg = dit.flux_config(shapes, "", "test")
    assert (cfg["in_channels"], cfg["out_channels"]) == (128, 64)
    assert dit.is_flux_control(cfg) and not dit.is_flux_fill(cfg)
    got = _image(engine, *control_graph(root, model=model))
    _close(got, _image(engine, *control_graph(root)), bound=1e-4)


def test_the_control_image_reaches_the_model(engine, root):
    first = _image(engine, *control_graph(root))
    other = _image(engine, *control_graph(root, control="other-edges.png"))
    assert np.abs(first - other).max() > 1 / 255


def test_canny_without_instruct_pix2pix_conditioning_is_a_clear_error(engine, root):
    text = _errors(engine, *control_graph(root, conditioning=False))
    assert "FLUX.1 Canny / Depth" in text and "InstructPixToPix Conditioning" in text


def test_instruct_pix2pix_conditioning_on_plain_flux_is_a_clear_error(engine, root):
    """ComfyUI silently drops the control image for a model that cannot take it; Studio says
    so, as a plain Flux model given a canny map is most likely the wrong model loaded."""
    text = _errors(engine, *control_graph(root, model="tiny-flux"))
    assert "InstructPixToPix Conditioning" in text and "Flux.1" in text
    assert "flux1-canny-dev" in text


def test_instruct_pix2pix_conditioning_on_an_sd_unet_is_a_clear_error(engine, root):
    text = _errors(engine, *control_graph(root, model="tiny-sd1", guidance=None))
    assert "InstructPixToPix Conditioning" in text and "UNet" in text


def test_a_whole_image_area_prompt_on_canny_gives_the_plain_picture(engine, root):
    """Regional prompts feed each prompt's part of the latent its part of the control image:
    an area covering the whole picture gives the plain prompt's picture."""
    wf, dec = control_graph(root)
    s = next(n for n in wf.nodes if n.type == "sampler")
    ip2p = next(n for n in wf.nodes if n.type == "instruct_pix2pix_conditioning")
    area = {"x": 0, "y": 0, "width": 64, "height": 64}
    a = wf.add_node("conditioning_set_area", area).id
    wf.connect(ip2p.id, "positive", a, "conditioning")
    wf.connect(a, "conditioning", s.id, "positive")
    _close(_image(engine, wf, dec), _image(engine, *control_graph(root)), bound=1e-4)


def test_a_control_image_off_the_patch_grid_is_cut_to_it(engine, root):
    """An 88x72 control image gives an 80x64 picture: cut around its centre to whole 16-pixel
    patches (Flux's 2x2 latent cells), so any picture size samples."""
    from PIL import Image

    Image.open(root / "photo.png").resize((88, 72)).save(root / "odd-size.png")
    got = _image(engine, *control_graph(root, control="odd-size.png"))
    assert got.shape == (1, 64, 80, 3)


def test_a_control_image_of_another_size_is_a_clear_error(engine, root):
    """The Sampler's latent must be the control image's size (the node's latent output)."""
    wf, dec = control_graph(root)
    s = next(n for n in wf.nodes if n.type == "sampler")
    e = wf.add_node("empty_latent", {"width": 96, "height": 64, "batch_size": 1}).id
    wf.connect(e, "latent", s.id, "latent")
    text = _errors(engine, wf, dec)
    assert "InstructPixToPix Conditioning" in text and "latent output" in text


def test_other_flux_widths_are_still_refused(engine, root):
    """A Flux transformer of neither width (here 96 in for 64 out) is refused naming the
    ones Studio knows."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    net = FluxTransformer2DModel(
        patch_size=1, in_channels=96, out_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=96,
        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=fx.flux_rope_axes(16),
    )  # fmt: skip
    fx.save(fx.to_original(net, "flux"), root / "diffusion_models" / "odd.safetensors")
    wf = Workflow(installed_registry())
    m = wf.add_node("load_diffusion_model", {"unet_name": "odd.safetensors"}).id
    result = engine.run(wf, targets=[m])
    assert not result.ok
    text = " ".join(result.errors.values())
    assert "96 input channels" in text and "FLUX.1 Canny / Depth (128 in)" in text


def _comfyui_canny_api(control: str) -> dict:
    """BFL's / ComfyUI's FLUX.1 Canny [dev] example in the API format: the control image into
    InstructPixToPixConditioning, whose prompts and latent feed the KSampler."""
    return {
        "31": {"class_type": "UNETLoader", "inputs": {"unet_name": "canny-comfy.safetensors", "weight_dtype": "default"}},
        "34": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl.safetensors", "type": "flux"}},
        "32": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "23": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["34", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["34", 0]}},
        "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 30, "conditioning": ["23", 0]}},
        "17": {"class_type": "LoadImage", "inputs": {"image": control}},
        "35": {"class_type": "InstructPixToPixConditioning", "inputs": {"positive": ["26", 0], "negative": ["7", 0], "vae": ["32", 0], "pixels": ["17", 0]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": SEED, "steps": STEPS, "cfg": 1, "sampler_name": "euler", "scheduler": "normal", "denoise": 1, "model": ["31", 0], "positive": ["35", 0], "negative": ["35", 1], "latent_image": ["35", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["32", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "canny"}},
    }  # fmt: skip


def test_a_comfyui_canny_workflow_imports_and_equals_the_pipeline(engine, parts, root):
    """InstructPixToPixConditioning maps onto InstructPixToPix Conditioning with its three
    outputs wired to the sampler; the imported workflow runs on the tiny files and gives
    FluxControlPipeline's picture."""
    from studio.graph.importers.comfyui import import_comfyui

    result = import_comfyui(
        _comfyui_canny_api(str(root / "edges.png")), installed_registry(), source="canny.json"
    )
    wf = result.workflow
    assert [n.type for n in wf.nodes if n.type.startswith("comfyui.")] == []
    assert wf.get_node("35").type == "instruct_pix2pix_conditioning"
    links = {(lk.source, lk.output, lk.target, lk.input) for lk in wf.links}
    assert {
        ("26", "conditioning", "35", "positive"), ("7", "conditioning", "35", "negative"),
        ("32", "vae", "35", "vae"), ("17", "image", "35", "pixels"),
        ("35", "positive", "3", "positive"), ("35", "negative", "3", "negative"),
        ("35", "latent", "3", "latent"),
    } <= links  # fmt: skip
    _close(_image(engine, wf, "8"), pipe_image(parts, root))


def test_the_flux_canny_template_runs_on_the_files_it_names(engine, root):
    """templates/flux_canny.json (Load Diffusion Model, Load Text Encoders, Load VAE, the
    picture scaled and turned into Canny Edges, InstructPixToPix Conditioning, Flux Guidance
    30) runs once its file names point at files that are there (the tiny ones here; the
    picture scaled to 64 pixels, 2 steps)."""
    from studio.graph.fileformat import load_workflow
    from studio.modelfiles import RESOURCES

    path = RESOURCES / "workflows" / "templates" / "flux_canny.json"
    wf = load_workflow(path, installed_registry())
    swaps = {
        "load_diffusion_model": {"unet_name": "canny-orig.safetensors", "weight_dtype": "default"},
        "load_text_encoders": {
            "clip_name1": "clip_l.safetensors",
            "clip_name2": "t5xxl.safetensors",
        },
        "load_vae": {"vae_name": "ae.safetensors"},
        "scale_image": {"width": 64, "height": 64},
        "canny": {"resolution": 64},
        "sampler": {"steps": 2},
    }
    for node in wf.nodes:
        for name, value in swaps.get(node.type, {}).items():
            wf.set_param(node.id, name, value)
    by_type = {n.type: n for n in wf.nodes}
    assert by_type["flux_guidance"].params["guidance"] == 30.0
    assert "save_image" in by_type
    dec = by_type["vae_decode"].id
    assert _image(engine, wf, dec).shape == (1, 64, 64, 3)


@pytest.mark.parametrize("lora", ["canny-lora-diffusers", "canny-lora-bfl"])
def test_a_flux_canny_lora_is_a_clear_error(engine, root, lora):
    """FLUX.1 Canny / Depth as LoRAs (flux1-canny-dev-lora) would widen the shared Flux
    transformer's input: refused, pointing at the full model."""
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-flux"}).id
    name = f"{lora}.safetensors"
    params = {"lora_name": name, "strength_model": 1.0, "strength_clip": 1.0}
    n = wf.add_node("load_lora", params).id
    wf.connect(c, "model", n, "model")
    wf.connect(c, "clip", n, "clip")
    text = _errors(engine, wf, n)
    assert "FLUX.1 Canny / Depth LoRA" in text and "InstructPixToPix Conditioning" in text
