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
