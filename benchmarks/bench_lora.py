"""Switching a LoRA's strength between runs: no checkpoint reload. Prints JSON.

    python benchmarks/bench_lora.py

A tiny SD1-shaped model and a LoRA made here. Compares the re-run after a strength
change with a run in a fresh engine (which has to load the checkpoint again), and
counts model loads.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]


def main() -> None:
    import diffusion_fixtures as fx
    from test_lora import lora_graph, write_peft_lora

    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parts = fx.tiny_sd1()
        fx.save_folder(fx.sd1_pipeline(parts), root / "checkpoints" / "tiny-sd1")
        (root / "loras").mkdir()
        write_peft_lora(parts, root / "loras" / "style.safetensors", seed=1)
        settings = Settings(models_root=str(root), output_dir=str(root / "out"))

        def timed(engine, strength):
            wf, _ = lora_graph([("style.safetensors", strength, strength)])
            loads = engine.models.loads
            t = time.perf_counter()
            result = engine.run(wf)
            assert result.ok, result.errors
            return time.perf_counter() - t, engine.models.loads - loads, result

        engine = Engine(installed_registry(), settings=settings)
        first, first_loads, _ = timed(engine, 1.0)
        switches = [timed(engine, s) for s in (0.5, 0.8, 0.2)]
        fresh_times = [
            timed(Engine(installed_registry(), settings=settings), 0.5) for _ in range(3)
        ]
        report = {
            "model": "tiny SD1 (64x64, 4 steps), peft-layout LoRA",
            "first_run_s": round(first, 3),
            "first_run_model_loads": first_loads,
            "strength_switch_rerun_s": [round(s[0], 3) for s in switches],
            "strength_switch_model_loads": [s[1] for s in switches],
            "strength_switch_ran_nodes": [len(s[2].ran) for s in switches],
            "fresh_engine_run_with_reload_s": [round(s[0], 3) for s in fresh_times],
            "fresh_engine_model_loads": [s[1] for s in fresh_times],
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
