"""Regional prompts as ComfyUI makes them: Conditioning Set Mask's 'mask bounds', and area
and mask prompts with a ControlNet and with SDXL (tiny random models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402
from PIL import Image  # noqa: E402

from nodes.comfycore import mask_bounds_cells  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

SIZE = 128  # pixels: a 16x16 latent


def test_mask_bounds_are_comfyuis_box():
    m = torch.zeros(1, 16, 16)
    m[0, 3:7, 4:14] = 0.5
    # 4 rows grow to ComfyUI's minimum of 8; 10 columns stay
    assert mask_bounds_cells(m, (16, 16)) == (8, 10, 3, 4)
    two = torch.zeros(2, 16, 16)
    two[0, 2, 9], two[1, 12, 1] = 1.0, -1.0  # the box holds every image's mask
    assert mask_bounds_cells(two, (16, 16)) == (11, 9, 2, 1)
    assert mask_bounds_cells(torch.zeros(1, 16, 16), (16, 16)) == (8, 8, 0, 0)
    # a mask of another size is first resized to the latent (bilinear)
    big = torch.zeros(1, 128, 128)
    big[0, 24:56, 32:112] = 1.0
    assert mask_bounds_cells(big, (16, 16)) == (8, 10, 3, 4)


def control_picture(path, stripes):
    """A black 128x128 control picture with white rows ``stripes`` (start, stop) pairs."""
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    arr[40:90, 50:70] = 255
    for start, stop in stripes:
        arr[start:stop] = 255
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    from test_controlnet import tiny_controlnet

    root = tmp_path_factory.mktemp("models")
    sd1, sdxl = fx.tiny_sd1(), fx.tiny_sdxl()
    fx.save_folder(fx.sd1_pipeline(sd1), root / "checkpoints" / "tiny-sd1")
    fx.save_folder(fx.sdxl_pipeline(sdxl), root / "checkpoints" / "tiny-sdxl")
    tiny_controlnet(sd1["unet"], 1).save_pretrained(root / "controlnet" / "edges")
    tiny_controlnet(sdxl["unet"], 2).save_pretrained(root / "controlnet" / "xl-edges")
    control_picture(root / "plain.png", [])
    # an 80x64 area keeps rows 13..114 of a 128x128 picture (ComfyUI's centre crop)
    control_picture(root / "cut-away.png", [(0, 12), (116, 128)])
    control_picture(root / "kept.png", [(14, 30), (100, 115)])
    rgba = np.full((SIZE, SIZE, 4), 255, dtype=np.uint8)
    rgba[24:56, 32:112, 3] = 0  # transparent = mask 1: latent rows 3..6, columns 4..13
    Image.fromarray(rgba, "RGBA").save(root / "box.png")
    return root


@pytest.fixture
def engine(models_root, tmp_path):
    settings = Settings(models_root=str(models_root), output_dir=str(tmp_path / "out"))
    yield Engine(installed_registry(), settings=settings)


def run(engine, models_root, region, *, cfg=1.0, steps=1, alone=False, ckpt="tiny-sd1"):
    """txt2img at 128x128 whose positive is 'a red fox' combined with 'a green tree' placed by
    ``region(wf, tree, mask)`` (None: the fox alone; ``alone``: the placed tree without the
    fox); returns the sampler's latent."""
    wf, ids = fx.txt2img(
        ckpt, prompt="a red fox", steps=steps, cfg=cfg, seed=3, width=SIZE, height=SIZE
    )
    if region is not None:
        tree = wf.add_node("text_encode", {"text": "a green tree"}).id
        wf.connect(ids["ckpt"], "clip", tree, "clip")
        mask = wf.add_node("load_image", {"image": str(models_root / "box.png")}).id
        placed = region(wf, tree, mask)
        if not alone:
            comb = wf.add_node("conditioning_combine").id
            wf.connect(ids["pos"], "conditioning", comb, "conditioning_1")
            wf.connect(placed, "conditioning", comb, "conditioning_2")
            placed = comb
        wf.connect(placed, "conditioning", ids["sampler"], "positive")
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[ids["sampler"]]["latent"]["samples"]


def set_mask(wf, prompt, mask, area="default", strength=1.0):
    n = wf.add_node("conditioning_set_mask", {"strength": strength, "set_cond_area": area}).id
    wf.connect(prompt, "conditioning", n, "conditioning")
    wf.connect(mask, "mask", n, "mask")
    return n


def set_area(wf, prompt, x, y, width, height, strength=1.0):
    n = wf.add_node(
        "conditioning_set_area",
        {"x": x, "y": y, "width": width, "height": height, "strength": strength},
    ).id
    wf.connect(prompt, "conditioning", n, "conditioning")
    return n


