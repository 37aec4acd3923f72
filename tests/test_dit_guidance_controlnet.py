"""Perp-Neg, CFG-Zero* and Skip Layer Guidance with a ControlNet on SD3 and Flux (the tiny
transformers and ControlNets of tests/dit_fixtures.py).

ComfyUI predicts each conditioning with the ControlNets applied on it: the positive and
negative of the guided call, Perp-Neg's empty prompt, Skip Layer Guidance's skipped positive.
So: Perp-Neg at neg_scale 0 is plain cfg against the empty prompt with that prompt's own
ControlNet; each CFG-Zero* step is ComfyUI's formula on the controlled predictions; and the
skipped prediction of Skip Layer Guidance carries the positive prompt's ControlNet residuals,
each step moving by guided + scale x (positive - skipped)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import dit_fixtures as fx  # noqa: E402
from test_cfg_zero_star import comfy_zero_star  # noqa: E402

from nodes import dit  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.graph import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

PROMPT, NEGATIVE = "a red fox in the snow", "blurry"
STEPS, CFG = 3, 4.0
CONTROLNETS = {"tiny-sd3": "sd3-cn", "tiny-flux": "flux-cn"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("guided-cn-models")
    sd3, flux = fx.tiny_sd3(), fx.tiny_flux(guidance=False)
    fx.sd3_pipeline(sd3).save_pretrained(str(root / "checkpoints" / "tiny-sd3"))
    fx.flux_pipeline(flux).save_pretrained(str(root / "checkpoints" / "tiny-flux"))
    fx.sd3_controlnet(sd3["transformer"]).save_pretrained(root / "controlnet" / "sd3-cn")
    fx.flux_controlnet(flux["transformer"], 5).save_pretrained(root / "controlnet" / "flux-cn")
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, 8:28] = 255
    Image.fromarray(arr).save(root / "edges.png")
    tmp = tmp_path_factory.mktemp("guided-cn-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def fresh(engine) -> Engine:
    return Engine(installed_registry(), settings=engine.settings)


def graph(engine, ckpt: str, negative: str, patches=(), empty_control: bool = True):
    """txt2img with Apply ControlNet on both prompts; ``patches``: (node type, params) on the
    model, where ``perp_neg`` gets an empty prompt (with its own Apply ControlNet when
    ``empty_control``)."""
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": ckpt}).id
    load = add("load_controlnet", {"control_net_name": CONTROLNETS[ckpt]}).id
    image = add("load_image", {"image": str(engine.settings.models_root + "/edges.png")}).id

    def controlled(pos: tuple, neg: tuple) -> str:
        apply = add("apply_controlnet", {"strength": 0.9}).id
        for src, dst in ((pos, "positive"), (neg, "negative"), ((load, "control_net"), None)):
            c(*src, apply, dst or "control_net")
        c(image, "image", apply, "image")
        c(ck, "vae", apply, "vae")
        return apply

    def text(words: str) -> tuple:
        node = add("text_encode", {"text": words}).id
        c(ck, "clip", node, "clip")
        return (node, "conditioning")

    apply = controlled(text(PROMPT), text(negative))
    source = (ck, "model")
    for kind, params in patches:
        node = add(kind, params).id
        c(*source, node, "model")
        source = (node, "model")
        if kind == "perp_neg":
            empty = text("")
            if empty_control:
                empty = (controlled(empty, empty), "positive")
            c(*empty, node, "empty_conditioning")
    lat = add("empty_latent", {"width": 64, "height": 64}).id
    s = add("sampler", {"seed": 3, "steps": STEPS, "cfg": CFG, "sampler": "euler"}).id
    dec = add("vae_decode").id
    c(*source, s, "model")
    c(apply, "positive", s, "positive")
    c(apply, "negative", s, "negative")
    c(lat, "latent", s, "latent")
    c(s, "latent", dec, "latent")
    c(ck, "vae", dec, "vae")
    return wf, s, dec


def picture(engine, *args, **kw) -> np.ndarray:
    wf, _, dec = graph(engine, *args, **kw)
    result = fresh(engine).run(wf, targets=[dec])
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


@pytest.mark.parametrize("ckpt", ["tiny-sd3", "tiny-flux"])
def test_perp_neg_at_neg_scale_0_is_cfg_against_the_controlled_empty_prompt(engine, ckpt):
    want = picture(engine, ckpt, "")
    got = picture(engine, ckpt, NEGATIVE, [("perp_neg", {"neg_scale": 0.0})])
    assert np.abs(got - want).max() <= 1 / 255
    # the empty prompt's own ControlNet is what it is predicted with: without one, another
    # picture
    bare = picture(engine, ckpt, NEGATIVE, [("perp_neg", {"neg_scale": 0.0})], False)
    assert np.abs(bare - want).max() > 2 / 255
    scaled = picture(engine, ckpt, NEGATIVE, [("perp_neg", {"neg_scale": 2.0})])
    assert np.abs(scaled - got).max() > 1e-3


def test_cfg_zero_star_with_a_flux_controlnet_follows_comfyuis_formula(engine):
    with fx.flux_calls() as calls:
        wf, s, _ = graph(engine, "tiny-flux", NEGATIVE, [("cfg_zero_star", {})])
        result = fresh(engine).run(wf, targets=[s])
    assert result.ok, result.errors
    assert len(calls) == STEPS  # no extra transformer call
    final = dit.pack(result.outputs[s]["latent"]["samples"])
    xs = [c[1] for c in calls] + [final]
    sigmas = [float(c[2]) / 1000 for c in calls] + [0.0]
    for i, (net, x, t, inputs, _, _) in enumerate(calls):
        assert inputs["pos"]["controlnet_block_samples"] is not None
        with torch.no_grad():
            v_c = dit._flux_call(net, x, t, inputs, 1.0, False)
            v_u = dit._flux_call(net, x, t, {"pos": inputs["neg"]}, 1.0, False)
        s_ = sigmas[i]
        want_d = comfy_zero_star(x, x - s_ * v_c, x - s_ * v_u, CFG)
        v = (xs[i + 1] - x) / (sigmas[i + 1] - s_)  # the Euler step's prediction
        assert torch.allclose(x - s_ * v, want_d, atol=2e-4), f"step {i}"


SLG = {
    "double_layers": "0",
    "single_layers": "",
    "scale": 2.0,
    "start_percent": 0.0,
    "end_percent": 1.0,
    "rescaling_scale": 0.0,
}


@pytest.mark.parametrize("ckpt", ["tiny-sd3", "tiny-flux"])
def test_skip_layer_guidance_skips_on_the_controlled_positive_prediction(engine, ckpt):
    flux = ckpt == "tiny-flux"
    with fx.flux_calls() if flux else fx.sd3_calls() as calls:
        wf, s, _ = graph(engine, ckpt, NEGATIVE, [("skip_layer_guidance", SLG)])
        result = fresh(engine).run(wf, targets=[s])
    assert result.ok, result.errors
    # per step: the guided call (which gives the positive prediction too), the skipped one
    assert [c[4] for c in calls] == [True, False] * STEPS
    final = result.outputs[s]["latent"]["samples"]
    xs = [calls[2 * i][1] for i in range(STEPS)] + [dit.pack(final) if flux else final]
    sigmas = [float(calls[2 * i][2]) / 1000 for i in range(STEPS)] + [0.0]
    for i in range(STEPS):
        (net, x, t, inputs, _, guided), (_, x2, _, skip_inputs, _, skipped) = calls[2 * i :][:2]
        assert torch.equal(x2, x)
        with torch.no_grad():
            if flux:
                # the skipped call has the positive side's ControlNet residuals
                for key in ("controlnet_block_samples", "controlnet_single_block_samples"):
                    for a, b in zip(skip_inputs["pos"][key], inputs["pos"][key], strict=True):
                        assert torch.allclose(a, b, atol=1e-5)
                cond = dit._flux_call(net, x, t, inputs, 1.0, False)
            else:
                # the guided call's residuals are [negative, positive]; the skipped call's
                # are the positive's
                for a, b in zip(
                    skip_inputs["block_controlnet_hidden_states"],
                    inputs["block_controlnet_hidden_states"],
                    strict=True,
                ):
                    assert torch.allclose(a, b.chunk(2)[1], atol=1e-5)
                cond = dit._sd3_call(net, x, t, skip_inputs, 1.0, False)
        assert not torch.allclose(skipped, cond, atol=1e-3)
        v = (xs[i + 1] - x) / (sigmas[i + 1] - sigmas[i])  # the Euler step's prediction
        assert torch.allclose(v, guided + SLG["scale"] * (cond - skipped), atol=1e-4)
