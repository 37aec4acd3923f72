"""Tiny seeded SD3 and Flux components built in code (as diffusers' own pipeline tests do),
and writers of the single-file layouts artists have: transformer files in the original
release layout (and under ``model.diffusion_model.``), SD3.5 and Flux.1 all-in-one files,
separate CLIP / T5 files.

The original layout is written by inverting diffusers' own converters: each original tensor
is filled with its element indices, converted, and the converted tensors say where each
diffusers weight goes (the converters only split, join and reorder).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from nodes.dit import CLIP_TOKENIZER, T5_TOKENIZER, flux_rope_axes
from training.export_flow_single_file import flux_original_shapes

VAE_FACTORS = {"sd3": (1.5305, 0.0609), "flux": (0.3611, 0.1159)}


def clip_tokenizer(pad: str | None = None) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER), **({"pad_token": pad} if pad else {}))


def t5_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(T5_TOKENIZER))


def clip(hidden: int, projection: bool, seed: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=1, vocab_size=49408, max_position_embeddings=77,
        projection_dim=hidden, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2,
        pad_token_id=1,
    )  # fmt: skip
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(cfg).eval()


def t5(d_model: int = 96, seed: int = 5) -> Any:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=32128, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False,
    )  # fmt: skip
    return T5EncoderModel(cfg).eval()


def vae16(family: str) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    scale, shift = VAE_FACTORS[family]
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, in_channels=3, out_channels=3,
        latent_channels=16, layers_per_block=1, norm_num_groups=32, sample_size=64,
        scaling_factor=scale, shift_factor=shift, use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()  # fmt: skip


def tiny_sd3(with_t5: bool = True) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=96, caption_projection_dim=32,
        pooled_projection_dim=80, out_channels=16, pos_embed_max_size=16,
        dual_attention_layers=(0,), qk_norm="rms_norm",
    ).eval()  # fmt: skip
    parts = {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": vae16("sd3"),
        "text_encoder": clip(32, True, 1),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": clip(48, True, 2),
        "tokenizer_2": clip_tokenizer("!"),
        "text_encoder_3": t5() if with_t5 else None,
        "tokenizer_3": t5_tokenizer() if with_t5 else None,
    }
    return parts


def tiny_sd35_large() -> dict[str, Any]:
    """tiny_sd3 with SD3.5 Large's kind of transformer: 64-wide attention heads (one), qk
    RMS norm, no second attention; what Stability's SD3.5 ControlNets are made for."""
    from diffusers import SD3Transformer2DModel

    parts = tiny_sd3()
    torch.manual_seed(6)
    parts["transformer"] = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
        num_attention_heads=1, joint_attention_dim=96, caption_projection_dim=64,
        pooled_projection_dim=80, out_channels=16, pos_embed_max_size=16, qk_norm="rms_norm",
    ).eval()  # fmt: skip
    return parts


def sd35_official_controlnet(transformer: Any, seed: int = 8) -> Any:
    """An SD3ControlNetModel configured as diffusers' conversion script builds Stability's
    SD3.5 ControlNets (no prompt stream, the model's patch embedding, the real pooled
    prompt), with random non-zero input and output layers so that it acts."""
    from diffusers import SD3ControlNetModel

    torch.manual_seed(seed)
    cfg = transformer.config
    net = SD3ControlNetModel(
        patch_size=cfg.patch_size, in_channels=cfg.in_channels, num_layers=2,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=None, caption_projection_dim=transformer.inner_dim,
        pooled_projection_dim=cfg.pooled_projection_dim, out_channels=cfg.out_channels,
        pos_embed_max_size=None, pos_embed_type=None, use_pos_embed=False,
        force_zeros_for_pooled_projection=False,
    )  # fmt: skip
    with torch.no_grad():
        for p in (*net.controlnet_blocks.parameters(), *net.pos_embed_input.parameters()):
            p.normal_(0, 0.3)
    return net.eval()


