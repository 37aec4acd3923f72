"""studio-tiny-flow (and studio-tiny-flux) beside studio-tiny: adherence by step count, clean
pictures, seed variety, speed. Prints JSON.

    python benchmarks/bench_tiny_flow.py [--threads 2] [--count 60] [--parts curve,clean,variety,speed]
        [--models flow,flux,tiny]

studio-tiny-flux (``--models flux``; its folder ``--flux-folder``) is measured as
studio-tiny-flow is, through ``FluxPipeline`` (true cfg against ``""``) and Studio's graph.

- ``curve``: adherence (training.evaluate's pixel reading) on ``--count`` held-out captions,
  one image each, at 2, 4, 8 and 20 steps: studio-tiny-flow through diffusers'
  ``StableDiffusion3Pipeline`` (cfg ``flow_models.DEFAULT_CFG``), studio-tiny through
  Studio's own txt2img graph (euler, cfg 7 and 3). Goal for studio-tiny-flow in <= 8 steps:
  colour, background, position >= 0.9, shape >= 0.8.
- ``clean``: on the same images at each model's own step count (8 / 20): the shape mask's
  IoU with the best-fitting ideal shape the caption names (goal >= 0.85), the fraction of
  images whose shape is one colour (>= 95 % of its inner pixels within 40 RGB of their mean),
  see ``training/cleanliness.py``. studio-tiny at cfg 7, 5 and 3.
- ``variety``: 8 seeds of each of ``--variety-prompts`` held-out captions: the mean pairwise
  pixel difference (0-255) and the spread of centroid and radius, against the training
  data's 8 renders of the same captions.
- ``variety``: studio-tiny-flow through Studio's graph (8 steps, cfg 3, with its default
  workflow's guidance interval ``flow_models.DEFAULT_GUIDANCE_START`` and without),
  studio-tiny through it at 20 steps, cfg 3 and 7. ``benchmarks/bench_variety.py`` sweeps
  cfg, samplers, shift and the guidance interval.
- ``speed``: warm txt2img, 64x64, one image, a new seed each run, median of 7 interleaved rounds: through
  Studio's graph studio-tiny-flow at 8 and 4 steps (and at 8 without the Sampler's cut of
  the 256 identical zero rows standing for T5, nodes/dit_context.py) and studio-tiny at 20
  steps (cfg 3); through the pipelines studio-tiny-flow at 8 steps and studio-tiny at 20.
  Also the largest pixel difference between the graph's images with and without the cut
  (10 captions), and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = (2, 4, 8, 20)
TINY_CFGS = (7.0, 3.0)
PROMPT = "a large red circle on a blue background, left"


def flow_images(pipe, captions, steps, cfg, seed=0):
    """A flow model's pictures through its pipeline: StableDiffusion3Pipeline's cfg, or
    FluxPipeline's true cfg against the empty prompt (the tiny Flux has no guidance input)."""
    import torch

    out = []
    for i in range(0, len(captions), 30):
        batch = list(captions[i : i + 30])
        if type(pipe).__name__ == "FluxPipeline":
            kw = {
                "negative_prompt": [""] * len(batch),
                "true_cfg_scale": cfg,
                "height": 64,
                "width": 64,
                "max_sequence_length": pipe.tokenizer_2.model_max_length,
            }
        else:
            kw = {"guidance_scale": cfg}
        imgs = pipe(
            batch,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed + i),
            output_type="np",
            **kw,
        ).images
        out += list((imgs * 255).round().astype(np.uint8))
    return out


def tiny_images(engine, captions, steps, cfg, seed=0):
    from training.studio_run import StudioTxt2Img

    gen = StudioTxt2Img(steps=steps, cfg=cfg, engine=engine)
    return [gen(c, seed + i) for i, c in enumerate(captions)]


