"""Batches: images per second for N studio-tiny txt2img jobs (one seed each). Prints JSON.

    python benchmarks/bench_batch.py [--jobs 40] [--steps 20] [--skip shell,ray]

Modes, each in fresh processes, on the default txt2img workflow (64x64, euler, cfg 7):

- ``shell_loop``: ``studio run --set Sampler.seed=S`` once per job, one after another
  (what people do without batches: every image pays the import and the model load);
- ``workers_1``, ``workers_2``: ``studio batch --seeds 1-N --workers K``;
- ``ray_local_2``: ``studio batch --ray local --workers 2`` (starts Ray, two actors);
- ``floor``: a warm ``Engine.run`` loop in one process (the model loaded, one warm-up run
  not counted): what a batch cannot beat on one core set.

For each: ``seconds`` (process start to the end, all cold-start work included),
``images_per_s`` over that, and for batches ``steady_images_per_s`` (from the first image
to the last: the warm workers' rate, without the start). ``ray_overhead_ms_per_job``: what
a Ray job costs beyond the worker's own time for it (wall time x actors / jobs - mean job
seconds), and exactly in ``overhead_100_trivial_jobs``: 100 jobs that do almost nothing
(an example image saved under a new name), one worker, local and on Ray, against a warm
``Engine.run`` loop of the same. Goals: ``workers_1`` steady within 1.1x of the floor; ``workers_2`` not slower
than ``workers_1``; Ray's overhead under 50 ms a job.
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
WORKFLOW = ROOT / "resources/workflows/txt2img.json"


_CONFIG = tempfile.mkdtemp(prefix="bench-batch-config-")  # no user settings file


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.setdefault("STUDIO_CONFIG_DIR", _CONFIG)
    return env


def shell_loop(jobs: int, steps: int, tmp: Path) -> dict:
    t0 = time.perf_counter()
    for seed in range(1, jobs + 1):
        subprocess.run(
            [sys.executable, "-m", "studio.cli", "run", str(WORKFLOW),
             "--set", f"Sampler.steps={steps}", "--set", f"Sampler.seed={seed}",
             "--out", str(tmp / "shell")],
            cwd=ROOT, env=_env(), check=True, capture_output=True,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "images_per_s": round(jobs / seconds, 4)}


def batch(jobs: int, steps: int, tmp: Path, name: str, extra: list[str]) -> dict:
    out = tmp / name
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "studio.cli", "batch", str(WORKFLOW),
         "--set", f"Sampler.steps={steps}", "--seeds", f"1-{jobs}", "--out", str(out),
         "--events", *extra],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    finished, job_seconds = [], []
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "job_finished":
            finished.append(time.perf_counter())
            job_seconds.append(event["seconds"])
    if proc.wait() != 0 or len(finished) != jobs:
        raise SystemExit(f"{name}: the batch failed ({len(finished)} of {jobs} images)")
    seconds = time.perf_counter() - t0
    steady = (jobs - 1) / (finished[-1] - finished[0]) if jobs > 1 else float("nan")
    return {
        "seconds": round(seconds, 2),
        "images_per_s": round(jobs / seconds, 4),
        "first_image_s": round(finished[0] - t0, 2),
        "steady_images_per_s": round(steady, 4),
        "mean_job_s": round(statistics.mean(job_seconds), 4),
    }


FLOOR_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import studio
from studio.settings import Settings
jobs, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
wf = studio.load_workflow(sys.argv[4])
wf.set_param("Sampler", "steps", steps)
engine = studio.Engine(wf.registry, settings=Settings(output_dir=out))
wf.set_param("Sampler", "seed", 0)
engine.run(wf)  # warm-up: the model loads, the prompt is encoded
t1 = time.perf_counter()
for seed in range(1, jobs + 1):
    wf.set_param("Sampler", "seed", seed)
    engine.run(wf)
t2 = time.perf_counter()
print(json.dumps({"start_s": round(t1 - t0, 2), "seconds": round(t2 - t1, 2),
                  "images_per_s": round(jobs / (t2 - t1), 4)}))
"""


