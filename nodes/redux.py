"""The work behind FLUX.1 Redux's nodes (nodes/redux_nodes.py): SigLIP image encoders read
from their tensors (transformers' SiglipVisionModel, config from the shapes), ComfyUI's
image preprocessing, the Redux model (diffusers' ReduxImageEncoder) and appending its
tokens to a Flux prompt.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from nodes.redux_nodes import ClipVisionHandle, ClipVisionOutput, StyleModelHandle
from studio.errors import NodeError

#: The tensor every SigLIP / CLIP vision tower has, under its prefix.
PATCH_KEY = "embeddings.patch_embedding.weight"
#: SigLIP so400m (the encoder FLUX.1 Redux was trained with) has 72-wide heads; the other
#: SigLIP / CLIP towers 64-wide ones. The head count is not in the shapes.
HEADS_BY_WIDTH = {1152: 16}
#: (patch size, patches a side) -> input side where it is not their product: SigLIP
#: so400m-patch14-384 takes 384 px, whose last 6 the stride-14 patches leave out.
IMAGE_SIZES = {(14, 27): 384}


def file_shapes(path: Path, label: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes (from a safetensors header alone, else from the weights)."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        from nodes.sdload import read_safetensors_header

        return read_safetensors_header(path, label)[0]
    from nodes.weightfiles import read_state_dict

    state = read_state_dict(path)
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def vision_prefix(shapes: dict[str, Any]) -> str | None:
    """The prefix of the vision tower's tensors (``vision_model.`` in ComfyUI's files)."""
    for k in shapes:
        if k.endswith(PATCH_KEY):
            return k[: -len(PATCH_KEY)]
    return None


def _layers_and_heads(
    shapes: dict[str, Any], p: str, width: int, heads_by_width: dict[int, int], label: str
) -> tuple[int, int]:
    """A vision tower's layer count (from its tensors) and head count (by its width: not
    in the shapes; 64-wide heads where the table does not say)."""
    layers = 0
    while f"{p}encoder.layers.{layers}.mlp.fc1.weight" in shapes:
        layers += 1
    heads = heads_by_width.get(width, max(1, width // 64))
    if width % heads:
        raise NodeError(f"{label}: a width of {width} does not split into attention heads")
    return layers, heads


def siglip_config(shapes: dict[str, Any], label: str) -> dict[str, Any]:
    """SiglipVisionConfig's values from a SigLIP vision tower's tensor shapes; a CLIP-ViT
    file (class embedding, pre-layernorm) or anything else is a clear error."""
    p = vision_prefix(shapes)
    if p is None:
        raise NodeError(
            f"{label}: not a CLIP Vision model (no {PATCH_KEY}); put SigLIP "
            "(sigclip_vision_patch14_384.safetensors) in clip_vision"
        )
    try:
        width, channels, patch, _ = shapes[f"{p}{PATCH_KEY}"]
        positions = shapes[f"{p}embeddings.position_embedding.weight"][0]
        inner = shapes[f"{p}encoder.layers.0.mlp.fc1.weight"][0]
        shapes[f"{p}post_layernorm.weight"]
    except (KeyError, ValueError, IndexError):
        raise NodeError(
            f"{label}: not a SigLIP vision model (its tensors are not SigLIP's)"
        ) from None
    if min(width, channels, patch, positions, inner) < 1:
        raise NodeError(f"{label}: not a SigLIP vision model (a tensor of size 0)")
    side = math.isqrt(positions)
    if side * side != positions:
        raise NodeError(f"{label}: {positions} position embeddings is not a square of patches")
    layers, heads = _layers_and_heads(shapes, p, width, HEADS_BY_WIDTH, label)
    return {
        "hidden_size": width,
        "intermediate_size": inner,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_channels": channels,
        "image_size": IMAGE_SIZES.get((patch, side), side * patch),
        "patch_size": patch,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,  # its pooled output is not what Redux reads
    }


#: CLIP-ViT towers' head counts by width (ViT-B/16, ViT-L/14, ViT-H/14, ViT-bigG/14: their
#: heads are not 64 wide throughout, and the count is not in the shapes).
CLIP_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1664: 16}
#: CLIP's image normalisation (OpenAI's, which the LAION towers keep).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def is_clip_vit(shapes: dict[str, Any]) -> bool:
    """A CLIP-ViT tower (class embedding, pre-layernorm), not a SigLIP one."""
    p = vision_prefix(shapes) or ""
    return f"{p}embeddings.class_embedding" in shapes or f"{p}pre_layrnorm.weight" in shapes


def clip_vit_config(shapes: dict[str, Any], label: str) -> dict[str, Any]:
    """CLIPVisionConfig's values from a CLIP-ViT tower's tensor shapes (ComfyUI's
    clip_vision files: ViT-H/14 and ViT-bigG/14 for IP-Adapter, OpenAI's ViT-L/14)."""
    p = vision_prefix(shapes) or ""
    try:
        width, channels, patch, _ = shapes[f"{p}{PATCH_KEY}"]
        positions = shapes[f"{p}embeddings.position_embedding.weight"][0]
        inner = shapes[f"{p}encoder.layers.0.mlp.fc1.weight"][0]
        projection = shapes["visual_projection.weight"][0]
    except (KeyError, ValueError, IndexError):
        raise NodeError(
            f"{label}: not a CLIP-ViT image encoder with a projection (its tensors are not "
            "CLIPVisionModelWithProjection's)"
        ) from None
    side = math.isqrt(positions - 1)
    if min(width, channels, patch, inner, projection) < 1 or side * side != positions - 1:
        raise NodeError(f"{label}: its position embeddings are not a square of patches")
    layers, heads = _layers_and_heads(shapes, p, width, CLIP_HEADS_BY_WIDTH, label)
    return {
        "hidden_size": width,
        "intermediate_size": inner,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_channels": channels,
        "image_size": side * patch,
        "patch_size": patch,
        "projection_dim": projection,
        # OpenAI's ViT-L/14 (1024 wide) uses quick GELU, the LAION towers GELU
        "hidden_act": "quick_gelu" if width == 1024 else "gelu",
        "layer_norm_eps": 1e-5,
    }


def load_clip_vision(ctx: Any, name: str) -> ClipVisionHandle:
    path = Path(ctx.model_files.resolve("clip_vision", name))
    shapes = file_shapes(path, path.name)
    if is_clip_vit(shapes):
        config = clip_vit_config(shapes, path.name)
        handle = ClipVisionHandle(
            str(path), ctx.files.identity(path), config, image_size=config["image_size"],
            mean=CLIP_MEAN, std=CLIP_STD, kind="clip",
        )  # fmt: skip
    else:
        config = siglip_config(shapes, path.name)
        handle = ClipVisionHandle(
            str(path), ctx.files.identity(path), config, image_size=config["image_size"]
        )
    vision_model(ctx, handle)  # a damaged file fails here, naming it
    return handle


def vision_model(ctx: Any, handle: ClipVisionHandle) -> Any:
    """The image encoder of ``handle`` on the compute device, shared through ``ctx.models``:
    transformers' SiglipVisionModel, or CLIPVisionModelWithProjection for a CLIP-ViT."""
    dtype = ctx.dtype
    key = ("clip_vision", *handle.identity, str(dtype))
    clip = handle.kind == "clip"
    label = f"{Path(handle.path).name} ({'CLIP-ViT' if clip else 'SigLIP'})"

    def load() -> Any:
        from accelerate import init_empty_weights

        from nodes.sdload import _assign
        from nodes.weightfiles import read_state_dict

        raw = read_state_dict(Path(handle.path))
        if clip:
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            with init_empty_weights():
                model = CLIPVisionModelWithProjection(CLIPVisionConfig(**handle.config))
        else:
            from transformers import SiglipVisionConfig, SiglipVisionModel

            with init_empty_weights():
                model = SiglipVisionModel(SiglipVisionConfig(**handle.config))
        # The file's prefix (ComfyUI's: vision_model.) for the model's own (none in
        # transformers 5's SigLIP).
        p, own = vision_prefix(raw) or "", vision_prefix(model.state_dict()) or ""
        state = {
            own + k[len(p) :]: v.to(dtype)
            for k, v in raw.items()
            if k.startswith(p) and not k[len(p) :].startswith("head.")
        }
        if clip:
            state["visual_projection.weight"] = raw["visual_projection.weight"].to(dtype)
            state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
        _assign(model, state, label)
        return model.eval()

    ctx.models.get(key, load, label=label)
    return ctx.models.use(key, ctx.device)


def preprocess(image: torch.Tensor, size: int, mean: Any, std: Any, crop: str) -> torch.Tensor:
    """ComfyUI's clip_preprocess: [B, H, W, C] in 0..1 to normalised [B, 3, size, size].
    center: scaled (bicubic, antialiased) so the short side is ``size``, the middle kept;
    none: scaled to size x size. Rounded to 8-bit levels, as ComfyUI does."""
    x = image[..., :3].movedim(-1, 1).float()
    if x.shape[2] != size or x.shape[3] != size:
        if crop == "center":
            scale = size / min(x.shape[2], x.shape[3])
            to = (round(scale * x.shape[2]), round(scale * x.shape[3]))
        else:
            to = (size, size)
        x = torch.nn.functional.interpolate(x, size=to, mode="bicubic", antialias=True)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top : top + size, left : left + size]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def encode_image(ctx: Any, handle: ClipVisionHandle, image: Any, crop: str) -> ClipVisionOutput:
    from nodes.sdload import with_oom_advice

    if not isinstance(image, torch.Tensor) or image.ndim != 4 or 0 in image.shape[:3]:
        raise NodeError("the image input is not an image (or is empty)")
    model = vision_model(ctx, handle)
    pixels = preprocess(image, handle.image_size, handle.mean, handle.std, crop)
    param = next(model.parameters())

    def run() -> ClipVisionOutput:
        with torch.no_grad():
            out = model(
                pixel_values=pixels.to(device=param.device, dtype=param.dtype),
                output_hidden_states=handle.kind == "clip",
            )
        if handle.kind != "clip":
            return ClipVisionOutput(out.last_hidden_state.float().cpu())
        return ClipVisionOutput(
            out.last_hidden_state.float().cpu(),
            kind="clip",
            image_embeds=out.image_embeds.float().cpu(),
            penultimate_hidden_states=out.hidden_states[-2].float().cpu(),
        )

    return with_oom_advice(run, "encoding the reference image")


