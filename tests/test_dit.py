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
    return {
        "sd3": sd3, "sd3-no-t5": no_t5, "flux": fx.tiny_flux(),
        "flux-schnell": fx.tiny_flux(guidance=False),
    }  # fmt: skip


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
    fx.flux_all_in_one(parts["flux"], ck / "tiny-flux-aio.safetensors")
    fx.flux_all_in_one(parts["flux"], ck / "tiny-flux-aio-fp8.safetensors", fp8=True)
    fx.flux_all_in_one(parts["flux-schnell"], ck / "tiny-flux-schnell-aio.safetensors")
    (dm / "flux-aio.safetensors").hardlink_to(ck / "tiny-flux-aio.safetensors")
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


def test_comfyui_schedules_run_on_flow_models_as_the_flow_schedule_of_their_name(engine):
    # An imported KSampler's scheduler (comfy_sgm_uniform in ComfyUI's SD3.5 example,
    # comfy_simple in the Flux ones) runs as Studio's flow schedule nearest it.
    from nodes import dit

    assert dit.flow_schedule("comfy_sgm_uniform") == "simple"
    assert dit.flow_schedule("comfy_karras") == "karras"
    got = checkpoint_image(engine, "tiny-sd3", cfg=5.0, scheduler="comfy_sgm_uniform")
    want = checkpoint_image(engine, "tiny-sd3", cfg=5.0, scheduler="simple")
    assert np.array_equal(got, want)
    assert not np.array_equal(want, checkpoint_image(engine, "tiny-sd3", cfg=5.0))  # normal
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd3"}).id
    dec = _sampling(
        wf, (c, "model"), (c, "clip"), (c, "vae"), cfg=2.0, scheduler="comfy_kl_optimal"
    )
    result = engine.run(wf)
    assert any("'comfy_kl_optimal' does not apply" in m for m in result.errors.values()), dec


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


def test_a_flux_all_in_one_file_equals_its_folder_and_its_transformer_loads_alone(engine):
    folder = checkpoint_image(engine, "tiny-flux", cfg=1.0, guidance=3.5)
    single = checkpoint_image(engine, "tiny-flux-aio.safetensors", cfg=1.0, guidance=3.5)
    _close(single, folder)
    # Load Diffusion Model on the same file: its transformer, beside separate files.
    alone = files_image(
        engine, "flux-aio.safetensors", ["clip_l.safetensors", "t5xxl.safetensors"],
        "ae.safetensors", family="flux", cfg=1.0, guidance=3.5,
    )  # fmt: skip
    _close(alone, folder)


def test_an_fp8_flux_all_in_one_file_keeps_fp8_weights_and_equals_their_rounding(
    engine, parts, root
):
    from nodes import dit
    from nodes.sdload import WeightsFile

    path = root / "checkpoints" / "tiny-flux-aio-fp8.safetensors"
    shapes = WeightsFile(path, "a").shapes
    found = dit.sniff(shapes)
    source = dit.inspect_all_in_one(path, "a", ("id",), shapes, found.prefix, "flux")
    for component in ("transformer", "text_encoder_2"):  # the transformer and T5
        net = dit.load_component(source, component, torch.float32, "t")
        stored = [p.dtype for p in net.parameters()]
        assert stored.count(torch.float8_e4m3fn) > len(stored) // 2, component  # 8 bits
    got = checkpoint_image(engine, "tiny-flux-aio-fp8.safetensors", cfg=1.0, guidance=2.5)
    rounded = {
        **parts["flux"],
        "transformer": fx.fp8_rounded(parts["flux"]["transformer"]),
        "text_encoder_2": fx.fp8_rounded(parts["flux"]["text_encoder_2"]),
    }
    want = _pipe_image(fx.flux_pipeline(rounded), "euler", guidance_scale=2.5)
    _close(got, want)
    full = checkpoint_image(engine, "tiny-flux-aio.safetensors", cfg=1.0, guidance=2.5)
    assert np.abs(got - full).max() > 0  # the fp8 weights really are the ones used

    # A file keeping a layer wide (the last one): that layer stays wide, as stored.
    from safetensors.torch import load_file

    state = load_file(str(path))
    wide = load_file(str(root / "checkpoints" / "tiny-flux-aio.safetensors"))
    for k in ("final_layer.linear.weight", "final_layer.linear.bias"):
        state[f"model.diffusion_model.{k}"] = wide[f"model.diffusion_model.{k}"]
    mixed = fx.save(state, root / "checkpoints" / "flux-aio-mixed.safetensors")
    source = dit.inspect_all_in_one(mixed, "m", ("m",), WeightsFile(mixed, "m").shapes,
                                    found.prefix, "flux")  # fmt: skip
    net = dit.load_component(source, "transformer", torch.float32, "t")
    want = parts["flux"]["transformer"].proj_out.weight
    assert net.proj_out.weight.dtype == torch.float32 and torch.equal(net.proj_out.weight, want)
    assert net.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn


def test_load_diffusion_model_keeps_a_file_stored_in_fp8_in_fp8_by_default(engine, parts, root):
    """As ComfyUI's UNETLoader "default": an fp8 file's transformer is not widened (an
    artist's flux1-dev-fp8 stays at half the memory), and gives the fp8 rounding's picture."""
    from nodes import dit

    path = root / "checkpoints" / "tiny-flux-aio-fp8.safetensors"
    source = dit.inspect_diffusion_model(path, "a", ("id",), "default")
    net = dit.load_component(source, "transformer", torch.float32, "t")
    stored = [p.dtype for p in net.parameters()]
    assert stored.count(torch.float8_e4m3fn) > len(stored) // 2
    wide = root / "checkpoints" / "tiny-flux-aio.safetensors"
    net = dit.load_component(
        dit.inspect_diffusion_model(wide, "b", ("id2",), "default"), "transformer",
        torch.float32, "t",
    )  # fmt: skip
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_a_flux_schnell_all_in_one_file_equals_the_schnell_pipeline(engine, parts):
    # schnell has no guidance embedding and samples without a shift (its scheduler config).
    got = checkpoint_image(engine, "tiny-flux-schnell-aio.safetensors", cfg=1.0)
    schnell = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    want = _pipe_image(fx.flux_pipeline(parts["flux-schnell"], schnell), "euler")
    _close(got, want)
    assert got.std() > 0.01


def test_a_flux_all_in_one_file_missing_a_part_is_a_clear_error(engine, parts, root):
    # ("scaled fp8" files are read: tests/test_scaled_fp8.py)
    from safetensors.torch import load_file

    ck = root / "checkpoints"
    state = load_file(str(ck / "tiny-flux-aio.safetensors"))
    no_t5 = {k: v for k, v in state.items() if not k.startswith("text_encoders.t5xxl.")}
    fx.save(no_t5, ck / "flux-no-t5.safetensors")
    for name, words in [
        ("flux-no-t5.safetensors", ["Flux.1 checkpoint without its T5-XXL", "Load Text Encoders"]),
    ]:
        wf = Workflow(installed_registry())
        n = wf.add_node("load_checkpoint", {"ckpt_name": name}).id
        msg = engine.run(wf, targets=[n]).errors[n]
        assert name in msg and all(w in msg for w in words), msg


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
    for name in ("tiny-flux-aio.safetensors", "tiny-flux-aio-fp8.safetensors"):
        aio = WeightsFile(root / "checkpoints" / name, "a").shapes
        assert dit.sniff(aio) == dit.Sniffed(
            "flux_all_in_one", "model.diffusion_model.", "a Flux.1 all-in-one checkpoint"
        )


def test_a_sampler_that_does_not_apply_is_a_clear_error(engine):
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd3"}).id
    dec = _sampling(wf, (c, "model"), (c, "clip"), (c, "vae"), cfg=2.0, sampler="ddpm")
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


def test_a_comfyui_flux_checkpoint_prompt_imports_and_validates():
    # ComfyUI's Flux example: flux1-dev-fp8 all-in-one through CheckpointLoaderSimple.
    from comfyui_files import txt2img_api

    from studio.engine.validate import plan_workflow
    from studio.graph.importers.comfyui import import_comfyui

    prompt = txt2img_api(cfg=1.0)
    prompt["4"]["inputs"]["ckpt_name"] = "flux1-dev-fp8.safetensors"
    prompt["35"] = {
        "class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]},
    }  # fmt: skip
    prompt["3"]["inputs"]["positive"] = ["35", 0]
    result = import_comfyui(prompt, installed_registry(), source="flux_dev_checkpoint.json")
    wf = result.workflow
    loader = next(n for n in wf.nodes if n.type == "load_checkpoint")
    assert loader.params["ckpt_name"] == "flux1-dev-fp8.safetensors"
    assert "flux_guidance" in {n.type for n in wf.nodes}
    assert plan_workflow(wf, wf.registry).problems == []


# -- Sampler (Advanced) and inpainting with DiTs ------------------------------------------------

DIT_SETUPS = {  # checkpoint, cfg, Flux guidance
    "sd3": ("tiny-sd3", 5.0, None),
    "flux": ("tiny-flux", 1.0, 2.5),
}


def _prompts(wf, family: str) -> dict[str, str]:
    ckpt, _, guidance = DIT_SETUPS[family]
    ids = {"ckpt": wf.add_node("load_checkpoint", {"ckpt_name": ckpt}).id}
    ids["pos"] = wf.add_node("text_encode", {"text": PROMPT}).id
    ids["neg"] = wf.add_node("text_encode", {"text": NEGATIVE}).id
    for n in (ids["pos"], ids["neg"]):
        wf.connect(ids["ckpt"], "clip", n, "clip")
    if guidance is not None:
        g = wf.add_node("flux_guidance", {"guidance": guidance}).id
        wf.connect(ids["pos"], "conditioning", g, "conditioning")
        ids["pos"] = g
    return ids


def _sampler_node(wf, ids, family, latent_from, kind="sampler", **params):
    _, cfg, _ = DIT_SETUPS[family]
    base = {"seed": SEED, "steps": STEPS, "cfg": cfg, "sampler": "euler", "scheduler": "normal"}
    if kind == "sampler":
        base["denoise"] = 1.0
    node = wf.add_node(kind, base | params).id
    wf.connect(ids["ckpt"], "model", node, "model")
    for side in ("pos", "neg"):  # a node id (its conditioning output) or (node, output)
        src = ids[side] if isinstance(ids[side], tuple) else (ids[side], "conditioning")
        wf.connect(*src, node, "positive" if side == "pos" else "negative")
    wf.connect(*latent_from, node, "latent")
    return node


def _decode(wf, ids, latent_node) -> str:
    dec = wf.add_node("vae_decode").id
    wf.connect(latent_node, "latent", dec, "latent")
    wf.connect(ids["ckpt"], "vae", dec, "vae")
    return dec


def _outputs(engine, wf, targets: list[str]) -> dict:
    result = engine.run(wf, targets=targets)
    assert result.ok, result.errors
    return result.outputs


@pytest.mark.parametrize(
    ("family", "sampler", "split"),
    [("sd3", "euler", 1), ("sd3", "heun", 1), ("flux", "euler", 2), ("flux", "heun", 1)],
)
def test_two_advanced_passes_with_leftover_noise_equal_one_sampler_run(
    engine, family, sampler, split
):
    """Steps 0..k keeping the leftover noise, then k..end adding none: the picture of one
    Sampler run of all steps (as with KSamplerAdvanced in ComfyUI)."""
    wf = Workflow(installed_registry())
    ids = _prompts(wf, family)
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    one = _sampler_node(wf, ids, family, (lat, "latent"), sampler=sampler)
    first = _sampler_node(
        wf, ids, family, (lat, "latent"), kind="sampler_advanced", sampler=sampler,
        end_at_step=split, return_with_leftover_noise=True,
    )  # fmt: skip
    second = _sampler_node(
        wf, ids, family, (first, "latent"), kind="sampler_advanced", sampler=sampler,
        start_at_step=split, add_noise=False, seed=99,
    )  # fmt: skip
    d_one, d_two = _decode(wf, ids, one), _decode(wf, ids, second)
    out = _outputs(engine, wf, [d_one, d_two, first])
    got, want = out[d_two]["image"].numpy(), out[d_one]["image"].numpy()
    _close(got, want)
    assert want.std() > 0.01
    one_latent = out[one]["latent"]["samples"]
    assert (out[first]["latent"]["samples"] - one_latent).abs().max() > 0.1  # not the first pass


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_stopping_early_without_leftover_noise_gives_the_clean_prediction(engine, family):
    """end_at_step without leftover noise: ComfyUI's last step to noise level 0. For euler:
    x0 = x1 - sigma1 * v, with v read off the step x1 -> x2 the leftover run takes."""
    from nodes import dit

    wf = Workflow(installed_registry())
    ids = _prompts(wf, family)
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    adv = "sampler_advanced"
    x1 = _sampler_node(wf, ids, family, (lat, "latent"), kind=adv, end_at_step=1,
                       return_with_leftover_noise=True)  # fmt: skip
    x2 = _sampler_node(wf, ids, family, (lat, "latent"), kind=adv, end_at_step=2,
                       return_with_leftover_noise=True)  # fmt: skip
    clean = _sampler_node(wf, ids, family, (lat, "latent"), kind=adv, end_at_step=2)
    dpm = _sampler_node(wf, ids, family, (lat, "latent"), kind=adv, end_at_step=2,
                        sampler="dpmpp_2m")  # fmt: skip
    out = _outputs(engine, wf, [x1, x2, clean, dpm])
    a, b, c = (out[n]["latent"]["samples"] for n in (x1, x2, clean))
    cfg = dict(engine_model_config(engine, family))
    sched, euler = dit.make_flow_scheduler(cfg, "euler", "normal")
    mu = dit.calculate_shift(16, cfg) if cfg.get("use_dynamic_shifting") else None
    dit._set_timesteps(sched, euler, "euler", "normal", STEPS, mu, family, torch.device("cpu"))
    s1, s2 = float(sched.sigmas[1]), float(sched.sigmas[2])
    v = (b - a) / (s2 - s1)
    assert torch.allclose(c, a - s1 * v, atol=1e-4, rtol=1e-4)
    # (the tiny transformers move the latent little: differences are small but far above
    # the tolerance above)
    assert (c - b).abs().max() > 5e-3
    # dpmpp_2m stops early too (the UNet schedulers cannot: no clean prediction there)
    assert (out[dpm]["latent"]["samples"] - b).abs().max() > 5e-3


