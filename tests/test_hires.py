"""A hires-fix second pass can be wired: upscale (latent or pixels), then sample at denoise < 1."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    root = tmp_path_factory.mktemp("models")
    fx.save_folder(fx.sd1_pipeline(fx.tiny_sd1()), root / "checkpoints" / "tiny-sd1")
    (root / "upscale_models").mkdir()
    torch.manual_seed(0)
    model = Compact(num_feat=8, num_conv=2, upscale=2)
    save_file(model.state_dict(), str(root / "upscale_models" / "x2.safetensors"))
    return root


@pytest.fixture
def engine(models_root, tmp_path):
    settings = Settings(models_root=str(models_root), output_dir=str(tmp_path / "out"))
    yield Engine(installed_registry(), settings=settings)


def second_pass(wf, ids, latent_source):
    s2 = wf.add_node(
        "sampler",
        {
            "seed": 5,
            "steps": 4,
            "cfg": 5.0,
            "sampler": "euler",
            "scheduler": "normal",
            "denoise": 0.5,
        },
        title="Second pass",
    )
    d2 = wf.add_node("vae_decode")
    out = wf.add_node("preview_image")
    wf.connect(ids["ckpt"], "model", s2.id, "model")
    wf.connect(ids["pos"], "conditioning", s2.id, "positive")
    wf.connect(ids["neg"], "conditioning", s2.id, "negative")
    wf.connect(*latent_source, s2.id, "latent")
    wf.connect(s2.id, "latent", d2.id, "latent")
    wf.connect(ids["ckpt"], "vae", d2.id, "vae")
    wf.connect(d2.id, "image", out.id, "images")
    return s2.id, d2.id


def test_latent_upscale_hires_fix(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=3)
    up = wf.add_node("latent_upscale", {"scale_by": 1.5, "method": "bilinear"})
    wf.connect(ids["sampler"], "latent", up.id, "latent")
    s2, d2 = second_pass(wf, ids, (up.id, "latent"))
    result = engine.run(wf)
    assert result.ok, result.errors
    assert result.outputs[d2]["image"].shape == (1, 96, 96, 3)
    # changing only the second pass re-runs only it and what follows
    wf.set_param("Second pass", "denoise", 0.6)
    again = engine.run(wf)
    assert ids["sampler"] in again.cached and s2 in again.ran


def test_model_upscale_hires_fix(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=3)
    loader = wf.add_node("load_upscale_model", {"model_name": "x2.safetensors"})
    up = wf.add_node("upscale_image", {"tile_size": 0})
    enc = wf.add_node("vae_encode")
    wf.connect(loader.id, "upscale_model", up.id, "upscale_model")
    wf.connect(ids["decode"], "image", up.id, "image")
    wf.connect(up.id, "image", enc.id, "image")
    wf.connect(ids["ckpt"], "vae", enc.id, "vae")
    _, d2 = second_pass(wf, ids, (enc.id, "latent"))
    result = engine.run(wf)
    assert result.ok, result.errors
    assert result.outputs[d2]["image"].shape == (1, 128, 128, 3)
