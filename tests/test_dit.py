"""SD3.5 and Flux.1 through Studio's graph equal StableDiffusion3Pipeline / FluxPipeline
(tiny random components built in code, CPU, 64x64, 3 steps), from diffusers folders and from
the single files artists have (all-in-one, transformer files in both key layouts, separate
text encoders, 16-channel VAE), and fp8 / GGUF weights close to them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import dit_fixtures as fx  # noqa: E402

from studio.graph.workflow import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402

PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry"
SEED, STEPS = 7, 3


@pytest.fixture(scope="module")
def parts():
    sd3 = fx.tiny_sd3()
    no_t5 = {**sd3, "text_encoder_3": None, "tokenizer_3": None}
    return {"sd3": sd3, "sd3-no-t5": no_t5, "flux": fx.tiny_flux()}


@pytest.fixture(scope="module")
def root(tmp_path_factory, parts):
    """A models root: the tiny pipelines as diffusers folders and as single files."""
    root = tmp_path_factory.mktemp("dit-models")
    ck, dm, te, vae = (
        root / n for n in ("checkpoints", "diffusion_models", "text_encoders", "vae")
    )
    for d in (ck, dm, te, vae):
        d.mkdir()
    fx.sd3_pipeline(parts["sd3"]).save_pretrained(str(ck / "tiny-sd3"))
    fx.sd3_pipeline(parts["sd3-no-t5"]).save_pretrained(str(ck / "tiny-sd3-no-t5"))
    fx.flux_pipeline(parts["flux"]).save_pretrained(str(ck / "tiny-flux"))
    fx.sd3_all_in_one(parts["sd3"], ck / "tiny-sd35-aio.safetensors")
    flux_orig = fx.to_original(parts["flux"]["transformer"], "flux")
    fx.save(flux_orig, dm / "flux-orig.safetensors")
    fx.save(flux_orig, dm / "flux-comfy.safetensors", prefix="model.diffusion_model.")
    fx.save(fx.to_original(parts["sd3"]["transformer"], "sd3"), dm / "sd3-orig.safetensors")
    fx.save(fx.clip_file_state(parts["flux"]["text_encoder"]), te / "clip_l.safetensors")
    fx.save(fx.t5_file_state(parts["flux"]["text_encoder_2"]), te / "t5xxl.safetensors")
    fx.save(fx.ldm_vae(parts["flux"]["vae"]), vae / "ae.safetensors")
    return root


@pytest.fixture(scope="module")
def engine(root, tmp_path_factory):
    """One engine for the module: its model manager keeps the tiny models loaded between
    tests (each test's graph still runs its nodes anew: new workflows, new node ids)."""
    from studio.engine import Engine
    from studio.settings import Settings

    tmp = tmp_path_factory.mktemp("dit-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def _sampling(wf, model, clip, vae, *, cfg, sampler="euler", scheduler="normal", guidance=None):
    pos = wf.add_node("text_encode", {"text": PROMPT}).id
    neg = wf.add_node("text_encode", {"text": NEGATIVE}).id
    for n in (pos, neg):
        wf.connect(clip[0], clip[1], n, "clip")
    if guidance is not None:
        g = wf.add_node("flux_guidance", {"guidance": guidance}).id
        wf.connect(pos, "conditioning", g, "conditioning")
        pos = g
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    params = {"seed": SEED, "steps": STEPS, "cfg": cfg, "sampler": sampler}
    s = wf.add_node("sampler", {**params, "scheduler": scheduler, "denoise": 1.0}).id
    wf.connect(model[0], model[1], s, "model")
    wf.connect(pos, "conditioning", s, "positive")
    wf.connect(neg, "conditioning", s, "negative")
    wf.connect(lat, "latent", s, "latent")
    dec = wf.add_node("vae_decode").id
    wf.connect(s, "latent", dec, "latent")
    wf.connect(vae[0], vae[1], dec, "vae")
    out = wf.add_node("preview_image").id
    wf.connect(dec, "image", out, "images")
    return dec


def _run(engine, wf, dec) -> np.ndarray:
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def checkpoint_image(engine, ckpt: str, **kw) -> np.ndarray:
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": ckpt}).id
    dec = _sampling(wf, (c, "model"), (c, "clip"), (c, "vae"), **kw)
    return _run(engine, wf, dec)


def files_image(engine, unet: str, clips: list[str], vae: str, *, weight_dtype="default", **kw):
    wf = Workflow(installed_registry())
    m = wf.add_node("load_diffusion_model", {"unet_name": unet, "weight_dtype": weight_dtype}).id
    family = kw.pop("family")
    if len(clips) == 3:
        names = {f"clip_name{i + 1}": n for i, n in enumerate(clips)}
        c = wf.add_node("load_text_encoders_3", names).id
    else:
        c = wf.add_node(
            "load_text_encoders",
            {"clip_name1": clips[0], "clip_name2": clips[1], "type": family},
        ).id
    v = wf.add_node("load_vae", {"vae_name": vae, "latent_scale": family}).id
    dec = _sampling(wf, (m, "model"), (c, "clip"), (v, "vae"), **kw)
    return _run(engine, wf, dec)


def _flow_scheduler(config, sampler: str):
    if sampler == "euler":
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    if sampler == "heun":
        return diffusers.FlowMatchHeunDiscreteScheduler.from_config(config)
    return diffusers.DPMSolverMultistepScheduler.from_config(
        config,
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=config.get("shift", 1.0),
        use_dynamic_shifting=config.get("use_dynamic_shifting", False),
    )


def _pipe_image(pipe, sampler: str, **kw) -> np.ndarray:
    pipe.scheduler = _flow_scheduler(dict(pipe.scheduler.config), sampler)
    return pipe(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=STEPS,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
        **kw,
    ).images


def _close(got: np.ndarray, want: np.ndarray, bound: float = 1 / 255) -> float:
    assert got.shape == want.shape == (1, 64, 64, 3)
    diff = float(np.abs(got - want).max())
    assert diff <= bound, diff
    return diff


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_sd3_graph_equals_stable_diffusion_3_pipeline(engine, parts, sampler):
    got = checkpoint_image(engine, "tiny-sd3", cfg=5.0, sampler=sampler)
    want = _pipe_image(
        fx.sd3_pipeline(parts["sd3"]), sampler, negative_prompt=NEGATIVE, guidance_scale=5.0
    )
    _close(got, want)
    assert got.std() > 0.01  # a picture, not a flat fill


def test_sd3_without_t5_equals_the_pipeline_without_it(engine, parts, monkeypatch):
    # The Sampler cuts the 256 zero rows standing for T5 to one row with an ln(256) logit
    # bias (nodes/dit_context.py); the picture is still the pipeline's, which runs all 333.
    from nodes import dit_context

    lengths = []
    collapse = dit_context.collapse

    def spy(embeds):
        out, bias = collapse(embeds)
        lengths.append((embeds.shape[1], out.shape[1], bias))
        return out, bias

    monkeypatch.setattr(dit_context, "collapse", spy)
    got = checkpoint_image(engine, "tiny-sd3-no-t5", cfg=4.0)
    want = _pipe_image(
        fx.sd3_pipeline(parts["sd3-no-t5"]), "euler", negative_prompt=NEGATIVE, guidance_scale=4.0
    )
    _close(got, want)
    assert lengths == [(77 + 256, 78, pytest.approx(np.log(256)))]
    # With T5 its padding outputs differ by position: nothing is cut.
    lengths.clear()
    checkpoint_image(engine, "tiny-sd3", cfg=4.0)
    assert [(n, m) for n, m, _ in lengths] == [(77 + 256, 77 + 256)]


def test_sd3_transformer_on_the_cut_context_equals_it_on_the_whole(parts):
    # SD3.5-style blocks (a second attention, qk RMS norm, a context-pre-only last block);
    # a batch whose entries end in runs of different lengths (negative padded to the
    # positive's length, as the Sampler does): the shortest run is what is cut.
    from nodes import dit_context

    net = fx.tiny_sd3(False)["transformer"]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    clip = torch.randn(2, 77, 96, generator=gen)
    embeds = torch.cat([clip, torch.zeros(2, 256, 96)], dim=1)
    embeds[0, 77:90] = 0.0  # unchanged: already zero
    embeds[1, 70:77] = 0.0  # entry 1's run starts earlier: 263 rows
    pooled = torch.randn(2, 80, generator=gen)
    t = torch.tensor([900.0, 300.0])

    def run(e, **kw):
        with torch.no_grad():
            return net(
                hidden_states=x, encoder_hidden_states=e, pooled_projections=pooled,
                timestep=t, return_dict=False, **kw,
            )[0]  # fmt: skip

    whole = run(embeds)
    assert dit_context.prepare(net)
    cut, bias = dit_context.collapse(embeds)
    assert cut.shape[1] == 78 and bias == pytest.approx(np.log(256))
    got = run(cut, joint_attention_kwargs={"context_bias": bias})
    assert (got - whole).abs().max() <= 1e-5 * whole.abs().max()
    assert torch.equal(run(embeds), whole)  # the swapped processor without a bias: the same
    # Without the bias the cut context is a different model: the bias is what makes it exact.
    assert (run(cut) - whole).abs().max() > 1e-3
    # Made on the CPU always; on CUDA (no flash attention with a bias) where it removes a
    # quarter of the joint sequence or more: studio-tiny-flow yes, SD3 at 1024x1024 no.
    assert dit_context.pays(255, 64 + 333, torch.device("cpu"))
    assert dit_context.pays(255, 64 + 333, torch.device("cuda"))
    assert not dit_context.pays(255, 4096 + 333, torch.device("cuda"))
    assert dit_context.pays(255, 4096 + 333, torch.device("cpu"))
    # Not an SD3 transformer, or a processor the cut does not know: left as it is.
    assert not dit_context.prepare(torch.nn.Linear(2, 2))
    net.set_attn_processor(diffusers.models.attention_processor.AttnProcessor2_0())
    assert not dit_context.prepare(net)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_flux_graph_equals_flux_pipeline(engine, parts, sampler):
    got = checkpoint_image(engine, "tiny-flux", cfg=1.0, sampler=sampler, guidance=2.5)
    want = _pipe_image(fx.flux_pipeline(parts["flux"]), sampler, guidance_scale=2.5)
    _close(got, want)


def test_sd35_all_in_one_file_equals_its_folder(engine):
    folder = checkpoint_image(engine, "tiny-sd3", cfg=5.0)
    single = checkpoint_image(engine, "tiny-sd35-aio.safetensors", cfg=5.0)
    _close(single, folder)


@pytest.mark.parametrize("unet", ["flux-orig.safetensors", "flux-comfy.safetensors"])
def test_flux_files_in_both_key_layouts_equal_the_folder(engine, unet):
    folder = checkpoint_image(engine, "tiny-flux", cfg=1.0, guidance=3.5)
    single = files_image(
        engine,
        unet,
        ["t5xxl.safetensors", "clip_l.safetensors"],  # any order: the files say which is which
        "ae.safetensors",
        family="flux",
        cfg=1.0,
        guidance=3.5,
    )
    _close(single, folder)


def test_fp8_weights_are_the_fp8_rounding_and_the_image_stays_close(engine, parts, root):
    from nodes import dit

    source = dit.inspect_diffusion_model(
        root / "diffusion_models" / "flux-orig.safetensors", "f", ("id",), "fp8_e4m3fn"
    )
    net = dit.load_component(source, "transformer", torch.float32, "t")
    want = parts["flux"]["transformer"].state_dict()
    stored = dict(net.named_parameters())
    fp8 = [k for k, p in stored.items() if p.dtype == torch.float8_e4m3fn]
    assert fp8, "no layer is stored in fp8"
    for k in fp8:
        rounded = want[k].to(torch.float8_e4m3fn).float()
        assert torch.equal(stored[k].float(), rounded), k
    default = files_image(
        engine, "flux-orig.safetensors", ["clip_l.safetensors", "t5xxl.safetensors"],
        "ae.safetensors", family="flux", cfg=1.0,
    )  # fmt: skip
    low = files_image(
        engine, "flux-orig.safetensors", ["clip_l.safetensors", "t5xxl.safetensors"],
        "ae.safetensors", family="flux", cfg=1.0, weight_dtype="fp8_e4m3fn",
    )  # fmt: skip
    # Measured on the tiny model: about 0.02 (5/255); 8-bit weights are not exact.
    diff = _close(low, default, bound=0.1)
    assert diff > 0  # the fp8 path really ran


def test_a_wrong_file_gets_a_message_naming_what_it_looks_like(engine, root):
    fx.save(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
        root / "diffusion_models" / "sd15.safetensors",
    )
    wf = Workflow(installed_registry())
    n = wf.add_node("load_diffusion_model", {"unet_name": "sd15.safetensors"}).id
    result = engine.run(wf, targets=[n])
    (msg,) = result.errors.values()
    assert "Stable Diffusion (UNet) checkpoint" in msg and "Load Checkpoint" in msg


def test_family_is_read_from_tensors_not_the_file_name(root):
    from nodes import dit
    from nodes.sdload import WeightsFile

    for name, kind, prefix in [
        ("flux-orig.safetensors", "flux", ""),
        ("flux-comfy.safetensors", "flux", "model.diffusion_model."),
        ("sd3-orig.safetensors", "sd3", ""),
    ]:
        shapes = WeightsFile(root / "diffusion_models" / name, name).shapes
        assert dit.sniff(shapes) == dit.Sniffed(kind, prefix, dit.sniff(shapes).what)
    te = WeightsFile(root / "text_encoders" / "t5xxl.safetensors", "t").shapes
    assert dit.sniff(te).kind == "t5"
    aio = WeightsFile(root / "checkpoints" / "tiny-sd35-aio.safetensors", "a").shapes
    assert dit.sniff(aio).kind == "sd3_all_in_one"


def test_a_sampler_that_does_not_apply_is_a_clear_error(engine):
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd3"}).id
    dec = _sampling(wf, (c, "model"), (c, "clip"), (c, "vae"), cfg=2.0, sampler="ddim")
    result = engine.run(wf)
    assert not result.ok
    assert any("does not apply to flow-matching" in m for m in result.errors.values()), dec


def test_t5_prompt_too_long_is_refused_with_the_limit(engine):
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-flux"}).id
    t = wf.add_node("text_encode", {"text": "red " * 700}).id
    wf.connect(c, "clip", t, "clip")
    result = engine.run(wf, targets=[t])
    msg = result.errors[t]
    assert "512" in msg and "T5 tokens" in msg


def test_gguf_weights_dequantise_to_the_originals_and_the_image_stays_close(engine, parts, root):
    pytest.importorskip("gguf")
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from nodes import dit

    orig = fx.to_original(parts["flux"]["transformer"], "flux")
    path = fx.save_gguf(orig, root / "diffusion_models" / "flux-q8.gguf")
    source = dit.inspect_diffusion_model(path, "flux-q8.gguf", ("id",), "default")
    net = dit.load_component(source, "transformer", torch.float32, "t")
    want = parts["flux"]["transformer"].state_dict()
    quantised = 0
    for k, p in net.named_parameters():
        if hasattr(p, "quant_type"):
            quantised += 1
            got = dequantize_gguf_tensor(p).float()
        else:
            got = p.detach().float()
        # Q8_0: 8 bits per weight, a scale per 32: error below 1 % of the tensor's largest.
        assert (got - want[k]).abs().max() <= 0.01 * want[k].abs().max() + 1e-6, k
    assert quantised > 0
    default = files_image(
        engine, "flux-orig.safetensors", ["clip_l.safetensors", "t5xxl.safetensors"],
        "ae.safetensors", family="flux", cfg=1.0,
    )  # fmt: skip
    q8 = files_image(
        engine, "flux-q8.gguf", ["clip_l.safetensors", "t5xxl.safetensors"],
        "ae.safetensors", family="flux", cfg=1.0,
    )  # fmt: skip
    diff = _close(q8, default, bound=0.05)  # measured on the tiny model: see the notes
    assert diff > 0


def test_a_flux_lora_in_the_diffusers_layout_equals_the_pipeline_with_it(engine, parts, root):
    from peft import LoraConfig, get_peft_model_state_dict

    lora_net = fx.tiny_flux()["transformer"]
    torch.manual_seed(11)
    lora_net.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False
        )
    )
    (root / "loras").mkdir(exist_ok=True)
    diffusers.FluxPipeline.save_lora_weights(
        str(root / "loras"),
        transformer_lora_layers=get_peft_model_state_dict(lora_net),
        weight_name="tiny_flux_lora.safetensors",
    )
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-flux"}).id
    lo = wf.add_node(
        "load_lora",
        {"lora_name": "tiny_flux_lora.safetensors", "strength_model": 1.0, "strength_clip": 1.0},
    ).id
    wf.connect(c, "model", lo, "model")
    wf.connect(c, "clip", lo, "clip")
    dec = _sampling(wf, (lo, "model"), (lo, "clip"), (c, "vae"), cfg=1.0, guidance=3.5)
    got = _run(engine, wf, dec)
    pipe = fx.flux_pipeline(fx.tiny_flux())
    pipe.load_lora_weights(str(root / "loras"), weight_name="tiny_flux_lora.safetensors")
    want = _pipe_image(pipe, "euler", guidance_scale=3.5)
    _close(got, want)
    plain = checkpoint_image(engine, "tiny-flux", cfg=1.0, guidance=3.5)
    assert np.abs(plain - got).max() > 1 / 255  # the LoRA did change the picture