def engine_model_config(engine, family: str) -> dict:
    ckpt = DIT_SETUPS[family][0]
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": ckpt}).id
    out = _outputs(engine, wf, [c])
    return out[c]["model"].scheduler_config


@pytest.fixture(scope="module")
def photo_and_mask(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255  # repaint the left half
    Image.fromarray(mask).save(root / "mask.png")
    return root / "photo.png", root / "mask.png"


def _inpaint_pipe_image(parts, family: str, photo, mask, denoise: float) -> np.ndarray:
    """The inpaint pipeline's picture (StableDiffusion3InpaintPipeline decodes without the
    VAE's shift factor, unlike every other SD3 pipeline: its latent is decoded here as
    StableDiffusion3Pipeline decodes)."""
    from PIL import Image

    _, cfg, guidance = DIT_SETUPS[family]
    cls = (
        diffusers.StableDiffusion3InpaintPipeline
        if family == "sd3"
        else diffusers.FluxInpaintPipeline
    )
    pipe = cls(**parts[family])
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": cfg} if family == "sd3" else {}
    if guidance is not None:
        kw["guidance_scale"] = guidance
    out = pipe(
        PROMPT, image=Image.open(photo).convert("RGB"), mask_image=Image.open(mask).convert("L"),
        height=64, width=64, strength=denoise, num_inference_steps=STEPS,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="latent" if family == "sd3" else "np", **kw,
    ).images  # fmt: skip
    if family == "flux":
        return out
    vae = pipe.vae
    with torch.no_grad():
        pixels = vae.decode(out / vae.config.scaling_factor + vae.config.shift_factor)[0]
    return pipe.image_processor.postprocess(pixels, output_type="np")


@pytest.mark.parametrize("denoise", [1.0, 0.6])
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_inpainting_equals_the_inpaint_pipeline_and_keeps_the_unmasked_latent(
    engine, parts, photo_and_mask, family, denoise
):
    """VAE Encode + Set Latent Noise Mask + Sampler equal StableDiffusion3InpaintPipeline /
    FluxInpaintPipeline (same seed, strength = denoise); outside the mask the latent is the
    encoded image's (the VAE's sample the pipelines draw), and Composite Masked puts back the
    original pixels there."""
    from diffusers.utils.torch_utils import randn_tensor

    photo, mask = photo_and_mask
    wf = Workflow(installed_registry())
    ids = _prompts(wf, family)
    add, c = wf.add_node, wf.connect
    img = add("load_image", {"image": str(photo)}).id
    mask_img = add("load_image", {"image": str(mask)}).id
    m = add("mask_from_image", {"channel": "red"}).id
    enc, noise_mask = add("vae_encode").id, add("set_latent_noise_mask").id
    c(mask_img, "image", m, "image")
    c(img, "image", enc, "image")
    c(ids["ckpt"], "vae", enc, "vae")
    c(enc, "latent", noise_mask, "latent")
    c(m, "mask", noise_mask, "mask")
    s = _sampler_node(wf, ids, family, (noise_mask, "latent"), denoise=denoise)
    dec = _decode(wf, ids, s)
    comp = add("composite_masked").id
    c(img, "image", comp, "original")
    c(dec, "image", comp, "changed")
    c(m, "mask", comp, "mask")
    out = _outputs(engine, wf, [comp, enc, img])
    got = out[dec]["image"].numpy()
    want = _inpaint_pipe_image(parts, family, photo, mask, denoise)
    _close(got, want)
    # outside the mask (the right half: latent columns 4..7), the encoded image as drawn
    encoded = out[enc]["latent"]
    drawn = encoded["samples"] + encoded["posterior_std"] * randn_tensor(
        tuple(encoded["samples"].shape), generator=torch.Generator("cpu").manual_seed(SEED)
    )
    after = out[s]["latent"]["samples"]
    assert torch.allclose(after[..., 4:], drawn[..., 4:], atol=1e-5)
    assert (after[..., :4] - drawn[..., :4]).abs().max() > 0.05  # the left half repainted
    assert torch.equal(out[comp]["image"][:, :, 32:], out[img]["image"][:, :, 32:])


def test_a_unet_controlnet_on_a_dit_prompt_is_an_error_naming_both_families(
    engine, root, photo_and_mask
):
    import diffusion_fixtures as sdfx

    cn = diffusers.ControlNetModel.from_unet(
        sdfx.tiny_sd1()["unet"], conditioning_embedding_out_channels=(4, 8, 8, 8)
    )
    cn.save_pretrained(root / "controlnet" / "sd1-edges")
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "sd3")
    load = wf.add_node("load_controlnet", {"control_net_name": "sd1-edges"}).id
    img = wf.add_node("load_image", {"image": str(photo_and_mask[0])}).id
    apply = wf.add_node("apply_controlnet", {"strength": 1.0}).id
    for a, b, c, d in [
        (ids["pos"], "conditioning", apply, "positive"),
        (ids["neg"], "conditioning", apply, "negative"),
        (load, "control_net", apply, "control_net"),
        (img, "image", apply, "image"),
    ]:
        wf.connect(a, b, c, d)
    ids["pos"], ids["neg"] = apply, apply
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    s = wf.add_node(
        "sampler", {"seed": SEED, "steps": STEPS, "cfg": 5.0, "sampler": "euler",
                    "scheduler": "normal", "denoise": 1.0},
    ).id  # fmt: skip
    wf.connect(ids["ckpt"], "model", s, "model")
    wf.connect(apply, "positive", s, "positive")
    wf.connect(apply, "negative", s, "negative")
    wf.connect(lat, "latent", s, "latent")
    result = engine.run(wf, targets=[s])
    msg = result.errors[s]
    assert "Apply ControlNet" in msg and "sd1-edges" in msg
    assert "UNet" in msg and "Stable Diffusion 3.x" in msg
    assert "Traceback" not in msg


def test_an_sd3_controlnet_file_equals_the_sd3_controlnet_pipeline(
    engine, parts, root, photo_and_mask, monkeypatch
):
    """A single-file SD3 ControlNet, told apart by its keys, through Apply ControlNet (with
    the VAE) equals StableDiffusion3ControlNetPipeline; the pipeline encodes the control image
    with a sample from torch's global generator, Studio with the VAE's mean: the pipeline
    runs here with the mean too."""
    from PIL import Image
    from safetensors.torch import save_file

    cn = fx.sd3_controlnet(parts["sd3"]["transformer"])
    (root / "controlnet").mkdir(exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in cn.state_dict().items()},
        str(root / "controlnet" / "sd3-canny.safetensors"),
    )
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, 8:28] = 255
    Image.fromarray(arr).save(root / "edges.png")

    wf = Workflow(installed_registry())
    ids = _prompts(wf, "sd3")
    load = wf.add_node("load_controlnet", {"control_net_name": "sd3-canny.safetensors"}).id
    img = wf.add_node("load_image", {"image": str(root / "edges.png")}).id
    apply = wf.add_node("apply_controlnet", {"strength": 0.8, "end_percent": 0.7}).id
    for a, b, c, d in [
        (ids["pos"], "conditioning", apply, "positive"),
        (ids["neg"], "conditioning", apply, "negative"),
        (load, "control_net", apply, "control_net"),
        (img, "image", apply, "image"),
        (ids["ckpt"], "vae", apply, "vae"),
    ]:
        wf.connect(a, b, c, d)
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    plain = _sampler_node(wf, ids, "sd3", (lat, "latent"))
    ids["pos"], ids["neg"] = (apply, "positive"), (apply, "negative")
    controlled = _sampler_node(wf, ids, "sd3", (lat, "latent"))
    dec = _decode(wf, ids, controlled)
    out = _outputs(engine, wf, [dec, plain])
    got = out[dec]["image"].numpy()

    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(
        DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean
    )
    pipe = diffusers.StableDiffusion3ControlNetPipeline(**parts["sd3"], controlnet=cn)
    want = _pipe_image(
        pipe, "euler", negative_prompt=NEGATIVE, guidance_scale=5.0,
        control_image=Image.open(root / "edges.png").convert("RGB"),
        controlnet_conditioning_scale=0.8, control_guidance_end=0.7,
    )  # fmt: skip
    _close(got, want)
    moved = out[controlled]["latent"]["samples"] - out[plain]["latent"]["samples"]
    assert moved.abs().max() > 1e-2  # the ControlNet did steer


def _controlled_by(wf, ids, control_net: str, image, **params) -> str:
    """Apply ControlNet (with the checkpoint's VAE) on both prompts of ``ids``."""
    load = wf.add_node("load_controlnet", {"control_net_name": control_net}).id
    img = wf.add_node("load_image", {"image": str(image)}).id
    apply = wf.add_node("apply_controlnet", params).id
    for a, b, c, d in [
        (ids["pos"], "conditioning", apply, "positive"),
        (ids["neg"], "conditioning", apply, "negative"),
        (load, "control_net", apply, "control_net"),
        (img, "image", apply, "image"),
        (ids["ckpt"], "vae", apply, "vae"),
    ]:
        wf.connect(a, b, c, d)
    ids["pos"], ids["neg"] = (apply, "positive"), (apply, "negative")
    return load


