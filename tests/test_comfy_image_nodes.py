"""ComfyUI's core image and mask nodes Studio runs exactly: Canny (kornia's), ImageBlur,
GrowMask (tapered corners), FeatherMask (per-side ramps), ImageCompositeMasked and
VAEEncodeTiled. Each is checked against ComfyUI's algorithm written out here (or against
kornia / scipy / diffusers, which ComfyUI itself calls), and a workflow using them imports
with no placeholders and exports back."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nodes.image import image_blur  # noqa: E402
from nodes.mask import feather_mask_edges, grow_mask, image_composite_masked  # noqa: E402
from studio.errors import NodeError  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- Canny ---------------------------------------------------------------------------------------


def test_canny_is_kornias_at_thresholds_from_0_to_1():
    kornia = pytest.importorskip("kornia")
    from nodes.preprocess import canny_kornia

    # a bright square on a noisy ground: clear edges plus weak ones the thresholds decide
    img = torch.rand(2, 48, 40, 3, generator=_rng()) * 0.3
    img[:, 12:36, 10:30, :] += 0.6
    for low, high in ((0.4, 0.8), (0.05, 0.2)):
        out = canny_kornia.execute(None, img, low, high)
        want = kornia.filters.canny(img.movedim(-1, 1), low, high)[1]
        assert out.shape == img.shape
        assert torch.equal(out, want.repeat(1, 3, 1, 1).movedim(1, -1))
        assert set(out.unique().tolist()) == {0.0, 1.0}
    loose = canny_kornia.execute(None, img, 0.05, 0.2)
    strict = canny_kornia.execute(None, img, 0.4, 0.8)
    assert loose.sum() > strict.sum() > 0  # lower thresholds keep the noise's weak edges
    with pytest.raises(NodeError, match=r"low_threshold 0\.8 is above high_threshold 0\.4"):
        canny_kornia.execute(None, img, 0.8, 0.4)


# -- ImageBlur -----------------------------------------------------------------------------------


def comfy_blur(image: np.ndarray, radius: int, sigma: float) -> np.ndarray:
    """ComfyUI's ImageBlur: a (2r+1)^2 Gaussian over distances spread from -1 to 1, on the
    image mirrored at its edges (numpy's 'reflect' = torch's)."""
    size = 2 * radius + 1
    ax = np.linspace(-1.0, 1.0, size)
    d2 = ax[:, None] ** 2 + ax[None, :] ** 2
    k = np.exp(-d2 / (2.0 * sigma * sigma))
    k /= k.sum()
    p = np.pad(image, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    h, w = image.shape[1:3]
    out = np.zeros_like(image, dtype=np.float64)
    for i in range(size):
        for j in range(size):
            out += k[i, j] * p[:, i : i + h, j : j + w, :]
    return out


@pytest.mark.parametrize(("radius", "sigma"), [(1, 1.0), (3, 0.5), (5, 2.5)])
def test_image_blur_is_comfyuis_kernel_with_mirrored_edges(radius, sigma):
    img = torch.rand(2, 20, 17, 3, generator=_rng(radius))
    out = image_blur.execute(None, img, radius, sigma)
    want = comfy_blur(img.double().numpy(), radius, sigma)
    assert out.shape == img.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), want, atol=2e-6)
    assert not torch.allclose(out, img, atol=1e-3)  # it does blur


def test_image_blur_larger_than_the_image_is_a_clear_error():
    with pytest.raises(NodeError, match="blur_radius 8 needs an image larger than 8 pixels"):
        image_blur.execute(None, torch.rand(1, 8, 30, 3), 8, 1.0)


# -- ImageSharpen --------------------------------------------------------------------------------


def comfy_sharpen(image: np.ndarray, radius: int, sigma: float, alpha: float) -> np.ndarray:
    """ComfyUI's ImageSharpen: ImageBlur's Gaussian times -10 alpha, its centre raised so the
    kernel sums to 1, on the image mirrored at its edges, clamped to 0..1."""
    size = 2 * radius + 1
    ax = np.linspace(-1.0, 1.0, size)
    d2 = ax[:, None] ** 2 + ax[None, :] ** 2
    k = np.exp(-d2 / (2.0 * sigma * sigma))
    k = k / k.sum() * -(alpha * 10)
    k[radius, radius] += 1.0 - k.sum()
    p = np.pad(image, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    h, w = image.shape[1:3]
    out = np.zeros_like(image, dtype=np.float64)
    for i in range(size):
        for j in range(size):
            out += k[i, j] * p[:, i : i + h, j : j + w, :]
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize(
    ("radius", "sigma", "alpha"), [(1, 1.0, 1.0), (3, 0.5, 0.3), (5, 2.5, 2.0), (2, 1.0, 0.0)]
)
def test_image_sharpen_is_comfyuis_kernel_mirrored_and_clamped(radius, sigma, alpha):
    from nodes.image import image_sharpen

    img = torch.rand(2, 20, 17, 3, generator=_rng(radius)) * 0.6 + 0.2
    out = image_sharpen.execute(None, img, radius, sigma, alpha)
    want = comfy_sharpen(img.double().numpy(), radius, sigma, alpha)
    assert out.shape == img.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), want, atol=1e-5)
    if alpha == 0.0:
        np.testing.assert_allclose(out.numpy(), img.numpy(), atol=1e-6)  # unchanged
    else:  # sharper: more contrast between neighbours, some values clamped at 0 or 1
        assert out.diff(dim=2).abs().mean() > img.diff(dim=2).abs().mean()
        assert alpha < 1.5 or ((out == 0) | (out == 1)).any()


def test_image_sharpen_larger_than_the_image_is_a_clear_error():
    from nodes.image import image_sharpen

    with pytest.raises(NodeError, match="sharpen_radius 9 needs an image larger than 9 pixels"):
        image_sharpen.execute(None, torch.rand(1, 30, 9, 3), 9, 1.0, 1.0)


# -- ImageScaleToTotalPixels ---------------------------------------------------------------------


def comfy_total_pixels(image: torch.Tensor, method: str, megapixels: float, steps: int):
    """ComfyUI's ImageScaleToTotalPixels: sqrt(megapixels * 1024^2 / (w * h)), each side
    rounded to a multiple of resolution_steps, then common_upscale: interpolate without
    antialias, or lanczos on 8-bit PIL images."""
    from PIL import Image

    samples = image.movedim(-1, 1)
    scale_by = math.sqrt(megapixels * 1024 * 1024 / (samples.shape[3] * samples.shape[2]))
    width = round(samples.shape[3] * scale_by / steps) * steps
    height = round(samples.shape[2] * scale_by / steps) * steps
    if method != "lanczos":
        out = torch.nn.functional.interpolate(samples, size=(height, width), mode=method)
        return out.movedim(1, -1)
    frames = []
    for im in samples:
        pil = Image.fromarray(np.clip(255.0 * im.movedim(0, -1).numpy(), 0, 255).astype(np.uint8))
        pil = pil.resize((width, height), resample=Image.Resampling.LANCZOS)
        frames.append(torch.from_numpy(np.array(pil).astype(np.float32) / 255.0))
    return torch.stack(frames)


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
@pytest.mark.parametrize(("megapixels", "steps"), [(0.01, 1), (0.003, 8), (0.0217, 16)])
def test_scale_to_total_pixels_is_comfyuis_size_and_resampling(method, megapixels, steps):
    from nodes.upscale import scale_image_total_pixels

    img = torch.rand(2, 45, 70, 3, generator=_rng(steps))
    out = scale_image_total_pixels.execute(None, img, method, megapixels, steps)
    want = comfy_total_pixels(img, method, megapixels, steps)
    assert out.shape == want.shape
    assert out.shape[1] % steps == 0 and out.shape[2] % steps == 0
    assert torch.equal(out, want)


def test_scale_to_total_pixels_sizes_and_errors():
    from nodes.upscale import scale_image_total_pixels, total_pixels_size

    assert total_pixels_size(1920, 1080, 1.0, 1) == (1365, 768)
    assert total_pixels_size(1920, 1080, 1.0, 64) == (1344, 768)
    assert total_pixels_size(512, 512, 1.0, 1) == (1024, 1024)
    out = scale_image_total_pixels.execute(None, torch.rand(1, 30, 40, 3), "bilinear", 0.01, 1)
    assert out.shape == (1, 89, 118, 3)  # 10486 pixels wanted, 10502 given
    with pytest.raises(NodeError, match=r"megapixels 0\.01 with resolution_steps 256 gives a 0x0"):
        scale_image_total_pixels.execute(None, torch.rand(1, 30, 40, 3), "bilinear", 0.01, 256)


# -- GrowMask ------------------------------------------------------------------------------------


def comfy_grow(mask: torch.Tensor, expand: int, tapered: bool) -> torch.Tensor:
    """ComfyUI's GrowMask: |expand| grey dilations (erosions) by a 3x3 footprint, a cross
    when the corners are tapered, through scipy as ComfyUI does."""
    import scipy.ndimage

    c = 0 if tapered else 1
    kernel = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    out = []
    for m in mask.reshape(-1, *mask.shape[-2:]):
        a = m.numpy()
        for _ in range(abs(expand)):
            op = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
            a = op(a, footprint=kernel)
        out.append(torch.from_numpy(a))
    return torch.stack(out)


@pytest.mark.parametrize("expand", [3, -2, 1])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_is_comfyuis_with_or_without_tapered_corners(expand, tapered):
    soft = torch.rand(2, 19, 23, generator=_rng(expand + 10))
    soft[:, 5:12, 6:15] = 1.0
    out = grow_mask.execute(None, soft, expand, tapered)
    assert torch.equal(out, comfy_grow(soft, expand, tapered))


def test_tapered_corners_cut_a_grown_square_diagonally_and_the_default_stays_square():
    m = torch.zeros(1, 15, 15)
    m[0, 7, 7] = 1.0
    diamond = grow_mask.execute(None, m, 4, True)
    square = grow_mask.execute(None, m, 4)  # Studio's default: no tapering, as before
    assert square[0, 3:12, 3:12].eq(1).all() and square.sum() == 81
    assert diamond[0, 3, 3] == 0 and diamond[0, 3, 7] == 1 and diamond[0, 5, 5] == 1
    assert diamond.sum() == 2 * 4 * 5 + 1  # |dx| + |dy| <= 4


# -- FeatherMask ---------------------------------------------------------------------------------


def comfy_feather(mask: torch.Tensor, left: int, top: int, right: int, bottom: int):
    """ComfyUI's FeatherMask, loop for loop (its right and bottom loops index -x, so their
    first step lands on column / row 0)."""
    out = mask.reshape(-1, *mask.shape[-2:]).clone()
    left, right = min(left, out.shape[-1]), min(right, out.shape[-1])
    top, bottom = min(top, out.shape[-2]), min(bottom, out.shape[-2])
    for x in range(left):
        out[:, :, x] *= (x + 1.0) / left
    for x in range(right):
        out[:, :, -x] *= (x + 1) / right
    for y in range(top):
        out[:, y, :] *= (y + 1) / top
    for y in range(bottom):
        out[:, -y, :] *= (y + 1) / bottom
    return out


@pytest.mark.parametrize(
    "sides", [(5, 0, 0, 0), (0, 3, 7, 0), (4, 6, 3, 9), (40, 2, 40, 50), (0, 0, 0, 0)]
)
def test_feather_mask_edges_is_comfyuis_ramp_per_side(sides):
    mask = torch.rand(2, 21, 30, generator=_rng(sum(sides))) * 0.5 + 0.5
    out = feather_mask_edges.execute(None, mask, *sides)
    assert torch.equal(out, comfy_feather(mask, *sides))


def test_feather_mask_edges_fades_towards_the_named_side_only():
    out = feather_mask_edges.execute(None, torch.ones(1, 10, 10), 4, 0, 0, 0)[0]
    assert out[:, 0].eq(0.25).all() and out[:, 3].eq(1.0).all() and out[:, 4:].eq(1.0).all()


# -- ImageCompositeMasked ------------------------------------------------------------------------


def comfy_composite(dest, source, x, y, resize_source, mask=None):
    """ComfyUI's ImageCompositeMasked (composite() with multiplier 1), in [B, C, H, W]."""
    import torch.nn.functional as F

    def to_batch(t, n):
        if t.shape[0] >= n:
            return t[:n]
        return t.repeat(math.ceil(n / t.shape[0]), *[1] * (t.dim() - 1))[:n]

    dest = dest.movedim(-1, 1).clone()
    source = source.movedim(-1, 1)
    if resize_source:
        source = F.interpolate(source, size=(dest.shape[2], dest.shape[3]), mode="bilinear")
    source = to_batch(source, dest.shape[0])
    x = max(-source.shape[3], min(x, dest.shape[3]))
    y = max(-source.shape[2], min(y, dest.shape[2]))
    left, top = x, y
    right, bottom = left + source.shape[3], top + source.shape[2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = F.interpolate(
            mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]),
            size=(source.shape[2], source.shape[3]),
            mode="bilinear",
        )
        mask = to_batch(mask, source.shape[0])
    vw, vh = dest.shape[3] - left + min(0, x), dest.shape[2] - top + min(0, y)
    mask = mask[:, :, :vh, :vw]
    src_part = mask * source[:, :, :vh, :vw]
    dst_part = (torch.ones_like(mask) - mask) * dest[:, :, top:bottom, left:right]
    dest[:, :, top:bottom, left:right] = src_part + dst_part
    return dest.movedim(1, -1)


