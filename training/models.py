"""studio-tiny's components: standard diffusers/transformers classes with small configs.

Because they are the stock classes, the saved folder loads through the same code paths as
any Stable Diffusion 1.x diffusers checkpoint (``StableDiffusionPipeline`` included).
"""

from __future__ import annotations

from typing import Any

IMAGE_SIZE = 64
LATENT_SIZE = 16
LATENT_CHANNELS = 4
TEXT_DIM = 64

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": LATENT_CHANNELS,
    "norm_num_groups": 16,
    "sample_size": IMAGE_SIZE,
    "scaling_factor": 1.0,  # replaced by 1/std of the latents after the VAE is trained
    "mid_block_add_attention": False,
}

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": TEXT_DIM,
    "intermediate_size": 4 * TEXT_DIM,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": TEXT_DIM,
    # set from the tokenizer: vocab_size, bos/eos/pad token ids
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": LATENT_SIZE,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    # Attention only at 8x8 and 4x4 (and the middle): at 16x16 it would triple the step time
    # on a CPU. 32 channels at 16x16 is enough for flat shapes.
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 96],
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_DIM,
    "attention_head_dim": 8,  # diffusers' name for the number of heads in SD1 configs
    "norm_num_groups": 16,
    # An attention-pooled text embedding is added to the time embedding: global attributes
    # (the background colour) reach every resolution without going through cross-attention.
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 4,
}

#: The noise schedule. Zero terminal SNR with v-prediction and "trailing" timesteps (Lin et
#: al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", 2023): with SD's own
#: schedule the noisiest training input still holds ~7 % of the image, enough on a 16x16
#: latent for the UNet to read where the shape is from the noise itself, so it never learnt
#: to take the position from the caption (sampling from pure noise, the seed chose it). At
#: zero SNR the first step must predict the image from the caption alone.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}

#: The schedule of the first 4,568 UNet steps (SD 1.x's own), kept for the record.
EPSILON_SCHEDULER_CONFIG: dict[str, Any] = {
    **SCHEDULER_CONFIG,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "timestep_spacing": "leading",
}


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(cfg)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def make_scheduler(config: dict[str, Any] | None = None):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config or SCHEDULER_CONFIG)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_scheduler_config(folder) -> dict[str, Any]:
    """The noise schedule a model folder was trained with (its ``scheduler`` config)."""
    import json
    from pathlib import Path

    cfg = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_diffusers")}


def diffusion_loss(sched, pred, latents, noise, t, min_snr_gamma: float):
    """The training loss of a UNet output ``pred`` for ``latents`` noised with ``noise`` at
    ``t``: epsilon or v target as ``sched`` is configured, min-SNR-gamma weighted (in x0
    terms; for v-prediction floored at the plain v loss's weight 1, which zero terminal SNR
    needs: there the target is the image itself)."""
    import torch

    alphas = sched.alphas_cumprod.to(t.device)[t]
    snr = alphas / (1 - alphas)
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, t)
        weight = torch.clamp(snr + 1, max=min_snr_gamma) / (snr + 1)
    else:
        target = noise
        weight = torch.clamp(snr, max=min_snr_gamma) / snr
    per = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return (weight * per).mean()
