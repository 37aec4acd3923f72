"""Train studio-tiny-canny: a ControlNet for studio-tiny on canny edge maps.

    python -m training.train_controlnet            # from scratch, seed 0
    python -m training.train_controlnet --resume   # go on from training/companions/controlnet/

Standard ControlNet training: ``ControlNetModel.from_unet`` copies the base UNet's encoder
(the zero convolutions start at zero, so at step 0 the base is unchanged); the base
(``resources/models/checkpoints/studio-tiny``: its VAE, text encoder and EMA UNet, as
exported when the run starts) stays frozen; the loss is the base trainer's min-SNR-weighted
epsilon loss of the frozen UNet given the ControlNet's residuals. The control image is
``data.canny_map(data.render(scene))`` (64x64, so the conditioning embedding downsamples
4x, to the 16x16 latents); the caption never names the position (the edges say where), and
10 % of captions are dropped for classifier-free guidance, as in the base trainer.

Every ``--eval-every`` steps the ControlNet draws held-out scenes whose shape sits on the
left or on the right (edges from ``canny_map``, captions without a position word; 20 Euler
steps, cfg 7) and ``training.evaluate.analyze`` reads where the shape came out; the best
model so far (by that side rate) is exported in fp16 as a diffusers folder to
``resources/models/controlnet/studio-tiny-canny/``.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
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
from training.evaluate import analyze, position_ok, score
from training.evaluate import generate as evaluate_generate

EXPORT = EMBEDDED / "controlnet" / "studio-tiny-canny"
#: The conditioning embedding downsamples 64 -> 16 (two stride-2 convs), like the VAE.
COND_CHANNELS = (16, 32, 64)


# ----------------------------------------------------------------------------- model


def make_controlnet(unet) -> Any:
    """``ControlNetModel.from_unet``, keeping the pooled-text attention's head count (which
    from_unet does not copy: it would fall back to 64 heads and pool differently)."""
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS)
    heads = unet.config.get("addition_embed_type_num_heads")
    if heads is not None and cn.config.get("addition_embed_type_num_heads") != heads:
        fixed = ControlNetModel.from_config({**cn.config, "addition_embed_type_num_heads": heads})
        fixed.load_state_dict(cn.state_dict())
        cn = fixed
    return cn


# ----------------------------------------------------------------------------- data


def control_image(scene: data.Scene) -> np.ndarray:
    return data.canny_map(data.render(scene))


def control_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] (as the ControlNet pipeline prepares it)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def no_position(scene: data.Scene) -> str:
    return data.make_caption(scene.shape, scene.color, scene.background, scene.size_word, None)


def training_batch(seed: int, step: int, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, their canny maps, and captions without the position word."""
    scenes = data.sample_scenes(data.batch_rng(seed, step, stream=30), n, "train")
    images = data.render_batch(scenes)
    controls = np.stack([data.canny_map(im) for im in images])
    return images, controls, [no_position(s) for s in scenes]


