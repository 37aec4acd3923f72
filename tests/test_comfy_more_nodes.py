"""Latent Composite, Invert Image, Crop Image, Threshold Mask (ComfyUI's strictly above),
Model Sampling Flux, VAE Decode (Tiled) and Load Image (as Mask): each checked against
ComfyUI's formula (nodes.py, comfy_extras/nodes_images.py, nodes_mask.py) on small tensors,
and imported from ComfyUI's API format with no report line and exported back."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nodes.comfycore import crop_image, invert_image, latent_composite  # noqa: E402
from studio.errors import WorkflowFileError  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402


def comfy_latent_composite(to, src, x, y, feather):
    """ComfyUI's LatentComposite, restated: paste at (x // 8, y // 8); with feather, each
    inner edge's t-th row or column (t < feather // 8) is weighted (t + 1) / (feather // 8)."""
    x, y, f = x // 8, y // 8, feather // 8
    s = to.clone()
    th, tw = to.shape[2], to.shape[3]
    src = src[:, :, : th - y, : tw - x]
    h, w = src.shape[2], src.shape[3]
    m = torch.ones_like(src)
    for t in range(f):
        k = (t + 1) / f
        if y != 0:
            m[:, :, t, :] *= k
        if y + h < th:
            m[:, :, h - 1 - t, :] *= k
        if x != 0:
            m[:, :, :, t] *= k
        if x + w < tw:
            m[:, :, :, w - 1 - t] *= k
    s[:, :, y : y + h, x : x + w] = src * m + s[:, :, y : y + h, x : x + w] * (1 - m)
    return s


@pytest.mark.parametrize(
    "x,y,feather",
    [(0, 0, 0), (16, 8, 0), (40, 48, 0), (16, 8, 16), (0, 0, 24), (8, 16, 8), (63, 7, 17)],
)
def test_latent_composite_follows_comfyui(x, y, feather):
    g = torch.Generator().manual_seed(0)
    to = torch.randn(2, 4, 8, 10, generator=g)
    src = torch.randn(2, 4, 6, 7, generator=g)
    out = latent_composite.execute(None, {"samples": to}, {"samples": src}, x, y, feather)
    assert torch.allclose(out["samples"], comfy_latent_composite(to, src, x, y, feather))
    assert torch.equal(to, torch.randn(2, 4, 8, 10, generator=torch.Generator().manual_seed(0)))


def test_latent_composite_past_the_edge_changes_nothing():
    to = torch.zeros(1, 4, 8, 8)
    out = latent_composite.execute(
        None, {"samples": to}, {"samples": torch.ones(1, 4, 4, 4)}, 64, 0, 0
    )
    assert torch.equal(out["samples"], to)


def test_invert_and_crop_follow_comfyui():
    img = torch.rand(2, 6, 9, 3)
    assert torch.equal(invert_image.execute(None, img), 1.0 - img)
    assert torch.equal(crop_image.execute(None, img, 4, 3, 2, 1), img[:, 1:4, 2:6, :])
    # past the edge: cut short; a start past it keeps the last row/column (ComfyUI's min)
    assert torch.equal(crop_image.execute(None, img, 100, 100, 5, 2), img[:, 2:, 5:, :])
    assert torch.equal(crop_image.execute(None, img, 4, 4, 50, 50), img[:, 5:, 8:, :])


def test_composite_invert_crop_import_and_export():
    api = {
        "1": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "2": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 1},
        },
        "3": {
            "class_type": "LatentComposite",
            "inputs": {
                "x": 16,
                "y": 8,
                "feather": 8,
                "samples_to": ["1", 0],
                "samples_from": ["2", 0],
            },
        },
        "4": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "5": {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}},
        "6": {
            "class_type": "ImageCrop",
            "inputs": {"width": 32, "height": 24, "x": 4, "y": 2, "image": ["5", 0]},
        },
    }
    result = import_comfyui(api, installed_registry(), source="api.json")
    assert result.report == []
    wf = result.workflow
    assert {n.id: n.type for n in wf.nodes} == {
        "1": "empty_latent",
        "2": "empty_latent",
        "3": "latent_composite",
        "4": "load_image",
        "5": "invert_image",
        "6": "crop_image",
    }
    assert wf.get_node("3").params == {"x": 16, "y": 8, "feather": 8}
    assert wf.get_node("6").params == {"width": 32, "height": 24, "x": 4, "y": 2}
    back = export_comfyui_api(wf)
    assert {k: (v["class_type"], v["inputs"]) for k, v in back.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()
    }


