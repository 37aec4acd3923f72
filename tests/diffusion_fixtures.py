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


# -- diffusers -> original (LDM) layout ------------------------------------------------------

_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def unet_to_ldm(sd: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def move(src: str, dst: str, resnet: bool = False) -> None:
        for k, v in sd.items():
            if k.startswith(src + "."):
                rest = k[len(src) + 1 :]
                if resnet:
                    head, _, tail = rest.partition(".")
                    head = dict(_RESNET).get(head, head)
                    rest = f"{head}.{tail}"
                out[f"{dst}.{rest}"] = v
                used.add(k)

    simple = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for src, dst in simple.items():
        move(src, dst)
    n = len(config["down_block_types"])
    per = config["layers_per_block"]
    for i in range(n):
        for j in range(per):
            idx = 1 + i * (per + 1) + j
            move(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{idx}.0", resnet=True)
            move(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{idx}.1")
        move(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (per + 1) + per}.0.op")
    move("mid_block.resnets.0", "middle_block.0", resnet=True)
    move("mid_block.attentions.0", "middle_block.1")
    move("mid_block.resnets.1", "middle_block.2", resnet=True)
    for i in range(n):
        for j in range(per + 1):
            idx = i * (per + 1) + j
            move(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{idx}.0", resnet=True)
            move(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{idx}.1")
        has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
        up_idx = i * (per + 1) + per
        move(
            f"up_blocks.{i}.upsamplers.0.conv",
            f"output_blocks.{up_idx}.{2 if has_attn else 1}.conv",
        )
    left = set(sd) - used
    if left:
        raise ValueError(f"unmapped UNet keys: {sorted(left)[:5]}")
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(sd: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    n = len(config["down_block_types"])
    attn = {
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
    for k, v in sd.items():
        new = k
        for a, b in (
            ("encoder.conv_norm_out", "encoder.norm_out"),
            ("decoder.conv_norm_out", "decoder.norm_out"),
        ):
            new = new.replace(a, b)
        for i in range(n):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(
                f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv"
            )
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.")
            new = new.replace(
                f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv"
            )
        for part in ("encoder", "decoder"):
            new = new.replace(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.")
            new = new.replace(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")
            if new.startswith(f"{part}.mid_block.attentions.0."):
                rest = new[len(f"{part}.mid_block.attentions.0.") :]
                name, _, kind = rest.rpartition(".")
                new = f"{part}.mid.attn_1.{attn[name]}.{kind}"
                if kind == "weight" and v.ndim == 2:
                    v = v[:, :, None, None]
        new = new.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + new] = v
    return out


def clip_to_ldm(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """An HF CLIPTextModel state dict under an LDM prefix (SD1, SDXL's first encoder)."""
    out = {}
    for k, v in sd.items():
        if k == "text_projection.weight":
            continue
        k = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + k] = v
    return out


def open_clip_to_ldm(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection state dict in OpenCLIP's layout (SD2, SDXL's second)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        k = k.removeprefix("text_model.")
        if k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("final_layer_norm."):
            out["ln_final." + k.split(".")[-1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
        elif k.startswith("encoder.layers."):
            parts = k.split(".")
            i, rest = parts[2], ".".join(parts[3:])
            base = f"transformer.resblocks.{i}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in (
                "q_proj",
                "k_proj",
                "v_proj",
            ):
                proj, kind = rest.split(".")[1], rest.split(".")[2]
                qkv.setdefault(f"{base}attn.in_proj_{kind}", {})[proj] = v
                continue
            rest = (
                rest.replace("layer_norm1", "ln_1")
                .replace("layer_norm2", "ln_2")
                .replace("self_attn.out_proj", "attn.out_proj")
                .replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj")
            )
            out[base + rest] = v
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return {prefix + k: v for k, v in out.items()}


def write_ldm_checkpoint(parts: dict[str, Any], path: Path, *, sidecar: bool = True) -> Path:
    """Write tiny components as one LDM-layout .safetensors (+ a ``.json`` config beside it)."""
    from safetensors.torch import save_file

    unet_cfg = dict(parts["unet"].config)
    vae_cfg = dict(parts["vae"].config)
    state: dict[str, torch.Tensor] = {}
    state.update(unet_to_ldm(parts["unet"].state_dict(), unet_cfg))
    state.update(vae_to_ldm(parts["vae"].state_dict(), vae_cfg))
    sdxl = "text_encoder_2" in parts
    te = parts["text_encoder"].state_dict()
    if sdxl:
        state.update(clip_to_ldm(te, "conditioner.embedders.0.transformer."))
        state.update(
            open_clip_to_ldm(parts["text_encoder_2"].state_dict(), "conditioner.embedders.1.model.")
        )
    else:
        state.update(clip_to_ldm(te, "cond_stage_model.transformer."))
    state = {k: v.contiguous() for k, v in state.items()}
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
    from studio.graph.workflow import Workflow

    wf = Workflow()
    ids = {
        "ckpt": wf.add_node("load_checkpoint", {"ckpt_name": ckpt}).id,
        "pos": wf.add_node("text_encode", {"text": prompt}).id,
        "neg": wf.add_node("text_encode", {"text": negative}).id,
        "latent": wf.add_node(
            "empty_latent", {"width": width, "height": height, "batch_size": 1}
        ).id,
        "sampler": wf.add_node(
            "sampler",
            {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler": sampler,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        ).id,
        "decode": wf.add_node("vae_decode").id,
        "out": wf.add_node(output).id,
    }
    c = wf.connect
    c(ids["ckpt"], "clip", ids["pos"], "clip")
    c(ids["ckpt"], "clip", ids["neg"], "clip")
    c(ids["ckpt"], "model", ids["sampler"], "model")
    c(ids["pos"], "conditioning", ids["sampler"], "positive")
    c(ids["neg"], "conditioning", ids["sampler"], "negative")
    c(ids["latent"], "latent", ids["sampler"], "latent")
    c(ids["sampler"], "latent", ids["decode"], "latent")
    c(ids["ckpt"], "vae", ids["decode"], "vae")
    c(ids["decode"], "image", ids["out"], "images")
    return wf, ids


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
    from studio.settings import Settings, set_active_settings

    settings = Settings(
        models_root=str(models_root),
        output_dir=str(tmp_path / "out"),
        input_dir=str(tmp_path / "in"),
    )
    set_active_settings(settings)
    yield Engine(settings=settings)
    set_active_settings(Settings())