# -- the style model ----------------------------------------------------------------------------


def redux_widths(shapes: dict[str, Any], label: str) -> tuple[int, int]:
    """(image token width, T5 width) of a FLUX.1 Redux file; other files: a clear error."""
    if "style_embedding" in shapes:
        raise NodeError(
            f"{label}: a T2I-Adapter style model (SD1.x); Studio reads only FLUX.1 Redux "
            "style models yet"
        )
    try:
        up, down = shapes["redux_up.weight"], shapes["redux_down.weight"]
    except KeyError:
        raise NodeError(
            f"{label}: not a style model Studio knows (FLUX.1 Redux has redux_up / "
            "redux_down tensors)"
        ) from None
    if len(up) != 2 or len(down) != 2 or down[1] != up[0] or min(*up, *down) < 1:
        raise NodeError(f"{label}: its redux_up and redux_down tensors do not fit together")
    return int(up[1]), int(down[0])


def load_style_model(ctx: Any, name: str) -> StyleModelHandle:
    path = Path(ctx.model_files.resolve("style_models", name))
    in_w, out_w = redux_widths(file_shapes(path, path.name), path.name)
    handle = StyleModelHandle(str(path), ctx.files.identity(path), "redux", in_w, out_w)
    _redux(ctx, handle)
    return handle