@pytest.mark.parametrize(
    ("x", "y", "resize", "with_mask"),
    [(0, 0, False, False), (5, 3, False, True), (20, 14, False, True), (7, 9, True, True)],
)
def test_image_composite_masked_is_comfyuis_paste(x, y, resize, with_mask):
    g = _rng(x + y)
    dest = torch.rand(2, 24, 32, 3, generator=g)
    source = torch.rand(1, 10, 16, 3, generator=g)
    mask = torch.rand(1, 5, 8, generator=g) if with_mask else None
    out = image_composite_masked.execute(None, dest, source, x, y, resize, mask)
    assert torch.equal(out, comfy_composite(dest, source, x, y, resize, mask))
    if not resize:
        # outside the pasted rectangle the destination is untouched
        keep = torch.ones(24, 32, dtype=torch.bool)
        keep[y : y + 10, x : x + 16] = False
        assert torch.equal(out[:, keep], dest[:, keep])
    assert torch.equal(dest, dest.clone())  # the input is not changed in place


def test_an_rgb_source_pastes_onto_an_rgba_destination_as_opaque():
    dest = torch.zeros(1, 6, 6, 4)
    out = image_composite_masked.execute(None, dest, torch.full((1, 2, 2, 3), 0.5), 1, 1)
    assert out.shape == (1, 6, 6, 4)
    assert out[0, 1:3, 1:3].tolist() == [[[0.5, 0.5, 0.5, 1.0]] * 2] * 2
    assert out[0, 0].eq(0).all()