#: SD3ControlNetModel's block layer names in Stability's SD3.5 ControlNet files (the
#: mapping of diffusers' scripts/convert_sd3_controlnet_to_diffusers.py, read backwards).
SD35_CONTROLNET_NAMES = {
    "attn.to_out.0.": "attn.proj.",
    "ff.net.0.proj.": "mlp.fc1.",
    "ff.net.2.": "mlp.fc2.",
    "norm1.linear.": "adaLN_modulation.1.",
}


def sd35_controlnet_original(net: Any) -> dict[str, torch.Tensor]:
    """A diffusers SD3.5 ControlNet's weights in Stability's own file layout: q, k and v
    of each block fused into attn.qkv, the other block layers under their names."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for k in list(state):
        if not k.startswith("transformer_blocks.") or ".attn.to_q." not in k:
            continue
        kind = k.rsplit(".", 1)[1]
        head = k.split(".attn.")[0]
        fused = [state.pop(f"{head}.attn.{n}.{kind}") for n in ("to_q", "to_k", "to_v")]
        out[f"{head}.attn.qkv.{kind}"] = torch.cat(fused)
    for k, v in state.items():
        for new, old in SD35_CONTROLNET_NAMES.items():
            k = k.replace(f".{new}", f".{old}")
        out[k] = v
    return out


def tiny_flux(guidance: bool = True) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=96, pooled_projection_dim=32,
        guidance_embeds=guidance, axes_dims_rope=flux_rope_axes(16),
    ).eval()  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae16("flux"),
        "text_encoder": clip(32, False, 1),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": t5(),
        "tokenizer_2": t5_tokenizer(),
    }


def tiny_flux_fill() -> dict[str, Any]:
    """Tiny FLUX.1 Fill parts: the tiny Flux's, its transformer taking the packed noisy
    latent (16 channels x 2x2 = 64), the masked image's latent (64) and the mask (8x8
    pixels per cell of the 8x VAE, x 2x2 = 256): 384 in, 64 out, as the released model."""
    from diffusers import FluxTransformer2DModel

    parts = tiny_flux()
    torch.manual_seed(0)
    parts["transformer"] = FluxTransformer2DModel(
        patch_size=1, in_channels=384, out_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=96,
        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=flux_rope_axes(16),
    ).eval()  # fmt: skip
    return parts


def tiny_flux_control() -> dict[str, Any]:
    """Tiny FLUX.1 Canny / Depth [dev] parts: the tiny Flux's, its transformer taking the
    packed noisy latent (64) and the packed control image's latent (64): 128 in, 64 out, as
    the released models."""
    from diffusers import FluxTransformer2DModel

    parts = tiny_flux()
    torch.manual_seed(0)
    parts["transformer"] = FluxTransformer2DModel(
        patch_size=1, in_channels=128, out_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=96,
        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=flux_rope_axes(16),
    ).eval()  # fmt: skip
    return parts


def sd3_pipeline(parts: dict[str, Any], scheduler: Any = None) -> Any:
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(**{**parts, "scheduler": scheduler or parts["scheduler"]})


def flux_pipeline(parts: dict[str, Any], scheduler: Any = None) -> Any:
    from diffusers import FluxPipeline

    return FluxPipeline(**{**parts, "scheduler": scheduler or parts["scheduler"]})


# -- the original key layouts -------------------------------------------------------------------


def sd3_original_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    d, p, n = cfg["attention_head_dim"], cfg["patch_size"], cfg["num_layers"]
    m = cfg["pos_embed_max_size"]
    s: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, m * m, h),
        "x_embedder.proj.weight": (h, cfg["in_channels"], p, p),
        "x_embedder.proj.bias": (h,),
        "t_embedder.mlp.0.weight": (h, 256),
        "t_embedder.mlp.0.bias": (h,),
        "t_embedder.mlp.2.weight": (h, h),
        "t_embedder.mlp.2.bias": (h,),
        "y_embedder.mlp.0.weight": (h, cfg["pooled_projection_dim"]),
        "y_embedder.mlp.0.bias": (h,),
        "y_embedder.mlp.2.weight": (h, h),
        "y_embedder.mlp.2.bias": (h,),
        "context_embedder.weight": (h, cfg["joint_attention_dim"]),
        "context_embedder.bias": (h,),
        "final_layer.linear.weight": (p * p * cfg["out_channels"], h),
        "final_layer.linear.bias": (p * p * cfg["out_channels"],),
        "final_layer.adaLN_modulation.1.weight": (2 * h, h),
        "final_layer.adaLN_modulation.1.bias": (2 * h,),
    }
    dual = set(cfg.get("dual_attention_layers") or ())
    for i in range(n):
        for block in ("x_block", "context_block"):
            b = f"joint_blocks.{i}.{block}."
            pre_only = block == "context_block" and i == n - 1
            attns = ["attn", "attn2"] if block == "x_block" and i in dual else ["attn"]
            for a in attns:
                s[b + a + ".qkv.weight"], s[b + a + ".qkv.bias"] = (3 * h, h), (3 * h,)
                if cfg.get("qk_norm"):
                    s[b + a + ".ln_q.weight"], s[b + a + ".ln_k.weight"] = (d,), (d,)
                if not pre_only:
                    s[b + a + ".proj.weight"], s[b + a + ".proj.bias"] = (h, h), (h,)
            mods = 2 if pre_only else (9 if len(attns) == 2 else 6)
            s[b + "adaLN_modulation.1.weight"] = (mods * h, h)
            s[b + "adaLN_modulation.1.bias"] = (mods * h,)
            if not pre_only:
                s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"] = (4 * h, h), (4 * h,)
                s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"] = (h, 4 * h), (h,)
    return s


def to_original(transformer: Any, family: str) -> dict[str, torch.Tensor]:
    """A diffusers transformer's weights in the original release layout (by inverting
    diffusers' own converter)."""
    from diffusers.loaders import single_file_utils as sfu

    cfg = dict(transformer.config)
    shapes = (sd3_original_shapes if family == "sd3" else flux_original_shapes)(cfg)
    index: dict[str, torch.Tensor] = {}
    start = 0
    for k, shape in shapes.items():
        n = int(torch.tensor(shape).prod())
        index[k] = torch.arange(start, start + n, dtype=torch.float64).reshape(shape)
        start += n
    from nodes.dit import _flux_converter

    convert = (
        sfu.convert_sd3_transformer_checkpoint_to_diffusers
        if family == "sd3"
        else _flux_converter(cfg)
    )
    converted = convert(dict(index))
    flat = torch.zeros(start, dtype=torch.float32)
    state = transformer.state_dict()
    assert set(converted) == set(state), set(converted) ^ set(state)
    for k, where in converted.items():
        flat[where.flatten().long()] = state[k].detach().float().flatten()
    out, pos = {}, 0
    for k, shape in shapes.items():
        n = int(torch.tensor(shape).prod())
        out[k] = flat[pos : pos + n].reshape(shape).clone()
        pos += n
    return out


