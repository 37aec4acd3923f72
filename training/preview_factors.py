"""studio-tiny's own latent -> RGB factors for the Sampler's live preview.

    .venv/bin/python -m training.preview_factors [--folder DIR]

Stable Diffusion's fixed preview matrix means nothing in studio-tiny's latent space (its
VAE is its own, 16x16x4 for 64x64 images), so the preview looked like coloured noise. This
fits a 4x3 matrix and an RGB bias by least squares: renders of random training scenes are
encoded with the model's VAE (posterior mean, times ``scaling_factor``: the space the UNet
samples in), and each latent cell is mapped to the mean RGB (0..1) of the pixels it covers
(the image box-downsampled to the latent size). The sampler's latents carry cell-to-cell
noise the encoder never makes and the decoder smooths away (fitted on encodings alone, the
preview of a finished 20-step image was ~60 levels off); so the fit also sees the same
latents plus Gaussian noise (``NOISE``), mapped to what the VAE decodes from them, which
teaches it to ignore what the decoder ignores (~40 levels off, as good as fitting on
sampled latents, without running the UNet). The result is written into the folder's
``model_index.json`` under the private key ``_studio_latent_rgb`` (diffusers ignores keys
starting with "_"), where ``nodes/sdload.py`` reads it; ``training.export_single_file``
copies it into the single file's ``studio`` metadata. ``training.train`` calls
:func:`write_factors` on every export. Prints the fit's error in 0..255 levels, on the
fitting images and on held-out-combination images, beside the error of SD's factors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from training import data

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "resources" / "models" / "checkpoints" / "studio-tiny"
#: model_index.json's key (``nodes.sdload.FOLDER_LATENT_RGB_KEY``; not imported so that the
#: trainer does not import the app's node modules).
INDEX_KEY = "_studio_latent_rgb"
N_FIT = 512
N_CHECK = 256
SEED = 0
#: Spread of the noise added to the encodings (UNet-space units; the latents' std is ~1).
NOISE = 0.5
DECIMALS = 5


def encode_cells(vae: Any, images: np.ndarray, batch: int = 64) -> tuple[Any, Any]:
    """Latents in UNet space [N, C, h, w] and the images box-downsampled to [N, 3, h, w]
    in 0..1, for uint8 NHWC ``images``."""
    import torch
    import torch.nn.functional as F

    cfg = vae.config
    scale = float(cfg.scaling_factor)
    shift = float(getattr(cfg, "shift_factor", None) or 0.0)
    param = next(vae.parameters())
    latents = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = data.to_tensor(images[i : i + batch]).to(param.device, param.dtype)
            mean = vae.encode(x).latent_dist.mean
            latents.append(((mean - shift) * scale).float().cpu())
    z = torch.cat(latents)
    factor = images.shape[1] // z.shape[-2]
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return z, F.avg_pool2d(rgb, factor)


def noisy_cells(vae: Any, z: Any, seed: int, batch: int = 64) -> tuple[Any, Any]:
    """``z`` plus seeded Gaussian noise, and what the VAE decodes from it, box-downsampled
    to the latent size in 0..1."""
    import torch
    import torch.nn.functional as F

    cfg = vae.config
    scale = float(cfg.scaling_factor)
    shift = float(getattr(cfg, "shift_factor", None) or 0.0)
    param = next(vae.parameters())
    noisy = z + NOISE * torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
    cells = []
    with torch.no_grad():
        for part in noisy.split(batch):
            x = (part / scale + shift).to(param.device, param.dtype)
            img = vae.decode(x).sample.float().cpu().clamp(-1, 1)
            factor = img.shape[-1] // z.shape[-1]
            cells.append(F.avg_pool2d((img + 1) / 2, factor))
    return noisy, torch.cat(cells)


def _design(z: Any) -> Any:
    import torch

    cells = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return torch.cat([cells, torch.ones(len(cells), 1)], dim=1).double()


def _targets(rgb: Any) -> Any:
    return rgb.permute(0, 2, 3, 1).reshape(-1, 3).double()


def fit(z: Any, rgb: Any) -> dict[str, Any]:
    """Least-squares ``rgb ~ z . matrix + bias``: the ``LatentRgb`` JSON entry."""
    import torch

    w = torch.linalg.lstsq(_design(z), _targets(rgb)).solution
    return {
        "matrix": [[round(float(v), DECIMALS) for v in row] for row in w[:-1]],
        "bias": [round(float(v), DECIMALS) for v in w[-1]],
    }


def mean_abs_error(entry: dict[str, Any], z: Any, rgb: Any, clamp: bool = True) -> float:
    """Mean absolute error in 0..255 levels of the projection (clamped to 0..1, as the
    preview shows it) against the downsampled images."""
    import torch

    w = torch.tensor([*entry["matrix"], entry["bias"]], dtype=torch.float64)
    pred = _design(z) @ w
    if clamp:
        pred = pred.clamp(0, 1)
    return float((pred - _targets(rgb)).abs().mean() * 255)


def sd_entry() -> dict[str, Any]:
    """SD's fixed preview factors (``nodes.denoise.SD_RGB``, to -1..1) in the 0..1 form."""
    sd_rgb = [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
    return {"matrix": [[v / 2 for v in row] for row in sd_rgb], "bias": [0.5, 0.5, 0.5]}


def scene_images(n: int, seed: int, split: str) -> np.ndarray:
    return data.render_batch(data.sample_scenes(np.random.default_rng(seed), n, split))


def compute(vae: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """The factors for ``vae`` (fitted on ``N_FIT`` training scenes, clean and noisy) and
    their errors on held-out-combination scenes: ``clean`` against the rendered image,
    ``noisy`` against what the VAE decodes from the noisy latents."""
    import torch

    z, rgb = encode_cells(vae, scene_images(N_FIT, SEED, "train"))
    zn, rgbn = noisy_cells(vae, z, SEED)
    entry = fit(torch.cat([z, zn]), torch.cat([rgb, rgbn]))
    zc, rgbc = encode_cells(vae, scene_images(N_CHECK, SEED + 1, "heldout"))
    zcn, rgbcn = noisy_cells(vae, zc, SEED + 1)
    sd = sd_entry()
    report = {
        "mae_levels_fit_clean": mean_abs_error(entry, z, rgb),
        "mae_levels_fit_noisy": mean_abs_error(entry, zn, rgbn),
        "mae_levels_heldout_clean": mean_abs_error(entry, zc, rgbc),
        "mae_levels_heldout_noisy": mean_abs_error(entry, zcn, rgbcn),
        "sd_factors_mae_levels_heldout_clean": mean_abs_error(sd, zc, rgbc),
        "sd_factors_mae_levels_heldout_noisy": mean_abs_error(sd, zcn, rgbcn),
    }
    return entry, {k: round(v, 2) for k, v in report.items()}


def write_entry(folder: Path, entry: dict[str, Any]) -> None:
    """Put ``entry`` into ``folder``'s model_index.json (diffusers' own JSON layout)."""
    path = Path(folder) / "model_index.json"
    index = json.loads(path.read_text("utf-8"))
    index[INDEX_KEY] = entry
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", "utf-8")


def write_factors(folder: Path, vae: Any = None) -> dict[str, float]:
    """Fit the preview factors of the diffusers folder ``folder`` (with ``vae``, or the
    folder's own VAE) and write them into it; returns the fit's errors."""
    if vae is None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(Path(folder) / "vae"), local_files_only=True)
    entry, report = compute(vae)
    write_entry(Path(folder), entry)
    return report


def main(argv: list[str] | None = None) -> int:
    from training.common import run_report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", default=str(FOLDER), help="the diffusers folder to update")
    return run_report(
        p, argv, lambda args: {"folder": args.folder, **write_factors(Path(args.folder))}, indent=2
    )


if __name__ == "__main__":
    sys.exit(main())
