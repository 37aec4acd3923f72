"""GUI run benchmarks (offscreen, CPU), printed as JSON.

- loop_lateness_ms: how late a 5 ms timer fires on the GUI thread while a run samples on
  the CPU (max and 99th percentile; goal: the event loop never blocks more than 50 ms)
- run_to_first_preview_ms: from Run to the sampler's first live preview on screen
- gui_run_s / headless_run_s / gui_overhead_pct: the same run (new seed each time, models
  warm) in the window, from Run to the image shown, against ``Engine.run`` (goal within 5%)
- mask_stroke_ms / mask_paint_ms: painting over a 2048x2048 image (one stroke segment
  stamped, and a repaint of the whole view, an upper bound of what a stroke repaints)

The model is a small SD1-shaped UNet built in code (no download), 256x256, 20 steps.
Run: .venv/bin/python benchmarks/bench_gui_run.py [--steps N] [--runs N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"
TMP = Path(tempfile.mkdtemp(prefix="studio-bench-gui-run-"))
os.environ["XDG_CONFIG_HOME"] = str(TMP / "config")
os.environ["STUDIO_DATA_DIR"] = str(TMP / "data")


def small_sd1() -> dict:
    """A small SD1-shaped model: enough compute per step to make a CPU run last seconds."""
    import diffusion_fixtures as fx
    import torch
    from diffusers import UNet2DConditionModel

    parts = fx.tiny_sd1()
    torch.manual_seed(0)
    parts["unet"] = UNet2DConditionModel(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()
    return parts


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import diffusion_fixtures as fx
    from PySide6.QtCore import QElapsedTimer, QEventLoop, QPointF, QTimer
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QApplication

    from studio.app.recovery import RecoveryStore
    from studio.app.theme import apply_theme
    from studio.app.window import MainWindow
    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings

    models = TMP / "models"
    fx.save_folder(fx.sd1_pipeline(small_sd1()), models / "checkpoints" / "small-sd1")
    settings = Settings(
        models_root=str(models),
        output_dir=str(TMP / "out"),
        input_dir=str(TMP / "in"),
        device="cpu",
    )
    wf, ids = fx.txt2img(
        "small-sd1", steps=args.steps, width=args.size, height=args.size, output="preview_image"
    )

    app = QApplication.instance() or QApplication([])
    apply_theme(app)
    w = MainWindow(installed_registry(), autosave=False, recovery=RecoveryStore(TMP / "recovery"))
    w.interactive = False
    w.resize(1440, 880)
    w.set_document(wf, None)
    w.show()
    app.processEvents()

    clock = QElapsedTimer()
    clock.start()
    marks: dict[str, float] = {}
    ticks: list[float] = []
    ticker = QTimer()
    ticker.setInterval(5)
    ticker.timeout.connect(lambda: ticks.append(clock.nsecsElapsed() / 1e9))
    w.runs.preview.connect(lambda *_: marks.setdefault("preview", clock.nsecsElapsed() / 1e9))

    loop = QEventLoop()
    w.runs.finished.connect(lambda _job: loop.quit())

    def gui_run(seed: int, tick: bool = False) -> tuple[float, float | None, list[float]]:
        """One run from Run to its image shown; ``tick`` samples the loop's lateness
        (the ticker's own work would count as GUI overhead, so timed runs go without)."""
        w.controller.set_param(ids["sampler"], "seed", seed)
        marks.clear()
        ticks.clear()
        if tick:
            ticker.start()
        t0 = clock.nsecsElapsed() / 1e9
        w.run_workflow()
        loop.exec()
        t1 = clock.nsecsElapsed() / 1e9
        ticker.stop()
        job = w.runs.ended[-1]
        if job.state != "done":
            raise SystemExit(f"the GUI run failed: {job.message or job.result.errors}")
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        preview = marks.get("preview")
        return t1 - t0, (preview - t0) if preview is not None else None, gaps

    engine = Engine(installed_registry(), settings=settings)

    def headless_run(seed: int) -> float:
        run_wf = wf.copy()
        run_wf.put_param(ids["sampler"], "seed", seed)
        t0 = time.perf_counter()
        result = engine.run(run_wf)
        t = time.perf_counter() - t0
        if not result.ok:
            raise SystemExit(f"the headless run failed: {result.errors}")
        return t

    gui_run(1)  # warm: models loaded, prompts encoded
    headless_run(1)
    gui_times, head_times, previews, all_gaps = [], [], [], []
    for i in range(args.runs):
        _, p, gaps = gui_run(1000 + i, tick=True)
        all_gaps += gaps
        if p is not None:
            previews.append(p)
    for i in range(args.runs):
        seed = 100 + i
        gui_times.append(gui_run(seed)[0])
        head_times.append(headless_run(seed))
    # The loop should wake every 5 ms: anything later is time it was blocked.
    late = [max(0.0, g - 0.005) * 1000 for g in all_gaps]
    gui_med, head_med = statistics.median(gui_times), statistics.median(head_times)

    # Mask painting over a 2048x2048 picture.
    from studio.app.mask_painter import MaskCanvas

    big = QImage(2048, 2048, QImage.Format.Format_RGB32)
    big.fill(0xFF808080)
    canvas = MaskCanvas(big)
    canvas.resize(1200, 900)
    canvas.show()
    app.processEvents()
    canvas.checkpoint()
    canvas.brush.size = 120
    stroke_times, paint_times = [], []
    canvas.stroke_to(QPointF(100, 100))
    for i in range(200):
        pt = QPointF(100 + i * 9, 100 + (i % 40) * 20)
        t0 = time.perf_counter()
        canvas.stroke_to(pt)
        t1 = time.perf_counter()
        canvas.repaint()  # the whole view: more than a stroke ever repaints
        paint_times.append(time.perf_counter() - t1)
        stroke_times.append(t1 - t0)

    out = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "image": f"{args.size}x{args.size}",
        "steps": args.steps,
        "runs": args.runs,
        "loop_lateness_ms": {
            "max": round(max(late), 1),
            "p99": round(percentile(late, 0.99), 1),
            "median": round(statistics.median(late), 2),
            "samples": len(late),
        },
        "run_to_first_preview_ms": round(statistics.median(previews) * 1000, 1)
        if previews
        else None,
        "gui_run_s": round(gui_med, 3),
        "headless_run_s": round(head_med, 3),
        "gui_overhead_pct": round((gui_med / head_med - 1) * 100, 1),
        "mask_stroke_ms": {
            "median": round(statistics.median(stroke_times) * 1000, 2),
            "max": round(max(stroke_times) * 1000, 2),
        },
        "mask_paint_ms": {
            "median": round(statistics.median(paint_times) * 1000, 2),
            "max": round(max(paint_times) * 1000, 2),
        },
    }
    w.shutdown_runs()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
