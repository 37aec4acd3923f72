"""ComfyUI's image helpers (nodes/comfyimage.py) with its arithmetic: Image Stitch, Resize and
Pad Image, Scale Image to Max Dimension, Image Add Noise, Get Image Size, Preview Mask, String
Concatenate; a ComfyUI file with them imports, runs and exports."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nodes import comfyimage as ci  # noqa: E402
from studio.errors import NodeError  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402


def run(spec, **kw):
    return spec.execute(None, **kw)


def picture(h: int, w: int, seed: int, batch: int = 1, channels: int = 3):
    return torch.rand(batch, h, w, channels, generator=torch.Generator().manual_seed(seed))


def pil_lanczos(image, size):
    from PIL import Image

    frame = np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8)
    out = Image.fromarray(frame).resize(size, resample=Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(out).astype(np.float32) / 255.0)[None]


def test_stitch_scales_image2_to_image1s_height_and_puts_it_beside():
    a, b = picture(32, 48, 1), picture(16, 24, 2)
    right = run(ci.image_stitch, image1=a, image2=b, direction="right")
    assert right.shape == (1, 32, 48 + 48, 3)
    assert torch.equal(right[:, :, :48], a)
    assert torch.allclose(right[:, :, 48:], pil_lanczos(b, (48, 32)), atol=1e-6)
    left = run(ci.image_stitch, image1=a, image2=b, direction="left")
    assert torch.equal(left[:, :, 48:], a) and torch.equal(left[:, :, :48], right[:, :, 48:])
    down = run(ci.image_stitch, image1=a, image2=b, direction="down")
    assert down.shape == (1, 32 + 32, 48, 3)  # image2 scaled to image1's width
    up = run(ci.image_stitch, image1=a, image2=b, direction="up")
    assert torch.equal(up[:, 32:], a)


def test_stitch_without_matching_centres_the_smaller_on_the_gaps_colour():
    a, b = picture(20, 10, 1), picture(9, 6, 2)
    out = run(ci.image_stitch, image1=a, image2=b, direction="right", match_image_size=False,
              spacing_color="black")  # fmt: skip
    assert out.shape == (1, 20, 16, 3)
    assert torch.equal(out[:, 5:14, 10:], b)  # 11 rows of padding: 5 above, 6 below
    assert torch.all(out[:, :5, 10:] == 0) and torch.all(out[:, 14:, 10:] == 0)


def test_stitch_spacing_is_even_and_coloured_and_batches_and_alpha_line_up():
    a = picture(8, 8, 1, batch=2)
    b = picture(8, 8, 2, channels=4)
    out = run(ci.image_stitch, image1=a, image2=b, spacing_width=3, spacing_color="red")
    assert out.shape == (2, 8, 8 + 4 + 8, 4)  # 3 -> 4 px of gap; RGB gets an opaque alpha
    gap = out[:, :, 8:12]
    assert torch.all(gap[..., 0] == 1) and torch.all(gap[..., 1:3] == 0)
    assert torch.all(gap[..., 3] == 1) and torch.all(out[:, :, :8, 3] == 1)
    assert torch.equal(out[1, :, 12:], out[0, :, 12:])  # the shorter batch repeats its last
    assert torch.equal(run(ci.image_stitch, image1=a), a)  # no image2: image1 as it is


def test_stitch_refuses_a_sliver_scaled_past_the_size_limit():
    with pytest.raises(NodeError, match="would be 40000x20; sides go from 1 to 16384"):
        run(ci.image_stitch, image1=picture(20, 4, 1), image2=picture(1, 2000, 2))


def test_stitch_refuses_an_unknown_direction_by_name():
    with pytest.raises(NodeError, match="direction param 'sideways'"):
        run(ci.image_stitch, image1=picture(4, 4, 1), image2=picture(4, 4, 2),
            direction="sideways")  # fmt: skip


def test_resize_and_pad_fits_inside_and_centres():
    image = picture(50, 100, 3)
    out = run(ci.resize_and_pad_image, image=image, target_width=64, target_height=64,
              padding_color="black", interpolation="area")  # fmt: skip
    assert out.shape == (1, 64, 64, 3)
    want = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(32, 64), mode="area")
    assert torch.allclose(out[:, 16:48], want.movedim(1, -1))
    assert torch.all(out[:, :16] == 0) and torch.all(out[:, 48:] == 0)


def test_scale_to_max_dimension_keeps_the_aspect():
    out = run(ci.scale_image_max_dimension, image=picture(60, 30, 4), upscale_method="bilinear",
              largest_size=40)  # fmt: skip
    assert out.shape == (1, 40, 20, 3)
    square = run(ci.scale_image_max_dimension, image=picture(10, 10, 4), largest_size=7)
    assert square.shape == (1, 7, 7, 3)


def test_add_noise_is_the_seeds_noise_clipped():
    image = picture(8, 8, 5)
    out = run(ci.image_add_noise, image=image, seed=42, strength=0.25)
    torch.manual_seed(42)  # ComfyUI's own draw
    want = torch.clip(image + 0.25 * torch.randn(image.size(), device="cpu"), 0.0, 1.0)
    assert torch.equal(out, want)
    assert not torch.equal(out, run(ci.image_add_noise, image=image, seed=43, strength=0.25))


def test_string_concatenate_joins_with_the_delimiter():
    out = run(ci.string_concatenate, string_a="a cat", string_b="oil painting", delimiter=", ")
    assert out == "a cat, oil painting"


def test_a_comfyui_file_with_the_helpers_imports_runs_and_exports(tmp_path):
    from studio.engine import Engine
    from studio.settings import Settings

    api = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x00FF00}},
        "3": {"class_type": "ImageStitch", "inputs": {
            "image1": ["1", 0], "image2": ["2", 0], "direction": "right",
            "match_image_size": True, "spacing_width": 2, "spacing_color": "white"}},
        "4": {"class_type": "GetImageSize", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "ImageToMask", "inputs": {"image": ["3", 0], "channel": "green"}},
        "6": {"class_type": "MaskPreview", "inputs": {"mask": ["5", 0]}},
        "7": {"class_type": "ImageAddNoise",
              "inputs": {"image": ["3", 0], "seed": 7, "strength": 0.1}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }  # fmt: skip
    result = import_comfyui(api, installed_registry(), source="stitch.json")
    wf = result.workflow
    assert not [n for n in wf.nodes if n.type.startswith("comfyui.")], result.report
    out = export_comfyui_api(wf)
    for node_id in ("3", "4", "6", "7"):
        assert out[node_id]["class_type"] == api[node_id]["class_type"]
        assert out[node_id]["inputs"] == api[node_id]["inputs"]
    engine = Engine(installed_registry(), settings=Settings(models_root=str(tmp_path)))
    run_result = engine.run(wf, targets=["4", "6", "8"])
    assert run_result.ok, run_result.errors
    size = run_result.outputs["4"]
    assert (size["width"], size["height"], size["batch_size"]) == (32 + 2 + 16, 16, 1)
    shown = run_result.node_images["6"][0]
    assert shown.size == (50, 16)
    green = np.asarray(shown)[..., 1]
    assert green[:, :32].max() == 0 and green[:, 34:].min() == 255  # red, then green


def test_comfyuis_output_annotation_loads_from_the_output_folder(tmp_path):
    """Load Image From Outputs (and Load Image given "name [output]") reads the output
    folder; "[temp]" says why it cannot; a name leading out of the folder is refused."""
    from PIL import Image

    from nodes.image import checked_image_file
    from studio.engine import Engine
    from studio.settings import Settings

    out, inp = tmp_path / "out", tmp_path / "in"
    (out / "sub").mkdir(parents=True)
    inp.mkdir()
    Image.new("RGB", (12, 7), (0, 255, 0)).save(out / "sub" / "ComfyUI_00001_.png")
    Image.new("RGB", (5, 5), (255, 0, 0)).save(inp / "ComfyUI_00001_.png")
    name = "sub/ComfyUI_00001_.png [output]"
    assert checked_image_file(name, inp, out) == out / "sub" / "ComfyUI_00001_.png"
    assert checked_image_file("ComfyUI_00001_.png [input]", inp, out) == inp / "ComfyUI_00001_.png"
    with pytest.raises(NodeError, match="ComfyUI's temp folder"):
        checked_image_file("ComfyUI_temp_x.png [temp]", inp, out)
    with pytest.raises(NodeError, match="leads out of the folder"):
        checked_image_file("../in/ComfyUI_00001_.png [output]", inp, out)

    api = {
        "1": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    wf = import_comfyui(api, installed_registry(), source="api.json").workflow
    assert wf.get_node("1").type == "load_image"
    assert export_comfyui_api(wf)["1"]["inputs"]["image"] == name
    settings = Settings(models_root=str(tmp_path), output_dir=str(out), input_dir=str(inp))
    result = Engine(installed_registry(), settings=settings).run(wf)
    assert result.ok, result.errors
    shown = result.node_images["2"][0]
    assert shown.size == (12, 7) and shown.getpixel((3, 3)) == (0, 255, 0)


def test_primitive_nodes_feed_the_helpers_params(tmp_path):
    """ComfyUI's PrimitiveBoolean / PrimitiveInt / PrimitiveString feed widgets turned into
    inputs: Image Stitch's match_image_size and spacing, String Concatenate's text."""
    from studio.engine import Engine
    from studio.settings import Settings

    api = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "EmptyImage",
              "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
        "10": {"class_type": "PrimitiveBoolean", "inputs": {"value": False}},
        "11": {"class_type": "PrimitiveInt", "inputs": {"value": 6}},
        "12": {"class_type": "PrimitiveString", "inputs": {"value": "oil painting"}},
        "3": {"class_type": "ImageStitch", "inputs": {
            "image1": ["1", 0], "image2": ["2", 0], "direction": "right",
            "match_image_size": ["10", 0], "spacing_width": ["11", 0],
            "spacing_color": "white"}},
        "4": {"class_type": "GetImageSize", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "StringConcatenate",
              "inputs": {"string_a": "a cat", "string_b": ["12", 0], "delimiter": ", "}},
    }  # fmt: skip
    result = import_comfyui(api, installed_registry(), source="p.json")
    wf = result.workflow
    assert wf.get_node("10").type == "primitive_boolean", result.report
    assert export_comfyui_api(wf)["10"] == {
        "class_type": "PrimitiveBoolean", "inputs": {"value": False}, "_meta": {"title": "Boolean"}
    }  # fmt: skip
    run_result = Engine(installed_registry(), settings=Settings(models_root=str(tmp_path))).run(
        wf, targets=["4", "5"]
    )
    assert run_result.ok, run_result.errors
    size = run_result.outputs["4"]
    assert (size["width"], size["height"]) == (16 + 6 + 4, 8)  # not matched: image2 as it is
    assert run_result.outputs["5"]["string"] == "a cat, oil painting"