def test_an_official_sd35_controlnet_file_equals_the_sd3_controlnet_pipeline(
    engine, root, photo_and_mask, monkeypatch
):
    """Stability's own SD3.5 ControlNet layout (canny / depth / blur for SD3.5 Large: fused
    q, k, v, no prompt stream, the model's patch embedding, the real pooled prompt) read
    from its tensor names equals StableDiffusion3ControlNetPipeline with the diffusers
    model its conversion script makes (the VAE's mean in both, as above)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from PIL import Image

    large = fx.tiny_sd35_large()
    fx.sd3_pipeline(large).save_pretrained(str(root / "checkpoints" / "tiny-sd35-large"))
    cn = fx.sd35_official_controlnet(large["transformer"])
    (root / "controlnet").mkdir(exist_ok=True)
    fx.save(fx.sd35_controlnet_original(cn), root / "controlnet" / "sd35-large-canny.safetensors")
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[12:40, 20:52] = 255
    Image.fromarray(arr).save(root / "edges-large.png")

    wf = Workflow(installed_registry())
    ids = {"ckpt": wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd35-large"}).id}
    ids["pos"] = wf.add_node("text_encode", {"text": PROMPT}).id
    ids["neg"] = wf.add_node("text_encode", {"text": NEGATIVE}).id
    for n in (ids["pos"], ids["neg"]):
        wf.connect(ids["ckpt"], "clip", n, "clip")
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    plain = _sampler_node(wf, ids, "sd3", (lat, "latent"))
    load = _controlled_by(
        wf, ids, "sd35-large-canny.safetensors", root / "edges-large.png",
        strength=0.7, end_percent=0.8,
    )  # fmt: skip
    controlled = _sampler_node(wf, ids, "sd3", (lat, "latent"))
    dec = _decode(wf, ids, controlled)
    out = _outputs(engine, wf, [dec, plain, load])
    handle = out[load]["control_net"]
    assert handle.family == "sd3" and handle.config["use_pos_embed"] is False
    assert handle.config["joint_attention_dim"] is None
    got = out[dec]["image"].numpy()

    monkeypatch.setattr(
        DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean
    )
    pipe = diffusers.StableDiffusion3ControlNetPipeline(**large, controlnet=cn)
    want = _pipe_image(
        pipe, "euler", negative_prompt=NEGATIVE, guidance_scale=5.0,
        control_image=Image.open(root / "edges-large.png").convert("RGB"),
        controlnet_conditioning_scale=0.7, control_guidance_end=0.8,
    )  # fmt: skip
    _close(got, want)
    moved = out[controlled]["latent"]["samples"] - out[plain]["latent"]["samples"]
    assert moved.abs().max() > 1e-2  # the ControlNet did steer

    # On a model of another width (SD3 Medium's kind): a clear error, not a shape mismatch.
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "sd3")
    _controlled_by(wf, ids, "sd35-large-canny.safetensors", root / "edges-large.png")
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    s = _sampler_node(wf, ids, "sd3", (lat, "latent"))
    msg = engine.run(wf, targets=[s]).errors[s]
    assert "sd35-large-canny.safetensors" in msg and "SD3.5 Large" in msg, msg


def test_sd3_controlnet_folder_loads_and_wrong_pairings_are_clear_errors(engine, parts, root):
    """An SD3 ControlNet folder loads as SD3; on a UNet model, or without a VAE, the error
    names the ControlNet and both families."""
    import diffusion_fixtures as sdfx

    fx.sd3_controlnet(parts["sd3"]["transformer"]).save_pretrained(
        root / "controlnet" / "sd3-depth"
    )
    sdfx.save_folder(sdfx.sd1_pipeline(sdfx.tiny_sd1()), root / "checkpoints" / "tiny-sd1")
    wf = Workflow(installed_registry())
    load = wf.add_node("load_controlnet", {"control_net_name": "sd3-depth"}).id
    assert _outputs(engine, wf, [load])[load]["control_net"].family == "sd3"

    arr = np.zeros((64, 64, 3), np.uint8)
    from PIL import Image

    Image.fromarray(arr).save(root / "black.png")
    for ckpt, with_vae, words in [
        ("tiny-sd1", True, ["sd3-depth", "Stable Diffusion 3.x", "UNet"]),
        ("tiny-sd3", False, ["sd3-depth", "VAE"]),
    ]:
        wf = Workflow(installed_registry())
        c = wf.add_node("load_checkpoint", {"ckpt_name": ckpt}).id
        t = wf.add_node("text_encode", {"text": PROMPT}).id
        wf.connect(c, "clip", t, "clip")
        load = wf.add_node("load_controlnet", {"control_net_name": "sd3-depth"}).id
        img = wf.add_node("load_image", {"image": str(root / "black.png")}).id
        apply = wf.add_node("apply_controlnet", {}).id
        wf.connect(t, "conditioning", apply, "positive")
        wf.connect(t, "conditioning", apply, "negative")
        wf.connect(load, "control_net", apply, "control_net")
        wf.connect(img, "image", apply, "image")
        if with_vae:
            wf.connect(c, "vae", apply, "vae")
        lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
        s = wf.add_node("sampler", {"seed": 1, "steps": 2, "cfg": 2.0, "denoise": 1.0}).id
        wf.connect(c, "model", s, "model")
        wf.connect(apply, "positive", s, "positive")
        wf.connect(apply, "negative", s, "negative")
        wf.connect(lat, "latent", s, "latent")
        result = engine.run(wf, targets=[s])
        assert not result.ok
        msg = " ".join(result.errors.values())
        assert all(w in msg for w in words), msg
        assert "Traceback" not in msg


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_img2img_equals_the_img2img_pipeline(engine, parts, photo_and_mask, family):
    """VAE Encode + Sampler at denoise 0.6 equal StableDiffusion3Img2ImgPipeline /
    FluxImg2ImgPipeline at strength 0.6: the VAE's sample drawn first, then the noise, and
    the steps kept as these pipelines round them (3 steps at 0.6: the last 2)."""
    from PIL import Image

    photo = photo_and_mask[0]
    wf = Workflow(installed_registry())
    ids = _prompts(wf, family)
    img = wf.add_node("load_image", {"image": str(photo)}).id
    enc = wf.add_node("vae_encode").id
    wf.connect(img, "image", enc, "image")
    wf.connect(ids["ckpt"], "vae", enc, "vae")
    s = _sampler_node(wf, ids, family, (enc, "latent"), denoise=0.6)
    dec = _decode(wf, ids, s)
    got = _outputs(engine, wf, [dec])[dec]["image"].numpy()
    _, cfg, guidance = DIT_SETUPS[family]
    if family == "sd3":
        pipe = diffusers.StableDiffusion3Img2ImgPipeline(**parts["sd3"])
        kw = {"negative_prompt": NEGATIVE, "guidance_scale": cfg}
    else:
        pipe = diffusers.FluxImg2ImgPipeline(**parts["flux"])
        kw = {"guidance_scale": guidance}
    want = _pipe_image(pipe, "euler", image=Image.open(photo).convert("RGB"), strength=0.6, **kw)
    _close(got, want)


@pytest.mark.parametrize("apply_type", ["ControlNetApplyAdvanced", "ControlNetApplySD3"])
def test_a_comfyui_sd3_controlnet_prompt_keeps_the_vae_link(apply_type):
    """ControlNetApplySD3 ("Apply Controlnet with VAE", ComfyUI's SD3.5 ControlNet examples)
    is ControlNetApplyAdvanced with its vae."""
    from studio.graph.importers.comfyui import import_comfyui

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "sd3.5_medium.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["1", 1]}},
        "3": {"class_type": "ControlNetLoader",
              "inputs": {"control_net_name": "sd3_canny.safetensors"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
        "5": {"class_type": apply_type,
              "inputs": {"positive": ["2", 0], "negative": ["2", 0], "control_net": ["3", 0],
                         "image": ["4", 0], "vae": ["1", 2], "strength": 0.7,
                         "start_percent": 0.0, "end_percent": 1.0}},
    }  # fmt: skip
    result = import_comfyui(prompt, installed_registry(), source="sd3-cn.json")
    wf = result.workflow
    apply = next(n for n in wf.nodes if n.type == "apply_controlnet")
    ckpt = next(n for n in wf.nodes if n.type == "load_checkpoint")
    links = {lk.input: (lk.source, lk.output) for lk in wf.links_into(apply.id)}
    assert links["vae"] == (ckpt.id, "vae")
    assert apply.params == {"strength": 0.7, "start_percent": 0.0, "end_percent": 1.0}
    assert not any("vae" in line or "not map" in line for line in result.report)


def _apply(
    wf, ids, load_name: str, image: str, with_vae: bool = True, union_type=None, **params
) -> str:
    load = wf.add_node("load_controlnet", {"control_net_name": load_name}).id
    if union_type is not None:
        typed = wf.add_node("set_union_controlnet_type", {"type": union_type}).id
        wf.connect(load, "control_net", typed, "control_net")
        load = typed
    img = wf.add_node("load_image", {"image": image}).id
    apply = wf.add_node("apply_controlnet", params).id
    for a, b, c, d in [
        (*ids["pos"], apply, "positive"),
        (*ids["neg"], apply, "negative"),
        (load, "control_net", apply, "control_net"),
        (img, "image", apply, "image"),
        *([(ids["ckpt"], "vae", apply, "vae")] if with_vae else []),
    ]:
        wf.connect(a, b, c, d)
    ids["pos"], ids["neg"] = (apply, "positive"), (apply, "negative")
    return apply


@pytest.fixture(scope="module")
def flux_controlnets(parts, root):
    """Two Flux ControlNets: one single file (told apart by its keys, config from shapes),
    one diffusers folder; and two control images."""
    from PIL import Image
    from safetensors.torch import save_file

    tf = parts["flux"]["transformer"]
    a, b = fx.flux_controlnet(tf, 5), fx.flux_controlnet(tf, 6)
    (root / "controlnet").mkdir(exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in a.state_dict().items()},
        str(root / "controlnet" / "flux-canny.safetensors"),
    )
    b.save_pretrained(root / "controlnet" / "flux-depth")
    images = []
    for name, box in [("flux-edges.png", (16, 48, 8, 28)), ("flux-depth.png", (8, 40, 30, 60))]:
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[box[0] : box[1], box[2] : box[3]] = 255
        Image.fromarray(arr).save(root / name)
        images.append(root / name)
    return a, b, images


def _mean_not_sample(monkeypatch):
    """The pipelines encode the control image with a VAE sample (drawn from the run's
    generator, before the noise); Studio with its mean: the pipeline runs with the mean."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(
        DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean
    )


@pytest.mark.parametrize("true_cfg", [1.0, 2.0])
def test_a_flux_controlnet_file_equals_the_flux_controlnet_pipeline(
    engine, parts, flux_controlnets, monkeypatch, true_cfg
):
    """A single-file Flux ControlNet through Apply ControlNet (with the VAE; strength and end
    of window) equals FluxControlNetPipeline; with cfg 2 (true CFG with the negative prompt)
    too: the ControlNet sees the positive prompt and steers both passes, as there."""
    from PIL import Image

    cn, _, (edges, _) = flux_controlnets
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "flux")
    ids["pos"], ids["neg"] = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    plain = _sampler_node(wf, ids, "flux", (lat, "latent"), cfg=true_cfg)
    _apply(wf, ids, "flux-canny.safetensors", str(edges), strength=0.8, end_percent=0.7)
    controlled = _sampler_node(wf, ids, "flux", (lat, "latent"), cfg=true_cfg)
    dec = _decode(wf, ids, controlled)
    out = _outputs(engine, wf, [dec, plain])
    got = out[dec]["image"].numpy()

    _mean_not_sample(monkeypatch)
    pipe = diffusers.FluxControlNetPipeline(**parts["flux"], controlnet=cn)
    want = _pipe_image(
        pipe, "euler", guidance_scale=DIT_SETUPS["flux"][2],
        control_image=Image.open(edges).convert("RGB"),
        controlnet_conditioning_scale=0.8, control_guidance_end=0.7,
        **({"true_cfg_scale": true_cfg, "negative_prompt": NEGATIVE} if true_cfg > 1 else {}),
    )  # fmt: skip
    _close(got, want)
    moved = out[controlled]["latent"]["samples"] - out[plain]["latent"]["samples"]
    assert moved.abs().max() > 1e-2  # the ControlNet did steer


def test_a_flux_controlnet_with_its_own_image_encoder_equals_the_pipeline(
    engine, parts, root, flux_controlnets
):
    """A diffusers-layout Flux ControlNet with an input_hint_block (XLabs' kind, converted)
    sees the control image as pixels: no VAE needed; single file, config read from shapes
    (patch size 2), equal to FluxControlNetPipeline."""
    from PIL import Image
    from safetensors.torch import save_file

    _, _, (edges, _) = flux_controlnets
    cfg = dict(parts["flux"]["transformer"].config)
    cfg.update(num_layers=1, num_single_layers=1, conditioning_embedding_channels=16, patch_size=2)
    torch.manual_seed(8)
    cn = diffusers.FluxControlNetModel.from_config(cfg).eval()
    with torch.no_grad():
        for m in (cn.controlnet_blocks, cn.controlnet_single_blocks, cn.input_hint_block):
            for p in m.parameters():
                p.normal_(0, 0.3)
    save_file(
        {k: v.contiguous() for k, v in cn.state_dict().items()},
        str(root / "controlnet" / "flux-hint.safetensors"),
    )
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "flux")
    ids["pos"], ids["neg"] = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
    _apply(wf, ids, "flux-hint.safetensors", str(edges), with_vae=False, strength=0.7)
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    dec = _decode(wf, ids, _sampler_node(wf, ids, "flux", (lat, "latent")))
    got = _outputs(engine, wf, [dec])[dec]["image"].numpy()
    pipe = diffusers.FluxControlNetPipeline(**parts["flux"], controlnet=cn)
    want = _pipe_image(
        pipe, "euler", guidance_scale=DIT_SETUPS["flux"][2],
        control_image=Image.open(edges).convert("RGB"), controlnet_conditioning_scale=0.7,
    )  # fmt: skip
    _close(got, want)
    plain = checkpoint_image(engine, "tiny-flux", cfg=1.0, guidance=DIT_SETUPS["flux"][2])
    assert np.abs(plain - got).max() > 1 / 255  # it did steer


