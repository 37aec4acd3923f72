"""Train studio-tiny-outline: a LoRA for studio-tiny that draws shapes as outlines.

    python -m training.train_lora            # from scratch, seed 0
    python -m training.train_lora --resume   # go on from training/companions/lora/

The base (``resources/models/checkpoints/studio-tiny``, as exported when the run starts) is
frozen; peft adds rank-``--rank`` LoRA layers to its UNet: the attention projections, the
transformer blocks' proj_in/proj_out and feed-forward, and the ResNet convolutions (the
16x16 blocks have no attention, and an outline is a 16x16 detail). Training data: the base
trainer's scenes and captions, but rendered with ``data.render(scene, outline=OUTLINE)``;
the loss is the base trainer's min-SNR-weighted epsilon loss with 10 % caption dropout.
There is no trigger word: at strength 1 every shape comes out as an outline, at 0 filled.

Every ``--eval-every`` steps the model draws held-out captions with the LoRA on, and
``outline_stats`` reads the images: the fraction of the shape's bounding box its pixels
fill (an outline fills less), how often the shape's centre shows the background (hollow),
and whether colour and background still follow the caption. The best so far is exported in
the kohya/A1111 key layout (``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha``, fp16) to ``resources/models/loras/studio-tiny-outline.safetensors``; the export
is checked by loading it back through diffusers' kohya loader (the code Studio's Load LoRA
runs) and comparing the UNet's output with the trained one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import data
from training import models as M
from training.common import (
    LossMeter,
    optimizer_moments,
    optimizer_step,
    restore_moments,
    set_lr,
    step_generator,
    warmup,
)
from training.companion import (
    EMBEDDED,
    CompanionRun,
    FrozenBase,
    companion_parser,
    log,
    noised_batch,
)
from training.evaluate import analyze, generate, score

EXPORT = EMBEDDED / "loras" / "studio-tiny-outline.safetensors"
#: Outline width as a fraction of the image side (2.6 pixels at 64): thinner lines do not
#: survive the base VAE's 4x downsampling.
OUTLINE = 0.04
ADAPTER = "outline"
TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
)


# ----------------------------------------------------------------------------- measuring


def hollow(image: np.ndarray) -> bool | None:
    """Whether the middle of the shape shows the background (an outline), None: no shape."""
    a = analyze(image)
    if a.color is None:
        return None
    h, w = image.shape[:2]
    x, y = int(a.cx * w), int(a.cy * h)
    patch = image[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].reshape(-1, 3).astype(float)
    mid = patch.mean(0)
    to_bg = np.linalg.norm(mid - np.array(data.COLORS[a.background], float))
    to_fg = np.linalg.norm(mid - np.array(data.COLORS[a.color], float))
    return bool(to_bg < to_fg)


def outline_stats(images: np.ndarray, captions: list[str]) -> dict[str, float]:
    """Mean fill of the shape's bounding box, hollow rate, colour/background adherence."""
    fills, hol, attrs = [], [], {"color": [], "background": []}
    for img, cap in zip(images, captions, strict=True):
        a = analyze(img)
        fills.append(a.fill if a.color is not None else 0.0)
        hol.append(bool(hollow(img)))
        s = score(cap, img)
        for k in attrs:
            attrs[k].append(s[k])
    return {
        "fill": float(np.mean(fills)),
        "hollow": float(np.mean(hol)),
        **{k: float(np.mean(v)) for k, v in attrs.items()},
    }


# ----------------------------------------------------------------------------- LoRA


def add_lora(unet, rank: int, alpha: float) -> None:
    from peft import LoraConfig

    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS)), adapter_name=ADAPTER
    )


def lora_params(unet) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in unet.named_parameters() if ".lora_" in n]


def kohya_state_dict(unet, alpha: float) -> dict[str, torch.Tensor]:
    """The adapter in the kohya/A1111 layout: ``lora_unet_`` + the module path with
    underscores, ``lora_down`` = peft's lora_A, ``lora_up`` = lora_B, and the alpha."""
    from peft.utils import get_peft_model_state_dict

    out: dict[str, torch.Tensor] = {}
    for key, value in get_peft_model_state_dict(unet, adapter_name=ADAPTER).items():
        module, _, kind = key.rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        part = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[kind]
        out[f"{name}.{part}"] = value.detach().to(torch.float16).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float16)
    return out


