"""The work behind the IP-Adapter nodes (nodes/ipadapter_nodes.py): reading an IP-Adapter
file, encoding the reference pictures, and installing the adapters' attention on the shared
UNet for one Sampler run (diffusers' own converters, processors and image projection, as
its pipelines' ``load_ip_adapter`` builds them), then taking it out again.

Numbers as diffusers' pipelines compute them given the same image embeddings: the attention
output of each cross-attention layer plus weight x the attention over the image tokens
(ComfyUI_IPAdapter_plus's ``embeds_scaling`` "V only", its default: the weight on the
values, which is the same thing). Negative embeddings as ComfyUI_IPAdapter_plus makes them:
zeros for the plain adapter, the encoding of a black picture for the Plus and Face ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nodes.ipadapter_nodes import IPAdapterHandle, IPAdapterUse
from studio.errors import NodeError


def split_state(raw: dict[str, Any], label: str) -> dict[str, dict[str, Any]]:
    """A file's tensors as ``{"image_proj": {...}, "ip_adapter": {...}}`` (the safetensors
    releases hold them flat, as ``image_proj.<name>`` and ``ip_adapter.<name>``)."""
    if isinstance(raw.get("image_proj"), dict) and isinstance(raw.get("ip_adapter"), dict):
        return {"image_proj": dict(raw["image_proj"]), "ip_adapter": dict(raw["ip_adapter"])}
    out: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in raw.items():
        part, _, name = key.partition(".")
        if part in out and name:
            out[part][name] = value
    if not out["image_proj"] or not out["ip_adapter"]:
        raise NodeError(
            f"{label}: not an IP-Adapter (no image_proj / ip_adapter tensors); put IP-Adapter "
            "files (ip-adapter_sd15.safetensors, ...) in the ipadapter folder"
        )
    return out


def describe(state: dict[str, dict[str, Any]], label: str) -> tuple[str, int, int]:
    """(kind, cross-attention width, image width read) of an IP-Adapter's tensors."""
    proj, attn = state["image_proj"], state["ip_adapter"]
    if "perceiver_resampler.proj_in.weight" in proj or (
        "norm.weight" in proj and "proj.weight" not in proj and "proj.0.weight" in proj
    ):
        raise NodeError(
            f"{label}: an IP-Adapter FaceID, which reads InsightFace face embeddings that "
            "Studio does not compute; use ip-adapter-plus-face or ip-adapter-full-face"
        )
    if "1.to_k_ip.weight" not in attn:
        raise NodeError(f"{label}: an IP-Adapter without its attention layers (1.to_k_ip)")
    cross = int(attn["1.to_k_ip.weight"].shape[1])
    if "proj.weight" in proj:
        return "base", cross, int(proj["proj.weight"].shape[1])
    if "proj.3.weight" in proj:
        return "full_face", cross, int(proj["proj.0.weight"].shape[1])
    if "latents" in proj and "proj_in.weight" in proj:
        return "plus", cross, int(proj["proj_in.weight"].shape[1])
    raise NodeError(f"{label}: an IP-Adapter of a kind Studio does not know")


def _read(ctx: Any, handle: IPAdapterHandle) -> dict[str, dict[str, Any]]:
    from nodes.weightfiles import read_state_dict

    def load() -> Any:
        return _Weights(split_state(read_state_dict(Path(handle.path)), Path(handle.path).name))

    box = ctx.models.get(("ipadapter", *handle.identity), load, label=Path(handle.path).name)
    return box.state


class _Weights(torch.nn.Module):
    """An IP-Adapter's tensors for the model manager (it sizes and moves modules)."""

    def __init__(self, state: dict[str, dict[str, Any]]):
        super().__init__()
        self.state = state
        for part, tensors in state.items():
            for i, t in enumerate(tensors.values()):
                self.register_buffer(f"{part}_{i}", t, persistent=False)


def load(ctx: Any, name: str) -> IPAdapterHandle:
    from nodes.weightfiles import read_state_dict

    path = Path(ctx.model_files.resolve("ipadapter", name))
    state = split_state(read_state_dict(path), path.name)
    kind, cross, width = describe(state, path.name)
    handle = IPAdapterHandle(str(path), ctx.files.identity(path), kind, cross, width)
    _read(ctx, handle)  # kept for the Sampler
    return handle