def floor(jobs: int, steps: int, tmp: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", FLOOR_CHILD, str(jobs), str(steps), str(tmp / "floor"),
         str(WORKFLOW)],
        cwd=ROOT, env=_env(), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


OVERHEAD_CHILD = """
import json, sys, time
import studio
from studio.graph import Workflow
from studio.settings import Settings
jobs, out, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
wf = Workflow(studio.installed_registry())
load = wf.add_node("load_image", {"image": "example_red_circle_left.png"})
save = wf.add_node("save_image", title="Save")
wf.connect(load.id, "image", save.id, "images")
prefixes = [f"p{i}" for i in range(jobs)]
done = []
def on_event(e):
    if e["event"] == "job_finished":
        done.append((time.perf_counter(), e["seconds"]))
if mode == "floor":
    engine = studio.Engine(wf.registry, settings=Settings(output_dir=out))
    engine.run(wf)
    t = time.perf_counter()
    for p in prefixes:
        wf.set_param(save.id, "filename_prefix", p)
        engine.run(wf)
    print(json.dumps({"ms_per_job": round((time.perf_counter() - t) / jobs * 1000, 2)}))
    sys.exit()
b = studio.Batch(wf, sweeps={"Save.filename_prefix": prefixes}, settings=Settings())
b.run(out, workers=1, ray="local" if mode == "ray" else None, on_event=on_event)
steady = (done[-1][0] - done[0][0]) / (len(done) - 1)
print(json.dumps({"ms_per_job": round(steady * 1000, 2),
                  "worker_ms_per_job_median": round(1000 * sorted(s for _, s in done)[len(done) // 2], 2)}))
"""


def overhead(jobs: int, tmp: Path) -> dict:
    """Per-job cost of the batch machinery on a job that does almost nothing (an example
    image loaded once and cached, saved under a new name): one worker, local and Ray,
    against a warm Engine.run loop."""
    out = {}
    for mode in ("floor", "local", "ray"):
        proc = subprocess.run(
            [sys.executable, "-c", OVERHEAD_CHILD, str(jobs), str(tmp / f"over-{mode}"), mode],
            cwd=ROOT, env=_env(), check=True, capture_output=True, text=True,
        )  # fmt: skip
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["local_overhead_ms_per_job"] = round(
        out["local"]["ms_per_job"] - out["floor"]["ms_per_job"], 2
    )
    out["ray_overhead_ms_per_job"] = round(out["ray"]["ms_per_job"] - out["floor"]["ms_per_job"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip", default="", help="comma-separated modes to leave out")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    report: dict = {
        "jobs": args.jobs,
        "steps": args.steps,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if "floor" not in skip:
        report["floor"] = floor(args.jobs, args.steps, tmp)
    if "workers_1" not in skip:
        report["workers_1"] = batch(args.jobs, args.steps, tmp, "w1", ["--workers", "1"])
    if "workers_2" not in skip:
        report["workers_2"] = batch(args.jobs, args.steps, tmp, "w2", ["--workers", "2"])
    if "ray" not in skip:
        try:
            import ray  # noqa: F401
        except ImportError:
            report["ray_local_2"] = "ray is not installed"
        else:
            r = batch(args.jobs, args.steps, tmp, "ray", ["--ray", "local", "--workers", "2"])
            r["ray_overhead_ms_per_job"] = round(
                max(0.0, 2 / r["steady_images_per_s"] - r["mean_job_s"]) * 1000, 1
            )
            report["ray_local_2"] = r
    if "overhead" not in skip:
        report["overhead_100_trivial_jobs"] = overhead(100, tmp)
    if "shell" not in skip:
        report["shell_loop"] = shell_loop(args.jobs, args.steps, tmp)
    if "floor" in report and "workers_1" in report:
        report["workers_1_steady_vs_floor"] = round(
            report["floor"]["images_per_s"] / report["workers_1"]["steady_images_per_s"], 3
        )
    if "shell_loop" in report and "workers_1" in report:
        report["workers_1_vs_shell_loop"] = round(
            report["workers_1"]["images_per_s"] / report["shell_loop"]["images_per_s"], 2
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
