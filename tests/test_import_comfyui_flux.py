"""ComfyUI's Flux.1 and SD3.5 workflows in Studio: the custom-sampling chain (RandomNoise,
BasicGuider / CFGGuider, KSamplerSelect, BasicScheduler into SamplerCustomAdvanced) folded
into one Sampler, CLIPTextEncodeFlux / SD3, city96's GGUF loaders; the imported Flux dev
example runs on tiny Flux files and gives the hand-built Studio graph's picture."""

from __future__ import annotations

import copy

import pytest
from comfyui_files import _ui_file, flux_dev_ui, sd35_ui, ui_node

from studio.errors import WorkflowFileError
from studio.graph.importers.comfyui import import_comfyui
from studio.graph.importers.comfyui_export import export_comfyui_api
from studio.graph.workflow import Workflow
from studio.library import installed_registry

PROMPT = "a red circle on a blue background"
SEED, STEPS = 7, 3
FILES = {
    "unet": "flux-orig.safetensors",
    "clips": ("t5xxl.safetensors", "clip_l.safetensors"),
    "vae": "ae.safetensors",
}


@pytest.fixture(scope="module")
def reg():
    return installed_registry()


def _import(data, reg):
    result = import_comfyui(data, reg, source="flux.json")
    placeholders = [n.type for n in result.workflow.nodes if n.type.startswith("comfyui.")]
    return result.workflow, result.report, placeholders


def _links(wf) -> set[tuple[str, str, str, str]]:
    return {(lk.source, lk.output, lk.target, lk.input) for lk in wf.links}


# -- import: no torch ---------------------------------------------------------------------------


def test_the_official_flux_dev_example_imports_onto_one_sampler(reg):
    wf, report, placeholders = _import(flux_dev_ui(), reg)
    assert placeholders == []
    assert report == [
        "SamplerCustomAdvanced (13) became one Sampler with RandomNoise (25), BasicGuider "
        "(22), KSamplerSelect (16), BasicScheduler (17) folded in (their values are its "
        "params; BasicGuider: cfg 1, the negative its prompt zeroed out (node 22_negative), "
        "which cfg 1 ignores)"
    ]
    types = {n.id: n.type for n in wf.nodes}
    assert types == {
        "12": "load_diffusion_model", "11": "load_text_encoders", "6": "text_encode",
        "26": "flux_guidance", "27": "empty_latent", "13": "sampler", "22_negative":
        "conditioning_zero_out", "10": "load_vae", "8": "vae_decode", "9": "save_image",
    }  # fmt: skip
    sampler = wf.get_node("13")  # the SamplerCustomAdvanced's id: --set 13.seed=7 works
    assert sampler.params == {
        "seed": 219670278747233, "steps": 20, "cfg": 1.0, "sampler": "euler",
        "scheduler": "comfy_simple", "denoise": 1.0,
    }  # fmt: skip
    assert sampler.extra["seed_control"] == {"seed": "randomize"}  # RandomNoise's control
    assert sampler.title == ""
    assert {
        ("12", "model", "13", "model"),
        ("26", "conditioning", "13", "positive"),
        ("26", "conditioning", "22_negative", "conditioning"),
        ("22_negative", "conditioning", "13", "negative"),
        ("27", "latent", "13", "latent"),
        ("13", "latent", "8", "latent"),
    } <= _links(wf)
    assert wf.get_node("26").params["guidance"] == 3.5


def test_the_seed_steps_scheduler_and_denoise_come_from_the_chain(reg):
    data = flux_dev_ui(seed=5, control="fixed", steps=8, sampler="heun", scheduler="beta")
    sched = next(n for n in data["nodes"] if n["id"] == 17)
    sched["widgets_values"] = ["beta", 8, 0.6]
    wf, report, _ = _import(data, reg)
    assert len(report) == 1
    p = wf.get_node("13").params
    assert (p["seed"], p["steps"], p["sampler"], p["scheduler"], p["denoise"]) == (
        5, 8, "heun", "comfy_beta", 0.6
    )  # fmt: skip
    assert "seed_control" not in wf.get_node("13").extra


