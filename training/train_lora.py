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

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import data
from training import models as M
from training import train as base_train
from training.companion import (
    BASE_MODEL,
    EMBEDDED,
    CompanionRun,
    add_common_args,
    base_fingerprint,
    log,
)
from training.evaluate import analyze, encode_prompts, generate, load_folder, score

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
    p = argparse.ArgumentParser(
        prog="python -m training.train_lora",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p, "lora")
    base_defaults = base_train.parse_args([])
    p.add_argument("--base", default=str(BASE_MODEL), help="the frozen base model folder")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--caption-dropout", type=float, default=base_defaults.caption_dropout)
    p.add_argument("--min-snr-gamma", type=float, default=base_defaults.min_snr_gamma)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-count", type=int, default=40)
    p.add_argument("--export", default=str(EXPORT))
    args = p.parse_args(argv)

    keys = ("steps", "batch", "lr", "warmup", "rank", "alpha", "caption_dropout", "min_snr_gamma")
    hp = {k: getattr(args, k) for k in keys}
    hp["outline"] = OUTLINE
    base_dir = Path(args.base)
    run = CompanionRun(args, {"seed": args.seed, "hparams": hp, "base": base_fingerprint(base_dir)})
    hp, seed = run.state["hparams"], run.state["seed"]
    now = base_fingerprint(base_dir)
    if now["unet_sha1"] != run.state["base"]["unet_sha1"]:
        log(
            f"note: the base model changed since this run started (step {run.state['base']['step']}"
            f" -> {now['step']}); going on against the current one"
        )
        run.state["base"] = now
    unet, te, vae, tok = load_folder(base_dir)
    for m in (unet, te, vae):
        m.requires_grad_(False).eval()
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
        base_train.restore_moments(opt, named, run.load("optim"), run.step)
        log(f"loaded the LoRA at step {run.step}")
    log(f"LoRA params {sum(prm.numel() for prm in params)} in {len(named) // 2} layers")

    sched_cfg = M.folder_scheduler_config(base_dir)
    sched = M.make_scheduler(sched_cfg)
    sf = vae.config.scaling_factor
    uncond = encode_prompts(tok, te, [""])
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

    def checkpoint() -> None:
        run.save(
            {
                "lora": {n: prm for n, prm in named},
                "optim": base_train.optimizer_moments(opt, named, keep_first=True),
            }
        )

    def do_eval(step: int) -> None:
        run.tick()
        t = time.time()
        rates = outline_stats(draw(1.0), caps_eval)
        rec = {"step": step, **{k: round(v, 3) for k, v in rates.items()}}
        rec["seconds"], rec["eval_seconds"] = round(run.state["seconds"]), round(time.time() - t)
        run.state["history"].append(rec)
        log("eval " + json.dumps(rec))
        base = run.state["baseline"]

        def key(r: dict[str, Any]) -> tuple[bool, float]:
            # keep colour and background (mostly) right, then the emptiest boxes
            kept = r["color"] + r["background"] >= 0.8 * (base["color"] + base["background"])
            return kept, r["hollow"] - r["fill"]

        best = run.state["best"]
        if best is None or key(rec) > key(best):
            run.state["best"] = rec
            info = {
                "name": "studio-tiny-outline",
                "trained_by": "python -m training.train_lora",
                "base": run.state["base"],
                "seed": seed,
                "hparams": hp,
                "metrics": rec,
                "baseline_strength_0": base,
            }
            export(unet, Path(args.export), hp["alpha"], base_dir, info)
        checkpoint()

    unet.train()
    t0, n0, losses = time.time(), run.step, []
    while not run.stop and run.step < hp["steps"]:
        step = run.step
        lr = hp["lr"] * min(1.0, (step + 1) / hp["warmup"])
        for group in opt.param_groups:
            group["lr"] = lr
        imgs, caps = training_batch(seed, step, hp["batch"])
        g = base_train.step_generator(seed, step, 40)
        drop = torch.rand(len(caps), generator=g) < hp["caption_dropout"]
        with torch.no_grad():
            hidden = encode_prompts(tok, te, caps)
            hidden[drop] = uncond[0]
            lat = vae.encode(data.to_tensor(imgs)).latent_dist.sample(generator=g) * sf
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(caps),), generator=g)
        noisy = sched.add_noise(lat, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = M.diffusion_loss(sched, pred, lat, noise, t, hp["min_snr_gamma"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        run.state["step"] = step = step + 1
        if step % 25 == 0:
            sps = (step - n0) / (time.time() - t0)
            log(f"step {step} loss {np.mean(losses):.4f} lr {lr:.2e} {sps:.2f} steps/s")
            t0, n0, losses = time.time(), step, []
        if step % args.eval_every == 0 or step == hp["steps"]:
            unet.eval()
            do_eval(step)
            unet.train()
            t0 = time.time()
        elif run.due():
            checkpoint()
    checkpoint()
    log(f"stopped at step {run.step}" if run.stop else f"finished: best {run.state['best']}")


if __name__ == "__main__":
    main()
