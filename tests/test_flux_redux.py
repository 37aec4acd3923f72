"""FLUX.1 Redux (a reference picture's look through a SigLIP encoder and the Redux adapter)
through Studio's graph (Load CLIP Vision, CLIP Vision Encode, Load Style Model, Apply Style
Model) equals diffusers' FluxPriorReduxPipeline -> FluxPipeline: tiny random SigLIP, Redux
and Flux built in code, CPU, 64x64, 3 steps. Files are written as ComfyUI users have them
(clip_vision/*.safetensors with ``vision_model.`` keys, style_models/ with redux_up/down)."""

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
SEED, STEPS, GUIDANCE = 7, 3, 2.5
#: The tiny SigLIP's input side (4x4 patches of 8 pixels) and width.
SIDE, WIDTH = 32, 128
#: The picture and mask of the FLUX.1 Fill test.
INPAINT = ("photo.png", "mask.png")
#: The largest pixel difference allowed from the diffusers pipelines; measured on these tiny
#: models: 0.0002/255 (Flux, either reference), 0.0003/255 (with FLUX.1 Fill).
BOUND = 1 / 255


def tiny_siglip(seed: int = 11):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(
        hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        image_size=SIDE, patch_size=8, vision_use_head=True,
    )  # fmt: skip
    return SiglipVisionModel(cfg).eval()


def tiny_redux(seed: int = 12):
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    torch.manual_seed(seed)
    return ReduxImageEncoder(redux_dim=WIDTH, txt_in_features=96).eval()


def listening_flux() -> dict:
    """The tiny Flux with its blocks' attention outputs 10x louder: the random tiny model
    barely follows its context (a reference changes its picture by about 1/255), this one
    enough to see (8/255), as a trained Flux does."""
    parts = fx.tiny_flux()
    louder(parts["transformer"])
    return parts


def louder(transformer):
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "blocks" in name and any(s in name for s in ("to_out", "to_add_out", "proj_out")):
                p.mul_(10.0)
    return transformer


def comfy_keys(vision) -> dict:
    """A vision tower's tensors under ``vision_model.``, as ComfyUI's clip_vision files
    (and the released SigLIP) hold them."""
    return {
        k if k.startswith(("vision_model.", "visual_projection.")) else f"vision_model.{k}": v
        for k, v in vision.state_dict().items()
    }


