"""A cold ``studio run`` and ``studio validate``, process start to exit. Prints JSON.

    python benchmarks/bench_cold.py [--repeat 5] [--workflow resources/workflows/txt2img.json]
                                    [--root OTHER_CHECKOUT]

Each repeat runs, one after the other in fresh processes (interleaved, so a busy machine
slows all of them alike):

- ``torch_s``: ``python -c "import torch"``, the yardstick (the run's figures are also
  given over it, ``*_over_torch``, which varies far less with the machine's load);
- ``imports_s``: the imports a run needs: the engine, the node library and the model
  classes a txt2img run uses (``nodes.sdload.preload``, what the app imports in the
  background as its window opens), no file read;
- ``run_s``: ``studio run WORKFLOW --out TMP`` until the process exits, the image on disk;
- ``validate_s``: ``studio validate WORKFLOW``.

Medians of ``--repeat`` runs, and every sample. ``--root`` measures another checkout of
Studio the same way (for a before/after: ``--root /path/to/main``).
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

IMPORTS = "import studio.cli, studio.engine, studio.library, nodes.sdload\nnodes.sdload.preload()\n"


def _timed(cmd: list[str], root: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def measure(root: Path, workflow: Path, repeat: int) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    py = sys.executable
    samples: dict[str, list[float]] = {
        "torch_s": [],
        "imports_s": [],
        "run_s": [],
        "validate_s": [],
    }
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeat):
            samples["torch_s"].append(_timed([py, "-c", "import torch"], root, env))
            samples["imports_s"].append(_timed([py, "-c", IMPORTS], root, env))
            samples["run_s"].append(
                _timed([py, "-m", "studio.cli", "run", str(workflow), "--out", out], root, env)
            )
            samples["validate_s"].append(
                _timed([py, "-m", "studio.cli", "validate", str(workflow)], root, env)
            )
    med = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    return {
        **med,
        "run_over_torch": round(med["run_s"] / med["torch_s"], 2),
        "imports_over_torch": round(med["imports_s"] / med["torch_s"], 2),
        "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workflow", default=str(ROOT / "resources/workflows/txt2img.json"))
    ap.add_argument("--root", help="another checkout of Studio to measure the same way")
    args = ap.parse_args()
    root = Path(args.root).resolve() if args.root else ROOT
    result = {
        "root": str(root),
        "workflow": args.workflow,
        "repeat": args.repeat,
        "load_average": os.getloadavg()[0],
        **measure(root, Path(args.workflow).resolve(), args.repeat),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
