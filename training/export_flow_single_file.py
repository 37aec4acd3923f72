"""Export studio-tiny-flow as one ``.safetensors`` in Stable Diffusion 3's single-file layout.

    .venv/bin/python -m training.export_flow_single_file

reads ``resources/models/checkpoints/studio-tiny-flow`` and writes
``resources/models/checkpoints/studio-tiny-flow.safetensors`` (fp16), laid out as SD3's
"all in one" checkpoints are (what diffusers' ``from_single_file`` reads):

- the MMDiT under ``model.diffusion_model.`` in the original release's names
  (``joint_blocks.N.x_block.attn.qkv``, ``context_block``, ``x_embedder``, ``t_embedder``,
  ``y_embedder``, ``final_layer``, ``ln_q``/``ln_k`` for the qk norm): the inverse of
  diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers``;
- the VAE under ``first_stage_model.`` (LDM layout, ``nodes.ldm_keys.vae_to_ldm``);
- the two CLIPs under ``text_encoders.clip_l.transformer.`` and
  ``text_encoders.clip_g.transformer.`` in transformers' names (``text_model.*``,
  ``text_projection.weight``); no ``text_encoders.t5xxl``;
- in the metadata entry ``studio``: the family ``sd3``, the folder's configs (transformer,
  vae, text_encoder, text_encoder_2, scheduler), the tokenizer (studio-tiny's vocabulary
  and merges), and the preview factors: a loader cannot guess a tiny model's sizes from
  the real SD3 ones.

After writing, the transformer is read back through diffusers' own converter and compared
with the folder's (equal up to fp16 rounding), so a broken mapping fails here.

    .venv/bin/python -m training.export_flow_single_file --flux

writes studio-tiny-flux's transformer (``resources/models/checkpoints/studio-tiny-flux``) as
``resources/models/diffusion_models/studio-tiny-flux.safetensors`` in Flux.1's original
layout (``double_blocks``, ``single_blocks``, ``img_in``, ...; transformer-only, as Flux.1's
own files; the scheduler in its ``studio`` metadata), for Load Diffusion Model with the
folder's CLIP and VAE (or Load Text Encoders / Load VAE on files of them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "resources" / "models" / "checkpoints" / "studio-tiny-flow"
OUT = REPO / "resources" / "models" / "checkpoints" / "studio-tiny-flow.safetensors"
PREFIX = "model.diffusion_model."
CLIP_PREFIXES = {
    "text_encoder": "text_encoders.clip_l.transformer.",
    "text_encoder_2": "text_encoders.clip_g.transformer.",
}


def _swap_halves(t):
    import torch

    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def transformer_to_sd3(sd: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """A diffusers SD3Transformer2DModel state dict in the original SD3 layout (no prefix)."""
    import torch

    out: dict[str, Any] = {
        "pos_embed": sd["pos_embed.pos_embed"],
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "context_embedder.weight": sd["context_embedder.weight"],
        "context_embedder.bias": sd["context_embedder.bias"],
        "final_layer.linear.weight": sd["proj_out.weight"],
        "final_layer.linear.bias": sd["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap_halves(sd["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap_halves(sd["norm_out.linear.bias"]),
    }
    for ours, theirs in (("timestep_embedder", "t_embedder"), ("text_embedder", "y_embedder")):
        for a, b in (("linear_1", "0"), ("linear_2", "2")):
            for w in ("weight", "bias"):
                out[f"{theirs}.mlp.{b}.{w}"] = sd[f"time_text_embed.{ours}.{a}.{w}"]
    for i in range(num_layers):
        d, o = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == num_layers - 1
        for w in ("weight", "bias"):
            out[f"{o}x_block.attn.qkv.{w}"] = torch.cat(
                [sd[f"{d}attn.to_{x}.{w}"] for x in ("q", "k", "v")]
            )
            out[f"{o}context_block.attn.qkv.{w}"] = torch.cat(
                [sd[f"{d}attn.add_{x}_proj.{w}"] for x in ("q", "k", "v")]
            )
            out[f"{o}x_block.attn.proj.{w}"] = sd[f"{d}attn.to_out.0.{w}"]
            out[f"{o}x_block.adaLN_modulation.1.{w}"] = sd[f"{d}norm1.linear.{w}"]
            ctx_mod = sd[f"{d}norm1_context.linear.{w}"]
            out[f"{o}context_block.adaLN_modulation.1.{w}"] = (
                _swap_halves(ctx_mod) if last else ctx_mod
            )
            out[f"{o}x_block.mlp.fc1.{w}"] = sd[f"{d}ff.net.0.proj.{w}"]
            out[f"{o}x_block.mlp.fc2.{w}"] = sd[f"{d}ff.net.2.{w}"]
            if not last:
                out[f"{o}context_block.attn.proj.{w}"] = sd[f"{d}attn.to_add_out.{w}"]
                out[f"{o}context_block.mlp.fc1.{w}"] = sd[f"{d}ff_context.net.0.proj.{w}"]
                out[f"{o}context_block.mlp.fc2.{w}"] = sd[f"{d}ff_context.net.2.{w}"]
        if f"{d}attn.norm_q.weight" in sd:
            out[f"{o}x_block.attn.ln_q.weight"] = sd[f"{d}attn.norm_q.weight"]
            out[f"{o}x_block.attn.ln_k.weight"] = sd[f"{d}attn.norm_k.weight"]
            out[f"{o}context_block.attn.ln_q.weight"] = sd[f"{d}attn.norm_added_q.weight"]
            out[f"{o}context_block.attn.ln_k.weight"] = sd[f"{d}attn.norm_added_k.weight"]
    return out


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8"))


def single_file_state(folder: Path, dtype) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, configs) of the folder in SD3's single-file layout."""
    from safetensors.torch import load_file

    from nodes.ldm_keys import vae_to_ldm

    configs = {
        c: read_json(folder / c / "config.json")
        for c in ("transformer", "vae", "text_encoder", "text_encoder_2")
    }
    configs["scheduler"] = read_json(folder / "scheduler" / "scheduler_config.json")
    state: dict[str, Any] = {}
    tr = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    for k, v in transformer_to_sd3(tr, configs["transformer"]["num_layers"]).items():
        state[PREFIX + k] = v
    vae = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    state.update(vae_to_ldm(vae, configs["vae"]))
    for comp, prefix in CLIP_PREFIXES.items():
        for k, v in load_file(str(folder / comp / "model.safetensors")).items():
            if k.endswith("position_ids"):
                continue
            name = k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"
            state[prefix + name] = v
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()
    }
    return state, configs