def test_sd35_with_triple_clip_loader_and_ksampler_imports_with_no_report(reg):
    wf, report, placeholders = _import(sd35_ui(seed=3, steps=28, cfg=5.5), reg)
    assert (placeholders, report) == ([], [])
    p = wf.get_node("3").params
    assert (p["seed"], p["steps"], p["cfg"], p["sampler"], p["scheduler"]) == (
        3, 28, 5.5, "euler", "comfy_sgm_uniform"
    )  # fmt: skip
    assert wf.get_node("11").type == "load_text_encoders_3"


def test_sd35_with_cfg_guider_takes_its_cfg_and_both_prompts(reg):
    wf, report, placeholders = _import(sd35_ui(guider=True, cfg=4.5, steps=30), reg)
    assert placeholders == []
    assert report == [
        "SamplerCustomAdvanced (3) became one Sampler with RandomNoise (21), CFGGuider (20), "
        "KSamplerSelect (22), BasicScheduler (23) folded in (their values are its params)"
    ]
    p = wf.get_node("3").params
    assert (p["cfg"], p["steps"], p["sampler"], p["scheduler"]) == (
        4.5, 30, "dpmpp_2m", "comfy_karras"
    )  # fmt: skip
    assert {
        ("6", "conditioning", "3", "positive"),
        ("7", "conditioning", "3", "negative"),
        ("13", "model", "3", "model"),
    } <= _links(wf)
    assert not any(n.type == "conditioning_zero_out" for n in wf.nodes)


def test_disable_noise_becomes_a_sampler_advanced_that_adds_none(reg):
    data = flux_dev_ui()
    noise = next(n for n in data["nodes"] if n["id"] == 25)
    noise.update(type="DisableNoise", widgets_values=[])
    wf, report, placeholders = _import(data, reg)
    assert placeholders == []
    node = wf.get_node("13")
    assert node.type == "sampler_advanced"
    assert (node.params["add_noise"], node.params["steps"]) == (False, 20)
    assert "DisableNoise (25)" in report[0]


def test_sampler_custom_folds_with_its_own_cfg_and_seed(reg):
    data = copy.deepcopy(sd35_ui(guider=True))
    nodes = {n["id"]: n for n in data["nodes"]}
    del nodes[20], nodes[21]  # the guider and the noise
    nodes[3] = ui_node(
        3, "SamplerCustom", [True, 99, "fixed", 6.0],
        inputs=[("model", "MODEL", 10), ("positive", "CONDITIONING", 4),
                ("negative", "CONDITIONING", 6), ("sampler", "SAMPLER", 23),
                ("sigmas", "SIGMAS", 24), ("latent_image", "LATENT", 2)],
        outputs=[("output", "LATENT", [7]), ("denoised_output", "LATENT", [])],
    )  # fmt: skip
    links = [lk for lk in data["links"] if lk[0] not in (21, 22)]
    for lk in links:  # model, prompts into the sampler now
        if lk[0] in (10, 4, 6):
            lk[3], lk[4] = 3, {10: 0, 4: 1, 6: 2}[lk[0]]
        elif lk[0] in (23, 24, 2):
            lk[4] = {23: 3, 24: 4, 2: 5}[lk[0]]
    wf, report, placeholders = _import(_ui_file(list(nodes.values()), links), reg)
    assert placeholders == []
    p = wf.get_node("3").params
    assert (p["seed"], p["cfg"], p["sampler"], p["scheduler"]) == (
        99,
        6.0,
        "dpmpp_2m",
        "comfy_karras",
    )
    assert report == [
        "SamplerCustom (3) became one Sampler with KSamplerSelect (22), BasicScheduler (23) "
        "folded in (their values are its params)"
    ]


def test_the_api_format_folds_the_same_chain(reg):
    prompt = {
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "f.safetensors", "weight_dtype": "default"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["11", 0]}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "a", "clip_name2": "b", "type": "flux"}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["12", 0], "conditioning": ["6", 0]}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "17": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": 4, "denoise": 1.0, "model": ["12", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0], "latent_image": ["27", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 1], "vae": ["10", 0]}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
    }  # fmt: skip
    wf, report, placeholders = _import(prompt, reg)
    assert placeholders == []
    assert (wf.get_node("13").params["seed"], wf.get_node("13").params["steps"]) == (42, 4)
    assert ("13", "latent", "8", "latent") in _links(wf)  # denoised_output: the same latent
    assert "its denoised_output is the Sampler's latent" in report[0]


