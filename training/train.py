"""Train studio-tiny from a seed: the VAE first, then the text encoder and UNet together.

    python -m training.train            # start from scratch (refuses to overwrite a checkpoint)
    python -m training.train --resume   # go on from training/checkpoints/

Phases: ``vae`` (until the held-in PSNR reaches ``--vae-target-psnr``, then a short polish
at a tenth of the learning rate), then ``unet`` (text encoder + UNet on the frozen VAE's
latents, min-SNR-weighted epsilon loss, caption dropout for classifier-free guidance, EMA).

Every batch, every noise draw and every timestep is a pure function of (seed, step), so a
run is reproducible and a resumed run sees the same data it would have seen. The checkpoint
(``training/checkpoints/``) is small enough to commit: the trained weights in fp32, Adam's
second moments in bf16 (the first moments re-warm in a few steps and are not kept), the EMA
weights in fp16, and the step, seed, metrics and RNG state in ``state.json``.

Every ``--eval-every`` steps the EMA model draws the held-out evaluation captions with 20
Euler steps at cfg 7 and ``training.evaluate`` scores them; when the mean adherence
improves, the model is exported as a diffusers folder to
``resources/models/checkpoints/studio-tiny/``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import data, preview_factors
from training import models as M
from training.common import (
    REPO,
    LossMeter,
    StopSignal,
    add_run_args,
    load_tensors,
    log,
    open_state,
    optimizer_moments,
    optimizer_step,
    restore_moments,
    save_tensors,
    script_parser,
    set_lr,
    step_generator,
    warmup,
    write_json,
)

CKPT_DIR = REPO / "training" / "checkpoints"
EXPORT_DIR = REPO / "resources" / "models" / "checkpoints" / "studio-tiny"


def position_label(caption: str) -> int:
    """The index of a caption's position word in ``data.POSITIONS``; no word: the last."""
    pos = data.parse_caption(caption)["position"] if caption else None
    return data.POSITIONS.index(pos) if pos else len(data.POSITIONS)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] image batches, after quantizing both to 8 bits."""
    qa = ((a.clamp(-1, 1) + 1) * 127.5).round()
    qb = ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = ((qa - qb) ** 2).mean().item()
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


# ----------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ckpt = Path(args.checkpoint_dir)
        self.export_dir = Path(args.export_dir)
        self.state: dict[str, Any] = {}
        self.signal: StopSignal | None = None
        self.last_ckpt = time.time()
        self.last_commit = time.time()

    # --- state -------------------------------------------------------------------------

    def fresh_state(self) -> dict[str, Any]:
        a = self.args
        return {
            "seed": a.seed,
            "phase": "vae",
            "step": 0,
            "hparams": {
                "vae_batch": a.vae_batch,
                "vae_lr": a.vae_lr,
                "vae_target_psnr": a.vae_target_psnr,
                "vae_max_steps": a.vae_max_steps,
                "vae_decay_start": 1500,
                "vae_half_life": 750,
                "decoder_lr": 1e-4,
                "decoder_every": 4,
                "vae_polish_steps": a.vae_polish_steps,
                "batch": a.batch,
                "lr": a.lr,
                "warmup": a.warmup,
                "ema_decay": a.ema_decay,
                "caption_dropout": a.caption_dropout,
                "min_snr_gamma": a.min_snr_gamma,
                # what the first run switched to on the way (see training/README.md)
                "t_power": 2.0 if a.t_power is None else a.t_power,
                "position_probe": 0.2 if a.position_probe is None else a.position_probe,
                "models": {
                    "vae": M.VAE_CONFIG,
                    "text": M.TEXT_CONFIG,
                    "unet": M.UNET_CONFIG,
                    "scheduler": M.SCHEDULER_CONFIG,
                },
            },
            "seconds": {"vae": 0.0, "unet": 0.0},
            "vae": {},
            "history": [],
            "best": None,
        }

    def hp(self, key: str) -> Any:
        return self.state["hparams"][key]

    @property
    def sched_config(self) -> dict[str, Any]:
        """The noise schedule and objective the UNet is trained (and exported) with."""
        return self.state["hparams"]["models"]["scheduler"]

    @property
    def stop(self) -> bool:
        return self.signal is not None and self.signal.requested

    def run(self) -> None:
        torch.set_num_threads(self.args.threads)
        self.state = open_state(self.ckpt, self.args, self.fresh_state)
        if self.args.resume:
            log(f"resuming phase {self.state['phase']} at step {self.state['step']}")
            self.apply_changes()
        self.signal = StopSignal()
        (self.ckpt / "tokenizer").mkdir(exist_ok=True)
        from training.tokenizer import load_tokenizer, save_tokenizer

        save_tokenizer(self.ckpt / "tokenizer")
        self.tokenizer = load_tokenizer(self.ckpt / "tokenizer")
        if self.state["phase"] == "vae":
            self.train_vae()
        if self.state["phase"] == "unet" and not self.stop:
            self.train_unet()
        log("stopped" if self.stop else "finished")

    def apply_changes(self) -> None:
        """Recipe changes asked for on resuming, recorded in the state."""
        if self.args.position_probe is not None:
            self.state["hparams"]["position_probe"] = self.args.position_probe
            self.state.setdefault("changes", []).append(
                {"step": self.state["step"], "position_probe": self.args.position_probe}
            )
        if self.args.t_power is not None:
            self.state["hparams"]["t_power"] = self.args.t_power
            self.state.setdefault("changes", []).append(
                {"step": self.state["step"], "t_power": self.args.t_power}
            )
        sched_cfg = self.state["hparams"]["models"]["scheduler"]
        if self.args.v_zero_snr and sched_cfg != M.SCHEDULER_CONFIG:
            # switch the objective (epsilon -> v-prediction at zero terminal SNR), going on
            # from the weights learnt so far; the EMA restarts from them
            self.state["hparams"]["models"]["scheduler"] = M.SCHEDULER_CONFIG
            self.state["objective_from_step"] = self.state["step"]
            self.state["ema_restart"] = True
            log(f"objective: v-prediction at zero terminal SNR from step {self.state['step']}")

    # --- VAE ---------------------------------------------------------------------------

    def vae_eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        seed = self.state["seed"]
        held_in = data.sample_scenes(data.batch_rng(seed, 0, stream=90), 128, "train")
        held_out = data.sample_scenes(data.batch_rng(seed, 0, stream=91), 128, "heldout")
        return data.to_tensor(data.render_batch(held_in)), data.to_tensor(
            data.render_batch(held_out)
        )

    @torch.no_grad()
    def vae_psnr(self, vae, images: torch.Tensor) -> float:
        vae.eval()
        recs = [vae.decode(vae.encode(x).latent_dist.mode()).sample for x in images.split(64)]
        vae.train()
        return psnr(torch.cat(recs), images)

    def vae_lr(self, step: int, polishing: bool) -> float:
        """Warm-up over 100 steps, constant, then halving every ``vae_half_life`` steps after
        ``vae_decay_start`` (at a constant 1e-3 the PSNR swung by 3 dB between evaluations);
        never below a tenth, which is also the polish rate."""
        base = self.hp("vae_lr")
        if polishing:
            return 0.1 * base
        start = self.state["hparams"].get("vae_decay_start", 1500)
        half = self.state["hparams"].get("vae_half_life", 750)
        decay = max(0.1, 0.5 ** (max(0, step - start) / half))
        return base * min(1.0, (step + 1) / 100) * decay

    def train_vae(self) -> None:
        seed = self.state["seed"]
        torch.manual_seed(seed)
        vae = M.make_vae()
        named = list(vae.named_parameters())
        opt = torch.optim.Adam(vae.parameters(), lr=self.hp("vae_lr"))
        if (self.ckpt / "vae.safetensors").exists():
            vae.load_state_dict(load_tensors(self.ckpt / "vae.safetensors"))
            if (self.ckpt / "vae_optim.safetensors").exists():
                restore_moments(
                    opt,
                    named,
                    load_tensors(self.ckpt / "vae_optim.safetensors"),
                    self.state["step"],
                )
        held_in, held_out = self.vae_eval_set()
        vst = self.state["vae"]
        batch = self.hp("vae_batch")
        t_phase = time.time()
        meter = LossMeter(self.state["step"], name="mse", digits=5, prefix="vae ")
        while not self.stop:
            step = self.state["step"]
            polish_from = vst.get("polish_from")
            if polish_from is not None and step >= polish_from + self.hp("vae_polish_steps"):
                break
            if polish_from is None and step >= self.hp("vae_max_steps"):
                break
            lr = self.vae_lr(step, polish_from is not None)
            set_lr(opt, lr)
            imgs, _ = data.training_batch(seed, step, batch, stream=1)
            x = data.to_tensor(imgs)
            g = step_generator(seed, step, 1)
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=g)).sample
            mse = torch.nn.functional.mse_loss(rec, x)
            loss = mse + 0.1 * (rec - x).abs().mean() + self.args.vae_kl * post.kl().mean()
            optimizer_step(opt, loss, vae.parameters())
            meter.add(mse.item())
            self.state["step"] = step = step + 1
            if step % 25 == 0:
                meter.report(step, lr)
            if step % self.args.vae_eval_every == 0:
                p_in, p_out = self.vae_psnr(vae, held_in), self.vae_psnr(vae, held_out)
                vst.update(psnr_held_in=p_in, psnr_held_out=p_out, psnr_step=step)
                self.state["history"].append(
                    {"phase": "vae", "step": step, "psnr_held_in": p_in, "psnr_held_out": p_out}
                )
                log(f"vae step {step} PSNR held-in {p_in:.2f} dB held-out {p_out:.2f} dB")
                if polish_from is None and p_in >= self.hp("vae_target_psnr"):
                    vst["polish_from"] = step
                    log(f"target PSNR reached; polishing {self.hp('vae_polish_steps')} steps")
            if time.time() - self.last_ckpt > self.args.checkpoint_every:
                self.state["seconds"]["vae"] += time.time() - t_phase
                t_phase = time.time()
                self.save_vae(vae, opt, named)
        self.state["seconds"]["vae"] += time.time() - t_phase
        if self.stop:
            self.save_vae(vae, opt, named)
            return
        p_in, p_out = self.vae_psnr(vae, held_in), self.vae_psnr(vae, held_out)
        vst.update(
            psnr_held_in=p_in,
            psnr_held_out=p_out,
            psnr_step=self.state["step"],
            steps=self.state["step"],
        )
        # SD's convention: latents * scaling_factor have unit variance
        with torch.no_grad():
            imgs, _ = data.training_batch(seed, 0, 512, stream=92)
            z = torch.cat(
                [
                    vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(0))
                    for x in data.to_tensor(imgs).split(64)
                ]
            )
        vst["scaling_factor"] = float(1.0 / z.std())
        log(
            f"VAE done: PSNR held-in {p_in:.2f} dB, held-out {p_out:.2f} dB, "
            f"scaling factor {vst['scaling_factor']:.4f}, {self.state['seconds']['vae']:.0f} s"
        )
        self.state["phase"] = "unet"
        self.state["step"] = 0
        (self.ckpt / "vae_optim.safetensors").unlink(missing_ok=True)
        self.save_vae(vae, None, named)

    def save_vae(self, vae, opt, named) -> None:
        save_tensors(self.ckpt / "vae.safetensors", vae.state_dict())
        if opt is not None:
            save_tensors(self.ckpt / "vae_optim.safetensors", optimizer_moments(opt, named, True))
        self.save_state()

    def save_state(self) -> None:
        write_json(self.ckpt / "state.json", self.state)
        self.last_ckpt = time.time()
        log(f"checkpoint saved: phase {self.state['phase']} step {self.state['step']}")
        self.maybe_commit()

    def load_vae(self):
        vae = M.make_vae()
        vae.load_state_dict(load_tensors(self.ckpt / "vae.safetensors"))
        vae.register_to_config(scaling_factor=self.state["vae"]["scaling_factor"])
        vae.eval().requires_grad_(False)
        return vae

    # --- text encoder + UNet -----------------------------------------------------------

    def train_unet(self) -> None:
        seed = self.state["seed"]
        torch.manual_seed(seed + 1)
        vae = self.load_vae()
        sf = vae.config.scaling_factor
        # The decoder (and post_quant_conv) keeps training on the frozen encoder's latents, so
        # the latent space the UNet learns stays fixed while the decoded images sharpen.
        dec_named = [
            (f"vae.{k}", p)
            for k, p in vae.named_parameters()
            if k.startswith(("decoder.", "post_quant_conv."))
        ]
        dec_params = [p.requires_grad_(True) for _, p in dec_named]
        dec_opt = torch.optim.Adam(dec_params, lr=self.state["hparams"].get("decoder_lr", 1e-4))
        dec_every = self.state["hparams"].get("decoder_every", 4)
        if (self.ckpt / "vae_dec_optim.safetensors").exists():
            restore_moments(
                dec_opt,
                dec_named,
                load_tensors(self.ckpt / "vae_dec_optim.safetensors"),
                self.state["step"] // max(dec_every, 1),
            )
        self.vae_sets = self.vae_eval_set()
        te = M.make_text_encoder(self.tokenizer)
        unet = M.make_unet()
        named = [(f"te.{k}", p) for k, p in te.named_parameters()] + [
            (f"unet.{k}", p) for k, p in unet.named_parameters()
        ]
        params = [p for _, p in named]
        opt = torch.optim.AdamW(params, lr=self.hp("lr"), weight_decay=0.01)
        ema = [p.detach().clone() for p in params]
        wfile = self.ckpt / "unet_te.safetensors"
        if wfile.exists():
            w = load_tensors(wfile)
            te.load_state_dict({k[3:]: v for k, v in w.items() if k.startswith("te.")})
            unet.load_state_dict({k[5:]: v for k, v in w.items() if k.startswith("unet.")})
            e = load_tensors(self.ckpt / "ema.safetensors")
            ema = [e[n].float() for n, _ in named]
            if self.state.pop("ema_restart", False):
                ema = [p.detach().clone() for p in params]
            restore_moments(
                opt,
                named,
                load_tensors(self.ckpt / "unet_te_optim.safetensors"),
                self.state["step"],
            )
            log(f"loaded text encoder + UNet at step {self.state['step']}")
        log(f"params: vae {M.n_params(vae)} text {M.n_params(te)} unet {M.n_params(unet)}")
        sched = M.make_scheduler(self.sched_config)
        eval_scenes = data.eval_scenes(self.args.eval_count)
        eval_caps = [s.caption for s in eval_scenes]
        batch, gamma, p_drop = (
            self.hp("batch"),
            self.hp("min_snr_gamma"),
            self.hp("caption_dropout"),
        )
        uncond_ids = self.tokenize([""])
        probe, probe_opt, probe_w = self.position_probe()
        probe_hits: list[float] = []
        t_phase = time.time()
        meter = LossMeter(self.state["step"], prefix="unet ")
        dec_losses: list[float] = []
        self.vae, self.dec_named, self.dec_opt = vae, dec_named, dec_opt
        while not self.stop and self.state["step"] < self.args.max_steps:
            step = self.state["step"]
            since = step - self.state.get("objective_from_step", 0)
            lr = self.hp("lr") * warmup(since, self.hp("warmup"))
            set_lr(opt, lr)
            imgs, caps = data.training_batch(seed, step, batch)
            g = step_generator(seed, step, 2)
            drop = torch.rand(batch, generator=g) < p_drop
            ids = self.tokenize(caps)
            ids[drop] = uncond_ids
            with torch.no_grad():
                lat = vae.encode(data.to_tensor(imgs)).latent_dist.sample(generator=g) * sf
            noise = torch.randn(lat.shape, generator=g)
            n_t = sched.config.num_train_timesteps
            t_power = self.state["hparams"].get("t_power", 1.0)
            if t_power == 1.0:
                t = torch.randint(0, n_t, (batch,), generator=g)
            else:
                # more of the noisiest steps, where the layout (the position) is decided
                u = torch.rand(batch, generator=g) ** (1.0 / t_power)
                t = (u * n_t).long().clamp(max=n_t - 1)
            noisy = sched.add_noise(lat, noise, t)
            hidden = te(ids)[0]
            pred = unet(noisy, t, encoder_hidden_states=hidden).sample
            loss = M.diffusion_loss(sched, pred, lat, noise, t, gamma)
            total = loss
            if probe is not None:
                labels = torch.tensor([position_label(c) for c in caps])
                keep = ~drop
                logits = probe(hidden.mean(dim=1)[keep])
                total = loss + probe_w * torch.nn.functional.cross_entropy(logits, labels[keep])
                probe_hits.append(float((logits.argmax(-1) == labels[keep]).float().mean()))
                probe_opt.zero_grad(set_to_none=True)
            optimizer_step(opt, total, params)
            if probe is not None:
                probe_opt.step()
            d = min(self.hp("ema_decay"), (1 + since) / (10 + since))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - d)
            meter.add(loss.item())
            if dec_every > 0 and step % dec_every == 0:
                dec_losses.append(self.decoder_step(vae, dec_opt, dec_params, step))
            self.state["step"] = step = step + 1
            if step % 25 == 0:
                if dec_losses:
                    log(f"decoder mse {np.mean(dec_losses):.5f}")
                    dec_losses = []
                sps = meter.report(step, lr)
                if probe_hits:
                    log(f"position probe accuracy {np.mean(probe_hits):.3f}")
                    probe_hits = []
                self.state["steps_per_second"] = sps
            if step % self.args.eval_every == 0:
                self.state["seconds"]["unet"] += time.time() - t_phase
                t_phase = time.time()
                self.evaluate(te, unet, named, ema, vae, eval_caps)
                meter.restart_clock()
            if time.time() - self.last_ckpt > self.args.checkpoint_every:
                self.state["seconds"]["unet"] += time.time() - t_phase
                t_phase = time.time()
                self.save_unet(named, opt, ema)
        self.state["seconds"]["unet"] += time.time() - t_phase
        self.save_unet(named, opt, ema)

    def decoder_step(self, vae, opt, params, step: int) -> float:
        seed = self.state["seed"]
        imgs, _ = data.training_batch(seed, step, self.hp("vae_batch"), stream=3)
        x = data.to_tensor(imgs)
        g = step_generator(seed, step, 3)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=g)
        rec = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(rec, x)
        loss = mse + 0.1 * (rec - x).abs().mean()
        # warm up: Adam's first steps move every weight by about the full rate
        start = self.state.setdefault("decoder_from", step)
        set_lr(opt, self.state["hparams"].get("decoder_lr", 1e-4) * warmup(step - start, 400))
        optimizer_step(opt, loss, params)
        return mse.item()

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids

    def ema_models(self, named, ema):
        """Fresh text encoder and UNet holding the EMA weights."""
        te, unet = M.make_text_encoder(self.tokenizer), M.make_unet()
        sd = {n: e for (n, _), e in zip(named, ema, strict=True)}
        te.load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("te.")})
        unet.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("unet.")})
        return te.eval(), unet.eval()

    def evaluate(self, te, unet, named, ema, vae, eval_caps) -> None:
        from training.evaluate import evaluate_models

        t = time.time()
        ete, eunet = self.ema_models(named, ema)
        rates = evaluate_models(
            eunet,
            ete,
            vae,
            self.tokenizer,
            eval_caps,
            seeds=(0,),
            steps=20,
            guidance=7.0,
            scheduler_config=self.sched_config,
        )
        step = self.state["step"]
        held_in, held_out = self.vae_sets
        rec = {
            "phase": "unet",
            "step": step,
            **{k: round(v, 4) for k, v in rates.items()},
            "vae_psnr_held_in": round(self.vae_psnr(vae, held_in), 2),
            "vae_psnr_held_out": round(self.vae_psnr(vae, held_out), 2),
            "seconds": round(self.state["seconds"]["unet"]),
            "eval_seconds": round(time.time() - t),
        }
        self.state["history"].append(rec)
        log("eval " + json.dumps(rec))
        best = self.state.get("best")
        if best is None or rates["mean"] > best["mean"]:
            self.state["best"] = rec
            self.export(ete, eunet, vae)

    def export(self, te, unet, vae) -> None:
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=te,
            tokenizer=self.tokenizer,
            unet=unet,
            scheduler=EulerDiscreteScheduler.from_config(self.sched_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        self.export_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.export_dir.parent, prefix=".studio-tiny-"))
        pipe.save_pretrained(tmp, safe_serialization=True)
        info = {
            "name": "studio-tiny",
            "trained_by": "python -m training.train",
            "step": self.state["step"],
            "metrics": self.state["best"],
            "vae": self.state["vae"],
        }
        (tmp / "studio_tiny.json").write_text(json.dumps(info, indent=1) + "\n")
        preview_factors.write_factors(tmp, vae)  # the Sampler preview's latent -> RGB
        tmp.chmod(0o755)  # mkdtemp makes it private
        old = self.export_dir.with_name(".studio-tiny-old")
        if old.exists():
            shutil.rmtree(old)
        if self.export_dir.exists():
            self.export_dir.rename(old)
        tmp.rename(self.export_dir)
        shutil.rmtree(old, ignore_errors=True)
        log(f"exported to {self.export_dir}")

    def position_probe(self):
        """An auxiliary linear classifier of the caption's position word (or none) from the
        text encoder's token states, averaged: its loss pushes the position into every token
        the UNet attends to. Training only; the exported text encoder is unchanged."""
        weight = self.state["hparams"].get("position_probe", 0.0)
        self.probe = None
        if not weight:
            return None, None, 0.0
        probe = torch.nn.Linear(M.TEXT_DIM, len(data.POSITIONS) + 1)
        f = self.ckpt / "position_probe.safetensors"
        if f.exists():
            probe.load_state_dict(load_tensors(f))
        self.probe = probe
        return probe, torch.optim.Adam(probe.parameters(), lr=1e-3), weight

    def save_unet(self, named, opt, ema) -> None:
        if getattr(self, "probe", None) is not None:
            save_tensors(self.ckpt / "position_probe.safetensors", self.probe.state_dict())
        save_tensors(self.ckpt / "vae.safetensors", self.vae.state_dict())
        save_tensors(
            self.ckpt / "vae_dec_optim.safetensors",
            optimizer_moments(self.dec_opt, self.dec_named, True),
        )
        save_tensors(self.ckpt / "unet_te.safetensors", {n: p for n, p in named})
        save_tensors(
            self.ckpt / "ema.safetensors",
            {n: e.to(torch.float16) for (n, _), e in zip(named, ema, strict=True)},
        )
        save_tensors(self.ckpt / "unet_te_optim.safetensors", optimizer_moments(opt, named, False))
        self.save_state()

    # --- git -----------------------------------------------------------------------------

    def maybe_commit(self) -> None:
        every = self.args.git_commit_every
        if every <= 0 or time.time() - self.last_commit < every:
            return
        self.last_commit = time.time()
        paths = [str(self.ckpt.relative_to(REPO))]
        if self.export_dir.exists() and self.export_dir.resolve().is_relative_to(REPO):
            paths.append(str(self.export_dir.resolve().relative_to(REPO)))
        msg = f"studio-tiny training checkpoint: phase {self.state['phase']} step {self.state['step']}"
        for _ in range(20):
            add = subprocess.run(
                ["git", "add", "--", *paths], cwd=REPO, capture_output=True, text=True
            )
            if add.returncode == 0:
                # --only: commit just these paths, whatever else others have staged
                c = subprocess.run(
                    ["git", "commit", "-q", "-m", msg, "--only", "--", *paths],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                )
                if c.returncode == 0 or "nothing" in c.stdout + c.stderr:
                    log(f"git: {msg}")
                    return
                err = c.stderr
            else:
                err = add.stderr
            if "index.lock" not in err:
                log(f"git commit failed: {err.strip()}")
                return
            time.sleep(3)
        log("git commit gave up: index stayed locked")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = script_parser("python -m training.train", __doc__)
    add_run_args(p, CKPT_DIR, 300.0)
    p.add_argument("--export-dir", default=str(EXPORT_DIR))
    p.add_argument(
        "--git-commit-every",
        type=float,
        default=0.0,
        help="seconds; commit the checkpoint and export (only those paths); 0: never",
    )
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae-target-psnr", type=float, default=30.0)
    p.add_argument("--vae-max-steps", type=int, default=6000)
    p.add_argument("--vae-polish-steps", type=int, default=500)
    p.add_argument("--vae-eval-every", type=int, default=250)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=250)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--min-snr-gamma", type=float, default=5.0)
    p.add_argument("--max-steps", type=int, default=1_000_000, help="UNet steps")
    p.add_argument(
        "--position-probe",
        type=float,
        default=None,
        help="with --resume: weight of an auxiliary loss that makes the text encoder carry "
        "the position word into all its tokens (0: off); recorded in the checkpoint",
    )
    p.add_argument(
        "--t-power",
        type=float,
        default=None,
        help="with --resume: draw timesteps as T * u^(1/p) from now on (p > 1: more of the "
        "noisiest steps); recorded in the checkpoint",
    )
    p.add_argument(
        "--v-zero-snr",
        action="store_true",
        help="with --resume: switch a run trained for epsilon to v-prediction at zero "
        "terminal SNR (models.SCHEDULER_CONFIG), going on from its weights",
    )
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-count", type=int, default=60)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    Trainer(parse_args(argv)).run()


if __name__ == "__main__":
    main()