def test_model_sampling_sd3_shift_equals_the_pipeline_with_that_shift(engine, parts):
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd3"}).id
    ms = wf.add_node("model_sampling_sd3", {"shift": 6.0}).id
    wf.connect(c, "model", ms, "model")
    dec = _sampling(wf, (ms, "model"), (c, "clip"), (c, "vae"), cfg=5.0)
    got = _run(engine, wf, dec)
    pipe = fx.sd3_pipeline(parts["sd3"])
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, shift=6.0
    )
    want = pipe(
        PROMPT, negative_prompt=NEGATIVE, guidance_scale=5.0, height=64, width=64,
        num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images  # fmt: skip
    _close(got, want)


def test_a_comfyui_flux_prompt_imports_onto_these_nodes():
    from studio.graph.importers.comfyui import import_comfyui

    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
              "weight_dtype": "fp8_e4m3fn_fast"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
              "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["2", 0]}},
        "4": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["3", 0]}},
        "5": {"class_type": "EmptySD3LatentImage",
              "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    }  # fmt: skip
    result = import_comfyui(prompt, installed_registry(), source="flux.json")
    types = sorted(n.type for n in result.workflow.nodes)
    assert types == [
        "empty_latent", "flux_guidance", "load_diffusion_model", "load_text_encoders",
        "text_encode",
    ]  # fmt: skip
    loader = next(n for n in result.workflow.nodes if n.type == "load_diffusion_model")
    assert loader.params["weight_dtype"] == "fp8_e4m3fn"
    assert any("fp8_e4m3fn_fast" in line for line in result.report)