def test_stacked_flux_controlnets_equal_the_multi_controlnet_pipeline(
    engine, parts, flux_controlnets, monkeypatch
):
    """A file and a folder Flux ControlNet chained (each with its own strength and window)
    equal FluxControlNetPipeline with a FluxMultiControlNetModel of the two."""
    from PIL import Image

    a, b, (edges, depth) = flux_controlnets
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "flux")
    ids["pos"], ids["neg"] = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
    _apply(wf, ids, "flux-canny.safetensors", str(edges), strength=0.8, end_percent=0.7)
    _apply(wf, ids, "flux-depth", str(depth), strength=0.5, start_percent=0.3)
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    dec = _decode(wf, ids, _sampler_node(wf, ids, "flux", (lat, "latent")))
    got = _outputs(engine, wf, [dec])[dec]["image"].numpy()

    _mean_not_sample(monkeypatch)
    multi = diffusers.FluxMultiControlNetModel([a, b])
    pipe = diffusers.FluxControlNetPipeline(**parts["flux"], controlnet=multi)
    want = _pipe_image(
        pipe, "euler", guidance_scale=DIT_SETUPS["flux"][2],
        control_image=[Image.open(p).convert("RGB") for p in (edges, depth)],
        controlnet_conditioning_scale=[0.8, 0.5], control_guidance_start=[0.0, 0.3],
        control_guidance_end=[0.7, 1.0],
    )  # fmt: skip
    _close(got, want)


def _control_image_mean(monkeypatch):
    """FluxControlNetImg2Img / Inpaint draw, from the run's generator: the control image's VAE
    sample, then the input image's, then the noise. Studio encodes the control image with the
    VAE's mean and draws the input's sample, then the noise, from the seed: the pipeline runs
    with the mean for its first encode (drawing nothing), the later encodes sampled."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    real, calls = DiagonalGaussianDistribution.sample, []

    def sample(self, generator=None):
        calls.append(1)
        return self.mean if len(calls) == 1 else real(self, generator=generator)

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", sample)
    return calls


def _encoded_photo(wf, ids, photo) -> tuple[str, str]:
    img = wf.add_node("load_image", {"image": str(photo)}).id
    enc = wf.add_node("vae_encode").id
    wf.connect(img, "image", enc, "image")
    wf.connect(ids["ckpt"], "vae", enc, "vae")
    return img, enc


def test_a_flux_controlnet_with_img2img_equals_the_controlnet_img2img_pipeline(
    engine, parts, flux_controlnets, photo_and_mask, monkeypatch
):
    """Apply ControlNet + VAE Encode + Sampler at denoise 0.6 equal
    FluxControlNetImg2ImgPipeline at strength 0.6 (3 steps: the last 2 run). The guidance
    window counts the steps the run takes, as there: end_percent 0.5 keeps the ControlNet on
    the first of the 2 (counted over all 3 steps it would act on none)."""
    from PIL import Image

    cn, _, (edges, _) = flux_controlnets
    photo = photo_and_mask[0]
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "flux")
    ids["pos"], ids["neg"] = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
    _, enc = _encoded_photo(wf, ids, photo)
    plain = _sampler_node(wf, ids, "flux", (enc, "latent"), denoise=0.6)
    _apply(wf, ids, "flux-canny.safetensors", str(edges), strength=0.8, end_percent=0.5)
    controlled = _sampler_node(wf, ids, "flux", (enc, "latent"), denoise=0.6)
    dec = _decode(wf, ids, controlled)
    out = _outputs(engine, wf, [dec, plain])
    got = out[dec]["image"].numpy()

    calls = _control_image_mean(monkeypatch)
    pipe = diffusers.FluxControlNetImg2ImgPipeline(**parts["flux"], controlnet=cn)
    want = _pipe_image(
        pipe, "euler", guidance_scale=DIT_SETUPS["flux"][2],
        image=Image.open(photo).convert("RGB"), strength=0.6,
        control_image=Image.open(edges).convert("RGB"),
        controlnet_conditioning_scale=0.8, control_guidance_end=0.5,
    )  # fmt: skip
    assert len(calls) == 2  # the control image, then the input image
    _close(got, want)
    moved = out[controlled]["latent"]["samples"] - out[plain]["latent"]["samples"]
    assert moved.abs().max() > 1e-2  # the ControlNet did steer


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_a_flux_controlnet_with_inpainting_equals_the_controlnet_inpaint_pipeline(
    engine, parts, flux_controlnets, photo_and_mask, monkeypatch, denoise
):
    """Apply ControlNet + VAE Encode + Set Latent Noise Mask + Sampler equal
    FluxControlNetInpaintPipeline (strength = denoise; the window over the steps run, as in
    img2img): the ControlNet sees the whole latent, and after each step the unmasked part is
    the input noised to the next level, so it ends as the input image's latent."""
    from PIL import Image

    cn, _, (edges, _) = flux_controlnets
    photo, mask = photo_and_mask
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "flux")
    ids["pos"], ids["neg"] = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
    add, c = wf.add_node, wf.connect
    _, enc = _encoded_photo(wf, ids, photo)
    mask_img = add("load_image", {"image": str(mask)}).id
    m = add("mask_from_image", {"channel": "red"}).id
    noise_mask = add("set_latent_noise_mask").id
    c(mask_img, "image", m, "image")
    c(enc, "latent", noise_mask, "latent")
    c(m, "mask", noise_mask, "mask")
    plain = _sampler_node(wf, ids, "flux", (noise_mask, "latent"), denoise=denoise)
    _apply(wf, ids, "flux-canny.safetensors", str(edges), strength=0.8, end_percent=0.7)
    controlled = _sampler_node(wf, ids, "flux", (noise_mask, "latent"), denoise=denoise)
    dec = _decode(wf, ids, controlled)
    out = _outputs(engine, wf, [dec, plain])
    got = out[dec]["image"].numpy()

    calls = _control_image_mean(monkeypatch)
    pipe = diffusers.FluxControlNetInpaintPipeline(**parts["flux"], controlnet=cn)
    want = _pipe_image(
        pipe, "euler", guidance_scale=DIT_SETUPS["flux"][2],
        image=Image.open(photo).convert("RGB"), mask_image=Image.open(mask).convert("L"),
        strength=denoise, control_image=Image.open(edges).convert("RGB"),
        controlnet_conditioning_scale=0.8, control_guidance_end=0.7,
    )  # fmt: skip
    assert len(calls) == 3  # the control image, the input image, the (unused) masked image
    _close(got, want)
    a, b = (out[s]["latent"]["samples"] for s in (controlled, plain))
    assert (a[..., :4] - b[..., :4]).abs().max() > 1e-2  # the ControlNet steered the mask
    assert torch.allclose(a[..., 4:], b[..., 4:], atol=1e-6)  # and left the rest alone


@pytest.fixture(scope="module")
def sd3_edges(parts, root):
    """An SD3 ControlNet folder and a control image."""
    from PIL import Image

    cn = fx.sd3_controlnet(parts["sd3"]["transformer"])
    cn.save_pretrained(root / "controlnet" / "sd3-img2img")
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, 8:28] = 255
    Image.fromarray(arr).save(root / "sd3-edges.png")
    return cn, root / "sd3-edges.png"


def _sd3_controlnet_graph(engine, photo_and_mask, sd3_edges, denoise, masked):
    """Apply ControlNet (strength 0.8, end 0.5) + VAE Encode (+ Set Latent Noise Mask) +
    Sampler: (picture, controlled latent, latent without the ControlNet)."""
    photo, mask = photo_and_mask
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "sd3")
    ids["pos"], ids["neg"] = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
    _, latent = _encoded_photo(wf, ids, photo)
    if masked:
        mask_img = wf.add_node("load_image", {"image": str(mask)}).id
        m = wf.add_node("mask_from_image", {"channel": "red"}).id
        noise_mask = wf.add_node("set_latent_noise_mask").id
        wf.connect(mask_img, "image", m, "image")
        wf.connect(latent, "latent", noise_mask, "latent")
        wf.connect(m, "mask", noise_mask, "mask")
        latent = noise_mask
    plain = _sampler_node(wf, ids, "sd3", (latent, "latent"), denoise=denoise)
    _apply(wf, ids, "sd3-img2img", str(sd3_edges[1]), strength=0.8, end_percent=0.5)
    controlled = _sampler_node(wf, ids, "sd3", (latent, "latent"), denoise=denoise)
    dec = _decode(wf, ids, controlled)
    out = _outputs(engine, wf, [dec, plain])
    a, b = (out[n]["latent"]["samples"] for n in (controlled, plain))
    return out[dec]["image"].numpy(), a, b


def _sd3_controlnet_pipe_on(parts, sd3_edges, monkeypatch, start, t_start, callback=None):
    """StableDiffusion3ControlNetPipeline from the latent ``start`` over the last steps of
    the 3-step schedule (from ``t_start``; its guidance window counts those steps, as the
    Flux ControlNet img2img / inpaint pipelines count them)."""
    from PIL import Image

    class Truncated(diffusers.FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, *args, **kwargs):
            super().set_timesteps(*args, **kwargs)
            self.timesteps, self.sigmas = self.timesteps[t_start:], self.sigmas[t_start:]
            self.num_inference_steps = len(self.timesteps)

    _mean_not_sample(monkeypatch)  # the control image (torch's global generator there)
    pipe = diffusers.StableDiffusion3ControlNetPipeline(**parts["sd3"], controlnet=sd3_edges[0])
    pipe.scheduler = Truncated.from_config(parts["sd3"]["scheduler"].config)
    want = pipe(
        PROMPT, negative_prompt=NEGATIVE, guidance_scale=5.0, height=64, width=64,
        num_inference_steps=STEPS, latents=start, output_type="np",
        control_image=Image.open(sd3_edges[1]).convert("RGB"),
        controlnet_conditioning_scale=0.8, control_guidance_end=0.5,
        callback_on_step_end=callback,
    ).images  # fmt: skip
    assert pipe.scheduler.num_inference_steps == STEPS - t_start
    return want


def test_an_sd3_controlnet_with_img2img_equals_the_controlnet_pipeline_on_the_img2img_schedule(
    engine, parts, photo_and_mask, sd3_edges, monkeypatch
):
    """Diffusers has no SD3 ControlNet img2img pipeline: Apply ControlNet + VAE Encode +
    Sampler at denoise 0.6 equal StableDiffusion3ControlNetPipeline started from
    StableDiffusion3Img2ImgPipeline's own noised latent (the VAE's sample, then the noise) on
    its truncated schedule (3 steps at 0.6: the last 2; end_percent 0.5 keeps the ControlNet
    on the first of them)."""
    from PIL import Image

    got, controlled, plain = _sd3_controlnet_graph(engine, photo_and_mask, sd3_edges, 0.6, False)
    img2img = diffusers.StableDiffusion3Img2ImgPipeline(**parts["sd3"])
    img2img.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        parts["sd3"]["scheduler"].config
    )
    img2img.scheduler.set_timesteps(STEPS)
    timesteps, _ = img2img.get_timesteps(STEPS, 0.6, "cpu")
    photo = Image.open(photo_and_mask[0]).convert("RGB")
    image = img2img.image_processor.preprocess(photo, 64, 64)
    generator = torch.Generator("cpu").manual_seed(SEED)
    with torch.no_grad():
        start = img2img.prepare_latents(
            image, timesteps[:1], 1, 1, torch.float32, torch.device("cpu"), generator
        )
    want = _sd3_controlnet_pipe_on(parts, sd3_edges, monkeypatch, start, STEPS - len(timesteps))
    _close(got, want)
    assert (controlled - plain).abs().max() > 1e-2  # the ControlNet did steer


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_an_sd3_controlnet_with_inpainting_equals_the_controlnet_pipeline_with_the_inpaint_steps(
    engine, parts, photo_and_mask, sd3_edges, monkeypatch, denoise
):
    """Diffusers' SD3 ControlNet inpainting pipeline wants an inpainting ControlNet: Apply
    ControlNet + VAE Encode + Set Latent Noise Mask + Sampler equal
    StableDiffusion3ControlNetPipeline started from StableDiffusion3InpaintPipeline's latent,
    noise and mask (its prepare_latents, prepare_mask_latents, get_timesteps) with that
    pipeline's blend after each step (the input noised to the next step's level outside the
    mask), in a step callback; outside the mask the ControlNet changes nothing."""
    from PIL import Image

    got, controlled, plain = _sd3_controlnet_graph(engine, photo_and_mask, sd3_edges, denoise, True)
    inpaint = diffusers.StableDiffusion3InpaintPipeline(**parts["sd3"])
    inpaint.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        parts["sd3"]["scheduler"].config
    )
    inpaint.scheduler.set_timesteps(STEPS)
    timesteps, _ = inpaint.get_timesteps(STEPS, denoise, "cpu")
    photo, mask_file = photo_and_mask
    image = inpaint.image_processor.preprocess(Image.open(photo).convert("RGB"), 64, 64)
    mask_image = inpaint.mask_processor.preprocess(Image.open(mask_file).convert("L"), 64, 64)
    generator = torch.Generator("cpu").manual_seed(SEED)
    cpu = torch.device("cpu")
    with torch.no_grad():
        start, noise, image_latents = inpaint.prepare_latents(
            1, 16, 64, 64, torch.float32, cpu, generator, image=image.float(),
            timestep=timesteps[:1], is_strength_max=denoise == 1.0, return_noise=True,
            return_image_latents=True,
        )  # fmt: skip
        mask, _ = inpaint.prepare_mask_latents(
            mask_image, image * (mask_image < 0.5), 1, 1, 64, 64, torch.float32, cpu,
            generator, False,
        )  # fmt: skip

    def blend(pipe, i, t, kwargs):  # StableDiffusion3InpaintPipeline's, after each step
        proper = image_latents
        steps = pipe.scheduler.timesteps
        if i < len(steps) - 1:
            proper = pipe.scheduler.scale_noise(proper, torch.tensor([steps[i + 1]]), noise)
        return {"latents": (1 - mask) * proper + mask * kwargs["latents"]}

    t_start = STEPS - len(timesteps)
    want = _sd3_controlnet_pipe_on(parts, sd3_edges, monkeypatch, start, t_start, blend)
    _close(got, want)
    assert (controlled[..., :4] - plain[..., :4]).abs().max() > 1e-2  # steered in the mask
    assert torch.allclose(controlled[..., 4:], plain[..., 4:], atol=1e-6)


