"""The Sampler's live preview on studio-tiny: the model carries its own latent -> RGB factors
(training/preview_factors.py), so the preview shows the picture being drawn instead of the
coloured noise Stable Diffusion's fixed factors make of its latent space; a model without
factors still gets SD's preview."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402

from nodes import sdload  # noqa: E402
from nodes.denoise import SD_RGB, preview_image  # noqa: E402
from nodes.values import LatentRgb  # noqa: E402
from studio.engine.events import EventKind  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.modelfiles import EMBEDDED_MODELS  # noqa: E402

FOLDER = EMBEDDED_MODELS / "checkpoints" / "studio-tiny"
SINGLE = EMBEDDED_MODELS / "checkpoints" / "studio-tiny.safetensors"
CAPTIONS = (
    "a large red circle on a blue background",
    "a large yellow square on a purple background",
    "a large white triangle on a green background",
    "a large orange square on a white background",
)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    """Snapshots of the shipped folder (the trainer may re-export it meanwhile): as shipped
    (``tiny-own``) and without its preview factors (``tiny-plain``)."""
    root = tmp_path_factory.mktemp("preview") / "models"
    own = Path(shutil.copytree(FOLDER, root / "checkpoints" / "tiny-own"))
    plain = Path(shutil.copytree(FOLDER, root / "checkpoints" / "tiny-plain"))
    index = json.loads((plain / "model_index.json").read_text("utf-8"))
    index.pop(sdload.FOLDER_LATENT_RGB_KEY)
    (plain / "model_index.json").write_text(json.dumps(index, indent=2), "utf-8")
    assert own.is_dir()
    return root


@pytest.fixture(scope="module")
def engine(models_root, tmp_path_factory):
    from studio.engine import Engine
    from studio.settings import Settings

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("preview-out")
    settings = Settings(
        models_root=str(models_root),
        output_dir=str(out / "out"),
        input_dir=str(out / "in"),
        device="cpu",
    )
    yield Engine(installed_registry(), settings=settings)


def run(engine, ckpt: str, caption: str, seed: int):
    """A 20-step txt2img run: the final preview (uint8 HxWx3), the decoded image and the
    sampler's output latent."""
    wf, ids = fx.txt2img(ckpt, prompt=caption, negative="", seed=seed, steps=20, cfg=7.0)
    events = []
    result = engine.run(wf, on_event=events.append)
    assert result.ok, result.errors
    previews = [e for e in events if e.event == EventKind.PROGRESS and e.node == ids["sampler"]]
    assert [e.step for e in previews] == list(range(1, 21))
    preview = np.asarray(previews[-1].preview.convert("RGB")).astype(np.float64)
    image = result.outputs[ids["decode"]]["image"]
    return preview, image, result.outputs[ids["sampler"]]["latent"]["samples"]


def downsampled(image, size: int) -> np.ndarray:
    """The decoded image [1, H, W, 3] box-downsampled to ``size``, in 0..255 levels."""
    x = image.permute(0, 3, 1, 2)
    small = torch.nn.functional.avg_pool2d(x, x.shape[-1] // size)
    return small[0].permute(1, 2, 0).numpy().astype(np.float64) * 255


@pytest.fixture(scope="module")
def runs(engine):
    return {
        (ckpt, caption): run(engine, ckpt, caption, seed)
        for seed, caption in enumerate(CAPTIONS)
        for ckpt in ("tiny-own", "tiny-plain")
    }


def test_the_preview_shows_the_picture_with_the_models_own_factors(runs):
    own_err, sd_err = [], []
    for caption in CAPTIONS:
        own, image, _ = runs["tiny-own", caption]
        plain, plain_image, _ = runs["tiny-plain", caption]
        # the factors change the preview only, never the picture
        assert torch.equal(image, plain_image)
        assert own.shape == plain.shape == (16, 16, 3)  # studio-tiny's latent size
        target = downsampled(image, 16)
        own_err.append(np.abs(own - target).mean())
        sd_err.append(np.abs(plain - target).mean())
    # Measured (levels of 255): 33, 50, 65, 25 with the model's factors; 140, 88, 65, 138
    # with SD's. A linear map cannot tell every palette colour apart (green backgrounds
    # come out grey), so this compares the means.
    own, sd = np.mean(own_err), np.mean(sd_err)
    assert own < 55 and own < 0.6 * sd, (own_err, sd_err)


def test_a_model_without_factors_gets_the_sd_preview(runs):
    plain, _, latent = runs["tiny-plain", CAPTIONS[0]]
    # The last step's prediction is the sampler's output: project it with SD's matrix.
    sd = torch.einsum("chw,cr->hwr", latent[0], torch.tensor(SD_RGB))
    expected = ((sd + 1) * 0.5).clamp(0, 1).numpy() * 255
    assert np.abs(plain - expected).max() <= 1.5


def test_the_factors_travel_in_the_folder_and_the_single_file():
    from diffusers import StableDiffusionPipeline

    folder = sdload.inspect_checkpoint(FOLDER, "studio-tiny", ("f",))
    single = sdload.inspect_checkpoint(SINGLE, "studio-tiny.safetensors", ("s",))
    assert folder.latent_rgb is not None and len(folder.latent_rgb.matrix) == 4
    assert single.latent_rgb == folder.latent_rgb
    assert sdload.handles_for(single)[0].latent_rgb == folder.latent_rgb
    # diffusers ignores the private model_index.json key: the folder still loads as a pipeline
    pipe = StableDiffusionPipeline.from_pretrained(
        FOLDER, local_files_only=True, safety_checker=None
    )
    assert sdload.FOLDER_LATENT_RGB_KEY not in pipe.config


def test_malformed_factors_fall_back_to_the_familys():
    assert LatentRgb.from_json(None) is None
    assert LatentRgb.from_json({"matrix": [[1, 2]]}) is None
    assert LatentRgb.from_json({"matrix": [[1, 2, "x"]]}) is None
    assert LatentRgb.from_json({"matrix": [[1, 2, float("nan")]]}) is None
    ok = LatentRgb.from_json({"matrix": [[0.5, 0, 0]] * 4, "bias": [0.5, 0.5, 0.5]})
    assert ok == LatentRgb(((0.5, 0.0, 0.0),) * 4, (0.5, 0.5, 0.5))
    latents = torch.ones(1, 4, 2, 2)
    assert np.asarray(preview_image(latents, "sd1", ok))[0, 0].tolist() == [255, 128, 128]
    three_rows = LatentRgb(((1.0, 1.0, 1.0),) * 3)  # not a 4-channel projection
    assert np.array_equal(
        np.asarray(preview_image(latents, "sd1", three_rows)),
        np.asarray(preview_image(latents, "sd1")),
    )
