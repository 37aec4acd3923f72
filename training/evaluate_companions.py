"""studio-tiny's companion models measured through Studio's own nodes and engine. Prints JSON.

    python -m training.evaluate_companions [--threads 1] [--captions 6] [--per-caption 4]

- ``upscaler``: held-out scenes rendered at 64x64, loaded with Load Image, upscaled by
  Upscale Image with ``studio-tiny-x4`` and by Scale Image (bicubic, x4); each compared with
  the scene drawn at 256x256: PSNR and mean absolute error of both, and how often the model
  is the closer of the two.
- ``controlnet``: captions without a position word (held-out combinations), the control
  image a picture of that shape on the right (or on the left) through the Canny Edges node
  into Apply ControlNet with ``studio-tiny-canny``; the fraction of images whose shape's
  centroid lands on that side (``training.evaluate.position_ok``), with and without the
  ControlNet, and how often the colour still follows the caption.
- ``lora``: held-out captions of large shapes through Load LoRA with
  ``studio-tiny-outline`` at strength 1 and at 0: the mean fraction of the shape's bounding
  box its pixels fill, how often the shape's middle shows the background (hollow), how often
  the fill drops for the same caption and seed, and how often colour and background still
  follow the caption at strength 1.

The tests in ``tests/test_tiny_companions.py`` assert on these same measurements.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import data
from training.studio_run import to_uint8, txt2img_workflow

BASE = "studio-tiny"
UPSCALER = "studio-tiny-x4.safetensors"
CONTROLNET = "studio-tiny-canny"
LORA = "studio-tiny-outline.safetensors"
SIDES = ("right", "left")


def save_png(array: np.ndarray, path: Path) -> str:
    from PIL import Image

    Image.fromarray(array).save(path)
    return str(path)


def _run(engine: Any, wf: Any, targets: list[str] | None = None) -> Any:
    result = engine.run(wf, targets=targets)
    if not result.ok:
        raise RuntimeError(f"the run failed: {result.errors}")
    return result


# ----------------------------------------------------------------------------- upscaler


def upscale_scenes(n: int, seed: int = 7) -> list[data.Scene]:
    """``n`` held-out scenes (combinations never drawn in training)."""
    return data.sample_scenes(np.random.default_rng(seed), n, "heldout")


def _psnr_mae(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    d = pred.astype(np.float64) - target.astype(np.float64)
    mse = float((d**2).mean())
    return 10 * math.log10(255.0**2 / max(mse, 1e-10)), float(np.abs(d).mean())


def measure_upscaler(engine: Any, scenes: Sequence[data.Scene], workdir: Path) -> dict[str, Any]:
    """One workflow: per scene Load Image -> Upscale Image (the model) and -> Scale Image
    (bicubic x4); the outputs compared with ``data.render_highres``."""
    from studio.graph.workflow import Workflow
    from studio.library import installed_registry

    wf = Workflow(installed_registry())
    model = wf.add_node("load_upscale_model", {"model_name": UPSCALER}).id
    branches = []
    for i, scene in enumerate(scenes):
        png = save_png(data.render(scene), workdir / f"scene{i}.png")
        load = wf.add_node("load_image", {"image": png}).id
        up = wf.add_node("upscale_image", {"tile_size": 512, "overlap": 32}).id
        wf.connect(model, "upscale_model", up, "upscale_model")
        wf.connect(load, "image", up, "image")
        bic = wf.add_node("scale_image", {"mode": "factor", "factor": 4.0, "method": "bicubic"}).id
        wf.connect(load, "image", bic, "image")
        branches.append((up, bic))
    result = _run(engine, wf, targets=[n for b in branches for n in b])
    rows = []
    for scene, (up, bic) in zip(scenes, branches, strict=True):
        truth = data.render_highres(scene)
        got = to_uint8(result.outputs[up]["image"])[0]
        base = to_uint8(result.outputs[bic]["image"])[0]
        size_ok = got.shape == truth.shape and got.shape[:2] == (256, 256)
        m_psnr, m_mae = _psnr_mae(got, truth) if size_ok else (0.0, 255.0)
        b_psnr, b_mae = _psnr_mae(base, truth)
        rows.append((size_ok, m_psnr, m_mae, b_psnr, b_mae))
    r = np.array(rows, dtype=np.float64)
    return {
        "n": len(rows),
        "size_x4": float(r[:, 0].mean()),
        "psnr": float(r[:, 1].mean()),
        "bicubic_psnr": float(r[:, 3].mean()),
        "mae": float(r[:, 2].mean()),
        "bicubic_mae": float(r[:, 4].mean()),
        "closer_psnr": float((r[:, 1] > r[:, 3]).mean()),
        "closer_mae": float((r[:, 2] < r[:, 4]).mean()),
    }


# ----------------------------------------------------------------------------- shared graph


def txt2img(
    prompt: str, seed: int, batch: int, steps: int = 20, cfg: float = 7.0
) -> tuple[Any, dict[str, str]]:
    """The default txt2img graph on studio-tiny (64x64, euler), ``batch`` images."""
    return txt2img_workflow(prompt, model=BASE, seed=seed, steps=steps, cfg=cfg, batch_size=batch)


# ----------------------------------------------------------------------------- ControlNet


def control_cases(n: int, seed: int = 11) -> list[tuple[str, data.Scene, str]]:
    """Per held-out combination (``n`` of them) and side: the caption without a position
    word, the scene with the shape on that side (the control picture), and the side."""
    rng = np.random.default_rng(seed)
    combos = sorted(data.heldout_combos())
    out = []
    for i in range(n):
        combo = combos[(i * 7 + 3) % len(combos)]
        size = data.SIZES[i % 2]
        for side in SIDES:
            scene = data.sample_scene(rng, combo, size_word=size, position=side)
            caption = data.make_caption(scene.shape, scene.color, scene.background, size, None)
            out.append((caption, scene, side))
    return out


def controlnet_images(
    engine: Any,
    caption: str,
    control_png: str | None,
    seed: int,
    batch: int,
    strength: float = 1.0,
) -> list[np.ndarray]:
    """txt2img, with Load Image -> Canny Edges -> Apply ControlNet when ``control_png``."""
    wf, ids = txt2img(caption, seed, batch)
    if control_png is not None:
        net = wf.add_node("load_controlnet", {"control_net_name": CONTROLNET}).id
        picture = wf.add_node("load_image", {"image": control_png}).id
        edges = wf.add_node(
            "canny", {"low_threshold": 100, "high_threshold": 200, "resolution": 64}
        ).id
        apply = wf.add_node(
            "apply_controlnet", {"strength": strength, "start_percent": 0.0, "end_percent": 1.0}
        ).id
        wf.connect(picture, "image", edges, "image")
        wf.connect(ids["pos"], "conditioning", apply, "positive")
        wf.connect(ids["neg"], "conditioning", apply, "negative")
        wf.connect(net, "control_net", apply, "control_net")
        wf.connect(edges, "image", apply, "image")
        wf.connect(apply, "positive", ids["sampler"], "positive")
        wf.connect(apply, "negative", ids["sampler"], "negative")
    result = _run(engine, wf, targets=[ids["decode"]])
    return to_uint8(result.outputs[ids["decode"]]["image"])


def measure_controlnet(
    engine: Any, captions: int, per_caption: int, workdir: Path, seed: int = 0
) -> dict[str, Any]:
    from training.evaluate import analyze, position_ok, score

    hits: dict[str, dict[str, list[bool]]] = {
        k: {s: [] for s in SIDES} for k in ("with", "without")
    }
    color: list[bool] = []
    for i, (caption, scene, side) in enumerate(control_cases(captions)):
        png = save_png(data.render(scene), workdir / f"control{i}.png")
        for key, control in (("with", png), ("without", None)):
            for img in controlnet_images(engine, caption, control, seed + i // 2, per_caption):
                a = analyze(img)
                hits[key][side].append(a.color is not None and position_ok(side, a.cx, a.cy))
                if key == "with":
                    color.append(score(caption, img)["color"])
    out: dict[str, Any] = {"n_per_side": len(hits["with"]["right"])}
    for key in ("with", "without"):
        for side in SIDES:
            out[f"{side}_{key}"] = float(np.mean(hits[key][side]))
    out["color_with"] = float(np.mean(color))
    return out


# ----------------------------------------------------------------------------- LoRA


def lora_images(
    engine: Any, caption: str, seed: int, batch: int, strength: float
) -> list[np.ndarray]:
    """txt2img through Load LoRA (model and clip strength ``strength``)."""
    wf, ids = txt2img(caption, seed, batch)
    lora = wf.add_node(
        "load_lora", {"lora_name": LORA, "strength_model": strength, "strength_clip": strength}
    ).id
    wf.connect(ids["ckpt"], "model", lora, "model")
    wf.connect(ids["ckpt"], "clip", lora, "clip")
    wf.connect(lora, "model", ids["sampler"], "model")
    wf.connect(lora, "clip", ids["pos"], "clip")
    wf.connect(lora, "clip", ids["neg"], "clip")
    result = _run(engine, wf, targets=[ids["decode"]])
    return to_uint8(result.outputs[ids["decode"]]["image"])


def lora_captions(n: int) -> list[str]:
    """``n`` held-out combinations, large (a small shape's outline is mostly lost in the
    base VAE's 16x16 latents) and without a position word."""
    combos = sorted(data.heldout_combos())
    return [
        data.make_caption(shape, color, bg, "large")
        for color, shape, bg in (combos[(i * 7 + 5) % len(combos)] for i in range(n))
    ]


def measure_lora(engine: Any, captions: int, per_caption: int, seed: int = 0) -> dict[str, Any]:
    from training.evaluate import analyze, score
    from training.train_lora import hollow

    fills: dict[float, list[float]] = {0.0: [], 1.0: []}
    hol: dict[float, list[bool]] = {0.0: [], 1.0: []}
    color: list[bool] = []
    background: list[bool] = []
    for i, caption in enumerate(lora_captions(captions)):
        for strength in (0.0, 1.0):
            for img in lora_images(engine, caption, seed + i, per_caption, strength):
                a = analyze(img)
                fills[strength].append(a.fill if a.color is not None else 0.0)
                hol[strength].append(bool(hollow(img)))
                if strength == 1.0:
                    s = score(caption, img)
                    color.append(s["color"])
                    background.append(s["background"])
    f0, f1 = np.array(fills[0.0]), np.array(fills[1.0])
    return {
        "n": len(f0),
        "fill_strength_0": float(f0.mean()),
        "fill_strength_1": float(f1.mean()),
        "fill_dropped": float((f1 < f0).mean()),
        "hollow_strength_0": float(np.mean(hol[0.0])),
        "hollow_strength_1": float(np.mean(hol[1.0])),
        "color_strength_1": float(np.mean(color)),
        "background_strength_1": float(np.mean(background)),
    }


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    """Print the measured rates of the three companion models as JSON."""
    import argparse
    import json
    import os
    import time

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from studio.engine import Engine
    from studio.library import installed_registry

    ap = argparse.ArgumentParser(prog="python -m training.evaluate_companions", description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scenes", type=int, default=16, help="upscaler: held-out scenes")
    ap.add_argument("--captions", type=int, default=8, help="ControlNet and LoRA: captions")
    ap.add_argument("--per-caption", type=int, default=4, help="images per caption (one batch)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    engine = Engine(installed_registry())
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, fn in (
            ("upscaler", lambda: measure_upscaler(engine, upscale_scenes(args.scenes), work)),
            (
                "controlnet",
                lambda: measure_controlnet(engine, args.captions, args.per_caption, work),
            ),
            ("lora", lambda: measure_lora(engine, args.captions, args.per_caption)),
        ):
            t = time.perf_counter()
            out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in fn().items()}
            out[name]["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