def side_scenes(n: int, seed: int = 77) -> list[tuple[data.Scene, str]]:
    """``n`` held-out scenes, alternately on the right and on the left (mid height)."""
    rng = np.random.default_rng(seed)
    combos = sorted(data.heldout_combos())
    out = []
    for i in range(n):
        side = ("right", "left")[i % 2]
        combo = combos[(i * 7) % len(combos)]
        scene = data.sample_scene(rng, combo, size_word=data.SIZES[(i // 2) % 2], position=side)
        out.append((scene, side))
    return out


# ----------------------------------------------------------------------------- sampling


class ControlledUNet:
    """The UNet with a ControlNet's residuals added, for ``training.evaluate.generate``: the
    control image goes to both halves of the guidance batch (as
    StableDiffusionControlNetPipeline does)."""

    def __init__(self, unet, controlnet, controls: np.ndarray, scale: float = 1.0):
        self.unet, self.controlnet, self.scale = unet, controlnet, scale
        self.config = unet.config
        self.image = torch.cat([control_tensor(controls)] * 2)

    def __call__(self, inp, t, encoder_hidden_states):
        down, mid = self.controlnet(
            inp,
            t,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=self.image,
            conditioning_scale=self.scale,
            return_dict=False,
        )
        return self.unet(
            inp,
            t,
            encoder_hidden_states=encoder_hidden_states,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )


def generate(
    unet,
    text_encoder,
    vae,
    tokenizer,
    captions: list[str],
    controls: np.ndarray | None,
    controlnet=None,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.0,
    scale: float = 1.0,
    scheduler_config: dict | None = None,
) -> np.ndarray:
    """``training.evaluate.generate`` (Euler, CFG), with the ControlNet when there is one."""
    if controlnet is not None and controls is not None:
        unet = ControlledUNet(unet, controlnet, controls, scale)
    return evaluate_generate(
        unet,
        text_encoder,
        vae,
        tokenizer,
        captions,
        seed=seed,
        steps=steps,
        guidance=guidance,
        scheduler_config=scheduler_config,
    )


def side_rates(
    images: np.ndarray, cases: list[tuple[data.Scene, str]], captions: list[str]
) -> dict[str, float]:
    """Fraction of images whose shape's centroid is on the control's side, and how often
    colour/background/shape still follow the caption."""
    side, attrs = [], {"color": [], "background": [], "shape": []}
    for img, (_, want), cap in zip(images, cases, captions, strict=True):
        a = analyze(img)
        side.append(a.color is not None and position_ok(want, a.cx, a.cy))
        for k, v in score(cap, img).items():
            if k in attrs:
                attrs[k].append(v)
    return {"side": float(np.mean(side)), **{k: float(np.mean(v)) for k, v in attrs.items()}}


def evaluate(
    unet, te, vae, tok, controlnet, cases, seeds=(0,), scheduler_config=None
) -> dict[str, float]:
    caps = [no_position(s) for s, _ in cases]
    controls = np.stack([control_image(s) for s, _ in cases])
    images, all_cases, all_caps = [], [], []
    for seed in seeds:
        images.extend(
            generate(
                unet,
                te,
                vae,
                tok,
                caps,
                controls,
                controlnet,
                seed=seed,
                scheduler_config=scheduler_config,
            )
        )
        all_cases.extend(cases)
        all_caps.extend(caps)
    return side_rates(np.stack(images), all_cases, all_caps)


# ----------------------------------------------------------------------------- export


def export(controlnet, folder: Path, info: dict[str, Any]) -> None:
    """The ControlNet as a diffusers folder with fp16 weights (a quarter of the size of the
    fp32 training weights, loaded back as fp32 by ``from_pretrained(torch_dtype=...)``)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    half = copy.deepcopy(controlnet).to(torch.float16)
    half.save_pretrained(tmp, safe_serialization=True)
    (tmp / "studio_tiny_canny.json").write_text(json.dumps(info, indent=1) + "\n")
    tmp.chmod(0o755)
    for f in tmp.iterdir():
        f.chmod(0o644)
    old = folder.with_name(f".{folder.name}-old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(f.stat().st_size for f in folder.iterdir())
    log(f"exported to {folder} ({size / 1e6:.2f} MB)")


# ----------------------------------------------------------------------------- training


def main(argv: list[str] | None = None) -> None:
    p = companion_parser(
        "controlnet",
        __doc__,
        export=EXPORT,
        steps=1500,
        batch=16,
        lr=5e-4,
        warmup=100,
        eval_every=250,
        eval_count=40,
    )
    args = p.parse_args(argv)
    keys = ("steps", "batch", "lr", "warmup", "caption_dropout", "min_snr_gamma")
    base_dir = Path(args.base)
    run = CompanionRun(args, {k: getattr(args, k) for k in keys}, base=base_dir)
    hp, seed = run.hp, run.seed
    base = FrozenBase.load(base_dir)
    unet, te, vae, tok = base.unet, base.text_encoder, base.vae, base.tokenizer
    torch.manual_seed(seed)
    cn = make_controlnet(unet)
    named = list(cn.named_parameters())
    opt = torch.optim.AdamW(cn.parameters(), lr=hp["lr"], weight_decay=0.01)
    if run.has("controlnet"):
        cn.load_state_dict(run.load("controlnet"))
        restore_moments(opt, named, run.load("optim"), run.step)
        log(f"loaded the ControlNet at step {run.step}")
    cn.train()
    log(f"params: controlnet {M.n_params(cn)} (frozen unet {M.n_params(unet)})")

    sched_cfg = base.scheduler_config
    cases = side_scenes(args.eval_count)
    if "baseline" not in run.state:
        # the same scenes without the ControlNet: how often the shape lands on that side anyway
        run.state["baseline"] = evaluate(
            unet, te, vae, tok, None, cases, scheduler_config=sched_cfg
        )
        log(f"baseline without the ControlNet: {json.dumps(run.state['baseline'])}")

    def train_step(step: int) -> tuple[float, float]:
        lr = hp["lr"] * warmup(step, hp["warmup"])
        set_lr(opt, lr)
        imgs, controls, caps = training_batch(seed, step, hp["batch"])
        g = step_generator(seed, step, 30)
        b = noised_batch(base, imgs, caps, g, hp["caption_dropout"])
        down, mid = cn(
            b.noisy,
            b.t,
            encoder_hidden_states=b.hidden,
            controlnet_cond=control_tensor(controls),
            return_dict=False,
        )
        pred = unet(
            b.noisy,
            b.t,
            encoder_hidden_states=b.hidden,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        loss = M.diffusion_loss(base.scheduler, pred, b.latents, b.noise, b.t, hp["min_snr_gamma"])
        optimizer_step(opt, loss, cn.parameters())
        return loss.item(), lr

    def measure() -> dict[str, float]:
        cn.eval()
        try:
            return evaluate(unet, te, vae, tok, cn, cases, scheduler_config=sched_cfg)
        finally:
            cn.train()

    def export_best(rec: dict[str, Any]) -> None:
        info = {
            "name": "studio-tiny-canny",
            "trained_by": "python -m training.train_controlnet",
            "base": run.state["base"],
            "seed": seed,
            "hparams": hp,
            "metrics": rec,
            "baseline_without_controlnet": run.state["baseline"],
        }
        export(cn, Path(args.export), info)

    def checkpoint() -> None:
        run.save(
            {
                "controlnet": cn.state_dict(),
                "optim": optimizer_moments(opt, named, keep_first=False),
            }
        )

    run.train(
        train_step,
        eval_every=args.eval_every,
        measure=measure,
        rank=lambda r: (r["side"], r["color"] + r["shape"] + r["background"]),
        export=export_best,
        checkpoint=checkpoint,
        meter=LossMeter(run.step),
    )


if __name__ == "__main__":
    main()