def siglip_processor():
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(
        do_resize=True, size={"height": SIDE, "width": SIDE}, resample=3, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip


@pytest.fixture(scope="module")
def parts():
    return {"flux": listening_flux(), "siglip": tiny_siglip(), "redux": tiny_redux()}


@pytest.fixture(scope="module")
def root(tmp_path_factory, parts):
    from PIL import Image

    root = tmp_path_factory.mktemp("redux-models")
    for d in ("checkpoints", "clip_vision", "style_models", "diffusion_models", "text_encoders", "vae"):  # fmt: skip
        (root / d).mkdir()
    flux = parts["flux"]
    fx.flux_pipeline(flux).save_pretrained(str(root / "checkpoints" / "tiny-flux"))
    fx.save(fx.to_original(flux["transformer"], "flux"), root / "diffusion_models" / "flux.safetensors")  # fmt: skip
    fx.save(fx.clip_file_state(flux["text_encoder"]), root / "text_encoders" / "clip_l.safetensors")
    fx.save(fx.t5_file_state(flux["text_encoder_2"]), root / "text_encoders" / "t5xxl.safetensors")
    fx.save(fx.ldm_vae(flux["vae"]), root / "vae" / "ae.safetensors")
    fx.save(comfy_keys(parts["siglip"]), root / "clip_vision" / "sigclip_tiny.safetensors")
    fx.save(parts["redux"].state_dict(), root / "style_models" / "redux_tiny.safetensors")
    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([x * 4, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(smooth[:SIDE, :SIDE]).save(root / "ref.png")
    Image.fromarray(smooth[::-1, :, ::-1].copy()).save(root / "ref64.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / INPAINT[0])
    Image.fromarray(np.where(x < 32, 255, 0).astype(np.uint8)).save(root / INPAINT[1])
    return root


@pytest.fixture(scope="module")
def engine(root, tmp_path_factory):
    from studio.engine import Engine
    from studio.settings import Settings

    tmp = tmp_path_factory.mktemp("redux-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def redux_graph(root, ref="ref.png", strength=1.0, ckpt="tiny-flux", vision="sigclip_tiny.safetensors", crop="center", inpaint=False):  # fmt: skip
    """Load Checkpoint -> Text Encode -> Flux Guidance -> Apply Style Model (Load Style
    Model, CLIP Vision Encode of Load Image through Load CLIP Vision) -> Sampler -> VAE
    Decode. ``inpaint``: the Sampler's latent from VAE Encode for Inpaint (photo, mask)."""
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": ckpt}).id
    pos, neg = add("text_encode", {"text": PROMPT}).id, add("text_encode", {"text": NEGATIVE}).id
    for n in (pos, neg):
        c(ck, "clip", n, "clip")
    g = add("flux_guidance", {"guidance": GUIDANCE}).id
    c(pos, "conditioning", g, "conditioning")
    cv = add("load_clip_vision", {"clip_name": vision}).id
    img = add("load_image", {"image": str(root / ref)}).id
    enc = add("clip_vision_encode", {"crop": crop}).id
    c(cv, "clip_vision", enc, "clip_vision")
    c(img, "image", enc, "image")
    sm = add("load_style_model", {"style_model_name": "redux_tiny.safetensors"}).id
    ap = add("apply_style_model", {"strength": strength, "strength_type": "multiply"}).id
    c(g, "conditioning", ap, "conditioning")
    c(sm, "style_model", ap, "style_model")
    c(enc, "clip_vision_output", ap, "clip_vision_output")
    if inpaint:
        photo, mask_img = (add("load_image", {"image": str(root / n)}).id for n in INPAINT)
        mask = add("mask_from_image", {"channel": "red"}).id
        c(mask_img, "image", mask, "image")
        lat = add("vae_encode_inpaint", {"grow_mask_by": 0}).id
        c(photo, "image", lat, "pixels")
        c(ck, "vae", lat, "vae")
        c(mask, "mask", lat, "mask")
    else:
        lat = add("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    params = {"seed": SEED, "steps": STEPS, "cfg": 1.0, "sampler": "euler"}
    s = add("sampler", {**params, "scheduler": "normal", "denoise": 1.0}).id
    c(ck, "model", s, "model")
    c(ap, "conditioning", s, "positive")
    c(neg, "conditioning", s, "negative")
    c(lat, "latent", s, "latent")
    dec = add("vae_decode").id
    c(s, "latent", dec, "latent")
    c(ck, "vae", dec, "vae")
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


def pipe_image(parts, root, ref="ref.png", fill=None) -> np.ndarray:
    """FluxPriorReduxPipeline (with the text encoders: the prompt's T5 tokens, then the
    reference's Redux tokens) -> FluxPipeline (``fill``: FluxFillPipeline of these parts,
    on the photo and mask)."""
    from PIL import Image

    flux = parts["flux"]
    prior = diffusers.FluxPriorReduxPipeline(
        image_encoder=parts["siglip"], feature_extractor=siglip_processor(),
        image_embedder=parts["redux"], text_encoder=flux["text_encoder"],
        tokenizer=flux["tokenizer"], text_encoder_2=flux["text_encoder_2"],
        tokenizer_2=flux["tokenizer_2"],
    )  # fmt: skip
    with torch.no_grad():
        prior_out = prior(Image.open(root / ref).convert("RGB"), prompt=PROMPT)
    pipe = fx.flux_pipeline(flux) if fill is None else diffusers.FluxFillPipeline(**fill)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    if fill is not None:
        photo, mask = (Image.open(root / f) for f in INPAINT)
        kw = {"image": photo.convert("RGB"), "mask_image": mask.convert("L")}
    return pipe(
        prompt_embeds=prior_out.prompt_embeds, pooled_prompt_embeds=prior_out.pooled_prompt_embeds,
        **(kw if fill is not None else {}),
        height=64, width=64, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
    ).images  # fmt: skip


def _diff(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape == (1, 64, 64, 3)
    return float(np.abs(got - want).max())


def test_redux_graph_equals_prior_redux_then_flux_pipeline(engine, parts, root):
    got = _image(engine, *redux_graph(root))
    want = pipe_image(parts, root)
    assert _diff(got, want) <= BOUND
    assert want.std() > 0.01
    # the reference matters: without it (the plain prompt) the picture is another one
    plain = fx.flux_pipeline(parts["flux"])
    plain.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(plain.scheduler.config)
    no_ref = plain(
        PROMPT, height=64, width=64, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
    ).images  # fmt: skip
    assert _diff(got, no_ref) > 4 / 255


def test_redux_on_flux_fill_equals_the_fill_pipeline_given_the_prior(engine, parts, root):
    """Redux + FLUX.1 Fill (inpainting that follows a reference, a common ComfyUI pairing):
    VAE Encode for Inpaint's latent and the Redux prompt equal FluxFillPipeline given
    FluxPriorReduxPipeline's embeddings."""
    fill = {**parts["flux"], "transformer": louder(fx.tiny_flux_fill()["transformer"])}
    folder = root / "checkpoints" / "tiny-flux-fill"
    if not folder.exists():
        diffusers.FluxFillPipeline(**fill).save_pretrained(str(folder))
    got = _image(engine, *redux_graph(root, ckpt="tiny-flux-fill", inpaint=True))
    assert _diff(got, pipe_image(parts, root, fill=fill)) <= BOUND


def test_the_strength_scales_the_reference(engine, root):
    full = _image(engine, *redux_graph(root, strength=1.0))
    half = _image(engine, *redux_graph(root, strength=0.5))
    assert _diff(full, half) > 2 / 255


def test_a_larger_reference_is_resized_as_the_siglip_processor_does(engine, parts, root):
    """A 64x64 reference, scaled to the encoder's 32x32 (bicubic, antialiased, as ComfyUI;
    the SigLIP processor resizes through PIL)."""
    got = _image(engine, *redux_graph(root, ref="ref64.png"))
    assert _diff(got, pipe_image(parts, root, ref="ref64.png")) <= BOUND


def test_center_crop_keeps_the_middle_square():
    from nodes.redux import preprocess

    img = torch.rand(1, 32, 48, 3)
    centred = preprocess(img, 32, (0.5,) * 3, (0.5,) * 3, "center")
    middle = preprocess(img[:, :, 8:40], 32, (0.5,) * 3, (0.5,) * 3, "none")
    assert torch.equal(centred, middle)
    squeezed = preprocess(img, 32, (0.5,) * 3, (0.5,) * 3, "none")
    assert squeezed.shape == (1, 3, 32, 32) and not torch.equal(squeezed, centred)


def test_the_siglip_config_comes_from_the_file(root):
    from nodes.redux import file_shapes, siglip_config

    path = root / "clip_vision" / "sigclip_tiny.safetensors"
    cfg = siglip_config(file_shapes(path, path.name), path.name)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["image_size"]) == (WIDTH, 2, SIDE)
    assert (cfg["patch_size"], cfg["intermediate_size"], cfg["num_attention_heads"]) == (8, 96, 2)


def test_redux_on_an_sd_prompt_is_a_clear_error(engine, root):
    """The embedded SD model's prompt through Apply Style Model: refused, naming Redux."""
    wf, dec = redux_graph(root, ckpt="studio-tiny")
    text = _errors(engine, wf, dec)
    assert "FLUX.1 Redux works with Flux prompts" in text


def test_redux_on_an_sd3_prompt_is_a_clear_error(root):
    from nodes.redux import apply_style
    from nodes.redux_nodes import ClipVisionOutput, StyleModelHandle
    from nodes.values import Cond
    from studio.errors import NodeError

    cond = [Cond(embeds=torch.zeros(1, 333, 96), pooled=torch.zeros(1, 64), family="sd3")]
    style = StyleModelHandle(str(root / "style_models" / "redux_tiny.safetensors"), ("x",))
    with pytest.raises(NodeError, match=r"Stable Diffusion 3\.x"):
        apply_style(None, cond, style, ClipVisionOutput(torch.zeros(1, 16, WIDTH)), 1.0)


def test_a_clip_vit_file_is_a_clear_error(engine, root):
    """A CLIP-ViT encoder (IP-Adapter's) loads, but Redux reads SigLIP tokens."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    vit = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=64, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=1, image_size=32, patch_size=8, projection_dim=16)
    )  # fmt: skip
    fx.save(comfy_keys(vit), root / "clip_vision" / "clip_vit_tiny.safetensors")
    wf, dec = redux_graph(root, vision="clip_vit_tiny.safetensors")
    text = _errors(engine, wf, dec)
    assert "FLUX.1 Redux reads a SigLIP encoder's image tokens" in text and "CLIP-ViT" in text


def test_files_that_are_not_what_the_loaders_take_are_clear_errors(engine, root):
    fx.save({"w": torch.zeros(2, 2)}, root / "clip_vision" / "other.safetensors")
    text = _errors(engine, *redux_graph(root, vision="other.safetensors"))
    assert "other.safetensors" in text and "not a CLIP Vision model" in text
    # a SigLIP file in style_models
    wf = Workflow(installed_registry())
    (root / "style_models" / "sig.safetensors").write_bytes(
        (root / "clip_vision" / "sigclip_tiny.safetensors").read_bytes()
    )
    n = wf.add_node("load_style_model", {"style_model_name": "sig.safetensors"}).id
    text = _errors(engine, wf, n)
    assert "sig.safetensors" in text and "FLUX.1 Redux" in text


def test_a_comfyui_redux_workflow_imports_onto_these_nodes():
    from studio.graph.importers.comfyui import import_comfyui

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPVisionLoader",
              "inputs": {"clip_name": "sigclip_vision_patch14_384.safetensors"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "5": {"class_type": "CLIPVisionEncode",
              "inputs": {"clip_vision": ["3", 0], "image": ["4", 0], "crop": "none"}},
        "6": {"class_type": "StyleModelLoader",
              "inputs": {"style_model_name": "flux1-redux-dev.safetensors"}},
        "7": {"class_type": "StyleModelApply",
              "inputs": {"conditioning": ["2", 0], "style_model": ["6", 0],
                         "clip_vision_output": ["5", 0], "strength": 0.7,
                         "strength_type": "multiply"}},
    }  # fmt: skip
    result = import_comfyui(prompt, installed_registry(), source="redux.json")
    wf = result.workflow
    nodes = {n.id: n for n in wf.nodes}
    assert nodes["3"].type == "load_clip_vision"
    assert nodes["3"].params["clip_name"] == "sigclip_vision_patch14_384.safetensors"
    assert (nodes["5"].type, nodes["5"].params["crop"]) == ("clip_vision_encode", "none")
    assert nodes["6"].type == "load_style_model"
    assert nodes["7"].type == "apply_style_model"
    assert nodes["7"].params["strength"] == 0.7
    links = {(k.source, k.output, k.target, k.input) for k in wf.links}
    assert ("3", "clip_vision", "5", "clip_vision") in links
    assert ("4", "image", "5", "image") in links
    assert ("5", "clip_vision_output", "7", "clip_vision_output") in links
    assert ("6", "style_model", "7", "style_model") in links
    assert ("2", "conditioning", "7", "conditioning") in links
    # and back: the prompt ComfyUI queues
    from studio.graph.importers.comfyui_export import export_comfyui_api

    back = export_comfyui_api(wf)
    assert {back[i]["class_type"] for i in ("3", "5", "6", "7")} == {
        "CLIPVisionLoader", "CLIPVisionEncode", "StyleModelLoader", "StyleModelApply",
    }  # fmt: skip
    assert back["7"]["inputs"]["strength"] == 0.7 and back["5"]["inputs"]["crop"] == "none"
    assert back["7"]["inputs"]["clip_vision_output"] == ["5", 0]


def test_an_older_comfyui_ui_file_without_the_newer_widgets_imports():
    """Redux's first ComfyUI workflows had no crop / strength widgets: ComfyUI then cropped
    at the centre and applied at strength 1, which the imported nodes keep."""
    from studio.graph.importers.comfyui import import_comfyui

    def ui_node(i, t, wv, inputs=()):
        ins = [{"name": n, "type": n.upper(), "link": link} for n, link in inputs]
        return {"id": i, "type": t, "pos": [0, 0], "size": [200, 80], "mode": 0,
                "inputs": ins, "outputs": [], "widgets_values": wv}  # fmt: skip

    ui = {
        "version": 0.4,
        "links": [[1, 1, 0, 2, 1, "STYLE_MODEL"]],
        "nodes": [
            ui_node(1, "StyleModelLoader", ["flux1-redux-dev.safetensors"]),
            ui_node(2, "StyleModelApply", [], [("conditioning", None), ("style_model", 1)]),
            ui_node(3, "CLIPVisionEncode", []),
        ],
    }
    wf = import_comfyui(ui, installed_registry(), source="old.json").workflow
    nodes = {n.type: n for n in wf.nodes}
    assert nodes["apply_style_model"].params.get("strength", 1.0) == 1.0
    assert nodes["clip_vision_encode"].params.get("crop", "center") == "center"
    assert [(k.output, k.input) for k in wf.links] == [("style_model", "style_model")]


def test_the_released_files_shapes_give_their_models():
    """ComfyUI's sigclip_vision_patch14_384.safetensors (SigLIP so400m, 384 px) and
    flux1-redux-dev.safetensors, by their tensor shapes alone."""
    from nodes.redux import redux_widths, siglip_config

    p = "vision_model."
    shapes = {
        f"{p}embeddings.patch_embedding.weight": (1152, 3, 14, 14),
        f"{p}embeddings.position_embedding.weight": (729, 1152),
        f"{p}post_layernorm.weight": (1152,),
        f"{p}head.probe": (1, 1, 1152),
        **{f"{p}encoder.layers.{i}.mlp.fc1.weight": (4304, 1152) for i in range(27)},
    }
    cfg = siglip_config(shapes, "sigclip_vision_patch14_384.safetensors")
    assert cfg == {
        "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
        "num_attention_heads": 16, "num_channels": 3, "image_size": 384, "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": False,
    }  # fmt: skip
    redux = {"redux_up.weight": (12288, 1152), "redux_down.weight": (4096, 12288)}
    assert redux_widths(redux, "flux1-redux-dev.safetensors") == (1152, 4096)


def test_files_with_empty_tensors_are_clear_errors_naming_the_file():
    """A hostile or broken header (a patch of size 0) is refused before a model is built
    (it was a ZeroDivisionError naming nothing)."""
    from nodes.redux import redux_widths, siglip_config
    from studio.errors import NodeError

    p = "vision_model."
    shapes = {
        f"{p}embeddings.patch_embedding.weight": (8, 3, 0, 0),
        f"{p}embeddings.position_embedding.weight": (4, 8),
        f"{p}post_layernorm.weight": (8,),
        f"{p}encoder.layers.0.mlp.fc1.weight": (16, 8),
    }
    with pytest.raises(NodeError, match=r"bad\.safetensors: not a SigLIP vision model"):
        siglip_config(shapes, "bad.safetensors")
    with pytest.raises(NodeError, match=r"bad-redux\.safetensors: its redux_up and redux_down"):
        redux_widths(
            {"redux_up.weight": (0, 8), "redux_down.weight": (4, 0)}, "bad-redux.safetensors"
        )


def test_the_flux_redux_template_runs_on_the_files_it_names(engine):
    """templates/variation_flux_redux.json (Flux dev's files, SigLIP, Redux, the example
    picture as reference) runs once its file names point at files that are there (the tiny
    ones here), 64x64, 2 steps."""
    from studio.graph.fileformat import load_workflow
    from studio.modelfiles import RESOURCES

    path = RESOURCES / "workflows" / "templates" / "variation_flux_redux.json"
    wf = load_workflow(path, installed_registry())
    swaps = {
        "load_diffusion_model": {"unet_name": "flux.safetensors", "weight_dtype": "default"},
        "load_text_encoders": {
            "clip_name1": "clip_l.safetensors",
            "clip_name2": "t5xxl.safetensors",
        },
        "load_vae": {"vae_name": "ae.safetensors"},
        "load_clip_vision": {"clip_name": "sigclip_tiny.safetensors"},
        "load_style_model": {"style_model_name": "redux_tiny.safetensors"},
        "empty_latent": {"width": 64, "height": 64},
        "sampler": {"steps": 2},
    }
    for node in wf.nodes:
        for name, value in swaps.get(node.type, {}).items():
            wf.set_param(node.id, name, value)
    by_type = {n.type: n for n in wf.nodes}
    assert {"apply_style_model", "clip_vision_encode", "save_image"} <= set(by_type)
    result = engine.run(wf, targets=[by_type["vae_decode"].id])
    assert result.ok, result.errors
