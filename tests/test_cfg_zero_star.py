"""CFG-Zero* (ComfyUI's CFGZeroStar): after guidance, the result moved as if the negative
prediction had been scaled by its optimal factor <positive, negative> / |negative|^2 (of
the predictions' noise parts, per image).

Checked against ComfyUI's post-cfg formula written out here on clean-latent predictions:
on an SD model's eps and v outputs at a step, and on the tiny Flux transformer, step by step
through the Sampler (every transformer call recorded)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import dit_fixtures as fx  # noqa: E402

from nodes import dit, ksampling  # noqa: E402
from nodes.denoise import CfgGuidance  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.graph import Workflow  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402


def comfy_optimized_scale(positive, negative):
    positive_flat = positive.reshape(positive.shape[0], -1)
    negative_flat = negative.reshape(negative.shape[0], -1)
    dot_product = torch.sum(positive_flat * negative_flat, dim=1, keepdim=True)
    squared_norm = torch.sum(negative_flat**2, dim=1, keepdim=True) + 1e-8
    st_star = dot_product / squared_norm
    return st_star.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


def comfy_zero_star(x, cond_p, uncond_p, cfg):
    """ComfyUI's post-cfg function on the denoised predictions at k-diffusion's input x."""
    out = uncond_p + cfg * (cond_p - uncond_p)
    alpha = comfy_optimized_scale(x - cond_p, x - uncond_p)
    return out + uncond_p * (alpha - 1.0) + cfg * uncond_p * (1.0 - alpha)


@pytest.mark.parametrize("v_prediction", [False, True])
def test_on_an_sd_model_it_is_comfyuis_formula_on_the_denoised_predictions(v_prediction):
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    ms = ksampling.ModelSampling({**config, "num_train_timesteps": 1000})
    sigma, cfg = 2.5, 6.0
    sched = ksampling.KSchedule(ms, "euler", torch.tensor([sigma, 0.0]), seed=0)
    gen = torch.Generator().manual_seed(3)
    x_orig = torch.randn(2, 4, 8, 8, generator=gen) * 2.7  # k-diffusion's x at sigma 2.5
    out_u, out_c = torch.randn(2, 2, 4, 8, 8, generator=gen)
    guide = CfgGuidance(None, True, v_prediction, sched, None)
    got = guide(out_u, out_c, cfg, x_orig, torch.tensor(0), 0)

    def denoised(out):  # ComfyUI's EPS / V_PREDICTION calculate_denoised
        if v_prediction:
            return x_orig / (sigma**2 + 1) - out * sigma / (sigma**2 + 1) ** 0.5
        return x_orig - out * sigma

    want_d = comfy_zero_star(x_orig, denoised(out_c), denoised(out_u), cfg)
    assert torch.allclose(denoised(got), want_d, atol=1e-4)
    # and it is not plain cfg
    assert not torch.allclose(got, out_u + cfg * (out_c - out_u), atol=1e-3)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero-star-models")
    fx.flux_pipeline(fx.tiny_flux(guidance=False)).save_pretrained(
        str(root / "checkpoints" / "tiny-flux")
    )
    tmp = tmp_path_factory.mktemp("zero-star-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def flux_graph(patches: list[tuple[str, dict]], cfg: float = 4.0, steps: int = 3):
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": "tiny-flux"}).id
    source = (ck, "model")
    for kind, params in patches:
        node = add(kind, params).id
        c(*source, node, "model")
        source = (node, "model")
    pos = add("text_encode", {"text": "a red fox"}).id
    neg = add("text_encode", {"text": "blurry"}).id
    lat = add("empty_latent", {"width": 64, "height": 64}).id
    s = add("sampler", {"seed": 3, "steps": steps, "cfg": cfg, "sampler": "euler"}).id
    for side in (pos, neg):
        c(ck, "clip", side, "clip")
    c(*source, s, "model")
    c(pos, "conditioning", s, "positive")
    c(neg, "conditioning", s, "negative")
    c(lat, "latent", s, "latent")
    return wf, s


def test_on_flux_each_step_follows_comfyuis_formula(engine):
    steps, cfg = 3, 4.0
    with fx.flux_calls() as calls:
        wf, s = flux_graph([("cfg_zero_star", {})], cfg, steps)
        result = Engine(installed_registry(), settings=engine.settings).run(wf, targets=[s])
    assert result.ok, result.errors
    assert len(calls) == steps  # no extra transformer call
    final = dit.pack(result.outputs[s]["latent"]["samples"])
    xs = [c[1] for c in calls] + [final]
    sigmas = [float(c[2]) / 1000 for c in calls] + [0.0]
    for i, (net, x, t, inputs, _, _) in enumerate(calls):
        with torch.no_grad():
            v_c = dit._flux_call(net, x, t, inputs, 1.0, False)
            v_u = dit._flux_call(net, x, t, {"pos": inputs["neg"]}, 1.0, False)
        s_ = sigmas[i]
        want_d = comfy_zero_star(x, x - s_ * v_c, x - s_ * v_u, cfg)
        v = (xs[i + 1] - x) / (sigmas[i + 1] - s_)  # the Euler step's prediction
        assert torch.allclose(x - s_ * v, want_d, atol=2e-4), f"step {i}"


def test_zero_star_and_skip_layer_guidance_together_add_one_call_a_step(engine):
    slg = {"double_layers": "0", "single_layers": "", "start_percent": 0.0, "end_percent": 1.0}
    with fx.flux_calls() as calls:
        wf, s = flux_graph([("cfg_zero_star", {}), ("skip_layer_guidance", slg)])
        result = Engine(installed_registry(), settings=engine.settings).run(wf, targets=[s])
    assert result.ok, result.errors
    assert len(calls) == 2 * 3  # the guided call and the skipped one


def test_the_picture_changes_and_comfyuis_node_maps(engine):
    eng = Engine(installed_registry(), settings=engine.settings)
    plain_wf, s1 = flux_graph([])
    star_wf, s2 = flux_graph([("cfg_zero_star", {})])
    plain = eng.run(plain_wf, targets=[s1]).outputs[s1]["latent"]["samples"]
    star = eng.run(star_wf, targets=[s2]).outputs[s2]["latent"]["samples"]
    assert float((plain - star).abs().max()) > 1e-3
    api = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CFGZeroStar", "inputs": {"model": ["1", 0]}},
    }  # fmt: skip
    wf = import_comfyui(api, installed_registry(), source="zero.json").workflow
    assert wf.get_node("2").type == "cfg_zero_star"
    assert export_comfyui_api(wf)["2"]["class_type"] == "CFGZeroStar"
    assert np.isfinite(star.numpy()).all()