def _with_flipped_sigmas(data):
    """BasicScheduler -> FlipSigmas -> the sampler's sigmas (sampling backwards: no Studio
    schedule does that)."""
    data["nodes"].append(
        ui_node(40, "FlipSigmas", [], inputs=[("sigmas", "SIGMAS", 20)],
                outputs=[("SIGMAS", "SIGMAS", [200])])
    )  # fmt: skip
    for lk in data["links"]:
        if lk[0] == 20:
            lk[3], lk[4] = 40, 0
    data["links"].append([200, 40, 0, 13, 3, "SIGMAS"])
    return data


def test_a_chain_that_does_not_collapse_stays_placeholders_with_the_reason(reg):
    _, report, placeholders = _import(_with_flipped_sigmas(flux_dev_ui()), reg)
    assert sorted(placeholders) == sorted(
        "comfyui." + t for t in (
            "SamplerCustomAdvanced", "FlipSigmas", "RandomNoise", "BasicGuider",
            "KSamplerSelect", "BasicScheduler",
        )
    )  # fmt: skip
    line = next(r for r in report if r.startswith("SamplerCustomAdvanced (13)"))
    assert "its 'sigmas' comes from FlipSigmas (40), not from a sampler or scheduler" in line
    assert line.endswith("kept as a placeholder")
    assert any(
        r.startswith("RandomNoise (25)") and "it feeds SamplerCustomAdvanced (13)" in r
        for r in report
    )
    assert any(r.startswith("FlipSigmas (40)") and "computes its own schedule" in r for r in report)


def test_a_scheduler_on_another_model_or_disable_noise_below_full_denoise_stays(reg):
    data = flux_dev_ui()
    data["nodes"].append(
        ui_node(50, "UNETLoader", ["other.safetensors", "default"],
                outputs=[("MODEL", "MODEL", [500])])
    )  # fmt: skip
    for lk in data["links"]:
        if lk[0] == 55:  # BasicScheduler's model from the other loader
            lk[1] = 50
    _, report, placeholders = _import(data, reg)
    assert "comfyui.SamplerCustomAdvanced" in placeholders
    assert any("schedules with another model" in r for r in report)
    data = flux_dev_ui()
    nodes = {n["id"]: n for n in data["nodes"]}
    nodes[25].update(type="DisableNoise", widgets_values=[])
    nodes[17]["widgets_values"] = ["simple", 20, 0.5]
    _, report, placeholders = _import(data, reg)
    assert "comfyui.SamplerCustomAdvanced" in placeholders
    assert any("adds no noise with BasicScheduler (17)'s denoise 0.5" in r for r in report)


def test_a_scheduler_before_the_loras_schedules_as_the_guider_after_them(reg):
    data = flux_dev_ui()
    data["nodes"].append(
        ui_node(60, "LoraLoaderModelOnly", ["flux-style.safetensors", 0.8],
                inputs=[("model", "MODEL", 56)], outputs=[("MODEL", "MODEL", [600])])
    )  # fmt: skip
    for lk in data["links"]:
        if lk[0] == 56:  # UNETLoader -> the LoRA -> BasicGuider; BasicScheduler on the UNET
            lk[3], lk[4] = 60, 0
    data["links"].append([600, 60, 0, 22, 0, "MODEL"])
    wf, report, placeholders = _import(data, reg)
    assert placeholders == [] and len(report) == 1
    assert ("60", "model", "13", "model") in _links(wf)  # the sampler samples with the LoRA


def test_one_guider_shared_by_two_samplers_folds_into_both(reg):
    data = flux_dev_ui()
    second = copy.deepcopy(next(n for n in data["nodes"] if n["id"] == 13))
    second["id"] = 14
    data["nodes"].append(second)
    for lk_id, src, slot in ((301, 25, 0), (302, 22, 1), (303, 16, 2), (304, 17, 3), (305, 27, 4)):
        data["links"].append([lk_id, src, 0, 14, slot, "X"])
    wf, _, placeholders = _import(data, reg)
    assert placeholders == []
    assert wf.get_node("14").params == wf.get_node("13").params
    assert {n.id for n in wf.nodes if n.type == "conditioning_zero_out"} == {"22_negative"}