# -- VAEEncodeTiled ------------------------------------------------------------------------------


def test_tiled_vae_encode_is_diffusers_tiling_at_the_tile_size(monkeypatch):
    import diffusion_fixtures as fx

    from nodes import sdload
    from nodes.latent import vae_encode
    from nodes.values import VaeHandle

    vae = fx.tiny_vae()

    source = types.SimpleNamespace(configs={"vae": dict(vae.config)})
    monkeypatch.setattr(sdload, "get_module", lambda ctx, source, component: vae)
    handle = VaeHandle(source=source)
    img = torch.rand(1, 256, 256, 3, generator=_rng())
    plain = vae_encode.execute(None, img, handle)["samples"]
    one_tile = vae_encode.execute(None, img, handle, True, 256)["samples"]
    tiled = vae_encode.execute(None, img, handle, True, 128)["samples"]
    assert torch.equal(plain, one_tile)  # a tile as big as the image: no tiling
    assert tiled.shape == plain.shape and not torch.equal(tiled, plain)
    assert not vae.use_tiling and vae.tile_sample_min_size != 128  # left as it was
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 128, 128 // handle.downscale
    with torch.no_grad():
        want = vae.encode(img.movedim(-1, 1) * 2.0 - 1.0).latent_dist.mean * 0.18215
    assert torch.equal(tiled, want)