def test_threshold_mask_keeps_studios_default_and_has_comfyuis_strict_compare():
    from nodes.mask import threshold_mask

    m = torch.tensor([[[0.2, 0.5, 0.5001, 1.0]]])
    assert threshold_mask.execute(None, m, 0.5).tolist() == [[[0.0, 1.0, 1.0, 1.0]]]
    comfy = (m > 0.5).float()  # ComfyUI's ThresholdMask
    assert torch.equal(threshold_mask.execute(None, m, 0.5, "above"), comfy)


def test_threshold_mask_imports_as_strict_and_exports_back():
    api = {
        "1": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 64, "height": 64}},
        "2": {"class_type": "ThresholdMask", "inputs": {"value": 0.5, "mask": ["1", 0]}},
    }
    result = import_comfyui(api, installed_registry(), source="api.json")
    assert result.report == []
    n = result.workflow.get_node("2")
    assert n.type == "threshold_mask" and n.params == {"threshold": 0.5, "compare": "above"}
    back = export_comfyui_api(result.workflow)
    assert back["2"]["class_type"] == "ThresholdMask" and back["2"]["inputs"] == api["2"]["inputs"]
    # Studio's own at-or-above has no ComfyUI counterpart: the export says so
    n.params["compare"] = "at or above"
    with pytest.raises(WorkflowFileError, match="compare"):
        export_comfyui_api(result.workflow)


@pytest.mark.parametrize("width,height", [(1024, 1024), (512, 768), (1360, 768), (256, 256)])
def test_flux_shift_from_the_latent_equals_comfyuis_from_width_and_height(width, height):
    from nodes.dit import calculate_shift

    max_shift, base_shift = 1.3, 0.4
    m = (max_shift - base_shift) / (4096 - 256)
    comfy = (width * height / (8 * 8 * 2 * 2)) * m + (base_shift - m * 256)
    # Studio's sampler: image tokens of the latent (height / 8 by width / 8, 2x2 patches)
    tokens = (height // 8 // 2) * (width // 8 // 2)
    cfg = {"max_shift": max_shift, "base_shift": base_shift}
    assert calculate_shift(tokens, cfg) == pytest.approx(comfy, abs=1e-12)


def flux_api(width=1024, height=768, latent=(1024, 768)):
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "flux.safetensors", "weight_dtype": "default"},
        },
        "2": {
            "class_type": "ModelSamplingFlux",
            "inputs": {
                "max_shift": 1.15,
                "base_shift": 0.5,
                "width": width,
                "height": height,
                "model": ["1", 0],
            },
        },
        "3": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": latent[0], "height": latent[1], "batch_size": 1},
        },
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 1,
                "steps": 4,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": 1.0,
                "model": ["2", 0],
                "latent_image": ["3", 0],
            },
        },
    }


def test_model_sampling_flux_imports_and_reports_only_another_size():
    api = flux_api()
    reg = installed_registry()
    result = import_comfyui(api, reg, source="api.json")
    assert result.report == []
    n = result.workflow.get_node("2")
    assert n.type == "model_sampling_flux" and n.params == {"max_shift": 1.15, "base_shift": 0.5}
    back = export_comfyui_api(result.workflow)
    assert back["2"]["class_type"] == "ModelSamplingFlux"
    assert back["2"]["inputs"] == api["2"]["inputs"]
    other = flux_api(width=1024, height=1024)
    (line,) = import_comfyui(other, reg, source="api.json").report
    assert "1024x1024 was dropped" in line and "1024x768 here" in line