def test_mask_bounds_predicts_the_prompt_on_the_box_weighted_by_the_mask(engine, models_root):
    """One euler step at cfg 1 is linear in the prediction, so the latent shows ComfyUI's sum
    cell by cell: outside the box the fox alone; inside it (fox + m * tree) / (1 + m), the
    tree predicted on the box only (rows 3..10, columns 4..13) and m its mask there."""
    fox = run(engine, models_root, None)
    # the tree alone on the box: an area prompt with no other prompt counts fully inside it
    tree_box = run(
        engine, models_root, lambda wf, tree, mask: set_area(wf, tree, 32, 24, 80, 64), alone=True
    )
    strength = 2.0
    got = run(
        engine, models_root, lambda wf, tree, mask: set_mask(wf, tree, mask, "mask bounds", 2.0)
    )
    box = (..., slice(3, 11), slice(4, 14))
    m = torch.zeros(1, 1, 8, 10)
    m[..., :4, :] = strength  # the mask's rows 3..6 of the box; rows 7..10 weigh 0
    want = fox.clone()
    want[box] = (fox[box] + m * tree_box[box]) / (1 + m)
    assert torch.allclose(got, want, atol=1e-4)
    # not the default, where the tree is predicted on the whole image and then masked
    default = run(engine, models_root, lambda wf, tree, mask: set_mask(wf, tree, mask, "default"))
    assert (default - got)[..., 3:7, 4:14].abs().max() > 1e-3
    assert torch.equal(default[..., :3, :], got[..., :3, :])


def test_mask_bounds_equals_an_area_then_a_mask(engine, models_root):
    """With guidance (the negative predicted on the same box) and two steps: 'mask bounds'
    is a Set Area on the mask's box followed by a default Set Mask, as in ComfyUI."""

    def bounds(wf, tree, mask):
        return set_mask(wf, tree, mask, "mask bounds", 1.5)

    def by_hand(wf, tree, mask):
        return set_mask(wf, set_area(wf, tree, 32, 24, 80, 64), mask, "default", 1.5)

    a = run(engine, models_root, bounds, cfg=4.0, steps=2)
    b = run(engine, models_root, by_hand, cfg=4.0, steps=2)
    assert torch.allclose(a, b, atol=1e-5)
    fox = run(engine, models_root, None, cfg=4.0, steps=2)
    assert (a - fox).abs().max() > 1e-3


def test_the_importer_maps_mask_bounds():
    ui = {
        "last_node_id": 2,
        "last_link_id": 0,
        "nodes": [
            {
                "id": 1,
                "type": "ConditioningSetMask",
                "pos": [0, 0],
                "size": [300, 100],
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "widgets_values": [0.7, "mask bounds"],
            }
        ],
        "links": [],
        "version": 0.4,
    }
    result = import_comfyui(ui, installed_registry(), source="regions.json")
    node = next(n for n in result.workflow.nodes if n.id == "1")
    assert node.type == "conditioning_set_mask"
    assert node.params["set_cond_area"] == "mask bounds" and node.params["strength"] == 0.7
    assert not any("set_cond_area" in line for line in result.report)


# -- area and mask prompts with a ControlNet and with SDXL ---------------------------------


def controlled(wf, prompt, models_root, picture, net="edges"):
    """``prompt`` with Apply ControlNet (One Prompt) of ``picture``."""
    loader = wf.add_node("load_controlnet", {"control_net_name": net}).id
    image = wf.add_node("load_image", {"image": str(models_root / picture)}).id
    n = wf.add_node("apply_controlnet_one", {"strength": 1.0}).id
    wf.connect(prompt, "conditioning", n, "conditioning")
    wf.connect(loader, "control_net", n, "control_net")
    wf.connect(image, "image", n, "image")
    return n


def test_control_picture_is_cut_to_the_area_around_its_centre():
    from nodes.controlnet import center_crop

    image = torch.zeros(1, 128, 128, 3)
    assert center_crop(image, 80 / 64).shape == (1, 102, 128, 3)  # 13 rows off each end
    assert center_crop(image, 0.5).shape == (1, 128, 64, 3)
    assert center_crop(image, 1.0).shape == (1, 128, 128, 3)


def test_a_controlnet_on_an_area_prompt_sees_its_picture_fitted_to_the_area(engine, models_root):
    """ComfyUI fits the whole control picture to the area (cut to its aspect around the
    centre, then resized): what the cut removes does not count, the rest does."""

    def tree_area(picture):
        def region(wf, tree, mask):
            return set_area(wf, controlled(wf, tree, models_root, picture), 32, 24, 80, 64)

        return run(engine, models_root, region, cfg=4.0, steps=2)

    plain, cut, kept = tree_area("plain.png"), tree_area("cut-away.png"), tree_area("kept.png")
    assert torch.allclose(plain, cut, atol=1e-5)
    assert (kept - plain)[..., 3:11, 4:14].abs().max() > 1e-4  # exactly 0 for the cut part
    no_control = run(
        engine, models_root, lambda wf, tree, mask: set_area(wf, tree, 32, 24, 80, 64), cfg=4.0
    )
    assert (no_control - plain).abs().max() > 1e-3


