"""Diffusion transformers with flow matching: Stable Diffusion 3.5 and Flux.1.

Reading their files (diffusers folders of StableDiffusion3Pipeline / FluxPipeline, SD3.5
all-in-one checkpoints, transformer-only files in both key layouts in circulation, separate
CLIP-L / CLIP-G / T5-XXL files, 16-channel VAEs, fp8 and GGUF weights), encoding prompts the
way the two pipelines do, and the flow-matching denoising loop behind the Sampler and
Sampler (Advanced) for them: txt2img, img2img and inpainting as the (inpaint) pipelines do,
steps windows as ComfyUI's KSamplerAdvanced, and SD3 / Flux ControlNets as
StableDiffusion3ControlNetPipeline / FluxControlNetPipeline.

The values are the UNet family's own (MODEL, CLIP, VAE, CONDITIONING, LATENT handles of
``nodes.values``) with family ``sd3`` or ``flux``: the generic nodes (Text Encode, Sampler,
VAE Decode, Load Checkpoint) hand them here. Key conversion is diffusers' own
(``diffusers.loaders.single_file_utils``); configs of single files are read off their tensor
shapes, so no hub is asked. Imported lazily (imports torch, diffusers, transformers).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodes import dit_context
from nodes.values import (
    CONTROL_IMAGE_KEY,
    LAYOUT_DIFFUSERS,
    LAYOUT_SINGLE_FILE,
    ClipHandle,
    Cond,
    ModelHandle,
    VaeHandle,
    WeightsSource,
)
from studio.errors import NodeError
from studio.modelfiles import RESOURCES

DIT_FAMILIES = ("sd3", "flux")
FAMILY_TITLES = {"sd3": "Stable Diffusion 3.x", "flux": "Flux.1"}
CONFIGS = RESOURCES / "configs"
CLIP_TOKENIZER = RESOURCES / "tokenizers" / "clip"
T5_TOKENIZER = RESOURCES / "tokenizers" / "t5"

DIFFUSION_PREFIX = "model.diffusion_model."
#: The SD3.5 all-in-one layout (as ComfyUI and Stability ship it).
SD3_AIO_PREFIXES = {
    "text_encoder": "text_encoders.clip_l.transformer.",
    "text_encoder_2": "text_encoders.clip_g.transformer.",
    "text_encoder_3": "text_encoders.t5xxl.transformer.",
    "vae": "first_stage_model.",
}
#: The Flux.1 all-in-one layout (Comfy-Org's flux1-dev-fp8 / flux1-schnell-fp8; ComfyUI's
#: Flux model reads its VAE under "vae." and its text encoders under "text_encoders.").
FLUX_AIO_PREFIXES = {
    "text_encoder": "text_encoders.clip_l.transformer.",
    "text_encoder_2": "text_encoders.t5xxl.transformer.",
    "vae": "vae.",
}
AIO_PREFIXES = {"sd3": SD3_AIO_PREFIXES, "flux": FLUX_AIO_PREFIXES}
#: ComfyUI's "scaled fp8" files (t5xxl_fp8_e4m3fn_scaled, sd3.5_large_fp8_scaled, ...): a
#: marker tensor ``scaled_fp8`` under the component's prefix (its dtype names the fp8 format),
#: and beside each fp8 layer weight ``X.weight`` its ``X.scale_weight`` (float32, one value per
#: tensor) and maybe ``X.scale_input``. The weight is ``X.weight`` times ``X.scale_weight``.
SCALED_FP8_MARKER = "scaled_fp8"
SCALE_WEIGHT, SCALE_INPUT = ".scale_weight", ".scale_input"
#: What each all-in-one component is, in the words of the loaders' file names.
AIO_PART_NAMES = {
    "sd3": {"vae": "VAE", "text_encoder": "CLIP-L", "text_encoder_2": "CLIP-G"},
    "flux": {"vae": "VAE", "text_encoder": "CLIP-L", "text_encoder_2": "T5-XXL"},
}
CLIP_TOKEN_KEY = "text_model.embeddings.token_embedding.weight"
T5_SHARED_KEY = "shared.weight"
T5_BLOCK_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"

#: T5 sees this many tokens by default, as the pipelines pad to (``max_sequence_length``).
T5_LENGTH = {"sd3": 256, "flux": 512}
#: Neither pipeline reads more T5 tokens than this.
T5_MAX_TOKENS = 512
#: Flux dev's distilled guidance when no Flux Guidance node sets one (the pipeline's default).
FLUX_DEFAULT_GUIDANCE = 3.5
#: FLUX.1 Fill's (FluxFillPipeline's default guidance_scale).
FLUX_FILL_DEFAULT_GUIDANCE = 30.0
#: The mask's channels per packed Fill token: an 8x8 pixel block per latent cell, 2x2 cells.
FILL_MASK_CHANNELS = 4 * 8 * 8
#: The Flux VAE's and SD3's VAE's latent scale and shift (their published configs).
VAE_FACTORS = {"flux": (0.3611, 0.1159), "sd3": (1.5305, 0.0609)}

#: The LoRA prefix (the pipelines' component name) of each text encoder role.
LORA_PREFIXES = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
#: ComfyUI's samplers (nodes/ksamplers.py) run on flow models as ComfyUI runs them, the
#: model as a denoiser ``x - sigma v`` (``ksamplers.flow_form``): the ODE ones solve
#: dx/dsigma = (x - denoised) / sigma, the flow's own ODE (dx/dsigma = v); the ancestral
#: ones take ComfyUI's flow forms (its ``*_RF`` functions); the SDE ones and lcm work in the
#: flow's log-SNR log((1 - sigma) / sigma) and signal scale 1 - sigma; ddim is ComfyUI's
#: (Euler steps). On studio-tiny-flow
#: dpm_2 lands nearer a 60-step Euler picture at 8 steps than Euler does; the multistep
#: ones (lms, ipndm, uni_pc) diverge below ~20-30 steps there, as the same formulas do in
#: ComfyUI (README).
K_FLOW_SAMPLERS = (
    "dpm_2", "lms", "ipndm", "uni_pc", "uni_pc_bh2",
    "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm", "ddim",
)  # fmt: skip
#: Samplers that apply to flow-matching models: diffusers' flow schedulers (euler, heun,
#: dpmpp_2m) and :data:`K_FLOW_SAMPLERS`.
FLOW_SAMPLERS = ("euler", "heun", "dpmpp_2m", *K_FLOW_SAMPLERS)
#: Schedules: normal = the model's own (the pipeline's), simple = ComfyUI's (evenly spaced
#: in time, then shifted), and the sigma conversions diffusers' flow schedulers offer.
FLOW_SCHEDULES = {
    "normal": {},
    "simple": {},
    "beta": {"use_beta_sigmas": True},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
}


# -- what a file holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sniffed:
    """What a weights file looks like: ``kind`` is ``sd3`` / ``flux`` (a transformer),
    ``sd3_all_in_one`` / ``flux_all_in_one`` (a transformer beside its text encoders and
    VAE), ``clip``, ``t5``, ``vae`` or ``other``; ``prefix`` is where its (transformer's)
    tensors start."""

    kind: str
    prefix: str = ""
    what: str = ""


def _prefix_of(shapes: dict[str, Any], key: str) -> str | None:
    for k in shapes:
        if k.endswith(key):
            return k[: -len(key)]
    return None


def sniff(shapes: dict[str, tuple[int, ...]]) -> Sniffed:
    """What a file holds, from its tensor names (never from its file name)."""
    p = _prefix_of(shapes, "joint_blocks.0.x_block.attn.qkv.weight")
    if p is None:
        p = _prefix_of(shapes, "joint_blocks.0.x_block.attn.qkv.weight.qweight")
    if p is not None:
        if any(k.startswith(SD3_AIO_PREFIXES["text_encoder"]) for k in shapes):
            return Sniffed("sd3_all_in_one", p, "an SD3.5 all-in-one checkpoint")
        return Sniffed("sd3", p, "a Stable Diffusion 3.x transformer")
    p = _prefix_of(shapes, "double_blocks.0.img_attn.qkv.weight")
    if p is not None:
        if any(k.startswith(tuple(FLUX_AIO_PREFIXES.values())) for k in shapes):
            return Sniffed("flux_all_in_one", p, "a Flux.1 all-in-one checkpoint")
        return Sniffed("flux", p, "a Flux.1 transformer")
    if any(k.startswith("transformer_blocks.0.") for k in shapes) and any(
        k.startswith("single_transformer_blocks.") for k in shapes
    ):
        return Sniffed("flux", "", "a Flux.1 transformer (diffusers layout)")
    if any(k.startswith("transformer_blocks.0.attn.add_q_proj") for k in shapes) and any(
        k.startswith("pos_embed.proj") for k in shapes
    ):
        return Sniffed("sd3", "", "a Stable Diffusion 3.x transformer (diffusers layout)")
    p = _prefix_of(shapes, T5_BLOCK_KEY)
    if p is not None:
        return Sniffed("t5", p, "a T5 text encoder")
    p = _prefix_of(shapes, CLIP_TOKEN_KEY)
    if p is not None:
        return Sniffed("clip", p, "a CLIP text encoder")
    p = _prefix_of(shapes, "decoder.conv_in.weight")
    if p is not None:
        return Sniffed("vae", p, "a VAE")
    return Sniffed("other", "", _looks_like(shapes))


def _looks_like(shapes: dict[str, tuple[int, ...]]) -> str:
    keys = list(shapes)
    if any(k.startswith("model.diffusion_model.input_blocks.") for k in keys):
        return "a Stable Diffusion (UNet) checkpoint: use Load Checkpoint"
    if any("lora" in k.lower() for k in keys[:50]):
        return "a LoRA: use Load LoRA"
    families = (
        ("blocks.0.self_attn", "a Wan/video transformer"),
        ("double_layers.", "an AuraFlow transformer"),
        ("single_stream_modulation", "a Flux.2 transformer"),
        ("cap_embedder", "a Lumina 2 transformer"),
        ("layers.0.adaLN_modulation", "a Z-Image transformer"),
        ("patchify_proj", "an LTX-Video transformer"),
        ("txt_in.individual_token_refiner", "a HunyuanVideo transformer"),
        ("control_model.", "a ControlNet"),
    )
    for needle, name in families:
        if any(needle in k for k in keys):
            return name
    sample = ", ".join(keys[:3]) or "no tensors"
    return f"weights Studio does not know (first keys: {sample})"


# -- configs read off tensor shapes -------------------------------------------------------------


def flux_rope_axes(head_dim: int) -> list[int]:
    """Flux's rotary axes for a head width: (16, 56, 56) for the real 128; each axis even."""
    a = max(2, (head_dim // 8) // 2 * 2)
    r = (head_dim - a) // 2 // 2 * 2
    return [head_dim - 2 * r, r, r]


def _count(shapes: dict[str, Any], prefix: str) -> int:
    idx = set()
    for k in shapes:
        if k.startswith(prefix):
            rest = k[len(prefix) :]
            head = rest.split(".", 1)[0]
            if head.isdigit():
                idx.add(int(head))
    return max(idx) + 1 if idx else 0


def _shape(shapes: dict[str, Any], key: str, label: str) -> tuple[int, ...]:
    if key in shapes:
        return tuple(shapes[key])
    raise NodeError(f"{label}: the file lacks {key!r}; it may be damaged or another model")


def flux_config(shapes: dict[str, Any], p: str, label: str) -> dict[str, Any]:
    """FluxTransformer2DModel's config from an original-layout Flux file's shapes (FLUX.1
    Fill: more input channels than output channels)."""
    hidden, in_ch = _shape(shapes, p + "img_in.weight", label)
    out_ch = _shape(shapes, p + "final_layer.linear.weight", label)[0]
    head = _shape(shapes, p + "double_blocks.0.img_attn.norm.query_norm.scale", label)[0]
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": in_ch,
        "out_channels": out_ch if out_ch != in_ch else None,
        "num_layers": _count(shapes, p + "double_blocks."),
        "num_single_layers": _count(shapes, p + "single_blocks."),
        "attention_head_dim": head,
        "num_attention_heads": hidden // head,
        "joint_attention_dim": _shape(shapes, p + "txt_in.weight", label)[1],
        "pooled_projection_dim": _shape(shapes, p + "vector_in.in_layer.weight", label)[1],
        "guidance_embeds": (p + "guidance_in.in_layer.weight") in shapes,
        "axes_dims_rope": flux_rope_axes(head),
    }


def flux_out_channels(config: Any) -> int:
    """A Flux transformer's packed output channels (its config's ``out_channels``, or its
    input channels when unset)."""
    return int(config.get("out_channels") or config["in_channels"])


def is_flux_fill(config: Any) -> bool:
    """FLUX.1 Fill [dev]: the transformer takes, per packed token, the noisy latent, the
    masked image's latent and the 8x8-per-cell mask (64 + 64 + 256 = 384 for the released
    model), as FluxFillPipeline concatenates them."""
    out = flux_out_channels(config)
    return int(config["in_channels"]) == 2 * out + FILL_MASK_CHANNELS


def is_flux_control(config: Any) -> bool:
    """FLUX.1 Canny / Depth [dev] (structural conditioning): the transformer takes, per
    packed token, the noisy latent and the control image's latent (64 + 64 = 128 for the
    released models), as FluxControlPipeline concatenates them."""
    return int(config["in_channels"]) == 2 * flux_out_channels(config)


def check_flux_channels(config: Any, label: str) -> None:
    """Refuse Flux transformers Studio cannot feed, saying which ones it knows."""
    in_ch, out = int(config["in_channels"]), flux_out_channels(config)
    if in_ch == out or is_flux_fill(config) or is_flux_control(config):
        return
    fill = 2 * out + FILL_MASK_CHANNELS
    raise NodeError(
        f"{label}: a Flux.1 transformer taking {in_ch} input channels for {out} output "
        f"channels; Studio knows Flux.1 ({out} in), FLUX.1 Canny / Depth ({2 * out} in) "
        f"and FLUX.1 Fill ({fill} in)"
    )


def sd3_config(shapes: dict[str, Any], p: str, label: str) -> dict[str, Any]:
    """SD3Transformer2DModel's config from an original-layout SD3 file's shapes."""
    hidden, in_ch, patch, _ = _shape(shapes, p + "x_embedder.proj.weight", label)
    ln_q = shapes.get(p + "joint_blocks.0.x_block.attn.ln_q.weight")
    head = ln_q[0] if ln_q else 64
    pos = shapes.get(p + "pos_embed")
    n_layers = _count(shapes, p + "joint_blocks.")
    dual = [i for i in range(n_layers) if f"{p}joint_blocks.{i}.x_block.attn2.qkv.weight" in shapes]
    out = _shape(shapes, p + "final_layer.linear.weight", label)[0] // (patch * patch)
    return {
        "_class_name": "SD3Transformer2DModel",
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_ch,
        "num_layers": n_layers,
        "attention_head_dim": head,
        "num_attention_heads": hidden // head,
        "joint_attention_dim": _shape(shapes, p + "context_embedder.weight", label)[1],
        "caption_projection_dim": hidden,
        "pooled_projection_dim": _shape(shapes, p + "y_embedder.mlp.0.weight", label)[1],
        "out_channels": out,
        "pos_embed_max_size": round(math.sqrt(pos[1])) if pos else 96,
        "dual_attention_layers": dual,
        "qk_norm": "rms_norm" if ln_q else None,
    }


def clip_config(shapes: dict[str, Any], p: str) -> dict[str, Any]:
    """A CLIP text tower's config from its shapes (the released towers: 64-wide heads;
    OpenCLIP's bigG, 1280 wide, uses gelu, OpenAI's L quick_gelu)."""
    vocab, hidden = shapes[p + CLIP_TOKEN_KEY]
    layers = _count(shapes, p + "text_model.encoder.layers.")
    inter = shapes[p + "text_model.encoder.layers.0.mlp.fc1.weight"][0]
    positions = shapes[p + "text_model.embeddings.position_embedding.weight"][0]
    proj = shapes.get(p + "text_projection.weight")
    return {
        "architectures": ["CLIPTextModelWithProjection"],
        "model_type": "clip_text_model",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": positions,
        "vocab_size": vocab,
        "projection_dim": proj[0] if proj else hidden,
        "hidden_act": "gelu" if hidden >= 1280 else "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


def t5_config(shapes: dict[str, Any], p: str) -> dict[str, Any]:
    """A T5 encoder's config (T5 v1.1 layout: gated-gelu) from its shapes."""
    vocab, d_model = (
        shapes[p + T5_SHARED_KEY]
        if (p + T5_SHARED_KEY) in shapes
        else (shapes[p + "encoder.embed_tokens.weight"])
    )
    rel = shapes[p + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = rel[1]
    inner = shapes[p + T5_BLOCK_KEY][0]
    gated = (p + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight") in shapes
    wi = "wi_0" if gated else "wi"
    return {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": inner // heads,
        "d_ff": shapes[p + f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight"][0],
        "num_layers": _count(shapes, p + "encoder.block."),
        "num_heads": heads,
        "relative_attention_num_buckets": rel[0],
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "is_encoder_decoder": False,
        "use_cache": False,
        "dense_act_fn": "gelu_new" if gated else "relu",
        "is_gated_act": gated,
        "layer_norm_epsilon": 1e-6,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def vae_config(shapes: dict[str, Any], p: str, family: str) -> dict[str, Any]:
    """A 16-channel AutoencoderKL's config from an LDM-layout VAE's shapes."""
    levels = _count(shapes, p + "encoder.down.")
    channels = [shapes[f"{p}encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)]
    latent = shapes[p + "decoder.conv_in.weight"][1]
    scale, shift = VAE_FACTORS.get(family, VAE_FACTORS["flux"])
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": _count(shapes, p + "encoder.down.0.block."),
        "act_fn": "silu",
        "latent_channels": latent,
        "norm_num_groups": min(32, min(channels)),
        "sample_size": 1024,
        "scaling_factor": scale,
        "shift_factor": shift,
        "use_quant_conv": (p + "quant_conv.weight") in shapes,
        "use_post_quant_conv": (p + "post_quant_conv.weight") in shapes,
    }


def scheduler_config(family: str) -> dict[str, Any]:
    """The family's own flow-match scheduler config (shipped in resources/configs)."""
    path = CONFIGS / family / "scheduler.json"
    return json.loads(path.read_text("utf-8"))


def family_scheduler_config(family: str, transformer: dict[str, Any]) -> dict[str, Any]:
    """The scheduler config of a single file's transformer: Flux.1 schnell (no guidance
    embedding) samples without a shift, as its own scheduler config says."""
    sched = scheduler_config(family)
    if family == "flux" and not transformer.get("guidance_embeds", True):
        sched.update(use_dynamic_shifting=False, shift=1.0)
    return sched


# -- sources: where each component's weights are ---------------------------------------------

#: Weight dtype choices of Load Diffusion Model.
WEIGHT_DTYPES = ("default", "fp8_e4m3fn")


def pipeline_family(index: dict[str, Any]) -> str | None:
    """``sd3`` / ``flux`` for a diffusers folder of those pipelines (FluxFillPipeline's too:
    FLUX.1 Fill is a Flux transformer with more input channels), else None."""
    name = str(index.get("_class_name", ""))
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("Flux"):  # Fill, Kontext, Control (Canny / Depth): Flux transformers too
        return "flux"
    return None


def inspect_folder(path: Path, name: str, identity: tuple[Any, ...], family: str) -> WeightsSource:
    """A diffusers folder of StableDiffusion3Pipeline / FluxPipeline (text_encoder_3, SD3's
    T5, may be left out: SD3 runs without it)."""
    label = f"checkpoint {name!r}"
    configs: dict[str, dict[str, Any]] = {}
    for comp in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        cfg = path / comp / "config.json"
        if cfg.is_file():
            configs[comp] = _read_json(cfg, label)
    sched = path / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        configs["scheduler"] = _read_json(sched, label)
    need = ["transformer", "vae", "text_encoder", "text_encoder_2", "scheduler"]
    missing = [c for c in need if c not in configs]
    if missing:
        raise NodeError(f"{label}: the {FAMILY_TITLES[family]} folder lacks {', '.join(missing)}")
    if family == "flux":
        check_flux_channels(configs["transformer"], label)
    from nodes.sdload import FOLDER_LATENT_RGB_KEY
    from nodes.values import LatentRgb

    index = _read_json(path / "model_index.json", label)
    return WeightsSource(
        path=str(path), identity=identity, layout=LAYOUT_DIFFUSERS, family=family,
        configs=configs, name=name,
        latent_rgb=LatentRgb.from_json(index.get(FOLDER_LATENT_RGB_KEY)),
    )  # fmt: skip


def _read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise NodeError(f"{label}: cannot read {path.name} ({exc})") from None
    if not isinstance(data, dict):
        raise NodeError(f"{label}: {path.name} is not a JSON object")
    return data


def _weights(path: Path, label: str) -> Any:
    from nodes.sdload import WeightsFile

    return WeightsFile(path, label)


def _gguf_reader(path: Path, label: str) -> Any:
    try:
        import gguf
    except ImportError:
        raise NodeError(f"{label}: GGUF files need the 'gguf' package (pip install gguf)") from None
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:
        raise NodeError(
            f"{label}: not a readable GGUF file ({type(exc).__name__}: {exc})"
        ) from None


def gguf_shapes(path: Path, label: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and (logical, torch-order) shapes of a GGUF file, without reading data."""
    reader = _gguf_reader(path, label)
    return {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}


#: llama.cpp's names of a T5 encoder's tensors (gguf-py's tensor_mapping, the names city96's
#: t5-v1_1-xxl-encoder GGUF files use) -> transformers' T5EncoderModel names. Per block:
GGUF_T5_BLOCK = {
    "attn_norm": "layer.0.layer_norm",
    "attn_q": "layer.0.SelfAttention.q",
    "attn_k": "layer.0.SelfAttention.k",
    "attn_v": "layer.0.SelfAttention.v",
    "attn_o": "layer.0.SelfAttention.o",
    "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
    "ffn_norm": "layer.1.layer_norm",
    "ffn_gate": "layer.1.DenseReluDense.wi_0",  # gated-gelu: the gelu'd half
    "ffn_up": "layer.1.DenseReluDense.wi_1",  # (plain T5's single "wi" if no gate: below)
    "ffn_down": "layer.1.DenseReluDense.wo",
}
GGUF_T5_TOP = {"token_embd": "shared", "enc.output_norm": "encoder.final_layer_norm"}
#: GGUF metadata (``{arch}.<key>``) -> T5Config (llama.cpp's T5 converter writes these).
GGUF_T5_CONFIG = {
    "block_count": "num_layers",
    "embedding_length": "d_model",
    "feed_forward_length": "d_ff",
    "attention.head_count": "num_heads",
    "attention.key_length": "d_kv",
    "attention.relative_buckets_count": "relative_attention_num_buckets",
    "attention.layer_norm_rms_epsilon": "layer_norm_epsilon",
    "attention.layer_norm_epsilon": "layer_norm_epsilon",
}


def gguf_t5_names(names: Any) -> dict[str, str]:
    """GGUF tensor name -> transformers T5 name for the llama.cpp-named tensors of a T5
    encoder (other names are kept: a GGUF may hold transformers' names already); decoder
    tensors (``dec.*``) are left out."""
    names = list(names)
    gated = any(".ffn_gate." in n for n in names)
    out: dict[str, str] = {}
    for n in names:
        stem, dot, kind = n.rpartition(".")
        if not dot:
            stem, kind = n, ""
        suffix = f".{kind}" if kind else ""
        if stem in GGUF_T5_TOP:
            out[n] = GGUF_T5_TOP[stem] + suffix
        elif stem.startswith("enc.blk."):
            _, _, rest = stem.partition("enc.blk.")
            block, _, part = rest.partition(".")
            hf = GGUF_T5_BLOCK.get(part)
            if hf is None:
                continue
            if part == "ffn_up" and not gated:
                hf = "layer.1.DenseReluDense.wi"
            out[n] = f"encoder.block.{block}.{hf}{suffix}"
        elif not stem.startswith(("dec.", "output")):
            out[n] = n
    return out


def _gguf_value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        value = field.contents()
    except Exception:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def _gguf_t5_config(reader: Any, shapes: dict[str, Any], label: str) -> dict[str, Any]:
    """T5's config from the tensors' shapes (as for a .safetensors T5), and from the GGUF's
    metadata what shapes cannot say (the norms' epsilon). Sizes the metadata states must
    agree with the tensors: a file saying 10^9 layers over 24 is an error, not a model
    built to its word."""
    try:
        cfg = t5_config(shapes, "")
    except KeyError as exc:
        raise NodeError(f"{label}: a T5 GGUF without the tensor {exc.args[0]!r}") from None
    arch = _gguf_value(reader, "general.architecture") or "t5"
    for key, name in GGUF_T5_CONFIG.items():
        value = _gguf_value(reader, f"{arch}.{key}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            continue
        if name == "layer_norm_epsilon":
            if value < 1:  # (GGUF stores it as float32: 1e-6 reads 9.99999997e-07)
                cfg[name] = float(f"{value:.6g}")
        elif int(value) != cfg[name]:
            raise NodeError(
                f"{label}: its metadata says {arch}.{key} = {value}, but its tensors have "
                f"{cfg[name]}: the file is damaged or not a T5 encoder"
            )
    return cfg


def inspect_diffusion_model(
    path: Path, name: str, identity: tuple[Any, ...], weight_dtype: str
) -> WeightsSource:
    """A transformer-only file (safetensors, original or ComfyUI key layout, or GGUF)."""
    label = f"diffusion model {name!r}"
    if weight_dtype not in WEIGHT_DTYPES:
        raise NodeError(f"{label}: unknown weight_dtype {weight_dtype!r}")
    gguf = path.suffix.lower() == ".gguf"
    weights = None if gguf else _weights(path, label)
    shapes = gguf_shapes(path, label) if weights is None else weights.shapes
    found = sniff(shapes)
    if found.kind.endswith("_all_in_one"):  # its transformer alone
        found = Sniffed(found.kind.removesuffix("_all_in_one"), found.prefix, found.what)
    if found.kind not in DIT_FAMILIES:
        raise NodeError(
            f"{label}: not a Flux.1 or Stable Diffusion 3.x transformer - it looks like "
            f"{found.what}"
        )
    if (
        not found.prefix
        and "double_blocks.0.img_attn.qkv.weight" not in shapes
        and ("joint_blocks.0.x_block.attn.qkv.weight" not in shapes)
    ):
        raise NodeError(f"{label}: diffusers-layout transformer files: use the diffusers folder")
    family = found.kind
    cfg = (flux_config if family == "flux" else sd3_config)(shapes, found.prefix, label)
    if family == "flux":
        check_flux_channels(cfg, label)
    sched = family_scheduler_config(family, cfg)
    # A file may say how it samples and which VAE it was trained with (studio-tiny-flux's
    # export: its shift, and a VAE of another scale than Flux's); the VAE's config only sets
    # the latent size (ModelHandle.vae_downscale): the VAE itself comes from Load VAE.
    own = _own_configs(weights, label)
    if isinstance(own.get("scheduler"), dict):
        sched.update(own["scheduler"])
    extra = {"vae": dict(own["vae"])} if isinstance(own.get("vae"), dict) else {}
    quant = "gguf" if gguf else weight_dtype
    if quant == "default" and _stored_in_fp8(path, shapes, found.prefix, label):
        # As ComfyUI's "default": a file stored in fp8 (flux1-dev-fp8) stays in 8 bits,
        # each layer computed in the device's type (the same numbers as widening it).
        quant = "fp8_e4m3fn"
    return WeightsSource(
        path=str(path), identity=(*identity, quant), layout=LAYOUT_SINGLE_FILE, family=family,
        configs={"transformer": cfg, "scheduler": sched, "load": {"quant": quant}, **extra},
        prefixes={"transformer": found.prefix}, name=name,
    )  # fmt: skip


def _own_configs(weights: Any, label: str) -> dict[str, Any]:
    """The configs a transformer file carries in its ``studio`` metadata ({} if none)."""
    from nodes.sdload import SIDECAR_METADATA_KEY

    raw = weights.metadata.get(SIDECAR_METADATA_KEY) if weights is not None else None
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        data = None
    if not isinstance(data, dict):
        raise NodeError(f"{label}: its '{SIDECAR_METADATA_KEY}' metadata is not a JSON object")
    return data


def inspect_all_in_one(
    path: Path,
    name: str,
    identity: tuple[Any, ...],
    shapes: dict[str, Any],
    prefix: str,
    family: str = "sd3",
) -> WeightsSource:
    """An all-in-one checkpoint: an SD3.5 file (transformer, CLIP-L, CLIP-G, maybe T5,
    VAE) or a Flux.1 file (transformer, CLIP-L, T5-XXL, VAE)."""
    label = f"checkpoint {name!r}"
    transformer = (flux_config if family == "flux" else sd3_config)(shapes, prefix, label)
    if family == "flux":
        check_flux_channels(transformer, label)
    configs: dict[str, dict[str, Any]] = {
        "transformer": transformer,
        "scheduler": family_scheduler_config(family, transformer),
    }
    prefixes = {"transformer": prefix}
    for comp, p in AIO_PREFIXES[family].items():
        if comp == "vae":
            if (p + "decoder.conv_in.weight") in shapes:
                configs["vae"], prefixes["vae"] = vae_config(shapes, p, family), p
        elif (p + T5_BLOCK_KEY) in shapes:
            configs[comp], prefixes[comp] = t5_config(shapes, p), p
        elif (p + CLIP_TOKEN_KEY) in shapes:
            configs[comp], prefixes[comp] = clip_config(shapes, p), p
            if (p + "text_projection.weight") not in shapes:
                configs[comp]["architectures"] = ["CLIPTextModel"]
    names = AIO_PART_NAMES[family]
    missing = [names[c] for c in names if c not in configs]
    if missing:
        raise NodeError(
            f"{label}: a {FAMILY_TITLES[family]} checkpoint without its {', '.join(missing)}: "
            "load its transformer with Load Diffusion Model, beside Load Text Encoders and "
            "Load VAE"
        )
    if _stored_in_fp8(path, shapes, prefix, label):
        # As ComfyUI keeps an fp8 checkpoint's transformer: 8-bit weights, each layer
        # computed in the device's type (the same numbers as widening them all at once).
        configs["load"] = {"quant": "fp8_e4m3fn"}
    return WeightsSource(
        path=str(path), identity=identity, layout=LAYOUT_SINGLE_FILE, family=family,
        configs=configs, prefixes=prefixes, name=name,
    )  # fmt: skip


def _stored_in_fp8(path: Path, shapes: dict[str, Any], prefix: str, label: str) -> bool:
    """Whether the weight matrices of the transformer under ``prefix`` are stored as fp8
    (e4m3fn), most of them (a file may keep a few layers wide), read from its header."""
    from safetensors import safe_open

    from nodes.sdload import SAFE_SUFFIXES

    if _scaled_fp8(shapes, prefix):
        return False  # widened at load, each weight times its scale (_dequantise_scaled_fp8)
    keys = [k for k, v in shapes.items() if k.startswith(prefix) and len(v) == 2]
    if not keys or path.suffix.lower() not in SAFE_SUFFIXES:
        return False
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            fp8 = sum(f.get_slice(k).get_dtype() == "F8_E4M3" for k in keys)
    except Exception as exc:
        raise NodeError(f"{label}: could not read its tensors ({exc})") from None
    return 2 * fp8 > len(keys)


def inspect_text_encoder(path: Path, name: str, identity: tuple[Any, ...]) -> WeightsSource:
    """A separate CLIP or T5 file (also inside an all-in-one checkpoint: its tensors are
    found by their prefix)."""
    label = f"text encoder {name!r}"
    if path.suffix.lower() == ".gguf":
        return _inspect_gguf_text_encoder(path, name, identity, label)
    shapes = _weights(path, label).shapes
    found = sniff(shapes)
    if found.kind == "clip":
        cfg = clip_config(shapes, found.prefix)
        if (found.prefix + "text_projection.weight") not in shapes:
            cfg["architectures"] = ["CLIPTextModel"]
    elif found.kind == "t5":
        cfg = t5_config(shapes, found.prefix)
    else:
        raise NodeError(f"{label}: not a CLIP or T5 text encoder - it looks like {found.what}")
    return WeightsSource(
        path=str(path), identity=identity, layout=LAYOUT_SINGLE_FILE, family=found.kind,
        configs={"text_encoder": cfg}, prefixes={"text_encoder": found.prefix}, name=name,
    )  # fmt: skip


def _inspect_gguf_text_encoder(
    path: Path, name: str, identity: tuple[Any, ...], label: str
) -> WeightsSource:
    """A T5 encoder as a GGUF file (city96's t5-v1_1-xxl-encoder-Q8_0.gguf and the like):
    its config from the metadata (or the shapes); loaded with its quantised Linear layers
    kept quantised (:func:`_load_gguf_t5`)."""
    reader = _gguf_reader(path, label)
    raw = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    names = gguf_t5_names(raw)
    shapes = {hf: raw[n] for n, hf in names.items()}
    found = sniff(shapes)
    if found.kind != "t5" or found.prefix:
        what = found.what if found.kind != "other" else "no T5 encoder"
        raise NodeError(
            f"{label}: Studio reads T5 text encoders from GGUF files (llama.cpp's tensor "
            f"names); this one holds {what}. Use the .safetensors file for CLIP "
            "(e.g. clip_l.safetensors) in the text_encoders folder"
        )
    cfg = _gguf_t5_config(reader, shapes, label)
    return WeightsSource(
        path=str(path), identity=(*identity, "gguf"), layout=LAYOUT_SINGLE_FILE, family="t5",
        configs={"text_encoder": cfg, "load": {"quant": "gguf"}}, prefixes={}, name=name,
    )  # fmt: skip


def vae16_source(
    path: Path, name: str, identity: tuple[Any, ...], shapes: dict[str, Any], prefix: str
) -> WeightsSource:
    return WeightsSource(
        path=str(path), identity=identity, layout=LAYOUT_SINGLE_FILE, family="vae",
        configs={"vae": vae_config(shapes, prefix, "flux")}, prefixes={"vae": prefix}, name=name,
    )  # fmt: skip


# -- handles ------------------------------------------------------------------------------------


def model_handle(source: WeightsSource) -> ModelHandle:
    return ModelHandle(
        source=source,
        family=source.family,
        scheduler_config=dict(source.configs["scheduler"]),
        prediction_type="flow",
        latent_rgb=source.latent_rgb,
    )


def _t5_tokenizer_folder(folder: Path | None) -> str:
    if folder is not None and folder.is_dir():
        return str(folder)
    return str(T5_TOKENIZER)


def checkpoint_handles(source: WeightsSource) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
    """MODEL, CLIP and VAE of a whole SD3 / Flux checkpoint (folder or all-in-one file)."""
    folder = Path(source.path) if source.layout == LAYOUT_DIFFUSERS else None
    configs = source.configs

    def tok(sub: str, pad: str | None) -> tuple[str, str | None]:
        if folder is not None and (folder / sub).is_dir():
            return str(folder / sub), None
        return str(CLIP_TOKENIZER), pad

    if source.family == "flux":
        parts = (("clip_l", source, "text_encoder"), ("t5", source, "text_encoder_2"))
        toks = (
            tok("tokenizer", None),
            (_t5_tokenizer_folder(folder and folder / "tokenizer_2"), None),
        )
    else:
        parts_l = [("clip_l", source, "text_encoder"), ("clip_g", source, "text_encoder_2")]
        toks_l = [tok("tokenizer", None), tok("tokenizer_2", "!")]
        if "text_encoder_3" in configs:
            parts_l.append(("t5", source, "text_encoder_3"))
            toks_l.append((_t5_tokenizer_folder(folder and folder / "tokenizer_3"), None))
        parts, toks = tuple(parts_l), tuple(toks_l)
    clip = ClipHandle(
        source=source,
        family=source.family,
        encoders=tuple(p[0] for p in parts),
        tokenizers=toks,
        parts=parts,
    )
    vae_cfg = configs["vae"]
    vae = VaeHandle(
        source=source,
        scaling_factor=float(vae_cfg.get("scaling_factor") or 1.0),
        shift_factor=float(vae_cfg.get("shift_factor") or 0.0),
    )
    return model_handle(source), clip, vae


def text_encoders_handle(sources: list[WeightsSource], family: str, label: str) -> ClipHandle:
    """Load Text Encoders: two or three separate files as the CLIP of ``family``."""
    clips = [s for s in sources if s.family == "clip"]
    t5s = [s for s in sources if s.family == "t5"]
    if len(t5s) > 1:
        raise NodeError(f"{label}: two T5 files; give one T5 and the CLIP files")
    if family == "flux":
        if len(clips) != 1 or len(t5s) != 1:
            raise NodeError(
                f"{label}: Flux needs one CLIP-L file and one T5-XXL file "
                f"(got {len(clips)} CLIP, {len(t5s)} T5)"
            )
        parts = (("clip_l", clips[0], "text_encoder"), ("t5", t5s[0], "text_encoder"))
        toks = ((str(CLIP_TOKENIZER), None), (str(T5_TOKENIZER), None))
    else:
        if len(clips) != 2:
            raise NodeError(
                f"{label}: SD3 needs a CLIP-L and a CLIP-G file (and optionally T5-XXL); "
                f"got {len(clips)} CLIP file(s)"
            )
        # CLIP-L is the narrower tower (768 wide, CLIP-G 1280); equal widths keep the order.
        ordered = sorted(clips, key=lambda s: s.configs["text_encoder"]["hidden_size"])
        parts_l = [("clip_l", ordered[0], "text_encoder"), ("clip_g", ordered[1], "text_encoder")]
        toks_l = [(str(CLIP_TOKENIZER), None), (str(CLIP_TOKENIZER), "!")]
        if t5s:
            parts_l.append(("t5", t5s[0], "text_encoder"))
            toks_l.append((str(T5_TOKENIZER), None))
        parts, toks = tuple(parts_l), tuple(toks_l)
    return ClipHandle(
        source=parts[0][1],
        family=family,
        encoders=tuple(p[0] for p in parts),
        tokenizers=toks,
        parts=parts,
    )


# -- loading ----------------------------------------------------------------------------------


def _component_class(component: str, config: dict[str, Any]) -> Any:
    from nodes.fastimport import diffusers_class, install

    install()  # the classes' own modules, not their families'
    if component == "transformer":
        return diffusers_class(config.get("_class_name") or "SD3Transformer2DModel")
    if component == "vae":
        return diffusers_class("AutoencoderKL")
    import transformers

    arch = (config.get("architectures") or ["CLIPTextModel"])[0]
    if arch not in ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel"):
        raise NodeError(f"unsupported text encoder architecture {arch!r}")
    return getattr(transformers, arch)


def load_component(source: WeightsSource, component: str, dtype: Any, label: str) -> Any:
    """One component of an SD3 / Flux source, on CPU, in ``dtype`` (fp8 storage with
    layer-by-layer casting when the source asks for it)."""
    config = source.configs.get(component)
    if config is None:
        raise NodeError(f"the {label} is not in this model")
    cls = _component_class(component, config)
    quant = source.configs.get("load", {}).get("quant", "default")
    if source.layout == LAYOUT_DIFFUSERS:
        if component in ("transformer", "vae"):
            module = cls.from_pretrained(
                source.path, subfolder=component, torch_dtype=dtype, local_files_only=True
            )
        else:
            from nodes.sdload import text_encoder_from_pretrained

            module = text_encoder_from_pretrained(cls, str(Path(source.path) / component), dtype)
        return module
    if quant == "gguf":
        if component == "transformer":
            return _load_gguf_transformer(source, dtype, label)
        return _load_gguf_t5(source, component, dtype, label)
    state = _single_file_state(source, component, label, dtype)
    module = _build(cls, component, config)
    if cls.__name__.startswith("CLIP"):
        from nodes.sdload import _fit_clip_keys

        state = _fit_clip_keys(module, state)
    fp8 = _keep_fp8(module, component, quant, state, dtype)
    # Weights kept in fp8 go there straight from the file: no copy of them all in the wide
    # type first (flux1-dev-fp8's transformer: 12 GB instead of 24 GB more in bf16).
    state = {
        k: (v.to(torch.float8_e4m3fn if k in fp8 else dtype) if v.is_floating_point() else v)
        for k, v in state.items()
    }
    _assign_state(module, state, label)
    return module


def _keep_fp8(module: Any, component: str, quant: str, state: dict[str, Any], dtype: Any) -> set:
    """Sets layer-wise casting on the (empty) module where its weights are to stay in fp8,
    each layer cast to ``dtype`` while it computes (diffusers' layer-wise casting; norms
    and embeddings stay in ``dtype``); the names of the weights kept in fp8."""
    from diffusers.hooks import apply_layerwise_casting

    fp8 = torch.float8_e4m3fn
    if quant == "fp8_e4m3fn" and component == "transformer":
        wide = _wide_matrices(state)
        if _mostly_fp8(len(wide), state):
            # Stored in fp8 already (flux1-dev-fp8): the layers stored so stay so, the
            # modulations too (diffusers keeps them wide when it narrows them itself), and
            # those stored wide stay wide: no rounding added.
            skip = ("pos_embed", *(f"^{re.escape(m)}$" for m in wide))
            apply_layerwise_casting(
                module, storage_dtype=fp8, compute_dtype=dtype, skip_modules_pattern=skip
            )
        else:
            module.enable_layerwise_casting(storage_dtype=fp8, compute_dtype=dtype)
    elif type(module).__name__ == "T5EncoderModel" and _matrices_in_fp8(state):
        # A T5 stored in fp8 (t5xxl_fp8_e4m3fn, the one in flux1-dev-fp8) stays so: the same
        # numbers as widening it, in 60% of the memory. Its feed-forward out projections
        # and its embedding stay wide: T5 casts the out projections' input to their dtype,
        # and takes its own dtype from its first weight, the embedding.
        apply_layerwise_casting(
            module, storage_dtype=fp8, compute_dtype=dtype,
            skip_modules_pattern=("norm", r"\.wo$", "shared", "embed_tokens"),
        )  # fmt: skip
    else:
        return set()
    return {n for n, p in module.named_parameters() if p.dtype == fp8}


def _wide_matrices(state: dict[str, Any]) -> set[str]:
    """The layers (module names) whose weight matrix is stored wider than fp8."""
    return {
        k.removesuffix(".weight")
        for k, v in state.items()
        if v.ndim == 2 and v.is_floating_point() and v.dtype != torch.float8_e4m3fn
    }


def _mostly_fp8(wide: int, state: dict[str, Any]) -> bool:
    """Whether most of a model's weight matrices are stored in fp8 (``wide`` are not)."""
    matrices = sum(1 for v in state.values() if v.ndim == 2 and v.is_floating_point())
    return 2 * wide < matrices


def _matrices_in_fp8(state: dict[str, Any]) -> bool:
    """Whether a model's layer matrices (2-D weights) are all stored as fp8 e4m3fn."""
    mats = [v for v in state.values() if v.ndim == 2 and v.is_floating_point()]
    return bool(mats) and all(v.dtype == torch.float8_e4m3fn for v in mats)


def _build(cls: Any, component: str, config: dict[str, Any]) -> Any:
    from accelerate import init_empty_weights

    with init_empty_weights():
        if component in ("transformer", "vae"):
            return cls.from_config(config)
        if cls.__name__ == "T5EncoderModel":
            from transformers import T5Config

            return cls(T5Config(**config))
        from transformers import CLIPTextConfig

        return cls(CLIPTextConfig(**config))


def _scaled_fp8(shapes: dict[str, Any], prefix: str) -> bool:
    """Whether the component under ``prefix`` is stored as ComfyUI's "scaled fp8"."""
    return (prefix + SCALED_FP8_MARKER) in shapes or any(
        k.startswith(prefix) and k.endswith(SCALE_WEIGHT) for k in shapes
    )


def _dequantise_scaled_fp8(raw: dict[str, Any], dtype: Any, label: str) -> dict[str, Any]:
    """A component's tensors with each scaled fp8 weight ``X.weight`` widened to ``dtype``
    times its ``X.scale_weight`` (computed in float32), the scale, ``X.scale_input`` and
    the ``scaled_fp8`` marker dropped; a state without them is returned as it is.

    This is what ComfyUI computes for these files unless it multiplies in fp8 on a GPU that
    can (``scaled_fp8_ops``: the weight cast to the compute type, times the scale); the
    input scale is only used by that fp8 matrix multiply (``torch._scaled_mm``), so it is
    not used here. The weights take the memory of ``dtype`` (fp16 / bf16), not of fp8."""
    scales = {k.removesuffix(SCALE_WEIGHT): v for k, v in raw.items() if k.endswith(SCALE_WEIGHT)}
    marker = [k for k in raw if k == SCALED_FP8_MARKER or k.endswith("." + SCALED_FP8_MARKER)]
    if not scales and not marker:
        return raw
    out = {}
    for k, v in raw.items():
        if k in marker or k.endswith((SCALE_WEIGHT, SCALE_INPUT)):
            continue
        scale = scales.get(k.removesuffix(".weight")) if k.endswith(".weight") else None
        if scale is not None:
            try:
                wide = v.to(torch.float32) * scale.to(torch.float32)
            except RuntimeError:
                wide = None
            if wide is None or wide.shape != v.shape:
                raise NodeError(
                    f"the {label}: the scale of {k!r} (shape {tuple(scale.shape)}) does not "
                    f"fit its weight {tuple(v.shape)}"
                )
            v = wide.to(dtype)
        out[k] = v
    return out


def _single_file_state(
    source: WeightsSource, component: str, label: str, dtype: Any = None
) -> dict[str, Any]:
    from diffusers.loaders import single_file_utils as sfu

    weights = _weights(Path(source.path), label)
    prefix = source.prefixes.get(component, "")
    raw = weights.with_prefix(prefix) if prefix else weights.get(list(weights.shapes))
    if not raw:
        raise NodeError(f"the file holds no weights for the {label} (keys {prefix}*)")
    raw = _dequantise_scaled_fp8(raw, dtype or torch.float32, label)
    if component == "transformer":
        # The converters strip "model.diffusion_model." themselves; other prefixes go here.
        raw = {k[len(prefix) :]: v for k, v in raw.items()}
        convert = (
            _flux_converter(source.configs["transformer"])
            if source.family == "flux"
            else sfu.convert_sd3_transformer_checkpoint_to_diffusers
        )
        try:
            return convert(raw)
        except KeyError as exc:
            raise NodeError(f"the {label} lacks the weight {exc.args[0]!r}") from None
    if component == "vae":
        if any("down_blocks." in k for k in raw):
            return {k[len(prefix) :]: v for k, v in raw.items()}
        raw = {k[len(prefix) :]: v for k, v in raw.items()}
        return sfu.convert_ldm_vae_checkpoint(raw, source.configs["vae"])
    state = {k[len(prefix) :]: v for k, v in raw.items()}
    config = source.configs[component]
    if (config.get("architectures") or [""])[0] == "T5EncoderModel":
        state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
        # T5 ties its input embedding to "shared": files hold one or both names.
        if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
            state["shared.weight"] = state["encoder.embed_tokens.weight"]
        state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))
        return state
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


def _flux_converter(config: dict[str, Any]) -> Any:
    """diffusers' Flux converter. It assumes Flux.1's width (3072, which every released
    Flux.1 file has); for another width (small test models) the same function is compiled
    with that width put in its place."""
    import inspect
    import textwrap

    from diffusers.loaders import single_file_utils as sfu

    width = config["num_attention_heads"] * config["attention_head_dim"]
    if width == 3072:
        return sfu.convert_flux_transformer_checkpoint_to_diffusers
    src = textwrap.dedent(inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers))
    if "inner_dim = 3072" not in src:
        raise NodeError(f"this diffusers cannot convert a Flux transformer {width} wide")
    namespace = dict(vars(sfu))
    exec(
        compile(src.replace("inner_dim = 3072", f"inner_dim = {int(width)}"), "<flux>", "exec"),
        namespace,
    )
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]


def _assign_state(module: Any, state: dict[str, Any], label: str) -> None:
    from nodes.sdload import _assign

    _assign(module, state, label)


def _load_gguf_transformer(source: WeightsSource, dtype: Any, label: str) -> Any:
    """A GGUF transformer through diffusers' own GGUF support (dequantised layer by layer)."""
    import tempfile

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise NodeError(f"the {label} is a GGUF file, which needs the 'gguf' package") from None
    from diffusers import GGUFQuantizationConfig
    from diffusers.loaders import single_file_model

    config = source.configs["transformer"]
    cls = _component_class("transformer", config)
    entry = single_file_model.SINGLE_FILE_LOADABLE_CLASSES[cls.__name__]
    saved = entry["checkpoint_mapping_fn"]
    with _GGUF_LOCK, tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        if source.family == "flux":  # the width-aware converter (see _flux_converter)
            entry["checkpoint_mapping_fn"] = _flux_converter(config)
        try:
            return cls.from_single_file(
                source.path,
                config=tmp,
                quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                torch_dtype=dtype,
                local_files_only=True,
            )
        finally:
            entry["checkpoint_mapping_fn"] = saved


#: from_single_file reads its converter from a module-level table: one GGUF load at a time.
_GGUF_LOCK = threading.Lock()


def _load_gguf_t5(source: WeightsSource, component: str, dtype: Any, label: str) -> Any:
    """A GGUF T5 encoder: its quantised Linear layers (attention q/k/v/o, the feed-forward)
    stay quantised, each dequantised to ``dtype`` while it computes (diffusers' GGUFLinear,
    as GGUF transformers run); the token embedding, relative attention bias and norms are
    dequantised to ``dtype`` at load (a small part: 32128 x 4096 embedding in T5-XXL)."""
    try:
        from diffusers.models.model_loading_utils import load_gguf_checkpoint
        from diffusers.quantizers.gguf.utils import (
            GGUFParameter,
            _replace_with_gguf_linear,
            dequantize_gguf_tensor,
        )
    except ImportError:
        raise NodeError(f"the {label} is a GGUF file, which needs the 'gguf' package") from None
    config = source.configs[component]
    try:
        raw = load_gguf_checkpoint(source.path)
    except ValueError as exc:  # a quantisation diffusers does not dequantise
        raise NodeError(f"the {label}: {exc}".split("\n\n")[0]) from None
    names = gguf_t5_names(raw)
    state = {hf: raw[n] for n, hf in names.items() if not hf.startswith("decoder.")}
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    state.pop("encoder.embed_tokens.weight", None)
    module = _build(_component_class(component, config), component, config)
    # Linear layers whose weight the file holds quantised become GGUFLinear (the rest keep
    # nn.Linear and get float weights).
    _replace_with_gguf_linear(module, dtype, state)
    expected = dict(module.state_dict())
    expected.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
    missing = [k for k in expected if k not in state]
    if missing:
        shown = ", ".join(missing[:3])
        raise NodeError(f"the file lacks {len(missing)} weights of the {label} (e.g. {shown})")
    linear = {n + ".weight" for n, m in module.named_modules() if type(m).__name__ == "GGUFLinear"}
    for k, want in expected.items():
        v = state[k]
        quantised = isinstance(v, GGUFParameter)
        shape = tuple(v.quant_shape) if quantised else tuple(v.shape)
        if shape != tuple(want.shape):
            raise NodeError(
                f"the {label} does not match its config: {k} has shape {shape}, "
                f"expected {tuple(want.shape)}"
            )
        if quantised and k in linear:
            param = v
        else:
            plain = dequantize_gguf_tensor(v) if quantised else v
            if isinstance(plain, GGUFParameter):
                plain = plain.as_tensor()
            param = torch.nn.Parameter(plain.to(dtype).reshape(want.shape), requires_grad=False)
        owner, _, leaf = k.rpartition(".")
        module.get_submodule(owner)._parameters[leaf] = param
    module.encoder.embed_tokens.weight = module.shared.weight
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            raise NodeError(f"the {label} has an uninitialised buffer {name}")
    ff_classes = _gguf_t5_ff_classes()
    for sub in module.modules():
        if type(sub) in ff_classes and type(getattr(sub, "wo", None)).__name__ == "GGUFLinear":
            sub.__class__ = ff_classes[type(sub)]
    return module


@functools.cache
def _gguf_t5_ff_classes() -> dict[type, type]:
    """T5's feed-forward blocks cast their input to ``wo``'s dtype before ``wo`` (to keep it
    in fp32 for 8-bit T5s): a quantised ``wo`` holds bytes, so these subclasses leave the
    input in the compute dtype, which GGUFLinear computes in."""
    from transformers.models.t5 import modeling_t5 as m

    class GgufGatedFF(m.T5DenseGatedActDense):
        def forward(self, hidden_states: Any) -> Any:
            h = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
            return self.wo(self.dropout(h))

    class GgufFF(m.T5DenseActDense):
        def forward(self, hidden_states: Any) -> Any:
            return self.wo(self.dropout(self.act(self.wi(hidden_states))))

    return {m.T5DenseGatedActDense: GgufGatedFF, m.T5DenseActDense: GgufFF}


def open_checkpoint(path: Path, name: str, identity: tuple[Any, ...]) -> tuple | None:
    """Load Checkpoint's MODEL, CLIP, VAE when ``path`` is an SD3 / Flux checkpoint (a
    diffusers folder of their pipelines, or an SD3.5 / Flux.1 all-in-one file); None
    otherwise."""
    label = f"checkpoint {name!r}"
    if path.is_dir():
        index_path = path / "model_index.json"
        if not index_path.is_file():
            return None
        family = pipeline_family(_read_json(index_path, label))
        if family is None:
            return None
        return checkpoint_handles(inspect_folder(path, name, identity, family))
    if path.suffix.lower() == ".gguf":
        raise NodeError(
            f"{label}: a GGUF file holds a transformer only: put it in the diffusion_models "
            "folder and use Load Diffusion Model"
        )
    shapes = _weights(path, label).shapes
    found = sniff(shapes)
    if found.kind.endswith("_all_in_one"):
        family = found.kind.removesuffix("_all_in_one")
        return checkpoint_handles(
            inspect_all_in_one(path, name, identity, shapes, found.prefix, family)
        )
    if found.kind in DIT_FAMILIES:
        raise NodeError(
            f"{label}: {found.what} without its text encoders and VAE: put it in the "
            "diffusion_models folder and use Load Diffusion Model, Load Text Encoders and "
            "Load VAE"
        )
    if found.kind in ("clip", "t5") and all(k.startswith(found.prefix) for k in shapes):
        raise NodeError(
            f"{label}: {found.what} alone: put it in the text_encoders folder and use "
            "Load Text Encoders"
        )
    return None


def get_part(ctx: Any, clip: ClipHandle, role: str) -> Any:
    from nodes.sdload import get_module

    for r, source, component in clip.parts:
        if r == role:
            return get_module(ctx, source, component)
    return None


# -- prompts ------------------------------------------------------------------------------------


def get_t5_tokenizer(ctx: Any, folder: str) -> Any:
    """T5's SentencePiece tokenizer from ``folder`` (a diffusers tokenizer folder, or the one
    shipped in resources/tokenizers/t5)."""
    from nodes.sdload import _Box

    def load() -> _Box:
        from transformers import AutoTokenizer

        path = Path(folder)
        if not path.is_dir() or not any(
            (path / f).is_file() for f in ("tokenizer.json", "spiece.model")
        ):
            raise NodeError(
                f"no T5 tokenizer in {folder}: put T5's tokenizer.json (or spiece.model) "
                "there, or use a diffusers folder that has tokenizer_2 / tokenizer_3"
            )
        try:
            return _Box(AutoTokenizer.from_pretrained(folder, local_files_only=True))
        except Exception as exc:
            raise NodeError(f"cannot read the T5 tokenizer in {folder}: {exc}") from None

    return ctx.models.get(("t5_tokenizer", folder), load, nbytes=lambda t: 8 * 1024**2).value


def _clip_ids(tok: Any, text: str) -> torch.Tensor:
    return tok(
        text, padding="max_length", max_length=tok.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip


def t5_length(tok: Any, family: str) -> int:
    """The T5 length prompts are padded to: the pipeline's ``max_sequence_length`` default
    (:data:`T5_LENGTH`), or the model's own when shorter: a folder's T5 tokenizer
    (``tokenizer_2`` / ``tokenizer_3``) whose ``model_max_length`` is below it says the model
    was trained on that many tokens (studio-tiny-flux: 32; real Flux / SD3 folders say 512)."""
    own = getattr(tok, "model_max_length", None)
    if isinstance(own, int) and 0 < own < T5_LENGTH[family]:
        return own
    return T5_LENGTH[family]


def _t5_ids(tok: Any, text: str, family: str) -> torch.Tensor:
    """T5 token ids padded to the model's length (:func:`t5_length`); a longer prompt gets
    up to :data:`T5_MAX_TOKENS` (the pipelines' limit), beyond that a clear error."""
    n = len(tok(text, add_special_tokens=True).input_ids)
    if n > T5_MAX_TOKENS:
        raise NodeError(
            f"the prompt is {n} T5 tokens long; {FAMILY_TITLES[family]} reads at most "
            f"{T5_MAX_TOKENS}: shorten it"
        )
    length = max(t5_length(tok, family), n)
    return tok(
        text, padding="max_length", max_length=length, truncation=True,
        add_special_tokens=True, return_tensors="pt",
    ).input_ids  # fmt: skip


def encode(ctx: Any, clip: ClipHandle, text: str) -> list[Cond]:
    """Text Encode for SD3 / Flux, as StableDiffusion3Pipeline / FluxPipeline encode."""
    from nodes import lora
    from nodes.sdload import get_tokenizer, with_oom_advice

    family = clip.family
    mods: dict[str, Any] = {}
    toks: dict[str, Any] = {}
    for (role, _, _), (folder, pad) in zip(clip.parts, clip.tokenizers, strict=True):
        mods[role] = get_part(ctx, clip, role)
        if role in LORA_PREFIXES:  # LoRAs train the CLIP towers, not T5
            lora.activate(ctx, mods[role], LORA_PREFIXES[role], clip.patches, family)
        toks[role] = (
            get_t5_tokenizer(ctx, folder) if role == "t5" else get_tokenizer(ctx, folder, pad)
        )

    def run() -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        with torch.no_grad():
            return _encode(mods, toks, text, family, ctx.check_interrupt)

    embeds, pooled, extra = with_oom_advice(run, "encoding the prompt")
    return [
        Cond(
            embeds=embeds.float().cpu(),
            pooled=pooled.float().cpu(),
            family=family,
            text=text,
            extra=extra,
        )
    ]


def _device(module: Any) -> torch.device:
    return next(module.parameters()).device


def _encode(
    mods: dict[str, Any], toks: dict[str, Any], text: str, family: str, check: Any
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    def clip_run(role: str) -> tuple[torch.Tensor, torch.Tensor]:
        check()
        enc = mods[role]
        ids = _clip_ids(toks[role], text).to(_device(enc))
        # The tower without its projection (CLIPTextModel is that tower itself).
        out = getattr(enc, "text_model", enc)(ids, output_hidden_states=True)
        pooled = out.pooler_output
        if family == "sd3" and hasattr(enc, "text_projection"):
            pooled = enc.text_projection(pooled)
        return out.hidden_states[-2], pooled

    t5 = None
    if "t5" in mods:
        check()
        enc = mods["t5"]
        t5 = enc(_t5_ids(toks["t5"], text, family).to(_device(enc)))[0]
    if family == "flux":
        _, pooled = clip_run("clip_l")
        return t5, pooled, {}
    (l_h, l_p), (g_h, g_p) = clip_run("clip_l"), clip_run("clip_g")
    clip_embeds = torch.cat([l_h, g_h], dim=-1)
    pooled = torch.cat([l_p, g_p], dim=-1)
    if t5 is None:
        # SD3 without T5: the pipeline's zeros, once the transformer's width is known.
        return clip_embeds, pooled, {"t5_missing": T5_LENGTH["sd3"]}
    clip_embeds = torch.nn.functional.pad(clip_embeds, (0, t5.shape[-1] - clip_embeds.shape[-1]))
    return torch.cat([clip_embeds.to(t5.dtype), t5], dim=-2), pooled, {}


def sd3_context(c: Cond, width: int) -> torch.Tensor:
    """An SD3 prompt's joint context for a transformer of ``width`` (T5 missing: zeros)."""
    e = c.embeds
    missing = c.extra.get("t5_missing")
    if missing:
        e = torch.nn.functional.pad(e, (0, width - e.shape[-1]))
        e = torch.cat([e, torch.zeros(e.shape[0], int(missing), width, dtype=e.dtype)], dim=1)
    return e


# -- sampling -------------------------------------------------------------------------------------


def calculate_shift(seq_len: int, cfg: dict[str, Any]) -> float:
    """Flux's resolution-dependent shift ``mu`` (the pipeline's calculate_shift)."""
    base_len = cfg.get("base_image_seq_len", 256)
    max_len = cfg.get("max_image_seq_len", 4096)
    base, top = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (top - base) / (max_len - base_len)
    return seq_len * m + (base - m * base_len)


#: ComfyUI's schedules (``comfy_*``, what an imported KSampler or SamplerCustomAdvanced
#: carries) on SD3 / Flux: the flow schedule nearest each. ``simple`` is ComfyUI's (evenly
#: spaced in time, then shifted), and ``sgm_uniform`` on a flow model spaces the same times.
#: The ``comfy_*`` sampling code itself is for UNet models (nodes/ksampling.py).
FLOW_COMFY_SCHEDULES = {
    "comfy_normal": "normal",
    "comfy_simple": "simple",
    "comfy_sgm_uniform": "simple",
    "comfy_karras": "karras",
    "comfy_exponential": "exponential",
    "comfy_beta": "beta",
}


def flow_schedule(schedule: str) -> str:
    """The flow schedule a Sampler's schedule runs as on SD3 / Flux."""
    return FLOW_COMFY_SCHEDULES.get(schedule, schedule)


def make_flow_scheduler(config: dict[str, Any], sampler: str, schedule: str) -> Any:
    import diffusers

    if sampler not in FLOW_SAMPLERS:
        raise NodeError(
            f"sampler {sampler!r} does not apply to flow-matching models (SD3, Flux); "
            f"choose one of {', '.join(FLOW_SAMPLERS)}"
        )
    if schedule not in FLOW_SCHEDULES:
        raise NodeError(
            f"scheduler {schedule!r} does not apply to flow-matching models; choose one of "
            f"{', '.join(FLOW_SCHEDULES)} (or ComfyUI's {', '.join(FLOW_COMFY_SCHEDULES)})"
        )
    base = {k: v for k, v in config.items() if not k.startswith("_")}
    euler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(base, **FLOW_SCHEDULES[schedule])
    if sampler == "euler" or sampler in K_FLOW_SAMPLERS:  # the latter: its sigmas only
        return euler, euler
    if sampler == "heun":
        return diffusers.FlowMatchHeunDiscreteScheduler.from_config(base), euler
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(
        base,
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=float(config.get("shift", 1.0)),
        use_dynamic_shifting=bool(config.get("use_dynamic_shifting", False)),
        algorithm_type="dpmsolver++",
        solver_order=2,
        **FLOW_SCHEDULES[schedule],
    )
    return dpm, euler


def _set_timesteps(
    sched: Any, euler: Any, sampler: str, schedule: str, steps: int, mu: float | None,
    family: str, device: torch.device,
) -> None:  # fmt: skip
    """The pipeline's timesteps: Flux passes ``sigmas = linspace(1, 1/steps)`` and its shift
    ``mu``; SD3 lets the scheduler space them; DPM++ computes its own flow sigmas."""
    import numpy as np

    from nodes.ksamplers import DISCARD_PENULTIMATE

    # ComfyUI's KSampler gives dpm_2 and uni_pc one sigma more and drops the next-to-last
    drop = sampler in K_FLOW_SAMPLERS and sampler in DISCARD_PENULTIMATE
    n = steps + 1 if drop else steps
    sigmas = None
    if family == "flux" or schedule == "simple":
        sigmas = np.linspace(1.0, 1 / n, n)
    kwargs: dict[str, Any] = {}
    if mu is not None:
        kwargs["mu"] = mu
    if sampler == "dpmpp_2m":
        sched.set_timesteps(steps, device=device, **kwargs)
        return
    if sampler == "euler" or sampler in K_FLOW_SAMPLERS:
        sched.set_timesteps(n, device=device, sigmas=sigmas, **kwargs)
        if drop:
            sched.sigmas = torch.cat([sched.sigmas[:-2], sched.sigmas[-1:]])
            sched.timesteps = sched.sigmas[:-1] * sched.config.num_train_timesteps
            sched.num_inference_steps = steps
        return
    if schedule == "normal" and family == "sd3" and mu is None:
        sched.set_timesteps(steps, device=device)  # what StableDiffusion3Pipeline does
        return
    # Heun with another schedule: the Euler scheduler's sigmas, doubled as Heun steps them.
    euler.set_timesteps(steps, device=device, sigmas=sigmas, **kwargs)
    s = euler.sigmas[:-1].to(torch.float32)
    n = sched.config.num_train_timesteps
    sched.timesteps = torch.cat([s[:1] * n, (s[1:] * n).repeat_interleave(2)])
    full = torch.cat([s, torch.zeros(1, device=s.device)])
    sched.sigmas = torch.cat([full[:1], full[1:-1].repeat_interleave(2), full[-1:]])
    sched.num_inference_steps = steps
    sched.prev_derivative = sched.dt = None
    sched._step_index = sched._begin_index = None


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(latents: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c4 = latents.shape
    x = latents.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def _prompt_list(conds: list[Cond], name: str, family: str) -> list[Cond]:
    if not conds:
        raise NodeError(f"the {name} conditioning is empty")
    for c in conds:
        if c.family != family:
            raise NodeError(
                f"the {name} prompt was encoded by a {c.family or 'different'} text encoder, "
                f"but the model is {FAMILY_TITLES[family]}: connect the CLIP that goes with "
                "this model"
            )
    return list(conds)


def _is_regional(pos: list[Cond], neg: list[Cond]) -> bool:
    """Several prompts on a side (Conditioning Combine), or one with an area, a mask or a
    timestep range."""
    if len(pos) > 1 or len(neg) > 1:
        return True
    keys = ("area", "area_fraction", "mask", "timestep_range")
    return any(c.extra.get(k) is not None for c in (*pos, *neg) for k in keys)


def flow_sigma_at(sched: Any, mu: float | None, fraction: float) -> float:
    """The noise level of a flow-matching schedule at ``fraction`` of the way from clean (0)
    to pure noise (1), shifted as the schedule shifts it (SD3's fixed shift, Flux's
    resolution-dependent ``mu``): ComfyUI's ``percent_to_sigma`` for these models, with
    ``fraction = 1 - percent``."""
    if fraction <= 0.0:
        return 0.0
    if fraction >= 1.0:
        return 1.0
    if mu is not None and sched.config.get("use_dynamic_shifting"):
        return float(sched.time_shift(mu, 1.0, torch.tensor(fraction, dtype=torch.float64)))
    shift = float(sched.config.get("shift", 1.0))
    return shift * fraction / (1 + (shift - 1) * fraction)


def _acts_at(c: Cond, sigma: float, sigma_at: Any) -> bool:
    """Conditioning Set Timestep Range on a flow model: the prompt acts while the noise level
    lies between the levels at its start and end (ComfyUI: ``timestep_start`` /
    ``timestep_end`` compared with the step's sigma; start 0 and end 1 leave that side open)."""
    rng = c.extra.get("timestep_range")
    if rng is None:
        return True
    start, end = rng
    if start > 0 and sigma > sigma_at(1.0 - start):
        return False
    return not (end < 1 and sigma < sigma_at(1.0 - end))


class _Regions:
    """Combined, area and mask prompts on SD3 / Flux, the way ComfyUI predicts them for any
    model (comfy/samplers.py): each prompt is predicted on its part of the latent (all of it,
    or its area's rectangle, seen by the model as an image of that size: Flux's position ids
    and SD3's cropped position embedding start at the rectangle's corner), weighted per cell
    (1, its mask times its strength, or the area's faded strength), and a side's predictions
    are summed and divided by the summed weights; then guided with cfg. A prompt's own
    ControlNets (Apply ControlNet before Set Area / Combine) act on its prediction alone: they
    see that prompt and its part of the latent, their control image fitted to the part (an
    area's: cut to its aspect around the centre, then resized, as ComfyUI fits a hint; the
    VAE-encoded hint and Flux's packed hint and position ids then match the part's latent);
    a prompt without one gets none. Areas lie on the models' 2x2 patches of latent cells (16
    pixels): a Conditioning Set Area off that grid is an error, a mask's bounds are widened
    onto it."""

    def __init__(
        self, ctx: Any, net: Any, model: ModelHandle, pos: list[Cond], neg: list[Cond],
        guided: bool, cfg: float, batch: int, size: tuple[int, int], device: torch.device,
        dtype: torch.dtype, sigma_at: Any = None, train_steps: int = 1000,
        fill: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        from nodes.comfycore import with_mask_bounds, with_same_areas

        self.fill = fill  # FLUX.1 Fill's unpacked extra input (cut with the latent)
        self.last_cond: torch.Tensor | None = None  # the last call's positive prediction
        self.last_uncond: torch.Tensor | None = None  # and its negative one (when guided)

        self.ctx, self.family = ctx, model.family
        self.net, self.flux, self.cfg, self.guided = net, model.family == "flux", cfg, guided
        self.size, self.factor, self.title = size, model.vae_downscale, FAMILY_TITLES[model.family]
        pos = [self._snap_bounds(c) for c in with_mask_bounds(pos, size, self.factor)]
        neg = [self._snap_bounds(c) for c in with_mask_bounds(neg, size, self.factor)]
        if any("area" in c.extra for c in (*pos, *neg)):
            pos, neg = with_same_areas(pos, neg)
        self.pos = [self._item(c, batch, device, dtype) for c in pos]
        self.neg = [self._item(c, batch, device, dtype) for c in neg] if guided else []
        self.pos_conds, self.neg_conds = pos, neg
        self.sigma_at, self.train_steps = sigma_at, train_steps

    def _snap_bounds(self, c: Cond) -> Cond:
        """A 'mask bounds' box widened onto the 2x2 patch grid (the mask still weighs it)."""
        from dataclasses import replace

        area = c.extra.get("area")
        if area is None or not c.extra.get("mask_bounds"):
            return c
        h, w, y, x = (v // self.factor for v in area)
        lh, lw = self.size
        top, left = y - y % 2, x - x % 2
        bottom, right = min(lh, y + h + (y + h) % 2), min(lw, x + w + (x + w) % 2)
        snapped = (bottom - top, right - left, top, left)
        return replace(c, extra={**c.extra, "area": tuple(v * self.factor for v in snapped)})

    def _item(self, c: Cond, batch: int, device: torch.device, dtype: torch.dtype) -> tuple:
        from nodes.comfycore import area_cells, area_weight
        from nodes.denoise import _prompt_weight

        weight = _prompt_weight(c, self.size, batch, device, dtype)
        cells = None
        if "area" in c.extra:
            cells = area_cells(c.extra["area"], self.size, self.factor)
            if any(v % 2 for v in cells):
                h, w, y, x = c.extra["area"]
                step = 2 * self.factor
                raise NodeError(
                    f"Conditioning Set Area: {self.title} works on patches of {step}x{step} "
                    f"pixels, so an area's x, y, width and height must be multiples of {step} "
                    f"(got {w}x{h} at {x},{y}): change the area"
                )
            strength = float(c.extra.get("strength", 1.0))
            top, left, h, w = cells
            if weight is None:
                weight = area_weight(cells, self.size, strength, batch).to(device, dtype)
            else:
                weight = weight[..., top : top + h, left : left + w] * strength
        hh, ww = (cells[2], cells[3]) if cells else self.size
        make = _flux_inputs if self.flux else _sd3_inputs
        inputs = make(self.net, c, c, False, batch, hh, ww, device, dtype)
        # The prompt's own ControlNets (none: None), their picture fitted to the part it is
        # predicted on: an area's picture cut to its aspect around the centre and resized
        # to it, as ComfyUI fits a control image to the latent it is given.
        pixels = (hh * self.factor, ww * self.factor)
        controls = _controls(
            self.ctx, self.net, c, c, self.family, False, batch, pixels, inputs, device, dtype,
            fit=cells is not None,
        )  # fmt: skip
        return cells, weight, inputs, controls

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, step: int = 0, total: int = 1
    ) -> torch.Tensor:
        """The guided prediction for the unpacked latent ``x`` ``[b, c, h, w]`` at ``step``
        of ``total`` (the ControlNets' start / end window)."""
        at = (step, total)
        pos_items, pos_conds = self._active(self.pos, self.pos_conds, t)
        cond = self._side(pos_items, x, t, at)
        self.last_cond, self.last_uncond = cond, None
        if not self.guided:
            return cond
        neg_items, neg_conds = self._active(self.neg, self.neg_conds, t)
        if _same_prompts(pos_conds, neg_conds):
            # The negative side is the positive one at this step (a guidance interval: the
            # positive prompt stands in as the negative before guidance starts): cfg gives
            # the positive prediction, so it is not predicted twice.
            return cond
        uncond = self._side(neg_items, x, t, at)
        self.last_uncond = uncond
        return uncond + self.cfg * (cond - uncond)

    def positive(
        self, x: torch.Tensor, t: torch.Tensor, step: int = 0, total: int = 1
    ) -> torch.Tensor:
        """The positive side's prediction alone (Skip Layer Guidance's)."""
        pos_items, _ = self._active(self.pos, self.pos_conds, t)
        return self._side(pos_items, x, t, (step, total))

    def _active(
        self, items: list[tuple], conds: list[Cond], t: torch.Tensor
    ) -> tuple[list[tuple], list[Cond]]:
        """The prompts acting at this step (Conditioning Set Timestep Range), and their
        conditionings."""
        if self.sigma_at is None:
            return items, conds
        sigma = float(t.flatten()[0]) / self.train_steps  # the timestep is sigma * train steps
        pairs = [
            (it, c) for it, c in zip(items, conds, strict=True) if _acts_at(c, sigma, self.sigma_at)
        ]
        return [it for it, _ in pairs], [c for _, c in pairs]

    def _one(
        self, x: torch.Tensor, t: torch.Tensor, inputs: dict, controls: Any, at: tuple[int, int],
        fill: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """One prompt's prediction on ``x`` (the whole latent or its area's part), with the
        residuals of its own ControlNets, computed on that same part (``fill``: FLUX.1 Fill's
        extra input on that part)."""
        if not self.flux:
            if controls is not None:
                blocks = controls.residuals(x, t, *at)
                inputs = {**inputs, "block_controlnet_hidden_states": blocks}
            return _sd3_call(self.net, x, t, inputs, 1.0, False)
        h, w = x.shape[-2:]
        packed = pack(x)
        if controls is not None:
            inputs = {
                **inputs,
                "pos": {**inputs["pos"], **controls.residuals(packed, t, *at)["pos"]},
            }
        if fill is not None:
            packed = torch.cat([packed, pack(fill)], dim=2)
        return unpack(_flux_call(self.net, packed, t, inputs, 1.0, False), h, w)

    def _side(
        self, items: list[tuple], x: torch.Tensor, t: torch.Tensor, at: tuple[int, int]
    ) -> torch.Tensor:
        from nodes.denoise import _mean

        if not items:  # no prompt acts at this step: ComfyUI's prediction is then zero
            return torch.zeros_like(x)
        outs, weights = [], []
        for cells, weight, inputs, controls in items:
            if cells is None:
                outs.append(self._one(x, t, inputs, controls, at, self.fill))
                weights.append(weight)
                continue
            top, left, h, w = cells
            part = (..., slice(top, top + h), slice(left, left + w))
            full = torch.zeros_like(x)
            fill = None if self.fill is None else self.fill[part].contiguous()
            full[part] = self._one(x[part].contiguous(), t, inputs, controls, at, fill)
            placed = torch.zeros_like(x[:, :1])
            placed[part] = weight.to(placed.dtype)
            outs.append(full)
            weights.append(placed)
        return _mean(outs, tuple(weights))


def _same_prompts(a: list[Cond], b: list[Cond]) -> bool:
    """Whether two sides' acting prompts are the same ones (the same tensors, areas, masks
    and ControlNets; their timestep ranges aside), so they predict the same."""
    if not a or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.embeds is not y.embeds or x.pooled is not y.pooled or x.size != y.size:
            return False
        ex = {k: v for k, v in x.extra.items() if k != "timestep_range"}
        ey = {k: v for k, v in y.extra.items() if k != "timestep_range"}
        if ex.keys() != ey.keys() or any(ex[k] is not ey[k] for k in ex):
            return False
    return True


def _latent_for(
    latent: dict[str, Any], model: ModelHandle, channels: int, patch: int
) -> torch.Tensor:
    """The latent the model works on: an Empty Latent remade with the model's channels and
    its VAE's scale; the family's size rule (whole patches of 2 latent cells) checked."""
    samples = latent["samples"]
    size = latent.get("pixel_size")
    f = model.vae_downscale
    if size is not None and samples.ndim == 4 and not bool(samples.any()):
        height, width = size
        if tuple(samples.shape[-2:]) == (height // 8, width // 8):
            step = f * patch
            if height % step or width % step:
                raise NodeError(
                    f"{FAMILY_TITLES[model.family]} needs width and height that are multiples "
                    f"of {step} (got {width}x{height}): change the Empty Latent's size"
                )
            samples = torch.zeros(samples.shape[0], channels, height // f, width // f)
    if samples.ndim != 4 or samples.shape[1] != channels:
        raise NodeError(
            f"the latent has shape {tuple(samples.shape)}, but this "
            f"{FAMILY_TITLES[model.family]} model works on {channels}-channel latents"
        )
    if samples.shape[-1] % patch or samples.shape[-2] % patch:
        raise NodeError(
            f"the latent is {samples.shape[-1]}x{samples.shape[-2]} cells; "
            f"{FAMILY_TITLES[model.family]} needs multiples of {patch}"
        )
    return samples


def sample(
    ctx: Any,
    model: ModelHandle,
    positive: list[Cond],
    negative: list[Cond],
    latent: dict[str, Any],
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler: str,
    scheduler: str,
    denoise: float,
    window: Any = None,
) -> dict[str, Any]:
    """The Sampler for SD3 / Flux: StableDiffusion3Pipeline's / FluxPipeline's loop, step
    for step (same noise from one CPU generator, same timesteps, same guidance).

    A latent with a ``noise_mask``: the inpaint pipelines' way (StableDiffusion3Inpaint /
    FluxInpaint with a plain transformer): after each step, outside the mask the input latent
    is put back, noised to the next step's level. ``window``: Sampler (Advanced)'s steps
    start..end, its add_noise and leftover noise (ComfyUI's KSamplerAdvanced)."""
    from nodes import lora
    from nodes.denoise import _Previews
    from nodes.sdload import get_module, with_oom_advice

    family = model.family
    flux = family == "flux"
    positive = _prompt_list(positive, "positive", family)
    negative = _prompt_list(negative, "negative", family)
    regional = _is_regional(positive, negative)
    pos, neg = positive[0], negative[0]
    fill = flux and is_flux_fill(model.source.configs["transformer"])
    control = flux and is_flux_control(model.source.configs["transformer"])
    control_image = control_image_of(positive, negative, family, control, fill)
    if fill and latent.get("inpaint") is None:
        raise NodeError(
            "this is FLUX.1 Fill, an inpainting model (its transformer takes the masked image "
            "and the mask too): give the Sampler a latent from VAE Encode for Inpaint (the "
            "image and the mask to repaint; ComfyUI's InpaintModelConditioning)"
        )
    net = get_module(ctx, model.source, "transformer")
    lora.activate(ctx, net, "transformer", model.patches, family)
    tcfg = net.config
    patch = 2 if flux else int(tcfg.patch_size)
    channels = flux_out_channels(tcfg) // 4 if flux else tcfg.in_channels
    samples = _latent_for(latent, model, channels, patch)
    device = torch.device(ctx.device)
    dtype = net.dtype if not _layerwise(net) else _compute_dtype(net)
    batch, _, h, w = samples.shape
    scheduler = flow_schedule(scheduler)
    sched, euler = make_flow_scheduler(model.scheduler_config, sampler, scheduler)
    mu = None
    if model.scheduler_config.get("use_dynamic_shifting"):
        mu = calculate_shift((h // patch) * (w // patch), model.scheduler_config)
    _set_timesteps(sched, euler, sampler, scheduler, steps, mu, family, device)
    plan = _plan(sched, steps, denoise, window, empty=not bool(samples.any()))
    if plan is None:  # Sampler (Advanced) with no step left: the latent as it came
        return dict(latent)
    timesteps = sched.timesteps[plan.begin : plan.end]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(plan.begin)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    # FluxControlPipeline draws the control image's latent first, then the noise.
    control_in = None
    if control_image is not None:
        control_in = control_inputs(control_image, samples.shape, generator, device, dtype)
    noise_mask = latent.get("noise_mask")
    init, noise, latents = _start(
        sched, samples, latent, plan, noise_mask is not None, generator, device, dtype
    )
    mask = soft = fill_in = None
    if fill:  # the model repaints by itself: no blending (FluxFillPipeline's loop)
        fill_in = fill_inputs(latent["inpaint"], init, generator, device, dtype)
    elif noise_mask is not None:
        from nodes.denoise import _latent_mask

        # the pipelines' 16-channel latent mask; in float32 for Differential Diffusion's
        # thresholds, as ComfyUI keeps it
        soft = _latent_mask(noise_mask, init).to(device=device).repeat(1, channels, 1, 1)
        mask = soft.to(dtype)
    # The transformer's extra input channels, unpacked: FLUX.1 Fill's masked image and mask,
    # or FLUX.1 Canny / Depth's control image latent.
    extra_in = fill_in if fill_in is not None else control_in
    guided = cfg > 1.0
    call = _flux_call if flux else _sd3_call
    total = len(timesteps) + int(plan.finish is not None)
    regions = controls = None
    if regional:
        regions = _Regions(
            ctx, net, model, positive, negative, guided, cfg, batch, (h, w), device, dtype,
            sigma_at=lambda fraction: flow_sigma_at(sched, mu, fraction),
            train_steps=sched.config.num_train_timesteps, fill=extra_in,
        )  # fmt: skip
    else:
        inputs = (_flux_inputs if flux else _sd3_inputs)(
            net, pos, neg, guided, batch, h, w, device, dtype
        )
        controls = _controls(
            ctx, net, pos, neg, family, guided, batch,
            (h * model.vae_downscale, w * model.vae_downscale), inputs, device, dtype,
        )  # fmt: skip
    extra_packed = pack(extra_in) if extra_in is not None else None
    _check_references(
        positive, negative, family, regional or controls is not None or extra_in is not None
    )

    kept: dict[str, torch.Tensor | None] = {}  # the guided call's own two predictions

    def predict(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        if regions is not None:
            if flux:
                return pack(regions(unpack(x, h, w), t, i, total))
            return regions(x, t, i, total)
        # FLUX.1 Fill sees [latent, masked image's latent, mask] per token, FLUX.1 Canny /
        # Depth [latent, control image's latent]; ControlNets see the latent alone.
        x_in = x if extra_packed is None else torch.cat([x, extra_packed], dim=2)
        if controls is None:
            return call(net, x_in, t, inputs, cfg, guided, keep=kept)
        if flux:
            extra = controls.residuals(x, t, i, total)
            sides = {k: v and {**v, **extra[k]} for k, v in inputs.items()}
            return call(net, x_in, t, sides, cfg, guided, keep=kept)
        model_in = torch.cat([x] * 2) if guided else x
        blocks = controls.residuals(model_in, t, i, total)
        args = {**inputs, "block_controlnet_hidden_states": blocks}
        return call(net, x, t, args, cfg, guided, keep=kept)

    def alone(c: Cond) -> Any:
        """The prediction for prompt ``c`` alone (no guidance), with the ControlNets applied
        on it, as ComfyUI predicts one conditioning: Perp-Neg's empty prompt, Skip Layer
        Guidance's skipped positive. A Flux ControlNet reads the positive prompt, as it does
        for the negative pass (FluxControlNetPipeline's true CFG); an SD3 one the prompt's
        own, as for the negative (StableDiffusion3ControlNetPipeline)."""
        make = _flux_inputs if flux else _sd3_inputs
        ins = make(net, c, c, False, batch, h, w, device, dtype)
        reads = make(net, pos, pos, False, batch, h, w, device, dtype) if flux else ins
        size = (h * model.vae_downscale, w * model.vae_downscale)
        own = _controls(ctx, net, c, c, family, False, batch, size, reads, device, dtype)

        def prediction(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            if flux:
                x_in = x if extra_packed is None else torch.cat([x, extra_packed], dim=2)
                args = ins
                if own is not None:
                    args = {"pos": {**ins["pos"], **own.residuals(x, t, i, total)["pos"]}}
                return _flux_call(net, x_in, t, args, 1.0, False)
            args = ins
            if own is not None:
                args = {**ins, "block_controlnet_hidden_states": own.residuals(x, t, i, total)}
            return _sd3_call(net, x, t, args, 1.0, False)

        return prediction

    def packed(x: torch.Tensor | None) -> torch.Tensor | None:
        return pack(x) if flux and x is not None else x

    if model.perp_neg is not None and guided:
        empty = _prompt_list(model.perp_neg[0], "empty_conditioning", family)[0]
        predict = _perp_neg_prediction(
            predict, _last_parts(kept, regions, flux), alone(empty), cfg, model.perp_neg[1]
        )

    if model.cfg_zero_star and guided:
        predict = _zero_star_prediction(
            predict, _last_parts(kept, regions, flux), cfg, sched.config.num_train_timesteps
        )

    if model.skip_layer_guidance is not None:
        slg = model.skip_layer_guidance
        positive_alone = alone(pos) if regions is None else None

        def positive(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            """The positive prompt's own prediction (no guidance)."""
            if regions is None:
                return positive_alone(x, t, i)
            if flux:
                return pack(regions.positive(unpack(x, h, w), t, i, total))
            return regions.positive(x, t, i, total)

        parts = _last_parts(kept, regions, flux)

        def last_cond() -> torch.Tensor | None:
            """The positive prediction the guided call just made (not predicted again)."""
            return parts()[0]

        predict = _skip_layer_guidance(
            predict, positive, last_cond, slg, net, guided, sched.config.num_train_timesteps,
            (flow_sigma_at(sched, mu, 1 - slg.end), flow_sigma_at(sched, mu, 1 - slg.start)),
        )  # fmt: skip

    step_mask = _step_masks(mask, soft, sched, plan, mu, flux, model.differential_diffusion)
    # each step's live preview, without making a GPU wait for it (denoise._Previews)
    previews = _Previews(latents.device, model)

    def run_k() -> torch.Tensor:
        """ComfyUI's sampler over the run's sigmas, the model as a denoiser
        (``x - sigma v``); a noise mask blends the model's input and output as ComfyUI's
        KSampler does (the input latent noised to the call's level outside the mask)."""
        from nodes import ksamplers

        sig = sched.sigmas[plan.begin : plan.end + 1].to(device=device, dtype=torch.float32)
        if plan.finish is not None:  # stopping early without leftover noise: down to 0
            sig = torch.cat([sig, sig.new_zeros(1)])
        x_init, x_noise = packed(init), packed(noise)
        n_train = sched.config.num_train_timesteps

        def denoise(x: torch.Tensor, sigma: torch.Tensor, i: int) -> torch.Tensor:
            ctx.check_interrupt()
            t = sigma * n_train
            m = packed(step_mask(t)) if mask is not None else None
            if m is not None:
                x = x * m + (sigma * x_noise + (1 - sigma) * x_init) * (1 - m)
            den = x.float() - sigma * predict(x.to(dtype), t, i).float()
            if m is not None:
                den = den * m + x_init * (1 - m)
            return den

        def shown(i: int, den: torch.Tensor) -> None:
            img = unpack(den.to(dtype), h, w) if flux else den.to(dtype)
            ctx.progress(i + 1, total, previews.next(img))

        x = packed(latents).float()
        # ComfyUI's noise (default or Brownian), drawn in the unpacked latent's shape
        draw = ksamplers.noise_sampler(
            sampler, torch.empty(samples.shape, device=device), sig, seed
        )
        if sampler in ksamplers.SNR_OFFSET and float(sig[0]) >= 1:
            sig = sig.clone()
            sig[0] = flow_sigma_at(sched, mu, 1 - 1e-4)  # the log-SNR is infinite at 1
        steps_of = ksamplers.flow_form(sampler)
        with torch.no_grad():
            x = steps_of(denoise, x, sig, (lambda a, b: pack(draw(a, b))) if flux else draw, shown)
        x = x.to(dtype)
        return unpack(x, h, w) if flux else x

    def run() -> torch.Tensor:
        if sampler in K_FLOW_SAMPLERS:
            return run_k()
        x, x_init, x_noise = packed(latents), packed(init), packed(noise)
        with torch.no_grad():
            for i, t in enumerate(timesteps):
                ctx.check_interrupt()
                pred = predict(x, t, i)
                x = sched.step(pred, t, x, return_dict=False)[0]
                if mask is not None:
                    m = packed(step_mask(t))
                    x = (1 - m) * _noised(sched, x_init, x_noise) + m * x
                shown = unpack(x, h, w) if flux else x
                ctx.progress(i + 1, total, previews.next(shown))
            if plan.finish is not None:
                # Stopping early without leftover noise: the model's clean prediction at the
                # last step's level, ComfyUI's final step to noise level 0.
                ctx.check_interrupt()
                t = sched.timesteps[plan.finish]
                sigma = sched.sigmas.to(device=x.device, dtype=x.dtype)[plan.finish]
                x = x - sigma * predict(x, t, len(timesteps))
                if mask is not None:
                    m = packed(step_mask(t))
                    x = (1 - m) * x_init + m * x
                shown = unpack(x, h, w) if flux else x
                ctx.progress(total, total, previews.next(shown))
        return unpack(x, h, w) if flux else x

    result = with_oom_advice(run, "sampling")
    out: dict[str, Any] = {"samples": result.detach().float().cpu()}
    if noise_mask is not None:
        out["noise_mask"] = noise_mask
    if latent.get("batch_index") is not None:
        out["batch_index"] = latent["batch_index"]
    return out


def _step_masks(
    mask: torch.Tensor | None, soft: torch.Tensor | None, sched: Any, plan: _Plan,
    mu: float | None, flux: bool, differential: float | None,
) -> Any:  # fmt: skip
    """The noise mask a step at timestep ``t`` blends with: the latent's (``mask``), or with
    Differential Diffusion (``differential``: its strength) the float32 ``soft`` mask
    thresholded at ``t``, as ComfyUI does, over the run's span of timesteps: from its first
    to where it stops (0 at the end of the schedule), but not below the model's smallest
    (ComfyUI's Flux has 10,000 training steps, SD3 1,000)."""
    if mask is None or soft is None or differential is None or plan.begin >= len(sched.timesteps):
        return lambda t: mask
    from nodes.inpaint import differential_mask

    n = float(sched.config.num_train_timesteps)
    start = float(sched.timesteps[plan.begin])
    end = 0.0
    if plan.finish is None and plan.end < len(sched.timesteps):
        end = float(sched.timesteps[plan.end])  # Sampler (Advanced) leaving noise
    end = max(end, n * flow_sigma_at(sched, mu, 1e-4 if flux else 1e-3))

    def at(t: torch.Tensor) -> torch.Tensor:
        return differential_mask(soft, float(t), start, end, differential).to(mask.dtype)

    return at


def fill_inputs(
    info: dict[str, Any], init: torch.Tensor, generator: torch.Generator,
    device: torch.device, dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """FLUX.1 Fill's extra input, unpacked ``[b, c + 64, h, w]``: the masked image's latent
    (drawn from its distribution after the noise, as FluxFillPipeline draws it) and the
    pixel mask with each cell's 8x8 block of pixels as 64 channels (``prepare_mask_latents``);
    packing it gives the pipeline's packed [masked latent, mask] channels."""
    from diffusers.utils.torch_utils import randn_tensor

    batch, channels, h, w = init.shape
    mean, std = info["masked_mean"], info["masked_std"]
    if tuple(mean.shape[1:]) != (channels, h, w):
        raise NodeError(
            f"the inpainting latent's masked image is {tuple(mean.shape[1:])} (channels, "
            f"height, width), but the latent is {(channels, h, w)}: encode the image with the "
            "VAE that goes with this model"
        )
    mean = mean.to(device=device, dtype=dtype)
    masked = mean + std.to(device=device, dtype=dtype) * randn_tensor(
        tuple(mean.shape), generator=generator, device=device, dtype=dtype
    )
    pixels = info["mask"].float()
    f = pixels.shape[-1] // w
    if f * f * 4 != FILL_MASK_CHANNELS or tuple(pixels.shape[-2:]) != (h * f, w * f):
        raise NodeError(
            f"FLUX.1 Fill takes a mask of 8x8 pixels per latent cell; this mask is "
            f"{pixels.shape[-1]}x{pixels.shape[-2]} for a latent of {w}x{h} cells"
        )
    m = pixels.view(-1, h, f, w, f).permute(0, 2, 4, 1, 3).reshape(-1, f * f, h, w)
    m = m.to(device=device, dtype=dtype)
    if masked.shape[0] != batch:
        masked = masked[:1].repeat(batch, 1, 1, 1)
    if m.shape[0] != batch:
        m = m[:1].repeat(batch, 1, 1, 1)
    return torch.cat([masked, m], dim=1)


def control_image_of(
    positive: list[Cond], negative: list[Cond], family: str, control: bool, fill: bool
) -> dict[str, torch.Tensor] | None:
    """The control image (InstructPixToPix Conditioning's VAE-encoded latent distribution)
    FLUX.1 Canny / Depth take: the first positive prompt's, for both sides as ComfyUI's node
    gives both the same (FluxControlPipeline has no negative prompt). Any other model given
    one is an error rather than a control image silently dropped."""
    found = [c.extra[CONTROL_IMAGE_KEY] for c in positive if CONTROL_IMAGE_KEY in c.extra]
    if control and not found:
        raise NodeError(
            "this is FLUX.1 Canny / Depth [dev] (structural conditioning: its transformer "
            "takes a control image too): connect the prompts through InstructPixToPix "
            "Conditioning, with the control image (canny edges or a depth map) on its pixels "
            "and the VAE, and give the Sampler its latent output"
        )
    given = found or any(CONTROL_IMAGE_KEY in c.extra for c in negative)
    if given and not control:
        what = "FLUX.1 Fill [dev]" if fill else f"{FAMILY_TITLES[family]} ({family})"
        raise NodeError(
            "InstructPixToPix Conditioning gives the prompts a control image, which only "
            f"FLUX.1 Canny / Depth [dev] take; this model is {what}: load "
            "flux1-canny-dev / flux1-depth-dev with Load Diffusion Model, or remove "
            "InstructPixToPix Conditioning"
        )
    return found[0] if found else None


def control_inputs(
    image: dict[str, torch.Tensor], shape: tuple[int, ...], generator: torch.Generator,
    device: torch.device, dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """FLUX.1 Canny / Depth's extra input, unpacked ``[b, c, h, w]``: the control image's
    latent drawn from its distribution (FluxControlPipeline's ``latent_dist.sample``)."""
    from diffusers.utils.torch_utils import randn_tensor

    batch, channels, h, w = shape
    mean, std = image["mean"], image["std"]
    if tuple(mean.shape[1:]) != (channels, h, w):
        c, ih, iw = mean.shape[1:]
        raise NodeError(
            f"InstructPixToPix Conditioning's control image is a latent of {iw}x{ih} cells "
            f"and {c} channels, but the Sampler's latent is {w}x{h} cells and {channels} "
            "channels: give the Sampler InstructPixToPix Conditioning's latent output (or an "
            "Empty Latent of the control image's size), and encode with this model's VAE"
        )
    if mean.shape[0] not in (1, batch):
        raise NodeError(
            f"InstructPixToPix Conditioning holds {mean.shape[0]} control images but the "
            f"latent {batch}: use one control image or as many as the latent's batch"
        )
    if mean.shape[0] != batch:
        mean, std = mean.repeat(batch, 1, 1, 1), std.repeat(batch, 1, 1, 1)
    mean, std = mean.to(device=device, dtype=dtype), std.to(device=device, dtype=dtype)
    return mean + std * randn_tensor(
        tuple(mean.shape), generator=generator, device=device, dtype=dtype
    )


@dataclass(frozen=True)
class _Plan:
    """Which of the schedule's timesteps a run takes: ``begin`` up to ``end`` (indices into
    the scheduler's timesteps), ``finish``: the index of a last model call that gives the
    clean latent (Sampler (Advanced) stopping early without leftover noise), ``fresh``: start
    from pure noise, ``add_noise``: noise the input to the first step's level."""

    begin: int
    end: int
    finish: int | None = None
    fresh: bool = True
    add_noise: bool = True


def _plan(sched: Any, steps: int, denoise: float, window: Any, empty: bool) -> _Plan | None:
    order = sched.order
    n = len(sched.timesteps)
    if window is None:
        if denoise >= 1.0:
            return _Plan(0, n)
        # the pipelines' img2img / inpaint rule (get_timesteps)
        t_start = int(max(steps - min(steps * denoise, steps), 0))
        if t_start * order >= n:
            raise NodeError(
                f"denoise {denoise} with {steps} steps leaves no step to run; raise one of them"
            )
        return _Plan(t_start * order, n, fresh=False)
    end = min(window.end, steps)
    if window.start >= end:
        return None
    begin = window.start * order
    fresh = window.start == 0 and empty  # from an Empty Latent: exactly the Sampler's start
    if end < steps and not window.leftover_noise:
        last = (end - 1) * order  # the last step's first model call gives the clean latent
        return _Plan(begin, last, finish=last, fresh=fresh, add_noise=window.add_noise)
    return _Plan(begin, min(end * order, n), fresh=fresh, add_noise=window.add_noise)


def _start(
    sched: Any,
    samples: torch.Tensor,
    latent: dict[str, Any],
    plan: _Plan,
    masked: bool,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input latent, noise, first latents). As the pipelines draw: a VAE Encode's sample
    first (img2img, inpainting), then the noise; the input noised to the first step's level
    (``sigma * noise + (1 - sigma) * input``), or pure noise from the top of the schedule."""
    from diffusers.utils.torch_utils import randn_tensor

    from nodes.denoise import batch_randn

    init = samples.to(device=device, dtype=dtype)
    if not plan.add_noise:  # Sampler (Advanced), add_noise off: the input carries its noise
        return init, torch.zeros_like(init), init
    std = latent.get("posterior_std")
    if (masked or not plan.fresh) and std is not None and tuple(std.shape) == tuple(init.shape):
        init = init + std.to(device=device, dtype=dtype) * randn_tensor(
            tuple(init.shape), generator=generator, device=device, dtype=dtype
        )
    noise = batch_randn(init.shape, generator, device, dtype, latent.get("batch_index"))
    if plan.fresh:
        return init, noise, noise
    sigma = sched.sigmas.to(device=device, dtype=dtype)[plan.begin]
    return init, noise, sigma * noise + (1.0 - sigma) * init


def _last_parts(kept: dict, regions: Any, flux: bool) -> Any:
    """A function giving (and forgetting) the positive and negative predictions of the
    guided call just made: the plain path's ``kept``, the regional path's last ones."""

    def parts(forget: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if regions is None:
            cond, uncond = kept.get("cond"), kept.get("uncond")
            if forget:
                kept.clear()
            return cond, uncond
        cond, uncond = regions.last_cond, regions.last_uncond
        if forget:
            regions.last_cond = regions.last_uncond = None
        if flux:
            cond, uncond = (pack(v) if v is not None else None for v in (cond, uncond))
        return cond, uncond

    return parts


def _perp_neg_prediction(predict: Any, parts: Any, empty: Any, cfg: float, neg_scale: float) -> Any:
    """``predict`` with Perp-Neg in place of cfg (ComfyUI's PerpNeg): the positive and
    negative predictions the guided call made, and the empty prompt's (one more call); a
    step whose negative side was not predicted is left as it is."""
    from nodes.denoise import perp_neg

    def guided(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        parts()  # none left over from an earlier call
        pred = predict(x, t, i)
        cond, uncond = parts(forget=False)  # CFG-Zero* / Skip Layer Guidance may take them
        if cond is None or uncond is None:
            return pred
        return perp_neg(cond, uncond, empty(x, t, i), cfg, neg_scale)

    return guided


def _zero_star_prediction(predict: Any, parts: Any, cfg: float, train_steps: int) -> Any:
    """``predict`` with ComfyUI's CFGZeroStar after guidance, on the clean-latent
    predictions ``x - sigma v``; a step whose negative side was not predicted (a guidance
    interval's unguided steps) is left as it is."""
    from nodes.denoise import zero_star

    def moved(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        parts()  # none left over from an earlier call
        pred = predict(x, t, i)
        cond, uncond = parts(forget=False)  # Skip Layer Guidance may take them next
        if cond is None or uncond is None:
            return pred
        sigma = float(t.flatten()[0]) / train_steps
        den = zero_star(x, x - sigma * uncond, x - sigma * cond, x - sigma * pred, cfg)
        return (x - den) / sigma

    return moved


@contextlib.contextmanager
def _skipping(net: Any, double: tuple[int, ...], single: tuple[int, ...]) -> Any:
    """Inside: the transformer's blocks ``double`` (SD3's joint / Flux's double-stream) and
    ``single`` (Flux's single-stream) pass their inputs through unchanged, as ComfyUI's
    skip patch and diffusers' ``skip_layers`` leave them."""

    def skip(hidden_states: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        return encoder_hidden_states, hidden_states  # the blocks' own return order

    blocks = [net.transformer_blocks[i] for i in double]
    blocks += [net.single_transformer_blocks[i] for i in single]
    saved = [(b, b.__dict__.get("forward")) for b in blocks]
    try:
        for b in blocks:
            b.forward = skip
        yield
    finally:
        for b, old in saved:
            if old is None:
                del b.__dict__["forward"]
            else:
                b.forward = old


def _skip_layer_guidance(
    predict: Any, positive: Any, last_cond: Any, slg: Any, net: Any, guided: bool,
    train_steps: int, window: tuple[float, float],
) -> Any:  # fmt: skip
    """``predict`` with Skip Layer Guidance (ComfyUI's post-CFG step): at noise levels in
    ``window`` (low, high) the guided prediction moves by ``scale`` (positive prediction -
    the positive prediction with the blocks skipped); with ``rescale``, the result (as a
    clean-latent prediction) is scaled towards the positive prediction's spread. The
    positive prediction is the one the guided call made (``last_cond``), else made anew by
    ``positive``: one extra transformer call a step, as in ComfyUI."""
    for name, wanted, blocks in (
        ("double_layers", slg.double, net.transformer_blocks),
        ("single_layers", slg.single, getattr(net, "single_transformer_blocks", ())),
    ):
        if wanted and max(wanted) >= len(blocks):
            raise NodeError(
                f"Skip Layer Guidance: {name} has block {max(wanted)}, but this model has "
                f"{len(blocks)} such blocks (0-{len(blocks) - 1})"
            )
    low, high = window

    def guided_prediction(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        last_cond()  # none left over from an earlier call
        pred = predict(x, t, i)
        made = last_cond()
        sigma = float(t.flatten()[0]) / train_steps
        if not low <= sigma <= high:
            return pred
        cond = pred if not guided else made if made is not None else positive(x, t, i)
        with _skipping(net, slg.double, slg.single):
            skipped = positive(x, t, i)
        if not slg.rescale:
            return pred + (cond - skipped) * slg.scale
        # ComfyUI works on clean-latent predictions: x - sigma v
        den, c_den = x - sigma * pred, x - sigma * cond
        out = den + (c_den - (x - sigma * skipped)) * slg.scale
        factor = slg.rescale * (c_den.std() / out.std()) + (1 - slg.rescale)
        return (x - out * factor) / sigma

    return guided_prediction


def _noised(sched: Any, init: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The input latent at the noise level the scheduler has just stepped to (the inpaint
    pipelines' ``scale_noise`` after a step; the input itself after the last)."""
    sigma = sched.sigmas.to(device=init.device, dtype=init.dtype)[sched.step_index]
    return sigma * noise + (1.0 - sigma) * init


def _controls(
    ctx: Any, net: Any, pos: Cond, neg: Cond, family: str, guided: bool, batch: int,
    size: tuple[int, int], inputs: dict[str, Any], device: torch.device, dtype: torch.dtype,
    fit: bool = False,
) -> _Sd3Controls | _FluxControls | None:  # fmt: skip
    """Apply ControlNet's entries on the prompts: SD3 / Flux ControlNets for a model of their
    family, prepared as StableDiffusion3ControlNetPipeline / FluxControlNetPipeline do; any
    other pairing is a clear error. ``size``: the pixels the prompt is predicted on; ``fit``:
    first cut the control image to that aspect around its centre (an area prompt)."""
    from nodes.controlnet import controls_of, needs_vae

    pos_entries, neg_entries = controls_of(pos), controls_of(neg)
    if pos_entries and not neg_entries:
        neg_entries = pos_entries  # as the UNet path: the negative takes the positive's
    ordered: list[Any] = []
    for e in (*neg_entries, *pos_entries):
        if not any(e is o for o in ordered):
            ordered.append(e)
    if not ordered:
        return None
    for e in ordered:
        if e.net.family != family:
            raise NodeError(
                f"Apply ControlNet: ControlNet {e.net.name!r} is for {e.net.family_title()}, "
                f"but the model is {FAMILY_TITLES[family]}: choose a ControlNet made for this "
                "model's family"
            )
        if e.vae is None and needs_vae(e.net):
            raise NodeError(
                f"ControlNet {e.net.name!r} is a {e.net.family_title()} ControlNet and needs "
                "the model's VAE: use Apply ControlNet with its vae input connected"
            )
    if family == "flux":
        return _FluxControls(
            ctx, ordered, neg_entries, pos_entries, guided, batch, size, inputs, device, dtype,
            fit,
        )  # fmt: skip
    return _Sd3Controls(
        ctx, net, ordered, neg_entries, pos_entries, guided, batch, size, inputs, device, dtype,
        fit,
    )  # fmt: skip


def _keep(e: Any, step: int, total: int) -> float:
    """The pipelines' guidance window: active while start <= i/n and (i+1)/n <= end."""
    return 1.0 - float(step / total < e.start or (step + 1) / total > e.end)


class _FluxControls:
    """The Flux ControlNets of a run, as FluxControlNetPipeline runs them: each control image
    encoded once by the VAE (its mean: the pipeline draws a sample from the run's generator)
    and packed, or given as pixels to a ControlNet with its own image encoder (XLabs'); per
    step each ControlNet sees the positive prompt, and its block residuals (scaled by strength
    inside the window) go to the positive pass, and to the negative one when it is on the
    negative prompt too (true CFG)."""

    def __init__(
        self, ctx: Any, entries: list[Any], neg_entries: tuple, pos_entries: tuple,
        guided: bool, batch: int, size: tuple[int, int], inputs: dict[str, Any],
        device: torch.device, dtype: torch.dtype, fit: bool = False,
    ) -> None:  # fmt: skip
        from nodes.controlnet import get_module as controlnet_module

        self.inputs = inputs["pos"]
        self.items: list[tuple[Any, Any, torch.Tensor, bool, bool, Any]] = []
        counts: set[tuple[int, int]] = set()
        repeats: set[bool] = set()
        for e in entries:
            module = controlnet_module(ctx, e.net)
            cfg = module.config
            mode = None
            if cfg.get("num_mode") is not None:  # union: the mode set on it, per image
                index = e.net.control_mode("Sampler")
                mode = torch.full((batch, 1), index, dtype=torch.long, device=device)
            hint = module.input_hint_block is not None
            if hint:
                cond = _control_pixels(ctx, e, batch, size, fit).to(device=device, dtype=dtype)
            else:
                cond = pack(_control_latent(ctx, e, batch, size, False, fit).to(device, dtype))
            on_neg = any(e is n for n in neg_entries)
            on_pos = any(e is p for p in pos_entries)
            self.items.append((e, module, cond, on_pos, on_neg and guided, mode))
            counts.add((cfg.num_layers, cfg.num_single_layers))
            repeats.add(hint)
        if len(counts) > 1 or len(repeats) > 1:
            names = ", ".join(repr(e.net.name) for e in entries)
            raise NodeError(
                f"Apply ControlNet: the stacked Flux ControlNets {names} differ in their block "
                "counts or kind (XLabs' and InstantX's), so their residuals cannot be summed: "
                "stack ControlNets of one kind"
            )
        self.repeat = repeats.pop()
        guidance = self.inputs["guidance"]
        if guidance is None:
            guidance = torch.full([batch], FLUX_DEFAULT_GUIDANCE, device=device)
        self.guidance = guidance

    def residuals(self, x: torch.Tensor, t: torch.Tensor, step: int, total: int) -> dict:
        """Per side (``pos``, ``neg``): the transformer's extra keyword arguments."""
        sides: dict[str, list[Any] | None] = {"pos": None, "neg": None}
        timestep = t.expand(x.shape[0]).to(x.dtype) / 1000
        for e, module, cond, on_pos, on_neg, mode in self.items:
            blocks = module(
                hidden_states=x, controlnet_cond=cond, controlnet_mode=mode,
                conditioning_scale=e.strength
                * _keep(e, step, total), timestep=timestep,
                guidance=self.guidance if module.config.guidance_embeds else None,
                pooled_projections=self.inputs["pooled_projections"],
                encoder_hidden_states=self.inputs["encoder_hidden_states"],
                txt_ids=self.inputs["txt_ids"], img_ids=self.inputs["img_ids"],
                return_dict=False,
            )  # fmt: skip
            for side, on in (("pos", on_pos), ("neg", on_neg)):
                if not on:
                    continue
                now = sides[side]
                sides[side] = (
                    [list(b) if b is not None else None for b in blocks]
                    if now is None
                    else [_add(a, b) for a, b in zip(now, blocks, strict=True)]
                )
        out: dict[str, dict] = {}
        for side, found in sides.items():
            if found is None:
                out[side] = {}
                continue
            out[side] = {
                "controlnet_block_samples": found[0],
                "controlnet_single_block_samples": found[1],
                "controlnet_blocks_repeat": self.repeat,
            }
        return out


def _add(a: list | None, b: Any) -> list | None:
    if a is None or b is None:
        return a if b is None else list(b)
    return [x + y for x, y in zip(a, b, strict=True)]


class _Sd3Controls:
    """The SD3 ControlNets of a run: each control image encoded once by the VAE (its mean:
    the pipeline draws a sample from torch's global generator), then per step the summed
    block residuals the transformer adds. A ControlNet without a patch embedding of its own
    (Stability's SD3.5 ones) is given the latent patched by the model's, as the pipeline
    lends it the transformer's."""

    def __init__(
        self, ctx: Any, net: Any, entries: list[Any], neg_entries: tuple, pos_entries: tuple,
        guided: bool, batch: int, size: tuple[int, int], inputs: dict[str, Any],
        device: torch.device, dtype: torch.dtype, fit: bool = False,
    ) -> None:  # fmt: skip
        from nodes.controlnet import get_module as controlnet_module

        self.patch_embed = net.pos_embed
        self.items: list[tuple[Any, Any, torch.Tensor, torch.Tensor | None, dict]] = []
        for e in entries:
            module = controlnet_module(ctx, e.net)
            cfg = module.config
            if module.inner_dim != net.inner_dim:
                raise NodeError(
                    f"ControlNet {e.net.name!r} is {module.inner_dim} wide, but the model is "
                    f"{net.inner_dim} wide: it was made for another Stable Diffusion 3.x model "
                    "(Stability's SD3.5 ControlNets are for SD3.5 Large)"
                )
            if cfg.get("extra_conditioning_channels", 0):
                raise NodeError(
                    f"ControlNet {e.net.name!r} takes {cfg.extra_conditioning_channels} extra "
                    "conditioning channels (an inpainting ControlNet); Studio runs SD3 "
                    "ControlNets without them only, for now"
                )
            latent = _control_latent(
                ctx, e, batch, size, bool(cfg.force_zeros_for_pooled_projection), fit
            )
            latent = latent.to(device=device, dtype=dtype)
            gate = None
            if guided:
                latent = torch.cat([latent] * 2)
                on_neg = any(e is n for n in neg_entries)
                on_pos = any(e is p for p in pos_entries)
                if not (on_neg and on_pos):
                    half = [float(on_neg)] * batch + [float(on_pos)] * batch
                    gate = torch.tensor(half, device=device, dtype=dtype).view(-1, 1, 1)
            pooled = inputs["pooled_projections"]
            kwargs = {
                "pooled_projections": (
                    torch.zeros_like(pooled) if cfg.force_zeros_for_pooled_projection else pooled
                ),
                "encoder_hidden_states": (
                    inputs.get("whole_context", inputs["encoder_hidden_states"])
                    if cfg.joint_attention_dim is not None
                    else None
                ),
            }
            self.items.append((e, module, latent, gate, kwargs))

    def residuals(self, x: torch.Tensor, t: torch.Tensor, step: int, total: int) -> Any:
        out = None
        patched = None
        for e, module, latent, gate, kwargs in self.items:
            keep = _keep(e, step, total)
            hidden = x
            if module.pos_embed is None:
                patched = self.patch_embed(x) if patched is None else patched
                hidden = patched
            blocks = module(
                hidden_states=hidden, timestep=t.expand(x.shape[0]), controlnet_cond=latent,
                conditioning_scale=e.strength * keep, return_dict=False, **kwargs,
            )[0]  # fmt: skip
            if gate is not None:
                blocks = tuple(b * gate for b in blocks)
            out = list(blocks) if out is None else [a + b for a, b in zip(out, blocks, strict=True)]
        return out


def _control_latent(
    ctx: Any, e: Any, batch: int, size: tuple[int, int], no_shift: bool, fit: bool = False
):
    """The control image as the pipeline prepares it (resized to the output size, -1..1),
    encoded by the VAE and scaled (InstantX's SD3 ControlNets: without the shift)."""
    from nodes.sdload import get_module, with_oom_advice

    vae = get_module(ctx, e.vae.source, e.vae.component)
    image = _control_pixels(ctx, e, batch, size, fit).to(device=vae.device, dtype=vae.dtype)

    def encode() -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(image).latent_dist.mean

    mean = with_oom_advice(encode, "encoding the control image")
    shift = 0.0 if no_shift else e.vae.shift_factor
    return (mean - shift) * e.vae.scaling_factor


def _control_pixels(
    ctx: Any, e: Any, batch: int, size: tuple[int, int], fit: bool = False
) -> torch.Tensor:
    """The control image resized to the output size, -1..1, one per latent of the batch;
    ``fit``: first cut to that size's aspect around its centre (ComfyUI's fit to an area)."""
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor

    from nodes.controlnet import _to_pil, center_crop

    height, width = size
    picture = center_crop(e.image, width / height) if fit else e.image
    frames = [
        _to_pil((f.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)) for f in picture
    ]
    image = VaeImageProcessor(vae_scale_factor=8).preprocess(frames, height=height, width=width)
    if image.shape[0] == 1:
        image = image.repeat_interleave(batch, dim=0)
    elif image.shape[0] != batch:
        raise NodeError(
            f"the control image batch ({image.shape[0]}) differs from the latent batch ({batch})"
        )
    return image


def _layerwise(net: Any) -> bool:
    return any(
        getattr(m, "_diffusers_hook", None) is not None
        and m._diffusers_hook.get_hook("layerwise_casting") is not None
        for m in net.modules()
    )


def _compute_dtype(net: Any) -> torch.dtype:
    for p in net.parameters():
        if p.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2, torch.uint8):
            return p.dtype
    return torch.float32


def _sd3_inputs(
    net: Any, pos: Cond, neg: Cond, guided: bool, batch: int, h: int, w: int,
    device: torch.device, dtype: torch.dtype,
) -> dict[str, Any]:  # fmt: skip
    width = net.config.joint_attention_dim
    pe, pp = sd3_context(pos, width), pos.pooled
    if pe.shape[-1] != width:
        raise NodeError(
            f"the prompt is {pe.shape[-1]} wide, but this SD3 model takes {width}: connect the "
            "CLIP that goes with this model"
        )
    if guided:
        ne, np_ = sd3_context(neg, width), neg.pooled
        if ne.shape[1] != pe.shape[1]:
            n = max(ne.shape[1], pe.shape[1])
            ne = torch.nn.functional.pad(ne, (0, 0, 0, n - ne.shape[1]))
            pe = torch.nn.functional.pad(pe, (0, 0, 0, n - pe.shape[1]))
        embeds = torch.cat([ne.repeat(batch, 1, 1), pe.repeat(batch, 1, 1)])
        pooled = torch.cat([np_.repeat(batch, 1), pp.repeat(batch, 1)])
    else:
        embeds, pooled = pe.repeat(batch, 1, 1), pp.repeat(batch, 1)
    inputs: dict[str, Any] = {}
    if dit_context.prepare(net):
        # Without T5: the 256 identical zero rows become one (nodes/dit_context.py).
        patch = int(net.config.patch_size)
        cut, bias = dit_context.collapse(embeds)
        if bias is not None and dit_context.pays(
            embeds.shape[1] - cut.shape[1], embeds.shape[1] + (h // patch) * (w // patch), device
        ):
            # An SD3 ControlNet cannot take the bias (its blocks get no attention kwargs):
            # it is given the whole context, as the pipeline gives it.
            inputs["whole_context"] = embeds.to(device=device, dtype=dtype)
            embeds, inputs["context_bias"] = cut, bias
    return {
        "encoder_hidden_states": embeds.to(device=device, dtype=dtype),
        "pooled_projections": pooled.to(device=device, dtype=dtype),
        **inputs,
    }


def _sd3_call(
    net: Any, x: torch.Tensor, t: torch.Tensor, inputs: dict, cfg: float, guided: bool,
    keep: dict | None = None,
):  # fmt: skip
    """The transformer's (guided) prediction; ``keep``: also the positive prompt's own
    prediction, under ``"cond"``."""
    model_in = torch.cat([x] * 2) if guided else x
    args = {k: v for k, v in inputs.items() if k not in ("context_bias", "whole_context")}
    if "context_bias" in inputs:
        args["joint_attention_kwargs"] = {"context_bias": inputs["context_bias"]}
    pred = net(
        hidden_states=model_in, timestep=t.expand(model_in.shape[0]), return_dict=False, **args
    )[0]
    if guided:
        uncond, cond = pred.chunk(2)
        pred = uncond + cfg * (cond - uncond)
    if keep is not None:
        keep["cond"] = cond if guided else pred
        keep["uncond"] = uncond if guided else None
    return pred


def _flux_inputs(
    net: Any, pos: Cond, neg: Cond, guided: bool, batch: int, h: int, w: int,
    device: torch.device, dtype: torch.dtype,
) -> dict[str, Any]:  # fmt: skip
    width = net.config.joint_attention_dim
    if pos.embeds.shape[-1] != width:
        raise NodeError(
            f"the prompt is {pos.embeds.shape[-1]} wide, but this Flux model takes {width}: "
            "connect the CLIP that goes with this model"
        )
    guidance = None
    if net.config.guidance_embeds:
        default = FLUX_FILL_DEFAULT_GUIDANCE if is_flux_fill(net.config) else FLUX_DEFAULT_GUIDANCE
        g = float(pos.extra.get("guidance", default))
        guidance = torch.full([batch], g, device=device, dtype=torch.float32)

    def side(c: Cond) -> dict[str, Any]:
        e = c.embeds.repeat(batch, 1, 1).to(device=device, dtype=dtype)
        return {
            "encoder_hidden_states": e,
            "pooled_projections": c.pooled.repeat(batch, 1).to(device=device, dtype=dtype),
            "txt_ids": torch.zeros(e.shape[1], 3, device=device, dtype=dtype),
        }

    common = {"guidance": guidance, "img_ids": image_ids(h, w, device, dtype)}

    def with_refs(c: Cond) -> dict[str, Any]:
        ins = {**side(c), **common}
        refs = references(c, batch, device, dtype)
        if refs is not None:
            ins["reference_tokens"] = refs[0]
            ins["img_ids"] = torch.cat([ins["img_ids"], refs[1]])
        return ins

    return {"pos": with_refs(pos), "neg": with_refs(neg) if guided else None}


def _flux_call(
    net: Any, x: torch.Tensor, t: torch.Tensor, inputs: dict, cfg: float, guided: bool,
    keep: dict | None = None,
):  # fmt: skip
    """The transformer's (guided) prediction; ``keep``: also the positive prompt's own
    prediction, under ``"cond"``."""
    timestep = t.expand(x.shape[0]).to(x.dtype) / 1000

    def run(side: dict[str, Any]) -> torch.Tensor:
        args = {k: v for k, v in side.items() if k != "reference_tokens"}
        refs = side.get("reference_tokens")
        hidden = x if refs is None else torch.cat([x, refs], dim=1)
        out = net(hidden_states=hidden, timestep=timestep, return_dict=False, **args)[0]
        return out[:, : x.shape[1]]  # the reference tokens' outputs are dropped

    pred = run(inputs["pos"])
    if keep is not None:
        keep["cond"], keep["uncond"] = pred, None
    if guided:
        uncond = run(inputs["neg"])
        if keep is not None:
            keep["uncond"] = uncond
        pred = uncond + cfg * (pred - uncond)
    return pred


def references(
    c: Cond, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A prompt's Reference Latents (Flux Kontext) as packed tokens [batch, n, 64] and their
    position ids [n, 3]: first coordinate 1, as FluxKontextPipeline gives its image. Several
    references follow ComfyUI's ``offset`` rule: each is placed beside the ones before it
    (right of them if that keeps the block more square, else below), all at index 1. A
    reference with an odd number of latent cells loses its last row / column."""
    refs = c.extra.get("reference_latents")
    if not refs:
        return None
    tokens, ids = [], []
    h_used = w_used = 0
    for ref in refs:
        rh, rw = ref.shape[-2] // 2 * 2, ref.shape[-1] // 2 * 2
        if ref.shape[0] not in (1, batch):
            raise NodeError(
                f"a Reference Latent holds {ref.shape[0]} images but the latent {batch}: "
                "use one reference image or as many as the latent's batch"
            )
        ref = ref[..., :rh, :rw].to(device=device, dtype=dtype)
        tokens.append(pack(ref).expand(batch, -1, -1))
        dh = dw = 0
        if rh + h_used > rw + w_used:
            dw = w_used
        else:
            dh = h_used
        h_used, w_used = max(h_used, rh + dh), max(w_used, rw + dw)
        pos = image_ids(rh, rw, device, dtype)
        pos[:, 0] = 1
        pos[:, 1] += dh // 2
        pos[:, 2] += dw // 2
        ids.append(pos)
    return torch.cat(tokens, dim=1), torch.cat(ids)


def _check_references(positive: list[Cond], negative: list[Cond], family: str, other: bool):
    """Reference Latents go with a plain Flux prompt; elsewhere they would be silently
    ignored, so they are refused."""
    if not any(c.extra.get("reference_latents") for c in (*positive, *negative)):
        return
    if family != "flux":
        raise NodeError(
            f"Reference Latent works with Flux models (FLUX.1 Kontext); this model is "
            f"{FAMILY_TITLES[family]}: remove the Reference Latent node"
        )
    if other:
        raise NodeError(
            "Reference Latent cannot yet be combined with ControlNets, areas, masks, timestep "
            "ranges, several combined prompts, FLUX.1 Fill inpainting or FLUX.1 Canny / Depth: "
            "use it on one plain prompt"
        )
