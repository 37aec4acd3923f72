"""ComfyUI's small image, mask and latent operations (nodes/comfyops.py) against ComfyUI's
arithmetic written out here, and their import from ComfyUI files."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nodes import comfyops as ops  # noqa: E402
from studio.errors import NodeError  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402

GEN = torch.Generator().manual_seed(5)


def rand(*shape):
    return torch.rand(*shape, generator=GEN)


def test_mask_to_image_and_image_color_to_mask():
    m = rand(2, 5, 7)
    img = ops.mask_to_image.execute(None, m)
    assert img.shape == (2, 5, 7, 3) and torch.equal(img[..., 1], m)
    image = torch.zeros(1, 4, 4, 3)
    image[0, 1, 2] = torch.tensor([255, 128, 0]) / 255.0
    image[0, 3, 3] = torch.tensor([255, 127, 0]) / 255.0
    mask = ops.image_color_to_mask.execute(None, image, 0xFF8000)
    assert mask.sum() == 1 and mask[0, 1, 2] == 1


def comfy_mask_composite(destination, source, x, y, operation):
    output = destination.reshape((-1, destination.shape[-2], destination.shape[-1])).clone()
    source = source.reshape((-1, source.shape[-2], source.shape[-1]))
    left, top = x, y
    right = min(left + source.shape[-1], destination.shape[-1])
    bottom = min(top + source.shape[-2], destination.shape[-2])
    src = source[:, : bottom - top, : right - left]
    dst = output[:, top:bottom, left:right]
    if operation == "multiply":
        output[:, top:bottom, left:right] = dst * src
    elif operation == "add":
        output[:, top:bottom, left:right] = dst + src
    elif operation == "subtract":
        output[:, top:bottom, left:right] = dst - src
    elif operation == "and":
        output[:, top:bottom, left:right] = torch.bitwise_and(
            dst.round().bool(), src.round().bool()
        ).float()
    elif operation == "or":
        output[:, top:bottom, left:right] = torch.bitwise_or(
            dst.round().bool(), src.round().bool()
        ).float()
    elif operation == "xor":
        output[:, top:bottom, left:right] = torch.bitwise_xor(
            dst.round().bool(), src.round().bool()
        ).float()
    return torch.clamp(output, 0.0, 1.0)


@pytest.mark.parametrize("operation", ops.MASK_OPERATIONS)
def test_mask_composite_is_comfyuis(operation):
    dest, src = rand(1, 16, 20), rand(1, 9, 30)
    got = ops.mask_composite.execute(None, dest, src, 6, 4, operation)
    assert torch.equal(got, comfy_mask_composite(dest, src, 6, 4, operation))
    assert not torch.equal(got, dest)
    # a source outside the destination changes nothing
    assert torch.equal(ops.mask_composite.execute(None, dest, src, 40, 4, operation), dest)


def test_crop_mask_and_its_error_outside():
    m = rand(1, 10, 12)
    assert torch.equal(ops.crop_mask.execute(None, m, 3, 2, 5, 50), m[:, 2:, 3:8])
    with pytest.raises(NodeError, match="outside the 12x10 mask"):
        ops.crop_mask.execute(None, m, 20, 0, 5, 5)


def comfy_blend(img1, img2, mode):
    def g(x):
        return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))

    if mode == "normal":
        return img2
    if mode == "multiply":
        return img1 * img2
    if mode == "screen":
        return 1 - (1 - img1) * (1 - img2)
    if mode == "overlay":
        return torch.where(img1 <= 0.5, 2 * img1 * img2, 1 - 2 * (1 - img1) * (1 - img2))
    if mode == "soft_light":
        return torch.where(
            img2 <= 0.5,
            img1 - (1 - 2 * img2) * img1 * (1 - img1),
            img1 + (2 * img2 - 1) * (g(img1) - img1),
        )
    return img1 - img2


@pytest.mark.parametrize("mode", ops.BLEND_MODES)
def test_image_blend_is_comfyuis(mode):
    a, b = rand(2, 8, 8, 3), rand(2, 8, 8, 3)
    want = torch.clamp(a * 0.3 + comfy_blend(a, b, mode) * 0.7, 0, 1)
    assert torch.allclose(ops.image_blend.execute(None, a, b, 0.7, mode), want, atol=1e-6)


def test_image_blend_scales_the_second_image_to_the_first():
    a, b = rand(1, 8, 8, 3), rand(1, 16, 24, 3)
    got = ops.image_blend.execute(None, a, b, 1.0, "normal")
    middle = b[:, :, 4:20]  # cut at its middle to the first's aspect, then scaled
    scaled = torch.nn.functional.interpolate(middle.movedim(-1, 1), size=(8, 8), mode="bicubic")
    assert torch.allclose(got, scaled.movedim(1, -1).clamp(0, 1), atol=1e-6)


def test_flips_and_rotations_are_comfyuis():
    image = rand(1, 4, 6, 3)
    assert torch.equal(
        ops.image_flip.execute(None, image, ops.FLIPS[0]), torch.flip(image, dims=[1])
    )
    assert torch.equal(
        ops.image_flip.execute(None, image, ops.FLIPS[1]), torch.flip(image, dims=[2])
    )
    turned = ops.image_rotate.execute(None, image, "90 degrees")
    assert turned.shape == (1, 6, 4, 3)
    assert torch.equal(turned, torch.rot90(image, k=1, dims=[2, 1]))
    # clockwise: the top-left pixel goes to the top-right
    assert torch.equal(turned[0, 0, -1], image[0, 0, 0])
    assert torch.equal(ops.image_rotate.execute(None, image, "none"), image)
    samples = rand(1, 4, 6, 8)
    mask = torch.zeros(1, 1, 6, 8)
    mask[..., 0, 0] = 1
    lat = {"samples": samples, "noise_mask": mask}
    flipped = ops.latent_flip.execute(None, lat, ops.FLIPS[1])
    assert torch.equal(flipped["samples"], torch.flip(samples, dims=[3]))
    assert flipped["noise_mask"][0, 0, 0, -1] == 1  # the mask goes with the latent
    rotated = ops.latent_rotate.execute(None, lat, "270 degrees")
    assert torch.equal(rotated["samples"], torch.rot90(samples, k=3, dims=[3, 2]))
    assert rotated["noise_mask"].shape[-2:] == (8, 6)


def comfy_interpolate(s1, s2, ratio):
    m1 = torch.linalg.vector_norm(s1, dim=(1))
    m2 = torch.linalg.vector_norm(s2, dim=(1))
    s1 = torch.nan_to_num(s1 / m1)
    s2 = torch.nan_to_num(s2 / m2)
    t = s1 * ratio + s2 * (1.0 - ratio)
    mt = torch.linalg.vector_norm(t, dim=(1))
    st = torch.nan_to_num(t / mt)
    return st * (m1 * ratio + m2 * (1.0 - ratio))


def test_latent_arithmetic_is_comfyuis():
    s1, s2 = rand(1, 4, 8, 8) - 0.5, rand(1, 4, 8, 8) - 0.5
    a, b = {"samples": s1}, {"samples": s2}
    assert torch.equal(ops.latent_add.execute(None, a, b)["samples"], s1 + s2)
    assert torch.equal(ops.latent_subtract.execute(None, a, b)["samples"], s1 - s2)
    assert torch.equal(ops.latent_multiply.execute(None, a, -1.5)["samples"], s1 * -1.5)
    got = ops.latent_interpolate.execute(None, a, b, 0.3)["samples"]
    assert torch.allclose(got, comfy_interpolate(s1, s2, 0.3), atol=1e-6)
    assert torch.allclose(ops.latent_interpolate.execute(None, a, b, 1.0)["samples"], s1, atol=1e-6)
    # a batch: each latent of it interpolated on its own
    batch = ops.latent_interpolate.execute(None, {"samples": torch.cat([s1, s2])}, b, 0.3)[
        "samples"
    ]
    assert torch.allclose(batch[:1], got, atol=1e-6)
    # a second latent of another size is scaled to the first's; another family is refused
    small = {"samples": rand(1, 4, 4, 4)}
    assert ops.latent_add.execute(None, a, small)["samples"].shape == s1.shape
    with pytest.raises(NodeError, match="16 channels"):
        ops.latent_add.execute(None, a, {"samples": rand(1, 16, 8, 8)})


API = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
    "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
    "3": {"class_type": "ImageColorToMask", "inputs": {"color": 65280, "image": ["1", 0]}},
    "4": {"class_type": "CropMask",
          "inputs": {"x": 8, "y": 16, "width": 32, "height": 24, "mask": ["3", 0]}},
    "5": {"class_type": "MaskComposite", "inputs": {
        "x": 4, "y": 4, "operation": "xor", "destination": ["1", 1], "source": ["4", 0]}},
    "6": {"class_type": "ImageBlend", "inputs": {
        "blend_factor": 0.4, "blend_mode": "screen", "image1": ["1", 0], "image2": ["2", 0]}},
    "7": {"class_type": "ImageFlip", "inputs": {"flip_method": "y-axis: horizontally",
                                                "image": ["6", 0]}},
    "8": {"class_type": "ImageRotate", "inputs": {"rotation": "180 degrees", "image": ["7", 0]}},
    "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                       "batch_size": 1}},
    "10": {"class_type": "LatentFlip", "inputs": {"flip_method": "x-axis: vertically",
                                                  "samples": ["9", 0]}},
    "11": {"class_type": "LatentRotate", "inputs": {"rotation": "90 degrees",
                                                    "samples": ["10", 0]}},
    "12": {"class_type": "LatentAdd", "inputs": {"samples1": ["11", 0], "samples2": ["9", 0]}},
    "13": {"class_type": "LatentSubtract", "inputs": {"samples1": ["12", 0],
                                                      "samples2": ["9", 0]}},
    "14": {"class_type": "LatentMultiply", "inputs": {"multiplier": 0.5, "samples": ["13", 0]}},
    "15": {"class_type": "LatentInterpolate", "inputs": {"ratio": 0.25, "samples1": ["14", 0],
                                                         "samples2": ["9", 0]}},
}  # fmt: skip


def test_they_import_from_comfyui_and_export_back():
    result = import_comfyui(API, installed_registry(), source="ops.json")
    wf = result.workflow
    assert not [n for n in wf.nodes if n.type.startswith("comfyui.")], result.report
    types = {n.id: n.type for n in wf.nodes}
    assert types["2"] == "mask_to_image" and types["15"] == "latent_interpolate"
    assert wf.get_node("5").params == {"x": 4, "y": 4, "operation": "xor"}
    assert wf.link_into("11", "latent").source == "10"
    exported = export_comfyui_api(wf)
    for nid in ("3", "4", "5", "6", "7", "8", "10", "11", "14", "15"):
        assert exported[nid]["inputs"] == API[nid]["inputs"], nid


def comfy_composite(destination, source, x, y, mask=None, multiplier=8, resize_source=False):
    if resize_source:
        source = torch.nn.functional.interpolate(
            source, size=(destination.shape[-2], destination.shape[-1]), mode="bilinear"
        )
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = (x // multiplier, y // multiplier)
    right, bottom = (left + source.shape[-1], top + source.shape[-2])
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = torch.nn.functional.interpolate(
            mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
            size=(source.shape[-2], source.shape[-1]), mode="bilinear",
        )  # fmt: skip
    visible_width = destination.shape[-1] - left + min(0, x)
    visible_height = destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_height, :visible_width]
    inverse_mask = torch.ones_like(mask) - mask
    source_portion = mask * source[:, :, :visible_height, :visible_width]
    destination_portion = inverse_mask * destination[:, :, top:bottom, left:right]
    destination[:, :, top:bottom, left:right] = source_portion + destination_portion
    return destination


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("resize", [False, True])
def test_latent_composite_masked_is_comfyuis(masked, resize):
    dest, src = rand(1, 4, 12, 12), rand(1, 4, 6, 9)
    mask = rand(1, 48, 72) if masked else None
    got = ops.latent_composite_masked.execute(
        None, {"samples": dest}, {"samples": src}, 40, 16, resize, mask
    )["samples"]
    want = comfy_composite(dest.clone(), src, 40, 16, mask, 8, resize)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.equal(got, dest)


def test_alpha_splits_and_joins_back():
    rgba = rand(2, 6, 5, 4)
    out = ops.split_image_with_alpha.execute(None, rgba)
    assert torch.equal(out["image"], rgba[..., :3])
    assert torch.allclose(out["mask"], 1.0 - rgba[..., 3])
    joined = ops.join_image_with_alpha.execute(None, out["image"], out["mask"])
    assert torch.allclose(joined, rgba, atol=1e-6)
    rgb = ops.split_image_with_alpha.execute(None, rgba[..., :3])
    assert torch.equal(rgb["mask"], torch.zeros(2, 6, 5))  # opaque: nothing masked
    # a mask of another size is stretched to the image (ComfyUI's resize_mask)
    small = rand(1, 3, 3)
    got = ops.join_image_with_alpha.execute(None, rgba[:1, ..., :3], small)
    want = torch.nn.functional.interpolate(small[:, None], size=(6, 5), mode="bilinear")[:, 0]
    assert torch.allclose(got[..., 3], 1.0 - want, atol=1e-6)


def comfy_latent_crop(samples, width, height, x, y):
    x, y = x // 8, y // 8
    if x > (samples.shape[3] - 8):
        x = samples.shape[3] - 8
    if y > (samples.shape[2] - 8):
        y = samples.shape[2] - 8
    return samples[:, :, y : y + height // 8, x : x + width // 8]


@pytest.mark.parametrize("box", [(64, 64, 16, 24), (128, 96, 200, 0), (512, 512, 0, 0)])
def test_latent_crop_is_comfyuis(box):
    s = rand(1, 4, 20, 24)
    got = ops.latent_crop.execute(None, {"samples": s}, *box)["samples"]
    assert torch.equal(got, comfy_latent_crop(s, *box))


def test_a_fixed_seed_behaviour_draws_one_picture_for_the_whole_batch(tmp_path):
    """Through the Sampler on studio-tiny: fixed gives each latent of the batch the first's
    noise (the same picture three times), random each its own."""
    import numpy as np

    from studio import recipes
    from studio.engine import Engine
    from studio.settings import Settings

    settings = Settings(output_dir=str(tmp_path / "o"), input_dir=str(tmp_path / "i"))
    engine = Engine(installed_registry(), settings=settings)
    pictures = {}
    for behavior in ops.SEED_BEHAVIORS:
        wf, ids = recipes.txt2img(
            engine.registry, "studio-tiny", "a red circle on a blue background", steps=4,
            cfg=3.0, batch_size=3,
        )  # fmt: skip
        link = wf.link_into(ids["sampler"], "latent")
        node = wf.add_node("latent_batch_seed_behavior", {"seed_behavior": behavior}).id
        wf.connect(link.source, link.output, node, "latent")
        wf.connect(node, "latent", ids["sampler"], "latent")
        result = engine.run(wf)
        assert result.ok, result.errors
        pictures[behavior] = result.outputs[ids["decode"]]["image"].numpy()
    fixed, random = pictures["fixed"], pictures["random"]
    # (the same up to batched arithmetic, far under a level of 255)
    assert np.abs(fixed[1] - fixed[0]).max() <= 1e-4 and np.abs(fixed[2] - fixed[0]).max() <= 1e-4
    assert np.abs(random[1] - random[0]).max() > 1e-2


def test_area_strength_weighs_a_prompt_against_those_it_is_combined_with(tmp_path):
    """ComfyUI's ConditioningSetAreaStrength on whole-picture prompts: predictions averaged by
    strength. Strength 0 leaves the other prompt alone; the same strength on both changes
    nothing; an uneven one moves the picture."""
    import numpy as np

    from studio import recipes
    from studio.engine import Engine
    from studio.settings import Settings

    settings = Settings(output_dir=str(tmp_path / "o"), input_dir=str(tmp_path / "i"))
    engine = Engine(installed_registry(), settings=settings)
    texts = ("a red circle on a blue background", "a yellow square on a green background")

    def picture(strengths: tuple[float | None, ...]) -> np.ndarray:
        wf, ids = recipes.txt2img(engine.registry, "studio-tiny", texts[0], steps=4, cfg=3.0)
        ck = next(n.id for n in wf.nodes if n.type == "load_checkpoint")
        sides = []
        for text, strength in zip(texts, strengths, strict=False):
            node = wf.add_node("text_encode", {"text": text}).id
            wf.connect(ck, "clip", node, "clip")
            out = (node, "conditioning")
            if strength is not None:
                s = wf.add_node("conditioning_set_area_strength", {"strength": strength}).id
                wf.connect(*out, s, "conditioning")
                out = (s, "conditioning")
            sides.append(out)
        if len(sides) == 2:
            combine = wf.add_node("conditioning_combine").id
            wf.connect(*sides[0], combine, "conditioning_1")
            wf.connect(*sides[1], combine, "conditioning_2")
            sides = [(combine, "conditioning")]
        wf.connect(*sides[0], ids["sampler"], "positive")
        result = engine.run(wf)
        assert result.ok, result.errors
        return result.outputs[ids["decode"]]["image"].numpy()

    alone = picture((None,))
    assert np.abs(picture((None, 0.0)) - alone).max() <= 1e-4
    both = picture((None, None))
    assert np.abs(picture((2.0, 2.0)) - both).max() <= 1e-5
    assert np.abs(picture((3.0, None)) - both).max() > 1e-2
