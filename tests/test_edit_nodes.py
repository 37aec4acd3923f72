"""Mask, composite, scale and upscale nodes (tiny models made here, CPU)."""

from __future__ import annotations

import pytest
import torch

import nodes.mask as mask_nodes
import nodes.upscale as upscale_nodes
from studio.engine import Engine
from studio.graph import Workflow
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.settings import Settings

IMAGES: dict[str, torch.Tensor] = {}
MASKS: dict[str, torch.Tensor] = {}


def _image_source(ctx, name: str):
    return IMAGES[name]


def _mask_source(ctx, name: str):
    return MASKS[name]


def _keep(ctx, image):
    ctx.show([image])
    return {}


TEST_SPECS = [
    NodeSpec(
        "image_source",
        "Image Source",
        "test",
        _image_source,
        inputs=(InputSpec("name", T.STRING, default=""),),
        outputs=(OutputSpec("image", T.IMAGE),),
    ),
    NodeSpec(
        "mask_source",
        "Mask Source",
        "test",
        _mask_source,
        inputs=(InputSpec("name", T.STRING, default=""),),
        outputs=(OutputSpec("mask", T.MASK),),
    ),
    NodeSpec(
        "keep", "Keep", "test", _keep, inputs=(InputSpec("image", T.IMAGE),), output_node=True
    ),
]


@pytest.fixture
def reg():
    r = Registry(TEST_SPECS)
    r.register_module(mask_nodes)
    r.register_module(upscale_nodes)
    return r


@pytest.fixture
def models_root(tmp_path):
    settings = Settings(models_root=str(tmp_path / "models"))
    yield settings


def noise_image(h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, h, w, 3), generator=g)


def run_single(reg, settings, type_id, params, links):
    """Run one node of ``type_id`` fed by sources; return its first output and the result."""
    wf = Workflow(reg)
    target = wf.add_node(type_id, params)
    for input_name, (kind, key) in links.items():
        src = wf.add_node(f"{kind}_source", {"name": key})
        wf.connect(src.id, kind, target.id, input_name)
    spec = reg.get(type_id)
    first_image_out = next(o.name for o in spec.outputs if o.type in (T.IMAGE, T.MASK))
    keep_type = spec.output(first_image_out).type
    if keep_type is T.IMAGE:
        keep = wf.add_node("keep")
        wf.connect(target.id, first_image_out, keep.id, "image")
        result = Engine(reg, settings=settings).run(wf)
    else:
        result = Engine(reg, settings=settings).run(wf, targets=[target.id])
    return result.outputs.get(target.id, {}), result, target.id


def test_grow_shrink_feather_invert_threshold(reg, models_root):
    m = torch.zeros((1, 32, 32))
    m[:, 12:20, 12:20] = 1.0
    MASKS["square"] = m
    grown, *_ = run_single(
        reg, models_root, "grow_mask", {"pixels": 3}, {"mask": ("mask", "square")}
    )
    assert grown["mask"].sum() == 14 * 14
    shrunk, *_ = run_single(
        reg, models_root, "grow_mask", {"pixels": -2}, {"mask": ("mask", "square")}
    )
    assert shrunk["mask"].sum() == 4 * 4
    soft, *_ = run_single(
        reg, models_root, "feather_mask", {"radius": 4}, {"mask": ("mask", "square")}
    )
    s = soft["mask"]
    assert 0 < s[0, 16, 10] < 1 and s[0, 16, 16] > 0.9 and s[0, 0, 0] == 0
    inv, *_ = run_single(reg, models_root, "invert_mask", {}, {"mask": ("mask", "square")})
    assert inv["mask"].sum() == 32 * 32 - 64
    MASKS["soft"] = s
    hard, *_ = run_single(
        reg, models_root, "threshold_mask", {"threshold": 0.5}, {"mask": ("mask", "soft")}
    )
    assert set(hard["mask"].unique().tolist()) == {0.0, 1.0}


def test_composite_keeps_unmasked_pixels_exactly(reg, models_root):
    IMAGES["original"] = noise_image(seed=1)
    IMAGES["changed"] = noise_image(seed=2)
    m = torch.zeros((1, 48, 64))
    m[:, :, :32] = 1.0
    m[:, :, 30:34] = 0.5  # a soft edge
    MASKS["left"] = m
    out, *_ = run_single(
        reg,
        models_root,
        "composite_masked",
        {},
        {
            "original": ("image", "original"),
            "changed": ("image", "changed"),
            "mask": ("mask", "left"),
        },
    )
    img = out["image"]
    assert torch.equal(img[:, :, 34:], IMAGES["original"][:, :, 34:])
    assert torch.equal(img[:, :, :30], IMAGES["changed"][:, :, :30])


def test_mask_of_another_size_is_a_clear_node_error(reg, models_root):
    IMAGES["original"] = noise_image()
    IMAGES["changed"] = noise_image(seed=3)
    MASKS["small"] = torch.ones((1, 16, 16))
    _, result, node_id = run_single(
        reg,
        models_root,
        "composite_masked",
        {},
        {
            "original": ("image", "original"),
            "changed": ("image", "changed"),
            "mask": ("mask", "small"),
        },
    )
    assert "the mask is 16x16 but the original image is 64x48" in result.errors[node_id]