def apply(
    ctx: Any, model: Any, adapter: IPAdapterHandle, vision: Any, image: Any, weight: float,
    start: float = 0.0, end: float = 1.0,
) -> Any:  # fmt: skip
    """``model`` with one more IP-Adapter: the reference embedded now, attention at run time."""
    from nodes import redux
    from nodes.redux_nodes import ClipVisionHandle
    from nodes.sdload import DIT_SOURCE_FAMILIES, with_oom_advice
    from nodes.values import ModelHandle

    if not isinstance(model, ModelHandle):
        raise NodeError(f"the model input is not a model (got {type(model).__name__})")
    if model.family in DIT_SOURCE_FAMILIES:
        raise NodeError(
            "IP-Adapter is for SD 1.x and SDXL UNets; for Flux use FLUX.1 Redux (Apply Style Model)"
        )
    if not isinstance(vision, ClipVisionHandle):
        raise NodeError("the clip_vision input is not an image encoder: connect Load CLIP Vision")
    name = Path(adapter.path).name
    if vision.kind != "clip":
        raise NodeError(
            f"{name} reads a CLIP-ViT image encoder (CLIP-ViT-H-14 for most adapters); "
            f"{Path(vision.path).name} is a SigLIP one"
        )
    unet_cross = model.unet_config.get("cross_attention_dim")
    if unet_cross is not None and int(unet_cross) != adapter.cross_attention_dim:
        raise NodeError(
            f"{name} is made for models with {adapter.cross_attention_dim}-wide text "
            f"(SD 1.x: 768, SDXL: 2048); this model's is {unet_cross}: choose the adapter of "
            "its family"
        )
    width = vision.config["hidden_size" if adapter.reads_hidden_states else "projection_dim"]
    if int(width) != adapter.image_width:
        raise NodeError(
            f"{name} reads {adapter.image_width}-wide image embeddings; "
            f"{Path(vision.path).name} gives {width}-wide ones: load the CLIP Vision model it "
            "was trained with (ViT-H-14 for the SD 1.5 and *_vit-h adapters, ViT-bigG-14 for "
            "ip-adapter_sdxl)"
        )
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or 0 in image.shape[:3]:
        raise NodeError("the image input is not an image (or is empty)")
    encoder = redux.vision_model(ctx, vision)
    param = next(encoder.parameters())

    def encode(pixels: torch.Tensor) -> Any:
        with torch.no_grad():
            out = encoder(
                pixel_values=pixels.to(device=param.device, dtype=param.dtype),
                output_hidden_states=adapter.reads_hidden_states,
            )
        if adapter.reads_hidden_states:
            return out.hidden_states[-2].float().cpu()
        return out.image_embeds.float().cpu()

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        pixels = redux.preprocess(image, vision.image_size, vision.mean, vision.std, "center")
        embeds = encode(pixels)
        if adapter.reads_hidden_states:
            black = redux.preprocess(
                torch.zeros(1, vision.image_size, vision.image_size, 3),
                vision.image_size, vision.mean, vision.std, "center",
            )  # fmt: skip
            negative = encode(black).expand_as(embeds).clone()
        else:
            negative = torch.zeros_like(embeds)
        return embeds[None], negative[None]

    embeds, negative = with_oom_advice(run, "encoding the IP-Adapter's reference picture")
    use = IPAdapterUse(adapter, embeds, negative, weight, start, end)
    return replace(model, ip_adapters=(*model.ip_adapters, use))


def image_embeds(
    uses: tuple[IPAdapterUse, ...], batch: int, do_cfg: bool, device: Any, dtype: Any
) -> list[torch.Tensor]:
    """``added_cond_kwargs["image_embeds"]``: per adapter [negatives then positives or the
    positives alone, batch, images, ...], as the pipelines' ``prepare_ip_adapter_image_embeds``."""
    out = []
    for use in uses:
        reps = (batch,) + (1,) * (use.embeds.ndim - 1)
        e = use.embeds.repeat(reps)
        if do_cfg:
            e = torch.cat([use.negative.repeat(reps), e])
        out.append(e.to(device=device, dtype=dtype))
    return out


def set_scales(unet: Any, uses: tuple[IPAdapterUse, ...], t: float) -> None:
    """Each adapter's weight on the installed processors at training timestep ``t``: its
    weight inside its start / end window, 0 outside (ComfyUI_IPAdapter_plus's sigma window,
    in ComfyUI's percents)."""
    from nodes.comfycore import in_window

    if all(u.start <= 0 and u.end >= 1 for u in uses):
        return  # no windows: the weights set when the adapters were installed hold
    scales = [u.weight if in_window(u.start, u.end, t) else 0.0 for u in uses]
    for proc in unet.attn_processors.values():
        if isinstance(getattr(proc, "scale", None), list):
            proc.scale = list(scales)


@contextlib.contextmanager
def installed(ctx: Any, unet: Any, uses: tuple[IPAdapterUse, ...]) -> Iterator[None]:
    """The adapters' attention processors and image projection on ``unet`` while the block
    runs; its own processors and projection again afterwards (the UNet is shared)."""
    if not uses:
        yield
        return
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    states = [_read(ctx, use.adapter) for use in uses]
    names = ", ".join(Path(use.adapter.path).name for use in uses)
    device, dtype = unet.device, unet.dtype
    try:
        procs = unet._convert_ip_adapter_attn_to_diffusers(states, low_cpu_mem_usage=False)
        projection = MultiIPAdapterImageProjection(
            [
                unet._convert_ip_adapter_image_proj_to_diffusers(
                    s["image_proj"], low_cpu_mem_usage=False
                )
                for s in states
            ]
        )
    except (KeyError, RuntimeError) as exc:
        raise NodeError(
            f"the IP-Adapter ({names}) does not fit this UNet ({type(exc).__name__}: {exc}); "
            "is it made for another model family?"
        ) from None
    weights = [use.weight for use in uses]
    for proc in procs.values():
        if isinstance(proc, torch.nn.Module):
            proc.to(device=device, dtype=dtype)
            proc.scale = list(weights)
    projection.to(device=device, dtype=dtype)
    saved = (unet.attn_processors, unet.encoder_hid_proj, unet.config.encoder_hid_dim_type)
    try:
        unet.set_attn_processor(procs)
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        yield
    finally:
        # the projection first: a Plus adapter's has attention layers of its own, which
        # the UNet would count among its processors
        unet.encoder_hid_proj = saved[1]
        unet.config.encoder_hid_dim_type = saved[2]
        unet.set_attn_processor(saved[0])