def _redux(ctx: Any, handle: StyleModelHandle) -> Any:
    dtype = ctx.dtype
    key = ("style_model", *handle.identity, str(dtype))
    label = f"{Path(handle.path).name} (FLUX.1 Redux)"

    def load() -> Any:
        from accelerate import init_empty_weights
        from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

        from nodes.sdload import _assign
        from nodes.weightfiles import read_state_dict

        state = {k: v.to(dtype) for k, v in read_state_dict(Path(handle.path)).items()}
        with init_empty_weights():
            model = ReduxImageEncoder(redux_dim=handle.in_width, txt_in_features=handle.out_width)
        _assign(model, state, label)
        return model.eval()

    ctx.models.get(key, load, label=label)
    return ctx.models.use(key, ctx.device)


def apply_style(ctx: Any, conditioning: Any, style: Any, vision: Any, strength: float) -> list:
    """ComfyUI's StyleModelApply (multiply): the Redux tokens of every reference image, one
    after another, times ``strength``, appended to each prompt's T5 tokens."""
    from nodes.dit import FAMILY_TITLES
    from nodes.sdload import with_oom_advice
    from nodes.values import Cond

    if not isinstance(conditioning, list) or not all(isinstance(c, Cond) for c in conditioning):
        raise NodeError("the conditioning input is not conditioning")
    if not isinstance(style, StyleModelHandle):
        raise NodeError("the style_model input is not a style model: connect Load Style Model")
    if not isinstance(vision, ClipVisionOutput):
        raise NodeError("the clip_vision_output input is not one: connect CLIP Vision Encode")
    if vision.kind != "siglip":
        raise NodeError(
            "FLUX.1 Redux reads a SigLIP encoder's image tokens; this CLIP Vision output is a "
            "CLIP-ViT's (IP-Adapter's encoder): load sigclip_vision_patch14_384.safetensors"
        )
    for c in conditioning:
        if c.family != "flux":
            family = FAMILY_TITLES.get(c.family, "Stable Diffusion 1.x / 2.x / XL")
            raise NodeError(
                f"FLUX.1 Redux works with Flux prompts; this prompt was encoded for {family}: "
                "connect a Flux Text Encode (and use a Flux.1 model)"
            )
        if c.embeds.shape[-1] != style.out_width:
            raise NodeError(
                f"{Path(style.path).name} makes {style.out_width}-wide tokens, but the "
                f"prompt's T5 tokens are {c.embeds.shape[-1]} wide: use the Redux model of "
                "this Flux model's text encoder"
            )
    hidden = vision.last_hidden_state
    if hidden.shape[-1] != style.in_width:
        raise NodeError(
            f"the CLIP Vision output is {hidden.shape[-1]} wide, but "
            f"{Path(style.path).name} reads {style.in_width}-wide image tokens: load the "
            "SigLIP encoder Redux was made for (sigclip_vision_patch14_384.safetensors)"
        )
    model = _redux(ctx, style)
    param = next(model.parameters())

    def run() -> torch.Tensor:
        with torch.no_grad():
            out = model(hidden.to(device=param.device, dtype=param.dtype)).image_embeds
        return out.float().cpu()

    tokens = with_oom_advice(run, "applying the style model")
    tokens = tokens.flatten(0, 1).unsqueeze(0) * float(strength)
    return [
        dataclasses.replace(
            c, embeds=torch.cat([c.embeds, tokens.expand(len(c.embeds), -1, -1)], 1)
        )
        for c in conditioning
    ]
