"""A cold ``studio run`` and ``studio validate``, process start to exit. Prints JSON.

    python benchmarks/bench_cold.py [--repeat 5] [--workflow resources/workflows/txt2img.json]
                                    [--compare OTHER_CHECKOUT]

Each repeat runs, one after the other in fresh processes (interleaved, so a busy machine
slows all of them alike):

- ``torch_s``: ``python -c "import torch"``, the yardstick (the run's figures are also
  given over it, ``*_over_torch``, which varies far less with the machine's load);
- ``imports_s``: the imports a run needs: the engine, the node library and the model
  classes a txt2img run uses (``nodes.sdload.preload``, what the app imports in the
  background as its window opens), no file read;
- ``run_s``: ``studio run WORKFLOW --out TMP`` until the process exits, the image on disk;
- ``validate_s``: ``studio validate WORKFLOW``;
- each also as ``*_cpu_s``: the CPU seconds (user + system) the process used, which a
  shared machine's other work disturbs far less than the clock (a run uses one thread:
  ``OMP_NUM_THREADS=1``).

Medians of ``--repeat`` runs, and every sample. ``--compare OTHER`` measures another
checkout of Studio too, interleaved with this one (a before/after on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMPORTS = "import studio.cli, studio.engine, studio.library, nodes.sdload\nnodes.sdload.preload()\n"


def _cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _timed(cmd: list[str], root: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock seconds of ``cmd`` and the CPU seconds it used (user + system: far less
    sensitive than the clock to what else the machine runs)."""
    cpu = _cpu_seconds()
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds, _cpu_seconds() - cpu


def measure(roots: list[Path], workflow: Path, repeat: int) -> list[dict[str, object]]:
    """Medians for each checkout in ``roots``, its runs interleaved with the others'."""
    py = sys.executable
    names = [
        f"{n}{kind}" for n in ("torch", "imports", "run", "validate") for kind in ("_s", "_cpu_s")
    ]
    samples = [{k: [] for k in names} for _ in roots]
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeat):
            for root, got in zip(roots, samples, strict=True):
                env = dict(
                    os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"
                )
                for name, cmd in (
                    ("torch", [py, "-c", "import torch"]),
                    ("imports", [py, "-c", IMPORTS]),
                    ("run", [py, "-m", "studio.cli", "run", str(workflow), "--out", out]),
                    ("validate", [py, "-m", "studio.cli", "validate", str(workflow)]),
                ):
                    wall, cpu = _timed(cmd, root, env)
                    got[f"{name}_s"].append(wall)
                    got[f"{name}_cpu_s"].append(cpu)
    results = []
    for root, got in zip(roots, samples, strict=True):
        med = {k: round(statistics.median(v), 3) for k, v in got.items()}
        results.append(
            {
                "root": str(root),
                **med,
                "run_over_torch": round(med["run_s"] / med["torch_s"], 2),
                "imports_over_torch": round(med["imports_s"] / med["torch_s"], 2),
                "run_cpu_over_torch_cpu": round(med["run_cpu_s"] / med["torch_cpu_s"], 2),
                "samples": {k: [round(x, 3) for x in v] for k, v in got.items()},
            }
        )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workflow", default=str(ROOT / "resources/workflows/txt2img.json"))
    ap.add_argument(
        "--compare", metavar="OTHER_CHECKOUT", help="also measure another checkout, interleaved"
    )
    args = ap.parse_args()
    roots = [ROOT] + ([Path(args.compare).resolve()] if args.compare else [])
    result = {
        "workflow": args.workflow,
        "repeat": args.repeat,
        "load_average_before": os.getloadavg()[0],
        "checkouts": measure(roots, Path(args.workflow).resolve(), args.repeat),
        "load_average_after": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
