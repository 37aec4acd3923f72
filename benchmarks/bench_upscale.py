"""Upscaling a 2048x2048 image x4: peak memory with tiling against without. Prints JSON.

    python benchmarks/bench_upscale.py [--size 2048]

Each mode runs in its own process so its peak resident memory (ru_maxrss) is its own.
The upscaler is a small Real-ESRGAN-compact (SRVGG) model built here, read through
spandrel like any upscaler file.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(model_path: str, size: int, tile: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from spandrel import ModelLoader

    from nodes.upscale import upscale_tiled
    from studio.engine.models import ModelManager  # noqa: F401  (same import cost as the app)

    torch.set_num_threads(2)
    descriptor = ModelLoader().load_from_file(model_path)
    descriptor.model.eval()
    image = torch.rand((1, size, size, 3))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    out = upscale_tiled(
        descriptor, image, descriptor.scale, tile, 32, "cpu", lambda *a: None, torch
    )
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "tile": tile,
                "output": list(out.shape),
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(peak / 1024, 1),
                "rss_before_mb": round(base / 1024, 1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.size, int(args.child[1]))
        return
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    model = Compact(num_feat=16, num_conv=4, upscale=4)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "compact-x4.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        runs = {}
        for name, tile in (("tiled_512", 512), ("untiled", 0)):
            proc = subprocess.run(
                [sys.executable, __file__, "--size", str(args.size), "--child", path, str(tile)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    report = {
        "input": f"{args.size}x{args.size}",
        "model": "SRVGG compact x4, 16 features, 4 convs",
        **runs,
        "peak_ratio_tiled_over_untiled": round(
            runs["tiled_512"]["peak_rss_mb"] / runs["untiled"]["peak_rss_mb"], 3
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
