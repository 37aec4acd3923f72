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


def main(argv: list[str] | None = None) -> int:
    from training.common import export_parser, run_report

    p = export_parser(__doc__, FOLDER, OUT, verify="reading it back")
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