def test_flux_controlnet_wrong_pairings_and_other_layouts_are_clear_errors(
    engine, parts, root, flux_controlnets
):
    """A Flux ControlNet on an SD3 model (and an SD3 one on Flux) names both families; a
    Flux ControlNet without the VAE asks for it; XLabs' own layout is refused on the loader
    with what Studio reads instead."""
    from safetensors.torch import save_file

    _, _, (edges, _) = flux_controlnets
    fx.sd3_controlnet(parts["sd3"]["transformer"]).save_pretrained(
        root / "controlnet" / "sd3-depth"
    )
    for family, name, with_vae, words in [
        ("sd3", "flux-depth", True, ["flux-depth", "Flux.1", "Stable Diffusion 3.x"]),
        ("flux", "sd3-depth", True, ["sd3-depth", "Flux.1", "Stable Diffusion 3.x"]),
        ("flux", "flux-depth", False, ["flux-depth", "VAE"]),
    ]:
        wf = Workflow(installed_registry())
        ids = _prompts(wf, family)
        ids["pos"], ids["neg"] = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
        _apply(wf, ids, name, str(edges), with_vae=with_vae)
        lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
        s = _sampler_node(wf, ids, family, (lat, "latent"), steps=1)
        result = engine.run(wf, targets=[s])
        assert not result.ok
        msg = " ".join(result.errors.values())
        assert all(w in msg for w in words), msg
        assert "Traceback" not in msg

    xlabs = {
        "double_blocks.0.img_attn.qkv.weight": torch.zeros(96, 32),
        "controlnet_blocks.0.weight": torch.zeros(32, 32),
        "input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
    }
    save_file(xlabs, str(root / "controlnet" / "flux-xlabs.safetensors"))
    for name, words in [
        ("flux-xlabs.safetensors", ["XLabs", "diffusers layout"]),
    ]:
        wf = Workflow(installed_registry())
        load = wf.add_node("load_controlnet", {"control_net_name": name}).id
        result = engine.run(wf, targets=[load])
        msg = result.errors[load]
        assert all(w in msg for w in words), msg
        assert "Traceback" not in msg


def kohya_flux_lora(transformer, rank: int = 4, seed: int = 12) -> dict[str, torch.Tensor]:
    """A Flux LoRA in the kohya (sd-scripts) layout, built from the transformer's shapes with
    the module names diffusers' ``_convert_kohya_flux_lora_to_diffusers`` maps (fused qkv,
    mlp, modulation of the double blocks; proj_out and modulation of the single blocks; the
    single blocks' fused linear1 left out: that converter splits it at Flux.1's full width)."""
    gen = torch.Generator().manual_seed(seed)
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    shapes = {}  # kohya module -> (in, out)
    for i in range(transformer.config.num_layers):
        for side in ("img", "txt"):
            b = f"lora_unet_double_blocks_{i}_{side}"
            shapes |= {
                f"{b}_attn_qkv": (inner, 3 * inner), f"{b}_attn_proj": (inner, inner),
                f"{b}_mlp_0": (inner, 4 * inner), f"{b}_mlp_2": (4 * inner, inner),
                f"{b}_mod_lin": (inner, 6 * inner),
            }  # fmt: skip
    for i in range(transformer.config.num_single_layers):
        b = f"lora_unet_single_blocks_{i}"
        shapes |= {f"{b}_linear2": (5 * inner, inner), f"{b}_modulation_lin": (inner, 3 * inner)}
    state = {}
    for name, (fan_in, fan_out) in shapes.items():
        state[f"{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=gen) * 0.3
        state[f"{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.3
        state[f"{name}.alpha"] = torch.tensor(float(rank) / 2)
    return state


def sd3_lora_file(transformer_factory, folder, name: str) -> None:
    """An SD3 LoRA in the diffusers (peft) layout, as StableDiffusion3Pipeline saves it."""
    from peft import LoraConfig, get_peft_model_state_dict

    net = transformer_factory()
    torch.manual_seed(13)
    net.add_adapter(
        LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "proj_out"],
        )
    )  # fmt: skip
    diffusers.StableDiffusion3Pipeline.save_lora_weights(
        str(folder), transformer_lora_layers=get_peft_model_state_dict(net), weight_name=name
    )


def _lora_variants(engine, family: str, lora_name: str) -> dict[str, np.ndarray]:
    """One graph: the checkpoint plain, with Load LoRA at 1, Load LoRA at 0 and Load LoRA
    (Model Only) at 0, each through its own Text Encodes and Sampler."""
    ckpt, cfg, guidance = DIT_SETUPS[family]
    wf = Workflow(installed_registry())
    c = wf.add_node("load_checkpoint", {"ckpt_name": ckpt}).id
    lo1 = wf.add_node("load_lora", {"lora_name": lora_name, "strength_model": 1.0}).id
    lo0 = wf.add_node(
        "load_lora", {"lora_name": lora_name, "strength_model": 0.0, "strength_clip": 0.0}
    ).id
    only0 = wf.add_node("load_lora_model_only", {"lora_name": lora_name, "strength_model": 0.0}).id
    for lo in (lo1, lo0):
        wf.connect(c, "model", lo, "model")
        wf.connect(c, "clip", lo, "clip")
    wf.connect(c, "model", only0, "model")
    decs = {}
    for label, model, clip in [
        ("plain", (c, "model"), (c, "clip")),
        ("lora", (lo1, "model"), (lo1, "clip")),
        ("zero", (lo0, "model"), (lo0, "clip")),
        ("model-only-zero", (only0, "model"), (c, "clip")),
    ]:
        decs[label] = _sampling(wf, model, clip, (c, "vae"), cfg=cfg, guidance=guidance)
    out = _outputs(engine, wf, list(decs.values()))
    return {label: out[d]["image"].numpy() for label, d in decs.items()}


def test_a_flux_lora_in_the_kohya_layout_equals_the_pipeline_with_it(engine, root):
    """A kohya-layout Flux LoRA (lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight ...)
    equals FluxPipeline with the same file loaded; at strength 0 (Load LoRA, Load LoRA Model
    Only) the picture is the one without it."""
    tf = fx.tiny_flux()["transformer"]
    (root / "loras").mkdir(exist_ok=True)
    fx.save(kohya_flux_lora(tf), root / "loras" / "flux_kohya.safetensors")
    got = _lora_variants(engine, "flux", "flux_kohya.safetensors")
    pipe = fx.flux_pipeline(fx.tiny_flux())
    pipe.load_lora_weights(str(root / "loras"), weight_name="flux_kohya.safetensors")
    want = _pipe_image(pipe, "euler", guidance_scale=DIT_SETUPS["flux"][2])
    _close(got["lora"], want)
    assert np.abs(got["plain"] - got["lora"]).max() > 1 / 255  # the LoRA did change it
    assert np.array_equal(got["zero"], got["plain"])
    assert np.array_equal(got["model-only-zero"], got["plain"])


def test_an_sd3_lora_equals_the_pipeline_with_it(engine, root):
    """An SD3 LoRA (diffusers/peft layout) equals StableDiffusion3Pipeline with the same file
    loaded; at strength 0 the picture is the one without it."""
    (root / "loras").mkdir(exist_ok=True)
    sd3_lora_file(lambda: fx.tiny_sd3()["transformer"], root / "loras", "sd3_lora.safetensors")
    got = _lora_variants(engine, "sd3", "sd3_lora.safetensors")
    pipe = fx.sd3_pipeline(fx.tiny_sd3())
    pipe.load_lora_weights(str(root / "loras"), weight_name="sd3_lora.safetensors")
    want = _pipe_image(pipe, "euler", negative_prompt=NEGATIVE, guidance_scale=DIT_SETUPS["sd3"][1])
    _close(got["lora"], want)
    assert np.abs(got["plain"] - got["lora"]).max() > 1 / 255
    assert np.array_equal(got["zero"], got["plain"])
    assert np.array_equal(got["model-only-zero"], got["plain"])


def _to_kohya_sd3(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers-layout SD3 LoRA (saved without adapter metadata: alpha = rank, scale 1)
    written in kohya sd-scripts' layout: q, k, v fused (down weights stacked, up weights
    block-diagonal), alpha = rank / 2 with the down weights doubled, the adaLN modulations
    diffusers stores as (scale, shift) back in (shift, scale) order, CLIP layers as
    lora_te1_*."""
    fused = {
        ("attn.to_q", "attn.to_k", "attn.to_v"): "x_block_attn_qkv",
        ("attn2.to_q", "attn2.to_k", "attn2.to_v"): "x_block_attn2_qkv",
        ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"): "context_block_attn_qkv",
    }
    single = {
        "attn.to_out.0": "x_block_attn_proj", "attn2.to_out.0": "x_block_attn2_proj",
        "attn.to_add_out": "context_block_attn_proj", "norm1.linear": "x_block_adaLN_modulation_1",
        "norm1_context.linear": "context_block_adaLN_modulation_1",
    }  # fmt: skip

    def swap(up):
        a, b = up.chunk(2)
        return torch.cat([b, a])

    out = {}

    def put(name, down, up):
        out[f"{name}.lora_down.weight"] = (2 * down).contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(down.shape[0] / 2)

    a = {k[: -len(".lora_A.weight")]: v for k, v in state.items() if k.endswith("lora_A.weight")}
    b = {k[: -len(".lora_B.weight")]: v for k, v in state.items() if k.endswith("lora_B.weight")}
    blocks = {int(k.split(".")[2]) for k in a if k.startswith("transformer.transformer_blocks.")}
    last = max(blocks)
    for i in blocks:
        p = f"transformer.transformer_blocks.{i}."
        for parts, name in fused.items():
            if p + parts[0] in a:
                down = torch.cat([a[p + t] for t in parts])
                up = torch.block_diag(*[b[p + t] for t in parts])
                put(f"lora_unet_joint_blocks_{i}_{name}", down, up)
        for part, name in single.items():
            if p + part in a:
                up = b[p + part]
                if part == "norm1_context.linear" and i == last:
                    up = swap(up)
                put(f"lora_unet_joint_blocks_{i}_{name}", a[p + part], up)
    put("lora_unet_final_layer_linear", a["transformer.proj_out"], b["transformer.proj_out"])
    put(
        "lora_unet_final_layer_adaLN_modulation_1",
        a["transformer.norm_out.linear"], swap(b["transformer.norm_out.linear"]),
    )  # fmt: skip
    for key in a:
        if key.startswith("text_encoder."):
            name = "lora_te1_" + key[len("text_encoder.") :].replace(".", "_")
            put(name, a[key], b[key])
    return out


def test_an_sd3_lora_in_the_kohya_layout_equals_the_pipeline_with_it(engine, root):
    """An SD3 LoRA in kohya sd-scripts' layout (transformer and CLIP-L layers: fused qkv,
    the dual-attention block's attn2, the adaLN modulations, the final layer) equals
    StableDiffusion3Pipeline with the same LoRA in the diffusers layout."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import load_file

    parts = fx.tiny_sd3()
    net, te = parts["transformer"], parts["text_encoder"]
    torch.manual_seed(14)
    net.add_adapter(
        LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False,
            target_modules=[
                "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                "to_add_out", "norm1.linear", "norm1_context.linear", "norm_out.linear",
                "proj_out",
            ],
        )
    )  # fmt: skip
    with torch.no_grad():  # the modulation layers' LoRA small: the tiny model stays sane
        for name, p in net.named_parameters():
            if "lora_B" in name and "norm" in name:
                p.mul_(0.1)
    inject_adapter_in_model(
        LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False,
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
        ),
        te,
    )  # fmt: skip
    (root / "loras").mkdir(exist_ok=True)
    diffusers.StableDiffusion3Pipeline.save_lora_weights(
        str(root / "loras"), transformer_lora_layers=get_peft_model_state_dict(net),
        text_encoder_lora_layers=get_peft_model_state_dict(te),
        weight_name="sd3_full_diffusers.safetensors",
    )  # fmt: skip
    state = load_file(str(root / "loras" / "sd3_full_diffusers.safetensors"))
    assert any(".attn2." in k for k in state) and any("norm_out" in k for k in state)
    fx.save(_to_kohya_sd3(state), root / "loras" / "sd3_kohya.safetensors")

    got = _lora_variants(engine, "sd3", "sd3_kohya.safetensors")
    pipe = fx.sd3_pipeline(fx.tiny_sd3())
    pipe.load_lora_weights(str(root / "loras"), weight_name="sd3_full_diffusers.safetensors")
    want = _pipe_image(pipe, "euler", negative_prompt=NEGATIVE, guidance_scale=DIT_SETUPS["sd3"][1])
    _close(got["lora"], want)
    assert np.abs(got["plain"] - got["lora"]).max() > 1 / 255
    assert np.array_equal(got["zero"], got["plain"])
    assert np.array_equal(got["model-only-zero"], got["plain"])


