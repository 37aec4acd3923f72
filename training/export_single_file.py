"""Export studio-tiny as one ``.safetensors`` in the original (LDM) key layout.

    .venv/bin/python -m training.export_single_file

reads the diffusers folder ``resources/models/checkpoints/studio-tiny`` and writes
``resources/models/checkpoints/studio-tiny.safetensors`` (fp16, ~7 MB), so Studio's
single-file loading path runs on a real, trained model. Run it again whenever the folder is
re-exported by ``training.train``; the same folder always gives the same bytes.

The file holds:

- the weights under the LDM prefixes (``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.transformer.*``), converted by :mod:`nodes.ldm_keys`. The UNet's
  text-pooling embedding (``addition_embed_type="text"``) has no LDM name and keeps its
  diffusers one, ``model.diffusion_model.add_embedding.*``;
- in the safetensors metadata entry ``studio`` (what ``nodes/sdload.py`` reads): the family
  (``custom``), the folder's diffusers configs of the unet, vae, text_encoder and scheduler,
  and the tokenizer (its own 653-token BPE vocabulary and merges: studio-tiny's text encoder
  does not use CLIP's), and the model's latent -> RGB preview factors (``latent_rgb``, from
  the folder's ``model_index.json`` key ``_studio_latent_rgb``, written by
  ``training.preview_factors``), when the folder has them.

After writing, every weight is loaded back through the single-file loader and compared with
the folder's (equal up to fp16 rounding), so a broken mapping fails here, not in the app.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "resources" / "models" / "checkpoints" / "studio-tiny"
OUT = REPO / "resources" / "models" / "checkpoints" / "studio-tiny.safetensors"
COMPONENTS = ("unet", "vae", "text_encoder")
WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8"))


def folder_configs(folder: Path) -> dict[str, dict[str, Any]]:
    configs = {c: read_json(folder / c / "config.json") for c in COMPONENTS}
    configs["scheduler"] = read_json(folder / "scheduler" / "scheduler_config.json")
    return configs


def tokenizer_entry(folder: Path) -> dict[str, Any]:
    """The folder's tokenizer as vocab and merges (what ``sdload.tokenizer_from_entry`` reads)."""
    from transformers import CLIPTokenizer

    from nodes.sdload import tokenizer_entry as entry

    return entry(CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True))


def ldm_state(folder: Path, configs: dict[str, dict[str, Any]], dtype: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    from nodes.ldm_keys import checkpoint_to_ldm

    sd = {c: load_file(str(folder / c / WEIGHT_FILES[c])) for c in COMPONENTS}
    state = checkpoint_to_ldm(
        sd["unet"], configs["unet"], sd["vae"], configs["vae"], sd["text_encoder"]
    )
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def export(folder: Path = FOLDER, out: Path = OUT, *, fp16: bool = True) -> Path:
    """Write the single file for ``folder`` at ``out`` (atomically); returns ``out``."""
    import torch

    from nodes.sdload import TOKENIZER_KEY

    configs = folder_configs(folder)
    state = ldm_state(folder, configs, torch.float16 if fp16 else torch.float32)
    meta = {"family": "custom", **configs, TOKENIZER_KEY: tokenizer_entry(folder)}
    return write_single_file(folder, out, state, meta)


def write_single_file(folder: Path, out: Path, state: dict[str, Any], meta: dict) -> Path:
    """Write ``state`` at ``out`` (atomically) with ``meta`` and the folder's preview factors,
    when it has them, as the metadata entry ``nodes/sdload.py`` reads; returns ``out``."""
    from safetensors.torch import save

    from nodes.sdload import FOLDER_LATENT_RGB_KEY, LATENT_RGB_KEY, SIDECAR_METADATA_KEY
    from studio.fsutil import atomic_write_bytes

    preview = read_json(folder / "model_index.json").get(FOLDER_LATENT_RGB_KEY)
    if preview is not None:
        meta = {**meta, LATENT_RGB_KEY: preview}
    # One metadata entry only: safetensors writes the metadata from a hash map, so the order
    # of two entries changes from run to run and the bytes would too.
    metadata = {SIDECAR_METADATA_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))}
    atomic_write_bytes(Path(out), save(state, metadata=metadata))
    return Path(out)


def verify(out: Path = OUT, folder: Path = FOLDER) -> dict[str, float]:
    """Load every component back from the single file through Studio's loader and compare
    it with the folder's; returns the largest difference per component. Raises
    AssertionError when a weight is missing or differs by more than fp16 rounding."""
    import torch

    from nodes import sdload

    source = sdload.inspect_checkpoint(Path(out), Path(out).name, ("verify",))
    folder_source = sdload.inspect_checkpoint(Path(folder), Path(folder).name, ("verify",))
    assert source.latent_rgb == folder_source.latent_rgb, "preview factors differ"
    worst: dict[str, float] = {}
    for comp in COMPONENTS:
        a = sdload.load_component(source, comp, torch.float32).state_dict()
        b = sdload.load_component(folder_source, comp, torch.float32).state_dict()
        b = {k: v for k, v in b.items() if not k.endswith("position_ids")}
        a = {k: v for k, v in a.items() if not k.endswith("position_ids")}
        worst[comp] = max_fp16_diff(comp, a, b)
    return worst


def max_fp16_diff(name: str, got: dict[str, Any], want: dict[str, Any]) -> float:
    """The largest difference between two state dicts of ``name``. Raises AssertionError
    when their keys differ or a weight differs by more than fp16 rounding."""
    assert got.keys() == want.keys(), f"{name}: keys differ: {sorted(got.keys() ^ want.keys())[:5]}"
    diff = 0.0
    for k, v in want.items():
        # fp16 keeps 11 significant bits: half an ulp is 2**-11 of the value.
        tol = v.abs() * 2.0**-11 + 2.0**-24
        assert ((got[k] - v).abs() <= tol).all(), f"{name}: {k} differs beyond fp16 rounding"
        diff = max(diff, float((got[k] - v).abs().max()))
    return diff


def main(argv: list[str] | None = None) -> int:
    from training.common import export_parser, run_report

    p = export_parser(__doc__, FOLDER, OUT, verify="loading it back")
    return run_report(p, argv, report, indent=2)


def report(args: argparse.Namespace) -> dict[str, Any]:
    from training.common import export_report

    return export_report(args, export, verify)


if __name__ == "__main__":
    sys.exit(main())
