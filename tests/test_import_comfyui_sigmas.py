"""ComfyUI's custom sampling beyond KSamplerSelect and BasicScheduler: sampler nodes with
options (SamplerEulerAncestral, SamplerDPMPP_2M_SDE, ...), scheduler nodes (Karras,
exponential, beta) and two passes over split sigmas (SplitSigmas, SplitSigmasDenoise) fold
into Studio's Sampler and Sampler (Advanced); the split two-pass workflow draws the one-pass
picture on studio-tiny."""

from __future__ import annotations

from typing import Any

import pytest
from comfyui_files import _ui_file, ui_node

from studio.graph.fileformat import load_workflow
from studio.graph.importers.comfyui import import_comfyui
from studio.library import installed_registry

TEXT = "a large yellow triangle on a purple background, right"


@pytest.fixture(scope="module")
def reg():
    return installed_registry()


def split_ui(
    *,
    seed: int = 11,
    steps: int = 8,
    cfg: float = 7.0,
    split: tuple[str, list[Any]] | None = ("SplitSigmas", [3]),
    sampler: tuple[str, list[Any]] = ("KSamplerSelect", ["euler"]),
    scheduler: tuple[str, list[Any]] | None = None,
    second_noise: str = "DisableNoise",
    use_denoised: bool = False,
) -> dict[str, Any]:
    """A custom-sampling txt2img on studio-tiny: CFGGuider, RandomNoise, a sampler node and
    a scheduler node; with ``split``, two SamplerCustomAdvanced over its high and low
    sigmas (the second adding ``second_noise``), else one."""
    sched_type, sched_widgets = scheduler or ("BasicScheduler", ["normal", steps, 1.0])
    with_model = ("BasicScheduler", "BetaSamplingScheduler", "SDTurboScheduler")
    model_links = [1, 2] if sched_type in with_model else [1]
    sched_inputs = [("model", "MODEL", 2)] if 2 in model_links else []
    first_out = [30] if split else [7]
    nodes = [
        ui_node(4, "CheckpointLoaderSimple", ["studio-tiny"],
                outputs=[("MODEL", "MODEL", model_links), ("CLIP", "CLIP", [3, 5]),
                         ("VAE", "VAE", [8])]),
        ui_node(6, "CLIPTextEncode", [TEXT], inputs=[("clip", "CLIP", 3)],
                outputs=[("CONDITIONING", "CONDITIONING", [4])]),
        ui_node(7, "CLIPTextEncode", [""], inputs=[("clip", "CLIP", 5)],
                outputs=[("CONDITIONING", "CONDITIONING", [6])]),
        ui_node(5, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT", [20])]),
        ui_node(20, "CFGGuider", [cfg], inputs=[("model", "MODEL", 1),
                ("positive", "CONDITIONING", 4), ("negative", "CONDITIONING", 6)],
                outputs=[("GUIDER", "GUIDER", [21, 22])]),
        ui_node(21, "RandomNoise", [seed, "fixed"], outputs=[("NOISE", "NOISE", [23])]),
        ui_node(23, sampler[0], sampler[1], outputs=[("SAMPLER", "SAMPLER", [24, 25])]),
        ui_node(24, sched_type, sched_widgets, inputs=sched_inputs,
                outputs=[("SIGMAS", "SIGMAS", [26])]),
        ui_node(13, "SamplerCustomAdvanced", [], inputs=[("noise", "NOISE", 23),
                ("guider", "GUIDER", 21), ("sampler", "SAMPLER", 24),
                ("sigmas", "SIGMAS", 27 if split else 26), ("latent_image", "LATENT", 20)],
                outputs=[("output", "LATENT", first_out),
                         ("denoised_output", "LATENT", [40] if use_denoised else [])]),
        ui_node(8, "VAEDecode", [], inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)],
                outputs=[("IMAGE", "IMAGE", [9])]),
        ui_node(9, "SaveImage", ["ComfyUI"], inputs=[("images", "IMAGE", 9)]),
    ]  # fmt: skip
    links = [
        [1, 4, 0, 20, 0, "MODEL"], [3, 4, 1, 6, 0, "CLIP"], [5, 4, 1, 7, 0, "CLIP"],
        [4, 6, 0, 20, 1, "CONDITIONING"], [6, 7, 0, 20, 2, "CONDITIONING"],
        [20, 5, 0, 13, 4, "LATENT"], [21, 20, 0, 13, 1, "GUIDER"], [23, 21, 0, 13, 0, "NOISE"],
        [24, 23, 0, 13, 2, "SAMPLER"], [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"],
    ]  # fmt: skip
    if 2 in model_links:
        links.append([2, 4, 0, 24, 0, "MODEL"])
    if split:
        nodes += [
            ui_node(25, split[0], split[1], inputs=[("sigmas", "SIGMAS", 26)],
                    outputs=[("high_sigmas", "SIGMAS", [27]), ("low_sigmas", "SIGMAS", [28])]),
            ui_node(22, second_noise, [seed + 1, "fixed"] if second_noise == "RandomNoise"
                    else [], outputs=[("NOISE", "NOISE", [29])]),
            ui_node(14, "SamplerCustomAdvanced", [], inputs=[("noise", "NOISE", 29),
                    ("guider", "GUIDER", 22), ("sampler", "SAMPLER", 25),
                    ("sigmas", "SIGMAS", 28), ("latent_image", "LATENT", 30)],
                    outputs=[("output", "LATENT", [7]), ("denoised_output", "LATENT", [])]),
        ]  # fmt: skip
        links += [
            [26, 24, 0, 25, 0, "SIGMAS"], [27, 25, 0, 13, 3, "SIGMAS"],
            [28, 25, 1, 14, 3, "SIGMAS"], [22, 20, 0, 14, 1, "GUIDER"],
            [29, 22, 0, 14, 0, "NOISE"], [25, 23, 0, 14, 2, "SAMPLER"],
            [30, 13, 0, 14, 4, "LATENT"], [7, 14, 0, 8, 0, "LATENT"],
        ]  # fmt: skip
        if use_denoised:
            nodes.append(ui_node(41, "VAEDecode", [], inputs=[("samples", "LATENT", 40),
                                 ("vae", "VAE", None)]))  # fmt: skip
            links.append([40, 13, 1, 41, 0, "LATENT"])
    else:
        links += [[26, 24, 0, 13, 3, "SIGMAS"], [7, 13, 0, 8, 0, "LATENT"]]
    return _ui_file(nodes, links)


def _import(data, reg):
    result = import_comfyui(data, reg, source="split.json")
    wf = result.workflow
    placeholders = {n.id: n for n in wf.nodes if n.type.startswith("comfyui.")}
    return wf, result.report, placeholders


def _pass(node) -> tuple:
    p = node.params
    return (
        node.type, p["steps"], p["start_at_step"], p["end_at_step"],
        p["return_with_leftover_noise"], p["add_noise"], p["seed"],
    )  # fmt: skip


# -- import: no torch ---------------------------------------------------------------------------


def test_split_sigmas_become_two_sampler_advanced_passes(reg):
    wf, report, placeholders = _import(split_ui(seed=11, steps=8, split=("SplitSigmas", [3])), reg)
    assert placeholders == {}
    assert _pass(wf.get_node("13")) == ("sampler_advanced", 8, 0, 3, True, True, 11)
    assert _pass(wf.get_node("14")) == ("sampler_advanced", 8, 3, 8, False, False, 0)
    for nid in ("13", "14"):
        p = wf.get_node(nid).params
        assert (p["cfg"], p["sampler"], p["scheduler"]) == (7.0, "euler", "comfy_normal")
    assert report[0].startswith(
        "SamplerCustomAdvanced (13) became one Sampler (Advanced) (steps 0 to 3 of 8) with "
        "RandomNoise (21), CFGGuider (20), KSamplerSelect (23), BasicScheduler (24), "
        "SplitSigmas (25) folded in"
    )
    assert report[1].startswith(
        "SamplerCustomAdvanced (14) became one Sampler (Advanced) (steps 3 to 8 of 8, no "
        "noise added)"
    )
    # the chain's nodes are gone; the first pass feeds the second
    assert {n.type for n in wf.nodes} == {
        "load_checkpoint", "text_encode", "empty_latent", "sampler_advanced", "vae_decode",
        "save_image",
    }  # fmt: skip
    assert any(lk.source == "13" and lk.target == "14" for lk in wf.links)


def test_split_sigmas_denoise_and_a_scheduler_denoise_place_the_passes_in_the_whole_run(reg):
    # 8 steps split at denoise 0.25: the last round(8 * 0.25) = 2 steps are the low part.
    wf, _, placeholders = _import(split_ui(split=("SplitSigmasDenoise", [0.25])), reg)
    assert placeholders == {}
    assert _pass(wf.get_node("13"))[:5] == ("sampler_advanced", 8, 0, 6, True)
    assert _pass(wf.get_node("14"))[:5] == ("sampler_advanced", 8, 6, 8, False)
    # BasicScheduler at denoise 0.5: its 8 steps are the last 8 of int(8 / 0.5) = 16.
    data = split_ui(scheduler=("BasicScheduler", ["karras", 8, 0.5]))
    wf, _, placeholders = _import(data, reg)
    assert placeholders == {}
    assert _pass(wf.get_node("13"))[:5] == ("sampler_advanced", 16, 8, 11, True)
    assert _pass(wf.get_node("14"))[:5] == ("sampler_advanced", 16, 11, 16, False)
    assert wf.get_node("14").params["scheduler"] == "comfy_karras"


def test_a_split_that_leaves_a_part_without_steps_or_whose_prediction_is_used_stays(reg):
    for at in (0, 8):
        _, _, placeholders = _import(split_ui(split=("SplitSigmas", [at])), reg)
        assert {"13", "14", "25"} <= set(placeholders)
        reason = placeholders["13"].params.get("reason") or str(placeholders["13"].extra)
        assert f"splits 8 steps at {at}, which leaves one part without steps" in reason
    _, _, placeholders = _import(split_ui(split=("SplitSigmasDenoise", [1.5])), reg)
    assert "its denoise 1.5 is not between 0 and 1" in str(placeholders["13"].extra)
    _, _, placeholders = _import(split_ui(use_denoised=True), reg)
    assert "13" in placeholders and "14" not in placeholders
    assert "denoised_output (the prediction at the split)" in str(placeholders["13"].extra)


def test_sampler_nodes_at_the_ksamplers_options_fold_and_others_stay(reg):
    cases = {
        ("SamplerEulerAncestral", (1.0, 1.0)): "euler_ancestral",
        ("SamplerDPMPP_2S_Ancestral", (1.0, 1.0)): "dpmpp_2s_ancestral",
        ("SamplerDPMPP_SDE", (1.0, 1.0, 0.5, "cpu")): "dpmpp_sde",
        ("SamplerDPMPP_2M_SDE", ("midpoint", 1.0, 1.0, "cpu")): "dpmpp_2m_sde",
        ("SamplerDPMPP_3M_SDE", (1.0, 1.0, "cpu")): "dpmpp_3m_sde",
        ("SamplerLMS", (4,)): "lms",
    }
    for (ctype, widgets), name in cases.items():
        wf, report, placeholders = _import(
            split_ui(split=None, sampler=(ctype, list(widgets))), reg
        )
        assert placeholders == {}, ctype
        node = wf.get_node("13")
        assert (node.type, node.params["sampler"]) == ("sampler", name)
        assert f"{ctype} (23)" in report[0]
    # ComfyUI's noise on the GPU: the sampler, with the note every GPU sampler gets.
    data = split_ui(split=None, sampler=("SamplerDPMPP_2M_SDE", ["midpoint", 1.0, 1.0, "gpu"]))
    wf, report, placeholders = _import(data, reg)
    assert placeholders == {} and wf.get_node("13").params["sampler"] == "dpmpp_2m_sde"
    assert any("Studio draws noise on the CPU" in line for line in report)
    # Other options: Studio's Sampler has no eta or heun solver for them.
    for sampler, says in (
        (("SamplerEulerAncestral", [0.5, 1.0]), "its eta 0.5 is not 1.0"),
        (("SamplerDPMPP_2M_SDE", ["heun", 1.0, 1.0, "cpu"]), "its solver_type 'heun'"),
        (("SamplerLMS", [3]), "its order 3 is not 4"),
    ):
        _, _, placeholders = _import(split_ui(split=None, sampler=sampler), reg)
        assert {"13", "23"} <= set(placeholders)
        assert says in str(placeholders["13"].extra), placeholders["13"].extra


def test_scheduler_nodes_equal_to_a_sampler_schedule_fold_and_others_stay(reg):
    sd = [14.614642, 0.0291675]
    cases = {
        ("KarrasScheduler", (8, *sd, 7.0)): "comfy_karras",
        ("ExponentialScheduler", (8, *sd)): "comfy_exponential",
        ("PolyexponentialScheduler", (8, *sd, 1.0)): "comfy_exponential",
        ("BetaSamplingScheduler", (8, 0.6, 0.6)): "comfy_beta",
        ("SDTurboScheduler", (8, 1.0)): "comfy_sd_turbo",
    }
    for (ctype, widgets), name in cases.items():
        wf, report, placeholders = _import(
            split_ui(split=None, scheduler=(ctype, list(widgets))), reg
        )
        assert placeholders == {}, ctype
        p = wf.get_node("13").params
        assert (p["scheduler"], p["steps"]) == (name, 8)
        model_less = ctype not in ("BetaSamplingScheduler", "SDTurboScheduler")
        assert any("takes from the model" in line for line in report) == model_less
    for scheduler, says in (
        (("KarrasScheduler", [8, 10.0, 0.0291675, 7.0]), "its sigma_max 10.0 is not"),
        (("PolyexponentialScheduler", [8, *sd, 2.0]), "its rho 2.0 is not 1.0"),
        (("BetaSamplingScheduler", [8, 0.5, 0.6]), "its alpha 0.5 is not 0.6"),
        # SD Turbo below denoise 1 starts further down its ten timesteps: no Sampler denoise
        (("SDTurboScheduler", [2, 0.5]), "its denoise 0.5 is not 1.0"),
    ):
        _, _, placeholders = _import(split_ui(split=None, scheduler=scheduler), reg)
        assert {"13", "24"} <= set(placeholders)
        assert says in str(placeholders["13"].extra), placeholders["13"].extra


def test_dpm_2_in_custom_sampling_is_reported_to_differ(reg):
    _, report, placeholders = _import(
        split_ui(split=None, sampler=("KSamplerSelect", ["dpm_2"])), reg
    )
    assert placeholders == {}
    assert "custom sampling runs dpm_2 on the schedule as it is" in report[0]


# -- end to end on studio-tiny ---------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path, user_settings_file):
    torch = pytest.importorskip("torch")
    from studio.engine import Engine
    from studio.settings import Settings

    torch.set_num_threads(1)
    settings = user_settings_file(
        Settings(output_dir=str(tmp_path / "out"), input_dir=str(tmp_path / "in"), device="cpu")
    )
    return Engine(installed_registry(), settings=settings)


def _picture(engine, wf):
    import numpy as np

    result = engine.run(wf)
    assert result.ok, result.errors
    (image,) = result.images
    return np.asarray(image.convert("RGB")).astype(int)


def test_the_split_two_pass_workflow_draws_the_one_pass_picture(reg, engine):
    import numpy as np

    from studio.modelfiles import RESOURCES

    own = load_workflow(RESOURCES / "workflows" / "txt2img.json", reg)
    for n in own.nodes:
        if n.type == "sampler":  # one pass, built in Studio
            n.params.update(seed=11, steps=8, cfg=7.0, sampler="euler", scheduler="comfy_normal")
    own.find_node("Prompt").params["text"] = TEXT
    want = _picture(engine, own)
    split, _, placeholders = _import(split_ui(seed=11, steps=8, cfg=7.0), reg)
    assert placeholders == {}
    got = _picture(engine, split)
    assert got.shape == (64, 64, 3) and want.std() > 10
    assert float(np.abs(got - want).max()) <= 1
    # The second pass adding noise of its own (RandomNoise) shows: the test can fail.
    noisy, _, _ = _import(split_ui(seed=11, steps=8, cfg=7.0, second_noise="RandomNoise"), reg)
    assert float(np.abs(_picture(engine, noisy) - want).max()) > 10


def test_the_sd_turbo_chain_folds_and_draws_the_prompt(reg, engine):
    """ComfyUI's SD Turbo example (KSamplerSelect euler_ancestral, SDTurboScheduler) folds
    into one Sampler on comfy_sd_turbo and draws what the prompt says: its background is
    the 20-step picture's background. All ten of SD Turbo's timesteps: studio-tiny is not
    distilled, so fewer (a last jump from timestep 699 to the clean picture at 4) blur it."""
    import numpy as np

    from studio.modelfiles import RESOURCES

    data = split_ui(
        split=None,
        seed=5,
        cfg=3.0,
        sampler=("KSamplerSelect", ["euler_ancestral"]),
        scheduler=("SDTurboScheduler", [10, 1.0]),
    )
    turbo, _, placeholders = _import(data, reg)
    assert placeholders == {}
    assert turbo.get_node("13").params["scheduler"] == "comfy_sd_turbo"
    got = _picture(engine, turbo)
    own = load_workflow(RESOURCES / "workflows" / "txt2img.json", reg)
    for n in own.nodes:
        if n.type == "sampler":
            n.params.update(seed=5, steps=20, cfg=3.0, sampler="euler", scheduler="comfy_normal")
    own.find_node("Prompt").params["text"] = TEXT
    want = _picture(engine, own)
    corner = (slice(0, 8), slice(0, 8))  # the shape is on the right
    assert float(np.abs(got[corner].mean((0, 1)) - want[corner].mean((0, 1))).max()) < 30
    assert got.std() > 10
