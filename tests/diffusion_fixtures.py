"""Tiny seeded Stable Diffusion components for the diffusion node tests (CPU, fast).

Also writes a diffusers model back into the original (LDM) single-file key layout,
the inverse of diffusers' single-file conversion, so single-file loading can be
tested without any real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from studio import recipes
from studio.library import installed_registry
from studio.modelfiles import RESOURCES

TOKENIZER_DIR = RESOURCES / "tokenizers" / "clip"

SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def tokenizer(pad: str | None = None) -> Any:
    from transformers import CLIPTokenizer

    kwargs = {"pad_token": pad} if pad else {}
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), **kwargs)


def _clip_config(projection: bool = False) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        architectures=["CLIPTextModelWithProjection" if projection else "CLIPTextModel"],
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="gelu" if projection else "quick_gelu",
    )


def tiny_vae(scaling_factor: float = 0.18215) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
    ).eval()


def tiny_sd1() -> dict[str, Any]:
    """Components of a tiny SD1-shaped pipeline (one CLIP encoder, 4-channel latents)."""
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(_clip_config()).eval()
    return {
        "unet": unet,
        "vae": tiny_vae(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer(),
        "scheduler": PNDMScheduler.from_config(SCHEDULER_CONFIG),
    }


def tiny_sdxl() -> dict[str, Any]:
    """Components of a tiny SDXL-shaped pipeline (two encoders, pooled + time ids)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
        norm_num_groups=4,
    ).eval()
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(_clip_config()).eval()
    torch.manual_seed(3)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(projection=True)).eval()
    sched = {**SCHEDULER_CONFIG, "_class_name": "EulerDiscreteScheduler"}
    return {
        "unet": unet,
        "vae": tiny_vae(0.13025),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer(),
        "tokenizer_2": tokenizer(pad="!"),
        "scheduler": EulerDiscreteScheduler.from_config(sched),
    }


