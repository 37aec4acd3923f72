"""Merging two SD 1.5-sized checkpoints: time and peak memory. Prints JSON.

    python benchmarks/bench_merge.py [--dtype fp16|fp32] [--keep DIR]

Writes two SD 1.5-shaped checkpoints with random weights (LDM single files, fp16, ~2 GB
each: the layout artists download) into a temporary folder, then, each in a process of
its own (so peak memory is that run's):

- ``one``: Load Checkpoint and a one-step 64x64 Sampler run (the model loaded once);
- ``merge``: two Load Checkpoints, Merge Models at 0.5 and the same Sampler run (the merge
  is made when the Sampler first needs the model);
- ``merge_again``: the same workflow run twice in one engine, the second time with another
  seed: what a prompt or seed change costs after a merge (the merged model is cached).

For each: wall seconds of the run and the process's peak resident memory (MB). The ratio
of the merge's peak to one model's is what carries over to SDXL sizes (both inputs read
fresh on the CPU, combined tensor by tensor in float32, the second dropped afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]


def write_checkpoint(path: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.ldm_keys import checkpoint_to_ldm
    from nodes.sdload import family_configs

    configs = family_configs("sd1")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    te = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    state = checkpoint_to_ldm(
        unet.state_dict(), configs["unet"], vae.state_dict(), configs["vae"], te.state_dict()
    )
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(path))


def run_case(root: Path, case: str, dtype: str) -> dict:
    """One case in this process (the child): its run's seconds and the peak memory."""
    import resource

    import torch

    from studio.engine import Engine
    from studio.graph import Workflow
    from studio.library import installed_registry
    from studio.settings import Settings

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    settings = Settings(
        models_root=str(root), output_dir=str(root / "out"), device="cpu", precision=dtype
    )
    engine = Engine(installed_registry(), settings=settings)

    def workflow(seed: int) -> tuple[Workflow, str]:
        wf = Workflow(installed_registry())
        a = wf.add_node("load_checkpoint", {"ckpt_name": "a.safetensors"}).id
        model = (a, "model")
        if case != "one":
            b = wf.add_node("load_checkpoint", {"ckpt_name": "b.safetensors"}).id
            m = wf.add_node("merge_models", {"ratio": 0.5}).id
            wf.connect(a, "model", m, "model1")
            wf.connect(b, "model", m, "model2")
            model = (m, "model")
        pos = wf.add_node("text_encode", {"text": "a cat"}).id
        neg = wf.add_node("text_encode", {"text": ""}).id
        lat = wf.add_node("empty_latent", {"width": 64, "height": 64}).id
        s = wf.add_node("sampler", {"seed": seed, "steps": 1, "cfg": 5.0}).id
        for n in (pos, neg):
            wf.connect(a, "clip", n, "clip")
        wf.connect(*model, s, "model")
        wf.connect(pos, "conditioning", s, "positive")
        wf.connect(neg, "conditioning", s, "negative")
        wf.connect(lat, "latent", s, "latent")
        return wf, s

    out = {}
    wf, s = workflow(1)
    t0 = time.perf_counter()
    result = engine.run(wf, targets=[s])
    out["seconds"] = round(time.perf_counter() - t0, 2)
    assert result.ok, result.errors
    if case == "merge_again":
        wf, s = workflow(2)
        t0 = time.perf_counter()
        result = engine.run(wf, targets=[s])
        out["second_run_seconds"] = round(time.perf_counter() - t0, 2)
        assert result.ok, result.errors
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp32",
                   help="the compute type the models load in (the CPU's default is fp32)")  # fmt: skip
    p.add_argument("--keep", help="write the checkpoints here and keep them")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(Path(args.child[0]), args.child[1], args.dtype)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for name, seed in (("a", 1), ("b", 2)):
            path = root / "checkpoints" / f"{name}.safetensors"
            if not path.is_file():
                write_checkpoint(path, seed)
        written = round(time.perf_counter() - t0, 1)
        size_mb = round((root / "checkpoints" / "a.safetensors").stat().st_size / 2**20)
        report: dict = {"checkpoint_mb": size_mb, "write_seconds": written, "dtype": args.dtype}
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for case in ("one", "merge", "merge_again"):
            got = subprocess.run(
                [sys.executable, __file__, "--dtype", args.dtype, "--child", str(root), case],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            report[case] = json.loads(got.stdout.strip().splitlines()[-1])
        report["merge_peak_over_one"] = round(
            report["merge"]["peak_rss_mb"] / report["one"]["peak_rss_mb"], 2
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
