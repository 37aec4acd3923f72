"""Workflows built in code: small pure functions from a few settings to a graph.

What tests, training scripts and benchmarks run. The default workflows users open
(``resources/workflows/*.json``) are laid out for the canvas by
``resources/workflows/make_workflows.py``; the graphs are the same.
"""

from __future__ import annotations

from studio.graph.registry import Registry
from studio.graph.workflow import Workflow


def txt2img(
    registry: Registry,
    checkpoint: str,
    prompt: str,
    *,
    negative: str = "",
    seed: int = 0,
    steps: int = 20,
    cfg: float = 7.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    width: int = 64,
    height: int = 64,
    batch_size: int = 1,
    output: str = "preview_image",
) -> tuple[Workflow, dict[str, str]]:
    """Load Checkpoint -> Text Encode x2 -> Empty Latent -> Sampler -> VAE Decode -> ``output``.

    Returns the workflow and its node ids by role: ``ckpt``, ``pos``, ``neg``, ``latent``,
    ``sampler``, ``decode``, ``out``.
    """
    wf = Workflow(registry)
    ids = {
        "ckpt": wf.add_node("load_checkpoint", {"ckpt_name": checkpoint}).id,
        "pos": wf.add_node("text_encode", {"text": prompt}).id,
        "neg": wf.add_node("text_encode", {"text": negative}).id,
        "latent": wf.add_node(
            "empty_latent", {"width": width, "height": height, "batch_size": batch_size}
        ).id,
        "sampler": wf.add_node(
            "sampler",
            {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler": sampler,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        ).id,
        "decode": wf.add_node("vae_decode").id,
        "out": wf.add_node(output).id,
    }
    for source, out, target, into in (
        ("ckpt", "clip", "pos", "clip"),
        ("ckpt", "clip", "neg", "clip"),
        ("ckpt", "model", "sampler", "model"),
        ("pos", "conditioning", "sampler", "positive"),
        ("neg", "conditioning", "sampler", "negative"),
        ("latent", "latent", "sampler", "latent"),
        ("sampler", "latent", "decode", "latent"),
        ("ckpt", "vae", "decode", "vae"),
        ("decode", "image", "out", "images"),
    ):
        wf.connect(ids[source], out, ids[target], into)
    return wf, ids