def test_a_flux_lora_without_the_transformer_prefix_equals_it_with_the_prefix(engine, root):
    """Some trainers write the diffusers layout without ``transformer.``: read as the same
    LoRA (diffusers' loader alone would skip every layer)."""
    state = {f"transformer.{k}": v for k, v in _flux_peft_lora().items()}
    (root / "loras").mkdir(exist_ok=True)
    fx.save(state, root / "loras" / "flux_prefixed.safetensors")
    fx.save(
        {k.removeprefix("transformer."): v for k, v in state.items()},
        root / "loras" / "flux_bare.safetensors",
    )
    bare = _lora_variants(engine, "flux", "flux_bare.safetensors")
    prefixed = _lora_variants(engine, "flux", "flux_prefixed.safetensors")
    assert np.array_equal(bare["lora"], prefixed["lora"])
    assert np.abs(bare["plain"] - bare["lora"]).max() > 1 / 255


def _flux_peft_lora() -> dict[str, torch.Tensor]:
    from peft import LoraConfig, get_peft_model_state_dict

    net = fx.tiny_flux()["transformer"]
    torch.manual_seed(15)
    net.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False)
    )
    return get_peft_model_state_dict(net)


def test_a_lora_with_no_layers_for_the_dit_is_a_clear_error(engine, root):
    """A LoRA whose layers belong to no part of an SD3 / Flux model (here a kohya SD 1.x
    UNet LoRA) is an error on Load LoRA, not a silent no-op."""
    (root / "loras").mkdir(exist_ok=True)
    fx.save(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        },
        root / "loras" / "sd1_style.safetensors",
    )
    for family in ("sd3", "flux"):
        wf = Workflow(installed_registry())
        c = wf.add_node("load_checkpoint", {"ckpt_name": DIT_SETUPS[family][0]}).id
        lo = wf.add_node("load_lora_model_only", {"lora_name": "sd1_style.safetensors"}).id
        wf.connect(c, "model", lo, "model")
        result = engine.run(wf, targets=[lo])
        msg = result.errors.get(lo, "")
        assert "sd1_style.safetensors" in msg and "Traceback" not in msg, (family, msg)


def tiny_flux_union_controlnet(transformer, seed: int, modes: int = 7):
    """A Flux union ControlNet (InstantX's / Shakker-Labs' Union: a mode embedding whose
    token goes before the prompt's)."""
    base = fx.flux_controlnet(transformer, seed)
    cn = diffusers.FluxControlNetModel.from_config(base.config, num_mode=modes)
    cn.load_state_dict(base.state_dict(), strict=False)
    assert cn.union
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        cn.controlnet_mode_embedder.weight.normal_(0, 1.0)
    return cn.eval()


@pytest.fixture(scope="module")
def flux_union(parts, root, flux_controlnets):
    from safetensors.torch import save_file

    cn = tiny_flux_union_controlnet(parts["flux"]["transformer"], 9)
    save_file(
        {k: v.contiguous() for k, v in cn.state_dict().items()},
        str(root / "controlnet" / "flux-union.safetensors"),
    )
    return cn


def test_a_flux_union_controlnet_with_its_type_equals_the_pipeline_with_that_mode(
    engine, parts, flux_controlnets, flux_union, monkeypatch
):
    """A Flux union ControlNet (single file, its 7 modes read from the shapes) through Set
    Union ControlNet Type "depth" equals FluxControlNetPipeline with control_mode 2 (InstantX's
    numbering: canny 0, tile 1, depth 2, ...); another type gives another picture."""
    from PIL import Image

    _, _, (_, depth) = flux_controlnets
    wf = Workflow(installed_registry())
    ids = _prompts(wf, "flux")
    start = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    samplers = {}
    for kind in ("depth", "canny/lineart/anime_lineart/mlsd"):
        ids["pos"], ids["neg"] = start
        _apply(wf, ids, "flux-union.safetensors", str(depth), union_type=kind, strength=0.8)
        samplers[kind] = _sampler_node(wf, ids, "flux", (lat, "latent"))
    dec = _decode(wf, ids, samplers["depth"])
    out = _outputs(engine, wf, [dec, *samplers.values()])
    got = out[dec]["image"].numpy()

    _mean_not_sample(monkeypatch)
    pipe = diffusers.FluxControlNetPipeline(**parts["flux"], controlnet=flux_union)
    want = _pipe_image(
        pipe, "euler", guidance_scale=DIT_SETUPS["flux"][2],
        control_image=Image.open(depth).convert("RGB"), controlnet_conditioning_scale=0.8,
        control_mode=2,
    )  # fmt: skip
    _close(got, want)
    a, b = (out[s]["latent"]["samples"] for s in samplers.values())
    assert (a - b).abs().max() > 1e-3  # the type chose another mode


def test_flux_union_controlnet_without_a_type_or_with_one_it_lacks_is_a_clear_error(
    engine, flux_controlnets, flux_union
):
    """A union ControlNet straight into Apply ControlNet (or typed auto) asks for Set Union
    ControlNet Type; a type the model has no mode for lists the ones it has; a type on a
    one-kind ControlNet is refused."""
    _, _, (edges, _) = flux_controlnets
    for name, union_type, node_type, words in [
        ("flux-union.safetensors", None, "apply_controlnet", ["Set Union ControlNet Type"]),
        ("flux-union.safetensors", "auto", "apply_controlnet", ["Set Union ControlNet Type"]),
        ("flux-union.safetensors", "normal", "set_union_controlnet_type", ["'normal'", "depth"]),
        ("flux-depth", "depth", "set_union_controlnet_type", ["not a union", "auto"]),
    ]:
        wf = Workflow(installed_registry())
        ids = _prompts(wf, "flux")
        ids["pos"], ids["neg"] = (ids["pos"], "conditioning"), (ids["neg"], "conditioning")
        apply = _apply(wf, ids, name, str(edges), union_type=union_type)
        result = engine.run(wf, targets=[apply])
        assert not result.ok
        msg = " ".join(result.errors.values())
        assert [n for n in result.errors if wf.get_node(n).type == node_type], msg
        assert all(w in msg for w in words), msg
        assert "Traceback" not in msg


# -- area and mask prompts (ComfyUI's regional prompting) on SD3 / Flux --------------------------

OTHER = "a green square"


def _regional_graph(wf, family: str, shape, steps: int):
    """Three samplers on one graph: prompt A alone, prompt B alone, and ``shape(wf, ids, a,
    b)``'s conditioning (built from the two) as the positive; the latents of each."""
    ids = _prompts(wf, family)
    a = ids["pos"]
    b = wf.add_node("text_encode", {"text": OTHER}).id
    wf.connect(ids["ckpt"], "clip", b, "clip")
    if DIT_SETUPS[family][2] is not None:
        g = wf.add_node("flux_guidance", {"guidance": DIT_SETUPS[family][2]}).id
        wf.connect(b, "conditioning", g, "conditioning")
        b = g
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    out = {}
    for name, pos in (("a", a), ("b", b), ("mixed", shape(wf, ids, a, b))):
        ids["pos"] = pos
        out[name] = _sampler_node(wf, ids, family, (lat, "latent"), steps=steps)
    return out


def _latents(engine, wf, samplers: dict) -> dict:
    out = _outputs(engine, wf, list(samplers.values()))
    return {k: out[s]["latent"]["samples"] for k, s in samplers.items()}


def _out(src) -> tuple:
    """A node id (its conditioning output) or (node, output)."""
    return src if isinstance(src, tuple) else (src, "conditioning")


def _set_area(wf, src, x, y, w, h, strength=1.0):
    n = wf.add_node(
        "conditioning_set_area", {"x": x, "y": y, "width": w, "height": h, "strength": strength}
    ).id
    wf.connect(*_out(src), n, "conditioning")
    return n


def _combine(wf, first, second):
    n = wf.add_node("conditioning_combine").id
    wf.connect(*_out(first), n, "conditioning_1")
    wf.connect(*_out(second), n, "conditioning_2")
    return n


def _right_half_mask(wf, root):
    from PIL import Image

    path = root / "right-half.png"
    if not path.exists():
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[:, 32:] = 255
        Image.fromarray(arr).save(path)
    img = wf.add_node("load_image", {"image": str(path)}).id
    m = wf.add_node("mask_from_image", {"channel": "red"}).id
    wf.connect(img, "image", m, "image")
    return m


def _set_mask(wf, src, mask, bounds=False):
    n = wf.add_node(
        "conditioning_set_mask",
        {"strength": 1.0, "set_cond_area": "mask bounds" if bounds else "default"},
    ).id
    wf.connect(*_out(src), n, "conditioning")
    wf.connect(mask, "mask", n, "mask")
    return n


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_whole_image_area_or_mask_prompt_equals_the_plain_prompt(engine, root, family):
    """Conditioning Set Area over the whole image, and Set Mask with a full mask on its
    bounds, give the plain prompt's picture (SD3 with cfg 5, Flux with cfg 1)."""
    for shape in (
        lambda wf, ids, a, b: _set_area(wf, a, 0, 0, 64, 64),
        lambda wf, ids, a, b: _set_mask(
            wf, a, wf.add_node("solid_mask", {"value": 1.0, "width": 64, "height": 64}).id,
            bounds=True,
        ),
    ):  # fmt: skip
        wf = Workflow(installed_registry())
        got = _latents(engine, wf, _regional_graph(wf, family, shape, STEPS))
        assert torch.allclose(got["mixed"], got["a"], atol=1e-5), (
            (got["mixed"] - got["a"]).abs().max()
        )


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_two_combined_prompts_average_their_predictions(engine, family):
    """Conditioning Combine of two whole-image prompts predicts their mean: after one step
    (a linear function of the prediction) the latent is the mean of each prompt's alone."""
    wf = Workflow(installed_registry())
    got = _latents(
        engine, wf, _regional_graph(wf, family, lambda wf, ids, a, b: _combine(wf, a, b), 1)
    )
    assert torch.allclose(got["mixed"], (got["a"] + got["b"]) / 2, atol=1e-5)
    assert (got["a"] - got["b"]).abs().max() > 1e-2  # the two prompts differ


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("kind", ["area", "mask"])
def test_a_prompt_on_the_right_half_changes_only_the_right_half(engine, root, family, kind):
    """Prompt A everywhere combined with B on the right half (Set Area, or Set Mask with a
    right-half mask): after one step the left half is A's alone, the right half differs."""

    def shape(wf, ids, a, b):
        placed = _set_area(wf, b, 32, 0, 32, 64) if kind == "area" else None
        if placed is None:
            placed = _set_mask(wf, b, _right_half_mask(wf, root))
        return _combine(wf, a, placed)

    wf = Workflow(installed_registry())
    got = _latents(engine, wf, _regional_graph(wf, family, shape, 1))
    moved = (got["mixed"] - got["a"]).abs()
    assert moved[..., :3].max() < 1e-5  # latent columns 0-2: left of the box
    assert moved[..., 4:].max() > 1e-3


def test_regional_prompts_off_the_patch_grid_are_a_clear_error(engine):
    """A Set Area not on Flux's 16-pixel patches names the node and the grid."""
    wf = Workflow(installed_registry())
    samplers = _regional_graph(
        wf, "flux", lambda wf, ids, a, b: _combine(wf, a, _set_area(wf, b, 8, 0, 32, 64)), 1
    )
    result = engine.run(wf, targets=[samplers["mixed"]])
    msg = " ".join(result.errors.values())
    assert "Conditioning Set Area" in msg and "16" in msg and "Traceback" not in msg, msg


# -- ControlNets on area, mask and combined prompts (SD3 / Flux) --------------------------------


