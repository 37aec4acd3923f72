"""Skip Layer Guidance (ComfyUI's SkipLayerGuidanceDiT / SkipLayerGuidanceSD3) on the tiny
SD3 and Flux transformers built in tests/dit_fixtures.py.

SD3: the graph's picture equals StableDiffusion3Pipeline's with ``skip_guidance_layers``
on the same steps (diffusers counts the window in steps, ComfyUI and Studio in the model's
time: the test picks values that select the same steps). Flux (no diffusers pipeline has
it): every transformer call is recorded; the skipped call equals the transformer with that
block removed, and each Euler step moves by the guided prediction plus scale times
(positive - skipped)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import dit_fixtures as fx  # noqa: E402

from nodes import dit  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.graph import Workflow  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

PROMPT, NEGATIVE = "a red fox in the snow", "blurry"
SEED, STEPS = 7, 3


@pytest.fixture(scope="module")
def parts():
    return {"sd3": fx.tiny_sd3(), "flux": fx.tiny_flux(guidance=False)}


@pytest.fixture(scope="module")
def engine(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("slg-models")
    fx.sd3_pipeline(parts["sd3"]).save_pretrained(str(root / "checkpoints" / "tiny-sd3"))
    fx.flux_pipeline(parts["flux"]).save_pretrained(str(root / "checkpoints" / "tiny-flux"))
    tmp = tmp_path_factory.mktemp("slg-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def fresh(engine) -> Engine:
    return Engine(installed_registry(), settings=engine.settings)


def graph(ckpt: str, slg: dict | None, cfg: float = 5.0, steps: int = STEPS):
    wf = Workflow(installed_registry())
    add, c = wf.add_node, wf.connect
    ck = add("load_checkpoint", {"ckpt_name": ckpt}).id
    model = (ck, "model")
    if slg is not None:
        node = add("skip_layer_guidance", slg).id
        c(ck, "model", node, "model")
        model = (node, "model")
    pos = add("text_encode", {"text": PROMPT}).id
    neg = add("text_encode", {"text": NEGATIVE}).id
    lat = add("empty_latent", {"width": 64, "height": 64}).id
    params = {"seed": SEED, "steps": steps, "cfg": cfg, "sampler": "euler"}
    s = add("sampler", {**params, "scheduler": "normal", "denoise": 1.0}).id
    dec = add("vae_decode").id
    for side in (pos, neg):
        c(ck, "clip", side, "clip")
    c(*model, s, "model")
    c(pos, "conditioning", s, "positive")
    c(neg, "conditioning", s, "negative")
    c(lat, "latent", s, "latent")
    c(s, "latent", dec, "latent")
    c(ck, "vae", dec, "vae")
    return wf, s, dec


def picture(engine, ckpt: str, slg: dict | None, **kw) -> np.ndarray:
    wf, _, dec = graph(ckpt, slg, **kw)
    result = engine.run(wf, targets=[dec])
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def slg_params(**kw) -> dict:
    base = {
        "double_layers": "1",
        "single_layers": "",
        "scale": 2.8,
        "start_percent": 0.05,
        "end_percent": 0.7,
        "rescaling_scale": 0.0,
    }
    return {**base, **kw}


def test_sd3_graph_with_skip_layer_guidance_equals_the_pipelines(engine, parts):
    # 4 steps of the pipeline's schedule at shift 3: sigmas 1, 0.86, 0.60, 0.009. ComfyUI's
    # window from 0.05 of the model's time (sigma 0.983) to its end takes steps 1-3, which
    # the pipeline's step window (i > 4 * 0.2 and i < 4 * 1.0) also takes.
    got = picture(fresh(engine), "tiny-sd3", slg_params(end_percent=1.0), steps=4)
    pipe = fx.sd3_pipeline(parts["sd3"])
    want = pipe(
        PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=4,
        guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np", skip_guidance_layers=[1], skip_layer_guidance_scale=2.8,
        skip_layer_guidance_start=0.2, skip_layer_guidance_stop=1.0,
    ).images  # fmt: skip
    assert float(np.abs(got - want).max()) <= 1 / 255
    plain = picture(engine, "tiny-sd3", None, steps=4)
    assert float(np.abs(got - plain).max()) > 4 / 255  # the guidance did something
    # a window that misses step 1 (from 0.4: sigma 0.82) is another picture
    later = picture(
        fresh(engine), "tiny-sd3", slg_params(start_percent=0.4, end_percent=1.0), steps=4
    )
    assert float(np.abs(later - got).max()) > 2 / 255


@pytest.mark.parametrize("rescale", [0.0, 1.0])
def test_flux_skip_layer_guidance_steps_away_from_the_skipped_prediction(engine, rescale):
    scale = 2.0
    params = slg_params(
        double_layers="0", single_layers="0", scale=scale, start_percent=0.0,
        end_percent=1.0, rescaling_scale=rescale,
    )  # fmt: skip
    with fx.flux_calls() as calls:
        wf, s, _ = graph("tiny-flux", params)
        result = fresh(engine).run(wf, targets=[s])
    assert result.ok, result.errors
    # per step: the guided call (which gives the positive prediction too), the skipped one
    assert len(calls) == 2 * STEPS
    assert [c[4] for c in calls] == [True, False] * STEPS
    net = calls[0][0]
    pruned = copy.deepcopy(net)
    pruned.transformer_blocks = torch.nn.ModuleList()
    pruned.single_transformer_blocks = torch.nn.ModuleList()
    xs = [calls[2 * i][1] for i in range(STEPS)]
    sigmas = [float(calls[2 * i][2]) / 1000 for i in range(STEPS)] + [0.0]
    final = dit.pack(result.outputs[s]["latent"]["samples"])
    for i in range(STEPS):
        (_, x, t, inputs, _, guided), (_, x3, *_, skipped) = calls[2 * i :][:2]
        assert torch.equal(x3, x)
        with torch.no_grad():
            want_skip = dit._flux_call(pruned, x, t, inputs, 1.0, False)
            cond = dit._flux_call(net, x, t, inputs, 1.0, False)
        assert torch.allclose(skipped, want_skip, atol=1e-5)
        assert not torch.allclose(skipped, cond, atol=1e-3)
        after = xs[i + 1] if i + 1 < STEPS else final
        v = (after - x) / (sigmas[i + 1] - sigmas[i])  # the Euler step's prediction
        if not rescale:
            assert torch.allclose(v, guided + scale * (cond - skipped), atol=1e-4)
        else:  # the clean-latent prediction takes the positive prediction's spread
            s_ = sigmas[i]
            den = x - s_ * v
            assert float(den.std()) == pytest.approx(float((x - s_ * cond).std()), rel=1e-3)


def test_outside_its_window_skip_layer_guidance_adds_no_call(engine):
    # 3 steps on tiny-flux (64 image tokens, its resolution shift): only the first step's
    # noise level (1.0) is at or above end 0.3's
    with fx.flux_calls() as calls:
        wf, s, _ = graph(
            "tiny-flux", slg_params(double_layers="0", start_percent=0.0, end_percent=0.3)
        )
        assert fresh(engine).run(wf, targets=[s]).ok
    assert len(calls) == STEPS + 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"double_layers": "5"}, "double_layers has block 5, but this model has 2"),
        ({"double_layers": "seven"}, "double_layers 'seven': write block numbers"),
        ({"double_layers": "1" * 5000}, "double_layers '1111"),
    ],
)
def test_bad_layers_are_clear_errors(engine, params, message):
    wf, s, _ = graph("tiny-sd3", slg_params(**params))
    result = fresh(engine).run(wf, targets=[s])
    assert not result.ok
    assert message in str(result.errors)


def test_skip_layer_guidance_on_a_unet_says_what_it_is_for():
    wf, s, _ = graph("studio-tiny", slg_params())
    result = Engine(installed_registry()).run(wf, targets=[s])
    assert not result.ok
    assert "diffusion transformers (SD3, Flux)" in str(result.errors)


def test_comfyuis_skip_layer_guidance_nodes_import_and_export():
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_medium"}},
        "2": {
            "class_type": "SkipLayerGuidanceSD3",
            "inputs": {
                "layers": "7, 8, 9", "scale": 3.0, "start_percent": 0.01,
                "end_percent": 0.15, "model": ["1", 0],
            },
        },
        "3": {
            "class_type": "SkipLayerGuidanceDiT",
            "inputs": {
                "double_layers": "7, 8, 9", "single_layers": "7, 8, 9", "scale": 3.0,
                "start_percent": 0.01, "end_percent": 0.15, "rescaling_scale": 0.5,
                "model": ["1", 0],
            },
        },
    }  # fmt: skip
    wf = import_comfyui(api, installed_registry(), source="slg.json").workflow
    sd3 = wf.get_node("2")
    assert sd3.type == "skip_layer_guidance"
    assert sd3.params["double_layers"] == "7, 8, 9" and sd3.params["single_layers"] == ""
    assert wf.get_node("3").params["rescaling_scale"] == 0.5
    back = export_comfyui_api(wf)
    assert back["3"]["class_type"] == "SkipLayerGuidanceDiT"
    assert {k: back["3"]["inputs"][k] for k in api["3"]["inputs"]} == api["3"]["inputs"]
    assert back["2"]["inputs"]["double_layers"] == "7, 8, 9"


def test_skip_layer_guidance_on_the_regional_path_equals_the_plain_one(engine):
    """A prompt with a timestep range covering all of the sampling takes the Sampler's
    regional path (as the default SD3 workflow's guidance interval does); its skipped
    prediction is the same, so is the picture."""
    want = picture(fresh(engine), "tiny-sd3", slg_params())
    wf, s, dec = graph("tiny-sd3", slg_params())
    link = wf.link_into(s, "positive")
    ranged = wf.add_node("conditioning_set_timestep_range", {"start": 0.0, "end": 1.0}).id
    wf.connect(link.source, link.output, ranged, "conditioning")
    wf.connect(ranged, "conditioning", s, "positive")
    result = fresh(engine).run(wf, targets=[dec])
    assert result.ok, result.errors
    assert float(np.abs(result.outputs[dec]["image"].numpy() - want).max()) <= 1 / 255


def test_a_comfyui_sd35_workflow_with_skip_layer_guidance_runs_as_the_hand_built_graph(engine):
    """ComfyUI's SD3.5 Medium layout (CheckpointLoaderSimple, SkipLayerGuidanceSD3 on its
    MODEL, KSampler, EmptySD3LatentImage), imported and run on the tiny SD3: the hand-built
    Studio graph's picture."""
    api = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd3"}},
        "11": {
            "class_type": "SkipLayerGuidanceSD3",
            "inputs": {
                "layers": "1", "scale": 2.8, "start_percent": 0.05, "end_percent": 1.0,
                "model": ["4", 0],
            },
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": SEED, "steps": 4, "cfg": 5.0, "sampler_name": "euler",
                "scheduler": "normal", "denoise": 1.0, "model": ["11", 0],
                "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }  # fmt: skip
    result = import_comfyui(api, installed_registry(), source="sd35_medium_slg.json")
    assert not [n for n in result.workflow.nodes if n.type.startswith("comfyui.")]
    run = fresh(engine).run(result.workflow, targets=["8"])
    assert run.ok, run.errors
    want = picture(fresh(engine), "tiny-sd3", slg_params(end_percent=1.0), steps=4)
    got = run.outputs["8"]["image"].numpy()
    assert float(np.abs(got - want).max()) <= 1 / 255