def test_crop_to_mask_and_paste_back(reg, models_root):
    img = noise_image(64, 96, seed=4)
    m = torch.zeros((1, 64, 96))
    m[:, 20:30, 50:60] = 1
    ctx = None
    crop = mask_nodes.crop_to_mask.execute(ctx, image=img, mask=m, padding=4, multiple_of=8)
    x, y, ci = crop["x"], crop["y"], crop["image"]
    assert ci.shape[1] % 8 == 0 and ci.shape[2] % 8 == 0
    assert x <= 46 and y <= 16 and x + ci.shape[2] >= 64 and y + ci.shape[1] >= 34
    assert torch.equal(ci, img[:, y : y + ci.shape[1], x : x + ci.shape[2]])
    changed = torch.zeros_like(ci)
    pasted = mask_nodes.paste_crop.execute(
        ctx, destination=img, source=changed, x=x, y=y, width=0, height=0, mask=crop["mask"]
    )
    assert torch.equal(pasted[0, 25, 55], torch.zeros(3))  # inside the mask: changed
    outside = torch.ones((64, 96), dtype=torch.bool)
    outside[20:30, 50:60] = False
    assert torch.equal(pasted[0][outside], img[0][outside])  # everything else: the original


def test_scale_image_sizes_and_methods(reg, models_root):
    IMAGES["src"] = noise_image(48, 64)
    for method in upscale_nodes.SCALE_METHODS:
        out, *_ = run_single(
            reg,
            models_root,
            "scale_image",
            {"mode": "factor", "factor": 1.5, "method": method},
            {"image": ("image", "src")},
        )
        assert out["image"].shape == (1, 72, 96, 3), method
        assert out["image"].min() >= 0 and out["image"].max() <= 1
    out, *_ = run_single(
        reg,
        models_root,
        "scale_image",
        {"mode": "size", "width": 128, "height": 0},
        {"image": ("image", "src")},
    )
    assert out["image"].shape == (1, 96, 128, 3)
    out, *_ = run_single(
        reg,
        models_root,
        "scale_image",
        {"mode": "size", "width": 100, "height": 100, "keep_aspect": True},
        {"image": ("image", "src")},
    )
    assert out["image"].shape == (1, 75, 100, 3)


def test_latent_upscale():
    lat = {"samples": torch.randn(2, 4, 8, 10)}
    out = upscale_nodes.latent_upscale.execute(None, latent=lat, scale_by=1.5, method="bilinear")
    assert out["samples"].shape == (2, 4, 12, 15)


def tiny_upscaler(path, seed=0):
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    model = Compact(num_feat=8, num_conv=2, upscale=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def upscale_workflow(reg, tile, overlap=16):
    wf = Workflow(reg)
    loader = wf.add_node("load_upscale_model", {"model_name": "tiny-x4.safetensors"})
    src = wf.add_node("image_source", {"name": "photo"})
    up = wf.add_node("upscale_image", {"tile_size": tile, "overlap": overlap})
    keep = wf.add_node("keep")
    wf.connect(loader.id, "upscale_model", up.id, "upscale_model")
    wf.connect(src.id, "image", up.id, "image")
    wf.connect(up.id, "image", keep.id, "image")
    return wf, up


def test_upscale_with_spandrel_tiled_matches_untiled(reg, models_root):
    folder = models_root.models_root_path / "upscale_models"
    folder.mkdir(parents=True)
    tiny_upscaler(folder / "tiny-x4.safetensors")
    IMAGES["photo"] = noise_image(40, 56, seed=5)
    engine = Engine(reg, settings=models_root)
    wf_full, up_full = upscale_workflow(reg, tile=0)
    full = engine.run(wf_full)
    assert not full.errors, full.errors
    whole = full.outputs[up_full.id]["image"]
    assert whole.shape == (1, 160, 224, 3)
    # The 4-conv model sees 4 input pixels around each: an overlap of 16 fades between tiles
    # only where both are undisturbed by padding, so tiling changes nothing measurable.
    wf_tiled, up_tiled = upscale_workflow(reg, tile=24, overlap=16)
    tiled = engine.run(wf_tiled).outputs[up_tiled.id]["image"]
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-3
    # A small overlap differs only near the seams.
    wf_thin, up_thin = upscale_workflow(reg, tile=24, overlap=4)
    thin = engine.run(wf_thin).outputs[up_thin.id]["image"]
    seams = torch.zeros(160, 224, dtype=torch.bool)
    for start in upscale_nodes.tile_starts(40, 24, 4)[1:]:
        seams[max(0, start * 4 - 24) : start * 4 + 40, :] = True
    for start in upscale_nodes.tile_starts(56, 24, 4)[1:]:
        seams[:, max(0, start * 4 - 24) : start * 4 + 40] = True
    assert (thin - whole)[0][~seams].abs().max() < 1e-3
    assert engine.models.loads == 1  # the second workflow shares the loaded upscaler


def test_unreadable_upscale_model_is_a_clear_error(reg, models_root):
    from safetensors.torch import save_file

    folder = models_root.models_root_path / "upscale_models"
    folder.mkdir(parents=True)
    save_file({"nonsense.weight": torch.zeros(3, 3)}, str(folder / "tiny-x4.safetensors"))
    IMAGES["photo"] = noise_image(16, 16)
    wf, _ = upscale_workflow(reg, tile=0)
    result = Engine(reg, settings=models_root).run(wf)
    loader_id = wf.nodes[0].id
    assert "tiny-x4.safetensors" in result.errors[loader_id]
    assert "not an upscale model architecture" in result.errors[loader_id]


def test_pickled_upscaler_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    from studio.errors import NodeError

    with pytest.raises(NodeError, match="does not run code from model files"):
        upscale_nodes.read_state_dict(path)


def test_blend_weights_sum_to_one():
    starts = upscale_nodes.tile_starts(100, 32, 8)
    weights = upscale_nodes.blend_weights(starts, 32, 100, 2)
    total = torch.zeros(200)
    for s, w in zip(starts, weights, strict=True):
        total[s * 2 : s * 2 + len(w)] += w
    assert torch.allclose(total, torch.ones(200))
