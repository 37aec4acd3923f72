"""Perp-Neg (ComfyUI's PerpNeg): guidance from the empty prompt's prediction; of the negative
direction only its part perpendicular to the positive one is taken away.

Its formula against ComfyUI's written out; and what a user can check on a picture: with
neg_scale 0 it is plain cfg with the empty prompt as the negative, whatever the negative
prompt says, on the UNets' two sampling paths and on SD3 and Flux; a negative scale
changes the picture."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as dfx  # noqa: E402
import dit_fixtures as fx  # noqa: E402

from nodes.denoise import perp_neg  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.graph import Workflow  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

engine, models_root, tiny_parts = dfx.engine, dfx.models_root, dfx.tiny_parts


def comfy_perp_neg(x, noise_pred_pos, noise_pred_neg, noise_pred_nocond, neg_scale, cond_scale):
    pos = noise_pred_pos - noise_pred_nocond
    neg = noise_pred_neg - noise_pred_nocond
    perp = neg - ((torch.mul(neg, pos).sum()) / (torch.norm(pos) ** 2)) * pos
    perp_neg = perp * neg_scale
    return noise_pred_nocond + cond_scale * (pos - perp_neg)


def test_the_formula_is_comfyuis_and_keeps_the_positive_direction():
    gen = torch.Generator().manual_seed(1)
    pos, neg, empty = torch.randn(3, 2, 4, 8, 8, generator=gen)
    got = perp_neg(pos, neg, empty, 5.0, 1.5)
    assert torch.allclose(got, comfy_perp_neg(None, pos, neg, empty, 1.5, 5.0), atol=1e-6)
    # a negative along the positive direction is not taken away at all
    along = empty + 0.3 * (pos - empty)
    assert torch.allclose(
        perp_neg(pos, along, empty, 5.0, 1.0), empty + 5.0 * (pos - empty), atol=1e-5
    )


def graph(ckpt: str, negative: str, perp: dict | None, *, scheduler="normal", steps=4, cfg=5.0):
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": ckpt}).id
    model = (ck, "model")
    pos = add("text_encode", {"text": "a photo of a red fox"}).id
    neg = add("text_encode", {"text": negative}).id
    if perp is not None:
        empty = add("text_encode", {"text": ""}).id
        c(ck, "clip", empty, "clip")
        node = add("perp_neg", perp).id
        c(ck, "model", node, "model")
        c(empty, "conditioning", node, "empty_conditioning")
        model = (node, "model")
    lat = add("empty_latent", {"width": 64, "height": 64}).id
    params = {"seed": 4, "steps": steps, "cfg": cfg, "sampler": "euler", "scheduler": scheduler}
    s = add("sampler", {**params, "denoise": 1.0}).id
    dec = add("vae_decode").id
    for side in (pos, neg):
        c(ck, "clip", side, "clip")
    c(*model, s, "model")
    c(pos, "conditioning", s, "positive")
    c(neg, "conditioning", s, "negative")
    c(lat, "latent", s, "latent")
    c(s, "latent", dec, "latent")
    c(ck, "vae", dec, "vae")
    return wf, dec


def picture(engine, *args, **kw) -> np.ndarray:
    wf, dec = graph(*args, **kw)
    result = engine.run(wf, targets=[dec])
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


@pytest.mark.parametrize("scheduler", ["normal", "comfy_normal"])
def test_on_an_sd_model_neg_scale_0_is_cfg_against_the_empty_prompt(engine, scheduler):
    want = picture(engine, "tiny-sd1", "", None, scheduler=scheduler)
    got = picture(
        engine, "tiny-sd1", "blurry, low quality", {"neg_scale": 0.0}, scheduler=scheduler
    )
    assert np.abs(got - want).max() <= 1e-4
    scaled = picture(
        engine, "tiny-sd1", "blurry, low quality", {"neg_scale": 2.0}, scheduler=scheduler
    )
    assert np.abs(scaled - got).max() > 1e-3


def test_with_rescale_cfg_it_is_a_clear_error(engine):
    wf, dec = graph("tiny-sd1", "blurry", {"neg_scale": 1.0})
    sampler = next(n.id for n in wf.nodes if n.type == "sampler")
    link = wf.link_into(sampler, "model")
    rescale = wf.add_node("rescale_cfg", {"multiplier": 0.7}).id
    wf.connect(link.source, link.output, rescale, "model")
    wf.connect(rescale, "model", sampler, "model")
    result = engine.run(wf, targets=[dec])
    assert not result.ok
    assert "Perp-Neg and Rescale CFG each replace cfg" in str(result.errors)


@pytest.fixture(scope="module")
def dit_engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("perp-models")
    fx.sd3_pipeline(fx.tiny_sd3()).save_pretrained(str(root / "checkpoints" / "tiny-sd3"))
    fx.flux_pipeline(fx.tiny_flux(guidance=False)).save_pretrained(
        str(root / "checkpoints" / "tiny-flux")
    )
    tmp = tmp_path_factory.mktemp("perp-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


@pytest.mark.parametrize("ckpt", ["tiny-sd3", "tiny-flux"])
def test_on_sd3_and_flux_neg_scale_0_is_cfg_against_the_empty_prompt(dit_engine, ckpt):
    want = picture(dit_engine, ckpt, "", None, steps=3)
    got = picture(dit_engine, ckpt, "blurry, low quality", {"neg_scale": 0.0}, steps=3)
    assert np.abs(got - want).max() <= 1 / 255
    scaled = picture(dit_engine, ckpt, "blurry, low quality", {"neg_scale": 2.0}, steps=3)
    assert np.abs(scaled - got).max() > 1e-3


def test_comfyuis_perp_neg_node_imports_and_exports():
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "3": {
            "class_type": "PerpNeg",
            "inputs": {"neg_scale": 1.5, "model": ["1", 0], "empty_conditioning": ["2", 0]},
        },
    }
    wf = import_comfyui(api, installed_registry(), source="perp.json").workflow
    node = wf.get_node("3")
    assert node.type == "perp_neg" and node.params == {"neg_scale": 1.5}
    assert wf.link_into("3", "empty_conditioning").source == "2"
    assert export_comfyui_api(wf)["3"]["inputs"] == api["3"]["inputs"]


def perp_neg_api(guider: bool, neg_scale: float = 1.5) -> dict:
    """ComfyUI txt2img on tiny-sd1 with Perp-Neg: PerpNegGuider in a custom-sampling chain,
    or the PerpNeg model node into a KSampler (the same guidance)."""
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                           "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
    }  # fmt: skip
    sides = {"positive": ["4", 0], "negative": ["5", 0]}
    if guider:
        api.update({
            "10": {"class_type": "PerpNegGuider", "inputs": {
                "cfg": 5.0, "neg_scale": neg_scale, "model": ["1", 0], **sides,
                "empty_conditioning": ["2", 0]}},
            "11": {"class_type": "RandomNoise", "inputs": {"noise_seed": 4}},
            "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "13": {"class_type": "BasicScheduler", "inputs": {
                "scheduler": "normal", "steps": 4, "denoise": 1.0, "model": ["1", 0]}},
            "7": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["11", 0], "guider": ["10", 0], "sampler": ["12", 0],
                "sigmas": ["13", 0], "latent_image": ["6", 0]}},
        })  # fmt: skip
    else:
        api.update({
            "3": {"class_type": "PerpNeg", "inputs": {
                "neg_scale": neg_scale, "model": ["1", 0], "empty_conditioning": ["2", 0]}},
            "7": {"class_type": "KSampler", "inputs": {
                "seed": 4, "steps": 4, "cfg": 5.0, "sampler_name": "euler",
                "scheduler": "normal", "denoise": 1.0, "model": ["3", 0], **sides,
                "latent_image": ["6", 0]}},
        })  # fmt: skip
    return api


def test_comfyuis_perp_neg_guider_folds_into_a_sampler_and_draws_the_perp_neg_picture(engine):
    """PerpNegGuider (which deprecates the PerpNeg node) folds with its chain into one Sampler
    after a Perp-Neg model node: the picture of the PerpNeg node's workflow."""
    result = import_comfyui(perp_neg_api(True), installed_registry(), source="guider.json")
    wf = result.workflow
    assert not [n for n in wf.nodes if n.type.startswith("comfyui.")], result.report
    sampler = wf.get_node("7")
    perp = wf.get_node(wf.link_into("7", "model").source)
    assert perp.type == "perp_neg" and perp.params == {"neg_scale": 1.5}
    assert wf.link_into(perp.id, "empty_conditioning").source == "2"
    assert sampler.params["cfg"] == 5.0 and sampler.params["seed"] == 4
    assert any("PerpNegGuider" in line and "Perp-Neg" in line for line in result.report)

    def draw(api: dict) -> np.ndarray:
        wf = import_comfyui(api, installed_registry(), source="perp.json").workflow
        out = engine.run(wf, targets=["8"])
        assert out.ok, out.errors
        return out.outputs["8"]["image"].numpy()

    got = draw(perp_neg_api(True))
    assert np.abs(got - draw(perp_neg_api(False))).max() <= 1e-5
    assert np.abs(got - draw(perp_neg_api(True, neg_scale=0.0))).max() > 1e-3