def save(state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> Path:
    from safetensors.torch import save_file

    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def ldm_vae(vae: Any) -> dict[str, torch.Tensor]:
    from nodes.ldm_keys import vae_to_ldm

    state = vae_to_ldm(vae.state_dict(), dict(vae.config))
    return {k.removeprefix("first_stage_model."): v for k, v in state.items()}


def clip_file_state(encoder: Any) -> dict[str, torch.Tensor]:
    """A CLIP text tower as ComfyUI's clip_l / clip_g files hold it (transformers keys)."""
    state = {k: v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    return {
        k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
        for k, v in state.items()
    }


def t5_file_state(encoder: Any) -> dict[str, torch.Tensor]:
    state = dict(encoder.state_dict())
    state.pop("encoder.embed_tokens.weight", None)  # t5xxl files hold "shared" only
    return state


def sd3_all_in_one(parts: dict[str, Any], path: Path) -> Path:
    state = {
        f"model.diffusion_model.{k}": v for k, v in to_original(parts["transformer"], "sd3").items()
    }
    state.update({f"first_stage_model.{k}": v for k, v in ldm_vae(parts["vae"]).items()})
    for comp, name in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        for k, v in clip_file_state(parts[comp]).items():
            state[f"text_encoders.{name}.transformer.{k}"] = v
    if parts.get("text_encoder_3") is not None:
        for k, v in t5_file_state(parts["text_encoder_3"]).items():
            state[f"text_encoders.t5xxl.transformer.{k}"] = v
    return save(state, path)


def flux_all_in_one(parts: dict[str, Any], path: Path, fp8: bool = False) -> Path:
    """A Flux.1 all-in-one file as Comfy-Org ships flux1-dev-fp8 / flux1-schnell-fp8: the
    original-layout transformer under ``model.diffusion_model.`` (every tensor fp8 with
    ``fp8``, and T5's too, as in flux1-dev-fp8), the LDM-layout VAE under ``vae.``, CLIP-L
    and T5-XXL under ``text_encoders.``."""
    transformer = to_original(parts["transformer"], "flux")
    t5 = t5_file_state(parts["text_encoder_2"])
    if fp8:
        transformer = {k: v.to(torch.float8_e4m3fn) for k, v in transformer.items()}
        t5 = {k: v.to(torch.float8_e4m3fn) for k, v in t5.items()}
    state = {f"model.diffusion_model.{k}": v for k, v in transformer.items()}
    state.update({f"vae.{k}": v for k, v in ldm_vae(parts["vae"]).items()})
    for k, v in clip_file_state(parts["text_encoder"]).items():
        state[f"text_encoders.clip_l.transformer.{k}"] = v
    for k, v in t5.items():
        state[f"text_encoders.t5xxl.transformer.{k}"] = v
    return save(state, path)


def fp8_rounded(transformer: Any) -> Any:
    """A copy of a model (transformer, T5) whose every weight is its fp8 (e4m3fn) rounding."""
    import copy

    out = copy.deepcopy(transformer)
    with torch.no_grad():
        for v in out.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.to(torch.float8_e4m3fn).to(v.dtype))
    return out


def save_gguf(state: dict[str, torch.Tensor], path: Path, arch: str = "flux") -> Path:
    """Write weights as a GGUF file as city96's converter does: 2-D weights Q8_0, the rest
    F32 (tensor names as in the original layout)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch=arch)
    for k, v in state.items():
        data = v.detach().float().numpy().astype(np.float32)
        if data.ndim == 2 and data.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(k, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(k, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


#: transformers' T5 names -> llama.cpp's (gguf-py's tensor_mapping), per block and on top.
_T5_TO_GGUF_BLOCK = {
    "layer.0.layer_norm": "attn_norm",
    "layer.0.SelfAttention.q": "attn_q",
    "layer.0.SelfAttention.k": "attn_k",
    "layer.0.SelfAttention.v": "attn_v",
    "layer.0.SelfAttention.o": "attn_o",
    "layer.0.SelfAttention.relative_attention_bias": "attn_rel_b",
    "layer.1.layer_norm": "ffn_norm",
    "layer.1.DenseReluDense.wi_0": "ffn_gate",
    "layer.1.DenseReluDense.wi_1": "ffn_up",
    "layer.1.DenseReluDense.wo": "ffn_down",
}


def save_gguf_t5(
    encoder: Any, path: Path, qtype: str = "Q8_0", block_count: int | None = None
) -> Path:
    """A T5 encoder as llama.cpp's T5 converter writes it (city96's t5-v1_1-xxl-encoder
    GGUFs): llama.cpp tensor names, ``t5encoder.*`` metadata; 2-D weights in ``qtype``
    (F32, F16 or Q8_0: those whose rows are a multiple of 32 long, as llama.cpp's quantiser
    keeps the others F16), norms F32. ``block_count``: what the metadata claims instead of
    the real layer count (a hostile file)."""
    import gguf
    import numpy as np

    cfg = encoder.config
    writer = gguf.GGUFWriter(str(path), arch="t5encoder")
    writer.add_context_length(512)
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_block_count(cfg.num_layers if block_count is None else block_count)
    writer.add_head_count(cfg.num_heads)
    writer.add_key_length(cfg.d_kv)
    writer.add_value_length(cfg.d_kv)
    writer.add_layer_norm_rms_eps(cfg.layer_norm_epsilon)
    writer.add_relative_attn_buckets_count(cfg.relative_attention_num_buckets)
    for k, v in encoder.state_dict().items():
        if k == "encoder.embed_tokens.weight":
            continue  # tied to shared
        if k == "shared.weight":
            name = "token_embd.weight"
        elif k == "encoder.final_layer_norm.weight":
            name = "enc.output_norm.weight"
        else:
            block, _, rest = k.removeprefix("encoder.block.").partition(".")
            name = f"enc.blk.{block}.{_T5_TO_GGUF_BLOCK[rest.removesuffix('.weight')]}.weight"
        data = v.detach().float().numpy().astype(np.float32)
        if data.ndim == 2 and qtype == "Q8_0" and data.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif data.ndim == 2 and qtype != "F32":
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sd3_controlnet(transformer):
    """An SD3 ControlNet (the diffusers layout InstantX's use) built from the tiny
    transformer, with non-zero output and input layers so it acts."""
    import diffusers

    torch.manual_seed(4)
    cn = diffusers.SD3ControlNetModel.from_transformer(
        transformer, num_layers=1, num_extra_conditioning_channels=0
    )
    with torch.no_grad():
        for p in (*cn.controlnet_blocks.parameters(), *cn.pos_embed_input.parameters()):
            p.normal_(0, 0.3)
    return cn.eval()


def flux_controlnet(transformer, seed: int):
    """A Flux ControlNet in the diffusers layout (InstantX's, Shakker-Labs') built from the
    tiny transformer, with non-zero output and input layers so it acts."""
    import diffusers

    torch.manual_seed(seed)
    cfg = transformer.config
    cn = diffusers.FluxControlNetModel.from_transformer(
        transformer, num_layers=1, num_single_layers=1,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
    )  # fmt: skip
    with torch.no_grad():
        for m in (cn.controlnet_blocks, cn.controlnet_single_blocks, cn.controlnet_x_embedder):
            for p in m.parameters():
                p.normal_(0, 0.3)
    return cn.eval()


@contextlib.contextmanager
def transformer_calls(name: str) -> Any:
    """Every transformer call the Sampler makes inside through ``nodes.dit.<name>``
    (``_flux_call`` or ``_sd3_call``), as (net, x, t, inputs, guided, prediction)."""
    from nodes import dit

    original = getattr(dit, name)
    calls: list[tuple] = []

    def recording(net, x, t, inputs, cfg, guided, keep=None):
        pred = original(net, x, t, inputs, cfg, guided, keep)
        calls.append((net, x.detach().clone(), t.detach().clone(), inputs, guided, pred.clone()))
        return pred

    setattr(dit, name, recording)
    try:
        yield calls
    finally:
        setattr(dit, name, original)


def flux_calls() -> Any:
    """Every Flux transformer call the Sampler makes inside (``nodes.dit._flux_call``)."""
    return transformer_calls("_flux_call")


def sd3_calls() -> Any:
    """Every SD3 transformer call the Sampler makes inside (``nodes.dit._sd3_call``)."""
    return transformer_calls("_sd3_call")
