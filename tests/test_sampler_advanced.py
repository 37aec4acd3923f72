"""Sampler (Advanced): steps start..end, add_noise, leftover noise (ComfyUI's
KSamplerAdvanced), on the tiny SD1 model (CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    fx.save_folder(fx.sd1_pipeline(fx.tiny_sd1()), root / "checkpoints" / "tiny-sd1")
    return root


@pytest.fixture
def engine(models_root, tmp_path):
    settings = Settings(models_root=str(models_root), output_dir=str(tmp_path / "out"))
    yield Engine(installed_registry(), settings=settings)


def advanced(wf, ids, latent_from, **params):
    """A Sampler (Advanced) on the txt2img workflow's model and prompts."""
    base = {"seed": 11, "steps": STEPS, "cfg": 5.0, "sampler": "euler", "scheduler": "normal"}
    node = wf.add_node("sampler_advanced", base | params).id
    wf.connect(ids["ckpt"], "model", node, "model")
    wf.connect(ids["pos"], "conditioning", node, "positive")
    wf.connect(ids["neg"], "conditioning", node, "negative")
    wf.connect(*latent_from, node, "latent")
    return node


def run(engine, wf, node):
    result = engine.run(wf, targets=[node])
    assert result.ok, result.errors
    return result.outputs[node]["latent"]["samples"]


def txt2img(sampler="euler"):
    return fx.txt2img("tiny-sd1", steps=STEPS, cfg=5.0, seed=11, sampler=sampler)


def test_defaults_equal_the_sampler_exactly(engine):
    wf, ids = txt2img()
    node = advanced(wf, ids, (ids["latent"], "latent"))
    assert torch.equal(run(engine, wf, node), run(engine, wf, ids["sampler"]))


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_two_passes_with_leftover_noise_equal_one_pass(engine, sampler):
    """The SDXL base/refiner split: steps 0..3 keeping the leftover noise, then 3..end
    without adding noise, gives the image of all steps in one pass. (Not so for multistep
    samplers such as lms or dpmpp_2m: the second pass starts without the first's history,
    as in ComfyUI.)"""
    wf, ids = txt2img(sampler)
    first = advanced(
        wf,
        ids,
        (ids["latent"], "latent"),
        sampler=sampler,
        end_at_step=3,
        return_with_leftover_noise=True,
    )
    second = advanced(
        wf, ids, (first, "latent"), sampler=sampler, start_at_step=3, add_noise=False, seed=99
    )
    one_pass = run(engine, wf, ids["sampler"])
    two_passes = run(engine, wf, second)
    assert torch.allclose(two_passes, one_pass, atol=1e-4, rtol=1e-4)
    assert (run(engine, wf, first) - one_pass).abs().max() > 0.1  # the first pass alone is not


def test_adding_noise_again_in_the_second_pass_changes_the_image(engine):
    wf, ids = txt2img()
    first = advanced(
        wf, ids, (ids["latent"], "latent"), end_at_step=3, return_with_leftover_noise=True
    )
    second = advanced(wf, ids, (first, "latent"), start_at_step=3, add_noise=True)
    assert (run(engine, wf, second) - run(engine, wf, ids["sampler"])).abs().max() > 1e-2


def test_stopping_early_without_leftover_noise_finishes_to_noise_level_zero(engine):
    """ComfyUI's end_at_step without leftover noise: the last step goes to noise level 0. For
    euler that is x0 = x1 - sigma1 * eps, with eps read off the step x1 -> x2 the run with
    leftover noise takes (x2 = x1 + (sigma2 - sigma1) * eps)."""
    from nodes.denoise import make_scheduler

    wf, ids = txt2img()
    x1 = advanced(
        wf, ids, (ids["latent"], "latent"), end_at_step=1, return_with_leftover_noise=True
    )
    x2 = advanced(
        wf, ids, (ids["latent"], "latent"), end_at_step=2, return_with_leftover_noise=True
    )
    clean = advanced(wf, ids, (ids["latent"], "latent"), end_at_step=2)
    x1, x2, clean = run(engine, wf, x1), run(engine, wf, x2), run(engine, wf, clean)
    sched = make_scheduler(fx.SCHEDULER_CONFIG, "euler", "normal")
    sched.set_timesteps(STEPS)
    s1, s2 = float(sched.sigmas[1]), float(sched.sigmas[2])
    eps = (x2 - x1) / (s2 - s1)
    assert torch.allclose(clean, x1 - s1 * eps, atol=1e-3, rtol=1e-3)
    assert (clean - x2).abs().max() > 0.1


def test_no_steps_left_returns_the_latent_unchanged(engine):
    wf, ids = txt2img()
    node = advanced(wf, ids, (ids["sampler"], "latent"), start_at_step=STEPS)
    assert torch.equal(run(engine, wf, node), run(engine, wf, ids["sampler"]))
    node = advanced(wf, ids, (ids["sampler"], "latent"), start_at_step=3, end_at_step=2)
    assert torch.equal(run(engine, wf, node), run(engine, wf, ids["sampler"]))


def test_a_sampler_without_a_clean_prediction_cannot_stop_early_clean(engine):
    wf, ids = txt2img()
    node = advanced(wf, ids, (ids["latent"], "latent"), sampler="dpmpp_2m", end_at_step=2)
    result = engine.run(wf, targets=[node])
    assert not result.ok
    assert "return_with_leftover_noise" in result.errors[node]
    wf.set_param(node, "return_with_leftover_noise", True)
    assert engine.run(wf, targets=[node]).ok


def test_leftover_noise_outside_a_noise_mask_is_at_the_stop_steps_level(engine, tmp_path):
    """With a noise mask, the part kept from the input must carry the same leftover noise as
    the part denoised (noise at the level of the step the pass stops at), not be clean."""
    import numpy as np
    from PIL import Image

    from nodes.denoise import make_scheduler

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, 32:, 3] = 255  # the mask (transparent = 1) is the left half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "left.png")
    wf, ids = txt2img()
    mask = wf.add_node("load_image", {"image": str(tmp_path / "left.png")}).id
    masked = wf.add_node("set_latent_noise_mask").id
    wf.connect(ids["latent"], "latent", masked, "latent")
    wf.connect(mask, "mask", masked, "mask")
    out = {
        end: run(
            engine,
            wf,
            advanced(wf, ids, (masked, "latent"), end_at_step=end, return_with_leftover_noise=True),
        )
        for end in (2, 3)
    }
    sched = make_scheduler(fx.SCHEDULER_CONFIG, "euler", "normal")
    sched.set_timesteps(STEPS)
    kept2, kept3 = out[2][..., 4:], out[3][..., 4:]  # the right half: the (empty) input
    assert kept3.abs().max() > 0.1
    ratio = float(sched.sigmas[2] / sched.sigmas[3])
    assert torch.allclose(kept2, kept3 * ratio, atol=1e-4, rtol=1e-4)
