"""IP-Adapter on SD 1.x (Load IP-Adapter, Load CLIP Vision with a CLIP-ViT encoder, Apply
IP-Adapter): the graph's picture equals StableDiffusionPipeline's with the same adapter
(``unet._load_ip_adapter_weights``, ``set_ip_adapter_scale``) and the same image embeddings;
tiny random UNet, CLIP-ViT and adapter built in code, CPU, 64x64, 3 steps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402

from studio.graph import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402

PROMPT, NEGATIVE, SEED, STEPS, CFG = "a red fox", "blurry", 5, 3, 6.0
#: The tiny CLIP-ViT: 32-pixel input of 8-pixel patches, 64 wide, a 24-wide projection.
SIDE, WIDTH, PROJECTION = 32, 64, 24


def tiny_vit(seed: int = 3):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=1,
        image_size=SIDE, patch_size=8, projection_dim=PROJECTION, hidden_act="gelu",
    )  # fmt: skip
    return CLIPVisionModelWithProjection(cfg).eval()


def tiny_ipadapter(unet, seed: int = 4, scale: float = 0.5) -> dict:
    """A plain IP-Adapter for ``unet`` in the released layout: ``image_proj`` (a projection
    of the image embedding to 4 tokens) and ``ip_adapter`` (to_k_ip / to_v_ip of each
    cross-attention layer, numbered 1, 3, 5, ... in the UNet's processor order)."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    blocks = unet.config.block_out_channels
    proj = {
        "proj.weight": torch.randn(4 * cross, PROJECTION, generator=g) * scale,
        "proj.bias": torch.randn(4 * cross, generator=g) * scale,
        "norm.weight": 1 + torch.randn(cross, generator=g) * 0.1,
        "norm.bias": torch.randn(cross, generator=g) * 0.1,
    }
    attn, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        for kv in ("to_k_ip", "to_v_ip"):
            attn[f"{key_id}.{kv}.weight"] = torch.randn(hidden, cross, generator=g) * scale
        key_id += 2
    return {"image_proj": proj, "ip_adapter": attn}


def tiny_ipadapter_plus(unet, seed: int = 6) -> dict:
    """An IP-Adapter Plus for ``unet`` in the released layout: a resampler (4 queries, the
    released 4 layers) over the encoder's penultimate layer, written from diffusers' own
    module by inverting diffusers' converter, and to_k_ip / to_v_ip as the plain one's."""
    import re

    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    module = IPAdapterPlusImageProjection(
        embed_dims=WIDTH, output_dims=cross, hidden_dims=64, depth=4, dim_head=64, heads=1,
        num_queries=4,
    )  # fmt: skip
    sd = module.state_dict()
    released = {
        "ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
        "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3",
    }  # fmt: skip
    proj = {}
    for key, value in sd.items():
        m = re.fullmatch(r"layers\.(\d)\.(.+)\.(weight|bias)", key)
        if m is None:
            proj[key] = value * (3.0 if key.startswith("proj_out") else 1.0)
        elif m.group(2) in released:
            proj[f"layers.{m.group(1)}.{released[m.group(2)]}.{m.group(3)}"] = value
    for i in range(4):
        proj[f"layers.{i}.0.to_kv.weight"] = torch.cat(
            [sd[f"layers.{i}.attn.to_k.weight"], sd[f"layers.{i}.attn.to_v.weight"]]
        )
    return {"image_proj": proj, "ip_adapter": tiny_ipadapter(unet, seed)["ip_adapter"]}


def flat(state: dict) -> dict:
    return {f"{part}.{k}": v for part, tensors in state.items() for k, v in tensors.items()}


@pytest.fixture(scope="module")
def parts():
    sd1 = fx.tiny_sd1()
    sdxl = fx.tiny_sdxl()
    return {
        "sd1": sd1, "vit": tiny_vit(), "ip": tiny_ipadapter(sd1["unet"]),
        "ip-plus": tiny_ipadapter_plus(sd1["unet"]),
        "sdxl": sdxl, "ip-xl": tiny_ipadapter(sdxl["unet"], seed=8),
    }  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory, parts):
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ipadapter-models")
    for d in ("checkpoints", "clip_vision", "ipadapter"):
        (root / d).mkdir()
    fx.save_folder(fx.sd1_pipeline(parts["sd1"]), root / "checkpoints" / "tiny-sd1")
    vit = {k: v.contiguous() for k, v in parts["vit"].state_dict().items()}
    save_file(vit, str(root / "clip_vision" / "vit-tiny.safetensors"))
    save_file(flat(parts["ip"]), str(root / "ipadapter" / "ip-adapter_tiny.safetensors"))
    save_file(flat(parts["ip-plus"]), str(root / "ipadapter" / "ip-adapter-plus_tiny.safetensors"))
    fx.save_folder(fx.sdxl_pipeline(parts["sdxl"]), root / "checkpoints" / "tiny-sdxl")
    save_file(flat(parts["ip-xl"]), str(root / "ipadapter" / "ip-adapter_sdxl_tiny.safetensors"))
    y, x = np.mgrid[0:40, 0:48]
    picture = np.stack([x * 5, y * 6, (x + y) * 3], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(picture).save(root / "ref.png")
    Image.fromarray(picture[::-1, ::-1].copy()).save(root / "other.png")
    return root


@pytest.fixture(scope="module")
def engine(root, tmp_path_factory):
    from studio.engine import Engine
    from studio.settings import Settings

    tmp = tmp_path_factory.mktemp("ipadapter-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def graph(root, weight=0.7, ref="ref.png", adapter="ip-adapter_tiny.safetensors",
          vision="vit-tiny.safetensors", window=(0.0, 1.0), ckpt="tiny-sd1"):  # fmt: skip
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": ckpt}).id
    model = (ck, "model")
    if adapter:
        ip = add("load_ipadapter", {"ipadapter_file": adapter}).id
        cv = add("load_clip_vision", {"clip_name": vision}).id
        im = add("load_image", {"image": str(root / ref)}).id
        ap = add("apply_ipadapter", {"weight": weight, "start_at": window[0],
                                     "end_at": window[1]}).id  # fmt: skip
        c(ck, "model", ap, "model")
        c(ip, "ipadapter", ap, "ipadapter")
        c(cv, "clip_vision", ap, "clip_vision")
        c(im, "image", ap, "image")
        model = (ap, "model")
    params = {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler": "euler"}
    dec = fx.sampling_tail(
        wf, model, (ck, "clip"), (ck, "vae"), prompt=PROMPT, negative=NEGATIVE, params=params
    )
    return wf, dec


def picture(engine, root, **kw) -> np.ndarray:
    wf, dec = graph(root, **kw)
    result = engine.run(wf, targets=[dec])
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def encoded(parts, image, hidden: bool):
    """A picture's projected CLIP embedding (or penultimate layer): ComfyUI's CLIP
    preprocessing (resize the short side, centre crop, CLIP's mean and std), the encoder."""
    from nodes.redux import CLIP_MEAN, CLIP_STD, preprocess

    pixels = preprocess(image, SIDE, CLIP_MEAN, CLIP_STD, "center")
    with torch.no_grad():
        out = parts["vit"](pixel_values=pixels, output_hidden_states=hidden)
    return out.hidden_states[-2] if hidden else out.image_embeds


def reference_embeds(parts, root, ref="ref.png", hidden=False):
    from PIL import Image

    with Image.open(root / ref) as im:
        image = torch.from_numpy(np.asarray(im.convert("RGB")).astype(np.float32) / 255)[None]
    return encoded(parts, image, hidden)


def pipeline_picture(parts, root, kind="ip", weight=0.7, window=(0.0, 1.0)):
    if kind == "ip-xl":
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
            str(root / "checkpoints" / "tiny-sdxl")
        )
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            str(root / "checkpoints" / "tiny-sd1"), safety_checker=None
        )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet._load_ip_adapter_weights([parts[kind]])
    pipe.set_ip_adapter_scale(weight)
    plus = kind == "ip-plus"
    embeds = reference_embeds(parts, root, hidden=plus)[None]  # [1 prompt, 1 image, ...]
    if plus:  # ComfyUI_IPAdapter_plus's negative: a black picture's encoding
        negative = encoded(parts, torch.zeros(1, SIDE, SIDE, 3), True)[None]
    else:
        negative = torch.zeros_like(embeds)
    from nodes.comfycore import in_window

    def scale_at(t) -> float:  # ComfyUI's percent window on the training timestep
        return weight if in_window(window[0], window[1], float(t)) else 0.0

    pipe.scheduler.set_timesteps(STEPS)
    pipe.set_ip_adapter_scale(scale_at(pipe.scheduler.timesteps[0]))

    def next_scale(p, i, t, kwargs):  # set before each step, as the Sampler does
        timesteps = p.scheduler.timesteps
        if i + 1 < len(timesteps):
            p.set_ip_adapter_scale(scale_at(timesteps[i + 1]))
        return kwargs

    return pipe(
        PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS,
        guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED),
        ip_adapter_image_embeds=[torch.cat([negative, embeds])], output_type="np",
        callback_on_step_end=next_scale,
    ).images  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "name", "ckpt"),
    [
        ("ip", "ip-adapter_tiny.safetensors", "tiny-sd1"),
        ("ip-plus", "ip-adapter-plus_tiny.safetensors", "tiny-sd1"),
        ("ip-xl", "ip-adapter_sdxl_tiny.safetensors", "tiny-sdxl"),  # beside SDXL's size ids
    ],
)
def test_the_graph_equals_the_pipeline_with_the_same_adapter(engine, parts, root, kind, name, ckpt):
    got = picture(engine, root, adapter=name, ckpt=ckpt)
    want = pipeline_picture(parts, root, kind)
    assert np.abs(got - want).max() <= 1e-4
    plain = picture(engine, root, adapter=None, ckpt=ckpt)
    assert np.abs(got - plain).max() > 1e-2  # the reference shows


