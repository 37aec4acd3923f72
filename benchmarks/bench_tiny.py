"""studio-tiny, the embedded default model: speed and what its images show. Prints JSON.

    python benchmarks/bench_tiny.py [--threads N] [--count 60] [--per-caption 3] [--skip-adherence]

- ``speed``: the default txt2img graph (64x64, 20 steps, euler, cfg 7) through Studio's
  engine, in a fresh process: ``import_s`` (torch, the node library, and diffusers' and
  transformers' model classes, which the app imports in the background as its window
  opens: ``nodes.sdload.preload``), ``first_run_s`` (the first run: reading the checkpoint
  from disk, encoding, sampling, decoding; goal < 3 s), ``warm_run_s`` (median of runs with a new seed, the
  model loaded; goal < 1 s), ``warm_new_prompt_s`` (a new prompt too), and
  ``cold_total_s`` (process start to first image: what ``studio run`` costs).
- ``adherence``: over held-out captions (colour x shape x background combinations never
  drawn in training), several images each, at cfg 7 and cfg 1: the fraction whose shape
  colour, background, position, shape and size match the caption (training.evaluate's
  pixel statistics). Goals: colour, background, position >= 0.9, shape >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a large red circle on a blue background, left"


def speed_child(threads: int | None, launched: float) -> None:
    t0 = time.perf_counter()
    import torch

    if threads:
        torch.set_num_threads(threads)
    from nodes.sdload import preload
    from studio.engine import Engine
    from studio.library import installed_registry

    preload()  # what the app does in the background as its window opens
    from training.studio_run import StudioTxt2Img

    engine = Engine(installed_registry())
    t1 = time.perf_counter()
    gen = StudioTxt2Img(engine=engine)
    gen(PROMPT, 0)
    t2 = time.perf_counter()
    cold = time.time() - launched
    warm = []
    for seed in range(1, 8):
        t = time.perf_counter()
        gen(PROMPT, seed)
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    gen("a small green square on a white background, top", 0)
    t3 = time.perf_counter() - t
    out = {
        "threads": torch.get_num_threads(),
        "import_s": round(t1 - t0, 3),
        "first_run_s": round(t2 - t1, 3),
        "warm_run_s": round(statistics.median(warm), 3),
        "warm_run_min_s": round(min(warm), 3),
        "warm_new_prompt_s": round(t3, 3),
        "cold_total_s": round(cold, 3),
    }
    print(json.dumps(out))


def speed(threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--speed-child", f"--launched={time.time()}"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def adherence(count: int, per_caption: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from studio.engine import Engine
    from studio.library import installed_registry
    from training.studio_run import StudioTxt2Img, held_out_adherence

    engine = Engine(installed_registry())
    out = {"captions": count, "images_per_caption": per_caption}
    for cfg in (7.0, 1.0):
        t = time.perf_counter()
        rates = held_out_adherence(StudioTxt2Img(cfg=cfg, engine=engine), count, 0, per_caption)
        out[f"cfg {cfg:g}"] = {k: round(v, 3) for k, v in rates.items()}
        out[f"cfg {cfg:g}"]["seconds"] = round(time.perf_counter() - t, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--count", type=int, default=60, help="held-out captions")
    ap.add_argument("--per-caption", type=int, default=3, help="images per caption")
    ap.add_argument("--skip-adherence", action="store_true")
    ap.add_argument("--speed-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--launched", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.speed_child:
        speed_child(args.threads, args.launched)
        return
    report: dict = {"model": "studio-tiny", "speed": speed(args.threads)}
    meta = ROOT / "resources/models/checkpoints/studio-tiny/studio_tiny.json"
    if meta.is_file():
        report["trained_step"] = json.loads(meta.read_text("utf-8")).get("step")
    if not args.skip_adherence:
        report["adherence"] = adherence(args.count, args.per_caption, args.threads)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
