"""Graph against diffusers' pipelines on a CUDA GPU, with real-size random weights. JSON.

    python benchmarks/bench_gpu.py [--families sd1,sdxl] [--steps 20] [--reps 3] [--out F]
    python benchmarks/bench_gpu.py --small --device cpu     # a dry run of the same code

For each family (SD1.5-sized UNet at 512x512, SDXL-sized at 1024x1024; the shipped configs
in resources/configs with random weights, saved as a diffusers folder in the precision the
engine uses on that device):

- ``graph_over_pipeline``: a txt2img graph run (new prompt and seed each time, so Text
  Encode, Sampler and VAE Decode all run) over the pipeline's call, both warm, medians of
  interleaved repetitions in one process (goal <= 1.05);
- ``peak_vram_graph_bytes`` / ``peak_vram_pipeline_bytes``: the most GPU memory allocated
  while a fresh process loads the model and makes one image (each in its own process);
- ``fresh_first_image_*_seconds``: in a fresh process, loading the model from disk and making
  the first image (imports and the CUDA context not counted);
- ``budget``: the same graph under a VRAM budget half the UNet's size: the peak, and whether
  the image is the same as without a budget (offloading moves weights, it must not change them).

Without CUDA (and without ``--device cpu``) it prints ``{"skipped": ...}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIGS = ROOT / "resources" / "configs"
TOKENIZER = ROOT / "resources" / "tokenizers" / "clip"
SIZES = {"sd1": 512, "sdxl": 1024}


def _config(family: str, part: str) -> dict:
    return json.loads((CONFIGS / family / f"{part}.json").read_text())


def _small(family: str) -> dict:
    """Configs a few MB large, for a dry run of this script on a CPU."""
    unet = {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": [2, 4],
        "norm_num_groups": 16,
        "cross_attention_dim": 32 if family == "sd1" else 64,
        "sample_size": 8,
    }
    if family == "sdxl":
        unet.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
            transformer_layers_per_block=[1, 2],
        )
    vae = {
        "block_out_channels": [16, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "latent_channels": 4,
        "norm_num_groups": 16,
    }
    text = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "projection_dim": 32,
    }
    return {"unet": unet, "vae": vae, "text": text}


def build(family: str, folder: Path, device: str, dtype, small: bool) -> int:
    """Write a diffusers folder of random weights; returns the UNet's size in bytes."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    torch.manual_seed(0)
    with torch.device(device):  # random init where it is fast: on the GPU
        if small:
            cfg = _small(family)
            unet = UNet2DConditionModel(**cfg["unet"])
            vae = AutoencoderKL(**cfg["vae"])
            te = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text"]))
        else:
            unet = UNet2DConditionModel.from_config(_config(family, "unet"))
            vae = AutoencoderKL.from_config(_config(family, "vae"))
            te = CLIPTextModel(CLIPTextConfig(**_config(family, "text_encoder")))
            te2 = (
                CLIPTextModelWithProjection(CLIPTextConfig(**_config(family, "text_encoder_2")))
                if family == "sdxl"
                else None
            )
    sched = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    parts = dict(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched)
    if family == "sdxl":
        tok2 = CLIPTokenizer.from_pretrained(str(TOKENIZER), pad_token="!")
        pipe = StableDiffusionXLPipeline(text_encoder_2=te2, tokenizer_2=tok2, **parts)
    else:
        pipe = StableDiffusionPipeline(
            safety_checker=None, feature_extractor=None, requires_safety_checker=False, **parts
        )
    pipe.to(dtype=dtype)
    pipe.save_pretrained(str(folder))
    return sum(p.numel() * p.element_size() for p in unet.parameters())


def workflow(registry, name: str, prompt: str, seed: int, size: int, steps: int):
    from studio import recipes

    wf, _ = recipes.txt2img(
        registry, name, prompt, negative="blurry", seed=seed, steps=steps, width=size, height=size
    )
    return wf


def engine_for(models: Path, device: str, **settings):
    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings

    s = Settings(models_root=str(models), output_dir=str(models / "out"), device=device, **settings)
    return Engine(installed_registry(), settings=s)


