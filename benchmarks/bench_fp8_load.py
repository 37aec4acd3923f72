"""Peak memory while loading an fp8 Flux transformer file (flux1-dev-fp8's kind). Prints JSON.

    python benchmarks/bench_fp8_load.py [--width 1536] [--double 4] [--single 8]
                                        [--dtype float32|bfloat16]

Writes a Flux.1 transformer in the original key layout with random fp8 (e4m3fn) weights
(``--width`` wide, 128-wide heads; the real model: 3072, 19 double and 38 single blocks),
then in a fresh process loads it as Load Diffusion Model with weight_dtype fp8_e4m3fn does
(``nodes.dit.load_component``; Load Checkpoint on an fp8 all-in-one file takes the same
path) in ``--dtype`` (the CPU's float32, a GPU's bfloat16). Reports the file's size, the
process's resident memory after the imports, its peak during the load, and what the peak
added over the file's size (the wide copies made on the way). Goal: the peak near the
file's size, not the size of the model widened to ``--dtype``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_file(path: Path, width: int, double: int, single: int) -> dict:
    import torch
    from safetensors.torch import save_file

    from nodes.dit import flux_rope_axes
    from training.export_flow_single_file import flux_original_shapes

    cfg = {
        "in_channels": 64, "num_layers": double, "num_single_layers": single,
        "attention_head_dim": 128, "num_attention_heads": width // 128,
        "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
        "axes_dims_rope": flux_rope_axes(128), "patch_size": 1, "out_channels": None,
    }  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    state = {
        k: (torch.randn(shape, generator=gen) * 0.02).to(torch.float8_e4m3fn)
        for k, shape in flux_original_shapes(cfg).items()
    }
    save_file(state, str(path))
    return cfg


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load(path: str, dtype_name: str) -> None:
    import torch

    from nodes import dit

    dtype = getattr(torch, dtype_name)
    source = dit.inspect_diffusion_model(Path(path), "bench", ("bench",), "fp8_e4m3fn")
    before = _rss_mib()
    net = dit.load_component(source, "transformer", dtype, "bench")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    print(json.dumps({"rss_before_mib": round(before), "peak_mib": round(peak),
                      "module_mib": round(params)}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--double", type=int, default=4)
    ap.add_argument("--single", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--_load", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._load:
        load(args._load, args.dtype)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flux-fp8.safetensors"
        write_file(path, args.width, args.double, args.single)
        out = subprocess.run(
            [sys.executable, __file__, "--_load", str(path), "--dtype", args.dtype],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        got = json.loads(out.stdout.strip().splitlines()[-1])
        file_mib = path.stat().st_size / 2**20
    got.update(
        file_mib=round(file_mib), dtype=args.dtype, width=args.width,
        blocks=[args.double, args.single],
        peak_over_imports_and_file_mib=round(got["peak_mib"] - got["rss_before_mib"] - file_mib),
    )  # fmt: skip
    print(json.dumps(got))


if __name__ == "__main__":
    main()