# -- importing ComfyUI workflows -----------------------------------------------------------------


def controlnet_and_inpaint_api() -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {
            "class_type": "Canny",
            "inputs": {"low_threshold": 0.3, "high_threshold": 0.7, "image": ["1", 0]},
        },
        "3": {
            "class_type": "ImageBlur",
            "inputs": {"blur_radius": 4, "sigma": 0.7, "image": ["2", 0]},
        },
        "4": {
            "class_type": "GrowMask",
            "inputs": {"expand": 6, "tapered_corners": True, "mask": ["1", 1]},
        },
        "5": {
            "class_type": "FeatherMask",
            "inputs": {"left": 8, "top": 0, "right": 16, "bottom": 4, "mask": ["4", 0]},
        },
        "6": {
            "class_type": "ImageCompositeMasked",
            "inputs": {
                "x": 64,
                "y": 32,
                "resize_source": False,
                "destination": ["1", 0],
                "source": ["3", 0],
                "mask": ["5", 0],
            },
        },
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "8": {
            "class_type": "VAEEncodeTiled",
            "inputs": {
                "tile_size": 512,
                "overlap": 64,
                "temporal_size": 64,
                "temporal_overlap": 8,
                "pixels": ["6", 0],
                "vae": ["7", 0],
            },
        },
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def test_a_controlnet_and_inpainting_workflow_imports_without_placeholders_and_exports_back():
    api = controlnet_and_inpaint_api()
    result = import_comfyui(api, installed_registry(), source="api.json")
    wf = result.workflow
    assert not [n.type for n in wf.nodes if n.type.startswith("comfyui.")]
    got = {n.id: (n.type, n.params) for n in wf.nodes if n.id in "23456"}
    assert got == {
        "2": ("canny_kornia", {"low_threshold": 0.3, "high_threshold": 0.7}),
        "3": ("image_blur", {"blur_radius": 4, "sigma": 0.7}),
        "4": ("grow_mask", {"pixels": 6, "tapered_corners": True}),
        "5": ("feather_mask_edges", {"left": 8, "top": 0, "right": 16, "bottom": 4}),
        "6": ("image_composite_masked", {"x": 64, "y": 32, "resize_source": False}),
    }
    assert wf.get_node("8").type == "vae_encode"
    assert wf.get_node("8").params == {"tiled": True, "tile_size": 512}
    (line,) = result.report  # only the tiles' overlap is reported
    assert "VAE Encode in tiled mode" in line and "Studio's own" in line
    back = export_comfyui_api(wf)
    assert {k: v["class_type"] for k, v in back.items()} == {
        k: v["class_type"] for k, v in api.items()
    }
    for nid in "23456":
        assert back[nid]["inputs"] == api[nid]["inputs"], nid
    assert back["8"]["inputs"] == {
        "tile_size": 512,
        "overlap": 64,
        "pixels": ["6", 0],
        "vae": ["7", 0],
    }
    wf.get_node("8").params["tiled"] = False
    assert export_comfyui_api(wf)["8"]["class_type"] == "VAEEncode"