def fold_clip_l_projection(folder: Path) -> bool:
    """Make the folder's first text encoder's projection the identity without changing what
    the model does: its pooled output only enters the transformer through
    ``time_text_embed.text_embedder.linear_1``, whose first columns absorb the projection.
    (For a model trained with a learnt CLIP-L projection: diffusers' ``from_single_file``
    puts an identity there.) Returns whether anything changed."""
    import torch
    from safetensors.torch import load_file, save_file

    te_file = folder / "text_encoder" / "model.safetensors"
    tr_file = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    te, tr = load_file(str(te_file)), load_file(str(tr_file))
    proj = te["text_projection.weight"].float()
    eye = torch.eye(proj.shape[0])
    if torch.equal(proj, eye):
        return False
    key = "time_text_embed.text_embedder.linear_1.weight"
    w = tr[key].float()
    n = proj.shape[0]
    w[:, :n] = w[:, :n] @ proj
    tr[key] = w.to(tr[key].dtype)
    te["text_projection.weight"] = eye.to(te["text_projection.weight"].dtype)
    save_file(tr, str(tr_file), metadata={"format": "pt"})
    save_file(te, str(te_file), metadata={"format": "pt"})
    return True


def export(folder: Path = FOLDER, out: Path = OUT, *, fp16: bool = True) -> Path:
    import torch

    from training.export_single_file import tokenizer_entry, write_single_file

    state, configs = single_file_state(folder, torch.float16 if fp16 else torch.float32)
    meta = {"family": "sd3", **configs, "tokenizer": tokenizer_entry(folder)}
    return write_single_file(folder, out, state, meta)


