"""A ComfyUI workflow run by ComfyUI itself and by Studio (imported): the pixel difference.

    flock /tmp/studio-heavy.lock python benchmarks/bench_comfy_pixels.py \\
        --comfyui /path/to/ComfyUI [--work /tmp/comfy-pixels] [--steps 4] [--size 256]

Writes an SD1.5-shaped single-file checkpoint with random weights (LDM layout, fp16: the
UNet, CLIP ViT-L text encoder and VAE at their real sizes, 2 GB; made once in ``--work``),
then for each (sampler, scheduler) runs the same txt2img API workflow (Load Checkpoint, two
CLIP Text Encode, Empty Latent, KSampler, VAE Decode):

- in ComfyUI, in a process of its own (ComfyUI's top-level ``nodes`` module would hide
  Studio's): ``comfy.sd.load_checkpoint_guess_config``, ``clip.encode_from_tokens``,
  ``comfy.sample.prepare_noise`` and ``comfy.sample.sample``, ``vae.decode``, on the CPU;
- in Studio: the API JSON imported by ``import_comfyui`` and run by the Engine on the CPU.

Prints JSON: per case the mean and largest absolute pixel difference (0..1 pixels, RGB),
and how far apart the two images of two different seeds are, for scale. Needs about 7 GB
of memory (each side holds the model in float32 once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = (
    ("euler", "normal"),
    ("euler_ancestral", "normal"),
    ("heun", "karras"),
    ("dpmpp_2m", "karras"),
    ("dpmpp_2m_sde", "karras"),
    ("uni_pc", "normal"),
)
POSITIVE = "a photograph of a lighthouse on a cliff at sunset"
NEGATIVE = "blurry, low quality"
CKPT = "random-sd15.safetensors"


def make_checkpoint(path: Path) -> None:
    """SD1.5's UNet, text encoder and VAE with random weights (seeded), as one LDM file."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.ldm_keys import checkpoint_to_ldm

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    )
    state = checkpoint_to_ldm(
        unet.state_dict(), dict(unet.config), vae.state_dict(), dict(vae.config), text.state_dict()
    )
    del unet, vae, text
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def api_workflow(seed: int, steps: int, cfg: float, sampler: str, scheduler: str, size: int):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": size, "height": size, "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler,
                "scheduler": scheduler,
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


COMFY_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import torch
    comfy_dir, ckpt, jobs, out = sys.argv[1:5]
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.sample, comfy.sd
    torch.set_grad_enabled(False)  # ComfyUI runs its nodes in inference mode
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(ckpt)[:3]

    def encode(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    results = {}
    for job in json.loads(jobs):
        k = job["inputs"]
        pos, neg = encode(job["positive"]), encode(job["negative"])
        latent = torch.zeros([1, 4, job["size"] // 8, job["size"] // 8])
        noise = comfy.sample.prepare_noise(latent, k["seed"])
        t = time.perf_counter()
        samples = comfy.sample.sample(
            model, noise, k["steps"], k["cfg"], k["sampler_name"], k["scheduler"], pos, neg,
            latent, denoise=k["denoise"], seed=k["seed"],
        )
        image = vae.decode(samples)
        np.save(f"{out}/{job['name']}.npy", image.detach().float().cpu().numpy())
        results[job["name"]] = time.perf_counter() - t
    print(json.dumps(results))
    """
)


def run_comfyui(comfy_dir: Path, ckpt: Path, jobs: list[dict], out: Path) -> dict:
    script = out / "comfy_side.py"
    script.write_text(COMFY_SCRIPT)
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, str(script), str(comfy_dir), str(ckpt), json.dumps(jobs), str(out)],
        cwd=str(comfy_dir),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ComfyUI's side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_studio(models_root: Path, jobs: list[dict]) -> dict:
    import numpy as np

    from studio.engine import Engine
    from studio.graph.importers.comfyui import import_comfyui
    from studio.library import installed_registry
    from studio.settings import Settings

    registry = installed_registry()
    settings = Settings(models_root=str(models_root), output_dir=str(models_root / "out"))
    engine = Engine(registry, settings=settings)
    images, reports = {}, {}
    for job in jobs:
        api = api_workflow(
            job["inputs"]["seed"],
            job["inputs"]["steps"],
            job["inputs"]["cfg"],
            job["inputs"]["sampler_name"],
            job["inputs"]["scheduler"],
            job["size"],
        )
        result = import_comfyui(api, registry, source="bench.json")
        reports[job["name"]] = result.report
        run = engine.run(result.workflow, targets=["8"])
        if not run.ok:
            raise SystemExit(f"Studio's run failed: {run.errors}")
        images[job["name"]] = np.asarray(run.outputs["8"]["image"].float().cpu().numpy())
    return {"images": images, "reports": reports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui", required=True, type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/comfy-pixels"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cfg", type=float, default=7.0)
    args = parser.parse_args()
    import numpy as np

    work = args.work.resolve()
    ckpt = work / "models" / "checkpoints" / CKPT
    if not ckpt.exists():
        t = time.perf_counter()
        make_checkpoint(ckpt)
        print(f"checkpoint written in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    jobs = []
    for sampler, scheduler in CASES:
        for seed in (args.seed, args.seed + 1):
            inputs = api_workflow(seed, args.steps, args.cfg, sampler, scheduler, args.size)
            jobs.append(
                {
                    "name": f"{sampler}-{scheduler}-{seed}",
                    "inputs": inputs["3"]["inputs"] | {"model": None},
                    "positive": POSITIVE,
                    "negative": NEGATIVE,
                    "size": args.size,
                }
            )
    for job in jobs:
        job["inputs"] = {k: v for k, v in job["inputs"].items() if not isinstance(v, list)}
    out = work / "images"
    out.mkdir(parents=True, exist_ok=True)
    seconds_file = out / "comfyui_seconds.json"
    if all((out / f"{job['name']}.npy").exists() for job in jobs):
        # ComfyUI's images of an earlier run, kept (delete --work/images to redo them)
        comfy_seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    else:
        comfy_seconds = run_comfyui(args.comfyui.resolve(), ckpt, jobs, out)
        seconds_file.write_text(json.dumps(comfy_seconds))
    studio = run_studio(work / "models", jobs)
    cases = {}
    for sampler, scheduler in CASES:
        name = f"{sampler}-{scheduler}-{args.seed}"
        other = f"{sampler}-{scheduler}-{args.seed + 1}"
        want = np.load(out / f"{name}.npy")
        got = studio["images"][name]
        diff = np.abs(got.reshape(want.shape) - want)
        seeds_apart = np.abs(np.load(out / f"{other}.npy") - want).mean()
        cases[f"{sampler}/{scheduler}"] = {
            "mean_abs_pixel_diff": float(diff.mean()),
            "max_abs_pixel_diff": float(diff.max()),
            "other_seed_mean_abs_diff": float(seeds_apart),
            "comfyui_seconds": round(comfy_seconds[name], 1) if name in comfy_seconds else None,
            "import_report": studio["reports"][name],
        }
    print(
        json.dumps(
            {"steps": args.steps, "size": args.size, "seed": args.seed, "cases": cases}, indent=2
        )
    )


if __name__ == "__main__":
    main()