def test_ui_files_name_the_widgets_in_comfyuis_order():
    from comfyui_files import ui_node

    img = [("IMAGE", "IMAGE", [])]
    mask = [("MASK", "MASK", [])]
    ui = {
        "nodes": [
            ui_node(2, "Canny", [0.25, 0.6], outputs=img),
            ui_node(3, "ImageBlur", [2, 1.5], outputs=img),
            ui_node(4, "GrowMask", [-3, False], outputs=mask),
            ui_node(5, "FeatherMask", [1, 2, 3, 4], outputs=mask),
            ui_node(6, "ImageCompositeMasked", [10, 20, True], outputs=img),
            ui_node(8, "VAEEncodeTiled", [256, 64, 64, 8], outputs=[("LATENT", "LATENT", [])]),
        ],
        "links": [],
        "version": 0.4,
    }
    wf = import_comfyui(ui, installed_registry(), source="ui.json").workflow
    assert {n.id: n.params for n in wf.nodes} == {
        "2": {"low_threshold": 0.25, "high_threshold": 0.6},
        "3": {"blur_radius": 2, "sigma": 1.5},
        "4": {"pixels": -3, "tapered_corners": False},
        "5": {"left": 1, "top": 2, "right": 3, "bottom": 4},
        "6": {"x": 10, "y": 20, "resize_source": True},
        "8": {"tiled": True, "tile_size": 256},
    }


