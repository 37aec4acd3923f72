"""Train studio-tiny-x4: a tiny x4 upscaler in Real-ESRGAN's "compact" architecture
(SRVGGNetCompact, which spandrel reads from its keys), on ``data.render(scene, 64)`` ->
``data.render_highres(scene)`` (256x256).

    python -m training.train_upscaler            # from scratch, seed 0
    python -m training.train_upscaler --resume   # go on from training/companions/upscaler/

Every batch is a pure function of (seed, step): 16 training scenes, one 32x32 crop of each
64x64 render (placed so it holds part of the shape's edge, where all the information is)
and the matching 128x128 crop of the 256x256 render. MSE loss (with an L1 loss the residual
branch died at once: most pixels are flat, and L1's constant pull on them won, leaving the
nearest-neighbour upscale), Adam with a cosine decay.
Every ``--eval-every`` steps the model upscales 64 held-out scenes (colour x shape x
background combinations never drawn in training) and its PSNR and mean absolute error
against the 256x256 renders are compared with bicubic's; the best model so far is exported
to ``resources/models/upscale_models/studio-tiny-x4.safetensors``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import data
from training.common import (
    LossMeter,
    optimizer_moments,
    optimizer_step,
    restore_moments,
    set_lr,
    warmup,
)
from training.companion import EMBEDDED, CompanionRun, companion_parser, log

EXPORT = EMBEDDED / "upscale_models" / "studio-tiny-x4.safetensors"
LR_SIZE, SCALE = 64, 4


def make_model(num_feat: int, num_conv: int):
    from spandrel.architectures.Compact import Compact

    return Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=SCALE)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] (what spandrel models take)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def pairs(scenes: list[data.Scene]) -> tuple[np.ndarray, np.ndarray]:
    low = np.stack([data.render(s, LR_SIZE) for s in scenes])
    high = np.stack([data.render_highres(s, LR_SIZE * SCALE) for s in scenes])
    return low, high


def training_batch(seed: int, step: int, n: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = data.batch_rng(seed, step, stream=20)
    scenes = data.sample_scenes(rng, n, "train")
    low, high = pairs(scenes)
    xs, ys = [], []
    for s, lo, hi in zip(scenes, low, high, strict=True):
        # a crop that holds the shape's centroid somewhere inside, so it crosses an edge
        x0 = int(np.clip(s.cx * LR_SIZE - rng.uniform(4, crop - 4), 0, LR_SIZE - crop))
        y0 = int(np.clip(s.cy * LR_SIZE - rng.uniform(4, crop - 4), 0, LR_SIZE - crop))
        xs.append(lo[y0 : y0 + crop, x0 : x0 + crop])
        ys.append(hi[y0 * SCALE : (y0 + crop) * SCALE, x0 * SCALE : (x0 + crop) * SCALE])
    return to_float(np.stack(xs)), to_float(np.stack(ys))


def eval_set(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out scenes (fixed by the seed), at 64 and 256 pixels."""
    scenes = data.sample_scenes(data.batch_rng(seed, 0, stream=95), n, "heldout")
    low, high = pairs(scenes)
    return to_float(low), to_float(high)


def bicubic(low: torch.Tensor) -> torch.Tensor:
    """What Studio's Scale Image (bicubic, x4) gives."""
    return torch.nn.functional.interpolate(
        low, scale_factor=SCALE, mode="bicubic", align_corners=False, antialias=True
    ).clamp(0, 1)


def metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and mean absolute error (0-255 units) after quantising to 8 bits."""
    qp = (pred.clamp(0, 1) * 255).round()
    qt = (target * 255).round()
    mse = ((qp - qt) ** 2).mean().item()
    return {
        "psnr": 10 * math.log10(255.0**2 / max(mse, 1e-10)),
        "mae": (qp - qt).abs().mean().item(),
    }


@torch.no_grad()
def evaluate(model, low: torch.Tensor, high: torch.Tensor) -> dict[str, float]:
    model.eval()
    out = torch.cat([model(x).clamp(0, 1) for x in low.split(16)])
    model.train()
    m, b = metrics(out, high), metrics(bicubic(low), high)
    return {
        "psnr": m["psnr"],
        "mae": m["mae"],
        "bicubic_psnr": b["psnr"],
        "bicubic_mae": b["mae"],
        "psnr_gain": m["psnr"] - b["psnr"],
    }


def export(model, path: Path, info: dict) -> None:
    """Write the weights (spandrel reads the architecture from the keys) and check that
    spandrel really recognises them as a x4 model."""
    from spandrel import ModelLoader

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in info.items()}
    tmp = path.with_name(".tmp-" + path.name)
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp), meta)
    desc = ModelLoader().load_from_file(str(tmp))
    assert desc.scale == SCALE and desc.architecture.id == "Compact", desc.architecture.id
    tmp.chmod(0o644)
    tmp.replace(path)
    log(f"exported to {path} ({path.stat().st_size / 1024:.0f} KiB)")


def main(argv: list[str] | None = None) -> None:
    p = companion_parser(
        "upscaler",
        __doc__,
        export=EXPORT,
        steps=3000,
        batch=16,
        lr=2e-3,
        eval_every=250,
        eval_count=64,
    )
    p.add_argument("--crop", type=int, default=32, help="low-resolution crop size")
    p.add_argument("--num-feat", type=int, default=32)
    p.add_argument("--num-conv", type=int, default=6)
    args = p.parse_args(argv)
    keys = ("steps", "batch", "crop", "lr", "num_feat", "num_conv")
    run = CompanionRun(args, {k: getattr(args, k) for k in keys})
    hp, seed = run.hp, run.seed
    torch.manual_seed(seed)
    model = make_model(hp["num_feat"], hp["num_conv"])
    named = list(model.named_parameters())
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    if run.has("model"):
        model.load_state_dict(run.load("model"))
        restore_moments(opt, named, run.load("optim"), run.step)
    log(f"params {sum(p.numel() for p in model.parameters())}")
    low_eval, high_eval = eval_set(seed, args.eval_count)

    def train_step(step: int) -> tuple[float, float]:
        cosine = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / hp["steps"]))
        lr = hp["lr"] * warmup(step, 100) * cosine
        set_lr(opt, lr)
        x, y = training_batch(seed, step, hp["batch"], hp["crop"])
        loss = ((model(x) - y) ** 2).mean()
        optimizer_step(opt, loss, model.parameters(), max_norm=None)
        return loss.item(), lr

    def export_best(rec: dict[str, Any]) -> None:
        info = {"trained_by": "python -m training.train_upscaler", **hp, "seed": seed, **rec}
        export(model, Path(args.export), info)

    def checkpoint() -> None:
        # full-precision moments, both of them (the model is small)
        moments = optimizer_moments(opt, named, keep_first=True, dtype=torch.float32)
        run.save({"model": model.state_dict(), "optim": moments})

    run.train(
        train_step,
        eval_every=args.eval_every,
        measure=lambda: evaluate(model, low_eval, high_eval),
        rank=lambda r: r["psnr"],
        export=export_best,
        checkpoint=checkpoint,
        meter=LossMeter(run.step, name="mse", digits=6),
        log_every=50,
    )


if __name__ == "__main__":
    main()