@pytest.fixture(scope="module")
def region_controlnets(parts, root, flux_controlnets):
    """Per family: a ControlNet of that family (needs the VAE); a control image, and the
    same image with more drawn in its left quarter (what fitting it to a right-half area
    cuts away)."""
    from PIL import Image

    fx.sd3_controlnet(parts["sd3"]["transformer"]).save_pretrained(
        root / "controlnet" / "sd3-regions"
    )
    _, _, (edges, _) = flux_controlnets
    arr = np.array(Image.open(edges).convert("RGB"))
    arr[30:60, 0:16] = 255
    Image.fromarray(arr).save(root / "edges-left-quarter.png")
    names = {"sd3": "sd3-regions", "flux": "flux-canny.safetensors"}
    return names, str(edges), str(root / "edges-left-quarter.png")


def _controlnet_on(wf, ids, pos, neg, name: str, image: str, **params) -> str:
    """Apply ControlNet (with the checkpoint's VAE) on the prompts ``pos`` and ``neg``."""
    load = wf.add_node("load_controlnet", {"control_net_name": name}).id
    img = wf.add_node("load_image", {"image": image}).id
    apply = wf.add_node("apply_controlnet", {"strength": 0.9, **params}).id
    for src, into in [(pos, "positive"), (neg, "negative")]:
        wf.connect(*_out(src), apply, into)
    wf.connect(load, "control_net", apply, "control_net")
    wf.connect(img, "image", apply, "image")
    wf.connect(ids["ckpt"], "vae", apply, "vae")
    return apply


def _other_prompt(wf, ids, family: str) -> str:
    b = wf.add_node("text_encode", {"text": OTHER}).id
    wf.connect(ids["ckpt"], "clip", b, "clip")
    if DIT_SETUPS[family][2] is not None:
        g = wf.add_node("flux_guidance", {"guidance": DIT_SETUPS[family][2]}).id
        wf.connect(b, "conditioning", g, "conditioning")
        b = g
    return b


def _samplers(wf, ids, family: str, sides: dict, steps: int) -> dict:
    """One sampler per name, each on its (positive, negative) pair, from one Empty Latent."""
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    return {
        k: _sampler_node(wf, {**ids, "pos": p, "neg": n}, family, (lat, "latent"), steps=steps)
        for k, (p, n) in sides.items()
    }


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_controlnet_on_a_whole_image_area_or_mask_prompt_equals_it_on_the_plain_prompt(
    engine, region_controlnets, family
):
    """Apply ControlNet, then Conditioning Set Area over the whole image (or Set Mask with a
    full mask) gives the picture of the ControlNet on the plain prompt (SD3 with cfg 5: the
    negative has it too; Flux with cfg 1), and that picture is not the one without it."""
    names, image, _ = region_controlnets
    wf = Workflow(installed_registry())
    ids = _prompts(wf, family)
    apply = _controlnet_on(wf, ids, ids["pos"], ids["neg"], names[family], image, start_percent=0.3)
    pos, neg = (apply, "positive"), (apply, "negative")
    full = wf.add_node("solid_mask", {"value": 1.0, "width": 64, "height": 64}).id
    sides = {
        "plain": (pos, neg),
        "area": (_set_area(wf, pos, 0, 0, 64, 64), neg),
        "mask": (_set_mask(wf, pos, full), neg),
        "without": (ids["pos"], ids["neg"]),
    }
    got = _latents(engine, wf, _samplers(wf, ids, family, sides, STEPS))
    for kind in ("area", "mask"):
        assert torch.allclose(got[kind], got["plain"], atol=1e-5), (
            kind, (got[kind] - got["plain"]).abs().max(),
        )  # fmt: skip
    assert (got["plain"] - got["without"]).abs().max() > 1e-2  # the ControlNet did steer


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_controlnet_on_a_right_half_area_prompt_changes_only_the_right_half(
    engine, region_controlnets, family
):
    """Prompt A everywhere (no ControlNet) combined with B on the right half: with a
    ControlNet on B, after one step the left half is as without it, the right half not. The
    control image is fitted to the area as ComfyUI fits it (cut to the area's aspect around
    the centre, then resized): what the cut removes changes nothing."""
    names, image, cut_away = region_controlnets
    wf = Workflow(installed_registry())
    ids = _prompts(wf, family)
    a, b = ids["pos"], _other_prompt(wf, ids, family)
    apply = _controlnet_on(wf, ids, b, b, names[family], image)
    other = _controlnet_on(wf, ids, b, b, names[family], cut_away)
    right = {"controlled": (apply, "positive"), "cut": (other, "positive"), "bare": b}
    sides = {
        k: (_combine(wf, a, _set_area(wf, v, 32, 0, 32, 64)), ids["neg"]) for k, v in right.items()
    }
    got = _latents(engine, wf, _samplers(wf, ids, family, sides, 1))
    moved = (got["controlled"] - got["bare"]).abs()
    assert moved[..., :4].max() < 1e-6  # latent columns 0-3: left of the area
    assert moved[..., 4:].max() > 1e-3
    assert torch.allclose(got["cut"], got["controlled"], atol=1e-6)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_combined_prompts_one_with_a_controlnet_average_their_own_predictions(
    engine, region_controlnets, family
):
    """Combine of A with a ControlNet and B without: after one step the latent is the mean
    of A-with-the-ControlNet alone and B alone (the ControlNet steers A's prediction only),
    and not the latent of the two prompts without it."""
    names, image, _ = region_controlnets
    wf = Workflow(installed_registry())
    ids = _prompts(wf, family)
    a, b = ids["pos"], _other_prompt(wf, ids, family)
    apply = _controlnet_on(wf, ids, a, ids["neg"], names[family], image)
    pos, neg = (apply, "positive"), (apply, "negative")
    sides = {
        "a": (pos, neg),
        "b": (b, neg),
        "mixed": (_combine(wf, pos, b), neg),
        "bare": (_combine(wf, a, b), ids["neg"]),
    }
    got = _latents(engine, wf, _samplers(wf, ids, family, sides, 1))
    assert torch.allclose(got["mixed"], (got["a"] + got["b"]) / 2, atol=1e-5), (
        (got["mixed"] - (got["a"] + got["b"]) / 2).abs().max()
    )
    assert (got["mixed"] - got["bare"]).abs().max() > 1e-2


def _timestep_range(wf, src, start, end):
    n = wf.add_node("conditioning_set_timestep_range", {"start": start, "end": end}).id
    wf.connect(src, "conditioning", n, "conditioning")
    return n


def test_timestep_ranges_switch_the_prompt_where_the_noise_level_crosses_them(engine):
    """Conditioning Set Timestep Range on SD3: prompt A on the first half of the denoising,
    prompt B on the second, combined, equals two Sampler (Advanced) passes (A with leftover
    noise, then B) split at the first step whose noise level is below the level at 50 %
    (SD3's shift 3: 3 * 0.5 / (1 + 2 * 0.5) = 0.75), as ComfyUI's percent_to_sigma splits it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps = 4
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    split = int((sched.sigmas[:-1] >= 0.75).sum())
    assert 0 < split < steps

    wf = Workflow(installed_registry())
    ids = _prompts(wf, "sd3")
    a = ids["pos"]
    b = wf.add_node("text_encode", {"text": OTHER}).id
    wf.connect(ids["ckpt"], "clip", b, "clip")
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    ids["pos"] = _combine(wf, _timestep_range(wf, a, 0.0, 0.5), _timestep_range(wf, b, 0.5, 1.0))
    ranged = _sampler_node(wf, ids, "sd3", (lat, "latent"), steps=steps)
    ids["pos"] = a
    first = _sampler_node(
        wf, ids, "sd3", (lat, "latent"), kind="sampler_advanced", steps=steps,
        end_at_step=split, return_with_leftover_noise=True,
    )  # fmt: skip
    ids["pos"] = b
    second = _sampler_node(
        wf, ids, "sd3", (first, "latent"), kind="sampler_advanced", steps=steps,
        start_at_step=split, add_noise=False,
    )  # fmt: skip
    only_a = _sampler_node(wf, {**ids, "pos": a}, "sd3", (lat, "latent"), steps=steps)
    got = _latents(engine, wf, {"ranged": ranged, "two": second, "a": only_a})
    assert torch.allclose(got["ranged"], got["two"], atol=1e-5), (
        (got["ranged"] - got["two"]).abs().max()
    )
    assert (got["ranged"] - got["a"]).abs().max() > 1e-2  # B really took over


@pytest.mark.parametrize("raw", ["[" * 100_000 + "]" * 100_000, "{not json", "[1, 2]"])
def test_hostile_config_metadata_in_a_model_file_is_a_clear_error(tmp_path, raw):
    """The configs a single file carries in its metadata come from the file: JSON nested
    past the parser's depth, broken JSON or the wrong kind of value is a NodeError naming
    the file, never a RecursionError or a traceback."""
    from types import SimpleNamespace

    from nodes import dit, sdload
    from studio.errors import NodeError

    weights = SimpleNamespace(
        metadata={sdload.SIDECAR_METADATA_KEY: raw},
        path=tmp_path / "hostile.safetensors",
        label="checkpoint 'hostile.safetensors'",
    )
    with pytest.raises(NodeError, match=r"hostile\.safetensors"):
        dit._own_configs(weights, weights.label)
    with pytest.raises(NodeError, match=r"hostile\.safetensors"):
        sdload._sidecar(weights)


def test_an_sd3_controlnet_without_t5_equals_the_pipeline_without_it(
    engine, parts, root, region_controlnets, monkeypatch
):
    """SD3 without T5 (the Sampler cuts the 256 zero context rows to one with a logit bias):
    an SD3 ControlNet, which attends to the prompt but cannot take the bias, gets the whole
    context, so the picture is StableDiffusion3ControlNetPipeline's without T5 (it differed
    by 6.7/255 when the ControlNet saw the cut context)."""
    from PIL import Image

    names, image, _ = region_controlnets
    wf = Workflow(installed_registry())
    ids = {"ckpt": wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd3-no-t5"}).id}
    ids["pos"] = wf.add_node("text_encode", {"text": PROMPT}).id
    ids["neg"] = wf.add_node("text_encode", {"text": NEGATIVE}).id
    for n in (ids["pos"], ids["neg"]):
        wf.connect(ids["ckpt"], "clip", n, "clip")
    apply = _controlnet_on(wf, ids, ids["pos"], ids["neg"], names["sd3"], image)
    ids["pos"], ids["neg"] = (apply, "positive"), (apply, "negative")
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    dec = _decode(wf, ids, _sampler_node(wf, ids, "sd3", (lat, "latent")))
    got = _outputs(engine, wf, [dec])[dec]["image"].numpy()

    _mean_not_sample(monkeypatch)
    cn = diffusers.SD3ControlNetModel.from_pretrained(root / "controlnet" / names["sd3"])
    pipe = diffusers.StableDiffusion3ControlNetPipeline(**parts["sd3-no-t5"], controlnet=cn)
    want = _pipe_image(
        pipe, "euler", negative_prompt=NEGATIVE, guidance_scale=5.0,
        control_image=Image.open(image).convert("RGB"), controlnet_conditioning_scale=0.9,
    )  # fmt: skip
    _close(got, want)


# -- FLUX.1 Kontext: Reference Latent ---------------------------------------------------------


def _kontext_graph(wf, photos, reference: bool = True, sides=("pos",), **params) -> tuple[str, str]:
    """Load Image -> VAE Encode -> Reference Latent on the prompt (one per photo) -> Sampler
    on an Empty Latent of the photo's size -> VAE Decode."""
    ids = _prompts(wf, "flux")
    if reference:
        for photo in photos:
            _, enc = _encoded_photo(wf, ids, photo)
            for side in sides:
                ref = wf.add_node("reference_latent").id
                wf.connect(ids[side], "conditioning", ref, "conditioning")
                wf.connect(enc, "latent", ref, "latent")
                ids[side] = ref
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    s = _sampler_node(wf, ids, "flux", (lat, "latent"), **params)
    return s, _decode(wf, ids, s)