def _flux_text_node(clip_l: str, t5xxl: str, guidance: float = 3.5):
    data = flux_dev_ui()
    nodes = {n["id"]: n for n in data["nodes"]}
    # CLIPTextEncodeFlux in place of CLIPTextEncode -> FluxGuidance: node 6 feeds the guider.
    nodes[6].update(type="CLIPTextEncodeFlux", widgets_values=[clip_l, t5xxl, guidance])
    nodes[6]["title"] = "CLIPTextEncodeFlux"
    del nodes[26]
    data["nodes"] = list(nodes.values())
    data["links"] = [lk for lk in data["links"] if lk[0] != 41]
    for lk in data["links"]:
        if lk[0] == 42:
            lk[1] = 6
    return data


def test_clip_text_encode_flux_becomes_text_encode_and_flux_guidance(reg):
    wf, report, placeholders = _import(_flux_text_node("a fox", "a fox", 2.5), reg)
    assert placeholders == [] and len(report) == 1  # only the sampler's fold
    assert wf.get_node("6_text").type == "text_encode"
    assert wf.get_node("6_text").params["text"] == "a fox"
    assert (wf.get_node("6").type, wf.get_node("6").params["guidance"]) == ("flux_guidance", 2.5)
    assert wf.get_node("6").title == ""
    assert {("11", "clip", "6_text", "clip"), ("6_text", "conditioning", "6", "conditioning"),
            ("6", "conditioning", "13", "positive")} <= _links(wf)  # fmt: skip


def test_a_different_clip_l_text_is_reported_as_dropped(reg):
    wf, report, _ = _import(_flux_text_node("fox, forest", "a red fox in a snowy forest"), reg)
    assert wf.get_node("6_text").params["text"] == "a red fox in a snowy forest"
    assert "CLIPTextEncodeFlux (6): the clip_l text 'fox, forest' was dropped" in report[0]


def test_clip_text_encode_sd3_takes_the_t5_text(reg):
    data = sd35_ui()
    node = next(n for n in data["nodes"] if n["id"] == 6)
    node.update(type="CLIPTextEncodeSD3", widgets_values=["a cat", "a cat", "a cat", "none"])
    wf, report, placeholders = _import(data, reg)
    assert (placeholders, report) == ([], [])
    assert wf.get_node("6").params["text"] == "a cat"
    node.update(widgets_values=["cat", "a cat", "a tabby cat on a sofa", "empty"])
    wf, report, _ = _import(data, reg)
    assert wf.get_node("6").params["text"] == "a tabby cat on a sofa"
    assert len(report) == 2 and all("was dropped" in r for r in report)


def test_city96_gguf_loaders_map_onto_studios_loaders(reg):
    data = flux_dev_ui(
        unet_loader="UnetLoaderGGUF", clip_loader="DualCLIPLoaderGGUF", unet="flux1-dev-Q4_K_S.gguf"
    )
    wf, report, placeholders = _import(data, reg)
    assert placeholders == [] and len(report) == 1
    assert wf.get_node("12").params["unet_name"] == "flux1-dev-Q4_K_S.gguf"
    assert wf.get_node("11").type == "load_text_encoders"
    triple = ui_node(1, "TripleCLIPLoaderGGUF", ["l.safetensors", "g.safetensors", "t5.gguf"])
    single = ui_node(2, "CLIPLoaderGGUF", ["t5.gguf", "sd3"])
    data = _ui_file([triple, single], [[1, 1, 0, 1, 0, "X"]])
    data["links"] = []
    wf, report, placeholders = _import(data, reg)
    assert wf.get_node("1").type == "load_text_encoders_3"
    assert placeholders == ["comfyui.CLIPLoaderGGUF"]


def test_docs_importing_lists_every_mapped_type_and_counts_them():
    import re
    from pathlib import Path

    from studio.graph.importers.comfyui_map import (
        CUSTOM_SAMPLING,
        EXTENSION_TYPES,
        MULTI_TEXT_ENCODES,
        NODE_MAPS,
    )

    doc = (Path(__file__).parent.parent / "docs" / "importing.md").read_text(encoding="utf-8")
    doc = doc.replace(
        "`PrimitiveString(Multiline)`", "`PrimitiveString`, `PrimitiveStringMultiline`"
    )
    core = {t for t in NODE_MAPS if t not in EXTENSION_TYPES and not t.startswith("studio:")}
    core |= set(CUSTOM_SAMPLING) | set(MULTI_TEXT_ENCODES)
    assert int(re.search(r"In all, (\d+) ComfyUI core types map", doc).group(1)) == len(core)
    for t in core | EXTENSION_TYPES:
        assert f"`{t}`" in doc, t