def load_pipeline(folder: Path, family: str, device: str, dtype):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs = {} if family == "sdxl" else {"safety_checker": None}
    pipe = cls.from_pretrained(str(folder), torch_dtype=dtype, **kwargs).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe, prompt: str, seed: int, size: int, steps: int):
    import torch

    return pipe(
        prompt,
        negative_prompt="blurry",
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pil",
    ).images[0]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timing(models: Path, family: str, device: str, dtype, size: int, steps: int, reps: int):
    engine = engine_for(models, device)
    t = time.perf_counter()
    first = engine.run(workflow(engine.registry, family, "a cat", 0, size, steps))
    first_s = time.perf_counter() - t
    assert first.ok, first.errors
    t = time.perf_counter()
    pipe = load_pipeline(models / "checkpoints" / family, family, device, dtype)
    run_pipeline(pipe, "warm up", 0, size, steps)
    pipe_first_s = time.perf_counter() - t
    graph_s, pipe_s = [], []
    for i in range(reps):
        prompt = f"a cat number {i}"
        _sync(device)
        t = time.perf_counter()
        result = engine.run(workflow(engine.registry, family, prompt, i + 1, size, steps))
        _sync(device)
        graph_s.append(time.perf_counter() - t)
        assert result.ok, result.errors
        t = time.perf_counter()
        run_pipeline(pipe, prompt, i + 1, size, steps)
        _sync(device)
        pipe_s.append(time.perf_counter() - t)
    g, p = statistics.median(graph_s), statistics.median(pipe_s)
    return {
        "graph_seconds": round(g, 4),
        "pipeline_seconds": round(p, 4),
        "graph_over_pipeline": round(g / p, 4),
        "graph_first_run_seconds": round(first_s, 3),
        "pipeline_load_and_first_seconds": round(pipe_first_s, 3),
        "graph_loads": engine.models.loads,
    }


def child(args) -> None:
    """One fresh process: load, make one image, report the peak GPU memory."""
    import numpy as np
    import torch

    from studio.engine.devices import default_dtype

    models, device = Path(args.root), args.device
    torch.manual_seed(0)
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # the CUDA context: paid by both before the clock
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if args.child == "pipeline":
        pipe = load_pipeline(
            models / "checkpoints" / args.family, args.family, device, default_dtype(device)
        )
        image = run_pipeline(pipe, "a cat", 0, args.size, args.steps)
        loads = None
    else:
        budget = {"vram_budget_bytes": args.budget} if args.child == "graph-budget" else {}
        engine = engine_for(models, device, **budget)
        result = engine.run(
            workflow(engine.registry, args.family, "a cat", 0, args.size, args.steps)
        )
        assert result.ok, result.errors
        image, loads = result.images[-1], engine.models.loads
    seconds = time.perf_counter() - started
    np.save(models / f"{args.child}.npy", np.asarray(image.convert("RGB")))
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    print(json.dumps({"peak_vram_bytes": peak, "loads": loads, "seconds": seconds}))


def measure(family: str, args, tmp: Path) -> dict:
    import numpy as np
    import torch

    from studio.engine.devices import default_dtype

    device = args.device
    dtype = default_dtype(device)
    size = 64 if args.small else SIZES[family]
    models = tmp / family
    t = time.perf_counter()
    unet_bytes = build(family, models / "checkpoints" / family, device, dtype, args.small)
    report: dict = {
        "family": family,
        "size": size,
        "steps": args.steps,
        "dtype": str(dtype).removeprefix("torch."),
        "unet_bytes": unet_bytes,
        "build_seconds": round(time.perf_counter() - t, 1),
    }
    torch.cuda.empty_cache() if device.startswith("cuda") else None
    report.update(timing(models, family, device, dtype, size, args.steps, args.reps))
    budget = unet_bytes // 2
    report["budget_bytes"] = budget
    for mode in ("graph", "pipeline", "graph-budget"):
        out = subprocess.run(
            [
                *(sys.executable, __file__, "--child", mode, "--root", str(models)),
                *("--family", family, "--size", str(size), "--steps", str(args.steps)),
                *("--device", device, "--budget", str(budget)),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            report[f"{mode}_error"] = out.stderr.strip().splitlines()[-3:]
            continue
        line = json.loads(out.stdout.strip().splitlines()[-1])
        report[f"peak_vram_{mode.replace('-', '_')}_bytes"] = line["peak_vram_bytes"]
        # A fresh process: load the model from disk and make the first image (imports not counted).
        report[f"fresh_first_image_{mode.replace('-', '_')}_seconds"] = round(line["seconds"], 3)
        if line["loads"] is not None:
            report[f"loads_{mode.replace('-', '_')}"] = line["loads"]
    if (models / "graph.npy").exists() and (models / "graph-budget.npy").exists():
        a = np.load(models / "graph.npy").astype(int)
        b = np.load(models / "graph-budget.npy").astype(int)
        report["budget_image_max_abs_diff"] = int(abs(a - b).max())
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="sd1,sdxl")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny configs (a dry run)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--child", choices=("graph", "pipeline", "graph-budget"))
    ap.add_argument("--root")
    ap.add_argument("--family")
    ap.add_argument("--size", type=int)
    ap.add_argument("--budget", type=int)
    args = ap.parse_args()
    import torch

    if args.child:
        child(args)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    report: dict = {"device": args.device, "torch": torch.__version__, "families": []}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            try:
                report["families"].append(measure(family, args, Path(tmp)))
            except Exception as exc:  # one family failing still reports the other
                report["families"].append({"family": family, "error": repr(exc)[:500]})
            print(json.dumps(report["families"][-1]), file=sys.stderr, flush=True)
            # Free the disk and GPU for the next family.
            subprocess.run(["rm", "-rf", str(Path(tmp) / family)], check=False)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