# -- ConditioningSetAreaPercentage ---------------------------------------------------------------


def comfy_percentage_cells(fractions, dims):
    """ComfyUI's resolve_areas_and_cond_masks for ("percentage", h, w, y, x): the sides
    max(1, round(f * cells)), the corner round(f * cells), on the latent's (h, w) cells."""
    a = fractions
    sides = tuple(max(1, round(a[d] * dims[d])) for d in range(2))
    corner = tuple(round(a[d + 2] * dims[d]) for d in range(2))
    return sides + corner


@pytest.mark.parametrize(
    ("w", "h", "x", "y"),
    [(0.5, 1.0, 0.5, 0.0), (0.33, 0.27, 0.15, 0.61), (0.01, 0.0, 0.99, 1.0), (1.0, 1.0, 0, 0)],
)
def test_area_percentage_becomes_comfyuis_cells_on_the_latent(w, h, x, y):
    from nodes.comfycore import conditioning_set_area_percentage, with_mask_bounds
    from nodes.values import Cond

    (c,) = conditioning_set_area_percentage.execute(None, [Cond(embeds="p")], w, h, x, y, 0.7)
    for dims, factor in (((8, 8), 8), ((13, 21), 8), ((128, 96), 16)):
        (r,) = with_mask_bounds([c], dims, factor)
        cells = comfy_percentage_cells((h, w, y, x), dims)
        assert r.extra["area"] == tuple(v * factor for v in cells)
        assert r.extra["strength"] == 0.7 and "area_fraction" not in r.extra
    # a pixel area after it replaces it, and it replaces a pixel area before it
    from nodes.comfycore import conditioning_set_area

    (p,) = conditioning_set_area.execute(None, [c], 16, 16, 8, 8, 1.0)
    assert p.extra["area"] == (16, 16, 8, 8) and "area_fraction" not in p.extra
    (q,) = conditioning_set_area_percentage.execute(None, [p], w, h, x, y, 1.0)
    assert "area" not in q.extra and q.extra["area_fraction"] == (h, w, y, x)


