"""studio-tiny-flow's components: Stable Diffusion 3's diffusers classes with tiny configs.

- transformer: ``SD3Transformer2DModel`` (MMDiT), patch 2 on studio-tiny's 16x16x4 latent
  (64 image tokens), joint blocks of width 128;
- text encoders: two ``CLIPTextModelWithProjection`` (``text_encoder`` width 64 with an
  identity projection as SD3's CLIP-L, ``text_encoder_2`` width 96) reading studio-tiny's
  CLIP tokenizer; no T5 (``text_encoder_3``/``tokenizer_3`` absent:
  ``StableDiffusion3Pipeline`` then feeds 256 zero tokens in its place, and so does training);
- VAE: studio-tiny's ``AutoencoderKL``, frozen (``shift_factor`` 0, which SD3's pipeline needs);
- scheduler: ``FlowMatchEulerDiscreteScheduler`` with ``shift`` :data:`SHIFT`.

Everything here imports torch/diffusers/transformers only inside functions and needs nothing
beyond them (the GPU machine has no Studio GUI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LATENT_SIZE = 16
LATENT_CHANNELS = 4
TEXT_DIM = 64
#: The second encoder is wider: diffusers' single-file loader tells SD3's CLIP-L from CLIP-G
#: by their widths (768 and 1280 in the real model), so the two must differ.
TEXT_DIM_2 = 96
#: Tokens of the absent T5 encoder: StableDiffusion3Pipeline's default max_sequence_length.
T5_TOKENS = 256
CLIP_TOKENS = 77
#: The timestep shift (training and the exported scheduler). SD3 uses 3.0 at 1024 px.
SHIFT = 3.0

#: The shipped folder.
FOLDER = Path(__file__).resolve().parent.parent / "resources/models/checkpoints/studio-tiny-flow"
#: Sampling defaults (what the tests and benchmark use, and what its workflow should set).
DEFAULT_STEPS = 8
DEFAULT_CFG = 3.0
#: The guidance interval (studio.recipes.guide_from): no guidance for the first 40 % of the
#: sampling (the first 4 of 8 steps at shift 3), so that seeds vary the shape's place and size
#: more (training/README.md, "Seed variety"); adherence stays. Through Studio's graph only:
#: StableDiffusion3Pipeline guides every step.
DEFAULT_GUIDANCE_START = 0.4

TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": LATENT_SIZE,
    "patch_size": 2,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "num_layers": 6,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": TEXT_DIM + TEXT_DIM_2,  # the two CLIPs' hidden states side by side
    "caption_projection_dim": 128,
    "pooled_projection_dim": TEXT_DIM + TEXT_DIM_2,  # the two CLIPs' pooled outputs
    "pos_embed_max_size": LATENT_SIZE // 2,
    "qk_norm": "rms_norm",  # as SD3.5: keeps attention logits bounded at a high learning rate
}

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": TEXT_DIM,
    "intermediate_size": 4 * TEXT_DIM,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_TOKENS,
    "hidden_act": "quick_gelu",
    "projection_dim": TEXT_DIM,
}

TEXT_CONFIG_2: dict[str, Any] = {
    **TEXT_CONFIG,
    "hidden_size": TEXT_DIM_2,
    "intermediate_size": 4 * TEXT_DIM_2,
    "projection_dim": TEXT_DIM_2,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": SHIFT,
}


def make_transformer(config: dict[str, Any] | None = None):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**(config or TRANSFORMER_CONFIG))


def make_text_encoder(tokenizer, config: dict[str, Any] | None = None):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(config or TEXT_CONFIG),
    )
    return CLIPTextModelWithProjection(cfg)


def make_scheduler(config: dict[str, Any] | None = None):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**(config or SCHEDULER_CONFIG))


def shift_sigma(u, shift: float):
    """The scheduler's timestep shift applied to ``u`` in [0, 1]: ``s u / (1 + (s - 1) u)``."""
    return shift * u / (1 + (shift - 1) * u)


def encode_text(text_encoders, ids, t5_tokens: int = T5_TOKENS):
    """What ``StableDiffusion3Pipeline.encode_prompt`` gives without T5, for token ids
    (B x 77) read by both CLIPs: (prompt_embeds B x (77 + t5_tokens) x D, pooled B x P).

    Each CLIP's penultimate hidden states, side by side (zero-padded to the transformer's
    ``joint_attention_dim``), then ``t5_tokens`` zero tokens; the pooled vector is both
    CLIPs' projected pooled outputs side by side."""
    import torch

    hidden, pooled = [], []
    for te in text_encoders:
        out = te(ids, output_hidden_states=True)
        pooled.append(out[0])
        hidden.append(out.hidden_states[-2])
    clip = torch.cat(hidden, dim=-1)
    zeros = clip.new_zeros(clip.shape[0], t5_tokens, clip.shape[-1])
    return torch.cat([clip, zeros], dim=1), torch.cat(pooled, dim=-1)


