"""Train studio-tiny-flow: a tiny Stable-Diffusion-3-layout MMDiT, by flow matching.

    python -m training.train_flow                 # from scratch, CPU, one thread
    python -m training.train_flow --resume        # go on from the checkpoint
    python -m training.train_flow --device cuda --batch 512 --workers 14 --minutes 5 \\
        --out "$OUT" --tar                       # a big GPU, ~5 minutes

The transformer (``SD3Transformer2DModel``) and two tiny CLIP text encoders
(``CLIPTextModelWithProjection``, the first initialised from studio-tiny's text encoder)
are trained together on studio-tiny's shapes data (``training.data``: the same captions,
the held-out combinations never drawn) in the latent space of studio-tiny's VAE, which is
reused frozen. Objective: rectified flow as SD3 trains it: ``x_t = (1 - s) x0 + s e``, the
transformer predicts ``e - x0`` (plain MSE), ``s`` drawn logit-normal(0, 1) and then shifted
like the scheduler (``shift``). 10 % of captions are dropped to ``""`` for classifier-free
guidance; an EMA of the weights is what gets evaluated and exported.

The text goes in exactly as ``StableDiffusion3Pipeline`` gives it without T5: both CLIPs'
penultimate hidden states side by side plus 256 zero tokens, and their pooled outputs.

Every batch (images and captions: ``data.training_batch``), noise draw, timestep and caption
dropout is a pure function of ``(seed, step)``, so a resumed run sees the data it would have
seen; ``--max-steps`` runs are reproducible (the learning rate depends on the step only);
``--minutes`` runs stop (and decay the learning rate) by the clock. SIGTERM/SIGINT: save
and stop after the current step.

Every ``--eval-every`` steps the EMA model draws the held-out evaluation captions
(``data.eval_scenes``) with ``--eval-steps`` Euler steps at cfg ``--eval-cfg`` and
``training.evaluate`` reads the pixels; when the mean adherence improves the model is
exported (a diffusers folder ``<out>/studio-tiny-flow``, or with ``--tar`` one
``<out>/studio-tiny-flow.tar``) with ``studio_tiny_flow.json`` holding its metrics.
At the end (``--max-steps``, ``--minutes`` or a signal) a last evaluation runs first.

``--family flux`` trains the Flux-layout sibling ``studio-tiny-flux`` the same way (checkpoint
``training/checkpoints-flux``): a ``FluxTransformer2DModel`` (double- and single-stream
blocks, no guidance embedding: sampled with true CFG), studio-tiny's ``CLIPTextModel`` (its
pooled vector) and a tiny ``T5EncoderModel`` (its hidden states: the context,
``training.flow_models.FLUX_T5_TOKENS`` tokens of Studio's T5 tokenizer), the latent packed
in 2x2 patches as ``FluxPipeline`` packs it; exported as a ``FluxPipeline`` folder::

    python -m training.train_flow --family flux --device cuda --batch 512 --workers 14 \
        --minutes 5 --out "$OUT" --tar          # benchmarks/gpu_train_flux.sh
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from training import data
from training import flow_models as F
from training.common import (
    REPO,
    StopSignal,
    add_run_args,
    load_tensors,
    log,
    open_state,
    optimizer_moments,
    restore_moments,
    save_tensors,
    script_parser,
    step_generator,
    warmup,
    write_json,
)

NAME = "studio-tiny-flow"
TINY = REPO / "resources" / "models" / "checkpoints" / "studio-tiny"
CKPT_DIR = REPO / "training" / "checkpoints-flow"
#: Per family: the exported model's name and the default checkpoint folder.
NAMES = {"sd3": NAME, "flux": "studio-tiny-flux"}
CKPT_DIRS = {"sd3": CKPT_DIR, "flux": REPO / "training" / "checkpoints-flux"}
OUT_DIR = REPO / "resources" / "models" / "checkpoints"


class Batches(torch.utils.data.Dataset):
    """Item ``step``: batch ``step`` of the run (uint8 images N x 64 x 64 x 3, token ids N x 77,
    position labels). A pure function of (seed, step): DataLoader workers can make them."""

    def __init__(self, seed: int, batch: int, tokenizer_dir: str, t5_tokens: int = 0):
        self.seed, self.batch, self.tokenizer_dir = seed, batch, tokenizer_dir
        self.t5_tokens = t5_tokens  # flux: T5 ids (N x t5_tokens) too
        self._tok = None
        self._t5 = None

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, step: int):
        if self._tok is None:
            from transformers import CLIPTokenizer

            self._tok = CLIPTokenizer.from_pretrained(self.tokenizer_dir, model_max_length=77)
        imgs, caps = data.training_batch(self.seed, int(step), self.batch)
        ids = self._tok(
            caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        if not self.t5_tokens:
            return torch.from_numpy(imgs), ids
        if self._t5 is None:
            self._t5 = F.t5_tokenizer(self.t5_tokens)
        return torch.from_numpy(imgs), ids, t5_ids(self._t5, caps, self.t5_tokens)


def t5_ids(tok, captions, length: int):
    """T5 ids as FluxPipeline gives them (padded and cut to ``max_sequence_length``)."""
    return tok(
        list(captions), padding="max_length", max_length=length, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class StepSampler(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        step = self.start
        while True:
            yield step
            step += 1

    def __len__(self) -> int:
        return 1 << 40


class FlowTrainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ckpt = Path(args.checkpoint_dir)
        self.out = Path(args.out)
        self.device = torch.device(args.device)
        self.state: dict[str, Any] = {}
        self.signal: StopSignal | None = None

    def fresh_state(self) -> dict[str, Any]:
        a = self.args
        if a.family == "flux":
            models = {
                "transformer": {
                    **F.FLUX_TRANSFORMER_CONFIG,
                    **({"num_layers": a.num_layers} if a.num_layers else {}),
                    **({"num_single_layers": a.num_single_layers} if a.num_single_layers else {}),
                },
                "text": F.TEXT_CONFIG,
                "t5": F.T5_CONFIG,
                "t5_tokens": F.FLUX_T5_TOKENS,
                "scheduler": F.FLUX_SCHEDULER_CONFIG,
            }
        else:
            models = {
                "transformer": {
                    **F.TRANSFORMER_CONFIG,
                    "num_layers": a.num_layers or F.TRANSFORMER_CONFIG["num_layers"],
                    "joint_attention_dim": F.TEXT_DIM + a.text_2_width,
                    "pooled_projection_dim": F.TEXT_DIM + a.text_2_width,
                },
                "clip_l_identity": not a.train_clip_l_projection,
                "text": F.TEXT_CONFIG,
                "text_2": {
                    **F.TEXT_CONFIG_2,
                    "hidden_size": a.text_2_width,
                    "intermediate_size": 4 * a.text_2_width,
                    "projection_dim": a.text_2_width,
                },
                "scheduler": F.SCHEDULER_CONFIG,
            }
        return {
            "name": NAMES[a.family],
            "family": a.family,
            "seed": a.seed,
            "step": 0,
            "hparams": {
                "batch": a.batch,
                "lr": a.lr,
                "warmup": a.warmup,
                "weight_decay": a.weight_decay,
                "ema_decay": a.ema_decay,
                "caption_dropout": a.caption_dropout,
                "logit_mean": a.logit_mean,
                "logit_std": a.logit_std,
                "shift": F.SHIFT,
                "decay_from": a.decay_from,
                "init_text_from": "studio-tiny" if a.init_text else None,
                "teacher": a.teacher,
                "distill": a.distill if a.teacher else 0.0,
                "warm_start": bool(a.teacher and a.warm_start),
                "models": models,
            },
            "seconds": 0.0,
            "runs": [],
            "history": [],
            "best": None,
        }

    def hp(self, key: str) -> Any:
        return self.state["hparams"][key]

    @property
    def flux(self) -> bool:
        return self.state.get("family", "sd3") == "flux"

    @property
    def name(self) -> str:
        return NAMES[self.state.get("family", "sd3")]

    @property
    def stop(self) -> bool:
        return self.signal is not None and self.signal.requested

    # --- models --------------------------------------------------------------------------

    def build(self):
        from diffusers import AutoencoderKL
        from transformers import CLIPTokenizer

        torch.manual_seed(self.state["seed"])
        self.tokenizer = CLIPTokenizer.from_pretrained(str(TINY / "tokenizer"), model_max_length=77)
        models = self.hp("models")
        self.t5_tokenizer = None
        if self.flux:
            te1 = F.make_clip_text_model(self.tokenizer, models["text"])
            te2 = F.make_t5(models["t5"])
            tr = F.make_flux_transformer(models["transformer"])
            self.t5_tokenizer = F.t5_tokenizer(models["t5_tokens"])
        else:
            te1 = F.make_text_encoder(self.tokenizer, models["text"])
            te2 = F.make_text_encoder(self.tokenizer, models["text_2"])
            tr = F.make_transformer(models["transformer"])
            from nodes import dit_context

            dit_context.prepare(tr)  # takes the cut context in training (see train)
        if self.hp("init_text_from"):
            # studio-tiny's trained text encoder (same tokenizer, same width) as a head start
            w = load_tensors(TINY / "text_encoder" / "model.safetensors")
            w = {k.removeprefix("text_model."): v for k, v in w.items()}
            getattr(te1, "text_model", te1).load_state_dict(w)
        # SD3's CLIP-L has no projection: single files carry none and diffusers'
        # from_single_file puts an identity there, so the first encoder keeps an identity
        if not self.flux and models.get("clip_l_identity", True):
            with torch.no_grad():
                te1.text_projection.weight.copy_(torch.eye(te1.text_projection.weight.shape[0]))
            te1.text_projection.weight.requires_grad_(False)
        vae = AutoencoderKL.from_pretrained(str(TINY / "vae"), local_files_only=True)
        vae.register_to_config(shift_factor=0.0)
        vae.eval().requires_grad_(False)
        self.te1, self.te2, self.tr, self.vae = te1, te2, tr, vae
        self.named = (
            [(f"te1.{k}", p) for k, p in te1.named_parameters()]
            + [(f"te2.{k}", p) for k, p in te2.named_parameters()]
            + [(f"tr.{k}", p) for k, p in tr.named_parameters()]
        )
        for m in (te1, te2, tr, vae):
            m.to(self.device)
        self.teacher = None
        if self.hp("teacher"):
            self.teacher = self.load_teacher(Path(self.hp("teacher")))

    def load_teacher(self, folder: Path):
        """A trained studio-tiny-flow (SD3) folder, frozen: its predictions are the flux
        model's distillation target (``--teacher``)."""
        from nodes import dit_context

        if not self.flux:
            raise SystemExit("--teacher is for --family flux (an SD3 teacher for a Flux student)")
        folder = folder if folder.is_absolute() else REPO / folder
        index = folder / "model_index.json"
        if not index.is_file() or "StableDiffusion3Pipeline" not in index.read_text():
            raise SystemExit(f"--teacher {folder}: not a studio-tiny-flow (SD3) folder")
        pipe = F.load_pipeline(folder)
        t = (pipe.text_encoder, pipe.text_encoder_2, pipe.transformer)
        dit_context.prepare(t[2])  # T5's zero rows as one weighted row, as in its training
        for m in t:
            m.eval().requires_grad_(False).to(self.device)
        return t

    def warm_start(self) -> None:
        """The flux model's double blocks, output and CLIP from the teacher
        (``flow_models.flux_from_sd3``): a fresh run's start with ``--warm-start``."""
        te1, _, tr = self.teacher
        proj = te1.text_projection.weight.detach().cpu()
        try:
            counts = F.flux_from_sd3(self.tr, tr.cpu(), proj)
        except ValueError as exc:
            raise SystemExit(f"--warm-start: {exc} (give --num-layers to match)") from None
        tr.to(self.device)
        body = getattr(te1, "text_model", te1).state_dict()
        getattr(self.te1, "text_model", self.te1).load_state_dict(body)
        log(
            f"warm start from the teacher: {counts['copied']} tensors copied, {counts['fresh']} new"
        )

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(tensors[n].to(p.dtype))

    # --- run -----------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        torch.set_num_threads(a.threads)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        self.state = open_state(self.ckpt, a, self.fresh_state)
        if self.state.get("family", "sd3") != a.family:
            raise SystemExit(
                f"{self.ckpt} holds a {self.state.get('family', 'sd3')} run, not {a.family}: "
                "give --family to match, or another --checkpoint-dir"
            )
        self.build()
        params = [p for _, p in self.named]
        opt = torch.optim.AdamW(params, lr=self.hp("lr"), weight_decay=self.hp("weight_decay"))
        ema = [p.detach().clone().float() for p in params]
        if (self.ckpt / "weights.safetensors").exists():
            self.load_weights(load_tensors(self.ckpt / "weights.safetensors"))
            e = load_tensors(self.ckpt / "ema.safetensors")
            ema = [e[n].float().to(self.device) for n, _ in self.named]
            moments = {
                k: v.to(self.device)
                for k, v in load_tensors(self.ckpt / "optim.safetensors").items()
            }
            restore_moments(opt, self.named, moments, self.state["step"])
            log(f"resumed at step {self.state['step']}")
        elif a.init_from:
            self.load_folder_weights(Path(a.init_from))
            ema = [p.detach().clone().float() for p in params]
            self.state["hparams"]["init_from"] = str(a.init_from)
            log(f"initialised from {a.init_from}")
        elif self.hp("warm_start"):
            self.warm_start()
            ema = [p.detach().clone().float() for p in params]
        log(
            f"params: transformer {F.n_params(self.tr)} text {F.n_params(self.te1)} "
            f"+ {F.n_params(self.te2)} "
            f"vae {F.n_params(self.vae)} (frozen); device {self.device}"
        )
        run_rec = {"from_step": self.state["step"], "device": str(self.device), "batch": None}
        self.state["runs"].append(run_rec)
        self.signal = StopSignal()
        self.train(opt, params, ema, run_rec)
        self.save(opt, ema)
        hist = self.state["history"]
        if not a.no_final_eval and not (hist and hist[-1]["step"] == self.state["step"]):
            self.evaluate(ema, final=True)
            self.save(opt, ema)
        log("stopped" if self.stop else "finished")

    def progress(self, step: int, t_start: float) -> float:
        """How far through the run (0..1): by steps with --max-steps, by the clock with
        --minutes (whichever is further)."""
        a = self.args
        p = 0.0
        if a.max_steps:
            p = max(p, step / a.max_steps)
        if a.minutes:
            p = max(p, (time.time() - t_start) / (60 * a.minutes))
        return min(p, 1.0)

    def lr_at(self, step: int, p: float) -> float:
        """Linear warm-up, constant, then (from progress ``decay_from``) linear decay to a
        tenth at the end."""
        lr = self.hp("lr") * warmup(step, self.hp("warmup"))
        start = self.hp("decay_from")
        if start < 1.0 and p > start:
            lr *= 1.0 - 0.9 * (p - start) / (1.0 - start)
        return lr

    def train(self, opt, params, ema, run_rec) -> None:
        a = self.args
        seed = self.state["seed"]
        batch = self.hp("batch")
        run_rec["batch"] = batch
        dev = self.device
        cuda = dev.type == "cuda"
        sf = self.vae.config.scaling_factor
        uncond = self.tokenizer(
            [""], padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids.to(dev)
        t5_len = self.hp("models").get("t5_tokens", 0) if self.flux else 0
        uncond_t5 = t5_ids(self.t5_tokenizer, [""], t5_len).to(dev) if self.flux else None
        loader = torch.utils.data.DataLoader(
            Batches(seed, batch, str(TINY / "tokenizer"), t5_len),
            batch_size=None,
            sampler=StepSampler(self.state["step"]),
            num_workers=a.workers,
            pin_memory=cuda,
            prefetch_factor=4 if a.workers else None,
            persistent_workers=False,
            worker_init_fn=_worker_init,
        )
        t_start = time.time()
        t_last = time.time()
        t_ckpt = time.time()
        losses: list[float] = []
        n_log = self.state["step"]
        it = iter(loader)
        try:
            while not self.stop:
                step = self.state["step"]
                p = self.progress(step, t_start)
                if (a.max_steps and step >= a.max_steps) or (a.minutes and p >= 1.0):
                    break
                lr = self.lr_at(step, p)
                for group in opt.param_groups:
                    group["lr"] = lr
                imgs, ids, *rest = next(it)
                g = step_generator(seed, step, 2)
                drop = torch.rand(batch, generator=g) < self.hp("caption_dropout")
                u = torch.sigmoid(
                    self.hp("logit_mean") + self.hp("logit_std") * torch.randn(batch, generator=g)
                )
                sigma = F.shift_sigma(u, self.hp("shift"))
                noise = torch.randn(
                    batch, F.LATENT_CHANNELS, F.LATENT_SIZE, F.LATENT_SIZE, generator=g
                )
                post_eps = torch.randn(noise.shape, generator=g)
                imgs, ids = imgs.to(dev, non_blocking=True), ids.to(dev, non_blocking=True)
                ids = torch.where(drop.to(dev)[:, None], uncond.expand_as(ids), ids)
                if rest:
                    ids5 = rest[0].to(dev, non_blocking=True)
                    ids5 = torch.where(drop.to(dev)[:, None], uncond_t5.expand_as(ids5), ids5)
                sigma, noise, post_eps = sigma.to(dev), noise.to(dev), post_eps.to(dev)
                with torch.no_grad():
                    x = imgs.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
                    post = self.vae.encode(x).latent_dist
                    x0 = (post.mean + post.std * post_eps) * sf
                s = sigma[:, None, None, None]
                xt = (1 - s) * x0 + s * noise
                target = noise - x0
                if self.teacher is not None:  # the teacher's prediction for the same input
                    target = torch.lerp(target, self.teach(xt, sigma, ids), self.hp("distill"))
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda or a.bf16):
                    if self.flux:
                        ctx, pooled = F.encode_text_flux((self.te1, self.te2), ids, ids5)
                        pred = F.flux_forward(self.tr, xt, sigma, ctx, pooled)
                    else:
                        # T5's 256 zero rows as one row of logit weight ln 256: the same
                        # loss and gradients (nodes/dit_context.py), 142 tokens, not 397
                        ctx, pooled = F.encode_text((self.te1, self.te2), ids, t5_tokens=1)
                        pred = F.sd3_forward(self.tr, xt, sigma, ctx, pooled)
                loss = ((pred.float() - target) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                d = min(self.hp("ema_decay"), (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [q.detach().float() for q in params], 1 - d)
                losses.append(loss.detach())
                self.state["step"] = step = step + 1
                if step % a.log_every == 0:
                    dt = time.time() - t_last
                    self.state["seconds"] += dt
                    sps = (step - n_log) / dt
                    mean = float(torch.stack(losses).mean())
                    log(f"step {step} loss {mean:.4f} lr {lr:.2e} {sps:.2f} steps/s")
                    self.state["steps_per_second"] = round(sps, 3)
                    self.state["loss"] = round(mean, 5)
                    losses, n_log, t_last = [], step, time.time()
                if a.eval_every and step % a.eval_every == 0:
                    self.state["seconds"] += time.time() - t_last
                    self.evaluate(ema)
                    t_last = time.time()
                if time.time() - t_ckpt > a.checkpoint_every:
                    self.state["seconds"] += time.time() - t_last
                    self.save(opt, ema)
                    t_last = t_ckpt = time.time()
        finally:
            self.state["seconds"] += time.time() - t_last
            del it, loader

    def teach(self, xt: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The SD3 teacher's velocity for ``xt`` at ``sigma`` and CLIP ids ``ids`` (its
        conditional prediction; dropped captions are ``""``, as it was trained)."""
        te1, te2, tr = self.teacher
        with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, self.bf16):
            ctx, pooled = F.encode_text((te1, te2), ids, t5_tokens=1)
            out = F.sd3_forward(tr, xt, sigma, ctx, pooled)
        return out.float()

    @property
    def bf16(self) -> bool:
        return self.device.type == "cuda" or self.args.bf16

    # --- checkpoint ----------------------------------------------------------------------

    def save(self, opt, ema) -> None:
        save_tensors(self.ckpt / "weights.safetensors", {n: p for n, p in self.named})
        save_tensors(
            self.ckpt / "ema.safetensors",
            {n: e for (n, _), e in zip(self.named, ema, strict=True)},
        )
        save_tensors(
            self.ckpt / "optim.safetensors",
            optimizer_moments(opt, self.named, True, dtype=torch.float32),
        )
        write_json(self.ckpt / "state.json", self.state)
        log(f"checkpoint saved: step {self.state['step']}")

    # --- evaluation and export -----------------------------------------------------------

    def ema_models(self, ema):
        """Copies of the text encoders and transformer holding the EMA weights (fp32)."""
        import copy

        te1, te2, tr = (copy.deepcopy(m).float().eval() for m in (self.te1, self.te2, self.tr))
        named = (
            [(f"te1.{k}", p) for k, p in te1.named_parameters()]
            + [(f"te2.{k}", p) for k, p in te2.named_parameters()]
            + [(f"tr.{k}", p) for k, p in tr.named_parameters()]
        )
        with torch.no_grad():
            for (_, p), e in zip(named, ema, strict=True):
                p.copy_(e)
        return te1, te2, tr

    def evaluate(self, ema, final: bool = False) -> None:
        from training.evaluate import adherence

        a = self.args
        t = time.time()
        te1, te2, tr = self.ema_models(ema)
        caps = [s.caption for s in data.eval_scenes(a.eval_count)]
        images = (generate_flux if self.flux else generate)(
            tr,
            (te1, te2),
            self.vae,
            (self.tokenizer, self.t5_tokenizer) if self.flux else self.tokenizer,
            caps,
            seed=0,
            steps=a.eval_steps,
            guidance=a.eval_cfg,
            shift=self.hp("shift"),
        )
        try:
            rates = adherence(caps, images)
        except Exception as exc:  # never lose a run to the scoring: export it unscored
            log(f"evaluation failed: {exc!r}")
            rates = {"mean": -1.0}
        rec = {
            "step": self.state["step"],
            **{k: round(v, 4) for k, v in rates.items()},
            "steps": a.eval_steps,
            "cfg": a.eval_cfg,
            "seconds": round(self.state["seconds"]),
            "eval_seconds": round(time.time() - t, 1),
        }
        self.state["history"].append(rec)
        log("eval " + json.dumps(rec))
        if a.export_every_eval:  # a sweep's checkpoints, to be measured apart
            self.export(te1, te2, tr, name=f"{self.name}-{self.state['step']}")
        best = self.state.get("best")
        if best is None or rates["mean"] >= best["mean"]:
            self.state["best"] = rec
            self.export(te1, te2, tr)
        elif final and self.args.tar:
            # the end of the run also ships, beside the best, for a closer look
            self.export(te1, te2, tr, name=f"{self.name}-final")

    def load_folder_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        parts = {
            "te1": folder / "text_encoder" / "model.safetensors",
            "te2": folder / "text_encoder_2" / "model.safetensors",
            "tr": folder / "transformer" / "diffusion_pytorch_model.safetensors",
        }
        tensors = {}
        for prefix, f in parts.items():
            tensors.update({f"{prefix}.{k}": v for k, v in load_file(str(f)).items()})
        self.load_weights(tensors)

    def export(self, te1, te2, tr, name: str | None = None) -> None:
        """The EMA model as a diffusers folder (``--tar``: one tar file) in ``--out``."""
        name = name or self.name
        info = {
            "name": self.name,
            "trained_by": "python -m training.train_flow",
            "step": self.state["step"],
            "seconds": round(self.state["seconds"]),
            "runs": self.state["runs"],
            "metrics": self.state["history"][-1],
            "best": self.state["best"],
            "history": self.state["history"],
            "hparams": {k: v for k, v in self.state["hparams"].items() if k != "models"},
        }
        if self.flux:
            export_flux_folder(
                self.out, te1, te2, tr, self.vae, (self.tokenizer, self.t5_tokenizer), info,
                tar=self.args.tar, name=name,
            )  # fmt: skip
        else:
            export_folder(
                self.out, te1, te2, tr, self.vae, self.tokenizer, info, tar=self.args.tar,
                name=name,
            )  # fmt: skip
        log(f"exported step {self.state['step']} to {self.out / name}")


#: The training record in an exported folder (both families).
INFO_FILE = "studio_tiny_flow.json"


def export_folder(
    out: Path, te1, te2, tr, vae, tokenizer, info: dict, tar: bool = False, name: str = NAME
) -> Path:
    """Write ``out/<name>`` (or ``out/<name>.tar``), replacing it whole.
    Transformer weights in fp16 (the rest fp32): under 16 MB in all."""
    import copy

    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=copy.deepcopy(tr).cpu().to(torch.float16),
        scheduler=F.make_scheduler(),
        vae=copy.deepcopy(vae).cpu().float(),
        text_encoder=copy.deepcopy(te1).cpu().float(),
        tokenizer=tokenizer,
        text_encoder_2=copy.deepcopy(te2).cpu().float(),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    return write_pipeline(out, pipe, info, tar, name)


def export_flux_folder(
    out: Path, clip, t5, tr, vae, tokenizers, info: dict, tar: bool = False,
    name: str = NAMES["flux"],
) -> Path:  # fmt: skip
    """``out/<name>`` (or ``.tar``): a ``FluxPipeline`` folder; ``tokenizer_2`` (Studio's T5
    tokenizer) carries the T5 length the model was trained with as its ``model_max_length``.
    Transformer in fp16, the rest fp32 (transformers loads a T5 in the dtype it was saved,
    diffusers the transformer in fp32): about 16 MB, T5 mostly its 32128-token embedding."""
    import copy

    from diffusers import FluxPipeline

    pipe = FluxPipeline(
        transformer=copy.deepcopy(tr).cpu().to(torch.float16),
        scheduler=F.make_scheduler(F.FLUX_SCHEDULER_CONFIG),
        vae=copy.deepcopy(vae).cpu().float(),
        text_encoder=copy.deepcopy(clip).cpu().float(),
        tokenizer=tokenizers[0],
        text_encoder_2=copy.deepcopy(t5).cpu().float(),
        tokenizer_2=tokenizers[1],
    )
    return write_pipeline(out, pipe, info, tar, name)


def write_pipeline(out: Path, pipe, info: dict, tar: bool, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}-"))
    pipe.save_pretrained(tmp, safe_serialization=True)
    add_preview_factors(tmp)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    tmp.chmod(0o755)
    if tar:
        target = out / f"{name}.tar"
        part = out / f".{name}.tar.part"
        with tarfile.open(part, "w") as tf:
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    tf.add(f, arcname=f"{name}/{f.relative_to(tmp)}")
        part.replace(target)
        shutil.copy(tmp / INFO_FILE, out / f"{name}.json")
        shutil.rmtree(tmp)
        return target
    target = out / name
    old = out / f".{name}-old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def add_preview_factors(folder: Path) -> None:
    """Studio's latent -> RGB preview factors: the VAE is studio-tiny's, so they are its."""
    key = "_studio_latent_rgb"
    tiny = json.loads((TINY / "model_index.json").read_text())
    if key in tiny:
        index = json.loads((folder / "model_index.json").read_text())
        index[key] = tiny[key]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _uncond_first(ctx, pooled, n: int, dtype) -> tuple:
    """The text of ``n`` captions followed by one ``""`` (as encoded) rearranged for CFG:
    the empty caption's embeddings repeated ``n`` times, then the captions'."""
    ctx = torch.cat([ctx[n:].expand(n, -1, -1), ctx[:n]]).to(dtype)
    pooled = torch.cat([pooled[n:].expand(n, -1), pooled[:n]]).to(dtype)
    return ctx, pooled


def _decode_uint8(vae, lat) -> np.ndarray:
    """Latents decoded by the VAE (its scale and shift undone) as N x 64 x 64 x 3 uint8."""
    sh = vae.config.shift_factor or 0.0
    img = vae.decode(lat / vae.config.scaling_factor + sh).sample
    img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(
    transformer,
    text_encoders,
    vae,
    tokenizer,
    captions,
    seed: int = 0,
    steps: int = 8,
    guidance: float = 5.0,
    shift: float = F.SHIFT,
    batch: int = 64,
) -> np.ndarray:
    """Images (N x 64 x 64 x 3 uint8) as StableDiffusion3Pipeline draws them (Euler,
    FlowMatchEulerDiscreteScheduler, CFG against ""), noise from a CPU generator per chunk
    (seeded ``seed + chunk start``)."""
    dev = next(transformer.parameters()).device
    dtype = next(transformer.parameters()).dtype
    out = []
    for i in range(0, len(captions), batch):
        chunk = list(captions[i : i + batch])
        n = len(chunk)
        ids = tokenizer(
            [*chunk, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids.to(dev)
        ctx, pooled = F.encode_text(text_encoders, ids)
        ctx, pooled = _uncond_first(ctx, pooled, n, dtype)
        sched = F.make_scheduler({**F.SCHEDULER_CONFIG, "shift": shift})
        sched.set_timesteps(steps, device=dev)
        g = torch.Generator().manual_seed(seed + i)
        lat = torch.randn(n, F.LATENT_CHANNELS, F.LATENT_SIZE, F.LATENT_SIZE, generator=g).to(dev)
        for t in sched.timesteps:
            v = transformer(
                hidden_states=torch.cat([lat, lat]).to(dtype),
                timestep=t.expand(2 * n),
                encoder_hidden_states=ctx,
                pooled_projections=pooled,
                return_dict=False,
            )[0].float()
            vu, vc = v.chunk(2)
            lat = sched.step(vu + guidance * (vc - vu), t, lat, return_dict=False)[0]
        out.append(_decode_uint8(vae, lat))
    return np.concatenate(out)


@torch.no_grad()
def generate_flux(
    transformer,
    text_encoders,
    vae,
    tokenizers,
    captions,
    seed: int = 0,
    steps: int = 8,
    guidance: float = 5.0,
    shift: float = F.SHIFT,
    batch: int = 64,
) -> np.ndarray:
    """Images (N x 64 x 64 x 3 uint8) as FluxPipeline draws them with true CFG against ""
    (``true_cfg_scale`` ``guidance``; sigmas ``linspace(1, 1/steps)``, shifted statically),
    noise from a CPU generator per chunk (seeded ``seed + chunk start``)."""
    dev = next(transformer.parameters()).device
    dtype = next(transformer.parameters()).dtype
    clip_tok, t5_tok = tokenizers
    out = []
    for i in range(0, len(captions), batch):
        chunk = list(captions[i : i + batch])
        n = len(chunk)
        ids = clip_tok(
            [*chunk, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids.to(dev)
        ids5 = t5_ids(t5_tok, [*chunk, ""], t5_tok.model_max_length).to(dev)
        ctx, pooled = F.encode_text_flux(text_encoders, ids, ids5)
        ctx, pooled = _uncond_first(ctx, pooled, n, dtype)
        sched = F.make_scheduler({**F.FLUX_SCHEDULER_CONFIG, "shift": shift})
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=dev)
        g = torch.Generator().manual_seed(seed + i)
        lat = torch.randn(n, F.LATENT_CHANNELS, F.LATENT_SIZE, F.LATENT_SIZE, generator=g).to(dev)
        for t in sched.timesteps:
            v = F.flux_forward(
                transformer, torch.cat([lat, lat]).to(dtype), (t / 1000).expand(2 * n), ctx, pooled
            ).float()
            vu, vc = v.chunk(2)
            lat = sched.step(vu + guidance * (vc - vu), t, lat, return_dict=False)[0]
        out.append(_decode_uint8(vae, lat))
    return np.concatenate(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = script_parser("python -m training.train_flow", __doc__)
    add_run_args(p, CKPT_DIR, 300.0)
    p.set_defaults(checkpoint_dir=None)  # the family's (CKPT_DIRS)
    p.add_argument(
        "--family",
        choices=tuple(NAMES),
        default="sd3",
        help="sd3: studio-tiny-flow (default); flux: its Flux-layout sibling studio-tiny-flux",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes drawing data")
    p.add_argument("--out", default=str(OUT_DIR), help="where the model is exported")
    p.add_argument("--tar", action="store_true", help="export as one <name>.tar")
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this long (0: never)")
    p.add_argument("--max-steps", type=int, default=0, help="stop at this step (0: never)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument(
        "--logit-mean",
        type=float,
        default=0.0,
        help="mean of the logit-normal noise-level draw, before the shift (above 0: more "
        "training at high noise, where the layout is decided)",
    )
    p.add_argument("--logit-std", type=float, default=1.0, help="its standard deviation")
    p.add_argument(
        "--decay-from",
        type=float,
        default=0.7,
        help="progress (0..1 of --max-steps or --minutes) from which the learning rate "
        "decays linearly to a tenth (1: never)",
    )
    p.add_argument("--no-init-text", dest="init_text", action="store_false")
    p.add_argument(
        "--teacher",
        default=None,
        help="flux: a trained studio-tiny-flow (SD3) folder whose predictions are the target "
        "(distillation; relative to the repository or absolute)",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=1.0,
        help="with --teacher: the target's share from the teacher (the rest: the data's)",
    )
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="with --teacher: start the double blocks, output and CLIP from the teacher's "
        "(--num-layers must be the teacher's joint blocks)",
    )
    p.add_argument("--init-from", default=None, help=f"start from an exported {NAME} folder")
    p.add_argument(
        "--num-layers",
        type=int,
        default=0,
        help="joint blocks, flux: double-stream blocks (fewer only for quick tests; "
        "0: the model's own)",
    )
    p.add_argument(
        "--num-single-layers",
        type=int,
        default=0,
        help="flux: single-stream blocks (fewer only for quick tests; 0: the model's own)",
    )
    p.add_argument(
        "--text-2-width",
        type=int,
        default=F.TEXT_DIM_2,
        help="text_encoder_2's width (the shipped model's GPU run, before it was widened: 64)",
    )
    p.add_argument(
        "--train-clip-l-projection",
        action="store_true",
        help="train text_encoder's projection too (as the shipped model's GPU run did; "
        "export_flow_single_file --fold-clip-l-projection folds it into the transformer)",
    )
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=500, help="steps (0: only at the end)")
    p.add_argument("--eval-count", type=int, default=60)
    p.add_argument("--eval-steps", type=int, default=8)
    p.add_argument("--eval-cfg", type=float, default=F.DEFAULT_CFG)
    p.add_argument("--no-final-eval", action="store_true")
    p.add_argument(
        "--export-every-eval",
        action="store_true",
        help="also export each evaluation's model as <name>-<step> in --out",
    )
    p.add_argument(
        "--bf16", action="store_true", help="bf16 autocast on the CPU too (always on CUDA)"
    )
    args = p.parse_args(argv)
    if args.checkpoint_dir is None:
        args.checkpoint_dir = str(CKPT_DIRS[args.family])
    return args


def main(argv: list[str] | None = None) -> None:
    FlowTrainer(parse_args(argv)).run()


if __name__ == "__main__":
    main()
