"""Graph text-to-image against diffusers' StableDiffusionPipeline on the same small model.
Prints JSON.

    python benchmarks/bench_diffusion.py [--size 256] [--steps 20] [--reps 3]

- ``graph_over_pipeline``: wall time of a graph run (models loaded, new prompts and seed
  each time, so Text Encode, Sampler and VAE Decode all run) over the pipeline's call,
  medians of interleaved repetitions in one process (goal <= 1.05).
- ``cached_over_first``: an identical second run, served from the cache, over the first
  run (goal < 0.01); also against a warm run.
- ``peak_rss``: how far resident memory rises above what the imported libraries take while
  a process loads the model and makes one image, graph against pipeline (each in its own
  process, sampled every 2 ms); on CUDA the peak allocated GPU memory too.

The model is an SD1-shaped UNet, VAE and CLIP text encoder of a few million weights
built and saved here as a diffusers folder (no download).
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


def build_model(folder: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 128),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=64,
            intermediate_size=256,
            num_attention_heads=4,
            num_hidden_layers=4,
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    tok = CLIPTokenizer.from_pretrained(str(ROOT / "resources" / "tokenizers" / "clip"))
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder / "checkpoints" / "bench-sd1"))


def workflow(prompt: str, negative: str, seed: int, size: int, steps: int):
    from studio.graph.workflow import Workflow
    from studio.library import installed_registry

    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "bench-sd1"}).id
    pos = wf.add_node("text_encode", {"text": prompt}).id
    neg = wf.add_node("text_encode", {"text": negative}).id
    lat = wf.add_node("empty_latent", {"width": size, "height": size, "batch_size": 1}).id
    params = {"seed": seed, "steps": steps, "cfg": 7.0, "sampler": "euler", "scheduler": "normal"}
    smp = wf.add_node("sampler", params).id
    dec = wf.add_node("vae_decode").id
    out = wf.add_node("preview_image").id
    for a, b, c, d in [
        (ck, "clip", pos, "clip"),
        (ck, "clip", neg, "clip"),
        (ck, "model", smp, "model"),
        (pos, "conditioning", smp, "positive"),
        (neg, "conditioning", smp, "negative"),
        (lat, "latent", smp, "latent"),
        (smp, "latent", dec, "latent"),
        (ck, "vae", dec, "vae"),
        (dec, "image", out, "images"),
    ]:
        wf.connect(a, b, c, d)
    return wf


def make_engine(root: Path):
    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings

    settings = Settings(models_root=str(root), output_dir=str(root / "out"))
    return Engine(installed_registry(), settings=settings)


def run_pipeline(pipe, prompt: str, negative: str, seed: int, size: int, steps: int):
    import torch

    return pipe(
        prompt,
        negative_prompt=negative,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pil",
    ).images


def timing(root: Path, size: int, steps: int, reps: int) -> dict:
    from diffusers import StableDiffusionPipeline

    engine = make_engine(root)
    t = time.perf_counter()
    first = engine.run(workflow("a cat", "blurry", 0, size, steps))
    first_s = time.perf_counter() - t
    assert first.ok, first.errors
    t = time.perf_counter()
    again = engine.run(workflow("a cat", "blurry", 0, size, steps))
    cached_s = time.perf_counter() - t
    assert again.ok and not again.ran, again.ran

    pipe = StableDiffusionPipeline.from_pretrained(
        str(root / "checkpoints" / "bench-sd1"), safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    run_pipeline(pipe, "warm up", "warm", 0, size, steps)
    graph_s, pipe_s = [], []
    for i in range(reps):
        prompt, negative = f"a cat number {i}", f"blurry {i}"
        t = time.perf_counter()
        result = engine.run(workflow(prompt, negative, i + 1, size, steps))
        graph_s.append(time.perf_counter() - t)
        assert result.ok, result.errors
        t = time.perf_counter()
        run_pipeline(pipe, prompt, negative, i + 1, size, steps)
        pipe_s.append(time.perf_counter() - t)
    g, p = statistics.median(graph_s), statistics.median(pipe_s)
    return {
        "graph_seconds": round(g, 4),
        "pipeline_seconds": round(p, 4),
        "graph_over_pipeline": round(g / p, 4),
        "first_run_seconds": round(first_s, 4),
        "cached_run_seconds": round(cached_s, 5),
        "cached_over_first": round(cached_s / first_s, 5),
        "cached_over_warm_run": round(cached_s / g, 5),
    }


def child(mode: str, root: str, size: int, steps: int) -> None:
    import threading

    import diffusers  # noqa: F401  (imports before the baseline: both modes pay them)
    import psutil
    import torch
    import transformers  # noqa: F401

    from studio.library import installed_registry

    installed_registry()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    if mode == "graph":
        engine = make_engine(Path(root))
        result = engine.run(workflow("a cat", "blurry", 0, size, steps))
        assert result.ok, result.errors
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            str(Path(root) / "checkpoints" / "bench-sd1"), safety_checker=None
        )
        pipe.set_progress_bar_config(disable=True)
        run_pipeline(pipe, "a cat", "blurry", 0, size, steps)
    done.set()
    watcher.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    print(json.dumps({"peak_rss_bytes": peak[0] - base, "peak_gpu_bytes": gpu}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", choices=("graph", "pipeline"))
    ap.add_argument("--root")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.root, args.size, args.steps)
        return

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_model(root)
        report: dict = {"size": args.size, "steps": args.steps, "reps": args.reps}
        report["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        report.update(timing(root, args.size, args.steps, args.reps))
        peaks = {}
        for mode in ("graph", "pipeline"):
            out = subprocess.run(
                [
                    *(sys.executable, __file__, "--child", mode, "--root", tmp),
                    *("--size", str(args.size), "--steps", str(args.steps)),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            peaks[mode] = json.loads(out.strip().splitlines()[-1])
        report["peak_rss_graph_bytes"] = peaks["graph"]["peak_rss_bytes"]
        report["peak_rss_pipeline_bytes"] = peaks["pipeline"]["peak_rss_bytes"]
        report["peak_rss_graph_over_pipeline"] = round(
            peaks["graph"]["peak_rss_bytes"] / peaks["pipeline"]["peak_rss_bytes"], 4
        )
        if peaks["graph"]["peak_gpu_bytes"] is not None:
            report["peak_gpu_graph_bytes"] = peaks["graph"]["peak_gpu_bytes"]
            report["peak_gpu_pipeline_bytes"] = peaks["pipeline"]["peak_gpu_bytes"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
