"""A full-size model under the memory budgets: loads per run and new-seed time. Prints JSON.

    python benchmarks/bench_memory.py [--family sdxl|sd1] [--seeds 3] [--size 256]
                                      [--steps 2] [--ram-budget-gib N] [--folder DIR]

Builds a checkpoint of the family's real shapes (resources/configs/FAMILY) with random
weights, once (kept in ``--folder``, default a folder in the temp dir: about 7 GB for
sdxl in fp16 on disk, 14 GB in memory as fp32), then in a fresh process runs txt2img with
``--seeds`` new seeds through one engine with the user's default settings (the RAM budget
sized from the machine), or with ``--ram-budget-gib``; then the first seed again with the
output cache emptied. Reports per run: seconds, models loaded, the notices the run gave (a
model that does not fit the budget) and a hash of the picture; whether the repeated seed
drew the same picture; the peak resident memory; the budget used. Goal: one load of each
component per session, and a notice, not silent reloads, when a model cannot fit.

It needs the memory the model takes (fp32 on a CPU): check ``free -g`` first on a shared
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(family: str, path: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nodes.ldm_keys import checkpoint_to_ldm

    cfg_dir = ROOT / "resources" / "configs" / family

    def config(name: str) -> dict:
        return json.loads((cfg_dir / f"{name}.json").read_text())

    torch.manual_seed(0)
    unet_cfg, vae_cfg = config("unet"), config("vae")
    # Each model goes to fp16 as soon as it is built (the values the file gets are the
    # same), so building takes about the UNet's fp32 size, not all of it twice.
    unet = UNet2DConditionModel.from_config(unet_cfg).half()
    vae = AutoencoderKL.from_config(vae_cfg).half()
    te = CLIPTextModel(CLIPTextConfig(**config("text_encoder"))).half()
    te2 = None
    if (cfg_dir / "text_encoder_2.json").is_file():
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"))).half()
    state = checkpoint_to_ldm(
        unet.state_dict(),
        dict(unet.config),
        vae.state_dict(),
        dict(vae.config),
        te.state_dict(),
        te2.state_dict() if te2 is not None else None,
    )
    state = {k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def _image_hash(images: list) -> str:
    import hashlib

    h = hashlib.sha256()
    for im in images:
        h.update(im.tobytes())
    return h.hexdigest()[:16]


def child(args: argparse.Namespace, models_root: Path, ckpt: str) -> None:
    from studio import recipes
    from studio.engine import Engine
    from studio.engine.events import EventKind
    from studio.library import installed_registry
    from studio.settings import Settings

    settings = Settings.load()
    settings.models_root = str(models_root)
    settings.output_dir = tempfile.mkdtemp(prefix="studio-bench-memory-")
    if args.ram_budget_gib:
        settings.ram_budget_bytes = int(args.ram_budget_gib * 1024**3)
    engine = Engine(installed_registry(), settings=settings)
    runs = []
    # The new seeds, then the first seed again with the output cache emptied (so it runs,
    # not just replays): the models kept loaded must give the picture of the run that
    # loaded them, without loading anything.
    for i, seed in enumerate([*range(args.seeds), 0]):
        if i == args.seeds:
            engine.cache.clear()
        wf, _ = recipes.txt2img(
            engine.registry,
            ckpt,
            "a lighthouse",
            seed=seed,
            steps=args.steps,
            width=args.size,
            height=args.size,
        )
        notices: list[str] = []

        def on_event(e, notices=notices):
            if e.event is EventKind.NOTICE:
                notices.append(e.message)

        loads = engine.models.loads
        t = time.perf_counter()
        result = engine.run(wf, on_event=on_event)
        runs.append(
            {
                "seed": seed,
                "seconds": round(time.perf_counter() - t, 2),
                "loads": engine.models.loads - loads,
                "errors": result.errors,
                "notices": notices,
                "image_sha256": _image_hash(result.images),
            }
        )
    print(
        json.dumps(
            {
                "ram_budget_gib": round(engine.models.ram_budget / 1024**3, 2),
                "runs": runs,
                "new_seed_seconds": [r["seconds"] for r in runs[1:-1]],
                "repeat_seconds": runs[-1]["seconds"],
                "loads_per_run": [r["loads"] for r in runs],
                "repeat_same_image": runs[0]["image_sha256"] == runs[-1]["image_sha256"],
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="sdxl", choices=["sdxl", "sd1", "sd2"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ram-budget-gib", type=float, default=0.0)
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "studio-bench-memory"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models_root = Path(args.folder)
    ckpt = f"{args.family}-random.safetensors"
    path = models_root / "checkpoints" / ckpt
    if args.child:
        child(args, models_root, ckpt)
        return
    if not path.is_file():
        t = time.perf_counter()
        build(args.family, path)
        print(f"built {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *sys.argv[1:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {"family": args.family, "size": args.size, "steps": args.steps, **result}, indent=1
        )
    )


if __name__ == "__main__":
    main()