def sd3_forward(transformer, xt, sigma, ctx, pooled):
    """The velocity an SD3 transformer (prepared by ``nodes.dit_context.prepare``) predicts
    for latents ``xt`` at noise levels ``sigma`` (B, 0..1), ``ctx`` from :func:`encode_text`
    with ``t5_tokens=1``: T5's zero rows as that one row with attention logit ln 256, the
    same loss and gradients as the 256 rows (nodes/dit_context.py)."""
    import math

    return transformer(
        hidden_states=xt,
        timestep=sigma * 1000,
        encoder_hidden_states=ctx,
        pooled_projections=pooled,
        joint_attention_kwargs={"context_bias": math.log(T5_TOKENS)},
        return_dict=False,
    )[0]


def load_pipeline(folder=FOLDER):
    """``StableDiffusion3Pipeline`` of an exported folder, offline (T5 passed as absent)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(folder), text_encoder_3=None, tokenizer_3=None, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the Flux-layout sibling: studio-tiny-flux ----------------------------------------------------
#
# - transformer: ``FluxTransformer2DModel`` (double-stream then single-stream blocks, width 128),
#   on studio-tiny's 16x16x4 latent packed in 2x2 patches as FluxPipeline packs it (16 channels
#   in, 64 image tokens); no guidance embedding (schnell-like): Flux dev's guidance input is a
#   distillation of CFG from a teacher, which a from-scratch run does not have, so the model is
#   sampled with true CFG (cfg > 1 and a negative prompt; FluxPipeline's ``true_cfg_scale``);
# - text: ``CLIPTextModel`` (studio-tiny's, its pooled output) and ``T5EncoderModel`` (d_model
#   64, T5 v1.1's gated-GELU layout and 32128-token vocabulary, so Studio's shipped T5
#   SentencePiece tokenizer reads it) whose hidden states are the transformer's context,
#   :data:`FLUX_T5_TOKENS` long (``tokenizer_2``'s ``model_max_length`` in the folder);
# - VAE: studio-tiny's, frozen; scheduler: static shift :data:`SHIFT` (no dynamic shifting).

FLUX_FOLDER = FOLDER.parent / "studio-tiny-flux"
#: T5 tokens the tiny Flux reads (FluxPipeline's max_sequence_length; the real one: 512).
FLUX_T5_TOKENS = 32
T5_DIM = 64
T5_TOKENIZER = Path(__file__).resolve().parent.parent / "resources" / "tokenizers" / "t5"

FLUX_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": LATENT_CHANNELS * 4,
    "out_channels": None,
    "num_layers": 3,
    "num_single_layers": 6,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": T5_DIM,
    "pooled_projection_dim": TEXT_DIM,
    "guidance_embeds": False,
    "axes_dims_rope": [4, 14, 14],  # Studio's flux_rope_axes(32): single files read back alike
}

T5_CONFIG: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": T5_DIM,
    "d_kv": 16,
    "d_ff": 2 * T5_DIM,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "is_encoder_decoder": False,
    "use_cache": False,
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
}

FLUX_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": SHIFT,
    "use_dynamic_shifting": False,
}


def make_flux_transformer(config: dict[str, Any] | None = None):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**(config or FLUX_TRANSFORMER_CONFIG))


def make_clip_text_model(tokenizer, config: dict[str, Any] | None = None):
    """Flux's CLIP: a ``CLIPTextModel`` (its pooled output, no projection)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {k: v for k, v in (config or TEXT_CONFIG).items() if k != "projection_dim"}
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **cfg,
        )
    )


def make_t5(config: dict[str, Any] | None = None):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**(config or T5_CONFIG)))


def t5_tokenizer(max_length: int = FLUX_T5_TOKENS):
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(T5_TOKENIZER), model_max_length=max_length)


def encode_text_flux(text_encoders, ids, t5_ids):
    """What ``FluxPipeline.encode_prompt`` gives: (T5's last hidden states B x L x D, CLIP's
    pooled output B x P) for CLIP ids (B x 77) and T5 ids (B x L)."""
    clip, t5 = text_encoders
    pooled = clip(ids, output_hidden_states=False).pooler_output
    return t5(t5_ids, output_hidden_states=False)[0], pooled