def test_a_controlnet_on_a_whole_image_area_is_the_controlnet_on_the_prompt(engine, models_root):
    def whole_area(wf, tree, mask):
        return set_area(wf, controlled(wf, tree, models_root, "kept.png"), 0, 0, SIZE, SIZE)

    def no_area(wf, tree, mask):
        return controlled(wf, tree, models_root, "kept.png")

    assert torch.allclose(
        run(engine, models_root, whole_area), run(engine, models_root, no_area), atol=1e-5
    )


@pytest.mark.parametrize("area", ["area", "mask bounds"])
def test_sdxl_area_prompts_run_on_their_part(engine, models_root, area):
    """SDXL: each area prompt keeps its own pooled text and the image's size ids; the area
    prompt changes its box, with a ControlNet too."""

    def region(control):
        def place(wf, tree, mask):
            if control:
                tree = controlled(wf, tree, models_root, "kept.png", net="xl-edges")
            if area == "area":
                return set_area(wf, tree, 32, 24, 80, 64)
            return set_mask(wf, tree, mask, "mask bounds")

        return place

    fox = run(engine, models_root, None, ckpt="tiny-sdxl", cfg=4.0)
    placed = run(engine, models_root, region(False), ckpt="tiny-sdxl", cfg=4.0)
    change = (placed - fox).abs()
    assert change[..., 3:7, 4:14].min() > 1e-6  # every cell of the box changes
    assert change[..., 11:, :].max() < 1e-5 and change[..., :, 14:].max() < 1e-5  # no more
    with_cn = run(engine, models_root, region(True), ckpt="tiny-sdxl", cfg=4.0)
    assert (with_cn - placed)[..., 3:11, 4:14].abs().max() > 1e-3


def test_sdxl_whole_image_area_is_the_prompt_combined(engine, models_root):
    def whole_area(wf, tree, mask):
        return set_area(wf, tree, 0, 0, SIZE, SIZE)

    a = run(engine, models_root, whole_area, ckpt="tiny-sdxl")
    b = run(engine, models_root, lambda wf, tree, mask: tree, ckpt="tiny-sdxl")
    assert torch.allclose(a, b, atol=1e-5)


def test_diffusion_transformers_take_regional_prompts_of_their_family():
    """SD3 / Flux take area and mask prompts (tests/test_dit.py runs them); a prompt of
    another family among combined ones is still a clear error."""
    from nodes.dit import _is_regional, _prompt_list
    from nodes.values import Cond
    from studio.errors import NodeError

    plain = Cond(embeds=None, family="flux")
    placed = Cond(embeds=None, family="flux", extra={"area": (64, 64, 0, 0)})
    masked = Cond(embeds=None, family="flux", extra={"mask": (torch.ones(1, 8, 8), 1.0)})
    assert not _is_regional([plain], [plain])
    assert _is_regional([placed], [plain]) and _is_regional([plain], [masked])
    assert _is_regional([plain, plain], [plain])
    with pytest.raises(NodeError, match="CLIP that goes with this model"):
        _prompt_list([plain, Cond(embeds=None, family="sd1")], "positive", "flux")


def test_a_comfyui_prompt_with_a_controlled_area_runs_on_studio_tiny():
    """ComfyUI's API format: a second prompt on the right half with the old ControlNetApply
    on it, and the first prompt's Set Mask on the mask's bounds; it imports with nothing to
    report about them and runs (it used to stop with 'not supported yet')."""
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "studio-tiny"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a square", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "5": {
            "class_type": "ConditioningSetArea",
            "inputs": {"conditioning": ["3", 0], "width": 32, "height": 64, "x": 32, "y": 0,
                       "strength": 1.0},
        },
        "6": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "studio-tiny-canny"}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {
            "class_type": "ControlNetApply",
            "inputs": {"conditioning": ["5", 0], "control_net": ["6", 0], "image": ["8", 0],
                       "strength": 1.0},
        },
        "10": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}},
        "11": {
            "class_type": "ConditioningSetMask",
            "inputs": {"conditioning": ["2", 0], "mask": ["10", 0], "strength": 1.0,
                       "set_cond_area": "mask bounds"},
        },
        "12": {"class_type": "ConditioningCombine",
               "inputs": {"conditioning_1": ["11", 0], "conditioning_2": ["9", 0]}},
        "13": {
            "class_type": "KSampler",
            "inputs": {"model": ["1", 0], "positive": ["12", 0], "negative": ["4", 0],
                       "latent_image": ["7", 0], "seed": 3, "steps": 3, "cfg": 3.0,
                       "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
        },
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["1", 2]}},
        "15": {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}},
    }  # fmt: skip
    result = import_comfyui(api, installed_registry(), source="regions.json")
    assert result.report == []
    run = Engine(installed_registry()).run(result.workflow)
    assert run.ok, run.errors
    image = run.outputs["14"]["image"]
    assert image.shape == (1, 64, 64, 3) and float(image.std()) > 0.01
