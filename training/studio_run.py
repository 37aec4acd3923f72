"""Drawing studio-tiny's captions through Studio's own nodes and engine.

The adherence tests and ``benchmarks/bench_tiny.py`` score what a user gets from the
default txt2img graph (Load Checkpoint -> Text Encode x2 -> Empty Latent -> Sampler ->
VAE Decode), not what the trainer's own sampling loop draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODEL = "studio-tiny"
#: The cfg of the default txt2img workflow on studio-tiny (resources/workflows/make_workflows.py
#: TXT2IMG_CFG): seeds vary the layout nearly as the training data does, adherence kept.
TXT2IMG_CFG = 2.0


def txt2img_workflow(
    prompt: str,
    *,
    model: str = MODEL,
    negative: str = "",
    seed: int = 0,
    steps: int = 20,
    cfg: float = 7.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    size: int = 64,
    batch_size: int = 1,
    guidance_start: float = 0.0,
) -> tuple[Any, dict[str, str]]:
    """A text-to-image workflow on ``model``; returns it and its node ids by role
    (``guidance_start``: studio.recipes.guide_from)."""
    from studio import recipes
    from studio.library import installed_registry

    return recipes.txt2img(
        installed_registry(),
        model,
        prompt,
        negative=negative,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler=sampler,
        scheduler=scheduler,
        width=size,
        height=size,
        batch_size=batch_size,
        guidance_start=guidance_start,
    )


def to_uint8(image: Any) -> list[np.ndarray]:
    """An IMAGE value (B x H x W x 3 floats in 0..1) as a list of H x W x 3 uint8 arrays."""
    arr = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image)
    return list((np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8))


@dataclass
class StudioTxt2Img:
    """``gen(caption, seed) -> H x W x 3 uint8``, one engine kept warm across calls (the
    checkpoint loads once; an unchanged prompt is served from the cache).
    ``gen.batch(caption, seed, n)`` draws ``n`` images in one run (one noise draw for the
    batch, as diffusers does). ``guidance_start``: no guidance for that first fraction of the
    sampling (studio.recipes.guide_from; studio-tiny-flow's default workflow has
    ``training.flow_models.DEFAULT_GUIDANCE_START``)."""

    model: str = MODEL
    steps: int = 20
    cfg: float = 7.0
    guidance_start: float = 0.0
    engine: Any = None
    runs: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.engine is None:
            from studio.engine import Engine
            from studio.library import installed_registry

            self.engine = Engine(installed_registry())

    def __call__(self, caption: str, seed: int) -> np.ndarray:
        return self.batch(caption, seed, 1)[0]

    def batch(self, caption: str, seed: int, n: int) -> list[np.ndarray]:
        wf, ids = txt2img_workflow(
            caption,
            model=self.model,
            seed=seed,
            steps=self.steps,
            cfg=self.cfg,
            batch_size=n,
            guidance_start=self.guidance_start,
        )
        result = self.engine.run(wf)
        if not result.ok:
            raise RuntimeError(f"the txt2img run failed: {result.errors}")
        self.runs += 1
        return to_uint8(result.outputs[ids["decode"]]["image"])


def held_out_adherence(
    gen: StudioTxt2Img, count: int = 60, seed: int = 0, per_caption: int = 3
) -> dict[str, float]:
    """Adherence (training.evaluate.adherence) over ``count`` held-out evaluation captions,
    ``per_caption`` images each (one batch per caption, seeded ``seed + index``)."""
    from training.data import eval_scenes
    from training.evaluate import adherence

    captions, images = [], []
    for i, scene in enumerate(eval_scenes(count)):
        drawn = gen.batch(scene.caption, seed + i, per_caption)
        captions += [scene.caption] * len(drawn)
        images += drawn
    return adherence(captions, images)
