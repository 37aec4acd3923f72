"""diffusers -> original (LDM) single-file key layout: the inverse of diffusers' single-file
converters, for writing a checkpoint as one ``.safetensors`` that loads like any A1111 or
ComfyUI checkpoint (``training/export_single_file.py``, and the test fixtures).

Prefixes: UNet ``model.diffusion_model.``, VAE ``first_stage_model.``, SD1's CLIP
``cond_stage_model.transformer.``, SDXL's ``conditioner.embedders.0.transformer.`` and
``conditioner.embedders.1.model.`` (OpenCLIP layout).

One UNet part has no LDM name: the text-pooling embedding of ``addition_embed_type="text"``
(``add_embedding.norm1/pool/proj/norm2``, which studio-tiny uses to feed the pooled prompt
into the time embedding). It keeps its diffusers name under the UNet prefix,
``model.diffusion_model.add_embedding.*``; diffusers' converter skips it, and
:func:`unet_extras_from_ldm` gives it back when loading.

Pure key and tensor reshuffling; torch is imported only where a tensor is built.
"""

from __future__ import annotations

from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
#: The ``addition_embed_type="text"`` embedding, kept under its diffusers name (see above).
TEXT_POOL_KEY = "add_embedding."

_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def unet_to_ldm(sd: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict in the LDM layout (with its prefix).

    Raises ValueError naming a key it has no place for.
    """
    out: dict[str, Any] = {}
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
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    if config.get("addition_embed_type") == "text":
        simple["add_embedding"] = TEXT_POOL_KEY.rstrip(".")
    else:  # SDXL's text_time embedding
        simple["add_embedding.linear_1"] = "label_emb.0.0"
        simple["add_embedding.linear_2"] = "label_emb.0.2"
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
    return {UNET_PREFIX + k: v for k, v in out.items()}


def unet_extras_from_ldm(raw: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The diffusers UNet weights that diffusers' LDM converter leaves out: the
    ``addition_embed_type="text"`` embedding. ``raw`` holds the file's keys (prefixed)."""
    if config.get("addition_embed_type") != "text":
        return {}
    head = UNET_PREFIX + TEXT_POOL_KEY
    return {k[len(UNET_PREFIX) :]: v for k, v in raw.items() if k.startswith(head)}


def vae_to_ldm(sd: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in the LDM layout (with its prefix)."""
    out: dict[str, Any] = {}
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
        out[VAE_PREFIX + new] = v
    return out


def clip_to_ldm(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    """An HF CLIPTextModel state dict under an LDM prefix (SD1, SDXL's first encoder)."""
    out = {}
    for k, v in sd.items():
        if k == "text_projection.weight":
            continue
        k = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + k] = v
    return out


def open_clip_to_ldm(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A CLIPTextModelWithProjection state dict in OpenCLIP's layout (SD2, SDXL's second)."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[str, dict[str, Any]] = {}
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


def checkpoint_to_ldm(
    unet: dict[str, Any],
    unet_config: dict[str, Any],
    vae: dict[str, Any],
    vae_config: dict[str, Any],
    text_encoder: dict[str, Any],
    text_encoder_2: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole checkpoint's state dicts as one LDM-layout state dict (SD1-like with one
    text encoder, SDXL-like with two)."""
    state: dict[str, Any] = {}
    state.update(unet_to_ldm(unet, unet_config))
    state.update(vae_to_ldm(vae, vae_config))
    if text_encoder_2 is not None:
        state.update(clip_to_ldm(text_encoder, SDXL_CLIP_L_PREFIX))
        state.update(open_clip_to_ldm(text_encoder_2, SDXL_CLIP_G_PREFIX))
    else:
        state.update(clip_to_ldm(text_encoder, SD1_CLIP_PREFIX))
    return {k: v.contiguous() for k, v in state.items()}
