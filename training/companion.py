"""What the companion-model trainers (upscaler, ControlNet, LoRA) share: a small resumable
run with a JSON state, a stop flag set by SIGTERM/SIGINT, and timed checkpoints.

Each trainer keeps its checkpoint in ``training/companions/<name>/`` (small, committed), so
``python -m training.train_<name> --resume`` goes on where an interrupted run stopped. The
base model's trainer (``training.train``) and its checkpoint are not touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from training.train import REPO, _load_tensors, _save_tensors, _write_json, log

COMPANIONS = REPO / "training" / "companions"
EMBEDDED = REPO / "resources" / "models"
BASE_MODEL = EMBEDDED / "checkpoints" / "studio-tiny"

__all__ = [
    "BASE_MODEL",
    "COMPANIONS",
    "EMBEDDED",
    "REPO",
    "CompanionRun",
    "add_common_args",
    "base_fingerprint",
    "load_tensors",
    "log",
    "save_tensors",
]

save_tensors = _save_tensors
load_tensors = _load_tensors


def add_common_args(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--resume", action="store_true", help="go on from the checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over, deleting the checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=str(COMPANIONS / name))
    p.add_argument("--checkpoint-every", type=float, default=180.0, help="seconds")


class CompanionRun:
    """The state of one training run: ``state.json`` plus tensors files in ``ckpt``."""

    def __init__(self, args: argparse.Namespace, fresh: dict[str, Any]):
        import torch

        torch.set_num_threads(args.threads)
        self.ckpt = Path(args.checkpoint_dir)
        self.stop = False
        state_file = self.ckpt / "state.json"
        if args.resume:
            if not state_file.exists():
                sys.exit(f"--resume: no checkpoint in {self.ckpt}")
            self.state: dict[str, Any] = json.loads(state_file.read_text())
            log(f"resuming at step {self.state['step']}")
        else:
            if state_file.exists() and not args.overwrite:
                sys.exit(f"{state_file} exists: pass --resume (or --overwrite to start over)")
            if self.ckpt.exists():
                shutil.rmtree(self.ckpt)
            self.state = {"step": 0, "seconds": 0.0, "history": [], "best": None, **fresh}
        self.ckpt.mkdir(parents=True, exist_ok=True)
        self.every = args.checkpoint_every
        self.last_save = time.time()
        self._t = time.time()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        log(f"signal {signum}: saving and stopping after this step")
        self.stop = True

    @property
    def step(self) -> int:
        return int(self.state["step"])

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
        _write_json(self.ckpt / "state.json", self.state)
        self.last_save = time.time()
        log(f"checkpoint saved at step {self.step}")

    def has(self, stem: str) -> bool:
        return (self.ckpt / f"{stem}.safetensors").exists()

    def load(self, stem: str) -> dict[str, Any]:
        return load_tensors(self.ckpt / f"{stem}.safetensors")


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