def test_a_percentage_area_samples_as_the_same_pixel_area(tmp_path):
    from test_comfy_core_nodes import base, image

    from studio.engine import Engine

    engine = Engine(installed_registry())

    def with_area(node, params):
        wf, ids = base()
        other = wf.add_node("text_encode", {"text": "a large yellow square on a black background"})
        wf.connect(ids["ckpt"], "clip", other.id, "clip")
        area = wf.add_node(node, params).id
        wf.connect(other.id, "conditioning", area, "conditioning")
        comb = wf.add_node("conditioning_combine").id
        wf.connect(ids["pos"], "conditioning", comb, "conditioning_1")
        wf.connect(area, "conditioning", comb, "conditioning_2")
        wf.connect(comb, "conditioning", ids["sampler"], "positive")
        return image(engine, wf, ids)

    pixels = with_area(
        "conditioning_set_area", {"width": 32, "height": 64, "x": 32, "y": 0, "strength": 1.0}
    )
    fraction = {"width": 0.5, "height": 1.0, "x": 0.5, "y": 0.0, "strength": 1.0}
    assert np.array_equal(with_area("conditioning_set_area_percentage", fraction), pixels)


# -- importing the three --------------------------------------------------------------------------


def test_sharpen_total_pixels_and_percentage_area_import_without_placeholders_and_export_back():
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {
            "class_type": "ImageScaleToTotalPixels",
            "inputs": {
                "upscale_method": "lanczos",
                "megapixels": 1.5,
                "resolution_steps": 64,
                "image": ["1", 0],
            },
        },
        "3": {
            "class_type": "ImageSharpen",
            "inputs": {"sharpen_radius": 2, "sigma": 0.8, "alpha": 0.4, "image": ["2", 0]},
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["5", 1]}},
        "7": {
            "class_type": "ConditioningSetAreaPercentage",
            "inputs": {
                "width": 0.5,
                "height": 0.25,
                "x": 0.5,
                "y": 0.75,
                "strength": 0.8,
                "conditioning": ["6", 0],
            },
        },
    }
    result = import_comfyui(api, installed_registry(), source="api.json")
    wf = result.workflow
    assert not [n.type for n in wf.nodes if n.type.startswith("comfyui.")]
    assert not result.report
    got = {n.id: (n.type, n.params) for n in wf.nodes if n.id in "237"}
    assert got == {
        "2": (
            "scale_image_total_pixels",
            {"upscale_method": "lanczos", "megapixels": 1.5, "resolution_steps": 64},
        ),
        "3": ("image_sharpen", {"sharpen_radius": 2, "sigma": 0.8, "alpha": 0.4}),
        "7": (
            "conditioning_set_area_percentage",
            {"width": 0.5, "height": 0.25, "x": 0.5, "y": 0.75, "strength": 0.8},
        ),
    }
    back = export_comfyui_api(wf)
    for nid in "237":
        assert back[nid]["class_type"] == api[nid]["class_type"]
        assert back[nid]["inputs"] == api[nid]["inputs"], nid


def test_ui_files_of_the_three_and_older_total_pixels_without_resolution_steps():
    from comfyui_files import ui_node

    img = [("IMAGE", "IMAGE", [])]
    cond = [("CONDITIONING", "CONDITIONING", [])]
    ui = {
        "nodes": [
            ui_node(2, "ImageScaleToTotalPixels", ["bicubic", 0.5, 16], outputs=img),
            ui_node(3, "ImageScaleToTotalPixels", ["area", 2.0], outputs=img),  # older ComfyUI
            ui_node(4, "ImageSharpen", [3, 1.5, 0.25], outputs=img),
            ui_node(5, "ConditioningSetAreaPercentage", [0.4, 0.6, 0.1, 0.2, 1.5], outputs=cond),
        ],
        "links": [],
        "version": 0.4,
    }
    wf = import_comfyui(ui, installed_registry(), source="ui.json").workflow
    assert {n.id: n.params for n in wf.nodes} == {
        "2": {"upscale_method": "bicubic", "megapixels": 0.5, "resolution_steps": 16},
        "3": {"upscale_method": "area", "megapixels": 2.0, "resolution_steps": 1},
        "4": {"sharpen_radius": 3, "sigma": 1.5, "alpha": 0.25},
        "5": {"width": 0.4, "height": 0.6, "x": 0.1, "y": 0.2, "strength": 1.5},
    }
