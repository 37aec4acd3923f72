"""FLUX.1 Fill [dev] (Black Forest Labs' inpainting Flux) through Studio's graph equals
FluxFillPipeline (tiny random components built in code, CPU, 64x64, 3 steps): VAE Encode for
Inpaint gives the Sampler the masked image and the mask, which the Fill transformer takes as
extra input channels; from the diffusers folder (Load Checkpoint) and from transformer files
in both key layouts (Load Diffusion Model)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import dit_fixtures as fx  # noqa: E402

from studio.graph.workflow import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402

PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry"
SEED, STEPS = 7, 3


@pytest.fixture(scope="module")
def parts():
    return fx.tiny_flux_fill()


@pytest.fixture(scope="module")
def root(tmp_path_factory, parts):
    """A models root: the tiny Fill pipeline as a diffusers folder and its transformer as
    single files; a photo and a mask."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fill-models")
    ck, dm, te, vae = (
        root / n for n in ("checkpoints", "diffusion_models", "text_encoders", "vae")
    )
    for d in (ck, dm, te, vae):
        d.mkdir()
    diffusers.FluxFillPipeline(**parts).save_pretrained(str(ck / "tiny-flux-fill"))
    orig = fx.to_original(parts["transformer"], "flux")
    fx.save(orig, dm / "fill-orig.safetensors")
    fx.save(orig, dm / "fill-comfy.safetensors", prefix="model.diffusion_model.")
    fx.save(fx.clip_file_state(parts["text_encoder"]), te / "clip_l.safetensors")
    fx.save(fx.t5_file_state(parts["text_encoder_2"]), te / "t5xxl.safetensors")
    fx.save(fx.ldm_vae(parts["vae"]), vae / "ae.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    # repaint the upper left triangle: its edge cuts the 8x8 pixel blocks each latent cell
    # has in the mask's channels
    y, x = np.mgrid[0:64, 0:64]
    Image.fromarray(np.where(2 * x + y < 90, 255, 0).astype(np.uint8)).save(root / "mask.png")
    return root


@pytest.fixture(scope="module")
def engine(root, tmp_path_factory):
    from studio.engine import Engine
    from studio.settings import Settings

    tmp = tmp_path_factory.mktemp("fill-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def _loaders(wf, files: bool) -> tuple[tuple, tuple, tuple]:
    """(model, clip, vae) outputs: Load Checkpoint on the folder, or the three file loaders."""
    add = wf.add_node
    if not files:
        c = add("load_checkpoint", {"ckpt_name": "tiny-flux-fill"}).id
        return (c, "model"), (c, "clip"), (c, "vae")
    m = add("load_diffusion_model", {"unet_name": files, "weight_dtype": "default"}).id
    names = {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl.safetensors"}
    c = add("load_text_encoders", {**names, "type": "flux"}).id
    v = add("load_vae", {"vae_name": "ae.safetensors", "latent_scale": "flux"}).id
    return (m, "model"), (c, "clip"), (v, "vae")


def fill_graph(
    root, files=False, denoise=1.0, inpaint=True, guidance=None, mask=None, positive=None,
    conditioning=False,
):  # fmt: skip
    """Load Image (photo, mask) -> VAE Encode for Inpaint (no growing, as the pipeline) ->
    Sampler -> VAE Decode. ``inpaint=False``: an Empty Latent instead; ``conditioning``:
    Inpaint Model Conditioning (the prompts through it) instead of VAE Encode for Inpaint."""
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    model, clip, vae = _loaders(wf, files)
    pos, neg = add("text_encode", {"text": PROMPT}).id, add("text_encode", {"text": NEGATIVE}).id
    for n in (pos, neg):
        c(*clip, n, "clip")
    if guidance is not None:
        g = add("flux_guidance", {"guidance": guidance}).id
        c(pos, "conditioning", g, "conditioning")
        pos = g
    if positive is not None:  # regional prompts: the positive prompt's conditioning recast
        pos = positive(wf, pos)
    if inpaint:
        img = add("load_image", {"image": str(root / "photo.png")}).id
        mask_img = add("load_image", {"image": str(mask or root / "mask.png")}).id
        m = add("mask_from_image", {"channel": "red"}).id
        if conditioning:
            lat = add("inpaint_model_conditioning", {"noise_mask": True}).id
            c(pos, "conditioning", lat, "positive")
            c(neg, "conditioning", lat, "negative")
            pos_out, neg_out = (lat, "positive"), (lat, "negative")
        else:
            lat = add("vae_encode_inpaint", {"grow_mask_by": 0}).id
        c(mask_img, "image", m, "image")
        c(img, "image", lat, "pixels")
        c(*vae, lat, "vae")
        c(m, "mask", lat, "mask")
    else:
        lat = add("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    params = {"seed": SEED, "steps": STEPS, "cfg": 1.0, "sampler": "euler"}
    s = add("sampler", {**params, "scheduler": "normal", "denoise": denoise}).id
    c(*model, s, "model")
    if not conditioning:
        pos_out, neg_out = (pos, "conditioning"), (neg, "conditioning")
    c(*pos_out, s, "positive")
    c(*neg_out, s, "negative")
    c(lat, "latent", s, "latent")
    dec = add("vae_decode").id
    c(s, "latent", dec, "latent")
    c(*vae, dec, "vae")
    return wf, dec


def _image(engine, wf, dec) -> np.ndarray:
    result = engine.run(wf, targets=[dec])
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def pipe_image(parts, root, denoise: float, greyed: bool = True, **kw) -> np.ndarray:
    """FluxFillPipeline's picture. Below strength 1 the pipeline starts from the image it is
    given, VAE Encode for Inpaint's latent from the image greyed under the mask (ComfyUI's
    VAEEncodeForInpaint): the pipeline is then given that greyed image, which it masks to the
    same masked image."""
    from PIL import Image

    pipe = diffusers.FluxFillPipeline(**parts)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    photo = Image.open(root / "photo.png").convert("RGB")
    mask = Image.open(root / "mask.png").convert("L")
    image = photo
    if denoise < 1.0 and greyed:
        x = torch.from_numpy(np.asarray(photo, np.float32) / 255.0).permute(2, 0, 1)[None]
        keep = torch.from_numpy(np.asarray(mask) < 128).float()
        image = (x * 2.0 - 1.0) * keep
    return pipe(
        PROMPT, image=image, mask_image=mask, height=64, width=64, strength=denoise,
        num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np", **kw,
    ).images  # fmt: skip


def _close(got: np.ndarray, want: np.ndarray, bound: float = 1 / 255) -> float:
    assert got.shape == want.shape == (1, 64, 64, 3)
    diff = float(np.abs(got - want).max())
    assert diff <= bound, diff
    return diff


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_fill_folder_equals_flux_fill_pipeline(engine, parts, root, denoise):
    """Load Checkpoint on a FluxFillPipeline folder + VAE Encode for Inpaint + Sampler equal
    FluxFillPipeline (same seed, strength = denoise, its default guidance 30 when no Flux
    Guidance node sets one)."""
    wf, dec = fill_graph(root, denoise=denoise)
    got = _image(engine, wf, dec)
    want = pipe_image(parts, root, denoise)
    _close(got, want)
    assert want.std() > 0.01


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_inpaint_model_conditioning_on_fill_equals_the_pipeline_on_the_photo(
    engine, parts, root, denoise
):
    """ComfyUI's way (InpaintModelConditioning): the latent is the photo itself, so below
    denoise 1 the masked part starts from the photo's colours, as FluxFillPipeline given
    the photo does; at denoise 1 the same picture as VAE Encode for Inpaint."""
    wf, dec = fill_graph(root, denoise=denoise, conditioning=True)
    got = _image(engine, wf, dec)
    _close(got, pipe_image(parts, root, denoise, greyed=False))
    greyed_start = _image(engine, *fill_graph(root, denoise=denoise))
    if denoise < 1.0:
        assert np.abs(got - greyed_start).max() > 0.05
    else:
        _close(got, greyed_start, 1e-6)


def test_fill_guidance_is_the_flux_guidance_nodes(engine, parts, root):
    wf, dec = fill_graph(root, guidance=10.0)
    got = _image(engine, wf, dec)
    _close(got, pipe_image(parts, root, 1.0, guidance_scale=10.0))
    wf, dec = fill_graph(root)
    assert np.abs(got - _image(engine, wf, dec)).max() > 1 / 255  # 10 is not the default 30


@pytest.mark.parametrize("unet", ["fill-orig.safetensors", "fill-comfy.safetensors"])
def test_fill_files_in_both_key_layouts_equal_the_folder(engine, root, unet):
    from nodes import dit

    transformer = fx.tiny_flux_fill()["transformer"]
    shapes = {k: tuple(v.shape) for k, v in fx.to_original(transformer, "flux").items()}
    cfg = dit.flux_config(shapes, "", "test")
    assert (cfg["in_channels"], cfg["out_channels"]) == (384, 64)
    assert dit.is_flux_fill(cfg)
    wf, dec = fill_graph(root, files=unet)
    got = _image(engine, wf, dec)
    wf, dec = fill_graph(root)
    _close(got, _image(engine, wf, dec), bound=1e-4)


def test_the_mask_and_masked_image_reach_the_model(engine, root, tmp_path):
    """Another mask gives another picture (the transformer sees the mask's channels)."""
    from PIL import Image

    wf, dec = fill_graph(root)
    first = _image(engine, wf, dec)
    mask = np.zeros((64, 64), np.uint8)
    mask[32:, :] = 255  # the bottom half instead of the left
    Image.fromarray(mask).save(tmp_path / "bottom.png")
    wf, dec = fill_graph(root, mask=tmp_path / "bottom.png")
    assert np.abs(first - _image(engine, wf, dec)).max() > 1 / 255


def _whole_area(wf, pos):
    n = wf.add_node("conditioning_set_area", {"x": 0, "y": 0, "width": 64, "height": 64}).id
    wf.connect(pos, "conditioning", n, "conditioning")
    return n


def _twice(wf, pos):
    n = wf.add_node("conditioning_combine").id
    wf.connect(pos, "conditioning", n, "conditioning_1")
    wf.connect(pos, "conditioning", n, "conditioning_2")
    return n


@pytest.mark.parametrize("positive", [_whole_area, _twice])
def test_regional_prompts_on_fill_see_the_mask_too(engine, root, positive):
    """A whole-image area prompt, or a prompt combined with itself, on FLUX.1 Fill gives the
    plain prompt's picture (the regional path feeds the Fill inputs on each prompt's part)."""
    wf, dec = fill_graph(root, positive=positive)
    got = _image(engine, wf, dec)
    wf, dec = fill_graph(root)
    _close(got, _image(engine, wf, dec), bound=1e-4)


def test_fill_without_the_inpaint_latent_is_a_clear_error(engine, root):
    wf, dec = fill_graph(root, inpaint=False)
    result = engine.run(wf, targets=[dec])
    assert not result.ok
    text = " ".join(result.errors.values())
    assert "FLUX.1 Fill" in text and "VAE Encode for Inpaint" in text
    assert "Traceback" not in text


def test_the_flux_fill_template_runs_on_the_files_it_names(engine, root):
    """templates/inpaint_flux_fill.json (Load Diffusion Model, Load Text Encoders, Load VAE,
    the picture with its painted mask, VAE Encode for Inpaint, Flux Guidance 30) runs once its
    file names point at files that are there (the tiny ones here), 2 steps."""
    from studio.graph.fileformat import load_workflow
    from studio.modelfiles import RESOURCES

    path = RESOURCES / "workflows" / "templates" / "inpaint_flux_fill.json"
    wf = load_workflow(path, installed_registry())
    swaps = {
        "load_diffusion_model": {"unet_name": "fill-orig.safetensors", "weight_dtype": "default"},
        "load_text_encoders": {
            "clip_name1": "clip_l.safetensors",
            "clip_name2": "t5xxl.safetensors",
        },
        "load_vae": {"vae_name": "ae.safetensors"},
        "sampler": {"steps": 2},
    }
    for node in wf.nodes:
        for name, value in swaps.get(node.type, {}).items():
            wf.set_param(node.id, name, value)
    by_type = {n.type: n for n in wf.nodes}
    assert by_type["flux_guidance"].params["guidance"] == 30.0
    assert "save_image" in by_type
    result = engine.run(wf, targets=[by_type["composite_masked"].id])
    assert result.ok, result.errors
