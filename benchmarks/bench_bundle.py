"""The bundled app and the wheel: sizes, and the time from launch to a painted window.

    python benchmarks/bench_bundle.py [--bundle dist/Studio] [--runs 3]

Needs the bundle built first (``bash packaging/build_app.sh``). Prints JSON:

- bundle_mb, archive_mb: the folder and its .tar.gz; largest: what dominates (the
  biggest top-level parts of the bundle, in MB)
- wheel_mb: Studio's own wheel (built from this checkout; its dependencies not included)
- launch_to_painted_s (bundle, started with ``env -i``, like a double-click: no venv, no
  PYTHONPATH) and launch_to_painted_venv_s (``studio`` from this Python), min of the runs,
  offscreen, until the canvas's first paint (goal: the bundle as fast as the venv,
  under 1.5 s)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _mb(n: int) -> float:
    return round(n / 1e6, 1)


def largest(bundle: Path, n: int = 8) -> dict[str, float]:
    base = bundle / "_internal" if (bundle / "_internal").is_dir() else bundle
    parts = {p.name: _size(p) for p in base.iterdir()}
    return {k: _mb(v) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:n]}


def wheel_size() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        shutil.copytree(
            ROOT,
            src,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "build", "dist", "__pycache__", "*.egg-info"
            ),
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                str(Path(tmp, "dist")),
                str(src),
            ],
            check=True,
            capture_output=True,
        )
        (wheel,) = Path(tmp, "dist").glob("*.whl")
        return wheel.stat().st_size


def launch(cmd: list[str], env: dict[str, str], runs: int, *, bare: bool = False) -> list[float]:
    """Seconds from start to the first paint of the canvas, each run; with ``bare`` the
    command starts under ``env -i`` with only the variables below (and PATH)."""
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            mark = Path(tmp, "painted")
            run_env = {
                **env,
                "HOME": tmp,
                "STUDIO_CONFIG_DIR": f"{tmp}/config",
                "STUDIO_DATA_DIR": f"{tmp}/data",
                "QT_QPA_PLATFORM": "offscreen",
                "STUDIO_REPORT_FIRST_PAINT": str(mark),
            }
            if bare:
                full = [
                    "env",
                    "-i",
                    "PATH=/usr/bin:/bin",
                    *(f"{k}={v}" for k, v in run_env.items()),
                ]
                full += cmd
            else:
                full = cmd
            t0 = time.time()
            out = subprocess.run(full, env=run_env, capture_output=True, text=True, timeout=300)
            if not mark.is_file():
                raise RuntimeError(f"{cmd[0]} did not paint: {out.returncode} {out.stderr[-2000:]}")
            times.append(float(mark.read_text()) - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=str(ROOT / "dist" / "Studio"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    bundle = Path(args.bundle)
    result: dict[str, object] = {}
    if (bundle / "studio").is_file():
        result["bundle_mb"] = _mb(_size(bundle))
        archives = sorted(bundle.parent.glob("Studio-*.tar.gz"))
        if archives:
            result["archive_mb"] = _mb(archives[-1].stat().st_size)
        result["largest"] = largest(bundle)
        # env -i: what a double-click gives (no venv, no PYTHONPATH); PATH for a shell.
        t = launch([str(bundle / "studio")], {}, args.runs, bare=True)
        result["launch_to_painted_s"] = round(min(t), 3)
        result["launch_to_painted_s_all"] = [round(x, 3) for x in t]
    else:
        result["bundle"] = f"not built: {bundle} (bash packaging/build_app.sh)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    t = launch(
        [sys.executable, "-c", "import sys, studio.cli; sys.exit(studio.cli.main([]))"],
        env,
        args.runs,
    )
    result["launch_to_painted_venv_s"] = round(min(t), 3)
    result["launch_to_painted_venv_s_all"] = [round(x, 3) for x in t]
    result["wheel_mb"] = _mb(wheel_size())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