def test_a_start_and_end_window_equals_the_pipeline_with_the_scale_set_per_step(
    engine, parts, root
):
    """ComfyUI_IPAdapter_plus's start_at / end_at: the adapter steers only inside the
    window (here the first step is left out, then the last)."""
    for window in ((0.4, 1.0), (0.0, 0.6)):  # timesteps 667, 334, 1: percents .33, .67, 1
        got = picture(engine, root, window=window)
        want = pipeline_picture(parts, root, window=window)
        assert np.abs(got - want).max() <= 1e-4
        assert np.abs(got - picture(engine, root)).max() > 1e-3  # not the whole sampling


def test_weight_zero_is_the_plain_model_and_another_picture_steers_elsewhere(engine, root):
    plain = picture(engine, root, adapter=None)
    assert np.abs(picture(engine, root, weight=0.0) - plain).max() <= 1e-5
    a, b = picture(engine, root), picture(engine, root, ref="other.png")
    assert np.abs(a - b).max() > 1e-2
    # after adapters' runs (also a Plus one's) the shared UNet is its own again: the plain
    # picture is the pipeline's without an adapter
    picture(engine, root, adapter="ip-adapter-plus_tiny.safetensors")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(root / "checkpoints" / "tiny-sd1"), safety_checker=None
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    want = pipe(
        PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS,
        guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
    ).images  # fmt: skip
    assert np.abs(picture(engine, root, adapter=None) - want).max() <= 1e-4