def verify(out: Path = OUT, folder: Path = FOLDER) -> dict[str, float]:
    """Read the transformer back with diffusers' SD3 converter, the VAE and CLIPs by their
    prefixes, and compare every weight with the folder's (fp16 rounding allowed)."""
    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )
    from safetensors.torch import load_file

    from training.export_single_file import max_fp16_diff

    raw = {k: v.float() for k, v in load_file(str(out)).items()}
    worst: dict[str, float] = {}

    def compare(name: str, got: dict[str, Any], want: dict[str, Any]) -> None:
        want = {k: v.float() for k, v in want.items() if not k.endswith("position_ids")}
        worst[name] = max_fp16_diff(name, got, want)

    tr = convert_sd3_transformer_checkpoint_to_diffusers(
        {k: v for k, v in raw.items() if k.startswith(PREFIX)}
    )
    compare(
        "transformer",
        tr,
        load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors")),
    )
    vae_cfg = read_json(folder / "vae" / "config.json")
    vae = convert_ldm_vae_checkpoint(
        {k: v for k, v in raw.items() if k.startswith("first_stage_model.")}, vae_cfg
    )
    compare("vae", vae, load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")))
    for comp, prefix in CLIP_PREFIXES.items():
        got = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
        want = {
            (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v
            for k, v in load_file(str(folder / comp / "model.safetensors")).items()
        }
        compare(comp, got, want)
    # diffusers' from_single_file gives SD3's CLIP-L an identity projection whatever the file
    # holds: the trainer keeps the first encoder's at identity, so both ways agree
    proj = raw[CLIP_PREFIXES["text_encoder"] + "text_projection.weight"]
    assert torch.equal(proj, torch.eye(proj.shape[0])), "text_encoder's projection is not identity"
    return worst


# -- the Flux-layout sibling: its transformer as Flux.1's own files are laid out ---------------

FLUX_FOLDER = REPO / "resources" / "models" / "checkpoints" / "studio-tiny-flux"
#: Where Load Diffusion Model finds it (Flux.1's files are transformer-only, like this one).
FLUX_OUT = REPO / "resources" / "models" / "diffusion_models" / "studio-tiny-flux.safetensors"


def flux_original_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Flux.1 transformer in the original release's names, with its shape,
    for a FluxTransformer2DModel config."""
    d = cfg["attention_head_dim"]
    h = cfg["num_attention_heads"] * d
    c = cfg["in_channels"]
    o = cfg.get("out_channels") or c  # FLUX.1 Fill takes more channels than it gives
    s: dict[str, tuple[int, ...]] = {
        "img_in.weight": (h, c),
        "img_in.bias": (h,),
        "txt_in.weight": (h, cfg["joint_attention_dim"]),
        "txt_in.bias": (h,),
        "final_layer.linear.weight": (o, h),
        "final_layer.linear.bias": (o,),
        "final_layer.adaLN_modulation.1.weight": (2 * h, h),
        "final_layer.adaLN_modulation.1.bias": (2 * h,),
    }
    embedders = {"time_in": 256, "vector_in": cfg["pooled_projection_dim"]}
    if cfg.get("guidance_embeds"):
        embedders["guidance_in"] = 256
    for name, width in embedders.items():
        s[f"{name}.in_layer.weight"], s[f"{name}.in_layer.bias"] = (h, width), (h,)
        s[f"{name}.out_layer.weight"], s[f"{name}.out_layer.bias"] = (h, h), (h,)
    for i in range(cfg["num_layers"]):
        for side in ("img", "txt"):
            b = f"double_blocks.{i}.{side}_"
            s[b + "mod.lin.weight"], s[b + "mod.lin.bias"] = (6 * h, h), (6 * h,)
            s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"] = (3 * h, h), (3 * h,)
            s[b + "attn.norm.query_norm.scale"] = (d,)
            s[b + "attn.norm.key_norm.scale"] = (d,)
            s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = (h, h), (h,)
            s[b + "mlp.0.weight"], s[b + "mlp.0.bias"] = (4 * h, h), (4 * h,)
            s[b + "mlp.2.weight"], s[b + "mlp.2.bias"] = (h, 4 * h), (h,)
    for i in range(cfg["num_single_layers"]):
        b = f"single_blocks.{i}."
        s[b + "linear1.weight"], s[b + "linear1.bias"] = (7 * h, h), (7 * h,)
        s[b + "linear2.weight"], s[b + "linear2.bias"] = (h, 5 * h), (h,)
        s[b + "norm.query_norm.scale"], s[b + "norm.key_norm.scale"] = (d,), (d,)
        s[b + "modulation.lin.weight"], s[b + "modulation.lin.bias"] = (3 * h, h), (3 * h,)
    return s


def transformer_to_flux(sd: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """A diffusers FluxTransformer2DModel state dict in Flux.1's original layout: diffusers'
    own converter (width-aware, ``nodes.dit._flux_converter``) run on tensors of element
    indices tells where each original element lands, which is then inverted."""
    import torch

    from nodes.dit import _flux_converter

    shapes = flux_original_shapes(cfg)
    index, start = {}, 0
    for k, shape in shapes.items():
        n = int(torch.tensor(shape).prod())
        index[k] = torch.arange(start, start + n, dtype=torch.float64).reshape(shape)
        start += n
    converted = _flux_converter(cfg)(dict(index))
    if set(converted) != set(sd):
        raise ValueError(f"Flux keys do not match: {sorted(set(converted) ^ set(sd))[:5]}")
    flat = torch.zeros(start, dtype=torch.float32)
    for k, where in converted.items():
        flat[where.flatten().long()] = sd[k].float().flatten()
    out, pos = {}, 0
    for k, shape in shapes.items():
        n = int(torch.tensor(shape).prod())
        out[k] = flat[pos : pos + n].reshape(shape).clone()
        pos += n
    return out


def export_flux(folder: Path = FLUX_FOLDER, out: Path = FLUX_OUT, *, fp16: bool = True) -> Path:
    """studio-tiny-flux's transformer as one Flux.1-layout file (no prefix, as
    flux1-dev.safetensors), for Load Diffusion Model; its ``studio`` metadata carries the
    scheduler (a schnell-like file would otherwise get schnell's unshifted one) and the VAE's
    config (its scale sets the latent size)."""
    import torch
    from safetensors.torch import load_file

    from training.export_single_file import write_single_file

    cfg = read_json(folder / "transformer" / "config.json")
    sd = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.to(dtype).contiguous() for k, v in transformer_to_flux(sd, cfg).items()}
    meta = {
        "family": "flux",
        "transformer": cfg,
        "scheduler": read_json(folder / "scheduler" / "scheduler_config.json"),
        # the latent's scale (studio-tiny's VAE: 4x, not Flux's 8x); the VAE is not inside
        "vae": read_json(folder / "vae" / "config.json"),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return write_single_file(folder, out, state, meta)


def verify_flux(out: Path = FLUX_OUT, folder: Path = FLUX_FOLDER) -> dict[str, float]:
    """Read the file back through diffusers' Flux converter and compare every weight with the
    folder's transformer (fp16 rounding allowed)."""
    from safetensors.torch import load_file

    from nodes.dit import _flux_converter
    from training.export_single_file import max_fp16_diff

    cfg = read_json(folder / "transformer" / "config.json")
    got = _flux_converter(cfg)({k: v.float() for k, v in load_file(str(out)).items()})
    want = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    return {
        "transformer": max_fp16_diff("transformer", got, {k: v.float() for k, v in want.items()})
    }


def main(argv: list[str] | None = None) -> int:
    from training.common import export_parser, export_report, run_report

    if argv is None:
        argv = sys.argv[1:]
    if "--flux" in argv:  # studio-tiny-flux's transformer in Flux.1's layout
        p = export_parser(__doc__, FLUX_FOLDER, FLUX_OUT, verify="reading it back")
        p.add_argument("--flux", action="store_true", help="export studio-tiny-flux instead")
        return run_report(p, argv, lambda args: export_report(args, export_flux, verify_flux))
    p = export_parser(__doc__, FOLDER, OUT, verify="reading it back")
    p.add_argument("--flux", action="store_true", help="export studio-tiny-flux instead")
    p.add_argument(
        "--fold-clip-l-projection",
        action="store_true",
        help="first rewrite the folder so its CLIP-L projection is the identity "
        "(fold_clip_l_projection: same model)",
    )
    return run_report(p, argv, report, indent=2)


def report(args: argparse.Namespace) -> dict[str, Any]:
    from training.common import export_report

    t0 = time.perf_counter()
    folded = args.fold_clip_l_projection and fold_clip_l_projection(Path(args.folder))
    return export_report(args, export, verify, t0=t0, folded=folded)


if __name__ == "__main__":
    sys.exit(main())
