"""What the companion-model trainers (upscaler, ControlNet, LoRA) share: a small resumable
run with a JSON state, a stop flag set by SIGTERM/SIGINT, timed checkpoints, the step loop
with its evaluations (the best so far is exported), and, for the two that train against the
frozen base model, loading that base and drawing a noised training batch from it.

Each trainer keeps its checkpoint in ``training/companions/<name>/`` (small, committed), so
``python -m training.train_<name> --resume`` goes on where an interrupted run stopped. The
base model's trainer (``training.train``) and its checkpoint are not touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from training.common import (
    REPO,
    LossMeter,
    StopSignal,
    add_run_args,
    load_tensors,
    log,
    open_state,
    save_tensors,
    script_parser,
    write_json,
)

COMPANIONS = REPO / "training" / "companions"
EMBEDDED = REPO / "resources" / "models"
BASE_MODEL = EMBEDDED / "checkpoints" / "studio-tiny"

__all__ = [
    "BASE_MODEL",
    "COMPANIONS",
    "EMBEDDED",
    "REPO",
    "CompanionRun",
    "FrozenBase",
    "base_fingerprint",
    "companion_parser",
    "load_tensors",
    "log",
    "noised_batch",
    "save_tensors",
]


def companion_parser(
    name: str,
    doc: str,
    *,
    export: Path,
    steps: int,
    batch: int,
    lr: float,
    eval_every: int,
    eval_count: int,
    warmup: int | None = None,
) -> argparse.ArgumentParser:
    """The options every companion trainer has; with ``warmup``, also those of one trained
    against the frozen base model (``--base``, ``--warmup``, and the base trainer's caption
    dropout and min-SNR gamma as defaults)."""
    p = script_parser(f"python -m training.train_{name}", doc)
    add_run_args(p, COMPANIONS / name, 180.0)
    if warmup is not None:
        from training.train import parse_args

        base_defaults = parse_args([])
        p.add_argument("--base", default=str(BASE_MODEL), help="the frozen base model folder")
        p.add_argument("--warmup", type=int, default=warmup)
        p.add_argument("--caption-dropout", type=float, default=base_defaults.caption_dropout)
        p.add_argument("--min-snr-gamma", type=float, default=base_defaults.min_snr_gamma)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--eval-every", type=int, default=eval_every)
    p.add_argument("--eval-count", type=int, default=eval_count)
    p.add_argument("--export", default=str(export))
    return p


class CompanionRun:
    """The state of one training run: ``state.json`` plus tensors files in ``ckpt``.

    A fresh run records ``hparams``, the seed and, with ``base``, which export of the base
    model it trains against; a resumed run keeps its own (``run.hp``, ``run.seed``) and
    notes a base model that changed since.
    """

    def __init__(self, args: argparse.Namespace, hparams: dict[str, Any], base: Path | None = None):
        import torch

        torch.set_num_threads(args.threads)
        self.ckpt = Path(args.checkpoint_dir)

        def fresh() -> dict[str, Any]:
            state = {"step": 0, "seconds": 0.0, "history": [], "best": None}
            state |= {"seed": args.seed, "hparams": hparams}
            if base is not None:
                state["base"] = base_fingerprint(base)
            return state

        self.state: dict[str, Any] = open_state(self.ckpt, args, fresh)
        if args.resume:
            log(f"resuming at step {self.state['step']}")
        self.every = args.checkpoint_every
        self.last_save = time.time()
        self._t = time.time()
        self._signal = StopSignal()
        if base is not None:
            now = base_fingerprint(base)
            if now["unet_sha1"] != self.state["base"]["unet_sha1"]:
                log(
                    "note: the base model changed since this run started (step "
                    f"{self.state['base']['step']} -> {now['step']}); going on against the "
                    "current one"
                )
                self.state["base"] = now

    @property
    def stop(self) -> bool:
        return self._signal.requested

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def hp(self) -> dict[str, Any]:
        return self.state["hparams"]

    @property
    def seed(self) -> int:
        return self.state["seed"]

    def tick(self) -> None:
        """Account the time since the last tick to the run (resumed runs add up)."""
        now = time.time()
        self.state["seconds"] += now - self._t
        self._t = now

    def due(self) -> bool:
        return time.time() - self.last_save > self.every

    def save(self, tensors: dict[str, dict[str, Any]]) -> None:
        """Write ``{file stem: tensors}`` and then ``state.json`` (the state names the step the
        tensors belong to, so it is written last)."""
        self.tick()
        for stem, sd in tensors.items():
            save_tensors(self.ckpt / f"{stem}.safetensors", sd)
        write_json(self.ckpt / "state.json", self.state)
        self.last_save = time.time()
        log(f"checkpoint saved at step {self.step}")

    def has(self, stem: str) -> bool:
        return (self.ckpt / f"{stem}.safetensors").exists()

    def load(self, stem: str) -> dict[str, Any]:
        return load_tensors(self.ckpt / f"{stem}.safetensors")

    def evaluate(
        self,
        step: int,
        measure: Callable[[], dict[str, float]],
        rank: Callable[[dict[str, Any]], Any],
        export: Callable[[dict[str, Any]], None],
    ) -> None:
        """Record ``measure()`` in the history; when it ranks above the best so far, it
        becomes the best and ``export(record)`` runs."""
        self.tick()
        t = time.time()
        rates = measure()
        rec = {"step": step, **{k: round(v, 3) for k, v in rates.items()}}
        rec["seconds"], rec["eval_seconds"] = round(self.state["seconds"]), round(time.time() - t)
        self.state["history"].append(rec)
        log("eval " + json.dumps(rec))
        best = self.state["best"]
        if best is None or rank(rec) > rank(best):
            self.state["best"] = rec
            export(rec)

    def train(
        self,
        train_step: Callable[[int], tuple[float, float]],
        *,
        eval_every: int,
        measure: Callable[[], dict[str, float]],
        rank: Callable[[dict[str, Any]], Any],
        export: Callable[[dict[str, Any]], None],
        checkpoint: Callable[[], None],
        meter: LossMeter,
        log_every: int = 25,
    ) -> None:
        """Run ``train_step(step) -> (loss, lr)`` up to ``hp["steps"]`` (or a stop signal):
        log every ``log_every`` steps, evaluate every ``eval_every`` and at the last step
        (then checkpoint), checkpoint when one is due, and once more at the end."""
        steps = self.hp["steps"]
        while not self.stop and self.step < steps:
            loss, lr = train_step(self.step)
            meter.add(loss)
            self.state["step"] = step = self.step + 1
            if step % log_every == 0:
                meter.report(step, lr)
            if step % eval_every == 0 or step == steps:
                self.evaluate(step, measure, rank, export)
                checkpoint()
                meter.restart_clock()
            elif self.due():
                checkpoint()
        checkpoint()
        log(f"stopped at step {self.step}" if self.stop else f"finished: best {self.state['best']}")


def base_fingerprint(folder: Path) -> dict[str, Any]:
    """Which export of the base model a run trained against (its step and UNet hash)."""
    info = json.loads((folder / "studio_tiny.json").read_text())
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    name = str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)
    return {
        "folder": name,
        "step": info.get("step"),
        "unet_sha1": hashlib.sha1(unet_file.read_bytes()).hexdigest()[:16],
    }


# ----------------------------------------------------------------------------- frozen base


class FrozenBase(NamedTuple):
    """The base model a ControlNet or LoRA trains against, frozen, with its noise schedule
    and the empty prompt's encoding (what dropped captions become)."""

    unet: Any
    text_encoder: Any
    vae: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]
    scheduler: Any
    uncond: Any

    @classmethod
    def load(cls, folder: Path) -> FrozenBase:
        from training import models as M
        from training.evaluate import encode_prompts, load_folder

        unet, te, vae, tok = load_folder(folder)
        for m in (unet, te, vae):
            m.requires_grad_(False).eval()
        sched_cfg = M.folder_scheduler_config(folder)
        return cls(
            unet,
            te,
            vae,
            tok,
            sched_cfg,
            M.make_scheduler(sched_cfg),
            encode_prompts(tok, te, [""]),
        )


class NoisedBatch(NamedTuple):
    noisy: Any
    t: Any
    hidden: Any
    latents: Any
    noise: Any


def noised_batch(
    base: FrozenBase, images: Any, captions: list[str], g: Any, caption_dropout: float
) -> NoisedBatch:
    """The base trainer's diffusion batch: captions encoded (a ``caption_dropout`` share
    replaced by the empty prompt), images encoded by the VAE, noised at uniform timesteps.
    Every draw comes from ``g``, in this order: dropout, posterior, noise, timesteps."""
    import torch

    from training import data
    from training.evaluate import encode_prompts

    drop = torch.rand(len(captions), generator=g) < caption_dropout
    with torch.no_grad():
        hidden = encode_prompts(base.tokenizer, base.text_encoder, captions)
        hidden[drop] = base.uncond[0]
        posterior = base.vae.encode(data.to_tensor(images)).latent_dist
        latents = posterior.sample(generator=g) * base.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=g)
    n_t = base.scheduler.config.num_train_timesteps
    t = torch.randint(0, n_t, (len(captions),), generator=g)
    return NoisedBatch(base.scheduler.add_noise(latents, noise, t), t, hidden, latents, noise)