# -- the imported Flux dev example runs ----------------------------------------------------------


@pytest.fixture(scope="module")
def flux_root(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import dit_fixtures as fx

    parts = fx.tiny_flux()
    root = tmp_path_factory.mktemp("flux-models")
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (root / sub).mkdir()
    orig = fx.to_original(parts["transformer"], "flux")
    fx.save(orig, root / "diffusion_models" / FILES["unet"])
    fx.save_gguf(orig, root / "diffusion_models" / "flux-q8.gguf")
    fx.save(
        fx.clip_file_state(parts["text_encoder"]), root / "text_encoders" / "clip_l.safetensors"
    )
    fx.save(fx.t5_file_state(parts["text_encoder_2"]), root / "text_encoders" / "t5xxl.safetensors")
    (root / "text_encoders" / "t5xxl-Q8_0.gguf").write_bytes(b"GGUF" + bytes(60))
    fx.save(fx.ldm_vae(parts["vae"]), root / "vae" / FILES["vae"])
    return root


@pytest.fixture(scope="module")
def engine(flux_root, tmp_path_factory):
    from studio.engine import Engine
    from studio.settings import Settings

    tmp = tmp_path_factory.mktemp("flux-run")
    settings = Settings(
        models_root=str(flux_root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i")
    )
    return Engine(installed_registry(), settings=settings)


def _hand_built(unet: str = FILES["unet"], seed: int = SEED) -> tuple[Workflow, str]:
    """What an artist builds in Studio for the same picture: Flux at cfg 1 with guidance."""
    wf = Workflow(installed_registry())
    m = wf.add_node("load_diffusion_model", {"unet_name": unet}).id
    c = wf.add_node(
        "load_text_encoders",
        {"clip_name1": FILES["clips"][0], "clip_name2": FILES["clips"][1], "type": "flux"},
    ).id
    v = wf.add_node("load_vae", {"vae_name": FILES["vae"]}).id
    pos = wf.add_node("text_encode", {"text": PROMPT}).id
    neg = wf.add_node("text_encode", {"text": ""}).id
    g = wf.add_node("flux_guidance", {"guidance": 3.5}).id
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    params = {"seed": seed, "steps": STEPS, "cfg": 1.0, "sampler": "euler"}
    s = wf.add_node("sampler", {**params, "scheduler": "simple", "denoise": 1.0}).id
    dec = wf.add_node("vae_decode").id
    out = wf.add_node("preview_image").id
    for link in (
        (dec, "image", out, "images"),
        (c, "clip", pos, "clip"), (c, "clip", neg, "clip"), (pos, "conditioning", g, "conditioning"),
        (m, "model", s, "model"), (g, "conditioning", s, "positive"),
        (neg, "conditioning", s, "negative"), (lat, "latent", s, "latent"),
        (s, "latent", dec, "latent"), (v, "vae", dec, "vae"),
    ):  # fmt: skip
        wf.connect(*link)
    return wf, dec


def _image(engine, wf, dec):
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def _imported(**kw):
    data = flux_dev_ui(
        seed=SEED, control="fixed", steps=STEPS, size=64, text=PROMPT, unet=FILES["unet"],
        clips=FILES["clips"], vae=FILES["vae"], **kw,
    )  # fmt: skip
    return import_comfyui(data, installed_registry(), source="flux_dev.json").workflow


def test_the_imported_flux_dev_example_runs_and_equals_the_hand_built_graph(engine):
    import numpy as np

    got = _image(engine, _imported(), "8")
    want = _image(engine, *_hand_built())
    assert got.shape == (1, 64, 64, 3)
    assert np.array_equal(got, want)
    other = _image(engine, *_hand_built(seed=SEED + 1))
    assert float(np.abs(other - want).max()) > 0.05  # the seed shows: the test can fail


def test_the_imported_gguf_flux_workflow_runs_on_the_gguf_file(engine):
    import numpy as np

    wf = _imported(unet_loader="UnetLoaderGGUF", clip_loader="DualCLIPLoaderGGUF")
    wf.get_node("12").params["unet_name"] = "flux-q8.gguf"
    got = _image(engine, wf, "8")
    want = _image(engine, *_hand_built(unet="flux-q8.gguf"))
    assert np.array_equal(got, want)


def test_a_damaged_gguf_text_encoder_is_a_clear_error_naming_the_file(engine):
    wf = _imported(clip_loader="DualCLIPLoaderGGUF")
    wf.get_node("11").params["clip_name1"] = "t5xxl-Q8_0.gguf"  # "GGUF" and zeros
    result = engine.run(wf)
    assert not result.ok
    message = result.errors["11"]
    assert "'t5xxl-Q8_0.gguf'" in message and "not a readable GGUF file" in message, message


# -- ComfyUI's Flux Fill inpainting: InpaintModelConditioning, DifferentialDiffusion -------------


def _fill_api() -> dict:
    """ComfyUI's FLUX.1 Fill example, in the API format: the picture and its painted mask into
    InpaintModelConditioning, whose prompts and latent feed the KSampler, whose model goes
    through DifferentialDiffusion."""
    return {
        "31": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-fill-dev.safetensors", "weight_dtype": "default"}},
        "34": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl.safetensors", "type": "flux"}},
        "32": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "23": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["34", 0]}},
        "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 30, "conditioning": ["23", 0]}},
        "46": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["23", 0]}},
        "17": {"class_type": "LoadImage", "inputs": {"image": "yosemite.png"}},
        "38": {"class_type": "InpaintModelConditioning", "inputs": {"positive": ["26", 0], "negative": ["46", 0], "vae": ["32", 0], "pixels": ["17", 0], "mask": ["17", 1], "noise_mask": False}},
        "39": {"class_type": "DifferentialDiffusion", "inputs": {"model": ["31", 0]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 1, "sampler_name": "euler", "scheduler": "normal", "denoise": 1, "model": ["39", 0], "positive": ["38", 0], "negative": ["38", 1], "latent_image": ["38", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["32", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "fill"}},
    }  # fmt: skip


def test_differential_diffusions_strength_imports_and_its_0_becomes_1(reg):
    """ComfyUI's strength 0 skips the mix, giving the 0/1 mask as its 1 does: imported as 1
    (reported); other strengths as they are."""
    for strength, want in ((0.4, 0.4), (0, 1.0)):
        api = _fill_api()
        api["39"]["inputs"]["strength"] = strength
        wf, report, placeholders = _import(api, reg)
        assert placeholders == []
        assert wf.get_node("39").params["strength"] == want
        noted = [r for r in report if "DifferentialDiffusion (39)" in r]
        assert bool(noted) == (strength == 0), report
        # and it exports back (1 as 1, not as ComfyUI's 0 that acts as it)
        back = export_comfyui_api(wf)
        assert back["39"]["class_type"] == "DifferentialDiffusion"
        assert back["39"]["inputs"] == {"strength": want, "model": ["31", 0]}
    wf.get_node("39").params["strength"] = 0.0  # Studio's off: ComfyUI has no such value
    with pytest.raises(WorkflowFileError, match=r"strength 0\.0"):
        export_comfyui_api(wf)


def test_a_comfyui_flux_fill_workflow_imports_with_every_node_mapped(reg):
    wf, report, placeholders = _import(_fill_api(), reg)
    assert placeholders == []
    node = wf.get_node("38")
    assert node.type == "inpaint_model_conditioning"
    assert node.params["noise_mask"] is False
    links = _links(wf)
    assert {("38", "positive", "3", "positive"), ("38", "negative", "3", "negative")} <= links
    assert ("38", "latent", "3", "latent") in links
    assert ("26", "conditioning", "38", "positive") in links
    assert ("17", "mask", "38", "mask") in links
    # Differential Diffusion maps (a file of before its strength widget: strength 1)
    node = wf.get_node("39")
    assert node.type == "differential_diffusion" and node.params["strength"] == 1.0
    assert {("31", "model", "39", "model"), ("39", "model", "3", "model")} <= links
    assert not [r for r in report if "DifferentialDiffusion (39)" in r]
    from studio.engine.validate import plan_workflow

    assert [str(p) for p in plan_workflow(wf, wf.registry).problems] == []
