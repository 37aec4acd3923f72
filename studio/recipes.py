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
    guidance_start: float = 0.0,
) -> tuple[Workflow, dict[str, str]]:
    """Load Checkpoint -> Text Encode x2 -> Empty Latent -> Sampler -> VAE Decode -> ``output``.

    ``guidance_start`` > 0: no guidance for that first fraction of the sampling (the
    guidance interval, see :func:`guide_from`), so that seeds vary the layout more.

    Returns the workflow and its node ids by role: ``ckpt``, ``pos``, ``neg``, ``latent``,
    ``sampler``, ``decode``, ``out`` (and ``late_neg``, ``early_pos``, ``guided_neg`` with a
    guidance interval).
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
    if guidance_start > 0:
        ids |= guide_from(wf, ids["pos"], ids["neg"], ids["sampler"], guidance_start)
    return wf, ids


def guide_from(wf: Workflow, pos: str, neg: str, sampler: str, start: float) -> dict[str, str]:
    """Guidance only after the first ``start`` fraction of the sampling (the "guidance
    interval" of Kynkaanniemi et al. 2024): the Sampler's negative becomes a Conditioning
    Combine of the negative prompt from ``start`` on and the positive prompt before it
    (both through Conditioning Set Timestep Range). While the negative is the positive
    prompt, cfg changes nothing, so the early, noisiest steps, which decide where the shape
    goes and how big it is, follow the model's own spread instead of guidance's narrower one.
    Returns the three new nodes' ids by role: ``late_neg``, ``early_pos``, ``guided_neg``."""
    ids = {
        "late_neg": wf.add_node("conditioning_set_timestep_range", {"start": start, "end": 1.0}).id,
        "early_pos": wf.add_node(
            "conditioning_set_timestep_range", {"start": 0.0, "end": start}
        ).id,
        "guided_neg": wf.add_node("conditioning_combine").id,
    }
    wf.connect(neg, "conditioning", ids["late_neg"], "conditioning")
    wf.connect(pos, "conditioning", ids["early_pos"], "conditioning")
    wf.connect(ids["late_neg"], "conditioning", ids["guided_neg"], "conditioning_1")
    wf.connect(ids["early_pos"], "conditioning", ids["guided_neg"], "conditioning_2")
    wf.connect(ids["guided_neg"], "conditioning", sampler, "negative")
    return ids
