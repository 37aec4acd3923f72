"""Quantize Image (ComfyUI's ImageQuantize): Pillow's palette of the picture, then no
dither, Floyd-Steinberg, or an ordered Bayer pattern. Checked against Pillow called here
directly and against Bayer's threshold matrices built the textbook way (the index matrix
I_2n = [[4 I, 4 I + 2], [4 I + 3, 4 I + 1]]); it imports from ComfyUI and exports back."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from nodes.image import bayer_offsets, image_quantize  # noqa: E402
from studio.errors import NodeError  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402


def picture(h: int = 37, w: int = 29) -> torch.Tensor:
    """Two soft gradients and a little noise: every shade in between, two frames."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    noise = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(0)) * 0.05
    one = torch.stack([x, y, (x + y) / 2], dim=-1) * 0.95 + noise
    return torch.stack([one, one.flip(0)])


def eight_bit(img: torch.Tensor, b: int) -> np.ndarray:
    return (img[b] * 255).to(torch.uint8).numpy()


@pytest.mark.parametrize("colors", [2, 5, 16])
@pytest.mark.parametrize("dither", ["none", "floyd-steinberg"])
def test_quantize_is_pillows_palette_of_the_picture(colors, dither):
    img = picture()
    out = image_quantize.execute(None, img, colors, dither)
    assert out.shape == img.shape
    how = Image.Dither.NONE if dither == "none" else Image.Dither.FLOYDSTEINBERG
    for b in range(2):
        im = Image.fromarray(eight_bit(img, b))
        want = np.asarray(
            im.quantize(palette=im.quantize(colors=colors), dither=how).convert("RGB")
        )
        got = (out[b] * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(got, want)
        assert len(np.unique(got.reshape(-1, 3), axis=0)) <= colors


def textbook_bayer(order: int) -> np.ndarray:
    index = np.zeros((1, 1), np.int64)
    while index.shape[0] < order:
        index = np.block([[4 * index, 4 * index + 2], [4 * index + 3, 4 * index + 1]])
    return (index + 0.5) / order**2 - 0.5


@pytest.mark.parametrize("order", [2, 4, 8, 16])
def test_bayer_offsets_are_the_textbook_threshold_matrix(order):
    np.testing.assert_allclose(bayer_offsets(order), textbook_bayer(order), atol=1e-6)


@pytest.mark.parametrize("order", [2, 4, 8])
def test_bayer_dither_shifts_each_pixel_by_its_place_in_the_pattern(order):
    img = picture()
    colors = 4
    out = image_quantize.execute(None, img, colors, f"bayer-{order}")
    for b in range(2):
        pixels = eight_bit(img, b)
        palette = Image.fromarray(pixels).quantize(colors=colors)
        spread = 2 * 256 / (len(palette.getpalette()) // 3)
        h, w = pixels.shape[:2]
        rows, cols = np.indices((h, w))
        offset = spread * textbook_bayer(order)[rows % order, cols % order] + 0.5
        shifted = np.clip(pixels + offset[..., None], 0, 255).astype(np.uint8)
        picked = Image.fromarray(shifted).quantize(palette=palette, dither=Image.Dither.NONE)
        want = np.asarray(picked.convert("RGB"))
        got = (out[b] * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(got, want)
    plain = image_quantize.execute(None, img, colors, "none")
    assert not torch.equal(out, plain)  # the pattern shows


def test_quantize_refuses_an_image_that_is_not_rgb():
    with pytest.raises(NodeError, match="RGB image, not 4 channels"):
        image_quantize.execute(None, torch.rand(1, 8, 8, 4), 4, "none")


def test_image_quantize_imports_from_comfyui_and_exports_back():
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {
            "class_type": "ImageQuantize",
            "inputs": {"colors": 8, "dither": "bayer-4", "image": ["1", 0]},
        },
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    result = import_comfyui(api, installed_registry(), source="api.json")
    wf = result.workflow
    assert not [n.type for n in wf.nodes if n.type.startswith("comfyui.")]
    node = wf.get_node("2")
    assert (node.type, node.params) == ("image_quantize", {"colors": 8, "dither": "bayer-4"})
    back = export_comfyui_api(wf)
    assert back["2"]["class_type"] == "ImageQuantize"
    assert back["2"]["inputs"] == api["2"]["inputs"]