def test_vae_decode_tiled_imports_as_tiled_mode_and_exports_back():
    api = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "2": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "3": {
            "class_type": "VAEDecodeTiled",
            "inputs": {
                "tile_size": 256,
                "overlap": 64,
                "temporal_size": 64,
                "temporal_overlap": 8,
                "samples": ["2", 0],
                "vae": ["1", 0],
            },
        },
    }
    result = import_comfyui(api, installed_registry(), source="api.json")
    (line,) = result.report
    assert "tiled mode" in line and "overlap" in line and "Studio's own" in line
    n = result.workflow.get_node("3")
    assert n.type == "vae_decode" and n.params == {"tiled": True, "tile_size": 256}
    back = export_comfyui_api(result.workflow)
    assert back["3"]["class_type"] == "VAEDecodeTiled"
    assert back["3"]["inputs"] == {
        "tile_size": 256,
        "overlap": 64,
        "samples": ["2", 0],
        "vae": ["1", 0],
    }
    n.params["tiled"] = False
    assert export_comfyui_api(result.workflow)["3"]["class_type"] == "VAEDecode"


def test_load_image_mask_becomes_load_image_and_mask_from_image(tmp_path):
    import numpy as np
    from PIL import Image

    from nodes.image import load_image
    from nodes.mask import mask_from_image

    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    path = tmp_path / "m.png"
    Image.fromarray(rgba, "RGBA").save(path)

    class Ctx:
        class settings:
            input_path = tmp_path

    api = {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": str(path), "channel": "green"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": str(path), "channel": "alpha"}},
        "3": {"class_type": "InvertMask", "inputs": {"mask": ["1", 0]}},
        "4": {"class_type": "InvertMask", "inputs": {"mask": ["2", 0]}},
    }
    result = import_comfyui(api, installed_registry(), source="api.json")
    assert result.report == []
    wf = result.workflow
    assert {n.id: (n.type, n.params) for n in wf.nodes if n.type != "invert_mask"} == {
        "1_image": ("load_image", {"image": str(path)}),
        "1": ("mask_from_image", {"channel": "green"}),
        "2": ("load_image", {"image": str(path)}),
    }
    links = {(lk.source, lk.output, lk.target, lk.input) for lk in wf.links}
    assert links == {
        ("1_image", "image", "1", "image"),
        ("1", "mask", "3", "mask"),
        ("2", "mask", "4", "mask"),
    }
    # ComfyUI's LoadImageMask: the channel / 255; alpha as 1 - alpha / 255
    pixels, alpha = load_image.execute(Ctx(), str(path))
    green = mask_from_image.execute(None, pixels, "green")
    assert torch.allclose(green, torch.from_numpy(rgba[..., 1] / 255.0).float()[None])
    assert torch.allclose(alpha, 1.0 - torch.from_numpy(rgba[..., 3] / 255.0).float()[None])


def test_load_image_mask_with_an_unknown_channel_is_a_placeholder():
    api = {"1": {"class_type": "LoadImageMask", "inputs": {"image": "a.png", "channel": "cyan"}}}
    wf = import_comfyui(api, installed_registry(), source="api.json").workflow
    assert [n.type for n in wf.nodes] == ["comfyui.LoadImageMask"]


@pytest.mark.parametrize("widgets", [[256, 64], [256, 64, 64, 8]])
def test_ui_files_name_the_widgets_of_tiled_decode_and_image_mask(widgets):
    from comfyui_files import txt2img_ui, ui_node

    ui = txt2img_ui()
    (dec,) = [n for n in ui["nodes"] if n["type"] == "VAEDecode"]
    dec["type"], dec["widgets_values"] = "VAEDecodeTiled", widgets
    ui["nodes"].append(
        ui_node(20, "LoadImageMask", ["a.png", "blue", "image"], outputs=[("MASK", "MASK", [])])
    )
    result = import_comfyui(ui, installed_registry(), source="ui.json")
    (line,) = result.report
    assert "tiled mode" in line
    wf = result.workflow
    assert wf.get_node("8").params == {"tiled": True, "tile_size": 256}
    assert wf.get_node("20").params == {"channel": "blue"}
    assert wf.get_node("20_image").params == {"image": "a.png"}
