"""Seed variety against adherence, per sampling setting, through Studio's graph. Prints JSON.

    python benchmarks/bench_variety.py [--threads 1] [--count 60] [--prompts 6] \
        [--settings "flow cfg=3;flow cfg=2 interval=0.3;tiny cfg=3 sampler=euler_ancestral"]

A setting is a model (``flow``: studio-tiny-flow, ``tiny``: studio-tiny) and ``key=value``
pairs: ``checkpoint`` (another folder of that model's kind, by name), ``steps`` (default
8 / 20), ``cfg``, ``sampler``, ``scheduler``, ``shift`` (a Model
Sampling SD3 node on studio-tiny-flow) and ``interval`` (the guidance interval: no
guidance for that first fraction of the sampling: ``studio.recipes.guide_from``, the negative
prompt being the positive one there, by Conditioning Set Timestep Range on both, combined).

For each: ``variety``, as ``bench_tiny_flow.py --parts variety`` (8 seeds of ``--prompts``
held-out captions: the spread of the shape's centroid x / y and radius, and the mean pairwise
pixel difference), and on ``--count`` held-out captions (one image each, seed = index)
adherence (training.evaluate) and cleanliness (training/cleanliness.py: IoU >= 0.85,
one colour). The training data's variety of the same captions comes first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = {"flow": ("studio-tiny-flow", 8), "tiny": ("studio-tiny", 20)}


def parse(text: str) -> dict:
    model, *pairs = text.split()
    name, steps = MODELS[model]
    out = {"model": model, "checkpoint": name, "steps": steps, "cfg": 3.0}
    out |= {"sampler": "euler", "scheduler": "normal", "shift": None, "interval": 0.0}
    for p in pairs:
        k, v = p.split("=")
        if k not in out:
            raise SystemExit(f"unknown key {k!r} in {text!r}")
        out[k] = v if k in ("sampler", "scheduler", "checkpoint") else float(v)
    out["steps"] = int(out["steps"])
    return out


def workflow(s: dict, prompt: str, seed: int):
    from studio import recipes
    from studio.library import installed_registry

    wf, ids = recipes.txt2img(
        installed_registry(),
        s["checkpoint"],
        prompt,
        seed=seed,
        steps=s["steps"],
        cfg=s["cfg"],
        sampler=s["sampler"],
        scheduler=s["scheduler"],
    )
    if s["shift"] is not None:
        ms = wf.add_node("model_sampling_sd3", {"shift": s["shift"]}).id
        wf.connect(ids["ckpt"], "model", ms, "model")
        wf.connect(ms, "model", ids["sampler"], "model")
    if s["interval"] > 0:
        recipes.guide_from(wf, ids["pos"], ids["neg"], ids["sampler"], s["interval"])
    return wf, ids


def draw(engine, s: dict, prompt: str, seed: int) -> np.ndarray:
    from training.studio_run import to_uint8

    wf, ids = workflow(s, prompt, seed)
    result = engine.run(wf)
    if not result.ok:
        raise RuntimeError(f"{s}: {result.errors}")
    return to_uint8(result.outputs[ids["decode"]]["image"])[0]


def measure(engine, s: dict, caps: list[str], prompts: list[str]) -> dict:
    from training import cleanliness
    from training.evaluate import adherence

    t = time.perf_counter()
    var = [cleanliness.seed_variety([draw(engine, s, p, k) for k in range(8)]) for p in prompts]
    imgs = [draw(engine, s, c, i) for i, c in enumerate(caps)]
    row = {k: round(float(np.mean([v[k] for v in var])), 4) for k in var[0]}
    row |= {k: round(v, 3) for k, v in adherence(caps, imgs).items()}
    clean = cleanliness.clean_figures(caps, imgs)
    row |= {"iou_mean": clean["iou_mean"], "iou_ok": clean["iou_ok"]}
    row["one_colour_ok"] = clean["one_colour_ok"]
    row["seconds"] = round(time.perf_counter() - t, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--count", type=int, default=60, help="held-out captions for adherence")
    ap.add_argument("--prompts", type=int, default=6, help="held-out captions for variety")
    ap.add_argument("--settings", default="flow cfg=3;tiny cfg=3")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from studio.engine import Engine
    from studio.library import installed_registry
    from training import cleanliness
    from training.data import eval_scenes

    caps = [s.caption for s in eval_scenes(max(args.count, args.prompts))]
    prompts, caps = caps[: args.prompts], caps[: args.count]
    data = [cleanliness.data_variety(p) for p in prompts]
    report = {"data": {k: round(float(np.mean([d[k] for d in data])), 4) for k in data[0]}}
    print(json.dumps(report), flush=True)
    engine = Engine(installed_registry())
    for text in args.settings.split(";"):
        row = measure(engine, parse(text.strip()), caps, prompts)
        report[text.strip()] = row
        print(json.dumps({text.strip(): row}), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