def flux_pack(x):
    """B x C x H x W -> B x (H/2 W/2) x 4C, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def flux_unpack(x, h: int, w: int):
    """The inverse of :func:`flux_pack` (``FluxPipeline._unpack_latents`` in latent units)."""
    b, _, c4 = x.shape
    x = x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def flux_ids(h: int, w: int, text_len: int, device, dtype):
    """(img_ids (h/2 w/2) x 3, txt_ids text_len x 3) as FluxPipeline makes them."""
    import torch

    img = torch.zeros(h // 2, w // 2, 3)
    img[..., 1] += torch.arange(h // 2)[:, None]
    img[..., 2] += torch.arange(w // 2)[None, :]
    img = img.reshape(-1, 3).to(device=device, dtype=dtype)
    return img, torch.zeros(text_len, 3, device=device, dtype=dtype)


def flux_forward(transformer, xt, sigma, ctx, pooled):
    """The velocity (B x C x H x W) a Flux transformer predicts for latents ``xt`` at noise
    levels ``sigma`` (B, in 0..1; FluxPipeline passes ``t / 1000``)."""
    _, _, h, w = xt.shape
    img_ids, txt_ids = flux_ids(h, w, ctx.shape[1], xt.device, xt.dtype)
    out = transformer(
        hidden_states=flux_pack(xt),
        timestep=sigma.to(xt.dtype),
        encoder_hidden_states=ctx,
        pooled_projections=pooled,
        txt_ids=txt_ids,
        img_ids=img_ids,
        guidance=None,
        return_dict=False,
    )[0]
    return flux_unpack(out, h, w)


def load_flux_pipeline(folder=FLUX_FOLDER):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_from_sd3(flux, sd3, clip_l_projection=None) -> dict[str, int]:
    """Start a tiny Flux transformer from a trained tiny SD3 one (studio-tiny-flow), in place.

    Flux's double-stream blocks are SD3's joint blocks under the same diffusers names (two
    streams, joint attention, adaLN-Zero modulation, RMS q/k norms), so block ``i`` takes joint
    block ``i`` where the shapes agree. What differs:

    - SD3's last joint block does not update the context (``context_pre_only``): its
      context norm gives (scale, shift) only; Flux's takes them and its context gates are
      zeroed, so that block leaves the context as SD3's did;
    - SD3 patchifies with a convolution and adds a fixed position table; Flux packs the same
      2x2 patches (channel, row, column order, the convolution's) and places them by rotary
      embedding: the patch weights are copied, the position table's mean goes into the bias,
      and positions are learnt again;
    - SD3 unpatchifies (row, column, channel); Flux unpacks (channel, row, column): the output
      rows are permuted;
    - the pooled vector: Flux's is CLIP-L's alone, SD3's is CLIP-L's (its projection
      ``clip_l_projection``, if any, folded in here) beside CLIP-G's: CLIP-L's columns;
    - Flux's context is T5's (learnt from scratch, as its ``context_embedder``), and its
      single-stream blocks start as identities (``proj_out`` zero), so the start is SD3's
      model on a new text stream.

    Returns the counts of tensors copied and started anew."""
    import torch

    src = sd3.state_dict()
    dst = flux.state_dict()
    copied = fresh = 0
    new: dict[str, torch.Tensor] = {}
    n = flux.config.num_layers
    if n != sd3.config.num_layers:
        raise ValueError(f"the Flux model needs {sd3.config.num_layers} double blocks, not {n}")
    last = f"transformer_blocks.{n - 1}."
    for k, v in dst.items():
        s = src.get(k)
        if s is not None and s.shape == v.shape:
            new[k] = s.clone()
            copied += 1
        elif k in (last + "norm1_context.linear.weight", last + "norm1_context.linear.bias"):
            d = v.shape[0] // 6  # shift, scale, gate (attention), shift, scale, gate (mlp)
            t = torch.zeros_like(v)
            t[:d], t[d : 2 * d] = src[k][d : 2 * d], src[k][:d]  # SD3's order: scale, shift
            new[k] = t
            copied += 1
        elif k.startswith("single_transformer_blocks.") and ".proj_out." in k:
            new[k] = torch.zeros_like(v)
            fresh += 1
        else:
            fresh += 1
    c = flux.config.in_channels // 4
    conv = src["pos_embed.proj.weight"]  # dim x C x 2 x 2: (channel, row, column) flattened
    new["x_embedder.weight"] = conv.reshape(conv.shape[0], -1).clone()
    new["x_embedder.bias"] = src["pos_embed.proj.bias"] + src["pos_embed.pos_embed"][0].mean(0)
    rows = torch.arange(4 * c).reshape(2, 2, c).permute(2, 0, 1).reshape(-1)  # Flux -> SD3
    new["proj_out.weight"] = src["proj_out.weight"][rows].clone()
    new["proj_out.bias"] = src["proj_out.bias"][rows].clone()
    w = src["time_text_embed.text_embedder.linear_1.weight"]
    p = flux.config.pooled_projection_dim
    w_l = w[:, :p] if clip_l_projection is None else w[:, :p] @ clip_l_projection
    new["time_text_embed.text_embedder.linear_1.weight"] = w_l.clone()
    copied += 5
    fresh -= 5
    flux.load_state_dict({**dst, **new})
    return {"copied": copied, "fresh": fresh}