def rates(captions, images):
    from training.evaluate import adherence

    return {k: round(v, 3) for k, v in adherence(captions, images).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--count", type=int, default=60, help="held-out captions")
    ap.add_argument("--variety-prompts", type=int, default=6)
    ap.add_argument("--parts", default="curve,clean,variety,speed")
    ap.add_argument("--folder", default=None, help="a studio-tiny-flow folder (default: shipped)")
    ap.add_argument(
        "--flux-folder", default=None, help="a studio-tiny-flux folder (default: shipped)"
    )
    ap.add_argument("--models", default="flow,tiny", help="any of flow, flux, tiny")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from studio.engine import Engine
    from studio.library import installed_registry
    from training import cleanliness
    from training import flow_models as F
    from training.data import eval_scenes

    parts = set(args.parts.split(","))
    models = set(args.models.split(","))
    # the flow-matching models measured: name -> (folder, pipeline, default guidance start)
    flows: dict = {}
    if "flow" in models:
        folder = Path(args.folder) if args.folder else F.FOLDER
        flows["studio-tiny-flow"] = (folder, F.load_pipeline(folder), F.DEFAULT_GUIDANCE_START)
    if "flux" in models:
        folder = Path(args.flux_folder) if args.flux_folder else F.FLUX_FOLDER
        flows["studio-tiny-flux"] = (folder, F.load_flux_pipeline(folder), F.DEFAULT_GUIDANCE_START)
    engine = Engine(installed_registry())
    caps = [s.caption for s in eval_scenes(args.count)]
    report: dict = {
        "folders": {name: str(f[0]) for name, f in flows.items()},
        "threads": args.threads,
        "captions": len(caps),
        "flow_cfg": F.DEFAULT_CFG,
        "flow_steps": F.DEFAULT_STEPS,
    }
    for name, (folder, _, _) in flows.items():
        meta = folder / "studio_tiny_flow.json"
        if meta.is_file():
            info = json.loads(meta.read_text())
            report.setdefault("trained", {})[name] = {
                "step": info.get("step"),
                "seconds": info.get("seconds"),
            }
    drawn: dict = {}
    if "curve" in parts:
        curve: dict = {}
        for name, (_, pipe, _) in flows.items():
            curve[name] = {}
            for steps in STEPS:
                t = time.perf_counter()
                imgs = flow_images(pipe, caps, steps, F.DEFAULT_CFG)
                drawn[(name, steps)] = imgs
                curve[name][steps] = rates(caps, imgs)
                curve[name][steps]["seconds"] = round(time.perf_counter() - t, 1)
        for cfg in TINY_CFGS if "tiny" in models else ():
            key = f"studio-tiny cfg {cfg:g}"
            curve[key] = {}
            for steps in STEPS:
                t = time.perf_counter()
                imgs = tiny_images(engine, caps, steps, cfg)
                drawn[(cfg, steps)] = imgs
                curve[key][steps] = rates(caps, imgs)
                curve[key][steps]["seconds"] = round(time.perf_counter() - t, 1)
        report["curve"] = curve
        print(json.dumps({"curve": curve}), file=sys.stderr, flush=True)
    if "clean" in parts:
        clean = {}
        for name, (_, pipe, _) in flows.items():
            imgs = drawn.get((name, F.DEFAULT_STEPS)) or flow_images(
                pipe, caps, F.DEFAULT_STEPS, F.DEFAULT_CFG
            )
            fig = cleanliness.clean_figures(caps, imgs)
            fig["adherence"] = rates(caps, imgs)
            clean[f"{name} {F.DEFAULT_STEPS} steps cfg {F.DEFAULT_CFG:g}"] = fig
        for cfg in (7.0, 5.0, 3.0) if "tiny" in models else ():
            imgs = drawn.get((cfg, 20)) or tiny_images(engine, caps, 20, cfg)
            fig = cleanliness.clean_figures(caps, imgs)
            fig["adherence"] = rates(caps, imgs)
            clean[f"studio-tiny 20 steps cfg {cfg:g}"] = fig
        report["clean"] = clean
        print(json.dumps({"clean": clean}), file=sys.stderr, flush=True)
    if "variety" in parts:
        prompts = caps[: args.variety_prompts]
        var: dict = {}

        def mean_of(dicts):
            return {k: round(float(np.mean([d[k] for d in dicts])), 4) for k in dicts[0]}

        var["data"] = mean_of([cleanliness.data_variety(p) for p in prompts])
        from training.studio_run import StudioTxt2Img

        for name, (folder, _, default_start) in flows.items():
            # Through Studio's graph, 8 seeds one image at a time (what an artist gets): the
            # default workflow's guidance interval, and guided from the first step.
            for start in (default_start, 0.0):
                flow = StudioTxt2Img(
                    model=folder.name,
                    steps=F.DEFAULT_STEPS,
                    cfg=F.DEFAULT_CFG,
                    guidance_start=start,
                    engine=engine,
                )
                key = f"{name} {F.DEFAULT_STEPS} steps cfg {F.DEFAULT_CFG:g}"
                var[key + (f", guided from {start:g}" if start else "")] = mean_of(
                    [cleanliness.seed_variety([flow(p, s) for s in range(8)]) for p in prompts]
                )
        for cfg in (3.0, 7.0) if "tiny" in models else ():
            var[f"studio-tiny 20 steps cfg {cfg:g}"] = mean_of(
                [
                    cleanliness.seed_variety(tiny_images(engine, [p] * 8, 20, cfg, 0))
                    for p in prompts
                ]
            )
        var["prompts"] = prompts
        report["variety"] = var
        print(json.dumps({"variety": var}), file=sys.stderr, flush=True)
    if "speed" in parts:
        from diffusers import StableDiffusionPipeline

        from nodes import dit_context
        from training.studio_run import StudioTxt2Img

        def medians(fns: dict, n: int = 7) -> dict:
            # Interleaved (one run of each per round) so that the shared machine's changing
            # load falls on all of them alike; one warm-up round first.
            times: dict = {k: [] for k in fns}
            for r in range(n + 1):
                for k, fn in fns.items():
                    t = time.perf_counter()
                    fn(r)
                    if r:
                        times[k].append(time.perf_counter() - t)
            return {k: round(statistics.median(v), 3) for k, v in times.items()}

        def uncut(fn):
            # The Sampler without the cut of T5's identical zero rows (nodes/dit_context.py).
            def run(seed):
                keep, dit_context.MIN_RUN = dit_context.MIN_RUN, 10**9
                try:
                    return fn(seed)
                finally:
                    dit_context.MIN_RUN = keep

            return run

        sd = StableDiffusionPipeline.from_pretrained(
            str(ROOT / "resources/models/checkpoints/studio-tiny"),
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
        sd.set_progress_bar_config(disable=True)
        tiny = StudioTxt2Img(steps=20, cfg=3.0, engine=engine)
        speed = report["speed_warm_s"] = {"load_average_before": os.getloadavg()}
        # Fresh seeds for every timed run: the engine's cache would serve a repeated one.
        fresh = iter(range(1000, 10**6))
        fns: dict = {}
        for name, (folder, _, default_start) in flows.items():
            n = F.DEFAULT_STEPS
            flow8, flow4 = (
                StudioTxt2Img(model=folder.name, steps=k, cfg=F.DEFAULT_CFG, engine=engine)
                for k in (n, 4)
            )
            default = StudioTxt2Img(
                model=folder.name, steps=n, cfg=F.DEFAULT_CFG, engine=engine,
                guidance_start=default_start,
            )  # fmt: skip
            fns |= {
                f"{name} graph {n} steps": lambda s, g=flow8: g(PROMPT, next(fresh)),
                f"{name} graph {n} steps, guided from {default_start:.0%} (the default "
                "workflow)": lambda s, g=default: g(PROMPT, next(fresh)),
                f"{name} graph 4 steps": lambda s, g=flow4: g(PROMPT, next(fresh)),
            }
            if name == "studio-tiny-flow":  # SD3 without T5: the zero rows' cut
                fns[f"{name} graph {n} steps, context not cut"] = uncut(
                    lambda s, g=flow8: g(PROMPT, next(fresh))
                )
        fns["studio-tiny graph 20 steps cfg 3"] = lambda s: tiny(PROMPT, next(fresh))
        for name, (_, pipe, _) in flows.items():
            fns[f"{name} pipeline {F.DEFAULT_STEPS} steps"] = lambda s, p=pipe: flow_images(
                p, [PROMPT], F.DEFAULT_STEPS, F.DEFAULT_CFG, s
            )
        fns["studio-tiny pipeline 20 steps cfg 3"] = lambda s: sd(
            PROMPT,
            num_inference_steps=20,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(s),
            output_type="np",
        )
        speed |= medians(fns)
        if "studio-tiny-flow" in flows:
            folder = flows["studio-tiny-flow"][0]
            flow8 = StudioTxt2Img(
                model=folder.name, steps=F.DEFAULT_STEPS, cfg=F.DEFAULT_CFG, engine=engine
            )
            # The cut changes no picture: the graph's images with and without it.
            cut = [flow8(c, 500 + i) for i, c in enumerate(caps[:10])]
            # A new engine: flow8's cache would serve the same pictures.
            flow8b = StudioTxt2Img(
                model=folder.name,
                steps=F.DEFAULT_STEPS,
                cfg=F.DEFAULT_CFG,
                engine=Engine(installed_registry()),
            )
            whole = [uncut(lambda s, c=c: flow8b(c, s))(500 + i) for i, c in enumerate(caps[:10])]
            speed["cut vs not cut, max pixel difference (0-255), 10 captions"] = max(
                int(np.abs(a.astype(int) - b.astype(int)).max())
                for a, b in zip(cut, whole, strict=True)
            )
        speed["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
