"""Write the diffusers/transformers configs of the supported model families.

These are the published configs of Stable Diffusion 1.x, 2.x (512 eps and 768 v)
and SDXL base, written out here so a single-file checkpoint loads with no network.
Run once; the JSON output is committed.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCHED_BASE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# OpenCLIP ViT-H text tower as diffusers ships it for SD2: the last layer is dropped
# (SD2 conditions on the penultimate layer).
CLIP_H = {
    **CLIP_L,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}

CLIP_BIGG = {
    **CLIP_L,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

UNET_SD1 = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "sample_size": 64,
}

UNET_SD2 = {
    **UNET_SD1,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
}

UNET_SDXL = {
    **UNET_SD1,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
}

FAMILIES = {
    "sd1": {
        "unet": UNET_SD1,
        "vae": VAE,
        "text_encoder": CLIP_L,
        "scheduler": {"_class_name": "PNDMScheduler", **SCHED_BASE},
    },
    "sd2": {
        "unet": UNET_SD2,
        "vae": {**VAE, "sample_size": 512},
        "text_encoder": CLIP_H,
        "scheduler": {"_class_name": "DDIMScheduler", **SCHED_BASE},
    },
    "sd2-v": {
        "unet": {**UNET_SD2, "sample_size": 96},
        "vae": {**VAE, "sample_size": 768},
        "text_encoder": CLIP_H,
        "scheduler": {
            "_class_name": "DDIMScheduler",
            **SCHED_BASE,
            "prediction_type": "v_prediction",
        },
    },
    "sdxl": {
        "unet": UNET_SDXL,
        "vae": {**VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": CLIP_L,
        "text_encoder_2": CLIP_BIGG,
        "scheduler": {
            "_class_name": "EulerDiscreteScheduler",
            **SCHED_BASE,
            "interpolation_type": "linear",
            "use_karras_sigmas": False,
        },
    },
}

#: The flow-match schedulers of the diffusion transformers (their published
#: scheduler_config.json). Only the scheduler: a single file's transformer, VAE and text
#: encoder configs are read off its tensor shapes (nodes/dit.py).
FLOW_FAMILIES = {
    "sd3": {
        "scheduler": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            "shift": 3.0,
        },
    },
    "flux": {
        "scheduler": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            "shift": 3.0,
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "base_image_seq_len": 256,
            "max_image_seq_len": 4096,
        },
    },
}


def main() -> None:
    for family, parts in {**FAMILIES, **FLOW_FAMILIES}.items():
        folder = HERE / family
        folder.mkdir(parents=True, exist_ok=True)
        for name, cfg in parts.items():
            (folder / f"{name}.json").write_text(json.dumps(cfg, indent=2) + "\n", "utf-8")
    print("wrote", ", ".join([*FAMILIES, *FLOW_FAMILIES]))


if __name__ == "__main__":
    main()
