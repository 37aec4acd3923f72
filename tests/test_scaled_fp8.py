"""ComfyUI's "scaled fp8" files (t5xxl_fp8_e4m3fn_scaled, sd3.5_large_fp8_scaled, clip_l /
clip_g scaled, Flux transformers): each layer weight stored in fp8 beside its float32
``scale_weight`` (and ``scale_input``), a ``scaled_fp8`` marker tensor under the component's
prefix. Studio widens each weight times its scale at load: the picture equals the one from
the same weights stored dequantised (tiny random Flux / SD3.5 components, CPU, 64x64)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import dit_fixtures as fx  # noqa: E402
from test_dit import _close, checkpoint_image, files_image  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.graph.workflow import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

FP8 = torch.float8_e4m3fn
#: ComfyUI reads the marker's dtype (the fp8 format) and its size (2 elements: no fp8
#: matrix multiply); files carry it with 0 or 2 elements.
MARKERS = (torch.zeros(2, dtype=FP8), torch.empty(0, dtype=FP8))


def scaled(state: dict, prefixes: tuple[str, ...], seed: int, marker=MARKERS[0]):
    """(the state as a scaled fp8 file holds it, the same weights dequantised): each layer
    matrix under ``prefixes`` (not embeddings, as ComfyUI scales Linear layers only) stored
    as fp8 of itself over a random per-layer scale, with that scale and an input scale."""
    gen = torch.Generator().manual_seed(seed)
    out, deq = {}, {}
    for k, v in state.items():
        linear = k.endswith(".weight") and v.ndim == 2 and k.startswith(prefixes)
        if not linear or any(w in k for w in ("embed", "shared", "relative_attention_bias")):
            out[k] = deq[k] = v
            continue
        base = k.removesuffix(".weight")
        factor = 1.0 + float(torch.rand((), generator=gen))  # fits e4m3fn's 448 range
        scale = torch.tensor(float(v.abs().max()) / 448 * factor, dtype=torch.float32)
        q = (v.float() / scale).to(FP8)
        out[k], out[base + ".scale_weight"] = q, scale
        out[base + ".scale_input"] = torch.ones((), dtype=torch.float32)
        deq[k] = q.float() * scale
    for p in prefixes:
        out[p + "scaled_fp8"] = marker.clone()
    return out, deq


@pytest.fixture(scope="module")
def parts():
    return {"flux": fx.tiny_flux(), "sd3": fx.tiny_sd3()}


@pytest.fixture(scope="module")
def root(tmp_path_factory, parts):
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("scaled-models")
    ck, dm, te, vae = (
        root / n for n in ("checkpoints", "diffusion_models", "text_encoders", "vae")
    )
    for d in (ck, dm, te, vae):
        d.mkdir()
    flux = parts["flux"]
    unet, unet_deq = scaled(fx.to_original(flux["transformer"], "flux"), ("",), 1)
    p = "model.diffusion_model."
    fx.save(unet, dm / "flux_fp8_scaled.safetensors", prefix=p)
    fx.save(unet_deq, dm / "flux_dequantised.safetensors", prefix=p)
    t5, t5_deq = scaled(fx.t5_file_state(flux["text_encoder_2"]), ("",), 2, MARKERS[1])
    fx.save(t5, te / "t5xxl_fp8_e4m3fn_scaled.safetensors")
    fx.save(t5_deq, te / "t5xxl_dequantised.safetensors")
    clip, clip_deq = scaled(fx.clip_file_state(flux["text_encoder"]), ("",), 3)
    fx.save(clip, te / "clip_l_fp8_scaled.safetensors")
    fx.save(clip_deq, te / "clip_l_dequantised.safetensors")
    fx.save(fx.ldm_vae(flux["vae"]), vae / "ae.safetensors")
    # SD3.5 all-in-one (sd3.5_large_fp8_scaled): transformer, CLIP-L, CLIP-G and T5 scaled.
    fx.sd3_all_in_one(parts["sd3"], ck / "sd35.safetensors")
    encoders = (f"text_encoders.{n}.transformer." for n in ("clip_l", "clip_g", "t5xxl"))
    prefixes = ("model.diffusion_model.", *encoders)
    aio, aio_deq = scaled(load_file(str(ck / "sd35.safetensors")), prefixes, 4)
    fx.save(aio, ck / "sd3.5_fp8_scaled.safetensors")
    fx.save(aio_deq, ck / "sd3.5_dequantised.safetensors")
    return root


@pytest.fixture(scope="module")
def engine(root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scaled-run")
    settings = Settings(models_root=str(root), output_dir=str(tmp / "o"), input_dir=str(tmp / "i"))
    return Engine(installed_registry(), settings=settings)


def test_flux_and_its_text_encoders_as_scaled_fp8_files_equal_their_dequantised_weights(
    engine, parts, root
):
    kw = {"family": "flux", "cfg": 1.0, "guidance": 3.5}
    got = files_image(
        engine, "flux_fp8_scaled.safetensors",
        ["t5xxl_fp8_e4m3fn_scaled.safetensors", "clip_l_fp8_scaled.safetensors"],
        "ae.safetensors", **kw,
    )  # fmt: skip
    want = files_image(
        engine, "flux_dequantised.safetensors",
        ["t5xxl_dequantised.safetensors", "clip_l_dequantised.safetensors"], "ae.safetensors",
        **kw,
    )  # fmt: skip
    _close(got, want)
    assert got.std() > 0.01  # a picture, not a flat fill
    # The loaded weights are the dequantised ones, in the compute type (not fp8).
    from nodes import dit

    path = root / "text_encoders" / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    t5 = dit.load_component(
        dit.inspect_text_encoder(path, "t5", ("t5",)), "text_encoder", torch.float32, "t"
    )
    assert all(p.dtype == torch.float32 for p in t5.parameters())
    from safetensors.torch import load_file

    deq = load_file(str(root / "text_encoders" / "t5xxl_dequantised.safetensors"))
    for k, v in t5.state_dict().items():
        if k in deq:
            assert torch.equal(v, deq[k]), k


def test_an_sd35_all_in_one_scaled_fp8_file_equals_its_dequantised_weights(engine, root):
    got = checkpoint_image(engine, "sd3.5_fp8_scaled.safetensors", cfg=4.0)
    want = checkpoint_image(engine, "sd3.5_dequantised.safetensors", cfg=4.0)
    _close(got, want)
    assert got.std() > 0.01
    plain = checkpoint_image(engine, "sd35.safetensors", cfg=4.0)
    assert np.abs(got - plain).max() > 0  # the fp8 weights really are the ones used


def test_a_scale_that_does_not_fit_its_weight_is_a_clear_error(engine, root):
    from safetensors.torch import load_file

    te = root / "text_encoders"
    state = load_file(str(te / "clip_l_fp8_scaled.safetensors"))
    key = next(k for k in state if k.endswith(".scale_weight"))
    state[key] = torch.ones(3, dtype=torch.float32)
    fx.save(state, te / "clip_l_bad_scale.safetensors")
    wf = Workflow(installed_registry())
    c = wf.add_node(
        "load_text_encoders",
        {"clip_name1": "clip_l_bad_scale.safetensors",
         "clip_name2": "t5xxl_fp8_e4m3fn_scaled.safetensors", "type": "flux"},
    ).id  # fmt: skip
    n = wf.add_node("text_encode", {"text": "a cat"}).id
    wf.connect(c, "clip", n, "clip")
    msg = " ".join(engine.run(wf, targets=[n]).errors.values())
    assert "scale" in msg and key.removesuffix(".scale_weight") in msg, msg


def test_weight_dtype_fp8_narrows_a_scaled_file_after_its_scales(root):
    # Load Diffusion Model's fp8_e4m3fn on a scaled file: the dequantised weights (scale
    # applied) rounded to fp8 again, as for an fp16 file: near the dequantised ones.
    from nodes import dit

    path = root / "diffusion_models" / "flux_fp8_scaled.safetensors"
    net = dit.load_component(
        dit.inspect_diffusion_model(path, "f", ("f",), "fp8_e4m3fn"), "transformer",
        torch.float32, "t",
    )  # fmt: skip
    deq = dit.load_component(
        dit.inspect_diffusion_model(
            root / "diffusion_models" / "flux_dequantised.safetensors", "d", ("d",), "default"
        ),
        "transformer", torch.float32, "t",
    )  # fmt: skip
    got, want = (
        net.transformer_blocks[0].attn.to_q.weight,
        deq.transformer_blocks[0].attn.to_q.weight,
    )
    assert got.dtype == torch.float8_e4m3fn
    assert torch.equal(got.float(), want.to(torch.float8_e4m3fn).float())