def test_clip_vision_encode_gives_the_encoders_embedding(engine, parts, root):
    wf = Workflow(installed_registry())
    cv = wf.add_node("load_clip_vision", {"clip_name": "vit-tiny.safetensors"}).id
    im = wf.add_node("load_image", {"image": str(root / "ref.png")}).id
    enc = wf.add_node("clip_vision_encode", {"crop": "center"}).id
    wf.connect(cv, "clip_vision", enc, "clip_vision")
    wf.connect(im, "image", enc, "image")
    result = engine.run(wf, targets=[enc])
    assert result.ok, result.errors
    out = result.outputs[enc]["clip_vision_output"]
    assert out.kind == "clip"
    assert torch.allclose(out.image_embeds, reference_embeds(parts, root), atol=1e-6)


def _error(engine, wf, target) -> str:
    result = engine.run(wf, targets=[target])
    assert not result.ok
    text = " ".join(result.errors.values())
    assert "Traceback" not in text
    return text


def test_wrong_files_and_encoders_are_clear_errors(engine, parts, root):
    from safetensors.torch import save_file

    from nodes import ipadapter
    from studio.errors import NodeError

    # not an IP-Adapter; a FaceID one (InsightFace embeddings)
    save_file({"w": torch.zeros(2, 2)}, str(root / "ipadapter" / "other.safetensors"))
    wf = Workflow(installed_registry())
    n = wf.add_node("load_ipadapter", {"ipadapter_file": "other.safetensors"}).id
    assert "other.safetensors: not an IP-Adapter" in _error(engine, wf, n)
    faceid = {"image_proj": {"proj.0.weight": torch.zeros(4, 4), "norm.weight": torch.zeros(4)},
              "ip_adapter": parts["ip"]["ip_adapter"]}  # fmt: skip
    with pytest.raises(NodeError, match="FaceID, which reads InsightFace face embeddings"):
        ipadapter.describe(faceid, "faceid.bin")
    # an adapter for another text width (SDXL's, against this SD 1.x model's 32)
    wide = {
        "image_proj": parts["ip"]["image_proj"],
        "ip_adapter": {
            k: torch.zeros(v.shape[0], 48) for k, v in parts["ip"]["ip_adapter"].items()
        },
    }
    save_file(flat(wide), str(root / "ipadapter" / "wide.safetensors"))
    wf, dec = graph(root, adapter="wide.safetensors")
    assert "is made for models with 48-wide text" in _error(engine, wf, dec)
    # an encoder whose embedding is not the width the adapter reads
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    other = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=1, num_attention_heads=1,
        image_size=SIDE, patch_size=8, projection_dim=16))  # fmt: skip
    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              str(root / "clip_vision" / "vit-16.safetensors"))  # fmt: skip
    wf, dec = graph(root, vision="vit-16.safetensors")
    text = _error(engine, wf, dec)
    assert "reads 24-wide image embeddings; vit-16.safetensors gives 16-wide ones" in text