def tiny_custom() -> dict[str, Any]:
    """Like the embedded studio-tiny model: a 4x VAE, a UNet with a pooled-text embedding
    (``addition_embed_type="text"``), a DDPM scheduler config."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=4,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
    ).eval()
    torch.manual_seed(1)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=1.7,
        mid_block_add_attention=False,
    ).eval()
    torch.manual_seed(2)
    sched = {**SCHEDULER_CONFIG, "_class_name": "DDPMScheduler"}
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": CLIPTextModel(_clip_config()).eval(),
        "tokenizer": tokenizer(),
        "scheduler": DDPMScheduler.from_config(sched),
    }


def sd1_pipeline(parts: dict[str, Any], scheduler: Any = None) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **{**parts, "scheduler": scheduler or parts["scheduler"]},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_pipeline(parts: dict[str, Any], scheduler: Any = None) -> Any:
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**{**parts, "scheduler": scheduler or parts["scheduler"]})


def save_folder(pipe: Any, folder: Path) -> Path:
    pipe.save_pretrained(str(folder))
    return folder


# -- diffusers -> original (LDM) layout (nodes/ldm_keys.py) ----------------------------------

from nodes.ldm_keys import (  # noqa: E402
    checkpoint_to_ldm,
    clip_to_ldm,
    open_clip_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)

__all__ = ["checkpoint_to_ldm", "clip_to_ldm", "open_clip_to_ldm", "unet_to_ldm", "vae_to_ldm"]


def write_ldm_checkpoint(parts: dict[str, Any], path: Path, *, sidecar: bool = True) -> Path:
    """Write tiny components as one LDM-layout .safetensors (+ a ``.json`` config beside it)."""
    from safetensors.torch import save_file

    unet_cfg = dict(parts["unet"].config)
    vae_cfg = dict(parts["vae"].config)
    sdxl = "text_encoder_2" in parts
    state = checkpoint_to_ldm(
        parts["unet"].state_dict(),
        unet_cfg,
        parts["vae"].state_dict(),
        vae_cfg,
        parts["text_encoder"].state_dict(),
        parts["text_encoder_2"].state_dict() if sdxl else None,
    )
    save_file(state, str(path))
    if sidecar:
        configs = {
            "family": "sdxl" if sdxl else "custom",
            "unet": _plain(unet_cfg),
            "vae": _plain(vae_cfg),
            "text_encoder": parts["text_encoder"].config.to_dict(),
            "scheduler": _plain(dict(parts["scheduler"].config)),
        }
        if sdxl:
            configs["text_encoder_2"] = parts["text_encoder_2"].config.to_dict()
        path.with_suffix(".json").write_text(json.dumps(configs, default=str), "utf-8")
    return path


def _plain(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(
        json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")} | {}, default=list)
    )


# -- workflows ---------------------------------------------------------------------------------


def txt2img(
    ckpt: str,
    *,
    prompt: str = "a photo of a cat",
    negative: str = "blurry",
    seed: int = 0,
    steps: int = 4,
    cfg: float = 7.5,
    sampler: str = "euler",
    scheduler: str = "normal",
    width: int = 64,
    height: int = 64,
    output: str = "preview_image",
) -> tuple[Any, dict[str, str]]:
    """A text-to-image workflow; returns it and its node ids by role."""
    return recipes.txt2img(
        installed_registry(),
        ckpt,
        prompt,
        negative=negative,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler=sampler,
        scheduler=scheduler,
        width=width,
        height=height,
        output=output,
    )


def sampling_tail(
    wf: Any, model: tuple[str, str], clip: tuple[str, str], vae: tuple[str, str], *,
    prompt: str, negative: str, params: dict[str, Any], size: int = 64,
) -> str:  # fmt: skip
    """Text Encodes, an Empty Latent, a Sampler with ``params`` and a VAE Decode after the
    (node, output) model / clip / vae sources in ``wf``; returns the decode's id."""
    add, c = wf.add_node, wf.connect
    pos = add("text_encode", {"text": prompt}).id
    neg = add("text_encode", {"text": negative}).id
    lat = add("empty_latent", {"width": size, "height": size}).id
    s = add("sampler", params).id
    dec = add("vae_decode").id
    for node in (pos, neg):
        c(*clip, node, "clip")
    c(*model, s, "model")
    c(pos, "conditioning", s, "positive")
    c(neg, "conditioning", s, "negative")
    c(lat, "latent", s, "latent")
    c(s, "latent", dec, "latent")
    c(*vae, dec, "vae")
    return dec


# -- pytest fixtures shared by the test_diffusion_* files (import them by name) ---------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_parts() -> dict[str, dict[str, Any]]:
    return {"sd1": tiny_sd1(), "sdxl": tiny_sdxl(), "custom": tiny_custom()}


@pytest.fixture(scope="session")
def models_root(tmp_path_factory, tiny_parts) -> Path:
    """A models root holding the tiny models as diffusers folders and as LDM single files."""
    root = tmp_path_factory.mktemp("models")
    ckpts = root / "checkpoints"
    ckpts.mkdir()
    save_folder(sd1_pipeline(tiny_parts["sd1"]), ckpts / "tiny-sd1")
    save_folder(sdxl_pipeline(tiny_parts["sdxl"]), ckpts / "tiny-sdxl")
    save_folder(sd1_pipeline(tiny_parts["custom"]), ckpts / "tiny-custom")
    write_ldm_checkpoint(tiny_parts["sd1"], ckpts / "tiny-sd1-ldm.safetensors")
    write_ldm_checkpoint(tiny_parts["sdxl"], ckpts / "tiny-sdxl-ldm.safetensors")
    return root


@pytest.fixture
def engine(models_root, tmp_path):
    """An engine whose settings point at the tiny models and a fresh output folder."""
    from studio.engine import Engine
    from studio.settings import Settings

    settings = Settings(
        models_root=str(models_root),
        output_dir=str(tmp_path / "out"),
        input_dir=str(tmp_path / "in"),
    )
    yield Engine(installed_registry(), settings=settings)