def check_export(path: Path, base_dir: Path, trained_unet) -> float:
    """Max difference between the trained UNet and a fresh base UNet with the exported file
    loaded the way Studio's Load LoRA loads it (diffusers' kohya conversion)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_pretrained(
        str(base_dir), subfolder="unet", local_files_only=True
    ).eval()
    state, alphas = StableDiffusionPipeline.lora_state_dict(load_file(str(path)))
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet, adapter_name="check")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([500, 100])
    with torch.no_grad():
        want = trained_unet(x, t, encoder_hidden_states=hidden).sample
        got = unet(x, t, encoder_hidden_states=hidden).sample
        unet.disable_adapters()
        plain = unet(x, t, encoder_hidden_states=hidden).sample
    diff = (want - got).abs().max().item()
    effect = (want - plain).abs().max().item()
    if not diff < max(0.05 * effect, 1e-3):
        raise RuntimeError(f"exported LoRA does not reproduce the trained one: {diff} vs {effect}")
    return diff


def export(unet, path: Path, alpha: float, base_dir: Path, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    meta = {"ss_network_module": "networks.lora", **{k: json.dumps(v) for k, v in info.items()}}
    save_file(kohya_state_dict(unet, alpha), str(tmp), meta)
    diff = check_export(tmp, base_dir, unet)
    tmp.chmod(0o644)
    tmp.replace(path)
    log(f"exported to {path} ({path.stat().st_size / 1024:.0f} KiB; reload differs by {diff:.1e})")


# ----------------------------------------------------------------------------- training


def training_batch(seed: int, step: int, n: int) -> tuple[np.ndarray, list[str]]:
    scenes = data.sample_scenes(data.batch_rng(seed, step, stream=40), n, "train")
    return np.stack([data.render(s, outline=OUTLINE) for s in scenes]), [s.caption for s in scenes]


def main(argv: list[str] | None = None) -> None:
    p = companion_parser(
        "lora",
        __doc__,
        export=EXPORT,
        steps=1500,
        batch=16,
        lr=1e-3,
        warmup=50,
        eval_every=250,
        eval_count=40,
    )
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    args = p.parse_args(argv)
    keys = ("steps", "batch", "lr", "warmup", "rank", "alpha", "caption_dropout", "min_snr_gamma")
    base_dir = Path(args.base)
    hparams = {**{k: getattr(args, k) for k in keys}, "outline": OUTLINE}
    run = CompanionRun(args, hparams, base=base_dir)
    hp, seed = run.hp, run.seed
    base = FrozenBase.load(base_dir)
    unet, te, vae, tok = base.unet, base.text_encoder, base.vae, base.tokenizer
    torch.manual_seed(seed)
    add_lora(unet, hp["rank"], hp["alpha"])
    named = lora_params(unet)
    params = [prm.requires_grad_(True) for _, prm in named]
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=0.0)
    if run.has("lora"):
        w = run.load("lora")
        with torch.no_grad():
            for n, prm in named:
                prm.copy_(w[n])
        restore_moments(opt, named, run.load("optim"), run.step)
        log(f"loaded the LoRA at step {run.step}")
    log(f"LoRA params {sum(prm.numel() for prm in params)} in {len(named) // 2} layers")

    sched_cfg = base.scheduler_config
    caps_eval = [s.caption for s in data.eval_scenes(args.eval_count)]

    def draw(strength: float) -> np.ndarray:
        if strength:
            unet.enable_adapters()
            unet.set_adapters([ADAPTER], [strength])
        else:
            unet.disable_adapters()
        try:
            return generate(unet, te, vae, tok, caps_eval, seed=0, scheduler_config=sched_cfg)
        finally:
            unet.enable_adapters()
            unet.set_adapters([ADAPTER], [1.0])

    if "baseline" not in run.state:
        run.state["baseline"] = outline_stats(draw(0.0), caps_eval)
        log(f"baseline (strength 0): {json.dumps(run.state['baseline'])}")
    baseline = run.state["baseline"]

    def train_step(step: int) -> tuple[float, float]:
        lr = hp["lr"] * warmup(step, hp["warmup"])
        set_lr(opt, lr)
        imgs, caps = training_batch(seed, step, hp["batch"])
        g = step_generator(seed, step, 40)
        b = noised_batch(base, imgs, caps, g, hp["caption_dropout"])
        pred = unet(b.noisy, b.t, encoder_hidden_states=b.hidden).sample
        loss = M.diffusion_loss(base.scheduler, pred, b.latents, b.noise, b.t, hp["min_snr_gamma"])
        optimizer_step(opt, loss, params)
        return loss.item(), lr

    def measure() -> dict[str, float]:
        unet.eval()
        try:
            return outline_stats(draw(1.0), caps_eval)
        finally:
            unet.train()

    def rank(r: dict[str, Any]) -> tuple[bool, float]:
        # keep colour and background (mostly) right, then the emptiest boxes
        kept = r["color"] + r["background"] >= 0.8 * (baseline["color"] + baseline["background"])
        return kept, r["hollow"] - r["fill"]

    def export_best(rec: dict[str, Any]) -> None:
        info = {
            "name": "studio-tiny-outline",
            "trained_by": "python -m training.train_lora",
            "base": run.state["base"],
            "seed": seed,
            "hparams": hp,
            "metrics": rec,
            "baseline_strength_0": baseline,
        }
        unet.eval()  # the export is checked against the trained UNet's output
        try:
            export(unet, Path(args.export), hp["alpha"], base_dir, info)
        finally:
            unet.train()

    def checkpoint() -> None:
        run.save(
            {
                "lora": {n: prm for n, prm in named},
                "optim": optimizer_moments(opt, named, keep_first=True),
            }
        )

    unet.train()
    run.train(
        train_step,
        eval_every=args.eval_every,
        measure=measure,
        rank=rank,
        export=export_best,
        checkpoint=checkpoint,
        meter=LossMeter(run.step),
    )


if __name__ == "__main__":
    main()