def test_a_reference_latent_equals_the_flux_kontext_pipeline(engine, parts, photo_and_mask):
    """Load Image + VAE Encode + Reference Latent + Sampler equal FluxKontextPipeline with the
    image (not resized: _auto_resize off): the reference's tokens follow the noise's with
    position index 1, its VAE latent the mean (the pipeline's argmax: no generator draw).
    Without the reference the picture is clearly another."""
    from PIL import Image

    photo = photo_and_mask[0]
    wf = Workflow(installed_registry())
    s, dec = _kontext_graph(wf, [photo])
    plain, plain_dec = _kontext_graph(wf, [photo], reference=False)
    out = _outputs(engine, wf, [dec, s, plain, plain_dec])
    got = out[dec]["image"].numpy()

    pipe = diffusers.FluxKontextPipeline(**parts["flux"])
    want = pipe(
        image=Image.open(photo).convert("RGB"), prompt=PROMPT, height=64, width=64,
        max_area=64 * 64, _auto_resize=False, num_inference_steps=STEPS,
        guidance_scale=DIT_SETUPS["flux"][2], output_type="np",
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images  # fmt: skip
    _close(got, want)
    moved = out[s]["latent"]["samples"] - out[plain]["latent"]["samples"]
    assert moved.abs().max() > 1e-2  # as a ControlNet's steer is checked (here 0.024)
    assert np.abs(got - out[plain_dec]["image"].numpy()).max() > 1 / 255


def test_a_reference_on_both_prompts_with_true_cfg_equals_the_kontext_pipeline(
    engine, parts, photo_and_mask
):
    """cfg 2 with Reference Latent on the positive and the negative equals FluxKontextPipeline
    with true_cfg_scale 2 and a negative prompt (the pipeline gives both passes the image)."""
    from PIL import Image

    photo = photo_and_mask[0]
    wf = Workflow(installed_registry())
    _, dec = _kontext_graph(wf, [photo], sides=("pos", "neg"), cfg=2.0)
    got = _outputs(engine, wf, [dec])[dec]["image"].numpy()
    pipe = diffusers.FluxKontextPipeline(**parts["flux"])
    want = pipe(
        image=Image.open(photo).convert("RGB"), prompt=PROMPT, negative_prompt=NEGATIVE,
        true_cfg_scale=2.0, height=64, width=64, max_area=64 * 64, _auto_resize=False,
        num_inference_steps=STEPS, guidance_scale=DIT_SETUPS["flux"][2], output_type="np",
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images  # fmt: skip
    _close(got, want)


def test_references_take_comfyui_offsets_and_wrong_uses_are_clear_errors(engine, root):
    """Two references: both at index 1, the second placed beside the first (ComfyUI's offset
    rule); the second changes the picture. On SD3, a Reference Latent is refused, naming it."""
    from nodes.dit import references
    from nodes.values import Cond

    a, b = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 6, 4)
    c = Cond(embeds=None, extra={"reference_latents": [a, b]})
    tokens, ids = references(c, 2, torch.device("cpu"), torch.float32)
    assert tokens.shape == (2, 16 + 6, 64)
    assert (ids[:, 0] == 1).all()
    assert ids[16:, 1].tolist() == [r for r in range(3) for _ in range(2)]  # rows 0..2
    assert ids[16:, 2].tolist() == [4, 5] * 3  # right of the first (8 cells = 4 patches)

    from PIL import Image

    rng = np.random.default_rng(3)
    other = root / "other.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(other)
    photo = root / "photo.png"
    if not photo.exists():
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    wf = Workflow(installed_registry())
    one, _ = _kontext_graph(wf, [photo])
    two, _ = _kontext_graph(wf, [photo, other])
    out = _outputs(engine, wf, [one, two])
    moved = out[two]["latent"]["samples"] - out[one]["latent"]["samples"]
    assert moved.abs().max() > 1e-2

    wf = Workflow(installed_registry())
    ids = _prompts(wf, "sd3")
    _, enc = _encoded_photo(wf, ids, photo)
    ref = wf.add_node("reference_latent").id
    wf.connect(ids["pos"], "conditioning", ref, "conditioning")
    wf.connect(enc, "latent", ref, "latent")
    ids["pos"] = ref
    lat = wf.add_node("empty_latent", {"width": 64, "height": 64, "batch_size": 1}).id
    s = _sampler_node(wf, ids, "sd3", (lat, "latent"))
    result = engine.run(wf, targets=[s])
    assert not result.ok
    msg = " ".join(result.errors.values())
    assert "Reference Latent" in msg and "Flux" in msg and "Traceback" not in msg


def test_a_kontext_pipeline_folder_loads_as_flux(root, parts, engine):
    """A FluxKontextPipeline folder is a Flux checkpoint (the transformer is Flux dev's)."""
    diffusers.FluxKontextPipeline(**parts["flux"]).save_pretrained(
        str(root / "checkpoints" / "tiny-kontext")
    )
    got = checkpoint_image(engine, "tiny-kontext", cfg=1.0, guidance=2.5)
    want = checkpoint_image(engine, "tiny-flux", cfg=1.0, guidance=2.5)
    _close(got, want, bound=0.0)


def test_flux_kontext_image_scale_picks_the_nearest_kontext_resolution():
    from nodes.dit_nodes import flux_kontext_image_scale, kontext_size

    assert kontext_size(640, 480) == (1184, 880)
    assert kontext_size(500, 500) == (1024, 1024)
    assert kontext_size(480, 1280) == (672, 1568)
    image = torch.rand(1, 300, 400, 3)
    out = flux_kontext_image_scale.execute(None, image=image)
    assert out.shape == (1, 880, 1184, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_a_comfyui_kontext_prompt_imports_onto_these_nodes():
    """ComfyUI's Kontext wiring (LoadImage -> FluxKontextImageScale -> VAEEncode ->
    ReferenceLatent on the prompt) imports onto Studio's nodes, links kept."""
    from studio.graph.importers.comfyui import import_comfyui

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "kontext"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "3": {"class_type": "FluxKontextImageScale", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "make it blue", "clip": ["1", 1]}},
        "6": {"class_type": "ReferenceLatent",
              "inputs": {"conditioning": ["5", 0], "latent": ["4", 0]}},
        "7": {"class_type": "FluxGuidance", "inputs": {"guidance": 2.5, "conditioning": ["6", 0]}},
    }  # fmt: skip
    result = import_comfyui(prompt, installed_registry(), source="kontext.json")
    wf = result.workflow
    by_type = {n.type: n.id for n in wf.nodes}
    assert {"reference_latent", "flux_kontext_image_scale"} <= set(by_type)
    links = {(k.source, k.output, k.target, k.input) for k in wf.links}
    ref, scale = by_type["reference_latent"], by_type["flux_kontext_image_scale"]
    assert (by_type["vae_encode"], "latent", ref, "latent") in links
    assert (by_type["text_encode"], "conditioning", ref, "conditioning") in links
    assert (scale, "image", by_type["vae_encode"], "image") in links
    assert (by_type["load_image"], "image", scale, "image") in links


# -- GGUF T5 text encoders (city96's t5-v1_1-xxl-encoder-Q8_0.gguf and the like) ----------------

#: The prompt embeddings' and picture's largest difference from the .safetensors T5, per
#: storage type. Measured on the tiny T5 (embeddings up to 3.7), Flux / SD3: embeddings F32 0,
#: F16 0.0021 / 0.0021, Q8_0 0.045 / 0.045 (about 1 % of the largest: Q8_0 keeps 8 bits a
#: weight, one scale per 32); pictures F32 0, F16 0.00005 / 0.00005, Q8_0 0.0004 / 0.0004
#: (0.1/255: the tiny transformer barely moves with its prompt; a real one moves more).
GGUF_T5_BOUNDS = {"F32": (0.0, 1 / 255), "F16": (0.005, 1 / 255), "Q8_0": (0.1, 1 / 255)}


def _gguf_t5(parts, root, qtype: str) -> str:
    name = f"t5-{qtype}.gguf"
    path = root / "text_encoders" / name
    if not path.exists():
        fx.save_gguf_t5(parts["flux"]["text_encoder_2"], path, qtype)
    return name


def _t5_embeds(engine, clips: list[str], family: str):
    wf = Workflow(installed_registry())
    params = {f"clip_name{i + 1}": n for i, n in enumerate(clips)}
    kind = "load_text_encoders_3" if len(clips) == 3 else "load_text_encoders"
    c = wf.add_node(kind, params if len(clips) == 3 else {**params, "type": family}).id
    t = wf.add_node("text_encode", {"text": PROMPT}).id
    wf.connect(c, "clip", t, "clip")
    (cond,) = _outputs(engine, wf, [t])[t]["conditioning"]
    return cond.embeds


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0"])
def test_a_gguf_t5_gives_the_safetensors_t5s_flux_prompt_and_picture(engine, parts, root, qtype):
    pytest.importorskip("gguf")
    name = _gguf_t5(parts, root, qtype)
    embed_bound, image_bound = GGUF_T5_BOUNDS[qtype]
    want = _t5_embeds(engine, ["clip_l.safetensors", "t5xxl.safetensors"], "flux")
    got = _t5_embeds(engine, [name, "clip_l.safetensors"], "flux")  # any order
    assert got.shape == want.shape
    diff = float((got - want).abs().max())
    assert diff <= embed_bound
    assert (diff > 0) == (qtype != "F32")  # the file's own weights, rounded as it stores them
    files = {"unet": "flux-orig.safetensors", "vae": "ae.safetensors", "family": "flux"}
    default = files_image(engine, clips=["clip_l.safetensors", "t5xxl.safetensors"], **files, cfg=1)
    gguf = files_image(engine, clips=["clip_l.safetensors", name], **files, cfg=1)
    _close(gguf, default, bound=image_bound)


@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_a_gguf_t5_gives_the_safetensors_t5s_sd3_picture(engine, parts, root, qtype):
    pytest.importorskip("gguf")
    te = root / "text_encoders"
    if not (te / "sd3-clip_g.safetensors").exists():  # SD3's CLIPs with their projections
        fx.save(fx.clip_file_state(parts["sd3"]["text_encoder"]), te / "sd3-clip_l.safetensors")
        fx.save(fx.clip_file_state(parts["sd3"]["text_encoder_2"]), te / "sd3-clip_g.safetensors")
        fx.save(fx.ldm_vae(parts["sd3"]["vae"]), root / "vae" / "sd3-vae.safetensors")
    name = _gguf_t5(parts, root, qtype)  # the tiny SD3's T5 is the tiny Flux's (same seed)
    assert torch.equal(
        parts["sd3"]["text_encoder_3"].shared.weight, parts["flux"]["text_encoder_2"].shared.weight
    )
    clips = ["sd3-clip_l.safetensors", "sd3-clip_g.safetensors"]
    embed_bound, image_bound = GGUF_T5_BOUNDS[qtype]
    want = _t5_embeds(engine, [*clips, "t5xxl.safetensors"], "sd3")
    got = _t5_embeds(engine, [*clips, name], "sd3")
    assert float((got - want).abs().max()) <= embed_bound
    files = {"unet": "sd3-orig.safetensors", "vae": "sd3-vae.safetensors", "family": "sd3"}
    default = files_image(engine, clips=[*clips, "t5xxl.safetensors"], **files, cfg=5.0)
    gguf = files_image(engine, clips=[*clips, name], **files, cfg=5.0)
    _close(gguf, default, bound=image_bound)


def test_a_q8_gguf_t5_keeps_its_linear_layers_quantised(parts, root):
    pytest.importorskip("gguf")
    from nodes import dit

    def load(name: str):
        path = root / "text_encoders" / name
        source = dit.inspect_text_encoder(path, name, ("id",))
        return source, dit.load_component(source, "text_encoder", torch.float32, "t5")

    source, q8 = load(_gguf_t5(parts, root, "Q8_0"))
    assert source.family == "t5" and source.configs["text_encoder"]["num_layers"] == 2
    quantised = {k for k, p in q8.named_parameters() if hasattr(p, "quant_type")}
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in quantised
    assert "encoder.block.1.layer.1.DenseReluDense.wo.weight" in quantised
    _, f32 = load(_gguf_t5(parts, root, "F32"))

    def nbytes(m):
        return sum(p.numel() * p.element_size() for p in m.parameters())

    # The quantised layers hold 34 bytes per 32 weights (F32: 128); the embedding is float.
    layers = [k for k in quantised if k.startswith("encoder.")]
    q8_layers = sum(q8.get_parameter(k).numel() for k in layers)
    f32_layers = sum(f32.get_parameter(k).numel() * 4 for k in layers)
    assert q8_layers * 128 == f32_layers * 34
    assert nbytes(q8) < nbytes(f32)


def test_a_gguf_that_is_no_t5_encoder_is_a_clear_error_naming_the_file(engine, parts, root):
    pytest.importorskip("gguf")
    te = root / "text_encoders"
    fx.save_gguf(fx.to_original(parts["flux"]["transformer"], "flux"), te / "flux-q8.gguf")
    (te / "broken.gguf").write_bytes(b"GGUF" + bytes(60))
    # metadata claiming a billion layers over the file's two: refused, not built
    fx.save_gguf_t5(parts["flux"]["text_encoder_2"], te / "liar.gguf", "F16", block_count=10**9)
    for name, words in [
        ("flux-q8.gguf", ("a Flux.1 transformer", "T5")),
        ("broken.gguf", ("not a readable GGUF file",)),
        ("liar.gguf", ("block_count = 1000000000", "tensors have 2")),
    ]:
        wf = Workflow(installed_registry())
        params = {"clip_name1": "clip_l.safetensors", "clip_name2": name, "type": "flux"}
        n = wf.add_node("load_text_encoders", params).id
        msg = engine.run(wf, targets=[n]).errors[n]
        assert f"'{name}'" in msg and all(w in msg for w in words), msg