def test_a_comfyui_ipadapter_plus_workflow_imports_runs_and_exports(engine, root):
    """cubiq's ComfyUI_IPAdapter_plus: IPAdapterModelLoader, CLIPVisionLoader, LoadImage,
    IPAdapterAdvanced before a KSampler: the picture of Studio's own graph; what Studio does
    not do (start_at) is reported."""
    from studio.graph.importers.comfyui import import_comfyui
    from studio.graph.importers.comfyui_export import export_comfyui_api

    advanced = {"weight": 0.7, "weight_type": "linear", "combine_embeds": "concat",
                "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}  # fmt: skip
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1"}},
        "2": {"class_type": "IPAdapterModelLoader",
              "inputs": {"ipadapter_file": "ip-adapter_tiny.safetensors"}},
        "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-tiny.safetensors"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": str(root / "ref.png")}},
        "5": {"class_type": "IPAdapterAdvanced", "inputs": {
            **advanced, "model": ["1", 0], "ipadapter": ["2", 0], "image": ["4", 0],
            "clip_vision": ["3", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "8": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["5", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["8", 0]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
    }  # fmt: skip
    result = import_comfyui(api, installed_registry(), source="ipadapter.json")
    wf = result.workflow
    assert not [n for n in wf.nodes if n.type.startswith("comfyui.")], result.report
    node = wf.get_node("5")
    assert node.type == "apply_ipadapter"
    assert node.params == {"weight": 0.7, "start_at": 0.0, "end_at": 1.0}
    assert export_comfyui_api(wf)["5"]["inputs"] == api["5"]["inputs"]
    run = engine.run(wf, targets=["10"])
    assert run.ok, run.errors
    # Studio's own graph, sampled with the KSampler's (ComfyUI's) schedule
    own, dec = graph(root)
    sampler = next(n for n in own.nodes if n.type == "sampler")
    own.set_param(sampler.id, "scheduler", wf.get_node("9").params["scheduler"])
    want = engine.run(own, targets=[dec])
    assert want.ok, want.errors
    got = run.outputs["10"]["image"].numpy()
    assert np.abs(got - want.outputs[dec]["image"].numpy()).max() <= 1e-5
    # a weight type Studio does not do is said
    api["5"]["inputs"]["weight_type"] = "ease in"
    report = import_comfyui(api, installed_registry(), source="ipadapter.json").report
    assert any("its weight per block was dropped" in line for line in report)
