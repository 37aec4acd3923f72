"""ControlNet preprocessors (controlnet-aux), with no downloads."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import nodes.preprocess as pre
from studio.engine import Engine
from studio.graph import Workflow
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.settings import Settings

SOURCE: dict[str, torch.Tensor] = {}

SPECS = [
    NodeSpec(
        "src",
        "Source",
        "test",
        lambda ctx: SOURCE["image"],
        outputs=(OutputSpec("image", T.IMAGE),),
    ),
    NodeSpec(
        "keep",
        "Keep",
        "test",
        lambda ctx, image: ctx.show([image]) or {},
        inputs=(InputSpec("image", T.IMAGE),),
        output_node=True,
    ),
]


@pytest.fixture
def reg():
    r = Registry(SPECS)
    r.register_module(pre)
    return r


@pytest.fixture
def settings(tmp_path):
    s = Settings(models_root=str(tmp_path / "models"))
    yield s


def square_image(size=96):
    img = torch.zeros((1, size, size, 3))
    img[:, 32:64, 32:64, :] = 1.0
    return img


def run(reg, settings, type_id, params=None):
    wf = Workflow(reg)
    s = wf.add_node("src")
    n = wf.add_node(type_id, params or {})
    k = wf.add_node("keep")
    wf.connect(s.id, "image", n.id, "image")
    wf.connect(n.id, "image", k.id, "image")
    result = Engine(reg, settings=settings).run(wf)
    return result, n.id


def test_canny_finds_the_square_outline(reg, settings):
    SOURCE["image"] = square_image()
    result, nid = run(reg, settings, "canny", {"resolution": 96})
    edges = result.outputs[nid]["image"][0, ..., 0]
    assert edges.shape == (96, 96)
    assert edges[30:34, 40:56].max() > 0.5  # top edge of the square
    assert edges[:20, :20].max() == 0 and edges[40:56, 40:56].max() == 0  # flat areas


def test_lineart_standard_finds_a_dark_line(reg, settings):
    img = torch.ones((1, 96, 96, 3))
    img[:, 46:50, 10:86, :] = 0.0
    SOURCE["image"] = img
    result, nid = run(reg, settings, "lineart_standard", {"resolution": 96})
    lines = result.outputs[nid]["image"][0, ..., 0]
    assert lines[46:50, 20:76].mean() > 5 * lines[:30].mean() + 0.05


def test_content_shuffle_is_seeded_and_leaves_numpy_alone(settings):
    img = torch.rand((1, 64, 64, 3), generator=torch.Generator().manual_seed(0))
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = pre.content_shuffle.execute(None, image=img, seed=5, resolution=64)
    b = pre.content_shuffle.execute(None, image=img, seed=5, resolution=64)
    c = pre.content_shuffle.execute(None, image=img, seed=6, resolution=64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == img.shape
    assert np.random.rand() == expected_next


def test_missing_annotator_weights_name_the_file(reg, settings):
    SOURCE["image"] = square_image(64)
    for type_id, filename in [
        ("depth_midas", "dpt_hybrid-midas-501f0c75.pt"),
        ("openpose", "body_pose_model.pth"),
        ("softedge_hed", "ControlNetHED.pth"),
        ("lineart_realistic", "sk_model.pth"),
        ("normal_bae", "scannet.pt"),
        ("depth_zoe", "ZoeD_M12_N.pt"),
    ]:
        result, nid = run(reg, settings, type_id)
        message = result.errors[nid]
        assert filename in message and "controlnet_annotators" in message, message
        assert "downloads nothing" in message


class _Evil:
    def __reduce__(self):
        return (exec, ("open('/tmp/studio-pwned', 'w').write('x')",))


def test_pickled_annotator_with_code_is_refused(reg, settings, tmp_path):
    folder = settings.models_root_path / "controlnet_annotators"
    folder.mkdir(parents=True)
    with open(folder / "ControlNetHED.pth", "wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    SOURCE["image"] = square_image(64)
    result, nid = run(reg, settings, "softedge_hed")
    assert "does not run code from model files" in result.errors[nid]
    import os

    assert not os.path.exists("/tmp/studio-pwned")
